"""`elb.main`: which proxies an ELB serves, and an `Elb` in-process in front of proxy-like
servers on port 0 of 127.0.0.1: hand-off over a Unix socket, TCP relay with a PROXY v2
header, refusal when no proxy is healthy, and failing over when a hand-off link dies.

Each test runs as a fleet of its own (a random ``GATEWAY_FLEET_ID``), so its hand-off
sockets (abstract names, `httpio.handoff`) meet no one else's. No test sleeps for a fixed
time: waits poll a condition under a deadline.
"""

from __future__ import annotations

import ast
import json
import os
import secrets
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from elb.ejection import Verdict
from elb.main import Elb, inherited_socket, main, run_elb
from httpio.handoff import HandoffAddress, handoff_address, serve_handoffs
from httpio.listen import listener_port, open_listeners
from httpio.messages import Request, Response, json_response
from httpio.protocol import h11
from httpio.server import HttpServer
from tests.support.polling import wait_until
from tests.support.ports import held_port

DEADLINE_S = 10
DATA = Path(__file__).parent.parent / "topology" / "data"
REPO = Path(__file__).parent.parent.parent


# -- which proxies ----------------------------------------------------------------------------
def test_only_proxies_on_this_host_get_a_hand_off_address(fleet: str) -> None:
    elb = Elb(
        "ko_KR",
        ["http://127.0.0.1:6000", "http://localhost:6001", "http://10.0.0.9:6002"],
        name="elb",
    )
    addresses = {url: t.handoff_address for url, t in elb.targets.items()}
    assert addresses == {
        "http://127.0.0.1:6000": handoff_address(6000),
        "http://localhost:6001": handoff_address(6001),
        "http://10.0.0.9:6002": None,
    }
    address = addresses["http://127.0.0.1:6000"]
    assert isinstance(address, HandoffAddress)
    assert address.identity.fleet == fleet and address.identity.port == 6000


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture
def fleet(monkeypatch: pytest.MonkeyPatch) -> str:
    """A fleet id of this test's own."""
    name = f"test-{secrets.token_hex(6)}"
    monkeypatch.setenv("GATEWAY_FLEET_ID", name)
    monkeypatch.delenv("GATEWAY_RUNTIME_DIR", raising=False)
    return name


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A proxy with nothing listening: a port held bound for the test, never listening."""
    with held_port() as port:
        yield f"http://127.0.0.1:{port}"


class ProxyLike:
    """An `HttpServer` that answers ``/health`` and, for anything else, says who it is and
    whom it sees; optionally accepting hand-offs like a real proxy does."""

    def __init__(self, name: str, *, handoff: bool, trusted_proxies: tuple[str, ...] = ()):
        self.name = name
        self.handoff = handoff
        self.server = HttpServer(self.handle, name=name, trusted_proxies=trusted_proxies)
        self.seen: list[Request] = []
        self.url = ""
        self._scope = trio.CancelScope()
        self._stopped = trio.Event()

    async def handle(self, request: Request) -> Response:
        if request.path == "/health":
            return json_response(200, {"status": "ok"})
        self.seen.append(request)
        return json_response(
            200, {"proxy": self.name, "client": list(request.client), "via_elb": request.via_elb}
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await open_listeners(0)
        port = listener_port(listeners)
        self.url = f"http://127.0.0.1:{port}"
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.server.serve_listeners, listeners)
                    address = handoff_address(port)
                    if self.handoff and address is not None:
                        await nursery.start(serve_handoffs, self.server, address)
                    task_status.started()
                    await trio.sleep_forever()
        finally:
            self._stopped.set()

    async def stop(self) -> None:
        """Go away at once: listener, hand-off socket and links closed."""
        self._scope.cancel()
        await self._stopped.wait()


@asynccontextmanager
async def proxies(*proxy_likes: ProxyLike | WorkersLike) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for p in proxy_likes:
            await nursery.start(p.run)
        yield
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def running_elb(
    urls: list[str], *, health_checks: bool = True
) -> AsyncIterator[tuple[Elb, int]]:
    """An ELB in front of ``urls``, and the port it listens on."""
    elb = Elb("ko_KR", urls, name="elb-test")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    try:
        async with trio.open_nursery() as nursery:
            if health_checks:
                nursery.start_soon(elb.watch_health, nursery)
            nursery.start_soon(elb.serve, listeners, nursery)
            yield elb, listeners[0].socket.getsockname()[1]
            nursery.cancel_scope.cancel()
    finally:
        for listener in listeners:
            await listener.aclose()
        elb.close_links()
        await elb.checker.aclose()


class Reply:
    def __init__(self, status: int, headers: dict[bytes, bytes], body: bytes, local_port: int):
        self.status = status
        self.headers = headers
        self.body = body
        self.local_port = local_port  # the client socket's own port

    def json(self) -> Any:
        return json.loads(self.body)


async def get(
    port: int, target: str = "/who", *, settle_first: bool = False, deadline_s: float = DEADLINE_S
) -> Reply:
    """One request on a fresh connection to the ELB, read to the end. ``settle_first``:
    send the request only once the ELB and the proxy have done all they can with the bare
    connection (accepted, relayed, written and read a PROXY header)."""
    with trio.fail_after(deadline_s):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            local_port = stream.socket.getsockname()[1]
            if settle_first:
                await trio.testing.wait_all_tasks_blocked(cushion=0.01)
            conn = h11.Connection(h11.CLIENT)
            request = h11.Request(
                method="GET", target=target, headers=[(b"host", b"elb"), (b"connection", b"close")]
            )
            await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
            status, headers, body = 0, {}, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(65536))
                    continue
                if type(event) is h11.Response:
                    status = event.status_code
                    headers = dict(event.headers)
                elif type(event) is h11.Data:
                    body += bytes(event.data)
                elif type(event) is h11.EndOfMessage:
                    return Reply(status, headers, body, local_port)
                else:
                    raise AssertionError(f"unexpected {event!r}")


# -- serving ----------------------------------------------------------------------------------
async def test_a_local_proxy_is_handed_the_connection_with_the_real_client_address(
    fleet: str,
) -> None:
    proxy = ProxyLike("a", handoff=True)
    async with proxies(proxy), running_elb([proxy.url]) as (elb, port):
        target = elb.targets[proxy.url]
        await wait_until(lambda: target.link is not None)
        reply = await get(port)
        assert reply.status == 200
        assert reply.json() == {
            "proxy": "a",
            "client": ["127.0.0.1", reply.local_port],
            "via_elb": True,
        }
        assert (elb.handed_off, elb.relayed, elb.refused) == (1, 0, 0)
        # the proxy reports the closed connection back: least-conn counts come down
        state = elb.balancer.states[0]
        await wait_until(lambda: state.in_flight == 0)


async def test_a_proxy_without_hand_off_gets_a_relay_with_a_proxy_header(
    fleet: str,
) -> None:
    proxy = ProxyLike("b", handoff=False, trusted_proxies=("127.0.0.1",))
    async with proxies(proxy), running_elb([proxy.url], health_checks=False) as (elb, port):
        first, second = await get(port, settle_first=True), await get(port, settle_first=True)
        for reply in (first, second):
            assert reply.status == 200
            assert reply.json() == {
                "proxy": "b",
                "client": ["127.0.0.1", reply.local_port],
                "via_elb": True,
            }
        assert first.local_port != second.local_port
        assert (elb.handed_off, elb.relayed) == (0, 2)
        assert elb.targets[proxy.url].link is None
        state = elb.balancer.states[0]
        await wait_until(lambda: state.in_flight == 0)


async def test_no_healthy_proxy_is_a_503_with_a_json_body(refused_url: str) -> None:
    async with running_elb([refused_url]) as (elb, port):
        await wait_until(lambda: elb.health.verdict(refused_url) is not Verdict.UP)
        reply = await get(port)
        assert reply.status == 503
        assert reply.headers[b"content-type"] == b"application/json"
        assert reply.headers[b"retry-after"] == b"1"
        assert reply.json() == {
            "status": 503,
            "error": "no_healthy_proxy",
            "detail": "no proxy of this region is available",
        }
        assert elb.refused == 1


async def test_a_dead_hand_off_link_sends_the_next_connection_to_the_other_proxy(
    fleet: str,
) -> None:
    a, b = ProxyLike("a", handoff=True), ProxyLike("b", handoff=True)
    async with proxies(a, b), running_elb([a.url, b.url]) as (elb, port):
        await wait_until(lambda: all(t.link is not None for t in elb.targets.values()))
        served = {(await get(port)).json()["proxy"] for _ in range(4)}
        assert served == {"a", "b"}

        await a.stop()  # its listener, hand-off socket and link are gone at once
        for _ in range(4):
            reply = await get(port)
            assert reply.status == 200
            assert reply.json()["proxy"] == "b"
            assert reply.json()["client"] == ["127.0.0.1", reply.local_port]
        assert a.url not in elb.health.usable
        assert elb.targets[a.url].link is None
        assert elb.refused == 0


async def test_a_refused_relay_connect_goes_to_another_proxy(fleet: str, refused_url: str) -> None:
    # No health checks: the dead proxy is still believed healthy and is picked first.
    live = ProxyLike("live", handoff=False, trusted_proxies=("127.0.0.1",))
    async with (
        proxies(live),
        running_elb([refused_url, live.url], health_checks=False) as (elb, port),
    ):
        reply = await get(port, settle_first=True)
        assert reply.status == 200
        assert reply.json()["proxy"] == "live"
        assert elb.refused == 0


# -- layering ---------------------------------------------------------------------------------
def test_the_elb_imports_no_other_server() -> None:
    """Imports point one way: ``httpio`` <- ``topology`` <- the servers, none importing
    another (the health probe the ELB needs lives in `httpio.health_check`)."""
    servers = {"proxy", "authsvc", "backends"}
    found = []
    for path in sorted((REPO / "elb").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [f"{path.name}: {n}" for n in names if n.split(".")[0] in servers]
    assert found == []


# -- stopping ---------------------------------------------------------------------------------
async def test_sigterm_stops_accepting_and_lets_relays_finish(fleet: str) -> None:
    proxy = ProxyLike("b", handoff=False, trusted_proxies=("127.0.0.1",))
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    port = listening.getsockname()[1]
    async with proxies(proxy):
        elb = Elb("ko_KR", [proxy.url], name="elb-test")
        async with trio.open_nursery() as nursery:
            stopped = trio.Event()

            async def run() -> None:
                await run_elb(elb, port, listening)
                stopped.set()

            nursery.start_soon(run)
            with trio.fail_after(DEADLINE_S):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(b"GET /who HTTP/1.1\r\nhost: elb\r\n")  # half a head
                await wait_until(lambda: elb.relays_open == 1)
                os.kill(os.getpid(), signal.SIGTERM)
                await wait_until(lambda: listening.fileno() == -1)  # no longer accepting
                with pytest.raises(OSError):
                    await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"connection: close\r\n\r\n")
                answer = b""
                with trio.fail_after(DEADLINE_S):
                    while data := await stream.receive_some(65536):
                        answer += data
            assert answer.startswith(b"HTTP/1.1 200 ")
            with trio.fail_after(DEADLINE_S):
                await stopped.wait()
        await elb.checker.aclose()


# -- the inherited listener -------------------------------------------------------------------
def test_an_inherited_listener_must_be_a_tcp_socket_listening_on_the_port() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        taken = inherited_socket(os.dup(listening.fileno()), port)
        assert taken.getsockname() == ("127.0.0.1", port) and not taken.get_inheritable()
        taken.close()
        with pytest.raises(ValueError, match=f"listening on port {port + 1}"):
            inherited_socket(listening.fileno(), port + 1)
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        with pytest.raises(ValueError, match="not a TCP socket listening"):
            inherited_socket(bound.fileno(), bound.getsockname()[1])
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(ValueError, match="not a socket"):
            inherited_socket(read_end, 9000)
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_bad_listen_fd_is_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    read_end, write_end = os.pipe()
    try:
        with pytest.raises(SystemExit) as info:
            main(["9000", str(DATA / "r_kr.yaml"), "--listen-fd", str(read_end)])
    finally:
        os.close(read_end)
        os.close(write_end)
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith(f"elb: --listen-fd {read_end}: not a socket")


def test_an_unsafe_runtime_dir_means_relays_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("GATEWAY_RUNTIME_DIR", str(shared))
    elb = Elb("ko_KR", ["http://127.0.0.1:6000"], name="elb")
    assert elb.targets["http://127.0.0.1:6000"].handoff_address is None


# -- a proxy with workers ---------------------------------------------------------------------
class WorkersLike:
    """What the ELB sees of ``proxy --workers N``: one TCP port (for its probes) and one
    hand-off address per worker (``-wK``), each served by a server that names its worker."""

    def __init__(self, count: int) -> None:
        self.servers = [self._server(k) for k in range(count)]
        self.scopes = [trio.CancelScope() for _ in range(count)]
        self.url = ""

    @staticmethod
    def _server(index: int) -> HttpServer:
        async def handle(request: Request) -> Response:
            return json_response(200, {"worker": index, "via_elb": request.via_elb})

        return HttpServer(handle, name=f"w{index}")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await open_listeners(0)
        port = listener_port(listeners)
        self.url = f"http://127.0.0.1:{port}"
        async with trio.open_nursery() as nursery:
            await nursery.start(self.servers[0].serve_listeners, listeners)
            for server in self.servers[1:]:  # a server takes hand-offs while it serves
                await nursery.start(server.serve_listeners, await open_listeners(0))
            for index, (server, scope) in enumerate(zip(self.servers, self.scopes, strict=True)):
                address = handoff_address(port, index)
                assert address is not None
                nursery.start_soon(self._serve_handoffs, server, address, scope)
            task_status.started()

    @staticmethod
    async def _serve_handoffs(
        server: HttpServer, address: HandoffAddress, scope: trio.CancelScope
    ) -> None:
        with scope:
            await serve_handoffs(server, address)


async def hold_connection(port: int, nursery: trio.Nursery, answered: list[int]) -> None:
    """Open a keep-alive connection through the ELB, ask once, note the worker, keep it."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target="/who", headers=[(b"host", b"elb")])
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    body = b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(65536))
        elif type(event) is h11.Data:
            body += bytes(event.data)
        elif type(event) is h11.EndOfMessage:
            break
    answered.append(json.loads(body)["worker"])
    nursery.start_soon(_keep_open, stream)


