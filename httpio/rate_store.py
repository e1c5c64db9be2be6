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
The script takes ``want`` tokens (a lease, `httpio.rate_lease`: fewer when fewer are left,
none when not one is) after moving the TAT back by ``refund`` unspent ones, and answers
``{granted, wait_us, reset_us}``; `httpio.gcra.decision_from_reply` reads it.
A decision waits at most the pool's ``command_timeout_s`` (a connect included): a limiter must
not add more than that to a request; the caller decides what a failure means.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import trio

from httpio.gcra import decision_from_reply
from httpio.gcra_decision import Decision
from httpio.rate_lease import Leases, lease_cap, lease_size
from httpio.redis_client import RedisError, RedisPool, RedisReplyError, RedisUnavailable, Reply
from httpio.single_flight import SingleFlight

GCRA_SCRIPT = b"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local want = tonumber(ARGV[3])
local refund = tonumber(ARGV[4])
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
if refund > 0 then tat = math.max(now, tat - refund * interval) end
local grant = math.min(want, math.floor(burst - (tat - now) / interval))
if grant < 1 then
  if refund > 0 then
    redis.call('SET', KEYS[1], string.format('%d', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  end
  return {0, math.ceil(tat + interval - interval * burst - now), tat - now}
end
local new_tat = tat + grant * interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {grant, 0, new_tat - now}
"""
GCRA_SHA = hashlib.sha1(GCRA_SCRIPT).hexdigest()


class FleetBuckets:
    """One limit shared by every proxy through Redis; keys live under ``prefix``. With a
    burst large enough (`httpio.rate_lease.lease_size`), decisions are leased: one round trip
    per key takes a few tokens, and concurrent requests for that key wait for it and share
    them (one leader per key at a time, `httpio.single_flight`)."""

    __slots__ = (
        "_clock",
        "_flights",
        "burst",
        "interval_s",
        "lease",
        "lease_cap",
        "leases",
        "pool",
        "prefix",
        "reloads",
        "round_trips",
    )

    def __init__(
        self,
        pool: RedisPool,
        prefix: str,
        rate_per_s: float,
        burst: int,
        *,
        fleet_proxies: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pool = pool
        self.prefix = prefix
        self.interval_s = 1.0 / rate_per_s
        self.burst = burst
        self.lease = lease_size(burst, fleet_proxies)
        self.lease_cap = lease_cap(burst, fleet_proxies)
        self.leases = Leases()
        self.reloads = 0  # NOSCRIPT answers: times the script was sent whole
        self.round_trips = 0
        self._clock = clock
        self._flights: SingleFlight[str, bool] = SingleFlight()

    def __repr__(self) -> str:
        return (
            f"<FleetBuckets {self.prefix} rate={1 / self.interval_s:g}/s burst={self.burst} "
            f"lease={self.lease}>"
        )

    def statistics(self) -> dict[str, object]:
        return {
            "prefix": self.prefix,
            "rate_per_s": 1 / self.interval_s,
            "burst": self.burst,
            "lease": self.lease,
            "lease_cap": self.lease_cap,
            "round_trips": self.round_trips,
            "script_reloads": self.reloads,
            **self.leases.statistics(),
        }

    def resize(self, rate_per_s: float, burst: int, fleet_proxies: int) -> None:
        """A reload changed the limit: what this proxy holds or remembers no longer holds."""
        self.interval_s = 1.0 / rate_per_s
        self.burst = burst
        self.lease = lease_size(burst, fleet_proxies)
        self.lease_cap = lease_cap(burst, fleet_proxies)
        self.leases.clear()

    def spend(self, key: str) -> Decision | None:
        """A decision from what this proxy holds (a lease, a remembered refusal), made
        without I/O or a coroutine; None: `take` must ask Redis."""
        return self.leases.spend(key, self._clock())

    def top_up_due(self, key: str) -> int:
        """After a decision spent from ``key``'s lease: the tokens to ask for now so that the
        lease does not run out under its traffic (0: none due; `httpio.rate_lease`)."""
        if self.lease == 1:
            return 0
        return self.leases.top_up_due(key, self._clock(), self.lease_cap)

    async def top_up(self, key: str, want: int) -> None:
        """Ask for ``want`` more tokens of ``key``'s lease (`top_up_due`). Never raises for
        Redis: the request that asks was decided already, and a lease that was not topped
        up is renewed the usual way when it runs out. Waits at most ``command_timeout_s``."""
        args = (self.prefix + key, max(1, round(self.interval_s * 1e6)), self.burst, want, 0)
        self.round_trips += 1
        with trio.move_on_after(self.pool.settings.command_timeout_s):
            try:
                granted, wait_us, reset_us = await self._script(args)
            except RedisError:
                return
            if granted >= 1:
                decision = decision_from_reply(
                    granted, wait_us, reset_us, self.interval_s, self.burst
                )
                self.leases.topped_up(
                    key, self._clock(), granted, decision.remaining, decision.reset_s
                )

    async def _script(self, args: tuple[str, int, int, int, int]) -> Reply:
        """The script's answer for ``args``, sent by its SHA1, or whole if Redis lost it."""
        try:
            reply = await self.pool.execute("EVALSHA", GCRA_SHA, 1, *args)
        except RedisReplyError as err:
            if not str(err).startswith("NOSCRIPT"):
                raise
            self.reloads += 1
            reply = await self.pool.execute("EVAL", GCRA_SCRIPT, 1, *args)
        return reply

    async def take(self, key: str) -> Decision:
        """Raises `httpio.redis_client.RedisError` when Redis does not answer in time. A
        checkpoint always, as trio's own calls: a caller looping on held decisions must not
        keep the round trips of others from landing (`spend` is the no-I/O path)."""
        decision = self.leases.spend(key, self._clock())
        if decision is not None:
            await trio.lowlevel.checkpoint()
            return decision
        timeout = self.pool.settings.command_timeout_s
        try:
            with trio.fail_after(timeout):
                if self.lease == 1:  # exact: a decision per request, none waits for another
                    return await self._ask(key, 1)
                return await self._take_leased(key)
        except trio.TooSlowError:
            raise RedisUnavailable(f"no rate limit decision from redis within {timeout}s") from None

    async def _take_leased(self, key: str) -> Decision:
        for _ in range(8):  # bounded: a lease smaller than the crowd waiting is shared in turns
            flight = self._flights.join(key)
            if flight is None:
                flight = self._flights.lead(key)
                assert flight is not None  # no checkpoint since join() found none
                try:
                    want = self.leases.want(key, self._clock(), self.lease, self.lease_cap)
                    decision = await self._ask(key, want)
                except Exception as exc:  # the waiters get the same error: one timeout each
                    self._flights.land(key, flight, error=exc)
                    raise
                finally:  # cancelled: the waiters try again, one of them leads
                    self._flights.land(key, flight, result=False)
                return decision
            await flight.wait()
            flight.outcome()
            shared = self.leases.spend(key, self._clock())
            if shared is not None:
                return shared
        return await self._ask(key, 1)

    async def _ask(self, key: str, want: int) -> Decision:
        """One round trip: the decision for this request, and what the lease table keeps."""
        interval_us = max(1, round(self.interval_s * 1e6))
        refund = self.leases.unspent(key, self._clock()) if want > 1 else 0
        args = (self.prefix + key, interval_us, self.burst, want, refund)
        self.round_trips += 1
        granted, wait_us, reset_us = await self._script(args)
        decision = decision_from_reply(granted, wait_us, reset_us, self.interval_s, self.burst)
        now = self._clock()
        if not decision.allowed:
            self.leases.refused(key, now, decision.retry_after_s, decision.reset_s)
        elif granted > 1:
            self.leases.granted(key, now, granted - 1, decision.remaining, decision.reset_s, want)
            return Decision(True, decision.remaining + granted - 1, 0.0, decision.reset_s)
        return decision
