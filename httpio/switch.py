"""The server side of a protocol upgrade: answer 101 and hand the connection over.

A handler accepts an upgrade by returning ``Response(101, headers, body)`` whose body is a
`SwitchedBody`: the server loop (`httpio.server`) then calls `switch_protocols` instead of
writing a response, drops its h11 connection and the request, and runs the `Switched`. h11 writes the 101 (an informational response, RFC 9110 15.2.2, which h11
lets through only for a request that proposed the upgrade), both sides of its state machine go
to SWITCHED_PROTOCOL, and ``trailing_data`` holds what the client sent after its request (its
first frames may have come with the head). The body's ``take_over`` then owns the stream until
the switched protocol ends; the server closes the stream after it, whatever happened.

A body that speaks the handshake itself (a WebSocket library's server, trio-websocket in the
demo backend) is a `RawTakeover` instead: the server writes nothing, and ``take_raw`` gets the
connection with a `ReplayStream` that first yields the request's head again (rebuilt from the
parsed request: h11 lowercases names, which HTTP allows) and the bytes after it.

A body may say what it carried, for the access log: ``transferred``, (bytes from the client,
bytes to it), read by `Switched.transferred` once the run is over ((0, 0) when it says nothing).

A handler's 101 for a request that proposed no upgrade is its bug: h11 refuses to write it, the
body is closed and the connection dropped, nothing is sent.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import trio

from httpio.protocol import Headers, h11


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
    """h11 would not write the 101: the request did not propose an upgrade."""


class Switched:
    """A connection whose 101 is sent: ``run()`` gives it to the body. Made by
    `switch_protocols` before the server loop lets go of its h11 state and the request, so
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


async def switch_protocols(
    stream: trio.SocketStream,
    conn: Any,
    status: int,
    headers: Headers,
    body: object,
    request_head: bytes = b"",
) -> Switched:
    """Send the 101 (nothing for a `RawTakeover`, whose stream replays ``request_head``); the
    `Switched` to run. Raises `SwitchRefused` (``body`` closed) when it cannot be sent."""
    try:
        if isinstance(body, RawTakeover):
            trailing, _ = conn.trailing_data
            return Switched(body, ReplayStream(stream, request_head + bytes(trailing)), b"")
        if not isinstance(body, SwitchedBody):
            raise SwitchRefused("a 101 needs a body that takes the connection over")
        while conn.their_state is h11.SEND_BODY:  # a bodyless request's end, not yet read
            if type(conn.next_event()) is not h11.EndOfMessage:
                raise SwitchRefused("an upgrade request has no body")
        try:
            head = conn.send(
                h11.InformationalResponse(
                    status_code=status, headers=headers, reason=b"Switching Protocols"
                )
            )
        except h11.LocalProtocolError as exc:
            raise SwitchRefused(str(exc)) from exc
        if conn.our_state is not h11.SWITCHED_PROTOCOL:
            raise SwitchRefused("the request did not propose this upgrade")
        await stream.send_all(head)
        trailing, _ = conn.trailing_data
        return Switched(body, stream, bytes(trailing))
    except BaseException:
        await _close_body(body)
        raise


async def _close_body(body: object) -> None:
    aclose = getattr(body, "aclose", None)
    if aclose is not None:
        with trio.CancelScope(shield=True):
            await aclose()
