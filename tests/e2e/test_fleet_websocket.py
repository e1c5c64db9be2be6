"""WebSockets through a real fleet (issue 13): client -> ELB -> proxy -> backend, and across
regions through the other region's ELB, with trio-websocket clients.

A fleet of its own (module scope): ``video`` has the shipped msa files' ``websocket``
settings (read from them: the default fleet relays WebSockets for it), the other services
small timers; the last tests reload its msa file and SIGTERM one of its proxies, which the
shared fleet of the other end-to-end tests must not see.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families
from trio_websocket import (
    ConnectionClosed,
    WebSocketConnection,
    WebSocketRequest,
    open_websocket_url,
    serve_websocket,
)

from elb.main import Elb
from tests.e2e.harness import (
    ROOT,
    Reply,
    RunningFleet,
    fleet_in_a_thread,
    post_json,
    request,
    write_fleet_yaml,
)
from tests.support.polling import wait_until
from tests.support.ports import free_ports
from topology.load import load_msa

SIZES = [0, 125, 64 * 1024, 1 << 20]
KEEPALIVE_IDLE_S = 1.0
LIFETIME_S = 2.0


@asynccontextmanager
async def open_ws(url: str, **kwargs: Any) -> AsyncIterator[WebSocketConnection]:
    """`open_websocket_url`, with the client's TCP connection closed at the end.

    trio-websocket 0.12.2 never closes it when the server closes first (the 1000, 1001,
    1008 and 1009 cases here; a rejected handshake is another path, see the 401 test): ``_handle_close_connection_event`` sets ``_close_reason`` and,
    being a client, waits for the server's TCP close (RFC 6455 7.1.1); the reader task then
    reads b"" and ends without ``_close_stream()``; and ``aclose()`` returns at once when
    ``_close_reason`` is set, so nothing closes the socket and the GC warns about it (a
    ``PytestUnraisableExceptionWarning``, an error here). The library's, not the proxy's: the
    proxy does close its end (the reader saw b"")."""
    async with open_websocket_url(url, **kwargs) as ws:
        try:
            yield ws
        finally:
            stream = ws._stream  # no public handle on it
    with trio.CancelScope(shield=True):
        await trio.aclose_forcefully(stream)


def shipped_websocket(msa: str, service: str = "video") -> str:
    """``service``'s ``websocket`` block in the shipped ``topology/<msa>``, as flow YAML: the
    tests of the shipped settings run on them, not on a copy."""
    spec = next(s for s in load_msa(ROOT / "topology" / msa).service if s.name == service)
    assert spec.websocket is not None and spec.websocket.enabled
    return msgspec.json.encode(spec.websocket).decode()


def _msa_kr(b: list[str], auth: int, chat_instances: list[str]) -> str:
    """``brief`` and ``seen`` go to ``b[4]``, a WebSocket server of the test's own (`serve_probe`)
    that sees what a backend is sent: the forwarded target, the close code it gets."""
    instances = json.dumps(chat_instances)
    return f"""name: ws-kr
service:
  - name: video
    instance: ["{b[0]}"]
    websocket: {shipped_websocket("msa_kr.yaml")}
  - name: chat
    instance: {instances}
    websocket: {{enabled: true, idle_timeout_s: 60, ping_interval_s: 30, drain_s: 1}}
  - name: quiet
    instance: ["{b[2]}"]
    websocket: {{enabled: true, idle_timeout_s: 1, ping_interval_s: 0, drain_s: 1}}
  - name: plain
    instance: ["{b[2]}"]
  - name: limited
    instance: ["{b[0]}"]
    websocket: {{enabled: true}}
    rate_limit: [{{key: service, rate_per_s: 0.001, burst: 1, scope: local}}]
  - name: twice
    instance: ["{b[3]}", "{b[0]}"]
    websocket: {{enabled: true}}
    health: {{interval_s: 3600}}
  - name: brief
    instance: ["{b[4]}"]
    websocket: {{enabled: true, max_lifetime_s: {LIFETIME_S}, idle_timeout_s: 0, ping_interval_s: 0}}
    health: {{interval_s: 3600}}
  - name: seen
    instance: ["{b[4]}"]
    websocket: {{enabled: true}}
    health: {{interval_s: 3600}}
  - name: auth
    instance: ["http://127.0.0.1:{auth}"]
