from __future__ import annotations

import time

import pytest
import structlog
import trio

from httpio.breaker import BreakerState, CircuitBreaker
from httpio.errors import DependencyUnavailable
from httpio.redis_client import RedisPool, RedisSettings
from proxy.cache.memory import MemoryTier
from proxy.cache.records import CachedResponse, VaryIndex, decode_stored, encode_stored
from proxy.cache.store import TieredStore, escape_glob
from tests.support.polling import wait_until

NS = "gw:test"


def make_store(redis, clock=time.time, failures=2, open_s=60.0) -> TieredStore:
    memory = MemoryTier(max_bytes=1 << 20, max_object_bytes=1 << 19, clock=clock)
    breaker = CircuitBreaker("cache-redis", failures=failures, open_s=open_s)
    return TieredStore(memory, redis, breaker, namespace=NS, clock=clock)


def entry(now: float, ttl_s: float = 60.0, body: bytes = b"body") -> CachedResponse:
    return CachedResponse(200, [(b"content-type", b"text/plain")], body, now, 0.0, ttl_s)


def item(key: str, value):
    return (key, value, encode_stored(value))


async def test_save_writes_both_tiers_and_a_second_proxy_fills_memory_from_redis(redis_pool):
    first, second = make_store(redis_pool), make_store(redis_pool)
    value = entry(time.time())
    assert await first.save([item(f"{NS}:r:s:/a", value)])
    assert f"{NS}:r:s:/a" in first.memory
    assert 59_000 < await redis_pool.execute("PTTL", f"{NS}:r:s:/a") <= 60_000

    loaded = await second.load(f"{NS}:r:s:/a")
    assert (loaded.value, loaded.tier, loaded.degraded) == (value, "redis", "")
    loaded = await second.load(f"{NS}:r:s:/a")
    assert loaded.tier == "memory"
    assert second.statistics()["redis_hits"] == 1


async def test_redis_expires_entries_by_itself(redis_pool):
    store = make_store(redis_pool)
    assert await store.save([item(f"{NS}:r:s:/short", entry(time.time(), ttl_s=0.3))])

    async def gone() -> bool:
        return bool(await redis_pool.execute("EXISTS", f"{NS}:r:s:/short") == 0)

    await wait_until(gone)
    assert (await make_store(redis_pool).load(f"{NS}:r:s:/short")).value is None


async def test_stale_or_foreign_values_are_misses(redis_pool, clock):
    store = make_store(redis_pool, clock=clock)
    await redis_pool.execute("SET", f"{NS}:r:s:/junk", b"\xc1 not ours")
    assert (await store.load(f"{NS}:r:s:/junk")).value is None
    assert store.statistics()["undecodable"] == 1
    # an entry already past its lifetime is neither written nor kept
    assert not await store.save([item(f"{NS}:r:s:/old", entry(clock.now - 100, ttl_s=60))])
    assert await redis_pool.execute("EXISTS", f"{NS}:r:s:/old") == 0


async def test_without_redis_the_memory_tier_works_alone(clock):
    store = make_store(None, clock=clock)
    assert await store.save([item("k", entry(clock.now))])
    loaded = await store.load("k")
    assert (loaded.tier, loaded.degraded) == ("memory", "")
    assert (await store.load("other")).degraded == ""


async def test_breaker_opens_on_failures_logs_once_and_closes_when_redis_is_back(
    redis_server, clock
):
    pool = RedisPool(
        RedisSettings(port=redis_server.port, connect_timeout_s=0.3, command_timeout_s=0.3)
    )
    store = make_store(pool, clock=clock, failures=2, open_s=5.0)
    redis_server.kill()
    with structlog.testing.capture_logs() as logs:
        for _ in range(5):
            loaded = await store.load(f"{NS}:r:s:/a")
            assert loaded.value is None and loaded.degraded
        assert not await store.save([item(f"{NS}:r:s:/a", entry(clock.now))])
        assert f"{NS}:r:s:/a" not in store.memory  # tiers do not drift apart
    assert store.breaker.state is BreakerState.OPEN
    stats = store.statistics()
    assert (stats["redis_failures"], stats["redis_skipped"]) == (2, 4)
    assert [e["state"] for e in logs if e["event"] == "cache_redis_breaker"] == ["open"]

    redis_server.restart()
    clock.now += 5.0
    with structlog.testing.capture_logs() as logs:
        assert (await store.load(f"{NS}:r:s:/a")).degraded == ""  # the probe
    assert store.breaker.statistics()["state"] == "closed"
    assert [e["state"] for e in logs if e["event"] == "cache_redis_breaker"] == [
        "half_open",
        "closed",
    ]
    await pool.aclose()


