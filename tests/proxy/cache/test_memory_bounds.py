"""The memory tier stays within its bytes: expired entries leave without being looked up,
and the bytes it counts are the bytes the process spends (measured with tracemalloc)."""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Callable

import pytest

from proxy.cache.memory import SWEEP_PER_PUT, MemoryTier
from proxy.cache.records import CachedResponse, Stored, VaryIndex, decode_stored, encode_stored

MiB = 1 << 20


def as_from_redis(value: Stored) -> Stored:
    """What the tier holds in production: objects msgpack (or h11) made, sharing nothing."""
    decoded = decode_stored(encode_stored(value))
    assert decoded is not None
    return decoded


def response(i: int, headers: int = 5, body: int = 300) -> Stored:
    fields = [
        (b"content-type", b"application/json"),
        (b"date", b"Mon, 01 Jan 2024 00:00:00 GMT"),
        (b"etag", b'"%08d"' % i),
        (b"x-request-id", b"5f0c3a1b9e27%010x" % i),
        (b"via", b"1.1 proxy-6000"),
    ][:headers]
    fields += [(b"x-extra-%d" % j, b"v" * 24) for j in range(headers - len(fields))]
    return as_from_redis(CachedResponse(200, fields, b"%08d" % i + b"x" * body, 0.0, 0.0, 30.0))


def key(i: int) -> str:
    return f"gw:v2:ko_KR:video://localhost:9000/echo?u={i:08d}"


def tier(clock, max_bytes: int = 64 * MiB) -> MemoryTier:
    return MemoryTier(max_bytes=max_bytes, max_object_bytes=max_bytes, clock=clock)


def test_expired_entries_leave_without_being_looked_up(clock):
    memory = tier(clock)
    for i in range(1000):
        assert memory.put(key(i), response(i), expires_at=clock.now + 30)
    clock.now += 31  # every one of them is now expired; nobody asks for them again
    for i in range(1000, 1000 + 1000 // SWEEP_PER_PUT + 1):
        memory.put(key(i), response(i), expires_at=clock.now + 30)
    assert len(memory) == 1000 // SWEEP_PER_PUT + 1
    stats = memory.statistics()
    assert stats["expired_swept"] == 1000
    assert stats["entries"] == 1000 // SWEEP_PER_PUT + 1
    assert stats["evictions"] == 0


def test_a_put_sweeps_a_bounded_number_of_entries(clock):
    memory = tier(clock)
    for i in range(10 * SWEEP_PER_PUT):
        memory.put(key(i), response(i), expires_at=clock.now + 1)
    clock.now += 2
    memory.put("fresh", response(0), expires_at=clock.now + 30)
    assert memory.statistics()["expired_swept"] == SWEEP_PER_PUT


def test_replaced_and_evicted_keys_do_not_grow_the_expiry_heap(clock):
    memory = tier(clock, max_bytes=50_000)
    for i in range(20_000):
        memory.put("hot", response(i), expires_at=clock.now + 3600)  # refreshed over and over
        memory.put(key(i), response(i), expires_at=clock.now + 3600)  # evicted by the cap
    stats = memory.statistics()
    assert 2 * stats["expiry_heap"] <= 3 * stats["entries"] + 1024 + 2
    assert stats["heap_rebuilds"] > 0
    assert memory.get("hot") is not None


def traced_per_entry(
    make: Callable[[int], tuple[str, Stored]], n: int, clock
) -> tuple[float, float]:
    """(bytes tracemalloc saw per entry, bytes the tier counted per entry)."""
    memory = tier(clock, max_bytes=1 << 40)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            memory.put(*make(i), expires_at=clock.now + 60)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(memory) == n
    return grown / n, memory.statistics()["bytes"] / n


@pytest.mark.parametrize(
    ("headers", "body"),
    [(0, 10), (5, 10), (5, 300), (12, 2000), (5, 20_000), (30, 100)],
)
def test_counted_bytes_are_what_an_entry_costs(clock, headers, body):
    n = 3000 if body < 10_000 else 300
    traced, counted = traced_per_entry(lambda i: (key(i), response(i, headers, body)), n, clock)
    assert 0.9 * traced <= counted <= 1.25 * traced, (traced, counted)


@pytest.mark.parametrize("names", [(), ("accept",), ("accept", "accept-language", "x-tenant")])
def test_counted_bytes_of_a_vary_index_are_what_it_costs(clock, names):
    def make(i: int) -> tuple[str, Stored]:
        return key(i), as_from_redis(VaryIndex(names, f"{i:08x}", 60.0))

    traced, counted = traced_per_entry(make, 3000, clock)
    assert 0.9 * traced <= counted <= 1.25 * traced, (traced, counted)


URLS = 20_000


@pytest.mark.parametrize("ttl_s", [1.0, 3600.0], ids=["expiring", "long-lived"])
def test_always_new_urls_level_off_under_the_cap(clock, ttl_s):
    """The soak's workload in miniature: 20,000 URLs never asked twice, at 1,000 a second
    of the injected clock, into a 4 MiB tier (which holds about 2,400 of them). Short-lived
    entries leave by the sweep before the cap is reached; long-lived ones are evicted at the
    cap. Either way the tier's real memory stops growing, and never passes its cap."""
    cap = 4 * MiB
    memory = tier(clock, max_bytes=cap)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        samples = []
        for i in range(URLS):
            memory.put(key(i), response(i), expires_at=clock.now + ttl_s)
            clock.now += 0.001
            if i % 4_000 == 3_999:
                gc.collect()
                samples.append(tracemalloc.get_traced_memory()[0] - base)
    finally:
        tracemalloc.stop()
    # real memory: within 15 % of the cap, and flat once the cap (or the TTL) is reached:
    # the last 12,000 URLs (five tiers' worth) moved it by less than 5 % of the cap
    assert max(samples) <= 1.15 * cap, samples
    assert abs(samples[-1] - samples[1]) <= 0.05 * cap, samples
    stats = memory.statistics()
    assert stats["bytes"] <= cap
    assert stats["expired_swept"] + stats["evictions"] == URLS - stats["entries"]
    if ttl_s == 1.0:  # about one second's worth of entries alive, nothing evicted
        assert stats["evictions"] == 0 and stats["entries"] <= 1000 + SWEEP_PER_PUT
