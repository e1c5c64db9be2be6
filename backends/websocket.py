"""The demo backend's WebSocket endpoints, written with trio-websocket (issue 13).

- ``/ws/echo``: every message comes back as it came (text as text, binary as binary), until
  the client closes;
- ``/ws/ticks?n=N``: N messages ``tick 0`` ... ``tick N-1`` (N at most ``MAX_TICKS``), then a
  normal close (1000).

trio-websocket speaks the whole handshake itself, so the endpoint takes the raw connection
(`httpio.switch.RawTakeover`) with the request's head replayed to it; the backend's HTTP server
writes nothing. Messages up to ``MAX_MESSAGE_BYTES`` are accepted: the gateway's limit
(``max_message_bytes``, 1 MiB by default) is what the tests exercise, not this one.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, wrap_server_stream

MAX_TICKS = 100_000
MAX_MESSAGE_BYTES = 16 << 20
PATHS = ("/ws/echo", "/ws/ticks")


def tick_count(query: str) -> int:
    """``n`` of ``/ws/ticks?n=N``, clamped to 0..MAX_TICKS (10 when absent or unreadable)."""
    values = parse_qs(query).get("n", ["10"])
    try:
        n = int(values[-1])
    except ValueError:
        return 10
    return max(0, min(n, MAX_TICKS))


class WebSocketEndpoint:
    """One connection to ``/ws/echo`` or ``/ws/ticks``."""

    def __init__(self, path: str, query: str) -> None:
        self.path = path
        self.query = query

    def __repr__(self) -> str:
        return f"<WebSocketEndpoint {self.path}>"

    async def take_raw(self, stream: trio.abc.Stream) -> None:
        async with trio.open_nursery() as nursery:
            request = await wrap_server_stream(nursery, stream, max_message_size=MAX_MESSAGE_BYTES)
            ws = await request.accept()
            try:
                if self.path == "/ws/ticks":
                    await self._ticks(ws)
                else:
                    await self._echo(ws)
            except ConnectionClosed:
                pass
            nursery.cancel_scope.cancel()

    async def read(self) -> bytes:
        return b""  # no HTTP body: the connection is trio-websocket's

    async def aclose(self) -> None:
        pass

    @staticmethod
    async def _echo(ws: WebSocketConnection) -> None:
        while True:
            await ws.send_message(await ws.get_message())

    async def _ticks(self, ws: WebSocketConnection) -> None:
        for i in range(tick_count(self.query)):
            await ws.send_message(f"tick {i}")
        await ws.aclose(1000, "done")
