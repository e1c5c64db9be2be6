"""The auth server's answers as the proxy reads them (`proxy.auth_client`): an introspection
verdict, and a page of the revocation feed.

Apart from the client because they are msgspec Structs declared ``frozen=True``, a class
keyword mypyc would drop (`httpio.accel`): this module is never compiled.
"""

from __future__ import annotations

import msgspec


class Introspection(msgspec.Struct, frozen=True):
    active: bool
    sub: str | None = None
    role: str | None = None
    iat: int = 0
    exp: int = 0
    jti: str | None = None
    reason: str | None = None


class Revoked(msgspec.Struct, frozen=True):
    jti: str
    exp: int


class RevocationPage(msgspec.Struct, frozen=True):
    cursor: int
    revoked: list[Revoked]
    users_cursor: int = 0  # absent from an auth server that predates the user feed
    changed_users: list[str] = msgspec.field(default_factory=list)


decode_introspection = msgspec.json.Decoder(Introspection).decode
decode_page = msgspec.json.Decoder(RevocationPage).decode
