"""`proxy.app.ProxyApp` in-process: real backends and the proxy itself on port 0 of
127.0.0.1, a real upstream pool in between, and the config built from the schema Structs.

No test sleeps: a backend that must hold a request waits on a `trio.Event`, and every wait
on the network runs under a `fail_after` deadline.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from httpio.balance import Endpoint
from httpio.body import RequestBody
from httpio.errors import RouteNotFound
from httpio.health import Outcome, State
from httpio.messages import Request, Response, json_response
from httpio.protocol import Headers
from httpio.run import serve_tcp
from httpio.settings import HealthSettings, ServerLimits, ServiceLimits
from httpio.upstream import UpstreamPool
from proxy import forwarding
from proxy.app import ProxyApp
from proxy.state import ProxyConfig
from tests.support.accel import patches
from tests.support.ports import held_port
from tests.support.requests import bodiless_get
from topology.schema import (
    GatewayConfig,
    InstanceSpec,
    MsaFile,
    RegionSpec,
    RegionStructure,
    ServiceSpec,
)

DEADLINE_S = 10
REGION = "ko_KR"
Handler = Callable[[Request], Awaitable[Response]]


# -- config -----------------------------------------------------------------------------------
def service(name: str, *urls: str, **options: Any) -> ServiceSpec:
    instances: list[str | InstanceSpec] = list(urls)
    return ServiceSpec(name=name, instance=instances, **options)


def make_config(
    *services: ServiceSpec,
    elbs: dict[str, list[str]] | None = None,
    policy: str = "round_robin",
) -> ProxyConfig:
    elbs = elbs if elbs is not None else {REGION: ["http://127.0.0.1:9"]}
    return ProxyConfig(
        msa=MsaFile(service=list(services)),
        rs=RegionStructure(
            cur_region_code=REGION,
            regions=[RegionSpec(region_code=c, available_zone=u) for c, u in elbs.items()],
        ),
        gateway=GatewayConfig(load_balancer_policy=policy),
        region=REGION,
        services={s.name: s for s in services},
        regions={c: list(u) for c, u in elbs.items()},
    )


# -- servers ----------------------------------------------------------------------------------
class Backend:
    """A small backend that answers with what it saw; ``/slow`` waits for ``release``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[tuple[Request, bytes]] = []
        self.entered = trio.Event()
        self.release = trio.Event()

    async def handle(self, request: Request) -> Response:
        body = await request.body.read_all()
        self.seen.append((request, body))
        if request.path == "/slow":
            self.entered.set()
            await self.release.wait()
        return json_response(
            200,
            {
                "backend": self.name,
                "method": request.method,
                "target": request.target,
                "body": body.decode(),
                "headers": {n.decode(): v.decode() for n, v in request.headers},
            },
        )


async def read_head(stream: trio.SocketStream) -> bytes | None:
    """What arrived up to the end of a request head (and perhaps beyond); None on EOF."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buffer += data
    return buffer


class Resetter:
    """Reads one whole request, then closes the connection without answering."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            buffer = await read_head(stream)
            if buffer is None:
                return
            head, _, body = buffer.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                data = await stream.receive_some(65536)
                if not data:
                    return
                body += data
            self.requests.append(head + b"\r\n\r\n" + body)


@pytest.fixture
def refused_url() -> Iterator[str]:
    """An instance with nothing listening: a port held bound for the test, never listening."""
    with held_port() as port:
        yield f"http://127.0.0.1:{port}"


@asynccontextmanager
async def serving(*handlers: Handler) -> AsyncIterator[list[str]]:
    """Serve each handler on its own port; yields their origins."""
    async with trio.open_nursery() as nursery:
        urls = []
        for handler in handlers:
            port = await nursery.start(serve_tcp, handler, 0)
            urls.append(f"http://127.0.0.1:{port}")
        yield urls
        nursery.cancel_scope.cancel()


