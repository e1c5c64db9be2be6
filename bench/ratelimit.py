"""``make ratelimit``: accuracy of a fleet-wide limit and the cost of one decision.

Accuracy: four Redis pools (four proxies' worth of connections, ``--connections`` tasks in
all) drive one fleet-wide GCRA (`httpio.rate_store`) as fast as they can for ``--seconds``;
the allowed count is compared with ``rate * duration + burst``, the duration taken from the
first request sent to the last answered. The same for a local limit (`httpio.gcra`, one
process) on the wall clock. The fleet run twice: with the burst given (50: too small to
lease, one decision per request) and with a burst of 4,000 over 4 proxies, which leases 10
tokens per round trip (`httpio.rate_lease`). Cost: a local decision (`LocalBuckets.take`,
timeit) and a fleet decision, exact (one EVALSHA round trip) and leased, sequential and as
throughput under concurrency, against a real redis-server started for the run.
"""

from __future__ import annotations

import argparse
import os
import time
import timeit

import trio

from httpio.gcra import LocalBuckets
from httpio.rate_store import FleetBuckets
from httpio.redis_client import RedisPool, RedisSettings
from tests.support.redisproc import running_redis


async def fleet_accuracy(
    port: int, rate: float, burst: int, seconds: float, connections: int, fleet_proxies: int = 1
) -> dict[str, float]:
    pools = [RedisPool(RedisSettings(port=port, command_timeout_s=2.0)) for _ in range(4)]
    prefix = f"bench:rl:{time.time_ns()}:"  # one key for all four: the point of the run
    buckets = [FleetBuckets(p, prefix, rate, burst, fleet_proxies=fleet_proxies) for p in pools]
    allowed = sent = 0
    first = last = 0.0
    stop_at = time.monotonic() + seconds

    async def client(b: FleetBuckets) -> None:
        nonlocal allowed, sent, first, last
        while time.monotonic() < stop_at:
            if not first:
                first = time.monotonic()
            decision = await b.take("client")
            sent += 1
            allowed += decision.allowed
            last = time.monotonic()

    async with trio.open_nursery() as nursery:
        for i in range(connections):
            nursery.start_soon(client, buckets[i % 4])
    for p in pools:
        await p.aclose()
    duration = last - first
    expected = rate * duration + burst
    return {
        "sent": sent,
        "allowed": allowed,
        "expected": expected,
        "duration_s": duration,
        "error_pct": (allowed - expected) / expected * 100,
        "round_trips": sum(b.round_trips for b in buckets),
        "lease": buckets[0].lease,
    }


def local_accuracy(rate: float, burst: int, seconds: float) -> dict[str, float]:
    b = LocalBuckets(rate, burst, clock=time.monotonic)
    allowed = sent = 0
    first = time.monotonic()
    while time.monotonic() - first < seconds:
        allowed += b.take("client").allowed
        sent += 1
    duration = time.monotonic() - first
    expected = rate * duration + burst
    return {
        "sent": sent,
        "allowed": allowed,
        "expected": expected,
        "duration_s": duration,
        "error_pct": (allowed - expected) / expected * 100,
    }


async def fleet_cost(port: int, n: int, concurrency: int, burst: int) -> tuple[float, float]:
    """Burst 100 at 10^6/s never refuses and is too small to lease: a round trip each;
    burst 10^6 leases 64 per round trip."""
    pool = RedisPool(RedisSettings(port=port, command_timeout_s=2.0))
    b = FleetBuckets(pool, f"bench:cost:{burst}:", 1e6, burst)
    await b.take("warm")
    t0 = time.perf_counter()
    for i in range(n):
        await b.take(f"k{i % 100}")
    sequential_us = (time.perf_counter() - t0) / n * 1e6

    async def worker(count: int) -> None:
        for i in range(count):
            await b.take(f"k{i % 100}")

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(worker, n // concurrency)
    per_s = (n // concurrency * concurrency) / (time.perf_counter() - t0)
    await pool.aclose()
    return sequential_us, per_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit")
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    with running_redis() as redis:
        fleet = trio.run(
            fleet_accuracy, redis.port, args.rate, args.burst, args.seconds, args.connections
        )
        leased = trio.run(
            fleet_accuracy, redis.port, args.rate, 4000, args.seconds, args.connections, 4
        )
        sequential_us, per_s = trio.run(fleet_cost, redis.port, 5000, 16, 100)
        leased_us, leased_per_s = trio.run(fleet_cost, redis.port, 5000, 16, 10**6)
    local = local_accuracy(args.rate, args.burst, min(args.seconds, 2.0))
    b = LocalBuckets(1e6, 10**6, clock=time.monotonic)
    local_us = min(timeit.repeat(lambda: b.take("k"), number=100_000, repeat=3)) / 100_000 * 1e6
    rows = (
        (f"fleet burst {args.burst} (exact)", fleet),
        ("fleet burst 4000 (leased)", leased),
        ("local", local),
    )
    for name, r in rows:
        trips = f"  round trips {r['round_trips']:.0f}" if "round_trips" in r else ""
        print(
            f"{name:26} sent {r['sent']:7.0f}  allowed {r['allowed']:6.0f}  expected {r['expected']:8.1f}"
            f"  ({r['error_pct']:+.2f} %)  over {r['duration_s']:.2f} s{trips}"
        )
    print(
        f"cost per decision: local {local_us:.2f} us; fleet exact {sequential_us:.0f} us "
        f"sequential, {per_s:.0f} decisions/s with 16 in flight; fleet leased (64) "
        f"{leased_us:.1f} us sequential, {leased_per_s:.0f} decisions/s with 16 in flight"
    )
    la = os.getloadavg()
    print(
        f"rate {args.rate:g}/s burst {args.burst}; load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
