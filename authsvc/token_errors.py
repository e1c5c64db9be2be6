"""Why a token is refused: `TokenError` and its kinds, each with a short machine-readable
``reason`` (the auth server's introspection answer carries it; `authsvc.tokens.refusal_for`
turns one into the client's 400 or 401).

Apart from `authsvc.tokens` because ``reason`` is a class-level value, which a class
compiled by mypyc does not keep (`httpio.accel`): this module is never compiled.
"""

from __future__ import annotations


class TokenError(Exception):
    """Base of every refusal; ``reason`` is a short machine-readable word."""

    reason = "invalid"


class MalformedToken(TokenError):
    """Not a compact JWS of three base64url JSON parts: the client sent garbage (400)."""

    reason = "malformed"


class InvalidToken(TokenError):
    """A well-formed token that we refuse (401 invalid_token)."""


class TokenRevoked(InvalidToken):
    """Signed and unexpired, but revoked (the proxy's cache of revocations, or the auth
    server's introspection)."""

    reason = "revoked"


class UnsupportedAlgorithm(InvalidToken):
    reason = "unsupported_alg"


class UnknownKey(InvalidToken):
    reason = "unknown_key"


class BadSignature(InvalidToken):
    reason = "bad_signature"


class TokenExpired(InvalidToken):
    reason = "expired"


class TokenNotYetValid(InvalidToken):
    reason = "not_yet_valid"