class Proxy:
    """A `ProxyApp` served on a port, and a client connected to it."""

    def __init__(self, app: ProxyApp, url: str, client: UpstreamPool) -> None:
        self.app = app
        self.url = url
        self.client = client

    async def call(
        self, method: str, target: str, headers: Headers | None = None, body: bytes = b""
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        with trio.fail_after(DEADLINE_S):
            response = await self.client.request(self.url, method, target, headers or [], body)
            data = await response.read_all()
        return response.status, dict(response.headers), data


@asynccontextmanager
async def proxy_for(config: ProxyConfig) -> AsyncIterator[Proxy]:
    upstream, client = UpstreamPool(), UpstreamPool()
    app = ProxyApp(config, upstream, name="proxy-test")
    try:
        async with serving(app.handle) as (url,):
            yield Proxy(app, url, client)
    finally:
        await client.aclose()
        await upstream.aclose()


def backend_of(body: bytes) -> str:
    return str(json.loads(body)["backend"])


def error_of(body: bytes) -> tuple[int, str]:
    doc = json.loads(body)
    # a proxy's error bodies carry the request id (issue 12), equal to its X-Request-ID
    assert set(doc) == {"status", "error", "detail", "request_id"}
    return doc["status"], doc["error"]


def direct_request(
    path: str,
    *,
    client: tuple[str, int] = ("127.0.0.1", 40000),
    via_elb: bool = False,
    headers: Headers | None = None,
) -> Request:
    """A bodiless GET as the server loop would hand it to `ProxyApp.handle`."""
    stream, _ = trio.testing.memory_stream_pair()
    body = RequestBody(bodiless_get(), stream, ServerLimits())
    headers = headers or [(b"host", b"p")]
    return Request("GET", path, path, "", headers, "1.1", client, body, via_elb)


# -- forwarding -------------------------------------------------------------------------------
async def test_round_robin_across_two_instances() -> None:
    a, b = Backend("a"), Backend("b")
    async with serving(a.handle, b.handle) as urls:
        async with proxy_for(make_config(service("svc", *urls))) as proxy:
            names = []
            for i in range(4):
                status, _, body = await proxy.call("GET", f"/svc/item/{i}?x=1&y=%20")
                assert status == 200
                names.append(backend_of(body))
    assert names == ["a", "b", "a", "b"]
    assert [r.target for r, _ in a.seen] == ["/item/0?x=1&y=%20", "/item/2?x=1&y=%20"]


async def test_request_and_response_headers_across_the_proxy() -> None:
    a = Backend("a")
    async with serving(a.handle) as urls:
        async with proxy_for(make_config(service("svc", *urls))) as proxy:
            status, headers, body = await proxy.call(
                "GET",
                "/svc/x",
                [
                    (b"x-user", b"mallory"),
                    (b"x-user-role", b"admin"),
                    (b"x-request-id", b"abc-123"),
                    (b"x-forwarded-for", b"1.2.3.4"),
                    (b"connection", b"x-private"),
                    (b"x-private", b"1"),
                ],
            )
    assert status == 200
    seen = json.loads(body)["headers"]
    assert "x-user" not in seen and "x-user-role" not in seen
    assert "x-private" not in seen
    assert seen["x-forwarded-for"] == "1.2.3.4, 127.0.0.1"
    assert seen["via"] == "1.1 proxy-test"
    assert seen["x-request-id"] == "abc-123"
    assert seen["host"] == urls[0].removeprefix("http://")
    assert headers[b"via"] == b"1.1 proxy-test"
    assert headers[b"x-request-id"] == b"abc-123"


async def test_proxy_answers_its_own_health() -> None:
    async with proxy_for(make_config(service("svc", "http://127.0.0.1:1"))) as proxy:
        status, _, body = await proxy.call("GET", "/health")
    assert status == 200
    assert json.loads(body) == {"status": "ok", "name": "proxy-test", "region": REGION}


@pytest.mark.parametrize(
    ("target", "headers", "status", "error"),
    [
        ("/nope/x", [], 404, "not_found"),
        ("/", [], 404, "not_found"),
        ("/svc/x", [(b"x-region", b"ja_JP")], 404, "not_found"),
        ("/svc/x", [(b"x-region", b"en_US"), (b"x-gateway-hop", b"en_US")], 508, "loop_detected"),
    ],
)
async def test_refusals_are_json(target: str, headers: Headers, status: int, error: str) -> None:
    config = make_config(
        service("svc", "http://127.0.0.1:1"),
        elbs={REGION: ["http://127.0.0.1:9"], "en_US": ["http://127.0.0.1:9"]},
    )
    async with proxy_for(config) as proxy:
        got, response_headers, body = await proxy.call("GET", target, headers)
    assert got == status
    assert response_headers[b"content-type"] == b"application/json"
    assert error_of(body) == (status, error)


async def test_another_region_goes_to_its_elb_marked_once() -> None:
    elb = Backend("elb-en")
    async with serving(elb.handle) as (elb_url,):
        config = make_config(
            service("svc", "http://127.0.0.1:1"),
            elbs={REGION: ["http://127.0.0.1:9"], "en_US": [elb_url]},
        )
        async with proxy_for(config) as proxy:
            status, headers, body = await proxy.call(
                "POST", "/sound/play?id=7", [(b"x-region", b"en_US")], b"{}"
            )
    assert status == 200
    assert backend_of(body) == "elb-en"
    request, sent = elb.seen[0]
    assert request.target == "/sound/play?id=7"  # the serving region routes it again
    assert request.header(b"x-gateway-hop") == REGION.encode()
    assert request.header(b"x-region") == b"en_US"
    assert sent == b"{}"
    assert headers[b"via"] == b"1.1 proxy-test"


async def test_a_clients_forwarded_proto_and_host_through_the_elb_are_not_trusted() -> None:
    a = Backend("a")
    async with serving(a.handle) as urls:
        upstream = UpstreamPool()
        app = ProxyApp(make_config(service("svc", *urls)), upstream, name="proxy-test")
        request = direct_request(
            "/svc/x",
            via_elb=True,  # handed off by the ELB: the usual way a client arrives
            headers=[
                (b"host", b"gw.example"),
                (b"x-forwarded-proto", b"https"),
                (b"x-forwarded-host", b"evil.example"),
            ],
        )
        with trio.fail_after(DEADLINE_S):
            response = await app.handle(request)
            assert not isinstance(response.body, bytes)
            while await response.body.read():
                pass
            await response.body.aclose()
        await upstream.aclose()
    seen, _ = a.seen[0]
    assert seen.header(b"x-forwarded-proto") == b"http"
    assert seen.header(b"x-forwarded-host") == b"gw.example"


# -- failures and retries ---------------------------------------------------------------------
async def test_dead_instance_is_retried_on_the_other_for_get_and_post(refused_url: str) -> None:
    live = Backend("live")
    async with serving(live.handle) as (live_url,):
        async with proxy_for(make_config(service("svc", refused_url, live_url))) as proxy:
            for method, body in (("GET", b""), ("POST", b"payload"), ("GET", b"")):
                status, _, answer = await proxy.call(method, "/svc/x", body=body)
                assert status == 200, answer
                assert backend_of(answer) == "live"
            stats = proxy.app.pools["svc"].statistics()["instances"]
    assert [(r.method, b) for r, b in live.seen] == [
        ("GET", b""),
        ("POST", b"payload"),
        ("GET", b""),
    ]
    assert isinstance(stats, list)
    dead = next(i for i in stats if i["url"] == refused_url)
    # Round robin sent the first two requests to it first; each retry went to the live one,
    # which had answered most recently, without taking its turn in the rotation: so the
    # third request's turn was the live one's.
    assert dead["failures"] == 2
    assert dead["state"] == "suspect" and dead["last_failure_reason"] == "connect_failure"


async def test_reset_after_the_request_was_sent_is_retried_for_get_not_post() -> None:
    resetter, live = Resetter(), Backend("live")
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, resetter.handle, 0, host="127.0.0.1")
        )
        resetter_url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        async with serving(live.handle) as (live_url,):
            config = make_config(service("svc", resetter_url, live_url))
            async with proxy_for(config) as proxy:
                status, _, body = await proxy.call("GET", "/svc/a")
                assert status == 200
                assert backend_of(body) == "live"
                # round robin: the POST goes to the resetter first, and must not be replayed
                status, _, body = await proxy.call("POST", "/svc/b", body=b"once")
                assert status == 502
                assert error_of(body)[0] == 502
        nursery.cancel_scope.cancel()
    assert [r.split(b"\r\n", 1)[0] for r in resetter.requests] == [
        b"GET /a HTTP/1.1",
        b"POST /b HTTP/1.1",
    ]
    assert resetter.requests[1].endswith(b"\r\n\r\nonce")
    assert [(r.method, r.target) for r, _ in live.seen] == [("GET", "/a")]


