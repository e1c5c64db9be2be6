from __future__ import annotations

import time
from collections.abc import Sequence
from email.utils import formatdate
from typing import Any

import msgspec
import pytest
import structlog
import trio

from httpio.breaker import BreakerState
from httpio.errors import ClientError, DependencyUnavailable, UpstreamUnreachable
from httpio.messages import Request, Response
from httpio.redis_client import RedisPool, RedisSettings
from proxy.cache.layer import HttpCache
from tests.support.polling import wait_until
from tests.support.redisproc import running_redis
from topology.schema import CacheSettings, ServiceCacheSettings

ON = ServiceCacheSettings(enabled=True, default_ttl_s=30.0, max_body_bytes=1000)
SETTINGS = CacheSettings(namespace="gw:t", breaker_failures=1, breaker_open_s=0.05)
KEY = "gw:t:ko_KR:image://img.test/img/a.png"
HOST = (b"host", b"img.test")


class FixedBody:
    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    async def read(self) -> bytes:
        data, self.data = self.data, b""
        return data

    async def read_all(self) -> bytes:
        return await self.read()


def request(
    method: str = "GET",
    target: str = "/img/a.png",
    headers: Sequence[tuple[bytes, bytes]] = (),
    body_bytes: bytes = b"",
) -> Request:
    path, _, query = target.partition("?")
    body: Any = FixedBody(body_bytes)
    fields = list(headers)
    if not any(n == b"host" for n, _ in fields):
        fields.insert(0, HOST)
    return Request(method, target, path, query, fields, "1.1", ("127.0.0.1", 40000), body)


class ChunkedBody:
    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.closed = False

    async def read(self) -> bytes:
        await trio.lowlevel.checkpoint()
        return self.chunks.pop(0) if self.chunks else b""

    async def aclose(self) -> None:
        self.closed = True


class Origin:
    """The backend behind ``fetch``: a fixed answer, a call counter, an optional gate."""

    def __init__(self) -> None:
        self.answer()
        self.calls = 0
        self.gate: trio.Event | None = None
        self.last_body: ChunkedBody | None = None

    def answer(
        self,
        status: int = 200,
        headers: Sequence[tuple[bytes, bytes]] = ((b"content-type", b"image/png"),),
        body: bytes = b"PNG",
        chunks: list[bytes] | None = None,
    ) -> None:
        self.status, self.headers, self.body, self.chunks = status, list(headers), body, chunks

    async def fetch(self) -> Response:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        await trio.lowlevel.checkpoint()
        if self.chunks is not None:
            self.last_body = ChunkedBody(self.chunks)
            return Response(self.status, list(self.headers), self.last_body)
        return Response(self.status, list(self.headers), self.body)


async def read_body(response: Response) -> bytes:
    """Drain a response as the server does: read to the end, close in finally."""
    body = response.body
    if isinstance(body, bytes):
        return body
    parts = []
    try:
        while chunk := await body.read():
            parts.append(chunk)
    finally:
        await body.aclose()
    return b"".join(parts)


def header(response: Response, name: bytes) -> bytes | None:
    values = [v for n, v in response.headers if n == name]
    assert len(values) <= 1, f"{name!r} repeated: {values}"
    return values[0] if values else None


async def get(
    cache: HttpCache,
    origin: Origin,
    req: Request | None = None,
    *,
    settings: ServiceCacheSettings = ON,
    path: str = "/img/a.png",
) -> tuple[Response, bytes]:
    response = await cache.handle(
        req or request(target=path),
        region="ko_KR",
        service="image",
        upstream_path_and_query=path,
        settings=settings,
        fetch=origin.fetch,
    )
    return response, await read_body(response)


@pytest.fixture
def origin() -> Origin:
    return Origin()


@pytest.fixture
def cache(redis_pool) -> HttpCache:
    return HttpCache(SETTINGS, redis_pool)


