"""`RequestBody`: the body of the request being served, read straight off its connection.

Apart from the server loop (`httpio.server`, which makes one per request) so that
`httpio.messages.Request` can name its type without importing the server, and so that a
filter may wrap it (`proxy.filters.limited_body.LimitedBody`). It is never compiled
(`httpio.accel`): a class a Python class derives from stays a Python class.
"""

from __future__ import annotations

import trio

from httpio.errors import ClientError, RequestBodyTooLarge, RequestTimeout
from httpio.h1request import CONTINUE, END, NEED_DATA, RequestReader
from httpio.settings import ServerLimits

RECEIVE_SIZE = 65536


class RequestBody:
    """The body of the request being served, read straight off the connection.

    ``read()`` returns the next chunk and ``b""`` at the end. Cancellation mid-read leaves
    the connection unusable; the server then closes it rather than reuse it. ``length`` is
    the declared Content-Length (`httpio.h1request` checked it and holds the body to it),
    None for a chunked body or none: a proxy frames what it forwards with it.
    """

    __slots__ = (
        "_done",
        "_limits",
        "_reader",
        "_received",
        "_stream",
        "_waited",
        "failed",
        "length",
    )

    def __init__(
        self,
        reader: RequestReader | None,
        stream: trio.abc.Stream | None,
        limits: ServerLimits,
    ) -> None:
        """Without a reader or a stream, a body that reads nothing: what the observer is
        shown of a refused request, or of an upgraded one when its session ends."""
        self._reader = reader
        self._stream = stream
        self._limits = limits
        self._received = 0
        self._waited = 0.0  # seconds spent waiting for the client's bytes
        self._done = reader is None or stream is None
        self.failed = False  # a read raised: the connection's framing is no longer known
        self.length: int | None = None

    @property
    def done(self) -> bool:
        return self._done

    async def read(self) -> bytes:
        try:
            return await self._read()
        except BaseException:
            self.failed = True
            raise

    async def _read(self) -> bytes:
        reader, stream = self._reader, self._stream
        if self._done or reader is None or stream is None:
            return b""
        while True:
            piece = reader.next_body()
            if piece is NEED_DATA:
                if reader.expects_continue:
                    await stream.send_all(CONTINUE)
                    reader.continue_sent()
                wait, why = self._allowed_wait()
                started = trio.current_time()
                with trio.CancelScope(deadline=started + wait) as scope:
                    data = await stream.receive_some(RECEIVE_SIZE)
                self._waited += trio.current_time() - started
                if scope.cancelled_caught:
                    raise RequestTimeout(why)
                reader.receive_data(bytes(data))
                continue
            if piece is END:
                self._done = True
                return b""
            assert isinstance(piece, bytes)
            self._received += len(piece)
            if self._received > self._limits.max_body_bytes:
                raise RequestBodyTooLarge(
                    f"request body exceeds {self._limits.max_body_bytes} bytes"
                )
            return piece

    def _allowed_wait(self) -> tuple[float, str]:
        """How long the next read may wait for the client, and what to say if it times out."""
        limits = self._limits
        wait = limits.body_timeout_s
        why = "request body not received in time"
        left = limits.body_deadline_s - self._waited
        if left < wait:
            wait, why = left, f"request body not complete within {limits.body_deadline_s:g} s"
        rate = limits.min_body_rate_bytes_per_s
        if rate:
            earned = limits.body_rate_grace_s + self._received / rate - self._waited
            if earned < wait:
                wait, why = earned, f"request body slower than {rate} bytes/s"
        return max(wait, 0.0), why

    def local_address(self) -> str | None:
        """The address the connection was accepted on (None: not a socket)."""
        sock = getattr(self._stream, "socket", None)
        try:
            return str(sock.getsockname()[0]) if sock is not None else None
        except OSError:
            return None

    def complete_in_buffer(self) -> bool:
        """Whether the rest of the body (often none: a GET) is already here, read without
        waiting. False means the client may still be sending."""
        reader = self._reader
        if self._done or self.failed or reader is None:
            return self._done
        try:
            while True:
                piece = reader.next_body()
                if piece is NEED_DATA:
                    return False
                if piece is END:
                    self._done = True
                    return True
        except ClientError:
            return False

    async def read_all(self) -> bytes:
        parts = []
        while chunk := await self.read():
            parts.append(chunk)
        return b"".join(parts)
