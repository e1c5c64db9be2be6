"""The response cache as a filter: it runs the rest of the chain itself, or answers instead.

Everything the cache decides is sans-IO and lives in `proxy.cache.policy` (may this request
use the cache, may this response be stored, for how long, under which key) and
`proxy.cache.keys`; `proxy.cache.layer.HttpCache` does the lookups, the fill and the
coalescing. It is an around filter because a MISS must call what comes after it (the forward
and the response-header rewrite) and see the answer, to store what the client gets. It sits
after the token check, so a cached answer is never served to a caller the service refuses.

What is per request is never stored (``X-Request-ID``, ``traceparent``, ``tracestate``:
`proxy.cache.policy.NOT_STORED_HEADERS`), and every answer leaves here with this request's
``X-Request-ID``, a HIT as much as a MISS.
"""

from __future__ import annotations

from httpio.messages import Response
from proxy import forwarding
from proxy.cache import HttpCache
from proxy.filters.chain import Exchange, Stage
from topology.schema import ServiceCacheSettings


class CacheLookup:
    """``cache``: a service with ``cache: {enabled: true}`` while ``Cache_or_not`` is on."""

    name = "cache"

    def __init__(
        self, cache: HttpCache, *, region: str, service: str, settings: ServiceCacheSettings
    ) -> None:
        self._cache = cache
        self._region = region
        self._service = service
        self._settings = settings

    def __repr__(self) -> str:
        return f"<CacheLookup {self._region}:{self._service} {self._cache!r}>"

    async def around(self, ex: Exchange, rest: Stage) -> Response:
        if ex.upgrade is not None:  # a WebSocket handshake is never stored nor served stored
            return await rest.run(ex)

        async def fetch() -> Response:
            return await rest.run(ex)

        response = await self._cache.handle(
            ex.request,
            region=self._region,
            service=self._service,
            upstream_path_and_query=ex.target,
            settings=self._settings,
            fetch=fetch,
        )
        response.headers = forwarding.with_request_id(response.headers, ex.request_id)
        return response