"""


def write_topology(base: Path) -> dict[str, Any]:
    ports = free_ports(12)
    kr_elb, en_elb, p0, p1, p2, redis, auth = ports[:7]
    backends = ports[7:10]
    # b[3]: a port nothing listens on (an instance down), for the handshake's retry;
    # b[4]: the test's own WebSocket server, listening only during the tests that use it
    b = [f"http://127.0.0.1:{p}" for p in (*backends, ports[10], ports[11])]
    (base / "msa_kr.yaml").write_text(_msa_kr(b, auth, [b[0]]))
    (base / "msa_en.yaml").write_text(
        f"""name: ws-en
service:
  - name: video
    instance: ["{b[1]}"]
    websocket: {shipped_websocket("msa_en.yaml")}
  - name: auth
    instance: ["http://127.0.0.1:{auth}"]
"""
    )
    config = json.loads((ROOT / "topology" / "config.json").read_text())
    config.update(
        {
            "Redis_address": f"localhost:{redis}",
            "MSA_healthcheck_interval": 1,
            "Config_check_interval": 1,
            # a keep-alive idle timeout an upgraded connection must outlive (the relay test)
            "Server": {"idle_timeout_s": KEEPALIVE_IDLE_S},
            "Scrypt": {"n": 1024, "r": 8, "p": 1},
            "Argon2id": {"memory_kib": 1024, "time_cost": 1},
        }
    )
    (base / "config.json").write_text(json.dumps(config))
    write_fleet_yaml(
        base,
        elbs=(kr_elb, en_elb),
        proxies=([p0, p1], [p2]),
        backends=backends,
        auth=auth,
        redis=redis,
    )
    return {
        "kr_elb": f"http://127.0.0.1:{kr_elb}",
        "en_elb": f"http://127.0.0.1:{en_elb}",
        "kr_proxies": [f"http://127.0.0.1:{p0}", f"http://127.0.0.1:{p1}"],
        "en_proxies": [f"http://127.0.0.1:{p2}"],
        "backends": backends,
        "redis_port": redis,
        "auth_ports": [auth],
        "base": base,
        "b": b,
        "probe_port": ports[11],
    }


@pytest.fixture(scope="module")
def ws_fleet(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RunningFleet, dict[str, Any]]]:
    base = tmp_path_factory.mktemp("wsfleet")
    layout = write_topology(base)
    with fleet_in_a_thread(base, layout, "ws-fleet") as running:
        yield running, layout


def _sign_in(fleet: RunningFleet, username: str) -> str:
    user = {"username": username, "password": "pw-" + username, "role": "user"}
    r = post_json(fleet.kr_elb, "/auth/signup", user)
    assert r.status in (201, 409), r
    r = post_json(fleet.kr_elb, "/auth/signin", user)
    assert r.status == 200, r
    return str(r.json()["token"])


@pytest.fixture(scope="module")
def ws_token(ws_fleet: tuple[RunningFleet, dict[str, Any]]) -> str:
    return _sign_in(ws_fleet[0], "ws-user")


def ws_url(http_url: str, path: str) -> str:
    return "ws://" + http_url.removeprefix("http://") + path


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", f"Bearer {token}".encode())]


async def closed_code(ws: WebSocketConnection, timeout_s: float = 10.0) -> int | None:
    """Read until the connection closes; the close code received."""
    with trio.fail_after(timeout_s):
        try:
            while True:
                await ws.get_message()
        except ConnectionClosed as exc:
            return exc.reason.code if exc.reason is not None else None
    return None


async def test_echo_text_and_binary_through_the_elb(ws_fleet: Any, ws_token: str) -> None:
    fleet, _ = ws_fleet
    url = ws_url(fleet.kr_elb, "/video/ws/echo")
    async with open_ws(url, extra_headers=bearer(ws_token), max_message_size=2 << 20) as ws:
        for size in SIZES:
            text = "é" * (size // 2) if size else ""
            await ws.send_message(text)
            assert await ws.get_message() == text
            data = bytes(i % 251 for i in range(size))
            await ws.send_message(data)
            assert await ws.get_message() == data


async def test_ticks_end_with_a_normal_close(ws_fleet: Any, ws_token: str) -> None:
    fleet, _ = ws_fleet
    url = ws_url(fleet.kr_elb, "/video/ws/ticks?n=5")
    async with open_ws(url, extra_headers=bearer(ws_token)) as ws:
        got = [await ws.get_message() for _ in range(5)]
        assert got == [f"tick {i}" for i in range(5)]
        assert await closed_code(ws) == 1000


@pytest.mark.parametrize("form", ["authorization", "authtoken", "subprotocol", "query"])
async def test_each_token_form_opens_the_socket(ws_fleet: Any, ws_token: str, form: str) -> None:
    fleet, _ = ws_fleet
    path = "/video/ws/echo"
    headers: list[tuple[bytes, bytes]] = []
    protocols: list[str] = []
    if form == "authorization":
        headers = bearer(ws_token)
    elif form == "authtoken":
        headers = [(b"AuthToken", ws_token.encode())]
    elif form == "subprotocol":
        protocols = ["bearer", ws_token]
    else:
        path += f"?access_token={ws_token}"
    url = ws_url(fleet.kr_elb, path)
    async with open_ws(url, extra_headers=headers, subprotocols=protocols) as ws:
        if form == "subprotocol":
            assert ws.subprotocol == "bearer"  # what browsers insist on
        await ws.send_message("hello")
        assert await ws.get_message() == "hello"


def requests_101(proxy: str) -> float:
    """``gateway_requests_total`` for video's 101s, from ``proxy``'s /metrics."""
    text = request(proxy, "/metrics").body.decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if sample.name == "gateway_requests_total" and labels.get("code") == "101":
                total += sample.value if labels.get("service") == "video" else 0.0
    return total


async def test_a_session_is_logged_at_its_close_and_counted_as_a_101(
    ws_fleet: Any, ws_token: str
) -> None:
    """Issue 12: one access-log line per WebSocket, written when it closes (as Envoy and nginx
    do) with the session's duration and bytes, its user and upstream, the query token
    redacted; and ``gateway_requests_total{code="101"}`` moves."""
    fleet, _ = ws_fleet
    proxy = fleet.kr_proxies[0]
    port = int(proxy.rsplit(":", 1)[1])
    (name,) = [n for n in fleet.ports if n.startswith("proxy-") and n.endswith(f"-{port}")]
    log_path = fleet.fleet.run_dir / "logs" / f"access-{name}.log"
    request_id = f"ws-obs-{os.getpid()}"
    before = await trio.to_thread.run_sync(requests_101, proxy)
    url = ws_url(proxy, f"/video/ws/echo?access_token={ws_token}")
    headers = [(b"x-request-id", request_id.encode()), (b"user-agent", b"ws-obs/1")]
    async with open_ws(url, extra_headers=headers) as ws:
        await ws.send_message("x" * 1000)
        assert await ws.get_message() == "x" * 1000

    def line() -> dict[str, Any] | None:
        for raw in log_path.read_text().splitlines() if log_path.exists() else []:
            doc: dict[str, Any] = json.loads(raw)
            if doc["request_id"] == request_id:
                return doc
        return None

    with trio.fail_after(10):
        await wait_until(lambda: line() is not None)
    doc = line()
    assert doc is not None
    assert (doc["status"], doc["service"], doc["user"], doc["user_agent"]) == (
        101,
        "video",
        "ws-user",
        "ws-obs/1",
    )
    assert doc["upstream"].startswith("http://127.0.0.1:") and doc["error"] == "-"
    assert ws_token not in json.dumps(doc) and doc["path"].startswith("/video/ws/echo")
    assert doc["bytes_in"] > 1000 and doc["bytes_out"] > 1000  # the message, each way
    assert doc["duration_ms"] > 0
    assert await trio.to_thread.run_sync(requests_101, proxy) == before + 1


async def refused_handshake(url: str, path: str, token: str | None) -> Reply:
    """A handshake over plain HTTP, for one that must not get a 101: trio-websocket's client
    leaves its socket to the GC on a rejection (its reader task raises ConnectionRejected and
    nothing closes the stream)."""
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await trio.to_thread.run_sync(lambda: request(url, path, headers=headers))


async def test_a_refused_token_gets_401_and_no_101(ws_fleet: Any) -> None:
    fleet, _ = ws_fleet
    for token in (None, "not-a-token.at.all", "eyJ.eyJ.sig"):
        reply = await refused_handshake(fleet.kr_elb, "/video/ws/echo", token)
        assert reply.status in (400, 401), reply
        assert "upgrade" not in reply.headers
        assert json.loads(reply.body)["status"] == reply.status


async def test_cross_region_with_x_region(ws_fleet: Any, ws_token: str) -> None:
    fleet, _ = ws_fleet
    headers = [*bearer(ws_token), (b"X-Region", b"en_US")]
    async with open_ws(ws_url(fleet.kr_elb, "/video/ws/echo"), extra_headers=headers) as ws:
        await ws.send_message(b"\x00" * 70000)
        assert await ws.get_message() == b"\x00" * 70000
    # the subprotocol form, moved into Authorization by the first region's proxy
    url = ws_url(fleet.kr_elb, "/video/ws/echo")
    async with open_ws(
        url, extra_headers=[(b"X-Region", b"en_US")], subprotocols=["bearer", ws_token]
    ) as ws:
        assert ws.subprotocol == "bearer"
        await ws.send_message("across")
        assert await ws.get_message() == "across"


async def test_rate_limits_count_the_handshake(ws_fleet: Any, ws_token: str) -> None:
    # ``limited``: a burst of one per proxy, then one per 1,000 s: the first handshake opens
    # the socket, the second is refused before any 101.
    fleet, _ = ws_fleet
    proxy = fleet.kr_proxies[0]
    async with open_ws(ws_url(proxy, "/limited/ws/echo"), extra_headers=bearer(ws_token)) as ws:
        await ws.send_message("in")
        assert await ws.get_message() == "in"
        reply = await refused_handshake(proxy, "/limited/ws/echo", ws_token)
        assert reply.status == 429, reply
        assert "upgrade" not in reply.headers


async def test_a_handshake_refused_by_one_instance_is_retried_on_another(
    ws_fleet: Any, ws_token: str
) -> None:
    # ``twice``: its first instance is down and, with no health checks to find it, still in
    # the round robin; straight to one proxy, two handshakes in a row meet it once.
    fleet, layout = ws_fleet
    for n in range(4):
        url = ws_url(fleet.kr_proxies[0], "/twice/ws/echo")
        async with open_ws(url, extra_headers=bearer(ws_token)) as ws:
            await ws.send_message(f"try {n}")
            assert await ws.get_message() == f"try {n}"
    stats = await trio.to_thread.run_sync(request, fleet.kr_proxies[0], "/admin/backends")
    (twice,) = (p for p in stats.json()["services"] if p["service"] == "twice")
    down = twice["instances"][0]
    assert down["url"].endswith(layout["b"][3].rsplit(":", 1)[1])
    assert down["failures"] >= 1  # it was tried, failed, and the handshake went on


async def test_the_elb_relay_path_carries_a_websocket_idle_past_the_timeouts(
    ws_fleet: Any, ws_token: str
) -> None:
    # An ELB of the test's own in front of one of the fleet's proxies: not of the fleet, it
    # gets no hand-off link and relays with a PROXY v2 header, as for a proxy on another
    # host. The ELB's relay has no idle timeout of its own (elb.main._copy); what could cut
    # an upgraded connection is the proxy's keep-alive idle timeout, KEEPALIVE_IDLE_S here:
    # the socket stays quiet for longer, then carries a message each way.
    fleet, _ = ws_fleet
    elb = Elb("ko_KR", [fleet.kr_proxies[0]], name="elb-relay-test")
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(elb.serve, listeners, nursery)
            url = f"ws://127.0.0.1:{port}/chat/ws/echo"
            async with open_ws(url, extra_headers=bearer(ws_token)) as ws:
                await ws.send_message("before")
                assert await ws.get_message() == "before"
                await trio.sleep(KEEPALIVE_IDLE_S * 2.5)  # the idle time is what is tested
                await ws.send_message("after")
                assert await ws.get_message() == "after"
            assert (elb.handed_off, elb.relayed) == (0, 1)
            nursery.cancel_scope.cancel()
    finally:
        for listener in listeners:
            await listener.aclose()
        elb.close_links()
        await elb.checker.aclose()


async def test_a_message_over_the_limit_closes_with_1009(ws_fleet: Any, ws_token: str) -> None:
    fleet, _ = ws_fleet
    async with open_ws(
        ws_url(fleet.kr_elb, "/video/ws/echo"), extra_headers=bearer(ws_token)
    ) as ws:
        await ws.send_message(b"x" * ((1 << 20) + 1))
        assert await closed_code(ws) == 1009


async def test_idle_socket_is_closed_with_1001(ws_fleet: Any, ws_token: str) -> None:
    fleet, _ = ws_fleet
    async with open_ws(
        ws_url(fleet.kr_elb, "/quiet/ws/echo"), extra_headers=bearer(ws_token)
    ) as ws:
        assert await closed_code(ws) == 1001


async def test_plain_service_serves_an_upgrade_as_http(ws_fleet: Any, ws_token: str) -> None:
    fleet, _ = ws_fleet
    reply = await refused_handshake(fleet.kr_elb, "/plain/ws/echo", ws_token)
    assert reply.status == 404  # the backend's own answer to a GET there
    assert "upgrade" not in reply.headers


async def test_revoked_token_closes_with_1008(ws_fleet: Any) -> None:
    fleet, _ = ws_fleet
    token = await trio.to_thread.run_sync(_sign_in, fleet, "ws-leaver")
    async with open_ws(ws_url(fleet.kr_elb, "/chat/ws/echo"), extra_headers=bearer(token)) as ws:
        await ws.send_message("before")
        assert await ws.get_message() == "before"
        r = await trio.to_thread.run_sync(
            lambda: request(
                fleet.kr_elb,
                "/auth/signout",
                method="POST",
                headers={"authorization": f"Bearer {token}"},
            )
        )
        assert r.status == 200
        assert await closed_code(ws, timeout_s=15) == 1008


class Probe:
    """What the test's own WebSocket server (``b[4]``) was sent: each handshake's target, and
    the close code each socket ended with (None: no close frame)."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.closes: list[int | None] = []

    async def handle(self, request: WebSocketRequest) -> None:
        self.targets.append(request.path)
        ws = await request.accept()
        try:
            while True:
                await ws.send_message(await ws.get_message())
        except ConnectionClosed as exc:
            self.closes.append(exc.reason.code if exc.reason is not None else None)