# -- hit, miss, expiry ------------------------------------------------------------------------
async def test_miss_then_hit_with_age(redis_pool, origin, clock):
    cache = HttpCache(SETTINGS, redis_pool, clock=clock)
    response, body = await get(cache, origin)
    assert (response.status, body, header(response, b"x-cache")) == (200, b"PNG", b"MISS")
    clock.now += 7
    response, body = await get(cache, origin)
    assert (response.status, body, header(response, b"x-cache")) == (200, b"PNG", b"HIT")
    assert header(response, b"age") == b"7"
    assert header(response, b"content-type") == b"image/png"
    assert header(response, b"date") is not None  # added at storage: the origin sent none
    assert origin.calls == 1
    assert cache.statistics()["hits"] == 1 and cache.statistics()["misses"] == 1


async def test_a_second_proxy_hits_what_the_first_stored(redis_pool, origin):
    await get(HttpCache(SETTINGS, redis_pool), origin)
    response, body = await get(HttpCache(SETTINGS, redis_pool), origin)
    assert (header(response, b"x-cache"), body, origin.calls) == (b"HIT", b"PNG", 1)


async def test_memory_tier_expiry_follows_the_injected_clock(redis_pool, origin, clock):
    cache = HttpCache(SETTINGS, redis_pool, clock=clock)
    origin.answer(headers=[(b"cache-control", b"max-age=10")])
    await get(cache, origin)
    clock.now += 9.9
    assert header((await get(cache, origin))[0], b"x-cache") == b"HIT"
    clock.now += 0.1
    # memory says expired; the Redis copy (which lives in real time) is stale by our clock
    assert header((await get(cache, origin))[0], b"x-cache") == b"MISS"
    assert origin.calls == 2


async def test_redis_expiry(redis_pool, origin):
    short = ServiceCacheSettings(enabled=True, default_ttl_s=0.3)
    await get(HttpCache(SETTINGS, redis_pool), origin, settings=short)

    async def expired_in_redis() -> bool:
        return bool(await redis_pool.execute("EXISTS", KEY) == 0)

    await wait_until(expired_in_redis)
    response, _ = await get(HttpCache(SETTINGS, redis_pool), origin, settings=short)
    assert header(response, b"x-cache") == b"MISS"


# -- what is not stored -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        [(b"cache-control", b"no-store")],
        [(b"cache-control", b"private, max-age=60")],
        [(b"set-cookie", b"sid=1")],
        [(b"vary", b"*")],
    ],
)
async def test_unstorable_responses_are_fetched_every_time(cache, origin, headers):
    origin.answer(headers=headers)
    for _ in range(2):
        response, _ = await get(cache, origin)
        assert header(response, b"x-cache") == b"MISS"
    assert origin.calls == 2


async def test_errors_are_not_cached_by_default(cache, origin, redis_pool):
    origin.answer(status=404, body=b"nope")
    await get(cache, origin)
    await get(cache, origin)
    assert origin.calls == 2
    assert await redis_pool.execute("EXISTS", KEY) == 0
    errors_ok = ServiceCacheSettings(enabled=True, cache_errors=True)
    await get(cache, origin, settings=errors_ok)
    response, body = await get(cache, origin, settings=errors_ok)
    assert (response.status, body, header(response, b"x-cache")) == (404, b"nope", b"HIT")


async def test_request_no_store_bypasses_and_no_cache_refreshes(cache, origin):
    await get(cache, origin)
    response, _ = await get(cache, origin, request(headers=[(b"cache-control", b"no-store")]))
    assert header(response, b"x-cache") == b"BYPASS"
    origin.answer(body=b"NEW")
    response, body = await get(cache, origin, request(headers=[(b"cache-control", b"no-cache")]))
    assert (header(response, b"x-cache"), body) == (b"MISS", b"NEW")
    assert (await get(cache, origin))[1] == b"NEW"  # the refreshed answer was stored
    assert origin.calls == 3


