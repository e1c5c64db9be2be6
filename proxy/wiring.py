"""Attaching the optional layers (token checks, response cache) to a proxy app.

Kept apart from `proxy.app` so that the request path does not know how those layers are
built, and so that a config reload reaches each of them through one hook.
"""

from __future__ import annotations

import trio

from authsvc.tokens import KeyRing
from httpio.messages import Request
from httpio.protocol import Headers
from proxy.app import ProxyApp
from proxy.auth import Authorizer, AuthPolicy, VerdictCache
from proxy.auth_client import AuthClient
from proxy.cache import HttpCache, redis_pool_for
from proxy.state import ProxyConfig
from topology.schema import ServiceSpec


def auth_origins(config: ProxyConfig) -> list[str]:
    spec = config.services.get(config.gateway.auth_service)
    return [i.url for i in spec.instances()] if spec is not None else []


def key_ring(config: ProxyConfig) -> KeyRing:
    return KeyRing.from_config(config.gateway.auth_key, tuple(config.gateway.auth_keys))


def policy_for(spec: ServiceSpec) -> AuthPolicy:
    return AuthPolicy(
        public=spec.public,
        allowed_roles=frozenset(spec.roles or ()),
        public_prefixes=tuple(spec.public_paths),
    )


async def attach_auth(app: ProxyApp, nursery: trio.Nursery) -> AuthClient:
    """Every service but the auth service itself needs a valid token (unless msa.yaml marks
    it public); the verdict is checked before anything, the cache included, is served."""
    authorizer = Authorizer(key_ring(app.config), VerdictCache())
    client = AuthClient(app.upstream, auth_origins(app.config), authorizer)
    policies: dict[int, AuthPolicy] = {}

    def on_reload(config: ProxyConfig) -> None:
        authorizer.ring = key_ring(config)
        client.set_origins(auth_origins(config))
        policies.clear()

    async def authorize(request: Request, spec: ServiceSpec) -> Headers:
        if spec.name == app.config.gateway.auth_service:
            return []
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
