"""The breaker in front of a real Redis: one stall, one refused connect or one slow command
does not open it; failures one after another do. The stall is ``CLIENT PAUSE`` (Redis
holds every reply, for far longer than the client's timeout), so the rule is tested, not
the machine's speed: every call in flight misses its deadline together however loaded the
machine is. A paused Redis cannot be unpaused (``CLIENT UNPAUSE`` waits too), so a test
that needs it back waits for a PING to be answered."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
import trio

from httpio.breaker import BreakerState, CircuitBreaker
from httpio.redis_client import RedisPool, RedisSettings
from proxy.cache.memory import MemoryTier
from proxy.cache.store import BREAKER_OPEN, REDIS_FAILED, TieredStore
from tests.support.redisproc import RedisProcess
from topology.schema import CacheSettings

NS = "gw:test"
FAILURES = CacheSettings().breaker_failures  # the shipped threshold
TIMEOUT_S = 0.2  # short, so that the test is quick; the rule does not depend on it
PAUSE_MS = 2_000  # ten timeouts: the calls fail while Redis is still paused


@pytest.fixture
async def pool(redis_server: RedisProcess) -> AsyncIterator[RedisPool]:
    pool = RedisPool(
        RedisSettings(
            port=redis_server.port, connect_timeout_s=TIMEOUT_S, command_timeout_s=TIMEOUT_S
        )
    )
    yield pool
    await pool.aclose()


class Admin:
    """A second client, to pause Redis with and to wait for it to answer again."""

    def __init__(self, port: int) -> None:
        self.pool = RedisPool(RedisSettings(port=port, command_timeout_s=PAUSE_MS / 500))

    async def pause(self) -> None:
        await self.pool.execute("CLIENT", "PAUSE", PAUSE_MS)

    async def until_answering(self) -> None:
        assert await self.pool.execute("PING") == b"PONG"


@pytest.fixture
async def admin(redis_server: RedisProcess) -> AsyncIterator[Admin]:
    admin = Admin(redis_server.port)
    yield admin
    if redis_server.process is not None:
        await admin.until_answering()
    await admin.pool.aclose()


def make_store(pool: RedisPool) -> TieredStore:
    memory = MemoryTier(max_bytes=1 << 20, max_object_bytes=1 << 19, clock=time.time)
    breaker = CircuitBreaker("cache-redis", failures=FAILURES, open_s=60.0)
    return TieredStore(memory, pool, breaker, namespace=NS, clock=time.time)


async def test_one_stall_that_fails_every_call_in_flight_does_not_open_it(pool, admin):
    store = make_store(pool)
    await store.load(f"{NS}:warm")  # a pooled connection exists, as in a running proxy
    await admin.pause()
    results: list[str] = []

    async def one(i: int) -> None:
        results.append((await store.load(f"{NS}:k{i}")).degraded)

    async with trio.open_nursery() as nursery:
        for i in range(50):
            nursery.start_soon(one, i)
    assert results == [REDIS_FAILED] * 50  # every one missed its deadline, together
    await admin.until_answering()
    assert store.breaker.state is BreakerState.CLOSED
    stats = store.breaker.statistics()
    assert (stats["consecutive_failures"], stats["overlapping_failures"]) == (1, 49)
    assert (await store.load(f"{NS}:k0")).degraded == ""  # Redis is asked again at once
    assert store.breaker.statistics()["consecutive_failures"] == 0


async def test_one_slow_command_does_not_open_it(pool, admin):
    store = make_store(pool)
    await admin.pause()
    assert (await store.load(f"{NS}:a")).degraded == REDIS_FAILED
    await admin.until_answering()
    assert (await store.load(f"{NS}:a")).degraded == ""
    assert store.breaker.state is BreakerState.CLOSED


async def test_slow_commands_one_after_another_open_it(pool, admin):
    store = make_store(pool)
    await admin.pause()
    seen = [(await store.load(f"{NS}:a")).degraded for _ in range(FAILURES + 2)]
    assert seen == [REDIS_FAILED] * FAILURES + [BREAKER_OPEN] * 2
    assert store.breaker.state is BreakerState.OPEN


async def test_one_refused_connect_does_not_open_it(pool, redis_server):
    store = make_store(pool)
    redis_server.kill()
    assert (await store.load(f"{NS}:a")).degraded == REDIS_FAILED
    redis_server.restart()
    assert (await store.load(f"{NS}:a")).degraded == ""
    assert store.breaker.state is BreakerState.CLOSED


async def test_refused_connects_one_after_another_open_it(pool, redis_server):
    store = make_store(pool)
    redis_server.kill()
    seen = [(await store.load(f"{NS}:a")).degraded for _ in range(FAILURES + 1)]
    assert seen == [REDIS_FAILED] * FAILURES + [BREAKER_OPEN]
    assert store.breaker.state is BreakerState.OPEN