async def test_disabled_service_is_untouched(cache, origin):
    off = ServiceCacheSettings(enabled=False)
    response, _ = await get(cache, origin, settings=off)
    assert header(response, b"x-cache") is None
    await get(cache, origin, settings=off)
    assert origin.calls == 2


async def test_unsafe_request_invalidates_the_uri(cache, origin, redis_pool):
    await get(cache, origin)
    response, _ = await get(cache, origin, request("POST"))
    assert header(response, b"x-cache") == b"BYPASS"
    assert await redis_pool.execute("EXISTS", KEY) == 0
    assert header((await get(cache, origin))[0], b"x-cache") == b"MISS"


async def test_fetch_errors_propagate_and_release_the_key(cache, origin):
    async def broken() -> Response:
        raise UpstreamUnreachable("refused")

    with pytest.raises(UpstreamUnreachable):
        await cache.handle(
            request(), region="ko_KR", service="image", upstream_path_and_query="/img/a.png",
            settings=ON, fetch=broken,
        )  # fmt: skip
    assert cache.statistics()["inflight"] == 0
    assert header((await get(cache, origin))[0], b"x-cache") == b"MISS"


# -- Vary -------------------------------------------------------------------------------------
async def test_vary_stores_one_variant_per_header_value(redis_pool, origin):
    cache = HttpCache(SETTINGS, redis_pool)
    origin.answer(headers=[(b"vary", b"Accept-Language")], body=b"ko")
    ko = request(headers=[(b"accept-language", b"ko")])
    en = request(headers=[(b"accept-language", b"en")])
    assert (await get(cache, origin, ko))[1] == b"ko"
    origin.answer(headers=[(b"vary", b"Accept-Language")], body=b"en")
    response, body = await get(cache, origin, en)
    assert (header(response, b"x-cache"), body) == (b"MISS", b"en")
    for req, expected in ((ko, b"ko"), (en, b"en")):
        response, body = await get(HttpCache(SETTINGS, redis_pool), origin, req)
        assert (header(response, b"x-cache"), body) == (b"HIT", expected)
    assert origin.calls == 2
    # index + two variants share the readable prefix
    keys = sorted(await redis_pool.execute("KEYS", "gw:t:*"))
    assert keys[0] == KEY.encode() and len(keys) == 3
    assert all(k.startswith(KEY.encode() + b"|v=") for k in keys[1:])


# -- conditional requests and HEAD ------------------------------------------------------------
VALIDATED = [
    (b"etag", b'"v1"'),
    (b"last-modified", formatdate(1_600_000_000, usegmt=True).encode()),
    (b"content-type", b"image/png"),
    (b"cache-control", b"max-age=60"),
]


@pytest.mark.parametrize(
    "conditional",
    [
        [(b"if-none-match", b'W/"v1"')],
        [(b"if-modified-since", formatdate(1_600_000_100, usegmt=True).encode())],
    ],
)
async def test_conditional_hit_answers_304_with_validators(cache, origin, conditional):
    origin.answer(headers=VALIDATED)
    await get(cache, origin)
    response, body = await get(cache, origin, request(headers=conditional))
    assert (response.status, body, header(response, b"x-cache")) == (304, b"", b"HIT")
    assert header(response, b"etag") == b'"v1"'
    assert header(response, b"cache-control") == b"max-age=60"
    assert header(response, b"age") is not None
    assert header(response, b"content-type") is None
    changed = request(headers=[(b"if-none-match", b'"v0"')])
    assert (await get(cache, origin, changed))[0].status == 200
    assert origin.calls == 1


async def test_head_is_answered_from_the_get_entry(cache, origin):
    await get(cache, origin)
    response, body = await get(cache, origin, request("HEAD"))
    assert (response.status, body, header(response, b"x-cache")) == (200, b"", b"HIT")
    assert header(response, b"content-length") == b"3"
    assert origin.calls == 1