async def test_purge_key_and_variants_and_prefix_reach_every_proxy(redis_pool):
    here, there = make_store(redis_pool), make_store(redis_pool)
    now = time.time()
    index = VaryIndex(("accept",), "g1", now + 60)
    keys = [f"{NS}:kr:img:/a", f"{NS}:kr:img:/a|v=g1:0", f"{NS}:kr:img:/a|v=g1:1"]
    await here.save([item(keys[0], index), item(keys[1], entry(now)), item(keys[2], entry(now))])
    await here.save([item(f"{NS}:kr:img:/ab", entry(now)), item(f"{NS}:kr:vid:/a", entry(now))])
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: there.run_subscriber(retry_s=0.05, task_status=task_status)
        )
        for key in (*keys, f"{NS}:kr:img:/ab", f"{NS}:kr:vid:/a"):
            assert (await there.load(key)).value is not None  # filled from redis

        assert await here.purge(key=keys[0]) == 3
        assert await redis_pool.execute("EXISTS", f"{NS}:kr:img:/ab") == 1

        async def dropped_there() -> bool:
            return not any(k in there.memory for k in keys)

        await wait_until(dropped_there)
        assert f"{NS}:kr:img:/ab" in there.memory

        assert await here.purge(prefix=f"{NS}:kr:") == 2

        async def all_dropped_there() -> bool:
            return len(there.memory) == 0

        await wait_until(all_dropped_there)
        assert await redis_pool.execute("DBSIZE") == 0
        assert there.statistics()["purge_notices"] == 2
        nursery.cancel_scope.cancel()


async def test_purge_prefix_is_literal_in_the_match_pattern(redis_pool):
    store = make_store(redis_pool)
    await store.save(
        [item(f"{NS}:r:s:/a*b", entry(time.time())), item(f"{NS}:r:s:/axb", entry(time.time()))]
    )
    assert await store.purge(prefix=f"{NS}:r:s:/a*") == 1
    assert await redis_pool.execute("EXISTS", f"{NS}:r:s:/axb") == 1
    assert escape_glob("a*b?[c]\\") == "a\\*b\\?\\[c\\]\\\\"


async def test_purge_without_redis_is_refused_loudly(redis_server):
    pool = RedisPool(
        RedisSettings(port=redis_server.port, connect_timeout_s=0.3, command_timeout_s=0.3)
    )
    store = make_store(pool)
    await store.save([item(f"{NS}:r:s:/a", entry(time.time()))])
    redis_server.kill()
    with pytest.raises(DependencyUnavailable, match="purge"):
        await store.purge(prefix=f"{NS}:r:")
    assert f"{NS}:r:s:/a" not in store.memory  # local copy is gone regardless
    with pytest.raises(ValueError):
        await store.purge()
    await pool.aclose()


async def test_invalidate_deletes_and_notifies(redis_pool):
    here, there = make_store(redis_pool), make_store(redis_pool)
    await here.save([item(f"{NS}:r:s:/doc", entry(time.time()))])
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: there.run_subscriber(retry_s=0.05, task_status=task_status)
        )
        assert (await there.load(f"{NS}:r:s:/doc")).tier == "redis"
        await here.invalidate(f"{NS}:r:s:/doc")
        assert await redis_pool.execute("EXISTS", f"{NS}:r:s:/doc") == 0

        async def dropped() -> bool:
            return f"{NS}:r:s:/doc" not in there.memory

        await wait_until(dropped)
        nursery.cancel_scope.cancel()


async def test_subscriber_resubscribes_and_clears_memory_after_an_outage(redis_server, redis_pool):
    store = make_store(redis_pool)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: store.run_subscriber(retry_s=0.05, task_status=task_status)
        )
        assert store.subscribed
        await store.save([item(f"{NS}:r:s:/a", entry(time.time()))])
        redis_server.kill()

        async def unsubscribed() -> bool:
            return not store.subscribed

        await wait_until(unsubscribed)
        store.memory.put("stale", entry(time.time()), time.time() + 60)  # purges may be missed now
        redis_server.restart()

        async def resubscribed() -> bool:
            return store.subscribed

        await wait_until(resubscribed)
        assert "stale" not in store.memory
        nursery.cancel_scope.cancel()


def test_values_in_redis_are_plain_msgpack():
    value = entry(1.0)
    assert decode_stored(encode_stored(value)) == value
    assert "memory=0" in repr(make_store(None))
