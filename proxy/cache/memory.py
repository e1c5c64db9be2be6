"""The per-process cache tier: an LRU bounded in bytes, entries with an expiry time.

Bounded in bytes rather than entries because bodies range from a 200-byte JSON answer to a
megabyte image; a count limit would either waste memory or blow it. Sizes are the body and
headers plus a flat per-entry overhead (`policy.CachedResponse.size`), an estimate that is
good enough to keep the process near ``max_bytes``. One object may take at most
``max_object_bytes``, so a handful of big bodies cannot flush every small hot entry.

Expired entries are dropped when looked up or when they reach the cold end; there is no
sweeper task. The clock is injected (wall-clock seconds, the same one entries are stamped
with), so tests move time by hand.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from proxy.cache.keys import is_key_or_variant
from proxy.cache.policy import Stored


class MemoryTier:
    def __init__(
        self, *, max_bytes: int, max_object_bytes: int, clock: Callable[[], float]
    ) -> None:
        self.max_bytes = max_bytes
        self.max_object_bytes = max_object_bytes
        self._clock = clock
        # key -> (value, size, expires_at); most recently used last
        self._entries: OrderedDict[str, tuple[Stored, int, float]] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = 0
        self._expired = 0
        self._too_large = 0

    def __repr__(self) -> str:
        return (
            f"<MemoryTier entries={len(self._entries)} bytes={self._bytes}/{self.max_bytes} "
            f"hits={self._hits} misses={self._misses} evictions={self._evictions}>"
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
            "expired": self._expired,
            "too_large": self._too_large,
        }

    def get(self, key: str) -> Stored | None:
        found = self._entries.get(key)
        if found is None:
            self._misses += 1
            return None
        value, _, expires_at = found
        if self._clock() >= expires_at:
            self._remove(key)
            self._expired += 1
            self._misses += 1
            return None
        self._entries.move_to_end(key)
        self._hits += 1
        return value

    def put(self, key: str, value: Stored, expires_at: float) -> bool:
        """Store ``value`` until ``expires_at``; False when it is too large to keep."""
        size = value.size() + len(key)
        self._remove(key)
        if size > self.max_object_bytes or size > self.max_bytes:
            self._too_large += 1
            return False
        if expires_at <= self._clock():
            return False
        self._entries[key] = (value, size, expires_at)
        self._bytes += size
        while self._bytes > self.max_bytes:
            _key, (_, cold_size, _) = self._entries.popitem(last=False)
            self._bytes -= cold_size
            self._evictions += 1
        return True

    def _remove(self, key: str) -> bool:
        found = self._entries.pop(key, None)
        if found is None:
            return False
        self._bytes -= found[1]
        return True

    def discard(self, *, key: str | None = None, prefix: str | None = None) -> int:
        """Drop ``key`` with its Vary variants, or every key starting with ``prefix``."""
        if key is not None:
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
        self._bytes = 0
