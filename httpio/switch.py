"""The server side of a protocol upgrade: answer 101 and hand the connection over.

A handler accepts an upgrade by returning ``Response(101, headers, body)`` whose body is a
`SwitchedBody`: the server loop (`httpio.server`) then calls `switch_protocols` instead of
writing a response, drops the request, and runs the `Switched`. `switching_head` writes the 101
(an informational response, RFC 9110 15.2.2), only for a request that proposed the upgrade (an
``Upgrade`` field, as h11 allowed it), and the reader's ``buffered`` holds what the client sent
after its request (its first frames may have come with the head). The body's ``take_over``
then owns the stream until the switched protocol ends; the server closes the stream after it,
whatever happened.

A body that speaks the handshake itself (a WebSocket library's server, trio-websocket in the
demo backend) is a `RawTakeover` instead: the server writes nothing, and ``take_raw`` gets the
connection with a `ReplayStream` that first yields the request's head again (rebuilt from the
parsed request: `httpio.h1request` lowercases names, which HTTP allows) and the bytes after it.

A body may say what it carried, for the access log: ``transferred``, (bytes from the client,
bytes to it), read by `Switched.transferred` once the run is over ((0, 0) when it says nothing).

A handler's 101 for a request that proposed no upgrade is its bug: it is not written, the body
is closed and the connection dropped, nothing is sent.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import trio

from httpio.errors import ClientError
from httpio.h1client import field_problem
from httpio.h1request import END, RequestReader
from httpio.protocol import Headers


@runtime_checkable
class SwitchedBody(Protocol):
    """What serves a connection after its 101."""

    async def take_over(self, stream: trio.SocketStream, trailing: bytes) -> None: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class RawTakeover(Protocol):
    """What answers a request on the raw connection, handshake included."""

    async def take_raw(self, stream: trio.abc.Stream) -> None: ...

    async def aclose(self) -> None: ...


class ReplayStream(trio.abc.Stream):
    """``stream``, whose first reads return ``replay``."""

    def __init__(self, stream: trio.abc.Stream, replay: bytes) -> None:
        self._stream = stream
        self._replay = replay

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._replay:
            size = len(self._replay) if max_bytes is None else max_bytes
            out, self._replay = self._replay[:size], self._replay[size:]
            return out
        return bytes(await self._stream.receive_some(max_bytes))

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._stream.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._stream.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        send_eof = getattr(self._stream, "send_eof", None)
        if send_eof is not None:
            await send_eof()

    async def aclose(self) -> None:
        await self._stream.aclose()


def request_head(method: str, target: str, headers: Headers) -> bytes:
    lines = [f"{method} {target} HTTP/1.1".encode("latin-1")]
    lines.extend(n + b": " + v for n, v in headers)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class SwitchRefused(Exception):
    """The 101 cannot be written: the request did not propose an upgrade, or a field of the
    answer would split its head."""


class Switched:
    """A connection whose 101 is sent: ``run()`` gives it to the body. Made by
    `switch_protocols` before the server loop lets go of its reader state and the request, so
    that a WebSocket open for hours holds none of it (~2 KiB per connection)."""

    __slots__ = ("_body", "_stream", "_trailing")

    def __init__(self, body: object, stream: trio.abc.Stream, trailing: bytes) -> None:
        self._body = body
        self._stream = stream
        self._trailing = trailing

    async def run(self) -> None:
        """The body's ``take_over`` (or ``take_raw``) on the stream; the body is closed after."""
        body = self._body
        try:
            if isinstance(body, RawTakeover):
                await body.take_raw(self._stream)
            else:
                assert isinstance(body, SwitchedBody)
                assert isinstance(self._stream, trio.SocketStream)
                trailing, self._trailing = self._trailing, b""
                await body.take_over(self._stream, trailing)
        finally:
            await _close_body(body)

    def transferred(self) -> tuple[int, int]:
        """(bytes from the client, bytes to it) as the body counted them, (0, 0) if it did not."""
        counted = getattr(self._body, "transferred", None)
        if isinstance(counted, tuple) and len(counted) == 2:
            return int(counted[0]), int(counted[1])
        return 0, 0


def switching_head(status: int, headers: Headers, proposed: bool) -> bytes:
    """The 101's head (sans-IO); `SwitchRefused` when the request proposed no upgrade
    (``proposed``: it had an ``Upgrade`` field), or a field would split the head."""
    if status != 101:
        raise SwitchRefused(f"a switch is answered 101, not {status}")
    if not proposed:
        raise SwitchRefused("the request did not propose this upgrade")
    problem = field_problem(headers)
    if problem is not None:
        raise SwitchRefused(problem)
    fields = b"".join([name + b": " + value + b"\r\n" for name, value in headers])
    return b"HTTP/1.1 101 Switching Protocols\r\n" + fields + b"\r\n"


async def switch_protocols(
    stream: trio.SocketStream,
    conn: RequestReader,
    status: int,
    headers: Headers,
    body: object,
    request_head: bytes = b"",
) -> Switched:
    """Send the 101 (nothing for a `RawTakeover`, whose stream replays ``request_head``); the
    `Switched` to run. Raises `SwitchRefused` (``body`` closed) when it cannot be sent."""
    try:
        if isinstance(body, RawTakeover):
            return Switched(body, ReplayStream(stream, request_head + conn.buffered), b"")
        if not isinstance(body, SwitchedBody):
            raise SwitchRefused("a 101 needs a body that takes the connection over")
        head = switching_head(status, headers, conn.upgrade)
        try:
            if conn.next_body() is not END:  # a bodyless request's end, not yet read
                raise SwitchRefused("an upgrade request has no body")
        except ClientError as exc:
            raise SwitchRefused(str(exc)) from exc
        await stream.send_all(head)
        return Switched(body, stream, conn.buffered)
    except BaseException:
        await _close_body(body)
        raise


async def _close_body(body: object) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        with trio.CancelScope(shield=True):
            await aclose()