async def _keep_open(stream: trio.SocketStream) -> None:
    async with stream:
        await trio.sleep_forever()


async def test_the_hand_offs_spread_over_the_workers_of_one_proxy(fleet: str) -> None:
    proxy = WorkersLike(2)
    async with proxies(proxy), running_elb([proxy.url]) as (elb, port):
        target = elb.targets[proxy.url]
        await wait_until(lambda: set(target.links) == {0, 1})
        answered: list[int] = []
        async with trio.open_nursery() as held:
            for _ in range(4):
                with trio.fail_after(DEADLINE_S):
                    await hold_connection(port, held, answered)
            # least loaded first: the four open connections are two on each worker
            assert sorted(answered) == [0, 0, 1, 1]
            assert sorted(link.in_flight for link in target.links.values()) == [2, 2]
            assert elb.statistics()["links"] == {proxy.url: target.statistics()}
            held.cancel_scope.cancel()


async def test_a_worker_that_goes_away_leaves_the_proxy_in_with_its_other_workers(
    fleet: str,
) -> None:
    proxy = WorkersLike(2)
    async with proxies(proxy), running_elb([proxy.url]) as (elb, port):
        target = elb.targets[proxy.url]
        await wait_until(lambda: set(target.links) == {0, 1})
        proxy.scopes[1].cancel()  # worker 1 stops taking hand-offs (as when it dies)
        await wait_until(lambda: set(target.links) == {0})
        assert elb.health.usable == (proxy.url,)  # not taken out: worker 0 still serves
        for _ in range(3):
            reply = await get(port)
            assert (reply.status, reply.json()) == (200, {"worker": 0, "via_elb": True})
        assert elb.relayed == 0