async def serve_probe(nursery: trio.Nursery, port: int) -> Probe:
    probe = Probe()
    await nursery.start(serve_websocket, probe.handle, "127.0.0.1", port, None)
    return probe


async def test_a_socket_past_max_lifetime_is_closed_with_1001_on_both_sides(
    ws_fleet: Any, ws_token: str
) -> None:
    # ``brief``: max_lifetime_s 2, no idle timeout, no pings; the socket is busy all along,
    # so what ends it is its age. The proxy closes it with 1001 to the client and to the
    # backend (a code RFC 6455 7.4.1 lets go on the wire: never 1005/1006).
    fleet, layout = ws_fleet
    async with trio.open_nursery() as nursery:
        probe = await serve_probe(nursery, layout["probe_port"])
        url = ws_url(fleet.kr_elb, "/brief/ws/echo")
        async with open_ws(url, extra_headers=bearer(ws_token)) as ws:
            opened = trio.current_time()
            code: int | None = None
            with trio.fail_after(LIFETIME_S + 10):
                while code is None:
                    try:
                        await ws.send_message("busy")
                        assert await ws.get_message() == "busy"
                    except ConnectionClosed as exc:
                        code = exc.reason.code if exc.reason is not None else 1005
                    await trio.sleep(0.1)
            lived = trio.current_time() - opened
        assert code == 1001
        # the proxy's clock ticks each second: up to one tick late, and a little for the load
        assert LIFETIME_S - 0.2 <= lived < LIFETIME_S + 4, lived
        await wait_until(lambda: bool(probe.closes), timeout_s=10)
        assert probe.closes == [1001]
        nursery.cancel_scope.cancel()


