"""What each of ``bench.edge``'s filters costs alone, in process: ``python -m bench.edge_filters``.

``make bench-edge`` gives the whole chain's ratio through a real proxy, where the machine's
noise is as large as the filters' cost; this says which filter the cost is in. Each filter of
the ``edge`` service (the same msa as bench.edge) runs its request hook (and its response
hook, on a small answer) on requests that trigger none of them, best of ``--repeat`` runs of
``--requests`` each; the fleet-wide limit runs against a real redis-server, 20 tasks at once,
exact (a burst too small to lease: a round trip per decision) and leased (64 per round trip at first, growing while spent fast).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import msgspec
import trio
import yaml

from bench.edge import MSA
from httpio.messages import Request, Response
from httpio.redis_client import RedisPool, RedisSettings
from proxy.filters.body_limit import BodyLimit
from proxy.filters.chain import Exchange
from proxy.filters.cors import Cors
from proxy.filters.header_rules import RequestHeaderRules, ResponseHeaderRules
from proxy.filters.ip_filter import IpFilter
from proxy.filters.rate_limit import RateLimit, RateLimitState
from proxy.filters.routes import RouteMethod, RouteTable
from tests.support.redisproc import running_redis
from topology.schema import RateLimitSpec, ServiceSpec

HEADERS = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]


def exchanges(n: int, route: object) -> list[Exchange]:
    out = []
    for _ in range(n):
        path = "/api/edge/test.css"
        request = Request("GET", path, path, "", list(HEADERS), "1.1", ("127.0.0.1", 5555), None)  # type: ignore[arg-type]
        ex = Exchange(request, b"0123456789abcdef", "/test.css", False)
        ex.route = route  # type: ignore[assignment]
        out.append(ex)
    return out


def time_filter(f: object, n: int, repeat: int, route: object) -> float:
    """Microseconds per request, best of ``repeat``."""
    answer = Response(200, [(b"content-type", b"text/css"), (b"content-length", b"10")], b"x" * 10)
    on_request: Callable[[Exchange], object] | None = getattr(f, "on_request", None)
    on_response: Callable[[Exchange, Response], object] | None = getattr(f, "on_response", None)
    best = float("inf")
    for _ in range(repeat):
        batch = exchanges(n, route)
        t0 = time.perf_counter()
        for ex in batch:
            if on_request is not None:
                on_request(ex)
            if on_response is not None:
                on_response(ex, answer)
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


async def fleet_us(port: int, burst: int, n: int, route: object) -> tuple[float, int, int]:
    pool = RedisPool(RedisSettings(port=port, command_timeout_s=5.0))
    spec = RateLimitSpec(key="client_ip", rate_per_s=1e6, burst=burst)
    state = RateLimitState(redis=pool, namespace=f"bench:{burst}")
    f = RateLimit("edge", spec, state)
    batch = exchanges(n, route)

    async def worker(part: list[Exchange]) -> None:
        for ex in part:
            answer = f.on_request(ex)
            if answer is not None:
                await answer  # type: ignore[misc]

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(worker, batch[i::20])
    elapsed = time.perf_counter() - t0
    buckets = state.fleet["edge", "client_ip"]
    await pool.aclose()
    return elapsed / n * 1e6, buckets.round_trips, buckets.lease


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.edge_filters", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    raw = yaml.safe_load(MSA.format(backend=1, scope="fleet", burst=1000000))["service"][1]
    spec = msgspec.convert(raw, ServiceSpec)
    route = RouteTable([spec]).match("127.0.0.1", "/api/edge/test.css")
    assert spec.rate_limit is not None and spec.cors is not None
    assert spec.request_headers is not None and spec.response_headers is not None
    assert spec.max_body_bytes is not None
    filters: list[object] = [
        IpFilter(spec.allow_cidrs, spec.deny_cidrs),
        Cors(spec.cors),
        RouteMethod(),
        BodyLimit(spec.max_body_bytes),
        RateLimit("edge", spec.rate_limit[1], RateLimitState()),
        RequestHeaderRules(spec.request_headers, "ko_KR"),
        ResponseHeaderRules(spec.response_headers, "ko_KR"),
    ]
    total = 0.0
    for f in filters:
        us = time_filter(f, args.requests, args.repeat, route)
        total += us
        print(f"{getattr(f, 'name', type(f).__name__):32} {us:7.2f} us")
    print(f"{'all of the above':32} {total:7.2f} us")
    with running_redis() as redis:
        for burst in (100, 1_000_000):
            us, trips, lease = trio.run(fleet_us, redis.port, burst, 4000, route)
            kind = "exact" if lease == 1 else f"leased ({lease}, growing)"
            print(
                f"rate_limit[client_ip] fleet, {kind:12} {us:7.1f} us per decision, 20 tasks; "
                f"{trips} round trips for 4000"
            )
    la = os.getloadavg()
    print(f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
