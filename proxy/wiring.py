"""The optional layers of a proxy (token checks, the response cache), built and started before
the app that uses them, which takes them at construction: nothing is attached to an app
after the fact.

The key ring is checked at start and at every reload (`AuthLayer.reload`, called by
`proxy.app.ProxyApp.apply`): a key that is short or published
(`authsvc.tokens.KeyRing.weaknesses`) is logged as an error and listed under ``warnings`` on
``/health``; a config with no key at all cannot start a proxy (it could verify nothing), and a
reload to one is refused with the previous ring kept. Which filter each service gets is
`proxy.filters.chains`'.
"""

from __future__ import annotations

import structlog
import trio

from authsvc.tokens import KeyRing, key_ring_of
from httpio.redis_client import RedisPool, RedisSettings
from httpio.upstream import UpstreamPool
from proxy.auth import Authorizer, VerdictCache
from proxy.auth_client import AuthClient
from proxy.cache import HttpCache, redis_settings_for
from proxy.state import ProxyConfig

log = structlog.get_logger()


def auth_origins(config: ProxyConfig) -> list[str]:
    spec = config.services.get(config.gateway.auth_service)
    return [i.url for i in spec.instances()] if spec is not None else []


class AuthLayer:
    """The token checks of one proxy: its auth client (key ring, verdict cache, revocation
    feed) and what an operator must fix about its keys."""

    def __init__(self, client: AuthClient, *, proxy: str) -> None:
        self.client = client
        self.proxy = proxy
        self.warnings: list[str] = []
        self._show_weaknesses(client.authorizer.ring)

    def __repr__(self) -> str:
        return f"<AuthLayer {self.proxy} {self.client!r} warnings={len(self.warnings)}>"

    def statistics(self) -> dict[str, object]:
        return {"warnings": list(self.warnings), "client": self.client.statistics()}

    def reload(self, config: ProxyConfig) -> None:
        authorizer = self.client.authorizer
        try:
            authorizer.ring = key_ring_of(config.gateway)
        except ValueError as exc:
            log.error("auth_key_missing", proxy=self.proxy, error=str(exc), kept="previous keys")
        self._show_weaknesses(authorizer.ring)
        self.client.set_origins(auth_origins(config))

    def _show_weaknesses(self, ring: KeyRing) -> None:
        self.warnings = ring.weaknesses()
        for warning in self.warnings:
            log.error("auth_key_weak", proxy=self.proxy, warning=warning)


async def start_auth(
    config: ProxyConfig, upstream: UpstreamPool, nursery: trio.Nursery, *, proxy: str
) -> AuthLayer:
    """The auth layer of a proxy named ``proxy``, its revocation feed polled in ``nursery``
    (started after a first attempt). Exits with status 2 when config.json holds no key."""
    try:
        ring = key_ring_of(config.gateway)
    except ValueError as exc:
        log.error("auth_key_missing", proxy=proxy, error=str(exc))
        raise SystemExit(2) from None
    client = AuthClient(upstream, auth_origins(config), Authorizer(ring, VerdictCache()))
    layer = AuthLayer(client, proxy=proxy)
    await nursery.start(client.poll_revocations)
    return layer


def fleet_redis(config: ProxyConfig) -> RedisSettings:
    """config.json's Redis: ``Redis_address``/``Redis_password``/``Redis_db``, or the primary
    that ``Redis_sentinels`` name as ``Redis_master_name``. The cache and the fleet-wide rate
    limits each open a pool on it, and each follows a reload that moves it."""
    g = config.gateway
    return redis_settings_for(
        g.cache,
        g.redis_address,
        g.redis_password,
        g.redis_db,
        sentinels=g.redis_sentinels,
        master_name=g.redis_master_name,
    )


async def start_cache(config: ProxyConfig, nursery: trio.Nursery) -> HttpCache | None:
    """``Cache_or_not`` switches the cache on for the services whose msa.yaml entry says
    ``cache: {enabled: true}``; one Redis shared by the fleet behind a per-process tier."""
    if not config.gateway.cache_enabled:
        return None
    cache = new_cache(config)
    await nursery.start(cache.run)
    return cache


def new_cache(config: ProxyConfig) -> HttpCache:
    """The cache of config.json's settings, on its Redis (started by its ``run``)."""
    return HttpCache(config.gateway.cache, RedisPool(fleet_redis(config)))
