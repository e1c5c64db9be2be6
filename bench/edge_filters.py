"""What each of ``bench.edge``'s filters costs, in process: ``python -m bench.edge_filters``.

``make bench-edge`` gives the whole chain's ratio through a real proxy, where the machine's
noise is as large as the filters' cost; this says which filter the cost is in. Three parts,
each the best of ``--repeat`` runs of ``--requests`` requests that trigger no filter, in CPU
time (``time.process_time``: the machine is shared, wall clock is not the filters'):

- *alone*: each filter of the ``edge`` service (the same msa as bench.edge) runs its request
  hook, then its response hook on a small answer. The two rate limits also run as a chain has
  them (local here): both decide, the first writes both limits' quota fields.
- *in the chain*: the ``plain`` and ``edge`` chains as a proxy builds them (`ProxyApp`, the
  fleet-wide limit on a real redis-server, leased), the forward replaced by a stub that
  answers the demo backend's ``test.css`` head; per request, route resolution
  (`Chains.exchange`), the chain, and the answer's head
  (`httpio.h1response.encode_response`), so a header a filter adds costs what it costs the
  server. Then what each edge filter adds to a chain of ``response_headers`` and the stub
  (the first limit, alone there, writes its fields by the general path, `quota_fields`: its
  one-template path needs every limit of its chain).
- the fleet-wide limit alone, 20 tasks at once, exact (a burst too small to lease: a round
  trip per decision) and leased (64 per round trip at first, growing while spent fast).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence

import msgspec
import trio
import yaml

from bench.edge import MSA
from httpio.h1response import encode_response
from httpio.messages import Request, Response
from httpio.redis_client import RedisPool, RedisSettings
from httpio.upstream import UpstreamPool
from proxy.app import ProxyApp
from proxy.filters.body_limit import BodyLimit
from proxy.filters.chain import Chain, Exchange
from proxy.filters.cors import Cors
from proxy.filters.header_rules import RequestHeaderRules, ResponseHeaderRules
from proxy.filters.ip_filter import IpFilter
from proxy.filters.rate_limit import FieldsRateLimit, RateLimit, RateLimitState
from proxy.filters.routes import RouteMethod, RouteTable
from proxy.state import ProxyConfig
from tests.support.redisproc import running_redis
from topology.schema import (
    GatewayConfig,
    MsaFile,
    RateLimitSpec,
    RegionSpec,
    RegionStructure,
    ServiceSpec,
)

HEADERS = [(b"host", b"127.0.0.1:8000"), (b"user-agent", b"wrk"), (b"accept", b"*/*")]
# the demo backend's answer to /test.css, as it sends it
BACKEND_HEADERS = [
    (b"etag", b'"c0cf16e02006e19ed18397696a19735f"'),
    (b"last-modified", b"Wed, 01 Aug 2018 00:00:00 GMT"),
    (b"cache-control", b"public, max-age=60"),
    (b"content-type", b"text/css; charset=utf-8"),
    (b"date", b"Fri, 04 Dec 2026 00:54:30 GMT"),
    (b"content-length", b"58"),
]
BACKEND_BODY = b"body { margin: 0 auto; max-width: 42em; color: #2a2a2a; }\n"
PATHS = {"plain": "/plain/test.css", "edge": "/api/edge/test.css"}
REQUEST_ID = b"0123456789abcdef"


def new_request(path: str) -> Request:
    return Request("GET", path, path, "", list(HEADERS), "1.1", ("127.0.0.1", 5555), None)  # type: ignore[arg-type]


def exchanges(n: int, route: object) -> list[Exchange]:
    out = []
    for _ in range(n):
        ex = Exchange(new_request(PATHS["edge"]), REQUEST_ID, "/test.css", False)
        ex.route = route  # type: ignore[assignment]
        out.append(ex)
    return out


def time_filters(filters: Sequence[object], n: int, repeat: int, route: object) -> float:
    """CPU microseconds per request, best of ``repeat``: the request hooks of ``filters`` in
    order, then their response hooks in reverse (as a chain runs them)."""
    answer = Response(200, [(b"content-type", b"text/css"), (b"content-length", b"10")], b"x" * 10)
    on_request: list[Callable[[Exchange], object]] = [
        f.on_request for f in filters if hasattr(f, "on_request")
    ]
    on_response: list[Callable[[Exchange, Response], Response]] = [
        f.on_response for f in reversed(filters) if hasattr(f, "on_response")
    ]
    best = float("inf")
    for _ in range(repeat):
        batch = exchanges(n, route)
        t0 = time.process_time()
        for ex in batch:
            for hook in on_request:
                hook(ex)
            response = answer
            for back in on_response:
                response = back(ex, response)
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


class StubForward:
    """The forward's place in a chain: the demo backend's answer, without I/O."""

    name = "stub_forward"

    async def respond(self, ex: Exchange) -> Response:
        return Response(200, list(BACKEND_HEADERS), BACKEND_BODY)


def proxy_config(msa: str) -> ProxyConfig:
    file = msgspec.convert(yaml.safe_load(msa), MsaFile)
    elbs = ["http://127.0.0.1:9"]
    region = RegionSpec(region_code="ko_KR", available_zone=elbs)
    return ProxyConfig(
        msa=file,
        rs=RegionStructure(cur_region_code="ko_KR", regions=[region]),
        gateway=GatewayConfig(),
        region="ko_KR",
        services={s.name: s for s in file.service},
        regions={"ko_KR": elbs},
    )


async def chain_us(app: ProxyApp, runs: dict[str, Chain], path: str, n: int, repeat: int) -> float:
    """CPU microseconds per request: route resolution, the chain of that name in ``runs``, the
    answer's head; best of ``repeat``."""
    chains = app.chains
    best = float("inf")
    for _ in range(repeat):
        batch = [new_request(path) for _ in range(n)]
        t0 = time.process_time()
        for request in batch:
            chain, ex = chains.exchange(request, REQUEST_ID)
            response = await runs[chain.name].run(ex)
            encode_response(
                response.status, b"OK", response.headers, head=False, http11=True, keep_alive=True
            )
        best = min(best, time.process_time() - t0)
    return best / n * 1e6


