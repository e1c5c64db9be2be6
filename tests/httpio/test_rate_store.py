"""`httpio.rate_store` on a real redis-server: four pools (four proxies) sharing one limit
count it once, the script survives a SCRIPT FLUSH (NOSCRIPT -> EVAL), and a dead Redis is
a fast `RedisUnavailable`.

The shared-limit test does not depend on timing: at 1 request/s with a burst of 100, 400
attempts from 4 pools allow the burst plus at most one request per second elapsed; N pools
that each counted alone would let 400 through, a read-then-write race more than 100."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import trio

from httpio.rate_store import FleetBuckets
from httpio.redis_client import RedisPool, RedisSettings, RedisUnavailable
from tests.support.ports import held_port
from tests.support.redisproc import RedisProcess, running_redis


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    with running_redis() as proc:
        yield proc


async def test_four_proxies_share_one_count(redis_server: RedisProcess) -> None:
    pools = [
        RedisPool(RedisSettings(port=redis_server.port, command_timeout_s=2.0)) for _ in range(4)
    ]
    buckets = [FleetBuckets(p, "t:rl:", rate_per_s=1.0, burst=100) for p in pools]
    allowed = 0

    async def client(b: FleetBuckets) -> None:
        nonlocal allowed
        for _ in range(20):
            decision = await b.take("k")  # not `allowed += await ...`: that reads first
            allowed += decision.allowed

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for i in range(20):  # 20 connections, 5 per proxy, 400 attempts in all
            nursery.start_soon(client, buckets[i % 4])
    elapsed = time.monotonic() - started
    assert 100 <= allowed <= 100 + int(elapsed) + 1
    for p in pools:
        await p.aclose()


async def test_noscript_falls_back_to_eval(redis_server: RedisProcess) -> None:
    pool = RedisPool(RedisSettings(port=redis_server.port, command_timeout_s=2.0))
    b = FleetBuckets(pool, "t:ns:", rate_per_s=1.0, burst=2)
    assert (await b.take("k")).allowed
    await pool.execute("SCRIPT", "FLUSH")
    second = await b.take("k")
    assert second.allowed and second.remaining == 0
    refused = await b.take("k")
    assert not refused.allowed and 0 < refused.retry_after_s <= 1.0
    assert b.reloads >= 1
    await pool.aclose()


async def test_a_dead_redis_is_a_fast_unavailable() -> None:
    with held_port() as port:
        pool = RedisPool(RedisSettings(port=port, connect_timeout_s=0.2, command_timeout_s=0.3))
        b = FleetBuckets(pool, "t:x:", rate_per_s=1.0, burst=1)
        with pytest.raises(RedisUnavailable):
            await b.take("k")
        await pool.aclose()
