"""What the cache writes down: a stored response and a Vary index (msgpack, in the memory
tier and in Redis), and the two purge messages (the admin request's JSON and the notice
published to the other proxies).

Apart from the modules that use them because these are msgspec Structs declared with class
keywords (``array_like``, ``tag``, ``frozen``...), which mypyc would drop (`httpio.accel`):
this module is never compiled.
"""

from __future__ import annotations

import msgspec


class CachedResponse(msgspec.Struct, frozen=True, array_like=True, tag="r"):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stored_at: float  # wall-clock seconds when the response arrived
    initial_age_s: float  # corrected_initial_age, RFC 9111 4.2.3
    lifetime_s: float  # freshness_lifetime, RFC 9111 4.2.1

    def age(self, now: float) -> float:
        return self.initial_age_s + max(0.0, now - self.stored_at)

    def remaining_s(self, now: float) -> float:
        return self.lifetime_s - self.age(now)


class VaryIndex(msgspec.Struct, frozen=True, array_like=True, tag="v"):
    names: tuple[str, ...]  # lowercase, sorted
    generation: str
    expires_at: float


Stored = CachedResponse | VaryIndex
encode_stored = msgspec.msgpack.Encoder().encode
_decoder = msgspec.msgpack.Decoder(Stored)


def decode_stored(data: bytes) -> Stored | None:
    """None for anything we did not write (another namespace version, a stray key)."""
    try:
        value: Stored = _decoder.decode(data)
    except msgspec.DecodeError:
        return None
    return value


class PurgeRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    key: str | None = None
    prefix: str | None = None


class PurgeNotice(msgspec.Struct, frozen=True):
    key: str | None = None
    prefix: str | None = None
