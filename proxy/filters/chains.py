"""The chains of one config snapshot, built once when it is applied, and the choice among them.

`build_chains` is the one place that says which filters a service gets and in which order;
`Chains.exchange` is route resolution, the first step of every request: a pure decision
(`proxy.filters.route.route`) picks the chain (a service's, or the forward to another
region's ELBs) and the upstream target. A reload builds a whole new `Chains` and the proxy
swaps one reference; a request keeps the chain it was given until it is done.

The long-lived state a chain refers to (service pools, limiters, the retry budget, the
upstream pool, the auth client and the cache) belongs to the proxy and outlives snapshots:
a chain holds references to it, never copies.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from authsvc.tokens import INTERNAL_HEADER
from httpio.balance import ServicePool
from httpio.errors import RouteNotFound
from httpio.limits import ServiceLimiter
from httpio.messages import Request
from httpio.retry_budget import RetryBudget
from httpio.upstream import UpstreamPool
from proxy.auth import Authorizer
from proxy.auth_client import AuthClient
from proxy.cache import HttpCache
from proxy.filters import route
from proxy.filters.auth import TokenCheck, VouchClient, policy_for
from proxy.filters.body_limit import BodyLimit
from proxy.filters.cache import CacheLookup
from proxy.filters.chain import Chain, Exchange, describe
from proxy.filters.cors import Cors
from proxy.filters.forward import Forward
from proxy.filters.header_rules import RequestHeaderRules, ResponseHeaderRules
from proxy.filters.ip_filter import IpFilter
from proxy.filters.rate_limit import FieldsRateLimit, RateLimit, RateLimitState, needs_identity
from proxy.filters.remote import RemoteForward
from proxy.filters.response_headers import ResponseHeaders
from proxy.filters.routes import RouteMethod, RouteTable, upstream_target
from proxy.filters.websocket import RemoteWebSocket, WebSocketForward, WebSocketHandshake
from proxy.hop import HOP_HEADER, verified_hop
from proxy.state import ProxyConfig
from proxy.ws_sessions import OpenSockets
from topology.schema import RateLimitDefault, RateLimitSpec, ServiceSpec

# Headers only the gateway may set: never taken from a client (x-gateway-internal is the
# proxies' proof to the auth server, see authsvc.tokens.KeyRing.internal_proof).
IDENTITY_HEADERS = frozenset({b"x-user", b"x-user-role", HOP_HEADER, INTERNAL_HEADER})


@dataclass(frozen=True, slots=True)
class Parts:
    """What chains are made of that outlives a snapshot: the proxy's."""

    upstream: UpstreamPool
    budget: RetryBudget
    via: bytes
    pools: Mapping[str, ServicePool]
    limiters: Mapping[str, ServiceLimiter]
    elb_pools: Mapping[str, ServicePool]
    auth: AuthClient | None = None
    cache: HttpCache | None = None
    websockets: OpenSockets | None = None
    rate_limits: RateLimitState | None = None