async def in_chain(port: int, n: int, repeat: int) -> None:
    pool = RedisPool(RedisSettings(port=port, command_timeout_s=5.0))
    config = proxy_config(MSA.format(backend=1, scope="fleet", burst=1000000))
    app = ProxyApp(config, UpstreamPool(), name="bench", rate_limits=RateLimitState(redis=pool))
    runs = {n: Chain(n, [*app.chains.chain(n).filters[:-1], StubForward()]) for n in PATHS}
    await chain_us(app, runs, PATHS["edge"], n, 1)  # the fleet limit's lease grows to its size
    us = {name: await chain_us(app, runs, path, n, repeat) for name, path in PATHS.items()}
    print(
        f"in the chain: plain {us['plain']:.2f} us, edge {us['edge']:.2f} us; "
        f"edge - plain {us['edge'] - us['plain']:.2f} us (filters and explicit routing)"
    )
    *filters, last, _ = app.chains.chain("edge").filters
    alone = {**runs, "edge": Chain("edge", [last, StubForward()])}
    base = await chain_us(app, alone, PATHS["edge"], n, repeat)
    print(f"  edge chain of {getattr(last, 'name', '?')} and the stub alone {base:7.2f} us")
    for f in filters:
        one = {**runs, "edge": Chain("edge", [f, last, StubForward()])}
        us_f = await chain_us(app, one, PATHS["edge"], n, repeat) - base
        print(f"  + {getattr(f, 'name', type(f).__name__):30} {us_f:7.2f} us")
    await pool.aclose()


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
    route = RouteTable([spec]).match("127.0.0.1", PATHS["edge"])
    assert spec.rate_limit is not None and spec.cors is not None
    assert spec.request_headers is not None and spec.response_headers is not None
    assert spec.max_body_bytes is not None
    state = RateLimitState()
    second = RateLimit("edge", spec.rate_limit[1], state)
    limits: list[RateLimit] = [FieldsRateLimit("edge", spec.rate_limit[0], state, [second]), second]
    filters: list[object] = [
        IpFilter(spec.allow_cidrs, spec.deny_cidrs),
        Cors(spec.cors),
        RouteMethod(),
        BodyLimit(spec.max_body_bytes),
        *limits,
        RequestHeaderRules(spec.request_headers, "ko_KR"),
        ResponseHeaderRules(spec.response_headers, "ko_KR"),
    ]
    total = 0.0
    for f in filters:
        us = time_filters([f], args.requests, args.repeat, route)
        total += us
        print(f"{getattr(f, 'name', type(f).__name__):32} {us:7.2f} us")
    print(f"{'all of the above':32} {total:7.2f} us")
    us = time_filters(limits, args.requests, args.repeat, route)
    print(f"{'both limits, the quota fields':32} {us:7.2f} us")
    with running_redis() as redis:
        trio.run(in_chain, redis.port, args.requests, args.repeat)
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