async def test_a_head_miss_is_fetched_and_not_stored(cache, origin, redis_pool):
    origin.answer(body=b"")
    response, _ = await get(cache, origin, request("HEAD"))
    assert header(response, b"x-cache") == b"MISS"
    assert await redis_pool.execute("EXISTS", KEY) == 0


# -- streaming bodies -------------------------------------------------------------------------
async def test_streamed_body_is_teed_into_the_cache(cache, origin):
    origin.answer(chunks=[b"ab", b"cd", b"ef"], headers=[(b"content-length", b"6")])
    response, body = await get(cache, origin)
    assert (body, header(response, b"x-cache")) == (b"abcdef", b"MISS")
    assert origin.last_body is not None and origin.last_body.closed
    response, body = await get(cache, origin)
    assert (body, header(response, b"x-cache")) == (b"abcdef", b"HIT")
    assert header(response, b"content-length") is None  # the server sets it for bytes


async def test_body_over_the_limit_streams_and_is_not_stored(cache, origin, redis_pool):
    big = [b"x" * 400] * 5  # 2000 bytes > max_body_bytes=1000, no Content-Length
    origin.answer(chunks=big)
    _, body = await get(cache, origin)
    assert body == b"x" * 2000
    assert await redis_pool.execute("EXISTS", KEY) == 0
    assert header((await get(cache, origin))[0], b"x-cache") == b"MISS"
    # with a Content-Length above the limit the body is not even teed
    origin.answer(chunks=big, headers=[(b"content-length", b"2000")])
    await get(cache, origin)
    assert cache.statistics()["too_large"] == 1
    assert origin.calls == 3


async def streamed(cache: HttpCache, origin: Origin) -> Any:
    """The body of a MISS as the server gets it, to be read chunk by chunk."""
    response = await cache.handle(
        request(), region="ko_KR", service="image", upstream_path_and_query="/img/a.png",
        settings=ON, fetch=origin.fetch,
    )  # fmt: skip
    assert not isinstance(response.body, bytes)
    return response.body


async def test_truncated_or_abandoned_bodies_are_not_stored(cache, origin, redis_pool):
    origin.answer(chunks=[b"abc"], headers=[(b"content-length", b"6")])  # upstream lied
    await get(cache, origin)
    origin.answer(chunks=[b"abc", b"def"])
    body = await streamed(cache, origin)
    assert await body.read() == b"abc"
    await body.aclose()  # the client went away
    assert await redis_pool.execute("EXISTS", KEY) == 0
    assert cache.statistics()["inflight"] == 0


# -- coalescing -------------------------------------------------------------------------------
async def test_concurrent_misses_send_one_request_upstream(cache, origin):
    origin.gate = trio.Event()
    results: list[tuple[bytes | None, bytes]] = []

    async def client() -> None:
        response, body = await get(cache, origin)
        results.append((header(response, b"x-cache"), body))

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(client)

        async def all_waiting() -> bool:
            return bool(cache.statistics()["waiting"] == 9)

        await wait_until(all_waiting)
        origin.gate.set()
    assert origin.calls == 1
    assert sorted(results) == [(b"HIT", b"PNG")] * 9 + [(b"MISS", b"PNG")]
    assert cache.statistics()["inflight"] == 0


async def test_waiters_fetch_themselves_when_the_leader_could_not_store(cache, origin):
    origin.gate = trio.Event()
    origin.answer(headers=[(b"cache-control", b"no-store")])
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(get, cache, origin)

        async def waiting() -> bool:
            return bool(cache.statistics()["waiting"] == 2)

        await wait_until(waiting)
        origin.gate.set()
    assert origin.calls == 3


