"""`httpio.rate_store` on a real redis-server: four pools (four proxies) sharing one limit
count it once, the script survives a SCRIPT FLUSH (NOSCRIPT -> EVAL), and a dead Redis is
a fast `RedisUnavailable`. Leased (a burst large enough, `httpio.rate_lease`): the count
stays the fleet's, concurrent requests for a key share one round trip, and an expired
lease's unspent tokens go back to the fleet.

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


async def test_leased_decisions_share_round_trips_and_stay_within_the_count(
    redis_server: RedisProcess,
) -> None:
    """Burst 2,000 over 4 proxies: leases of 5. 2,400 attempts from 4 pools x 5 tasks let
    the burst through, plus the rate over the time elapsed, less at most what the 4 proxies
    hold unspent (4 leases); fewer round trips than decisions."""
    pools = [
        RedisPool(RedisSettings(port=redis_server.port, command_timeout_s=5.0)) for _ in range(4)
    ]
    buckets = [
        FleetBuckets(p, "t:lease:", rate_per_s=1.0, burst=2000, fleet_proxies=4) for p in pools
    ]
    assert buckets[0].lease == 5
    allowed = 0

    async def client(b: FleetBuckets) -> None:
        nonlocal allowed
        for _ in range(120):
            decision = await b.take("k")
            allowed += decision.allowed

    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(client, buckets[i % 4])
    elapsed = time.monotonic() - started
    assert 2000 - 4 * 5 <= allowed <= 2000 + int(elapsed) + 1
    trips = sum(b.round_trips for b in buckets)
    assert trips < 2400 * 0.6, trips  # a refusal is remembered too: most cost no round trip
    for p in pools:
        await p.aclose()


async def test_an_expired_lease_sends_its_tokens_back(redis_server: RedisProcess) -> None:
    now = [0.0]
    pool = RedisPool(RedisSettings(port=redis_server.port, command_timeout_s=5.0))
    one = FleetBuckets(pool, "t:back:", rate_per_s=0.001, burst=400, clock=lambda: now[0])
    other = FleetBuckets(pool, "t:back:", rate_per_s=0.001, burst=400)  # another proxy
    assert one.lease == 4
    assert (await one.take("k")).allowed  # took 4, spent 1
    assert one.round_trips == 1 and len(one.leases) == 1
    taken = 0
    for _ in range(400):
        taken += (await other.take("k")).allowed
    assert taken == 396  # the 3 held by `one` are out of the fleet's count
    now[0] = 1.0  # `one`'s lease expired: its next decision sends the 3 back and takes them
    assert (await one.take("k")).allowed
    assert one.leases.refunded == 3 and one.round_trips == 2
    assert sum([(await one.take("k")).allowed for _ in range(3)]) == 2
    await pool.aclose()


async def test_a_hot_key_grows_its_lease_and_the_fleet_count_stays_exact(
    redis_server: RedisProcess,
) -> None:
    """One key asked 5,000 times in 0.5 s of this proxy's clock: leases of 64, 128, ...
    up to the cap (1 % of the burst), so far fewer round trips than 5,000 / 64, and every
    token this proxy spent or holds is in Redis's count (another proxy gets the rest)."""
    now = [0.0]
    pool = RedisPool(RedisSettings(port=redis_server.port, command_timeout_s=5.0))
    hot = FleetBuckets(pool, "t:hot:", rate_per_s=0.001, burst=100_000, clock=lambda: now[0])
    assert (hot.lease, hot.lease_cap) == (64, 1000)
    for _ in range(5000):
        assert (await hot.take("k")).allowed
        now[0] += 0.0001
    # 64 + 128 + 256 + 512, then 5 x 1,000: 5,960 taken from Redis, 960 of them held here
    assert hot.round_trips == 9, hot.statistics()
    held = hot.leases.spend("k", now[0])  # what this proxy sees: the fleet's and its own
    assert held is not None and held.remaining == 100_000 - 5001
    other = FleetBuckets(pool, "t:hot:", rate_per_s=0.001, burst=100_000)
    assert (await other.take("k")).remaining == 100_000 - 5960 - 1
    await pool.aclose()


async def test_concurrent_requests_for_one_key_share_one_round_trip(
    redis_server: RedisProcess,
) -> None:
    pool = RedisPool(RedisSettings(port=redis_server.port, command_timeout_s=5.0))
    b = FleetBuckets(pool, "t:crowd:", rate_per_s=1000.0, burst=100_000)
    assert b.lease == 64
    decisions = []

    async def one() -> None:
        decisions.append((await b.take("k")).allowed)

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(one)
    assert decisions == [True] * 50
    assert b.round_trips == 1
    await pool.aclose()


async def test_a_hot_key_topped_up_never_waits_and_the_fleet_count_stays_exact(
    redis_server: RedisProcess,
) -> None:
    """As a proxy's limit spends: a lease down to a quarter is topped up by the request that
    left it so (`FleetBuckets.top_up_due`), so after the first request none asks Redis for
    its own decision; every token spent or held is in Redis's count."""
    now = [0.0]
    pool = RedisPool(RedisSettings(port=redis_server.port, command_timeout_s=5.0))
    hot = FleetBuckets(pool, "t:top:", rate_per_s=0.001, burst=100_000, clock=lambda: now[0])
    waited = 0
    for _ in range(5000):
        decision = hot.spend("k")
        if decision is None:
            waited += 1
            decision = await hot.take("k")
        else:
            want = hot.top_up_due("k")
            if want:
                await hot.top_up("k", want)
        assert decision.allowed
        now[0] += 0.0001
    assert waited == 1, hot.statistics()
    stats = hot.statistics()
    assert hot.leases.top_ups == hot.round_trips - 1 and hot.round_trips < 20, stats
    held = hot.spend("k")  # what this proxy sees: the fleet's and its own
    assert held is not None and held.remaining == 100_000 - 5001
    rest = 0
    while hot.spend("k") is not None:  # what `hot` still holds, spent
        rest += 1
    assert 0 < rest <= hot.lease_cap
    other = FleetBuckets(pool, "t:top:", rate_per_s=0.001, burst=100_000)
    assert (await other.take("k")).remaining == 100_000 - (5001 + rest) - 1
    await pool.aclose()


async def test_a_top_up_that_fails_raises_nothing_and_the_lease_is_still_spent() -> None:
    now = [0.0]
    with held_port() as port:  # nothing answers there
        pool = RedisPool(RedisSettings(port=port, command_timeout_s=0.2))
        b = FleetBuckets(pool, "t:gone:", rate_per_s=1000.0, burst=100_000, clock=lambda: now[0])
        b.leases.granted("k", 0.0, tokens=10, remaining=1000, reset_s=1.0, size=64)
        now[0] = 0.2  # not spent fast: topped up to its size, not grown
        assert b.top_up_due("k") == 54
        await b.top_up("k", 54)  # Redis is unreachable: no error for the request
        assert b.top_up_due("k") == 0  # not asked again for this lease
        assert sum(b.spend("k") is not None for _ in range(10)) == 10
        await pool.aclose()
