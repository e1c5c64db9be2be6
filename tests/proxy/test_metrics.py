"""`proxy.metrics.ProxyObserver` on a real server loop: a `ProxyApp` served on a port of
127.0.0.1 with its observer and a real `AccessLog`, real backends on their own ports (one
that answers, one that refuses every connect, one that answers 503), a real client.

Counters are read from the process's registry before and after, by labels no other test
uses (each instance's URL holds a port of this test).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing
from prometheus_client import REGISTRY

from httpio.access_log import AccessLine, AccessLog, RequestNote
from httpio.body import RequestBody
from httpio.listen import listener_port, open_listeners
from httpio.messages import Request, Response, json_response
from httpio.server import HttpServer
from httpio.settings import ServerLimits
from httpio.upstream import UpstreamPool
from proxy.app import ProxyApp
from proxy.metrics import REFUSAL_LINES_PER_S, ProxyObserver
from proxy.state import ProxyConfig
from tests.support.ports import held_port
from tests.support.requests import bodiless_get
from topology.schema import (
    GatewayConfig,
    MsaFile,
    RateLimitSpec,
    RegionSpec,
    RegionStructure,
    ServiceSpec,
)

DEADLINE_S = 10
REGION = "ko_KR"


def make_config(*services: ServiceSpec) -> ProxyConfig:
    elbs = {REGION: ["http://127.0.0.1:9"]}
    return ProxyConfig(
        msa=MsaFile(service=list(services)),
        rs=RegionStructure(
            cur_region_code=REGION,
            regions=[RegionSpec(region_code=c, available_zone=u) for c, u in elbs.items()],
        ),
        gateway=GatewayConfig(load_balancer_policy="round_robin"),
        region=REGION,
        services={s.name: s for s in services},
        regions=elbs,
    )


async def answering(request: Request) -> Response:
    return json_response(200, {"path": request.path})


async def failing(request: Request) -> Response:
    return json_response(503, {"error": "busy"})


@pytest.fixture
def refused_url() -> Iterator[str]:
    with held_port() as port:
        yield f"http://127.0.0.1:{port}"


class Served:
    def __init__(self, app: ProxyApp, url: str, log: AccessLog, client: UpstreamPool) -> None:
        self.app, self.url, self.log, self.client = app, url, log, client

    async def get(self, target: str, request_id: str) -> tuple[int, dict[bytes, bytes]]:
        with trio.fail_after(DEADLINE_S):
            response = await self.client.request(
                self.url, "GET", target, [(b"x-request-id", request_id.encode())], b""
            )
            await response.read_all()
        return response.status, dict(response.headers)

    def lines(self) -> list[dict[str, Any]]:
        self.log.flush()
        return [json.loads(raw) for raw in Path(self.log.path).read_text().splitlines()]

    def line(self, request_id: str) -> dict[str, Any]:
        self.log.flush()
        for raw in Path(self.log.path).read_text().splitlines():
            doc: dict[str, Any] = json.loads(raw)
            if doc["request_id"] == request_id:
                return doc
        raise AssertionError(f"no access-log line for {request_id}")


@asynccontextmanager
async def backends(*handlers: Any) -> AsyncIterator[list[str]]:
    async with trio.open_nursery() as nursery:
        urls = []
        for handler in handlers:
            listeners = await open_listeners(0)
            await nursery.start(HttpServer(handler).serve_listeners, listeners)
            urls.append(f"http://127.0.0.1:{listener_port(listeners)}")
        yield urls
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def proxy_with_observer(config: ProxyConfig, tmp_path: Path) -> AsyncIterator[Served]:
    upstream, client = UpstreamPool(), UpstreamPool()
    app = ProxyApp(config, upstream, name="proxy-metrics-test")
    log = AccessLog(tmp_path / "access.log")
    server = HttpServer(app.handle, name="proxy-metrics-test")
    server.observer = ProxyObserver(app, log)
    try:
        async with trio.open_nursery() as nursery:
            listeners = await open_listeners(0)
            await nursery.start(server.serve_listeners, listeners)
            yield Served(app, f"http://127.0.0.1:{listener_port(listeners)}", log, client)
            nursery.cancel_scope.cancel()
    finally:
        log.close()
        await client.aclose()
        await upstream.aclose()


def attempts(service: str, instance: str, outcome: str) -> float:
    value = REGISTRY.get_sample_value(
        "gateway_upstream_attempts_total",
        {"service": service, "instance": instance, "outcome": outcome},
    )
    return value or 0.0


async def test_each_try_counts_against_its_own_instance(refused_url: str, tmp_path: Path) -> None:
    """A request whose first try is refused counts a connect_error on the refusing instance
    and an ok on the one that answered; its line names the one that answered and one retry."""
    async with backends(answering) as (live_url,):
        config = make_config(ServiceSpec(name="tries", instance=[refused_url, live_url]))
        async with proxy_with_observer(config, tmp_path) as proxy:
            status, headers = await proxy.get("/tries/a", "tries-1")  # round robin: refused first
            assert status == 200 and headers[b"x-request-id"] == b"tries-1"
            assert attempts("tries", refused_url, "connect_error") == 1
            assert attempts("tries", live_url, "ok") == 1
            assert attempts("tries", refused_url, "ok") == 0
            line = proxy.line("tries-1")
            assert (line["upstream"], line["retries"], line["error"]) == (live_url, 1, "-")
            assert line["upstream_ms"] is not None
            # whichever instance the next one tries first, its line and the counters agree
            status, _ = await proxy.get("/tries/b", "tries-2")
            assert status == 200
            line = proxy.line("tries-2")
            assert line["upstream"] == live_url
            assert attempts("tries", refused_url, "connect_error") == 1 + line["retries"]
            assert attempts("tries", live_url, "ok") == 2


async def test_an_answer_of_5xx_and_a_request_no_instance_took(
    refused_url: str, tmp_path: Path
) -> None:
    async with backends(failing) as (busy_url,):
        config = make_config(
            ServiceSpec(name="busy", instance=[busy_url]),
            ServiceSpec(name="dead", instance=[refused_url]),
        )
        async with proxy_with_observer(config, tmp_path) as proxy:
            status, _ = await proxy.get("/busy/x", "busy-1")
            assert status == 503
            assert attempts("busy", busy_url, "5xx") == 1
            assert attempts("busy", busy_url, "ok") == 0
            line = proxy.line("busy-1")
            assert (line["upstream"], line["retries"], line["status"]) == (busy_url, 0, 503)

            status, _ = await proxy.get("/dead/x", "dead-1")
            assert status == 503  # no instance accepted a connection
            assert attempts("dead", refused_url, "connect_error") == 1
            line = proxy.line("dead-1")
            assert (line["upstream"], line["retries"]) == (refused_url, 0)
            assert line["error"] == "no_healthy_instance" and line["upstream_ms"] is None


async def garbage_to(url: str, raw: bytes) -> bytes:
    host, _, port = url.removeprefix("http://").rpartition(":")
    with trio.fail_after(DEADLINE_S):
        stream = await trio.open_tcp_stream(host, int(port))
        async with stream:
            await stream.send_all(raw)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
    return data


def requests_total(**labels: str) -> float:
    return REGISTRY.get_sample_value("gateway_requests_total", labels) or 0.0


async def test_a_request_refused_before_the_handler_has_its_line_and_counts(
    tmp_path: Path,
) -> None:
    config = make_config(ServiceSpec(name="svc", instance=["http://127.0.0.1:9"]))
    labels = {"region": REGION, "service": "-", "method": "-", "code": "400"}
    before = requests_total(**labels)
    async with proxy_with_observer(config, tmp_path) as proxy:
        answer = await garbage_to(proxy.url, b"GARBAGE /\x00 HTTP/9\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 ")
        lines = proxy.lines()
    assert requests_total(**labels) == before + 1
    (line,) = lines
    assert (line["status"], line["error"], line["method"], line["path"]) == (
        400,
        "bad_request",
        "-",
        "-",
    )
    assert line["client_ip"] == "127.0.0.1" and line["service"] == "-"
    assert line["bytes_out"] > 0
    # the line's request id is the one the answer carried, in its body and its header
    head, _, body = answer.partition(b"\r\n\r\n")
    assert msgspec.json.decode(body)["request_id"] == line["request_id"] != "-"
    assert b"\r\nx-request-id: " + line["request_id"].encode() + b"\r\n" in head + b"\r\n"


class Lines:
    def __init__(self) -> None:
        self.lines: list[object] = []

    def write(self, line: object) -> None:
        self.lines.append(line)


def test_a_flood_of_refusals_writes_a_bounded_number_of_lines() -> None:
    """Metrics count every refusal; the log takes `REFUSAL_LINES_PER_S` a second."""
    now = [100.0]
    app = ProxyApp(make_config(), UpstreamPool(), name="proxy-flood-test")
    sink = Lines()
    observer = ProxyObserver(app, sink, clock=lambda: now[0])
    stream, _ = trio.testing.memory_stream_pair()

    def refused() -> Request:
        body = RequestBody(bodiless_get(), stream, ServerLimits())
        request = Request("-", "-", "-", "", [], "1.1", ("198.51.100.7", 1), body)
        request.note = RequestNote()
        request.note.refused, request.note.error = True, "bad_request"
        return request

    labels = {"region": REGION, "service": "-", "method": "-", "code": "431"}
    before = requests_total(**labels)
    for _ in range(3 * REFUSAL_LINES_PER_S):
        observer(refused(), Response(431), now[0], 40)
    assert len(sink.lines) == REFUSAL_LINES_PER_S
    assert observer.refusal_lines_dropped == 2 * REFUSAL_LINES_PER_S
    assert requests_total(**labels) == before + 3 * REFUSAL_LINES_PER_S
    now[0] += 1.0  # the next second has its own allowance
    observer(refused(), Response(431), now[0], 40)
    assert len(sink.lines) == REFUSAL_LINES_PER_S + 1 and observer.refusal_lines_dropped == 0


def test_a_dropped_connection_is_one_line_within_the_refusals_allowance() -> None:
    """A connection that ended before any request (``on_dropped``) is a line of status 0 with
    its reason and a request id of its own; a flood of them shares the refusals' allowance."""
    now = [200.0]
    app = ProxyApp(make_config(), UpstreamPool(), name="proxy-dropped-test")
    sink = Lines()
    observer = ProxyObserver(app, sink, clock=lambda: now[0])
    observer.dropped("no_request", ("198.51.100.9", 4000), False, now[0] - 5.0)
    (line,) = sink.lines
    assert isinstance(line, AccessLine)
    assert (line.status, line.error, line.client_ip, line.method, line.path) == (
        0,
        "no_request",
        "198.51.100.9",
        "-",
        "-",
    )
    assert line.duration_ms == 5000.0 and line.request_id != "-"
    for _ in range(2 * REFUSAL_LINES_PER_S):
        observer.dropped("bad_proxy_header", ("127.0.0.1", 1), False, now[0])
    assert len(sink.lines) == REFUSAL_LINES_PER_S
    assert observer.refusal_lines_dropped == REFUSAL_LINES_PER_S + 1


async def test_a_429_is_logged_as_rate_limited_and_counted_as_a_deny(tmp_path: Path) -> None:
    """Issue 12's 429 line, from issue 11's filter: a local limit of one request (burst 1, one
    per 1000 s, so the second is refused however slow the machine)."""
    limit = RateLimitSpec(key="client_ip", rate_per_s=0.001, burst=1, scope="local")
    async with backends(answering) as (live_url,):
        config = make_config(ServiceSpec(name="limited", instance=[live_url], rate_limit=(limit,)))
        async with proxy_with_observer(config, tmp_path) as proxy:
            assert (await proxy.get("/limited/a", "rl-1"))[0] == 200
            status, headers = await proxy.get("/limited/a", "rl-2")
            assert status == 429 and b"retry-after" in headers
            first, second = proxy.line("rl-1"), proxy.line("rl-2")
    assert first["rate_limited"] is False and first["upstream"] == live_url
    assert (second["status"], second["error"], second["rate_limited"]) == (
        429,
        "rate_limited",
        True,
    )
    assert second["upstream"] == "-" and second["service"] == "limited"
    deny = {"service": "limited", "key": "client_ip", "decision": "deny"}
    assert REGISTRY.get_sample_value("gateway_ratelimit_decisions_total", deny) == 1