async def test_no_instances_is_503() -> None:
    async with proxy_for(make_config(service("svc"))) as proxy:
        status, _, body = await proxy.call("GET", "/svc/x")
    assert status == 503
    assert error_of(body) == (503, "no_healthy_instance")
    assert proxy.app.limiters["svc"].in_flight.in_use == 0


async def test_every_instance_ejected_without_panic_is_503(refused_url: str) -> None:
    health = HealthSettings(fall=1, panic=False)
    async with proxy_for(make_config(service("svc", refused_url, health=health))) as proxy:
        proxy.app.pools["svc"].record_check(Endpoint.parse(refused_url), False)
        status, _, body = await proxy.call("GET", "/svc/x")
    assert status == 503
    assert error_of(body) == (503, "no_healthy_instance")


async def test_no_instance_accepting_a_connection_is_503_with_retry_after(
    refused_url: str,
) -> None:
    """Nothing reached any instance: the request can safely come again later (Envoy's 503)."""
    async with proxy_for(make_config(service("svc", refused_url))) as proxy:
        status, headers, body = await proxy.call("POST", "/svc/x", body=b"once")
        assert proxy.app.limiters["svc"].in_flight.in_use == 0
    assert status == 503 and headers[b"retry-after"] == b"1"
    assert error_of(body) == (503, "no_healthy_instance")


