"""A fleet-wide GCRA (`httpio.gcra`) in Redis: one Lua script per decision.

Traefik's and Kong's users report that N replicas let N times the traffic through (each counts
alone) or count twice (read, then write, racing). Here every proxy of every region runs the
same script on the same key: Redis runs a script atomically, so the read of the TAT, the
decision and the write are one step, and the clock is Redis's own (``TIME``), so proxies whose
clocks disagree still share one schedule. The script is sent once by its SHA1 (``EVALSHA``);
a Redis that does not know it (restarted, flushed: ``NOSCRIPT``) gets it whole (``EVAL``),
which also loads it for the next call.

Times inside the script are integer microseconds (exact in a Lua double up to 2^53 us, some
285 years); the key expires when its TAT has passed, as an absent key means the same.
The script answers ``{allowed, wait_us, reset_us}``; `httpio.gcra.decision_from_reply` reads it.
A decision waits at most the pool's ``command_timeout_s`` (a connect included): a limiter must
not add more than that to a request; the caller decides what a failure means.
"""

from __future__ import annotations

import hashlib

import trio

from httpio.gcra import Decision, decision_from_reply
from httpio.redis_client import RedisPool, RedisReplyError, RedisUnavailable

GCRA_SCRIPT = b"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - interval * burst
if now < allow_at then
  return {0, math.ceil(allow_at - now), tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, 0, new_tat - now}
"""
GCRA_SHA = hashlib.sha1(GCRA_SCRIPT).hexdigest()


class FleetBuckets:
    """One limit shared by every proxy through Redis; keys live under ``prefix``."""

    __slots__ = ("burst", "interval_s", "pool", "prefix", "reloads")

    def __init__(self, pool: RedisPool, prefix: str, rate_per_s: float, burst: int) -> None:
        self.pool = pool
        self.prefix = prefix
        self.interval_s = 1.0 / rate_per_s
        self.burst = burst
        self.reloads = 0  # NOSCRIPT answers: times the script was sent whole

    def __repr__(self) -> str:
        return f"<FleetBuckets {self.prefix} rate={1 / self.interval_s:g}/s burst={self.burst}>"

    def statistics(self) -> dict[str, object]:
        return {
            "prefix": self.prefix,
            "rate_per_s": 1 / self.interval_s,
            "burst": self.burst,
            "script_reloads": self.reloads,
        }

    async def take(self, key: str) -> Decision:
        """Raises `httpio.redis_client.RedisError` when Redis does not answer in time."""
        timeout = self.pool.settings.command_timeout_s
        try:
            with trio.fail_after(timeout):
                return await self._take(key)
        except trio.TooSlowError:
            raise RedisUnavailable(f"no rate limit decision from redis within {timeout}s") from None

    async def _take(self, key: str) -> Decision:
        interval_us = max(1, round(self.interval_s * 1e6))
        args = (self.prefix + key, interval_us, self.burst)
        try:
            reply = await self.pool.execute("EVALSHA", GCRA_SHA, 1, *args)
        except RedisReplyError as err:
            if not str(err).startswith("NOSCRIPT"):
                raise
            self.reloads += 1
            reply = await self.pool.execute("EVAL", GCRA_SCRIPT, 1, *args)
        allowed, wait_us, reset_us = reply
        return decision_from_reply(allowed, wait_us, reset_us, self.interval_s, self.burst)