# -- purge ------------------------------------------------------------------------------------
async def test_purge_by_key_and_prefix_reaches_another_proxy(redis_pool, origin):
    here, there = HttpCache(SETTINGS, redis_pool), HttpCache(SETTINGS, redis_pool)
    async with trio.open_nursery() as nursery:
        await nursery.start(there.run)
        for path in ("/img/a.png", "/img/b.png", "/doc/c"):
            await get(here, origin, path=path)
            assert header((await get(there, origin, path=path))[0], b"x-cache") == b"HIT"
        assert origin.calls == 3

        assert await here.purge(key=here.key_for("ko_KR", "image", "img.test", "/img/a.png")) == 1

        async def purged_there() -> bool:
            return KEY not in there.store.memory

        await wait_until(purged_there)
        assert header((await get(there, origin))[0], b"x-cache") == b"MISS"

        assert await here.purge(prefix="gw:t:ko_KR:image://img.test/img/") == 2

        async def prefix_purged_there() -> bool:
            return (
                len(
                    [
                        k
                        for k in ("/img/a.png", "/img/b.png")
                        if there.key_for("ko_KR", "image", "img.test", k) in there.store.memory
                    ]
                )
                == 0
            )

        await wait_until(prefix_purged_there)
        assert header((await get(there, origin, path="/doc/c"))[0], b"x-cache") == b"HIT"
        assert header((await get(there, origin, path="/img/b.png"))[0], b"x-cache") == b"MISS"
        nursery.cancel_scope.cancel()


# -- Redis outage -----------------------------------------------------------------------------
async def test_redis_killed_then_restarted(redis_server, origin):
    pool = RedisPool(
        RedisSettings(port=redis_server.port, connect_timeout_s=0.3, command_timeout_s=0.3)
    )
    cache = HttpCache(SETTINGS, pool)
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
        await get(cache, origin, path="/warm")
        redis_server.kill()
        with structlog.testing.capture_logs() as logs:
            for _ in range(3):
                response, body = await get(cache, origin)
                assert (response.status, body, header(response, b"x-cache")) == (
                    200,
                    b"PNG",
                    b"BYPASS",
                )
        assert cache.store.breaker.state is not BreakerState.CLOSED
        assert [e["state"] for e in logs if e["event"] == "cache_redis_breaker"][:1] == ["open"]
        # what this proxy already holds still answers from memory
        assert header((await get(cache, origin, path="/warm"))[0], b"x-cache") == b"HIT"

        redis_server.restart()
        seen: list[bytes | None] = []

        async def caching_again() -> bool:
            response, _ = await get(cache, origin)
            seen.append(header(response, b"x-cache"))
            return seen[-1] == b"HIT"

        await wait_until(caching_again)
        assert b"MISS" in seen  # stored again once the breaker closed
        assert cache.store.breaker.statistics()["state"] == "closed"
        assert await pool.execute("EXISTS", KEY) == 1

        async def resubscribed() -> bool:
            return cache.store.subscribed

        await wait_until(resubscribed)
        nursery.cancel_scope.cancel()
    await pool.aclose()


# -- a reload that moves Redis ----------------------------------------------------------------
async def test_a_moved_redis_takes_the_stores_and_the_purge_notices(redis_server, origin):
    settings = RedisSettings(port=redis_server.port, connect_timeout_s=0.5, command_timeout_s=0.5)
    old = RedisPool(settings)
    cache = HttpCache(SETTINGS, old)
    with running_redis() as moved_to:
        moved = msgspec.structs.replace(settings, port=moved_to.port)
        async with trio.open_nursery() as nursery:
            await nursery.start(cache.run)
            await get(cache, origin, path="/img/a.png")
            assert await old.execute("EXISTS", KEY) == 1
            assert cache.follow_redis(settings) is None  # nothing moved: nothing to close
            with structlog.testing.capture_logs() as logs:
                assert cache.follow_redis(moved) is old
            assert [e["event"] for e in logs] == ["cache_store_moved"]
            await old.aclose()
            new = cache.store.redis
            assert new is not None and new.settings == moved

            async def subscribed_there() -> bool:
                return cache.store.subscribed and await new.execute(
                    "PUBSUB", "NUMSUB", cache.store.channel
                ) == [cache.store.channel.encode(), 1]

            await wait_until(subscribed_there)
            response, _ = await get(cache, origin, path="/img/a.png")  # memory emptied
            assert header(response, b"x-cache") == b"MISS"
            assert await new.execute("EXISTS", KEY) == 1
            assert header((await get(cache, origin))[0], b"x-cache") == b"HIT"
            other = HttpCache(SETTINGS, new)  # a proxy that started on the new Redis
            assert await other.purge(key=KEY) >= 1  # its notice reaches the moved cache

            async def purged_here() -> bool:
                return header((await get(cache, origin))[0], b"x-cache") == b"MISS"

            await wait_until(purged_here)
            nursery.cancel_scope.cancel()
        await new.aclose()
    assert origin.calls == 3