async def test_every_auth_server_refusing_is_a_dependency_outage(refused_url: str) -> None:
    """Signin with every auth server down: 503 dependency_unavailable, not 502."""
    other = socket.socket()
    other.bind(("127.0.0.1", 0))  # a second auth server, also not listening
    with other:
        dead = [refused_url, f"http://127.0.0.1:{other.getsockname()[1]}"]
        config = make_config(service("auth", *dead, public=True))
        async with proxy_for(config) as proxy:
            status, headers, body = await proxy.call("POST", "/auth/signin", body=b"{}")
            tried = [instance_stats(proxy, url, "auth")["failures"] for url in dead]
    assert status == 503 and headers[b"retry-after"] == b"1"
    assert error_of(body) == (503, "dependency_unavailable")
    assert tried == [1, 1]  # the connect failure was retried on the other one


async def test_refused_connects_do_not_count_as_retries(refused_url: str) -> None:
    """With no retries at all, a request still moves on from instances that refuse the
    connection (nothing was sent, nothing was done), as nginx's proxy_next_upstream does."""
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    live = Backend("live")
    with other:
        dead = [refused_url, f"http://127.0.0.1:{other.getsockname()[1]}"]
        async with serving(live.handle) as (live_url,):
            limits = ServiceLimits(retries=0)
            config = make_config(service("svc", *dead, live_url, limits=limits))
            async with proxy_for(config) as proxy:
                status, _, body = await proxy.call("POST", "/svc/x", body=b"once")
                assert_nothing_held(proxy)
                failures = [instance_stats(proxy, url)["failures"] for url in dead]
    assert status == 200 and backend_of(body) == "live"
    assert failures == [1, 1] and [b for _, b in live.seen] == [b"once"]


async def test_a_reset_after_sending_is_still_502_not_503() -> None:
    resetter = Resetter()
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            partial(trio.serve_tcp, resetter.handle, 0, host="127.0.0.1")
        )
        url = f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        async with proxy_for(make_config(service("auth", url))) as proxy:
            status, headers, body = await proxy.call("POST", "/auth/signin", body=b"{}")
        nursery.cancel_scope.cancel()
    assert status == 502 and b"retry-after" not in headers
    assert error_of(body)[0] == 502  # it took the request: what it did with it is unknown


