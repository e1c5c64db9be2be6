"""Two cache tiers behind one interface: this process's memory, then the fleet's Redis.

Memory answers most hits without a network round trip; Redis lets every proxy of the fleet
share what one of them fetched, and survives a proxy restart. A value found in Redis fills
the memory tier for the rest of its freshness. Values are msgpack (`policy.encode_stored`),
one Redis string per key written with ``SET key value PX ttl_ms``, so Redis expires them on
its own and a reader never sees an entry past its lifetime.

Redis is optional. Every call goes through a `CircuitBreaker`: after a few failures in a
row (refused, slow, reset) Redis is left alone for ``breaker_open_s``, requests are served
from memory or the backend, and one probe per cool-down finds out when it is back. Breaker
transitions are logged once each, not per request.

Purges must reach every proxy's memory. `purge` deletes in Redis (``SCAN MATCH`` +
``UNLINK``, never ``KEYS``, which blocks Redis for the whole keyspace) and then PUBLISHes
the key or prefix on ``<namespace>:purge``; every proxy runs `run_subscriber` and drops
what matches. While the subscription is down a proxy may miss purges, so on every
(re)subscription it empties its memory tier: a burst of Redis reads is the price of never
serving a purged entry for a whole TTL.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import msgspec
import structlog
import trio

from httpio.breaker import BreakerTransition, CircuitBreaker
from httpio.errors import DependencyUnavailable
from httpio.redis_client import Arg, RedisPool, RedisReplyError, RedisUnavailable
from proxy.cache.memory import MemoryTier
from proxy.cache.records import CachedResponse, PurgeNotice, Stored, decode_stored

log = structlog.get_logger()

SCAN_COUNT = 500


_encode_notice = msgspec.json.Encoder().encode
_decode_notice = msgspec.json.Decoder(PurgeNotice).decode


@dataclass(frozen=True, slots=True)
class Loaded:
    value: Stored | None
    tier: str  # "memory", "redis" or "" when not found
    degraded: str  # why Redis should have been asked but was not, or failed; "" if fine


BREAKER_OPEN = "redis breaker open"
REDIS_FAILED = "redis failed"


def expires_at(value: Stored, now: float) -> float:
    if isinstance(value, CachedResponse):
        return now + value.remaining_s(now)
    return value.expires_at


def escape_glob(text: str) -> str:
    """Make ``text`` literal in a Redis MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class TieredStore:
    def __init__(
        self,
        memory: MemoryTier,
        redis: RedisPool | None,
        breaker: CircuitBreaker,
        *,
        namespace: str,
        clock: Callable[[], float],
    ) -> None:
        self.memory = memory
        self.redis = redis
        self.breaker = breaker
        self.channel = f"{namespace}:purge"
        self._clock = clock
        self.subscribed = False
        self._stats = {
            "redis_hits": 0,
            "redis_misses": 0,
            "redis_writes": 0,
            "redis_skipped": 0,
            "redis_failures": 0,
            "undecodable": 0,
            "purge_notices": 0,
        }

    def __repr__(self) -> str:
        return (
            f"<TieredStore memory={len(self.memory)} breaker={self.breaker.state.value} "
            f"subscribed={self.subscribed}>"
        )

    def statistics(self) -> dict[str, object]:
        return {
            **self._stats,
            "subscribed": self.subscribed,
            "memory": self.memory.statistics(),
            "breaker": self.breaker.statistics(),
            "redis": self.redis.statistics() if self.redis is not None else None,
        }

    # -- redis behind the breaker ------------------------------------------------------------
    def _log(self, transition: BreakerTransition | None) -> None:
        if transition is not None:
            log.warning(
                "cache_redis_breaker",
                breaker=transition.name,
                previous=transition.previous.value,
                state=transition.state.value,
                reason=transition.reason,
            )

    async def _call(self, commands: Sequence[Sequence[Arg]]) -> list[object] | str:
        """Replies (error replies in place), or why Redis was skipped or failed."""
        if self.redis is None:
            return "no redis"
        allowed, transition = self.breaker.allow(self._clock())
        self._log(transition)
        if not allowed:
            self._stats["redis_skipped"] += 1
            return BREAKER_OPEN
        epoch = self.breaker.epoch
        try:
            replies = await self.redis.pipeline(commands, raise_on_error=False)
        except RedisUnavailable as exc:
            self._stats["redis_failures"] += 1
            self._log(self.breaker.record_failure(self._clock(), str(exc), epoch=epoch))
            return REDIS_FAILED
        self._log(self.breaker.record_success(self._clock()))
        for reply in replies:
            if isinstance(reply, RedisReplyError):
                log.error("cache_redis_error_reply", error=str(reply))
        return replies

    # -- reads and writes --------------------------------------------------------------------
    async def load(self, key: str) -> Loaded:
        value = self.memory.get(key)
        if value is not None:
            return Loaded(value, "memory", "")
        if self.redis is None:
            return Loaded(None, "", "")
        replies = await self._call([("GET", key)])
        if isinstance(replies, str):
            return Loaded(None, "", replies)
        raw = replies[0]
        if not isinstance(raw, bytes):
            self._stats["redis_misses"] += 1
            return Loaded(None, "", "")
        value = decode_stored(raw)
        if value is None:
            self._stats["undecodable"] += 1
            return Loaded(None, "", "")
        self._stats["redis_hits"] += 1
        self.memory.put(key, value, expires_at(value, self._clock()))
        return Loaded(value, "redis", "")

    async def save(self, items: Sequence[tuple[str, Stored, bytes]]) -> bool:
        """Store ``(key, value, encoded)`` items in both tiers, Redis in one round trip.
        False when Redis should have taken them but did not: then memory does not either,
        so that the tiers (and the proxies of the fleet) do not drift apart."""
        now = self._clock()
        commands: list[tuple[Arg, ...]] = []
        for key, value, encoded in items:
            ttl_ms = int((expires_at(value, now) - now) * 1000)
            if ttl_ms <= 0:
                return False
            commands.append(("SET", key, encoded, "PX", ttl_ms))
        if self.redis is not None:
            replies = await self._call(commands)
            if isinstance(replies, str) or any(isinstance(r, RedisReplyError) for r in replies):
                return False
            self._stats["redis_writes"] += len(commands)
        for key, value, _ in items:
            self.memory.put(key, value, expires_at(value, now))
        return True

    # -- purge -------------------------------------------------------------------------------
    def drop_local(self, *, key: str | None = None, prefix: str | None = None) -> int:
        return self.memory.discard(key=key, prefix=prefix)

    async def invalidate(self, key: str) -> None:
        """RFC 9111 4.4: an unsafe request that succeeded invalidates its target URI. Deleting
        the key (entry or Vary index) is enough: variants hang off the index's generation."""
        self.drop_local(key=key)
        if self.redis is not None:
            notice = _encode_notice(PurgeNotice(key=key))
            await self._call([("UNLINK", key), ("PUBLISH", self.channel, notice)])

    async def purge(self, *, key: str | None = None, prefix: str | None = None) -> int:
        """Delete ``key`` (and its variants) or every key under ``prefix``, in Redis and in
        every proxy's memory. Returns how many Redis keys were deleted (memory entries when
        there is no Redis). Raises `DependencyUnavailable` when Redis cannot be reached:
        an operator must know that the purge did not happen."""
        if (key is None) == (prefix is None):
            raise ValueError("purge() needs exactly one of key or prefix")
        local = self.drop_local(key=key, prefix=prefix)
        if self.redis is None:
            return local
        try:
            deleted = 0
            if key is not None:
                deleted += await self.redis.execute("UNLINK", key)
                pattern = escape_glob(key) + "|v=*"
            else:
                assert prefix is not None
                pattern = escape_glob(prefix) + "*"
            cursor = b"0"
            while True:
                cursor, found = await self.redis.execute(
                    "SCAN", cursor, "MATCH", pattern, "COUNT", SCAN_COUNT
                )
                if found:
                    deleted += await self.redis.execute("UNLINK", *found)
                if cursor == b"0":
                    break
            await self.redis.execute(
                "PUBLISH", self.channel, _encode_notice(PurgeNotice(key=key, prefix=prefix))
            )
        except RedisUnavailable as exc:
            raise DependencyUnavailable(f"cache purge did not reach redis: {exc}") from exc
        log.info("cache_purged", key=key, prefix=prefix, deleted=deleted)
        return deleted

    def apply_notice(self, data: bytes) -> int:
        try:
            notice = _decode_notice(data)
        except msgspec.DecodeError:
            log.warning("cache_purge_notice_invalid", data=data[:200])
            return 0
        self._stats["purge_notices"] += 1
        if notice.key is None and notice.prefix is None:
            return 0
        return self.drop_local(key=notice.key, prefix=notice.prefix)

    async def run_subscriber(
        self, *, retry_s: float, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Apply purge notices from the fleet until cancelled; resubscribe after failures.
        Reports started after the first attempt, subscribed or not."""
        if self.redis is None:
            task_status.started()
            return
        started = False
        while True:
            try:
                async with self.redis.subscribe(self.channel) as subscription:
                    self.memory.clear()
                    self.subscribed = True
                    log.info("cache_purge_subscribed", channel=self.channel)
                    if not started:
                        started = True
                        task_status.started()
                    async for _, data in subscription:
                        self.apply_notice(data)
            except RedisUnavailable as exc:
                if self.subscribed:
                    log.warning("cache_purge_unsubscribed", error=str(exc))
            finally:
                self.subscribed = False
            if not started:
                started = True
                task_status.started()
            await trio.sleep(retry_s)
