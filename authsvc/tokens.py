"""Signed bearer tokens: JWT (RFC 7519) with HS256 only (RFC 7518 3.2), from the stdlib.

The original proxies checked an HMAC over username+role with one shared ``Auth_key``; tokens
never expired and could not be revoked. We keep the shared-secret model (every proxy can verify
locally, no network call on the fast path) but put it in a standard envelope that carries an
expiry (``exp``), an id to revoke (``jti``) and the id of the key that signed it (``kid``), so
keys can rotate: the ring lists keys oldest -> newest, the newest signs, every listed key
verifies, and a key removed from the ring stops verifying at once.

Hand-rolled (about 80 lines) rather than PyJWT so the check is exactly what we need and no
more: only ``alg == "HS256"`` is accepted, whatever the header says (RFC 8725 3.1: the ``none``
and algorithm-confusion attacks need a verifier that trusts the header's ``alg``). PyJWT stays
a test dependency that proves other libraries read our tokens.

Errors say who is to blame: ``MalformedToken`` (not a JWT at all -> 400 invalid_request) versus
``InvalidToken`` subclasses (a well-formed token we refuse: bad signature, unknown key,
expired -> 401 invalid_token), following RFC 6750 3.1. Time is passed in, never read here.

How a request carries a token is part of the format, read the same way by the proxies and by
the auth server's signout (`extract_token`), newest first: ``Authorization: Bearer <t>``
(RFC 6750 2.1), ``AuthToken: <t>``, and ``AuthToken: {"token": ...}``, the whole JSON sign-in
response the original's clients echoed back. This module stays free of the auth server's
store and app: it is what the proxies import of ``authsvc``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Iterable, Sequence

import msgspec

from authsvc.claims import REGISTERED_NAMES, Claims, JoseHeader, RegisteredClaims
from authsvc.token_errors import (
    BadSignature,
    MalformedToken,
    TokenError,
    TokenExpired,
    TokenNotYetValid,
    UnknownKey,
    UnsupportedAlgorithm,
)
from httpio.errors import ClientError, Unauthorized
from topology.schema import MIN_KEY_BYTES, AuthKey, GatewayConfig, derive_kid

# A signed token is ~300 bytes; anything past this is garbage we refuse before any work.
MAX_TOKEN_BYTES = 4096
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


# A verified token's other claims are kept for the rate limiter's ``claim:<name>`` keys (a
# tenant, a plan), bounded: a token can hold at most MAX_TOKEN_BYTES, but each request's
# record of it must stay small. Scalars only, as text; objects and arrays are dropped.
MAX_EXTRA_CLAIMS = 16
MAX_CLAIM_NAME = 64
MAX_CLAIM_VALUE = 256


def extra_claims(payload: object) -> tuple[tuple[str, str], ...]:
    """The unregistered scalar claims of a decoded payload, bounded (see above)."""
    if not isinstance(payload, dict):
        return ()
    out: list[tuple[str, str]] = []
    for name, value in payload.items():
        if name in REGISTERED_NAMES or len(name) > MAX_CLAIM_NAME:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            text = str(value)
        else:
            continue
        if len(text) <= MAX_CLAIM_VALUE:
            out.append((name, text))
            if len(out) == MAX_EXTRA_CLAIMS:
                break
    return tuple(out)


def claim_of(claims: Claims, name: str) -> str | None:
    """One claim as text (``claim:<name>`` rate-limit keys), None when the token has none."""
    if name in REGISTERED_NAMES:
        value = getattr(claims, name)
        return None if value is None else str(value)
    for n, v in claims.extra:
        if n == name:
            return v
    return None


INTERNAL_HEADER = b"x-gateway-internal"
# The client address a proxy vouches for when it forwards a request to the auth service:
# ``<address>;<HMAC-SHA256(key, address)>``. Only auth servers ever see it (the proxy sends it
# nowhere else), so it is not bound to a request; a client's forgery fails the MAC.
CLIENT_HEADER = b"x-gateway-client"

# Keys published with the original project or in the articles it was built from: a token
# signed with one of these proves nothing.
PUBLISHED_KEYS = frozenset({"private_key", "your-secret-key"})


def _internal_mac(secret: bytes) -> bytes:
    return hmac.new(secret, b"pygateway internal call", hashlib.sha256).hexdigest().encode()


def _client_mac(secret: bytes, address: bytes) -> bytes:
    return hmac.new(secret, b"pygateway client;" + address, hashlib.sha256).hexdigest().encode()


class KeyRing:
    """HMAC keys by kid, oldest first; the newest signs."""

    __slots__ = ("_keys", "_signing_kid")

    def __init__(self, keys: Sequence[AuthKey]) -> None:
        if not keys:
            raise ValueError(
                "no Auth_key or Auth_keys: `fleet` writes a generated key into the config.json "
                "of its run directory; by hand, set Auth_keys to 32+ random bytes"
            )
        self._keys: dict[str, bytes] = {}
        for key in keys:
            if not key.kid or not key.secret:
                raise ValueError("every auth key needs a non-empty kid and secret")
            if key.kid in self._keys:
                raise ValueError(f"duplicate auth key id {key.kid!r}")
            self._keys[key.kid] = key.secret.encode("utf-8")
        self._signing_kid = keys[-1].kid

    @classmethod
    def from_config(cls, auth_key: str | None, auth_keys: Sequence[AuthKey] = ()) -> KeyRing:
        """``Auth_key`` (the original's field) counts as the oldest key; set it to "" to retire
        it once ``Auth_keys`` holds its successor and its tokens have expired."""
        legacy = [AuthKey(derive_kid(auth_key), auth_key)] if auth_key else []
        return cls([*legacy, *auth_keys])

    @property
    def signing_kid(self) -> str:
        return self._signing_kid

    def internal_proof(self) -> bytes:
        """What a proxy presents in ``X-Gateway-Internal`` to use the auth server's
        internal endpoints (introspection, revocation feed), made with the newest key."""
        return _internal_mac(self._keys[self._signing_kid])

    def is_internal(self, proof: bytes | None) -> bool:
        return proof is not None and any(
            hmac.compare_digest(_internal_mac(k), proof) for k in self._keys.values()
        )

    def client_proof(self, address: str) -> bytes:
        """The ``X-Gateway-Client`` value for a client at ``address``."""
        raw = address.encode("ascii", "replace")
        return raw + b";" + _client_mac(self._keys[self._signing_kid], raw)

    def vouched_client(self, value: bytes | None) -> str | None:
        """The address in a ``X-Gateway-Client`` value made with one of our keys, else None."""
        if value is None:
            return None
        address, sep, mac = value.rpartition(b";")
        if not sep or not address:
            return None
        if any(hmac.compare_digest(_client_mac(k, address), mac) for k in self._keys.values()):
            return address.decode("ascii")
        return None

    def secret(self, kid: str) -> bytes | None:
        return self._keys.get(kid)

    def weaknesses(self) -> list[str]:
        """Why each weak key must not sign anything; [] when every key is fine."""
        problems = []
        for kid, secret in self._keys.items():
            if secret.decode("utf-8") in PUBLISHED_KEYS:
                problems.append(
                    f"auth key {kid!r} is the original project's published key: anyone can "
                    "sign tokens (any user, any role) and forge inter-region hop marks; let "
                    "`fleet` generate one or set Auth_keys to 32+ random bytes"
                )
            elif len(secret) < MIN_KEY_BYTES:
                problems.append(
                    f"auth key {kid!r} is {len(secret)} bytes; HS256 needs {MIN_KEY_BYTES}+ "
                    "random bytes (RFC 7518 3.2)"
                )
        return problems

    def __repr__(self) -> str:
        return f"<KeyRing kids={list(self._keys)} signing={self._signing_kid!r}>"


def key_ring_of(config: GatewayConfig) -> KeyRing:
    """The ring config.json's ``Auth_key``/``Auth_keys`` describe (ValueError: none)."""
    return KeyRing.from_config(config.auth_key, tuple(config.auth_keys))


_encode_json = msgspec.json.Encoder().encode
_decode_header = msgspec.json.Decoder(JoseHeader).decode
_decode_claims = msgspec.json.Decoder(RegisteredClaims).decode
_decode_payload = msgspec.json.Decoder().decode


def _b64url(raw: bytes) -> bytes:
    return base64.urlsafe_b64encode(raw).rstrip(b"=")


def _unb64url(segment: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise MalformedToken("segment is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        raise MalformedToken("segment is not base64url") from None


def _sign(secret: bytes, signing_input: bytes) -> bytes:
    return hmac.new(secret, signing_input, hashlib.sha256).digest()


def issue_token(
    ring: KeyRing,
    *,
    sub: str,
    role: str,
    now: float,
    ttl_s: int,
    issuer: str | None = None,
    jti: str | None = None,
    extra: Sequence[tuple[str, str]] = (),
) -> tuple[str, Claims]:
    """Sign a token for ``sub`` with the newest key; returns (compact token, its claims).
    ``extra``: further claims it carries (a tenant), which must not reuse a registered name."""
    if any(name in REGISTERED_NAMES for name, _ in extra):
        raise ValueError("an extra claim may not reuse a registered claim's name")
    iat = int(now)
    claims = Claims(
        sub=sub,
        role=role,
        iat=iat,
        exp=iat + ttl_s,
        jti=jti or base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("="),
        iss=issuer,
        extra=tuple(extra),
    )
    header = JoseHeader(alg="HS256", typ="JWT", kid=ring.signing_kid)
    payload: dict[str, object] = dict(claims.extra)
    registered = msgspec.structs.asdict(claims)
    del registered["extra"]
    payload.update((k, v) for k, v in registered.items() if v is not None)
    signing_input = _b64url(_encode_json(header)) + b"." + _b64url(_encode_json(payload))
    secret = ring.secret(ring.signing_kid)
    assert secret is not None
    token = signing_input + b"." + _b64url(_sign(secret, signing_input))
    return token.decode("ascii"), claims


def verify_token(ring: KeyRing, token: str, *, now: float, leeway_s: int = 0) -> Claims:
    """Return the token's claims or raise a ``TokenError`` subclass.

    Order matters: structure, then algorithm and key, then the signature, and only then do we
    read the claims, so nothing an attacker wrote is trusted before the MAC checks out.
    """
    if len(token) > MAX_TOKEN_BYTES or not token.isascii():
        raise MalformedToken("token too long or not ASCII")
    parts = token.split(".")
    if len(parts) != 3:
        raise MalformedToken("a JWT has three dot-separated parts")
    header_b64, payload_b64, signature_b64 = parts
    try:
        header = _decode_header(_unb64url(header_b64))
    except msgspec.DecodeError:
        raise MalformedToken("header is not a JSON object with an alg") from None
    signature = _unb64url(signature_b64)
    payload = _unb64url(payload_b64)
    if header.alg != "HS256":
        raise UnsupportedAlgorithm(f"alg {header.alg!r} is not accepted")
    if header.kid is None:
        raise UnknownKey("token has no kid")
    secret = ring.secret(header.kid)
    if secret is None:
        raise UnknownKey(f"key {header.kid!r} is not in the ring")
    expected = _sign(secret, f"{header_b64}.{payload_b64}".encode("ascii"))
    if not hmac.compare_digest(expected, signature):
        raise BadSignature("signature does not match")
    try:
        registered = _decode_claims(payload)
        # An object of k members holds at least k colons: 5 or fewer is just the 5 required.
        extra = extra_claims(_decode_payload(payload)) if payload.count(b":") > 5 else ()
    except msgspec.DecodeError as exc:
        # Signed by us yet unreadable can only be a token from another issuer sharing the key.
        raise MalformedToken(f"claims: {exc}") from None
    r = registered
    claims = Claims(
        sub=r.sub, role=r.role, iat=r.iat, exp=r.exp, jti=r.jti, iss=r.iss, nbf=r.nbf, extra=extra
    )
    if now >= claims.exp + leeway_s:
        raise TokenExpired("token has expired")
    if claims.nbf is not None and now + leeway_s < claims.nbf:
        raise TokenNotYetValid("token is not valid yet")
    return claims


# -- how a request carries a token ----------------------------------------------------------
class _SigninBody(msgspec.Struct):
    token: str


_decode_signin = msgspec.json.Decoder(_SigninBody).decode


def extract_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The bearer token a request carries, or None if it carries none.

    Raises `ClientError` (400 invalid_request) for a header we cannot read, or for two
    different tokens at once (RFC 6750 2: clients MUST NOT use more than one method).
    """
    found: set[str] = set()
    for name, value in headers:
        if name == b"authorization":
            scheme, _, rest = value.strip().partition(b" ")
            if scheme.lower() != b"bearer":
                continue  # Basic and friends are not ours: as if absent
            found.add(_ascii_token(rest.strip()))
        elif name == b"authtoken":
            value = value.strip()
            if value.startswith(b"{"):
                try:
                    found.add(_ascii_token(_decode_signin(value).token.encode("utf-8")))
                except msgspec.DecodeError:
                    raise _invalid_request("AuthToken JSON has no string token field") from None
            else:
                found.add(_ascii_token(value))
    if len(found) > 1:
        raise _invalid_request("more than one token in the request")
    return found.pop() if found else None


def _ascii_token(raw: bytes) -> str:
    if not raw or not raw.isascii() or b" " in raw:
        raise _invalid_request("token is empty or not a single ASCII word")
    return raw.decode("ascii")


def _invalid_request(detail: str) -> ClientError:
    challenge = b'Bearer realm="gateway", error="invalid_request"'
    return ClientError(detail, headers=((b"www-authenticate", challenge),))


def refusal_for(exc: TokenError) -> ClientError:
    """The response error for a token check that failed."""
    if isinstance(exc, MalformedToken):
        return _invalid_request(f"malformed token: {exc}")
    return Unauthorized(f"token refused: {exc.reason}", error="invalid_token")