class Hanger:
    """Reads a request head, then never answers (a SIGSTOPped instance, as the proxy sees it:
    the kernel accepted the connection); notices when the proxy gives up and closes."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []

    async def handle(self, stream: trio.SocketStream) -> None:
        async with stream:
            buffer = await read_head(stream)
            if buffer is None:
                return
            self.requests.append(buffer.split(b"\r\n", 1)[0])
            while await stream.receive_some(65536):
                pass


@asynccontextmanager
async def hanging(n: int) -> AsyncIterator[tuple[list[Hanger], list[str]]]:
    hangers = [Hanger() for _ in range(n)]
    async with trio.open_nursery() as nursery:
        urls = []
        for h in hangers:
            listeners = await nursery.start(partial(trio.serve_tcp, h.handle, 0, host="127.0.0.1"))
            urls.append(f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}")
        yield hangers, urls
        nursery.cancel_scope.cancel()


def assert_nothing_held(proxy: Proxy, name: str = "svc") -> None:
    """The in-flight slot and every instance's in-flight count are back to zero."""
    assert proxy.app.limiters[name].in_flight.in_use == 0
    assert [s.in_flight for s in proxy.app.pools[name].balancer.states] == [0] * len(
        proxy.app.pools[name].balancer.states
    )


def instance_stats(proxy: Proxy, url: str, name: str = "svc") -> dict[str, Any]:
    rows = proxy.app.pools[name].statistics()["instances"]
    assert isinstance(rows, list)
    return dict(next(r for r in rows if r["url"] == url))


async def test_a_get_caught_on_a_hung_instance_is_retried_elsewhere_a_post_is_not() -> None:
    live = Backend("live")
    limits = ServiceLimits(per_try_timeout_s=0.2)
    async with hanging(1) as ([hanger], [hung_url]), serving(live.handle) as (live_url,):
        config = make_config(service("svc", hung_url, live_url, limits=limits))
        async with proxy_for(config) as proxy:
            status, _, body = await proxy.call("GET", "/svc/a")  # round robin: hung one first
            assert status == 200 and backend_of(body) == "live"
            assert_nothing_held(proxy)
            status, _, body = await proxy.call("POST", "/svc/b", body=b"once")
            assert status == 504 and error_of(body) == (504, "upstream_timeout")
            assert_nothing_held(proxy)
            hung = instance_stats(proxy, hung_url)
    assert hanger.requests == [b"GET /a HTTP/1.1", b"POST /b HTTP/1.1"]
    assert [(r.method, r.target) for r, _ in live.seen] == [("GET", "/a")]  # POST not replayed
    assert hung["last_failure_reason"] == "timeout" and hung["gateway_failures"] == 2
    assert hung["state"] == "suspect" and hung["failures"] == 2


async def test_the_deadline_over_all_tries_bounds_the_retry() -> None:
    for deadline_s, retried in ((0.2, False), (5.0, True)):
        limits = ServiceLimits(per_try_timeout_s=0.2, response_timeout_s=deadline_s)
        async with hanging(2) as (hangers, urls):
            async with proxy_for(make_config(service("svc", *urls, limits=limits))) as proxy:
                status, _, body = await proxy.call("GET", "/svc/x")
                assert_nothing_held(proxy)
        assert status == 504 and error_of(body) == (504, "upstream_timeout")
        assert [len(h.requests) for h in hangers] == [1, 1 if retried else 0]


