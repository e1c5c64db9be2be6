"""Hand-off over a real ``SOCK_SEQPACKET`` link: the test plays the ELB (a TCP listener, a
client connected to it, and a `HandoffLink`) and hands the accepted socket to an in-process
`HttpServer` running `serve_handoffs`."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from httpio.handoff import HandoffLink, handoff_path, runtime_dir, serve_handoffs
from httpio.messages import Request, Response, json_response
from httpio.run import open_listeners
from httpio.server import HttpServer

DEADLINE_S = 10.0


async def whoami(request: Request) -> Response:
    return json_response(200, {"client": list(request.client), "via_elb": request.via_elb})


@asynccontextmanager
async def proxy_with_handoffs(path: Path) -> AsyncIterator[HttpServer]:
    server = HttpServer(whoami, name="proxy")
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, await open_listeners(0))
        await nursery.start(serve_handoffs, server, path)
        yield server
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def elb_accepts() -> AsyncIterator[tuple[trio.SocketStream, trio.socket.SocketType]]:
    """A client connected to the ELB's listener, and the ELB's accepted end of it."""
    with trio.socket.socket() as listener:
        await listener.bind(("127.0.0.1", 0))
        listener.listen()
        client = await trio.open_tcp_stream(*listener.getsockname())
        async with client:
            accepted, _ = await listener.accept()
            with accepted:
                yield client, accepted


async def exchange(client: trio.SocketStream, request: bytes) -> bytes:
    await client.send_all(request)
    received = b""
    with trio.fail_after(DEADLINE_S):
        while data := await client.receive_some(65536):
            received += data
    return received


def body_of(response: bytes) -> object:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n"), head
    return msgspec.json.decode(body)


GET_AND_CLOSE = b"GET /whoami HTTP/1.1\r\nhost: proxy\r\nconnection: close\r\n\r\n"


async def test_handed_off_connection_is_served_with_the_real_peer(tmp_path: Path) -> None:
    path = tmp_path / "proxy.sock"
    async with proxy_with_handoffs(path) as server:
        link = HandoffLink(path)
        await link.connect()
        assert repr(link) == f"<HandoffLink {path} connected=True>"
        async with elb_accepts() as (client, accepted):
            await link.send(accepted.fileno())
            accepted.close()  # the ELB forgets it: from now on only the proxy holds it
            response = await exchange(client, GET_AND_CLOSE)
            peer = client.socket.getsockname()
        assert body_of(response) == {"client": [peer[0], peer[1]], "via_elb": True}
        with trio.fail_after(DEADLINE_S):
            assert await link.closed_connections() >= 1
        assert server.requests_served == 1 and server.open_connections == 0
        link.close()
        assert link.sock is None


async def test_connections_outlive_the_link_that_brought_them(tmp_path: Path) -> None:
    path = tmp_path / "proxy.sock"
    async with proxy_with_handoffs(path):
        link = HandoffLink(path)
        await link.connect()
        async with elb_accepts() as (client, accepted):
            await link.send(accepted.fileno())
            accepted.close()
            link.close()  # the ELB restarts
            assert body_of(await exchange(client, GET_AND_CLOSE)) == {
                "client": list(client.socket.getsockname()),
                "via_elb": True,
            }


async def test_drain_closes_the_handoff_socket(tmp_path: Path) -> None:
    path = tmp_path / "proxy.sock"
    async with proxy_with_handoffs(path) as server:
        link = HandoffLink(path)
        await link.connect()
        with trio.fail_after(DEADLINE_S):
            await server.drain()
            assert await link.closed_connections() == -1  # EOF: send it nothing more
            while path.exists():  # noqa: ASYNC110 (the listener goes after the links)
                await trio.sleep(0.001)
        with pytest.raises(OSError):
            await HandoffLink(path).connect()
        link.close()


async def test_closing_the_link_while_its_reports_are_awaited_ends_them(tmp_path: Path) -> None:
    """The ELB's dispatcher closes a link after a failed send while another task waits for
    that link's close reports; the waiter must see "gone", not crash the ELB."""
    path = tmp_path / "proxy.sock"
    async with proxy_with_handoffs(path):
        link = HandoffLink(path)
        await link.connect()
        results: list[int] = []

        async def follow() -> None:
            results.append(await link.closed_connections())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(follow)
            await trio.testing.wait_all_tasks_blocked()
            link.close()
    assert results == [-1]


async def test_link_to_a_missing_proxy_fails_to_connect(tmp_path: Path) -> None:
    link = HandoffLink(tmp_path / "nobody.sock")
    with pytest.raises(OSError):
        await link.connect()
    assert link.sock is None


def test_handoff_path_lives_in_a_private_runtime_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_RUNTIME_DIR", str(tmp_path / "run"))
    assert handoff_path(6000) == tmp_path / "run" / "proxy-6000.sock"
    assert stat.S_IMODE(runtime_dir().stat().st_mode) == 0o700
