from __future__ import annotations

import pytest

from proxy.cache.memory import MemoryTier, entry_cost
from proxy.cache.records import CachedResponse, VaryIndex
from tests.support.clock import FakeClock


def entry(body: bytes = b"x" * 100) -> CachedResponse:
    return CachedResponse(200, [(b"content-type", b"text/plain")], body, 1000.0, 0.0, 60.0)


def tier(max_bytes: int = 10_000, max_object_bytes: int = 5_000, clock=None) -> MemoryTier:
    return MemoryTier(
        max_bytes=max_bytes, max_object_bytes=max_object_bytes, clock=clock or FakeClock(1000.0)
    )


def test_put_get_and_expiry_with_an_injected_clock():
    clock = FakeClock(1000.0)
    memory = tier(clock=clock)
    assert memory.put("k", entry(), expires_at=1030.0)
    assert memory.get("k") == entry()
    clock.now = 1029.9
    assert memory.get("k") is not None
    clock.now = 1030.0
    assert memory.get("k") is None
    stats = memory.statistics()
    assert (stats["hits"], stats["misses"], stats["expired"], stats["entries"]) == (2, 1, 1, 0)
    assert stats["bytes"] == 0


def test_evicts_least_recently_used_by_bytes():
    size = entry_cost("a", entry())
    memory = tier(max_bytes=3 * size)
    for key in "abc":
        assert memory.put(key, entry(), expires_at=2000.0)
    assert memory.get("a") is not None  # a is now the most recent; b is the coldest
    assert memory.put("d", entry(), expires_at=2000.0)
    assert "b" not in memory
    assert all(k in memory for k in "acd")
    assert memory.statistics()["bytes"] == 3 * size
    assert memory.statistics()["evictions"] == 1


def test_one_big_entry_evicts_as_many_small_ones_as_it_needs():
    small = entry(b"s")
    cap = 8 * entry_cost("k0", small)
    memory = tier(max_bytes=cap, max_object_bytes=cap)
    for i in range(8):
        memory.put(f"k{i}", small, expires_at=2000.0)
    assert len(memory) == 8
    assert memory.put("big", entry(b"B" * (cap // 2)), expires_at=2000.0)
    assert "big" in memory and len(memory) < 8
    assert memory.statistics()["bytes"] <= cap


def test_objects_over_the_per_object_limit_are_refused():
    memory = tier(max_object_bytes=entry_cost("k", entry(b"x" * 500)))
    assert not memory.put("big", entry(b"x" * 600), expires_at=2000.0)
    assert memory.statistics()["too_large"] == 1
    # a refused replacement also drops the old value: never serve the superseded one
    assert memory.put("k", entry(), expires_at=2000.0)
    assert not memory.put("k", entry(b"x" * 600), expires_at=2000.0)
    assert "k" not in memory


def test_replacing_a_key_keeps_the_byte_count_right():
    memory = tier()
    memory.put("k", entry(b"a" * 10), expires_at=2000.0)
    memory.put("k", entry(b"a" * 300), expires_at=2000.0)
    assert memory.statistics()["bytes"] == entry_cost("k", entry(b"a" * 300))


def test_discard_key_with_its_variants_or_by_prefix():
    memory = tier()
    index = VaryIndex(("accept",), "g", 2000.0)
    memory.put("gw:r:s:/a", index, expires_at=2000.0)
    memory.put("gw:r:s:/a|v=g:1", entry(), expires_at=2000.0)
    memory.put("gw:r:s:/ab", entry(), expires_at=2000.0)
    memory.put("gw:r:t:/a", entry(), expires_at=2000.0)
    assert memory.discard(key="gw:r:s:/a") == 2
    assert "gw:r:s:/ab" in memory
    assert memory.discard(prefix="gw:r:") == 2
    assert len(memory) == 0 and memory.statistics()["bytes"] == 0
    with pytest.raises(ValueError):
        memory.discard()


def test_repr_tells_the_state():
    memory = tier()
    memory.put("k", entry(), expires_at=2000.0)
    assert repr(memory).startswith("<MemoryTier entries=1 bytes=")
