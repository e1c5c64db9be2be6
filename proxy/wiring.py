"""Attaching the optional layers (token checks, response cache) to a proxy app.

Kept apart from `proxy.app` so that the request path does not know how those layers are
built, and so that a config reload reaches each of them through one hook.

The key ring is checked at start and at every reload: a key that is short or published
(`authsvc.tokens.KeyRing.weaknesses`) is logged as an error and listed under ``warnings`` on
``/health``; a config with no key at all cannot start a proxy (it could verify nothing), and a
reload to one is refused with the previous ring kept.

Requests to the auth service carry ``X-Gateway-Client``: the client address this proxy saw,
with the fleet key's MAC, which the auth server's sign-in throttles key on. For a request
another region's proxy forwarded (its hop mark verifies), the client is the last
``X-Forwarded-For`` entry, the one that proxy appended; otherwise it is our peer.
"""

from __future__ import annotations

import time

import structlog
import trio

from authsvc.tokens import CLIENT_HEADER, KeyRing, key_ring_of
from httpio.messages import Request
from httpio.protocol import Headers
from proxy.app import ProxyApp
from proxy.auth import Authorizer, AuthPolicy, VerdictCache
from proxy.auth_client import AuthClient
from proxy.cache import HttpCache, redis_pool_for
from proxy.forwarding import request_id_of
from proxy.hop import HOP_HEADER, verified_hop
from proxy.state import ProxyConfig
from topology.schema import ServiceSpec

log = structlog.get_logger()


def auth_origins(config: ProxyConfig) -> list[str]:
    spec = config.services.get(config.gateway.auth_service)
    return [i.url for i in spec.instances()] if spec is not None else []


def policy_for(spec: ServiceSpec) -> AuthPolicy:
    return AuthPolicy(
        public=spec.public,
        allowed_roles=frozenset(spec.roles or ()),
        public_prefixes=tuple(spec.public_paths),
    )


def client_address(app: ProxyApp, request: Request) -> str:
    """The client a request to the auth service is on behalf of (see the module header)."""
    mark = request.header(HOP_HEADER)
    if mark is not None and app.hop_keys:
        if verified_hop(app.hop_keys, mark, request_id_of(request.headers), time.time()):
            forwarded = b",".join(v for n, v in request.headers if n == b"x-forwarded-for")
            last = forwarded.rsplit(b",", 1)[-1].strip()
            if last:
                return last.decode("ascii", "replace")
    return request.client[0]


def _show_weaknesses(app: ProxyApp, ring: KeyRing) -> None:
    app.warnings = ring.weaknesses()
    for warning in app.warnings:
        log.error("auth_key_weak", proxy=app.name, warning=warning)


async def attach_auth(app: ProxyApp, nursery: trio.Nursery) -> AuthClient:
    """Every service but the auth service itself needs a valid token (unless msa.yaml marks
    it public); the verdict is checked before anything, the cache included, is served."""
    try:
        ring = key_ring_of(app.config.gateway)
    except ValueError as exc:
        log.error("auth_key_missing", proxy=app.name, error=str(exc))
        raise SystemExit(2) from None
    _show_weaknesses(app, ring)
    authorizer = Authorizer(ring, VerdictCache())
    client = AuthClient(app.upstream, auth_origins(app.config), authorizer)
    policies: dict[int, AuthPolicy] = {}

    def on_reload(config: ProxyConfig) -> None:
        try:
            authorizer.ring = key_ring_of(config.gateway)
        except ValueError as exc:
            log.error("auth_key_missing", proxy=app.name, error=str(exc), kept="previous keys")
        _show_weaknesses(app, authorizer.ring)
        client.set_origins(auth_origins(config))
        policies.clear()

    async def authorize(request: Request, spec: ServiceSpec) -> Headers:
        if spec.name == app.config.gateway.auth_service:
            return [(CLIENT_HEADER, authorizer.ring.client_proof(client_address(app, request)))]
        policy = policies.get(id(spec))
        if policy is None:
            policy = policies[id(spec)] = policy_for(spec)
        claims = await client.authorize(request, policy)
        if claims is None:
            return []
        return [(b"x-user", claims.sub.encode()), (b"x-user-role", claims.role.encode())]

    app.on_reload.append(on_reload)
    app.authorize = authorize
    await nursery.start(client.poll_revocations)
    return client


async def attach_cache(app: ProxyApp, nursery: trio.Nursery) -> None:
    """``Cache_or_not`` switches the cache on for the services whose msa.yaml entry says
    ``cache: {enabled: true}``; one Redis shared by the fleet behind a per-process tier."""
    gateway = app.config.gateway
    if not gateway.cache_enabled:
        return
    pool = redis_pool_for(
        gateway.cache, gateway.redis_address, gateway.redis_password, gateway.redis_db
    )
    app.cache = HttpCache(gateway.cache, pool)
    await nursery.start(app.cache.run)


async def attach_services(app: ProxyApp, nursery: trio.Nursery) -> None:
    await attach_auth(app, nursery)
    await attach_cache(app, nursery)
