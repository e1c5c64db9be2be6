"""`LimitedBody`: a request body cut at a service's ``max_body_bytes`` (`proxy.filters.body_limit`).

Apart from the filter because it derives from `httpio.body.RequestBody`, a Python class: a
compiled class cannot declare ``__slots__`` on a Python base, so this module is never
compiled (`httpio.accel`) while the filter's per-request check is.
"""

from __future__ import annotations

from httpio.body import RequestBody
from httpio.errors import RequestBodyTooLarge


class LimitedBody(RequestBody):
    """The client's body, at most ``limit`` bytes of it. A `RequestBody` for whoever reads
    it (the forward, the server's discard), delegating to the one the server made; none of
    the parent's connection state is used here."""

    __slots__ = ("_inner", "_limit", "_seen")

    def __init__(self, inner: RequestBody, limit: int) -> None:  # no super(): nothing to read
        self._inner = inner
        self._limit = limit
        self._seen = 0
        self.failed = inner.failed
        self.length = inner.length

    def __repr__(self) -> str:
        return f"<LimitedBody {self._seen}/{self._limit} bytes>"

    @property
    def done(self) -> bool:
        return self._inner.done

    async def _read(self) -> bytes:
        chunk = await self._inner.read()
        self._seen += len(chunk)
        if self._seen > self._limit:
            raise RequestBodyTooLarge(
                f"request body exceeds this service's {self._limit} bytes (chunked)"
            )
        return chunk

    def complete_in_buffer(self) -> bool:
        return self._inner.complete_in_buffer()
