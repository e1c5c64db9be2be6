"""The per-process cache tier: an LRU bounded in bytes, entries with an expiry time.

Bounded in bytes rather than entries because bodies range from a 200-byte JSON answer to a
megabyte image; a count limit would either waste memory or blow it. One object may take at
most ``max_object_bytes``, so a handful of big bodies cannot flush every small hot entry.

The bytes are what an entry really costs the process, not the length of its body. A stored
response is a dict slot and an LRU node, the key string, a tuple, the `CachedResponse` struct
with three floats, a header list, a tuple and two bytes objects per header, the body, and an
expiry-heap item. Measured with tracemalloc on CPython 3.11 (entries as msgpack decodes them
from Redis, or as h11 delivers them: no bytes object shared between entries): ~576 bytes per
entry plus ~136 per header, on top of the characters themselves (`ENTRY_OVERHEAD_BYTES`,
`HEADER_OVERHEAD_BYTES`; ``tests/proxy/cache/test_memory.py`` re-measures them). The old
estimate (64 + 16 per header) let a 64 MiB tier hold 2-3 times that much: the soak saw RSS
grow 27 MiB while the tier counted 11 MiB.

Expired entries are swept on `put`, the only step that adds memory: an expiry heap of
(expires_at, key) is popped for at most `SWEEP_PER_PUT` expired entries, so the cost is
amortised O(log n) per put and a put never stalls the loop on a backlog, while the sweep
still retires entries faster than puts add them. A timer task would free memory while no
new entries arrive, but then nothing grows either, and it would need its own task, clock
and cancellation; `get` also drops an expired entry it finds. The heap holds items of keys
since replaced, removed or evicted; those are skipped when popped, and the heap is rebuilt
from the live entries once stale items reach half their number (amortised O(1) per put: a
rebuild of n items follows n/2 puts). A stale item costs 64 bytes against an entry's 700
or more, so they add at most ~5 % to the count, 16 bytes on average, included in
`ENTRY_OVERHEAD_BYTES`. The clock is injected (wall-clock seconds, the same one
entries are stamped with), so tests move time by hand.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable

from proxy.cache.keys import is_key_or_variant
from proxy.cache.records import CachedResponse, Stored, VaryIndex

ENTRY_OVERHEAD_BYTES = 576
HEADER_OVERHEAD_BYTES = 136
INDEX_OVERHEAD_BYTES = 480
INDEX_NAME_OVERHEAD_BYTES = 80
SWEEP_PER_PUT = 16
_HEAP_SLACK = 1024


def entry_cost(key: str, value: Stored) -> int:
    """The bytes ``value`` stored under ``key`` costs this process (see the module header)."""
    if isinstance(value, CachedResponse):
        headers = sum(HEADER_OVERHEAD_BYTES + len(n) + len(v) for n, v in value.headers)
        return ENTRY_OVERHEAD_BYTES + len(key) + len(value.body) + headers
    names = sum(INDEX_NAME_OVERHEAD_BYTES + len(n) for n in value.names)
    return INDEX_OVERHEAD_BYTES + len(key) + len(value.generation) + names


class MemoryTier:
    def __init__(
        self, *, max_bytes: int, max_object_bytes: int, clock: Callable[[], float]
    ) -> None:
        self.max_bytes = max_bytes
        self.max_object_bytes = max_object_bytes
        self._clock = clock
        # key -> (value, size, expires_at); most recently used last
        self._entries: OrderedDict[str, tuple[Stored, int, float]] = OrderedDict()
        self._expiry: list[tuple[float, str]] = []
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._expired_on_get = 0
        self._expired_swept = 0
        self._too_large = 0
        self._heap_rebuilds = 0

    def __repr__(self) -> str:
        return (
            f"<MemoryTier entries={len(self._entries)} bytes={self._bytes}/{self.max_bytes} "
            f"hits={self._hits} misses={self._misses} evictions={self._evictions} "
            f"expired={self._expired_on_get + self._expired_swept}>"
        )

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def statistics(self) -> dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self._bytes,
            "max_bytes": self.max_bytes,
            "hits": self._hits,
            "misses": self._misses,
            "evictions": self._evictions,
            "expired": self._expired_on_get + self._expired_swept,
            "expired_on_get": self._expired_on_get,
            "expired_swept": self._expired_swept,
            "too_large": self._too_large,
            "expiry_heap": len(self._expiry),
            "heap_rebuilds": self._heap_rebuilds,
        }

    def get(self, key: str) -> Stored | None:
        found = self._entries.get(key)
        if found is None:
            self._misses += 1
            return None
        value, _, expires_at = found
        if self._clock() >= expires_at:
            self._remove(key)
            self._expired_on_get += 1
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return value

    def put(self, key: str, value: Stored, expires_at: float) -> bool:
        """Store ``value`` until ``expires_at``; False when it is too large to keep."""
        now = self._clock()
        self._sweep(now)
        size = entry_cost(key, value)
        self._remove(key)
        if size > self.max_object_bytes or size > self.max_bytes:
            self._too_large += 1
            return False
        if expires_at <= now:
            return False
        self._entries[key] = (value, size, expires_at)
        self._bytes += size
        self._push_expiry(expires_at, key)
        while self._bytes > self.max_bytes:
            _key, (_, cold_size, _) = self._entries.popitem(last=False)
            self._bytes -= cold_size
            self._evictions += 1
        return True

    def _push_expiry(self, expires_at: float, key: str) -> None:
        heap = self._expiry
        if 2 * len(heap) > 3 * len(self._entries) + _HEAP_SLACK:
            heap[:] = [(exp, k) for k, (_, _, exp) in self._entries.items()]
            heapq.heapify(heap)
            self._heap_rebuilds += 1
        heapq.heappush(heap, (expires_at, key))

    def _sweep(self, now: float) -> None:
        heap, entries = self._expiry, self._entries
        for _ in range(SWEEP_PER_PUT):
            if not heap or heap[0][0] > now:
                return
            expires_at, key = heapq.heappop(heap)
            found = entries.get(key)
            if found is not None and found[2] == expires_at:
                self._remove(key)
                self._expired_swept += 1

    def _remove(self, key: str) -> bool:
        found = self._entries.pop(key, None)
        if found is None:
            return False
        self._bytes -= found[1]
        return True

    def discard(self, *, key: str | None = None, prefix: str | None = None) -> int:
        """Drop ``key`` with its Vary variants, or every key starting with ``prefix``.

        Every unsafe request sends a key discard to every proxy, so one costs O(1) unless
        ``key`` held a Vary index here: only then are the entries scanned for its variants
        (variants of an index this process no longer holds are unreachable and expire)."""
        if key is not None:
            found = self._entries.get(key)
            if found is None or not isinstance(found[0], VaryIndex):
                return int(self._remove(key))
            doomed = [k for k in self._entries if is_key_or_variant(k, key)]
        elif prefix is not None:
            doomed = [k for k in self._entries if k.startswith(prefix)]
        else:
            raise ValueError("discard() needs a key or a prefix")
        for k in doomed:
            self._remove(k)
        return len(doomed)

    def clear(self) -> None:
        self._entries.clear()
        self._expiry.clear()
        self._bytes = 0
