"""`httpio.metrics.metrics_response` over real sockets: who counts as a direct connection from
this host. 127.0.0.2 and 127.0.0.3 stand for a host's own address and another machine's
(Linux routes all of 127/8 to loopback, so no namespace is needed)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

import trio

from httpio.messages import Request, Response
from httpio.metrics import metrics_response
from httpio.run import serve_tcp


async def handler(request: Request) -> Response:
    return metrics_response(request)


@asynccontextmanager
async def serving_on(host: str) -> AsyncIterator[int]:
    async with trio.open_nursery() as nursery:
        yield await nursery.start(partial(serve_tcp, handler, 0, host=host))
        nursery.cancel_scope.cancel()


async def status_from(source: str, host: str, port: int) -> bytes:
    with trio.fail_after(10):
        stream = await trio.open_tcp_stream(host, port, local_address=source)
        async with stream:
            await stream.send_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            head = b""
            while b"\r\n" not in head and (data := await stream.receive_some(4096)):
                head += data
    return head.split(b" ", 2)[1]


async def test_a_peer_on_the_address_the_server_binds_is_this_host() -> None:
    async with serving_on("127.0.0.2") as port:
        assert await status_from("127.0.0.2", "127.0.0.2", port) == b"200"
        assert await status_from("127.0.0.3", "127.0.0.2", port) == b"404"


async def test_loopback_is_this_host() -> None:
    async with serving_on("127.0.0.1") as port:
        assert await status_from("127.0.0.1", "127.0.0.1", port) == b"200"
