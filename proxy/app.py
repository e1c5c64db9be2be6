"""The regional gateway: route, check, balance, forward, stream back.

Per request: resolve the region and service (`proxy.routing`); forward to another region's
ELB untouched by auth (the serving region checks the token in full); else check the token
(`proxy.auth_client`), answer from the cache when the service allows it (`proxy.cache`),
and otherwise pick an instance (`httpio.balance.ServicePool`) and stream the exchange
through the upstream pool in both directions.

Retries (`proxy.retry`, RFC 9110 9.2.2): a connect failure is retried on another instance for
any method, since nothing was sent (a refused one without counting against ``retries``); a
reset or a per-try timeout before the response head only for idempotent methods whose body we
still hold (bodies up to ``REPLAYABLE_BODY_BYTES`` are
read first for that reason). A retry goes to an instance not tried and not recently failed
(`ServicePool.pick_retry`), within the request's ``response_timeout_s`` deadline if it has
one, and spends from a budget so retries cannot multiply an outage's load by more than
~20 %. A request never waits in a queue for a slot: past a service's in-flight limit, or
its limit of connections being opened at once (``max_pending``), it is answered 503 with
``Retry-After`` at once. The in-flight slot is taken once per request and released once,
by the failure path or, once a response head is in, by the `TrackedBody` that relays it.

Config (`proxy.state.ProxyConfig`) is an immutable snapshot read once per request; a reload
swaps the reference, and pools keep the health and counters of unchanged instances.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from authsvc.tokens import INTERNAL_HEADER
from httpio.balance import Endpoint, ServicePool
from httpio.errors import (
    GatewayError,
    NoHealthyInstance,
    RouteNotFound,
    UpstreamError,
    UpstreamTimeout,
)
from httpio.health import Outcome, outcome_of_status
from httpio.limits import ConcurrencyLimit, ServiceLimiter
from httpio.messages import Request, Response, json_response
from httpio.protocol import Headers
from httpio.retry_budget import RetryBudget
from httpio.upstream import IDEMPOTENT, UpstreamPool, UpstreamResponse
from proxy import forwarding, retry, routing
from proxy.hop import HOP_HEADER, sign_hop, verified_hop
from proxy.state import ProxyConfig

log = structlog.get_logger()

REPLAYABLE_BODY_BYTES = 65536
_NO_BODY_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE"})

Authorize = Callable[[Request, Any], Awaitable[Headers]]


class TrackedBody:
    """The upstream's response body on its way to the client; tells the service pool how
    the exchange ended (for least-conn counts, latency EWMA and outlier detection)."""

    __slots__ = ("_ended", "_endpoint", "_outcome", "_pool", "_response", "_slot", "_started")

    def __init__(
        self,
        response: UpstreamResponse,
        pool: ServicePool,
        endpoint: Endpoint,
        started: float,
        slot: ConcurrencyLimit | None,
    ) -> None:
        self._response = response
        self._pool = pool
        self._endpoint = endpoint
        self._started = started
        self._slot = slot
        status = response.status
        self._outcome = Outcome.SUCCESS if status < 500 else outcome_of_status(status)
        self._ended = False

    @property
    def finished(self) -> bool:
        return self._response.finished

    async def read(self) -> bytes:
        try:
            chunk = await self._response.read()
        except UpstreamError:
            self._outcome = Outcome.RESET
            self._end()
            raise
        if not chunk:
            self._end()
        return chunk

    async def aclose(self) -> None:
        if not self._ended:
            self._outcome = Outcome.CANCELLED if self._outcome is Outcome.SUCCESS else self._outcome
            self._end()
        await self._response.aclose()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            if self._slot is not None:
                self._slot.release()
            self._pool.end(self._endpoint, self._outcome, time.monotonic() - self._started)


class ProxyApp:
    def __init__(self, config: ProxyConfig, upstream: UpstreamPool, *, name: str) -> None:
        self.name = name
        self.via = b"1.1 " + name.encode()
        self.upstream = upstream
        self.config = config
        self.pools: dict[str, ServicePool] = {}
        self.limiters: dict[str, ServiceLimiter] = {}
        self.elb_pools: dict[str, ServicePool] = {}
        self.retry_budget = RetryBudget(clock=time.monotonic)
        self.authorize: Authorize | None = None
        self.cache: Any = None
        self.started_at = time.time()
        self.on_reload: list[Callable[[ProxyConfig], None]] = []
        self.warnings: list[str] = []  # what an operator must fix, on /health (proxy.wiring)
        self.apply(config)

    def __repr__(self) -> str:
        return f"<ProxyApp {self.name} region={self.config.region} services={len(self.pools)}>"

    # -- config ------------------------------------------------------------------------------
    def apply(self, config: ProxyConfig) -> None:
        """Take a new config: new services get pools, removed ones are dropped, kept ones
        keep their health state and counters."""
        policy = config.gateway.load_balancer_policy
        pools: dict[str, ServicePool] = {}
        limiters: dict[str, ServiceLimiter] = {}
        for name, spec in config.services.items():
            endpoints = [Endpoint.parse(i.url, i.weight) for i in spec.instances()]
            pool = self.pools.get(name)
            if pool is None:
                pool = ServicePool(
                    name,
                    endpoints,
                    policy=spec.policy or policy,
                    health=spec.health,
                    clock=time.monotonic,
                )
            else:
                pool.swap_endpoints(endpoints)
                pool.set_policy(spec.policy or policy)
                pool.set_health(spec.health)
            pools[name] = pool
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
        secrets = [config.gateway.auth_key, *(k.secret for k in config.gateway.auth_keys)]
        self.hop_keys = [k.encode() for k in secrets if k]
        self.pools, self.limiters, self.elb_pools, self.config = pools, limiters, elbs, config
        for hook in self.on_reload:
            hook(config)

    # -- requests ----------------------------------------------------------------------------
    async def handle(self, request: Request) -> Response:
        path = request.path
        if path == "/health":
            status: dict[str, object] = {
                "status": "ok",
                "name": self.name,
                "region": self.config.region,
            }
            if self.warnings:
                status["warnings"] = self.warnings
            return json_response(200, status)
        if path.startswith("/admin/"):
            return await self.admin(request)
        request_id = forwarding.request_id_of(request.headers)
        try:
            return await self.serve(request, request_id)
        except GatewayError as err:
            # Errors carry the id too, so a client's report can be found in every log.
            err.headers = (*err.headers, (b"x-request-id", request_id))
            raise

    async def serve(self, request: Request, request_id: bytes) -> Response:
        config = self.config
        decision = routing.route(
            request.path,
            request.query,
            request.headers,
            local_region=config.region,
            regions=config.regions,
            services=config.services,
        )
        from_hop = self._from_our_hop(request, request_id)
        if type(decision) is routing.Remote:
            return await self.forward_to_region(request, decision.region, request_id, from_hop)
        assert isinstance(decision, routing.Local)
        service = config.services[decision.service]
        identity: Headers = []
        if self.authorize is not None:
            identity = await self.authorize(request, service)
        cache = self.cache
        if cache is not None and config.gateway.cache_enabled and cache.enabled_for(service):

            async def fetch() -> Response:
                return await self.fetch(request, decision, identity, request_id, from_hop, config)

            return await cache.handle(  # type: ignore[no-any-return]
                request,
                region=config.region,
                service=decision.service,
                upstream_path_and_query=decision.target,
                settings=service.cache,
                fetch=fetch,
            )
        return await self.fetch(request, decision, identity, request_id, from_hop, config)

    def _from_our_hop(self, request: Request, request_id: bytes) -> bool:
        """Whether another region's proxy (not a client) forwarded this request."""
        value = request.header(HOP_HEADER)
        if value is None or not self.hop_keys:
            return False
        return verified_hop(self.hop_keys, value, request_id, time.time())

    async def _request_body(self, request: Request) -> tuple[bytes | Any, bool]:
        """The body to send upstream, and whether it can be sent twice."""
        if request.body.done:
            return b"", True
        length = request.header(b"content-length")
        if length is None and request.header(b"transfer-encoding") is None:
            return b"", True
        if length is not None and length.isdigit() and int(length) <= REPLAYABLE_BODY_BYTES:
            return await request.body.read_all(), True
        return request.body, False

    async def fetch(
        self,
        request: Request,
        decision: routing.Local,
        identity: Headers,
        request_id: bytes,
        from_hop: bool,
        config: ProxyConfig,
    ) -> Response:
        service = config.services[decision.service]
        pool = self.pools.get(decision.service)
        limiter = self.limiters.get(decision.service)
        if pool is None or limiter is None:  # removed by a reload while the token was checked
            raise RouteNotFound(f"no service {decision.service!r} in region {config.region!r}")
        limits = service.limits
        client_ip = request.client[0]
        headers = forwarding.upstream_request_headers(
            request.headers,
            client_ip=client_ip,
            via=self.via,
            request_id=request_id,
            from_our_hop=from_hop,
            drop=_IDENTITY_HEADERS,
        )
        headers.extend(identity)
        body, replayable = await self._request_body(request)
        method = request.method
        replayable = replayable and method in IDEMPOTENT
        dependency = decision.service == config.gateway.auth_service
        per_try_s = limits.per_try_head_timeout_s()
        deadline_s = limits.response_timeout_s
        tried: list[Endpoint] = []
        retries_done = 0
        reached_any = False
        self.retry_budget.record_request()
        slot = limiter.in_flight
        if not slot.try_acquire():
            raise slot.refusal(f"service {decision.service!r}")
        # From here until a TrackedBody owns it, every way out releases the slot once.
        try:
            try:
                endpoint = pool.pick(client_ip=client_ip, url=decision.target)
            except NoHealthyInstance as err:
                raise retry.unavailable(err, dependency=dependency) from None
            first_started = 0.0
            while True:
                pool.begin(endpoint)
                started = time.monotonic()
                if not tried:
                    first_started = started
                head_timeout_s = per_try_s
                if deadline_s is not None:
                    head_timeout_s = min(per_try_s, deadline_s - (started - first_started))
                try:
                    response = await self.upstream.request(
                        endpoint.url,
                        method,
                        decision.target,
                        headers,
                        body,
                        connect_timeout_s=limits.connect_timeout_s,
                        response_head_timeout_s=head_timeout_s,
                        connect_slots=limiter.pending,
                    )
                except UpstreamError as err:
                    now = time.monotonic()
                    outcome = _outcome_of(err)
                    transition = pool.end(endpoint, outcome, now - started)
                    if transition is not None:
                        log.warning(
                            "instance_state", service=decision.service, change=str(transition)
                        )
                    tried.append(endpoint)
                    reached_any = reached_any or err.bytes_sent
                    verdict = retry.decide_retry(
                        outcome=outcome,
                        request_sent=err.bytes_sent,
                        replayable=replayable,
                        retries_done=retries_done,
                        max_retries=limits.retries,
                        time_left_s=math.inf
                        if deadline_s is None
                        else deadline_s - (now - first_started),
                    )
                    if verdict in retry.TRY_AGAIN:
                        following = pool.pick_retry(tried, client_ip=client_ip, url=decision.target)
                        if following is not None and self.retry_budget.try_retry():
                            if verdict is retry.Verdict.RETRY:
                                retries_done += 1
                            endpoint = following
                            continue
                    final = retry.final_error(
                        err,
                        reached_any=reached_any,
                        service=decision.service,
                        dependency=dependency,
                        tries=len(tried),
                    )
                    if final is err:
                        raise
                    raise final from err
                except BaseException:
                    pool.end(endpoint, Outcome.CANCELLED, time.monotonic() - started)
                    raise
                break
        except BaseException:
            slot.release()
            raise
        tracked = TrackedBody(response, pool, endpoint, started, slot)
        try:
            return self._relayed(response, request_id, tracked)
        except BaseException:
            await tracked.aclose()  # frees the slot and the pool's count, closes upstream
            raise

    def _relayed(
        self, response: UpstreamResponse, request_id: bytes, body: TrackedBody
    ) -> Response:
        """The upstream's answer as ours: its headers rewritten, its body streamed."""
        headers = forwarding.client_response_headers(
            response.headers, via=self.via, request_id=request_id
        )
        return Response(response.status, headers, body)

    async def forward_to_region(
        self, request: Request, region: str, request_id: bytes, from_hop: bool
    ) -> Response:
        pool = self.elb_pools.get(region)
        if pool is None or not pool.endpoints:
            raise RouteNotFound(f"region {region!r} has no ELB")
        headers = forwarding.upstream_request_headers(
            request.headers,
            client_ip=request.client[0],
            via=self.via,
            request_id=request_id,
            from_our_hop=from_hop,
            drop=_HOP_HEADERS,
        )
        region = self.config.region
        mark = (
            sign_hop(self.hop_keys[-1], region, request_id, time.time())
            if self.hop_keys
            else region.encode()  # still marks the hop for loop detection; proves nothing
        )
        headers.append((HOP_HEADER, mark))
        body, _ = await self._request_body(request)
        endpoint = pool.pick()
        started = time.monotonic()
        pool.begin(endpoint)
        try:
            response = await self.upstream.request(
                endpoint.url, request.method, request.target, headers, body
            )
        except UpstreamError as err:
            pool.end(endpoint, _outcome_of(err), time.monotonic() - started)
            raise
        except BaseException:
            pool.end(endpoint, Outcome.CANCELLED, time.monotonic() - started)
            raise
        return self._relayed(
            response, request_id, TrackedBody(response, pool, endpoint, started, None)
        )

    # -- admin -------------------------------------------------------------------------------
    async def admin(self, request: Request) -> Response:
        """Operator endpoints: only on a direct connection from this host, never through an
        ELB (a client behind the ELB reaches us handed off or behind a PROXY header)."""
        if request.via_elb or request.client[0] not in ("127.0.0.1", "::1"):
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
                },
            )
        if request.path == "/admin/cache/purge" and request.method in ("POST", "DELETE"):
            if self.cache is None:
                raise RouteNotFound("the cache is switched off")
            return await self.cache.admin_purge(request)  # type: ignore[no-any-return]
        raise RouteNotFound(f"no admin endpoint {request.path!r}")


_HOP_HEADERS = frozenset({HOP_HEADER})
# Headers only the gateway may set: never taken from a client (x-gateway-internal is the
# proxies' proof to the auth server, see authsvc.tokens.KeyRing.internal_proof).
_IDENTITY_HEADERS = frozenset({b"x-user", b"x-user-role", HOP_HEADER, INTERNAL_HEADER})


def _outcome_of(err: UpstreamError) -> Outcome:
    timed_out = isinstance(err, UpstreamTimeout)
    if not err.bytes_sent:  # nothing reached the instance
        return Outcome.CONNECT_TIMEOUT if timed_out else Outcome.CONNECT_FAILURE
    return Outcome.TIMEOUT if timed_out else Outcome.RESET
