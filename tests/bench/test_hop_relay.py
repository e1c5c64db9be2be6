"""`bench.hop_relay`, the reference relay: it relays, and retries once on an idle upstream
connection that its backend closed."""

from __future__ import annotations

import shutil
from functools import partial

import trio

from bench import hop_relay

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


# -- the reference relay -----------------------------------------------------------------------
async def _serve_once_then_close(stream: trio.SocketStream) -> None:
    """A backend that answers one request per connection and then closes it without saying
    so: to the relay, every idle connection it keeps is stale."""
    async with stream:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


async def _ask(client: trio.SocketStream, buffer: bytearray) -> bytes | None:
    await client.send_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
    head = await hop_relay.read_head(client, buffer)
    if head is None:
        return None
    while len(buffer) < hop_relay.content_length(head):
        buffer += await client.receive_some(4096)
    body = bytes(buffer)
    buffer.clear()
    return body


async def test_relay_retries_once_on_a_connection_the_backend_closed(
    nursery: trio.Nursery,
) -> None:
    backends = await nursery.start(
        partial(trio.serve_tcp, _serve_once_then_close, 0, host="127.0.0.1")
    )
    backend_port = backends[0].socket.getsockname()[1]
    idle: list[hop_relay.Upstream] = []

    async def handle(client: trio.SocketStream) -> None:
        async with client:
            await hop_relay.relay(client, backend_port, idle)

    relays = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    client = await trio.open_tcp_stream("127.0.0.1", relays[0].socket.getsockname()[1])
    async with client:
        buffer = bytearray()
        with trio.fail_after(5):
            assert await _ask(client, buffer) == b"ok"
            assert await _ask(client, buffer) == b"ok"  # its idle upstream was closed
    for stream, _ in idle:
        await stream.aclose()