async def test_a_request_cancelled_while_waiting_frees_its_slot_and_its_count() -> None:
    a = Backend("a")
    async with serving(a.handle) as urls:
        upstream = UpstreamPool()
        app = ProxyApp(make_config(service("svc", *urls)), upstream, name="proxy-test")
        with trio.fail_after(DEADLINE_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(app.handle, direct_request("/svc/slow"))
                await a.entered.wait()
                assert app.limiters["svc"].in_flight.in_use == 1
                assert app.pools["svc"].balancer.states[0].in_flight == 1
                nursery.cancel_scope.cancel()  # the server shutting the request down
        a.release.set()
        await upstream.aclose()
    state = app.pools["svc"].balancer.states[0]
    assert app.limiters["svc"].in_flight.in_use == 0
    assert (state.in_flight, state.requests, state.failures) == (0, 0, 0)
    assert app.pools["svc"].health.state(urls[0]) is State.HEALTHY  # says nothing about it


class Trickle:
    """Answers at once, then sends its body slowly: ``CHUNKS`` chunks ``GAP_S`` apart."""

    CHUNKS = 8
    GAP_S = 0.05

    class _Body:
        def __init__(self) -> None:
            self.left = Trickle.CHUNKS

        async def read(self) -> bytes:
            if not self.left:
                return b""
            await trio.sleep(Trickle.GAP_S)
            self.left -= 1
            return b"x" * 1000

        async def aclose(self) -> None:
            pass

    async def handle(self, request: Request) -> Response:
        length = b"%d" % (self.CHUNKS * 1000)
        return Response(200, [(b"content-length", length)], self._Body())


async def test_a_slow_but_moving_body_outlasts_every_head_timeout() -> None:
    """The per-try timeout and the deadline are for the response head: a body that keeps
    coming may take longer than both (here 0.4 s against 0.1 s)."""
    limits = ServiceLimits(per_try_timeout_s=0.1, response_timeout_s=0.1)
    async with serving(Trickle().handle) as urls:
        async with proxy_for(make_config(service("svc", *urls, limits=limits))) as proxy:
            status, _, body = await proxy.call("GET", "/svc/big")
            assert_nothing_held(proxy)
            stats = instance_stats(proxy, urls[0])
    assert status == 200 and body == b"x" * 8000
    assert stats["state"] == "healthy" and stats["requests"] == 1


@patches("proxy.forwarding", "proxy.filters.response_headers")
async def test_a_failure_while_relaying_the_head_frees_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    a = Backend("a")

    def broken(*args: object) -> Response:
        raise RuntimeError("a bug in the relaying code")

    async with serving(a.handle) as urls:
        async with proxy_for(make_config(service("svc", *urls))) as proxy:
            # the response-header rewrite of every relayed answer (the response_headers filter)
            monkeypatch.setattr(forwarding, "client_response_headers", broken)
            status, _, _ = await proxy.call("GET", "/svc/x")
            assert status == 500
            assert_nothing_held(proxy)
            assert proxy.app.upstream.in_use == 0


# -- limits -----------------------------------------------------------------------------------
async def test_max_in_flight_exceeded_is_503_with_retry_after() -> None:
    a = Backend("a")
    limits = ServiceLimits(max_in_flight=1)
    async with serving(a.handle) as urls:
        async with proxy_for(make_config(service("svc", *urls, limits=limits))) as proxy:
            results: list[int] = []

            async def slow() -> None:
                status, _, _ = await proxy.call("GET", "/svc/slow")
                results.append(status)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(slow)
                with trio.fail_after(DEADLINE_S):
                    await a.entered.wait()
                status, headers, body = await proxy.call("GET", "/svc/fast")
                assert status == 503
                assert headers[b"retry-after"] == b"1"
                assert error_of(body) == (503, "overloaded")
                a.release.set()
            assert results == [200]

            status, _, _ = await proxy.call("GET", "/svc/fast")  # the slot came back
            assert status == 200
            stats = proxy.app.limiters["svc"].in_flight.statistics()
    assert stats == {"in_use": 0, "limit": 1, "peak": 1, "refused": 1}
    assert [r.path for r, _ in a.seen] == ["/slow", "/fast"]  # the refused one never left


# -- admin ------------------------------------------------------------------------------------


@pytest.mark.parametrize("client", [("127.0.0.1", 40000), ("::1", 40000)])
async def test_admin_backends_on_a_direct_loopback_connection(client: tuple[str, int]) -> None:
    app = ProxyApp(
        make_config(service("svc", "http://127.0.0.1:1", "http://127.0.0.1:2")),
        UpstreamPool(),
        name="proxy-test",
    )
    response = await app.handle(direct_request("/admin/backends", client=client))
    assert response.status == 200
    assert isinstance(response.body, bytes)
    doc = json.loads(response.body)
    assert doc["proxy"] == "proxy-test"
    assert [s["service"] for s in doc["services"]] == ["svc"]
    assert [i["url"] for i in doc["services"][0]["instances"]] == [
        "http://127.0.0.1:1",
        "http://127.0.0.1:2",
    ]
    assert doc["limits"]["svc"]["in_flight"]["limit"] == 1024


@pytest.mark.parametrize(
    ("client", "via_elb"),
    [
        (("127.0.0.1", 40000), True),  # a client handed off or relayed by the ELB
        (("10.1.2.3", 40000), False),  # a direct connection from another host
        (("10.1.2.3", 40000), True),
    ],
)
async def test_admin_is_not_found_through_the_elb_or_from_elsewhere(
    client: tuple[str, int], via_elb: bool
) -> None:
    app = ProxyApp(make_config(service("svc", "http://127.0.0.1:1")), UpstreamPool(), name="p")
    for path in ("/admin/backends", "/admin/cache/purge"):
        with pytest.raises(RouteNotFound):
            await app.handle(direct_request(path, client=client, via_elb=via_elb))


async def test_admin_backends_over_a_real_direct_connection() -> None:
    async with proxy_for(make_config(service("svc", "http://127.0.0.1:1"))) as proxy:
        status, _, body = await proxy.call("GET", "/admin/backends")
    assert status == 200
    assert json.loads(body)["region"] == REGION


# -- config reload ----------------------------------------------------------------------------
async def test_apply_keeps_pool_state_of_unchanged_instances() -> None:
    a, b, c = "http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"
    elbs = {REGION: ["http://127.0.0.1:9"], "en_US": ["http://127.0.0.1:9001"]}
    first = make_config(service("svc", a, b), service("old", a), elbs=elbs)
    app = ProxyApp(first, UpstreamPool(), name="p")
    pool, elb_pool = app.pools["svc"], app.elb_pools["en_US"]
    eb = Endpoint.parse(b)
    for _ in range(3):  # default fall = 3
        pool.record_check(eb, False)
    pool.begin(eb)
    pool.end(eb, Outcome.SUCCESS, 0.25)
    assert pool.health.state(b) is State.EJECTED

    reloaded: list[ProxyConfig] = []
    app.on_reload.append(reloaded.append)
    second = make_config(service("svc", b, c, policy="least_conn"), service("new", c), elbs=elbs)
    app.apply(second)

    assert app.config is second
    assert reloaded == [second]
    assert app.pools["svc"] is pool
    assert app.elb_pools["en_US"] is elb_pool
    assert set(app.pools) == {"svc", "new"}
    assert pool.health.keys() == [b, c]
    assert pool.health.state(b) is State.EJECTED  # still out: only checks bring it back
    assert pool.health.state(c) is State.HEALTHY
    kept = pool.balancer.states[0]
    assert (kept.endpoint.url, kept.requests, kept.ewma_s) == (b, 1, 0.25)
    assert pool.balancer.policy == "least_conn"
    assert {pool.pick().url for _ in range(4)} == {c}


async def test_a_reload_during_a_request_does_not_leak_its_in_flight_slot() -> None:
    a = Backend("a")
    async with serving(a.handle) as urls:
        config = make_config(service("svc", *urls, limits=ServiceLimits(max_in_flight=1)))
        async with proxy_for(config) as proxy:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(proxy.call, "GET", "/svc/slow")
                with trio.fail_after(DEADLINE_S):
                    await a.entered.wait()
                proxy.app.apply(config)  # e.g. config.json touched: same services
                a.release.set()
            assert proxy.app.limiters["svc"].in_flight.in_use == 0
            status, _, _ = await proxy.call("GET", "/svc/fast")
            assert status == 200