async def test_without_redis_the_memory_tier_still_caches(origin):
    cache = HttpCache(SETTINGS, None)
    async with trio.open_nursery() as nursery:
        await nursery.start(cache.run)
    await get(cache, origin)
    assert header((await get(cache, origin))[0], b"x-cache") == b"HIT"
    assert await cache.purge(prefix="gw:t:") == 1
    assert "hits=1" in repr(cache)


def test_statistics_shape():
    stats = HttpCache(SETTINGS, None, clock=time.time).statistics()
    assert {"hits", "misses", "bypasses", "coalesced", "not_storable", "store"} <= stats.keys()


async def test_admin_purge_by_json_body_or_query(cache, origin, redis_pool):
    for path in ("/img/a.png", "/img/b.png", "/doc/c"):
        await get(cache, origin, path=path)
    admin = request("POST", "/admin/cache/purge", body_bytes=b'{"key": "%s"}' % KEY.encode())
    response = await cache.admin_purge(admin)
    assert response.status == 200
    assert msgspec.json.decode(response.body) == {"deleted": 1, "key": KEY, "prefix": None}
    query = request("POST", "/admin/cache/purge?prefix=gw:t:ko_KR:image:")
    response = await cache.admin_purge(query)
    assert msgspec.json.decode(response.body)["deleted"] == 2
    assert await redis_pool.execute("DBSIZE") == 0


@pytest.mark.parametrize(
    "body",
    [
        b"{}",
        b'{"key": "gw:t:a", "prefix": "gw:t:"}',
        b'{"prefix": ""}',
        b'{"prefix": "other:"}',
        b"[1]",
        b'{"keys": 1}',
    ],
)
async def test_admin_purge_refuses_bad_orders(cache, body, redis_pool):
    await redis_pool.execute("SET", "unrelated", "1")
    with pytest.raises(ClientError):
        await cache.admin_purge(request("POST", "/admin/cache/purge", body_bytes=body))
    assert await redis_pool.execute("EXISTS", "unrelated") == 1


async def test_admin_purge_without_redis_is_503(redis_server):
    pool = RedisPool(
        RedisSettings(port=redis_server.port, connect_timeout_s=0.3, command_timeout_s=0.3)
    )
    cache = HttpCache(SETTINGS, pool)
    redis_server.kill()
    with pytest.raises(DependencyUnavailable):
        await cache.admin_purge(request("POST", "/admin/cache/purge?prefix=gw:t:"))
    await pool.aclose()


async def test_a_streamed_entry_is_stored_before_the_client_has_its_last_byte(
    cache, origin, redis_pool
):
    """A client that read the whole body and asks again through another proxy must find the
    entry: it is in Redis once the last chunk leaves, not only at the end-of-body read."""
    origin.answer(chunks=[b"ab", b"cd"], headers=[(b"content-length", b"4")])
    body = await streamed(cache, origin)
    assert await body.read() == b"ab"
    assert await redis_pool.execute("EXISTS", KEY) == 0
    assert await body.read() == b"cd"  # the client now has every byte it was promised
    assert await redis_pool.execute("EXISTS", KEY) == 1
    assert await body.read() == b""
    await body.aclose()
    assert cache.statistics()["stored"] == 1 and cache.statistics()["inflight"] == 0
