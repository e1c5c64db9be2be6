"""The response cache as the proxy sees it: one `HttpCache.handle` call per request.

The proxy calls `handle` only after the token check passed (the original served cached
entries before checking the token, so a cached page leaked to anyone). ``handle`` decides
with `proxy.cache.policy`, reads and writes through `proxy.cache.store`, and labels every
response of a cache-enabled service with ``X-Cache: HIT | MISS | BYPASS``:

- HIT: fresh entry from memory or Redis, with ``Age``; a conditional request that matches
  gets a 304 instead; a HEAD gets the GET entry's head.
- MISS: fetched from the backend; stored when `policy.decide_storage` allows and the body
  fits ``max_body_bytes``. A streamed body is teed: chunks go to the client as they come and
  a copy is kept until the body ends, then stored; past the limit the copy is dropped and
  the rest only streams, so a large body never sits in memory.
- BYPASS: the request may not use the cache (method, ``no-store``, ``Range``, a Host we do
  not key, a header that reroutes it at the origin: see `policy`), or Redis is down or slow
  (the breaker is open): the backend answers, nothing is stored anywhere, so proxies do not
  drift apart while purges cannot reach them. ``statistics()["bypass_reasons"]`` counts why.

Concurrent misses on one key send one request upstream: the first GET becomes the leader,
later ones wait (at most ``coalesce_timeout_s``) for its entry to be stored and then read
it; if the leader's answer was not storable they fetch for themselves. A HEAD that misses
is fetched as a HEAD and not stored: it has no body to fill a GET entry with.

Successful unsafe requests (POST, PUT, DELETE, PATCH) invalidate the stored entry for
their URI fleet-wide (RFC 9111 4.4). Operators purge through `HttpCache.admin_purge`
(``POST /admin/cache/purge``); keys and prefixes must lie in the cache's namespace, so no
purge can reach other data in a shared Redis.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

import msgspec
import structlog
import trio

from httpio.breaker import CircuitBreaker
from httpio.dates import http_date
from httpio.errors import ClientError
from httpio.messages import Request, Response, ResponseBody, json_response
from httpio.protocol import header_value
from httpio.redis_client import RedisPool, RedisSettings
from httpio.single_flight import Flight, SingleFlight
from proxy.cache.keys import cache_key
from proxy.cache.memory import MemoryTier
from proxy.cache.policy import (
    Lookup,
    RequestFacts,
    StoreVerdict,
    decide_storage,
    entry_not_modified,
    examine_request,
    make_entry,
    new_vary_index,
    not_modified_headers,
    request_accepts,
    variant_key,
)
from proxy.cache.records import CachedResponse, PurgeRequest, VaryIndex, encode_stored
from proxy.cache.store import TieredStore
from topology.schema import CacheSettings, ServiceCacheSettings

HIT, MISS, BYPASS = b"HIT", b"MISS", b"BYPASS"

log = structlog.get_logger()

Fetch = Callable[[], Awaitable[Response]]


def redis_settings_for(
    settings: CacheSettings,
    address: str,
    password: str = "",
    db: int = 0,
    *,
    sentinels: Sequence[str] = (),
    master_name: str = "mymaster",
) -> RedisSettings:
    """The pool settings for config.json's ``Redis_address``/``Redis_password``/``Redis_db``,
    or for the primary ``Redis_sentinels`` name as ``Redis_master_name`` (`httpio.sentinel`)."""
    return RedisSettings.from_address(
        address,
        password=password,
        db=db,
        connect_timeout_s=settings.redis_connect_timeout_s,
        command_timeout_s=settings.redis_command_timeout_s,
        sentinels=tuple(sentinels),
        master_name=master_name,
    )


@dataclass(frozen=True, slots=True)
class _Found:
    entry: CachedResponse | None
    index: VaryIndex | None
    degraded: str  # why Redis was not asked or did not answer; "" when it was fine


def _label(response: Response, label: bytes) -> Response:
    response.headers = [(n, v) for n, v in response.headers if n.lower() != b"x-cache"]
    response.headers.append((b"x-cache", label))
    return response


class _TeeBody:
    """Streams ``inner`` to the client and keeps a copy of up to ``limit`` bytes; at the end
    of a complete body calls ``on_complete(body)``. ``on_finish`` runs exactly once, whether
    the body completed, broke, or was abandoned.

    The end is known when the last chunk arrives (the declared length is reached, or the
    upstream says it is finished), and the entry is stored *before* that chunk is passed on:
    a client that has the whole answer and asks again, through any proxy, finds it stored."""

    def __init__(
        self,
        inner: ResponseBody,
        *,
        limit: int,
        declared: int | None,
        on_complete: Callable[[bytes], Awaitable[None]],
        on_finish: Callable[[], None],
    ) -> None:
        self._inner = inner
        self._limit = limit
        self._declared = declared
        self._parts: list[bytes] | None = []
        self._size = 0
        self._on_complete = on_complete
        self._on_finish: Callable[[], None] | None = on_finish

    def _finish(self) -> None:
        on_finish, self._on_finish = self._on_finish, None
        if on_finish is not None:
            on_finish()

    async def read(self) -> bytes:
        chunk = await self._inner.read()
        if chunk:
            self._size += len(chunk)
            if self._parts is not None:
                if self._size > self._limit:
                    self._parts = None
                else:
                    self._parts.append(chunk)
            if self._size == self._declared or getattr(self._inner, "finished", False):
                await self._complete()  # stored before the client has the last byte
            return chunk
        await self._complete()
        return b""

    async def _complete(self) -> None:
        if self._on_finish is None:
            return
        parts, self._parts = self._parts, None
        try:
            if parts is not None and self._declared in (None, self._size):
                await self._on_complete(b"".join(parts))
        finally:
            self._finish()

    async def aclose(self) -> None:
        self._parts = None
        self._finish()
        await self._inner.aclose()


class HttpCache:
    def __init__(
        self,
        settings: CacheSettings,
        redis: RedisPool | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._clock = clock
        memory = MemoryTier(
            max_bytes=settings.memory_max_bytes,
            max_object_bytes=settings.memory_max_object_bytes,
            clock=clock,
        )
        breaker = CircuitBreaker(
            "cache-redis", failures=settings.breaker_failures, open_s=settings.breaker_open_s
        )
        self.store = TieredStore(memory, redis, breaker, namespace=settings.namespace, clock=clock)
        self._flights: SingleFlight[str, None] = SingleFlight()
        self._serving = trio.CancelScope()  # `run`'s work on the current Redis
        self._waiting = 0
        self._stats: Counter[str] = Counter()
        # Both keyed by a fixed vocabulary of reasons (plus status codes), never by request.
        self._not_storable: Counter[str] = Counter()
        self._bypass_reasons: Counter[str] = Counter()

    def __repr__(self) -> str:
        s = self._stats
        return (
            f"<HttpCache {self.settings.namespace} hits={s['hits']} misses={s['misses']} "
            f"bypasses={s['bypasses']} inflight={len(self._flights)} {self.store!r}>"
        )

    def statistics(self) -> dict[str, object]:
        return {
            **{k: self._stats[k] for k in ("hits", "misses", "bypasses", "not_modified")},
            **{k: self._stats[k] for k in ("coalesced", "stored", "store_failed", "too_large")},
            "inflight": len(self._flights),
            "waiting": self._waiting,
            "bypass_reasons": dict(self._bypass_reasons),
            "not_storable": dict(self._not_storable),
            "store": self.store.statistics(),
        }

    def key_for(self, region: str, service: str, authority: str, path_and_query: str) -> str:
        """The key of ``path_and_query`` at ``authority`` (see `proxy.cache.keys`)."""
        return cache_key(self.settings.namespace, region, service, authority, path_and_query)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The purge subscriber; runs until cancelled (returns at once without Redis). A
        first pooled connection is opened before the proxy serves, so that its first burst
        of requests does not open one each. When a reload moves the store (`follow_redis`),
        the subscriber and the pool's Sentinel watch start over on the new one."""
        status: trio.TaskStatus[None] = task_status
        while True:
            redis = self.store.redis
            if redis is None:
                await self.store.run_subscriber(
                    retry_s=self.settings.breaker_open_s, task_status=status
                )
                return
            with trio.CancelScope() as self._serving:
                async with trio.open_nursery() as nursery:
                    await nursery.start(redis.run)  # follows a Sentinel failover
                    await redis.warm()
                    await self.store.run_subscriber(
                        retry_s=self.settings.breaker_open_s, task_status=status
                    )
            status = trio.TASK_STATUS_IGNORED

    def follow_redis(self, settings: RedisSettings) -> RedisPool | None:
        """A reload with config.json's Redis settings: when they changed, the next lookups
        and stores go to a pool on the new Redis, the purge subscriber moves to it (and
        empties the memory tier as it subscribes: purges sent while it moved were missed),
        and entries of the old one are not carried over. Returns the old pool, to close;
        None when nothing changed (or the cache runs without Redis: config.json always
        names one, so that is a test's cache)."""
        old = self.store.redis
        if old is None or settings == old.settings:
            return None
        self.store.redis = RedisPool(settings)
        log.info("cache_store_moved", old=old.settings.where(), new=settings.where())
        self._serving.cancel()
        return old

    async def purge(self, *, key: str | None = None, prefix: str | None = None) -> int:
        """Fleet-wide purge of one key (with its Vary variants) or of a key prefix; both must
        lie in this cache's namespace, so a purge can never touch other data in Redis."""
        own = self.settings.namespace + ":"
        for value in (key, prefix):
            if value is not None and not value.startswith(own):
                raise ClientError(f"cache keys start with {own!r}, not {value[:60]!r}")
        return await self.store.purge(key=key, prefix=prefix)

    async def admin_purge(self, request: Request) -> Response:
        """``POST /admin/cache/purge`` with ``{"key": ...}`` or ``{"prefix": ...}`` as JSON,
        or the same as a query string. 200 ``{"deleted": n}``; 400 on a bad request, 503 when
        Redis cannot be reached (the purge did not happen fleet-wide)."""
        raw = await request.body.read_all()
        try:
            if raw.strip():
                order = msgspec.json.decode(raw, type=PurgeRequest)
            else:
                query = dict(parse_qsl(request.query))
                order = msgspec.convert(query, PurgeRequest)
        except msgspec.MsgspecError as exc:
            raise ClientError(f"purge request: {exc}") from exc
        if (order.key is None) == (order.prefix is None):
            raise ClientError("purge request needs exactly one of key or prefix")
        deleted = await self.purge(key=order.key, prefix=order.prefix)
        return json_response(200, {"deleted": deleted, "key": order.key, "prefix": order.prefix})

    # -- the request path --------------------------------------------------------------------
    async def handle(
        self,
        request: Request,
        *,
        region: str,
        service: str,
        upstream_path_and_query: str,
        settings: ServiceCacheSettings,
        fetch: Fetch,
    ) -> Response:
        if not settings.enabled:
            return await fetch()
        facts = examine_request(request.method, request.headers)
        authority = facts.authority
        key = (
            None
            if authority is None
            else self.key_for(region, service, authority, upstream_path_and_query)
        )
        if key is None or facts.mode is Lookup.BYPASS:
            response = await fetch()
            if key is not None and facts.unsafe and 200 <= response.status < 400:
                await self.store.invalidate(key)
            return self._bypass(response, facts.reason)

        found = await self._find(key, request, facts, settings.key_headers, fetch)
        if isinstance(found, Response):
            return found
        if request.method == "HEAD":
            self._stats["misses"] += 1
            return _label(await fetch(), MISS)
        return await self._fetch_and_fill(request, facts, key, found.index, settings, fetch)

    async def _find(
        self, key: str, request: Request, facts: RequestFacts, required: Sequence[str], fetch: Fetch
    ) -> Response | _Found:
        """The answer when the cache gives one: a hit (once a fetch in flight for ``key`` has
        landed, if there is one), or a bypass while Redis is in trouble. Otherwise what was
        found to fill under: for a REFRESH, only the Vary index (the entry is skipped)."""
        if facts.mode is Lookup.REFRESH:
            found = await self._lookup(key, request, facts, required)
            return self._bypass(await fetch(), found.degraded) if found.degraded else found
        # Look once (after the fetch in flight, if any); on a miss look once more only if a
        # fetch took off meanwhile, since its answer is about to be stored.
        for second in (False, True):
            flight = self._flights.join(key)
            if flight is not None:
                await self._wait_for(key, flight)
            elif second:
                break
            found = await self._lookup(key, request, facts, required)
            if found.entry is not None:
                return self._serve(found.entry, request)
            if found.degraded and not second:
                return self._bypass(await fetch(), found.degraded)
        return found

    async def _wait_for(self, key: str, flight: Flight[None]) -> None:
        self._stats["coalesced"] += 1
        self._waiting += 1
        try:
            landed = await flight.wait(self.settings.coalesce_timeout_s)
        finally:
            self._waiting -= 1
        if not landed:
            self._flights.abandon(key, flight)  # a leader that never finished must not block

    async def _lookup(
        self, key: str, request: Request, facts: RequestFacts, required: Sequence[str]
    ) -> _Found:
        """The entry this request may be served, and the Vary index it hangs off. An entry
        stored before the service declared ``key_headers`` (``required``) is not keyed by
        them: it is not served, and the next store replaces it with an index."""
        loaded = await self.store.load(key)
        value = loaded.value
        now = self._clock()
        if isinstance(value, VaryIndex):
            if value.expires_at <= now or not set(required) <= set(value.names):
                return _Found(None, None, loaded.degraded)
            loaded = await self.store.load(variant_key(key, value, request.headers))
            entry = loaded.value if isinstance(loaded.value, CachedResponse) else None
            index: VaryIndex | None = value
        else:
            entry, index = (None if required else value), None
        if entry is not None and not request_accepts(facts.cache_control, entry, now):
            entry = None
        return _Found(entry, index, loaded.degraded)

    def _serve(self, entry: CachedResponse, request: Request) -> Response:
        age = (b"age", b"%d" % int(entry.age(self._clock())))
        self._stats["hits"] += 1
        if entry_not_modified(request.headers, entry):
            self._stats["not_modified"] += 1
            return Response(304, [*not_modified_headers(entry.headers), age, (b"x-cache", HIT)])
        headers = [*entry.headers, age, (b"x-cache", HIT)]
        if request.method == "HEAD":
            headers.append((b"content-length", b"%d" % len(entry.body)))
            return Response(entry.status, headers, b"")
        return Response(entry.status, headers, entry.body)

    def _bypass(self, response: Response, reason: str) -> Response:
        self._stats["bypasses"] += 1
        self._bypass_reasons[reason] += 1
        return _label(response, BYPASS)

    async def _fetch_and_fill(
        self,
        request: Request,
        facts: RequestFacts,
        key: str,
        index: VaryIndex | None,
        settings: ServiceCacheSettings,
        fetch: Fetch,
    ) -> Response:
        self._stats["misses"] += 1
        flight = self._flights.lead(key)  # None: another request leads; fetch alongside

        def release() -> None:
            if flight is not None:
                self._flights.land(key, flight)

        try:
            response = await fetch()
        except BaseException:
            release()
            raise
        verdict = decide_storage(
            response.status,
            response.headers,
            settings,
            self._clock(),
            authenticated=facts.authenticated,
        )
        if not verdict.storable:
            self._not_storable[verdict.reason] += 1
            release()
            return _label(response, MISS)

        async def store(body: bytes) -> None:
            await self._store(key, index, request, verdict, response, body)

        await self._keep(response, settings.max_body_bytes, store, release)
        return _label(response, MISS)

    async def _keep(
        self,
        response: Response,
        limit: int,
        store: Callable[[bytes], Awaitable[None]],
        release: Callable[[], None],
    ) -> None:
        """Store a whole body now, or tee a streamed one to store at its end; a body larger
        than ``limit`` is only passed on. ``release`` runs once, whatever happens."""
        body = response.body
        if isinstance(body, bytes):
            try:
                if len(body) <= limit:
                    await store(body)
                else:
                    self._stats["too_large"] += 1
            finally:
                release()
            return
        length = response_length(response)
        if length is not None and length > limit:
            self._stats["too_large"] += 1
            release()
            return
        response.body = _TeeBody(
            body, limit=limit, declared=length, on_complete=store, on_finish=release
        )

    async def _store(
        self,
        key: str,
        index: VaryIndex | None,
        request: Request,
        verdict: StoreVerdict,
        response: Response,
        body: bytes,
    ) -> None:
        now = self._clock()
        date = http_date(int(now))
        entry = make_entry(response.status, response.headers, body, verdict, now, date)
        items: list[tuple[str, CachedResponse | VaryIndex, bytes]]
        if verdict.vary:
            until = now + verdict.ttl_s
            if index is None or index.names != verdict.vary or index.expires_at <= now:
                index = new_vary_index(verdict.vary, until)
            elif index.expires_at < until:
                index = VaryIndex(index.names, index.generation, until)
            variant = variant_key(key, index, request.headers)
            items = [(key, index, encode_stored(index)), (variant, entry, encode_stored(entry))]
        else:
            items = [(key, entry, encode_stored(entry))]
        if await self.store.save(items):
            self._stats["stored"] += 1
        else:
            self._stats["store_failed"] += 1


def response_length(response: Response) -> int | None:
    value = header_value(response.headers, b"content-length")
    return int(value) if value is not None and value.strip().isdigit() else None
