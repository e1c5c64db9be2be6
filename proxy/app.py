"""The regional gateway: what a proxy holds across config snapshots, and its request handler.

A request is answered by the chain of filters its route resolves to (`proxy.filters`): the
token check, the cache, the forward to an instance for a service of this region; the forward
to that region's ELB for another region's. `ProxyApp` owns what outlives a snapshot (a pool,
health state and limiter per service, the other regions' ELB pools, the retry budget, the
upstream pool, the auth client and the cache, each given at construction) and the current
`proxy.filters.chains.Chains`. A reload (`apply`) keeps the pools of unchanged instances,
builds new chains and swaps one reference; a request finishes on the chains it started with.

The proxy answers ``/health`` and, on a direct connection from this host, ``/admin/...`` itself,
before any chain.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from httpio.access_log import RequestNote
from httpio.balance import Endpoint, ServicePool
from httpio.errors import GatewayError, RouteNotFound
from httpio.limits import ServiceLimiter
from httpio.messages import Request, Response, json_response
from httpio.metrics import metrics_response
from httpio.retry_budget import RetryBudget
from httpio.trace import next_traceparent, request_id_of
from httpio.upstream import UpstreamPool
from proxy.cache import HttpCache
from proxy.filters.chains import Chains, Parts, build_chains
from proxy.filters.rate_limit import RateLimitState
from proxy.state import ProxyConfig, redacted_config
from proxy.wiring import AuthLayer
from proxy.ws_sessions import OpenSockets
from topology.schema import ServiceSpec


class ProxyApp:
    def __init__(
        self,
        config: ProxyConfig,
        upstream: UpstreamPool,
        *,
        name: str,
        auth: AuthLayer | None = None,
        cache: HttpCache | None = None,
        rate_limits: RateLimitState | None = None,
    ) -> None:
        self.name = name
        # (index, count) when this is a worker of ``proxy --workers N`` (`proxy.workers`)
        self.worker: tuple[int, int] | None = None
        self.via = b"1.1 " + name.encode()
        self.upstream = upstream
        self.auth = auth
        self.cache = cache
        # the buckets of every rate limit, across snapshots (`proxy.filters.rate_limit`)
        self.rate_limits = rate_limits if rate_limits is not None else RateLimitState()
        self.pools: dict[str, ServicePool] = {}
        self.limiters: dict[str, ServiceLimiter] = {}
        self.elb_pools: dict[str, ServicePool] = {}
        self.retry_budget = RetryBudget(clock=time.monotonic)
        self.started_at = time.time()
        self.on_reload: list[Callable[[ProxyConfig], None]] = []
        self.websockets = OpenSockets()  # open WebSocket relays (proxy.ws_sessions)
        self.on_reload.append(self.websockets.reloaded)
        self.config = config
        self.trust_trace = config.gateway.trace.trust_incoming
        self.chains = self._build(config)

    def __repr__(self) -> str:
        return f"<ProxyApp {self.name} region={self.config.region} services={len(self.pools)}>"

    @property
    def warnings(self) -> list[str]:
        """What an operator must fix, shown on ``/health`` (a weak key: `proxy.wiring`)."""
        return self.auth.warnings if self.auth is not None else []

    # -- config ------------------------------------------------------------------------------
    def apply(self, config: ProxyConfig) -> None:
        """Take a new config: the auth layer follows it, new services get pools, removed ones
        are dropped, kept ones keep their health state and counters, and new chains replace
        the old ones whole."""
        if self.auth is not None:
            self.auth.reload(config)
        self.chains = self._build(config)
        self.config = config
        self.trust_trace = config.gateway.trace.trust_incoming
        for hook in self.on_reload:
            hook(config)

    def _build(self, config: ProxyConfig) -> Chains:
        policy = config.gateway.load_balancer_policy
        pools: dict[str, ServicePool] = {}
        limiters: dict[str, ServiceLimiter] = {}
        for name, spec in config.services.items():
            endpoints = [Endpoint.parse(i.url, i.weight) for i in spec.instances()]
            pools[name] = self._service_pool(name, endpoints, spec.policy or policy, spec)
            # The same object across reloads: requests in flight release what they took.
            limiter = self.limiters.get(name)
            if limiter is None:
                limiter = ServiceLimiter(name, spec.limits)
            else:
                limiter.resize(spec.limits)
            limiters[name] = limiter
        elbs: dict[str, ServicePool] = {}
        for code, urls in config.regions.items():
            if code == config.region:
                continue
            endpoints = [Endpoint.parse(u) for u in urls]
            pool = self.elb_pools.get(code)
            if pool is None:
                pool = ServicePool(f"elb:{code}", endpoints, clock=time.monotonic)
            else:
                pool.swap_endpoints(endpoints)
            elbs[code] = pool
        self.pools, self.limiters, self.elb_pools = pools, limiters, elbs
        parts = Parts(
            upstream=self.upstream,
            budget=self.retry_budget,
            via=self.via,
            pools=pools,
            limiters=limiters,
            elb_pools=elbs,
            auth=self.auth.client if self.auth is not None else None,
            cache=self.cache,
            websockets=self.websockets,
            rate_limits=self.rate_limits,
        )
        return build_chains(config, parts)

    def _service_pool(
        self, name: str, endpoints: list[Endpoint], policy: str, spec: ServiceSpec
    ) -> ServicePool:
        """The pool of service ``name``: the one it had, following the new config, or new."""
        pool = self.pools.get(name)
        if pool is None:
            return ServicePool(
                name, endpoints, policy=policy, health=spec.health, clock=time.monotonic
            )
        pool.swap_endpoints(endpoints)
        pool.set_policy(policy)
        pool.set_health(spec.health)
        return pool

    # -- requests ----------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        path = request.path
        if path == "/health":
            return self.health()
        if path.startswith("/admin/"):
            return await self.admin(request)
        if path == "/metrics":
            return metrics_response(request)
        request_id = request_id_of(request.headers)
        trace_id, traceparent = next_traceparent(request.headers, trust_incoming=self.trust_trace)
        try:
            chain, exchange = self.chains.exchange(request, request_id)
            note = request.note = exchange.note
            exchange.traceparent = traceparent
            note.trace_id = trace_id.decode()
            note.request_id = request_id.decode()
            name = chain.name
            if name.startswith("region:"):
                note.region = name[7:]
                note.service = path.split("/", 2)[1]
            else:
                note.region = self.config.region
                note.service = name
            response = await chain.run(exchange)
            for header, value in exchange.identity:
                if header == b"x-user":
                    note.user = value.decode("utf-8", "replace")
            return response
        except GatewayError as err:
            # Errors carry the id too, so a client's report can be found in every log.
            err.headers = (*err.headers, (b"x-request-id", request_id))
            err.request_id = request_id.decode()
            if request.note is None:
                request.note = RequestNote()
                request.note.trace_id = trace_id.decode()
                request.note.request_id = request_id.decode()
            request.note.error = err.code
            raise

    def health(self) -> Response:
        status: dict[str, object] = {
            "status": "ok",
            "name": self.name,
            "region": self.config.region,
        }
        if self.warnings:
            status["warnings"] = self.warnings
        return json_response(200, status)

    # -- admin -------------------------------------------------------------------------------
    def process_facts(self) -> dict[str, int | None]:
        """Which process answered: with ``--workers N`` each worker has its own statistics."""
        index, count = self.worker if self.worker is not None else (None, 1)
        return {"pid": os.getpid(), "worker": index, "workers": count}

    async def admin(self, request: Request) -> Response:
        """Operator endpoints: only on a direct connection from this host, never through an
        ELB (a client behind the ELB reaches us handed off or behind a PROXY header)."""
        if not request.local_direct:
            raise RouteNotFound(f"no service {request.path.split('/')[1]!r}")
        if request.path == "/admin/backends" and request.method == "GET":
            return json_response(
                200,
                {
                    "proxy": self.name,
                    "region": self.config.region,
                    "services": [p.statistics() for p in self.pools.values()],
                    "regions": [p.statistics() for p in self.elb_pools.values()],
                    "limits": {k: v.statistics() for k, v in self.limiters.items()},
                    "retry_budget": self.retry_budget.statistics(),
                    "upstream": self.upstream.statistics(),
                    "cache": self.cache.statistics() if self.cache is not None else None,
                    "websockets": self.websockets.statistics(),
                    "process": self.process_facts(),
                },
            )
        if request.path == "/admin/cache" and request.method == "GET":
            if self.cache is None:
                raise RouteNotFound("the cache is switched off")
            return json_response(200, cache_report(self.cache.statistics()))
        if request.path == "/admin/config" and request.method == "GET":
            return json_response(
                200,
                {
                    "proxy": self.name,
                    "region": self.config.region,
                    "chains": self.chains.effective(),
                    "config": redacted_config(self.config),
                    "rate_limits": self.rate_limits.statistics(),
                },
            )
        if request.path == "/admin/cache/purge" and request.method in ("POST", "DELETE"):
            if self.cache is None:
                raise RouteNotFound("the cache is switched off")
            return await self.cache.admin_purge(request)
        raise RouteNotFound(f"no admin endpoint {request.path!r}")


def cache_report(stats: dict[str, object]) -> dict[str, object]:
    """``GET /admin/cache``: each tier's size and hit ratio, then the raw counters."""

    def ratio(hits: object, misses: object) -> float | None:
        h, m = int(str(hits)), int(str(misses))
        return round(h / (h + m), 4) if h + m else None

    store = stats["store"]
    assert isinstance(store, dict)
    memory = store["memory"]
    assert isinstance(memory, dict)
    return {
        "hit_ratio": ratio(stats["hits"], stats["misses"]),
        "memory": {
            "entries": memory["entries"],
            "bytes": memory["bytes"],
            "max_bytes": memory["max_bytes"],
            "hit_ratio": ratio(memory["hits"], memory["misses"]),
        },
        "redis": {
            "breaker": store["breaker"],
            "connected": store["redis"] is not None,
        },
        "statistics": stats,
    }