def files_holding(base: Path, needles: list[bytes]) -> list[str]:
    """Every file under ``base`` that holds any of ``needles``."""
    out = []
    for path in sorted(base.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            if any(n in data for n in needles):
                out.append(str(path.relative_to(base)))
    return out


def sockets_closed(logs: Path, region: str) -> int:
    """``websocket_closed`` lines in the process logs of ``region``'s proxies."""
    return sum(
        p.read_bytes().count(b'"websocket_closed"') for p in logs.glob(f"proxy-{region}-*.log")
    )


async def test_a_query_token_is_never_logged_nor_forwarded(ws_fleet: Any) -> None:
    # The access_token form (RFC 6750 2.3) puts a secret in the URL, which logs write; the
    # proxy takes it out of the target before it goes upstream or into a log
    # (`proxy.websocket`). A token of its own, used only this way (to a server of the test's,
    # to the demo backend, and across regions), then every file the fleet wrote is searched.
    fleet, layout = ws_fleet
    base: Path = layout["base"]
    logs = base / "run" / "logs"
    token = await trio.to_thread.run_sync(_sign_in, fleet, "ws-query-only")
    mark = f"m{os.getpid()}"
    query = f"mark={mark}&access_token={token}"
    closed_before = sockets_closed(logs, "ko_KR"), sockets_closed(logs, "en_US")
    async with trio.open_nursery() as nursery:
        probe = await serve_probe(nursery, layout["probe_port"])
        for path, headers in [
            (f"/seen/ws/echo?{query}", []),
            (f"/video/ws/echo?{query}", []),
            (f"/video/ws/echo?{query}", [(b"X-Region", b"en_US")]),
        ]:
            async with open_ws(ws_url(fleet.kr_elb, path), extra_headers=headers) as ws:
                await ws.send_message(path)
                assert await ws.get_message() == path
        await wait_until(lambda: bool(probe.closes), timeout_s=10)
        nursery.cancel_scope.cancel()
    # the backend got the target without the token, the rest of the query as it was
    assert probe.targets == [f"/ws/echo?mark={mark}"]

    # the proxies' lines about these sockets are out (three relays in ko_KR, one in en_US),
    # and what the access logs hold: a plain request after them, across regions, written
    # (each writer keeps its lines in order) in both regions' access logs
    def all_written() -> bool:
        kr, en = sockets_closed(logs, "ko_KR"), sockets_closed(logs, "en_US")
        return kr >= closed_before[0] + 3 and en >= closed_before[1] + 1

    await wait_until(all_written, timeout_s=20, interval_s=0.2)
    after = f"/video/after-{mark}"
    plain = {"authorization": f"Bearer {token}", "x-region": "en_US"}
    reply = await trio.to_thread.run_sync(lambda: request(fleet.kr_elb, after, headers=plain))
    assert reply.status == 404, reply

    def access_logged() -> bool:
        found = files_holding(logs, [after.encode()])
        return {f.rsplit("-", 1)[0] for f in found} >= {"access-proxy-ko_KR", "access-proxy-en_US"}

    await wait_until(access_logged, timeout_s=20, interval_s=0.2)
    # ... and no file holds the token, nor its signature alone (a log cutting it short)
    signature = token.rsplit(".", 1)[-1].encode()
    assert len(signature) >= 16
    assert files_holding(base, [token.encode(), signature]) == []


async def test_backend_killed_mid_conversation(ws_fleet: Any, ws_token: str) -> None:
    fleet, layout = ws_fleet
    url = ws_url(fleet.kr_elb, "/video/ws/echo")
    headers = [*bearer(ws_token), (b"X-Region", b"en_US")]
    pid = await trio.to_thread.run_sync(fleet.pid, f"backend-{layout['backends'][1]}")
    async with open_ws(url, extra_headers=headers) as ws:
        await ws.send_message("one")
        assert await ws.get_message() == "one"
        os.kill(pid, signal.SIGKILL)
        code = await closed_code(ws)
        assert code is not None and code not in (1005, 1006)
    # the proxies keep running
    assert (await trio.to_thread.run_sync(request, fleet.kr_elb, "/health")).status == 200


async def test_reload_keeps_untouched_and_drains_removed_instances(
    ws_fleet: Any, ws_token: str
) -> None:
    fleet, layout = ws_fleet
    b = layout["b"]
    base: Path = layout["base"]
    proxy = fleet.kr_proxies[0]
    msa = base / "run" / "msa_ko_KR.yaml"  # the copy the launcher gave the proxies
    async with open_ws(ws_url(proxy, "/chat/ws/echo"), extra_headers=bearer(ws_token)) as chat:
        # A reload that adds a service and leaves chat as it was.
        msa.write_text(
            _msa_kr(b, layout["auth_ports"][0], [b[0]])
            + f"""  - name: extra
    instance: ["{b[2]}"]
"""
        )

        def reloaded() -> bool:
            return (
                request(
                    proxy, "/extra/health", headers={"authorization": f"Bearer {ws_token}"}
                ).status
                == 200
            )

        await wait_until(lambda: trio.to_thread.run_sync(reloaded), timeout_s=20, interval_s=0.2)
        await chat.send_message("still here")
        assert await chat.get_message() == "still here"
        # A reload that moves chat to another instance: drain_s (1 s), then 1001.
        msa.write_text(_msa_kr(b, layout["auth_ports"][0], [b[2]]))
        assert await closed_code(chat, timeout_s=20) == 1001


async def test_sigterm_drains_with_1001(ws_fleet: Any, ws_token: str) -> None:
    fleet, _ = ws_fleet
    proxy = fleet.kr_proxies[1]
    port = proxy.rsplit(":", 1)[1]
    pid = await trio.to_thread.run_sync(fleet.pid, f"proxy-ko_KR-{port}")
    async with open_ws(ws_url(proxy, "/chat/ws/echo"), extra_headers=bearer(ws_token)) as ws:
        await ws.send_message("a")
        assert await ws.get_message() == "a"
        os.kill(pid, signal.SIGTERM)
        # within drain_s the socket still carries messages, then 1001
        for i in range(3):
            await ws.send_message(f"m{i}")
            assert await ws.get_message() == f"m{i}"
        assert await closed_code(ws) == 1001