class Chains:
    """One chain per service and per other region with an ELB, for one config snapshot."""

    __slots__ = ("_regions", "_services", "config", "hop_keys", "routes")

    def __init__(
        self,
        config: ProxyConfig,
        services: dict[str, Chain],
        regions: dict[str, Chain],
        hop_keys: Sequence[bytes],
        routes: RouteTable | None = None,
    ) -> None:
        self.config = config
        self._services = services
        self._regions = regions
        self.hop_keys = tuple(hop_keys)
        self.routes = routes if routes else None

    def __repr__(self) -> str:
        return f"<Chains {self.config.region} services={len(self._services)} regions={len(self._regions)}>"

    def statistics(self) -> dict[str, object]:
        return {
            "services": {n: c.statistics()["filters"] for n, c in self._services.items()},
            "regions": {n: c.statistics()["filters"] for n, c in self._regions.items()},
        }

    def effective(self) -> dict[str, object]:
        """Each chain's filters in order, with what each was configured with (``settings()``
        of the filters that have one): ``/admin/config``'s view."""

        def listed(chain: Chain) -> list[dict[str, object]]:
            out = []
            for f in chain.filters:
                entry: dict[str, object] = {"filter": describe(f)}
                settings = getattr(f, "settings", None)
                if callable(settings):
                    entry["settings"] = settings()
                out.append(entry)
            return out

        return {
            "services": {n: listed(c) for n, c in self._services.items()},
            "regions": {n: listed(c) for n, c in self._regions.items()},
        }

    def chain(self, service: str) -> Chain:
        return self._services[service]

    def exchange(self, request: Request, request_id: bytes) -> tuple[Chain, Exchange]:
        """Route resolution: the chain this request runs on and what it carries into it.
        Raises `RouteNotFound` (404) or `LoopDetected` (508)."""
        config = self.config
        if self.routes is not None:
            found = self._explicit(request, request_id)
            if found is not None:
                return found
        decision = route.route(
            request.path,
            request.query,
            request.headers,
            local_region=config.region,
            regions=config.regions,
            services=config.services,
        )
        from_hop = self.from_our_hop(request, request_id)
        if type(decision) is route.Remote:
            chain = self._regions.get(decision.region)
            if chain is None:
                raise RouteNotFound(f"region {decision.region!r} has no ELB")
            return chain, Exchange(request, request_id, request.target, from_hop)
        assert isinstance(decision, route.Local)
        return self._services[decision.service], Exchange(
            request, request_id, decision.target, from_hop
        )

    def _explicit(self, request: Request, request_id: bytes) -> tuple[Chain, Exchange] | None:
        """An explicit route of this region (`proxy.filters.routes`), before ``/<service>/``;
        a request asking for another region goes there as before."""
        region = route.requested_region(request.headers)
        if region is not None and region != self.config.region:
            return None
        assert self.routes is not None
        found = self.routes.match(self.routes.host(request.header(b"host")), request.path)
        if found is None:
            return None
        ex = Exchange(
            request,
            request_id,
            upstream_target(found, request.path, request.query),
            self.from_our_hop(request, request_id),
        )
        ex.route = found
        ex.note.route = found.spec.path  # the access log's field
        return self._services[found.service], ex

    def from_our_hop(self, request: Request, request_id: bytes) -> bool:
        """Whether another region's proxy (not a client) forwarded this request."""
        value = request.header(HOP_HEADER)
        if value is None or not self.hop_keys:
            return False
        return verified_hop(self.hop_keys, value, request_id, time.time())


def hop_keys_of(config: ProxyConfig) -> list[bytes]:
    """Every key of the fleet's ring, oldest first: the newest signs hop marks, all verify."""
    secrets = [config.gateway.auth_key, *(k.secret for k in config.gateway.auth_keys)]
    return [k.encode() for k in secrets if k]


def service_filters(spec: ServiceSpec, config: ProxyConfig, parts: Parts) -> list[object]:
    """A service's filters in request order (see `proxy.filters` for where issue 11's go)."""
    filters: list[object] = []
    if spec.allow_cidrs or spec.deny_cidrs:
        filters.append(IpFilter(spec.allow_cidrs, spec.deny_cidrs))
    if spec.cors is not None:
        filters.append(Cors(spec.cors))
    if any(r.methods for r in spec.routes):
        filters.append(RouteMethod())
    if spec.max_body_bytes is not None:
        filters.append(BodyLimit(spec.max_body_bytes))
    limits = rate_limits_of(spec, config, parts)
    filters.extend(f for f in limits if not needs_identity(f.spec.key))
    if spec.websocket.enabled:  # after the client-address limits: they count the handshake
        filters.append(WebSocketHandshake(enabled=True))
    if parts.auth is not None:
        filters.append(auth_filter(spec, config, parts.auth))
    filters.extend(f for f in limits if needs_identity(f.spec.key))
    if spec.request_headers is not None:
        filters.append(RequestHeaderRules(spec.request_headers, config.region))
    if spec.response_headers is not None:
        filters.append(ResponseHeaderRules(spec.response_headers, config.region))
    if parts.cache is not None and config.gateway.cache_enabled and spec.cache.enabled:
        filters.append(
            CacheLookup(parts.cache, region=config.region, service=spec.name, settings=spec.cache)
        )
    filters.append(ResponseHeaders(parts.via))
    if spec.websocket.enabled:
        filters.append(websocket_forward(spec, config, parts))
    filters.append(
        Forward(
            spec.name,
            pool=parts.pools[spec.name],
            limiter=parts.limiters[spec.name],
            limits=spec.limits,
            upstream=parts.upstream,
            budget=parts.budget,
            via=parts.via,
            dependency=spec.name == config.gateway.auth_service,
            drop=IDENTITY_HEADERS,
        )
    )
    return filters


