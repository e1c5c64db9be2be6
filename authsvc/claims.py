"""A token's claims and its JOSE header, as `authsvc.tokens` decodes and signs them.

Apart from the token code because they are msgspec Structs declared ``frozen=True``, a class
keyword mypyc would drop (`httpio.accel`): this module is never compiled.
"""

from __future__ import annotations

import msgspec


class RegisteredClaims(msgspec.Struct, frozen=True):
    """The claims we issue and rely on, as a token's payload is decoded (others are skipped)."""

    sub: str
    role: str
    iat: int
    exp: int
    jti: str
    iss: str | None = None
    nbf: int | None = None


REGISTERED_NAMES = frozenset(RegisteredClaims.__struct_fields__)


class Claims(RegisteredClaims, frozen=True):
    """The claims we issue and rely on, and ``extra``: the token's other scalar claims
    (``(name, text)``, at most `authsvc.tokens.MAX_EXTRA_CLAIMS`), which nothing here trusts for access."""

    extra: tuple[tuple[str, str], ...] = ()


class JoseHeader(msgspec.Struct, frozen=True):
    alg: str
    typ: str | None = None
    kid: str | None = None