def websocket_forward(spec: ServiceSpec, config: ProxyConfig, parts: Parts) -> WebSocketForward:
    checks_token = parts.auth is not None and spec.name != config.gateway.auth_service
    return WebSocketForward(
        spec.name,
        pool=parts.pools[spec.name],
        upstream=parts.upstream,
        settings=spec.websocket,
        connect_timeout_s=spec.limits.connect_timeout_s,
        retries=spec.limits.retries,
        via=parts.via,
        drop=IDENTITY_HEADERS,
        sockets=parts.websockets,
        auth=parts.auth if checks_token else None,
        policy=policy_for(spec) if checks_token else None,
    )


def rate_limits_of(spec: ServiceSpec, config: ProxyConfig, parts: Parts) -> list[RateLimit]:
    """The service's own ``rate_limit``, else config.json's fleet default per client IP."""
    state = parts.rate_limits
    if state is None:
        return []
    specs = spec.rate_limit
    if specs is None:
        default = config.gateway.default_rate_limit()
        specs = () if default is None else (default_limit(default),)
    # in chain order (client-address keys before auth, identity keys after): the first one
    # writes every limit's quota fields on the answer
    ordered = sorted(specs, key=lambda s: needs_identity(s.key))
    if not ordered:
        return []
    others = [RateLimit(spec.name, s, state) for s in ordered[1:]]
    return [FieldsRateLimit(spec.name, ordered[0], state, others), *others]


def default_limit(default: RateLimitDefault) -> RateLimitSpec:
    return RateLimitSpec(
        key="client_ip",
        rate_per_s=default.requests / default.window_s,
        burst=default.burst or default.requests,
        scope=default.scope,
        on_store_error=default.on_store_error,
    )


def auth_filter(spec: ServiceSpec, config: ProxyConfig, client: AuthClient) -> object:
    """Every service but the auth service itself needs a valid token (unless msa.yaml marks
    it public); requests to the auth service carry the client this proxy vouches for."""
    authorizer: Authorizer = client.authorizer
    if spec.name == config.gateway.auth_service:
        return VouchClient(authorizer)
    return TokenCheck(client, policy_for(spec))


def build_chains(config: ProxyConfig, parts: Parts) -> Chains:
    hop_keys = hop_keys_of(config)
    services = {
        name: Chain(name, service_filters(spec, config, parts))
        for name, spec in config.services.items()
    }
    regions = {}
    for code, pool in parts.elb_pools.items():
        if pool.endpoints:
            forward = RemoteForward(
                code,
                pool=pool,
                upstream=parts.upstream,
                via=parts.via,
                local_region=config.region,
                hop_keys=hop_keys,
            )
            relay = RemoteWebSocket(
                code,
                pool=pool,
                upstream=parts.upstream,
                via=parts.via,
                local_region=config.region,
                hop_keys=hop_keys,
                sockets=parts.websockets,
            )
            regions[code] = Chain(
                f"region:{code}",
                [WebSocketHandshake(True), ResponseHeaders(parts.via), relay, forward],
            )
    return Chains(config, services, regions, hop_keys, RouteTable(config.services.values()))
