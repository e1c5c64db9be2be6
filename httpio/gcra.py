"""GCRA, the generic cell rate algorithm: one timestamp per key, decided without I/O.

A limit of ``rate_per_s`` with ``burst`` is the virtual-scheduling form of RFC 2697-style token
buckets (ATM Forum TM 4.1, as redis-cell and Stripe's limiter use it): each key keeps only its
"theoretical arrival time" (TAT). A request at ``now`` is allowed when ``TAT - now`` is at most
``(burst - 1) * interval``, and then moves TAT one ``interval = 1 / rate_per_s`` on. One number
per key, no refill loop, and the same arithmetic runs in `httpio.rate_store`'s Redis script,
so a local and a fleet-wide limit mean the same thing.

`LocalBuckets` keeps the TATs of one process in a dict. An entry whose TAT has passed is the
same as no entry, so when the dict grows past ``max_keys`` the passed ones are swept (bounded
memory under a flood of distinct client addresses); if none have passed, the oldest half goes,
which at worst forgives those keys part of their debt.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from httpio.gcra_decision import Decision


def decide(tat: float, now: float, interval_s: float, burst: int) -> tuple[Decision, float]:
    """The decision for one request and the key's new TAT (unchanged when refused)."""
    base = tat if tat > now else now
    new_tat = base + interval_s
    allow_at = new_tat - interval_s * burst
    if allow_at - now > 1e-9:  # not float noise: 0.1 * 5 is not exactly 0.5
        reset = base - now
        return Decision(False, 0, allow_at - now, reset), tat
    reset = new_tat - now
    remaining = int((interval_s * burst - reset) / interval_s + 1e-9)
    return Decision(True, max(remaining, 0), 0.0, reset), new_tat


def decision_from_reply(
    allowed: int, wait_us: int, reset_us: int, interval_s: float, burst: int
) -> Decision:
    """What the Redis script's three integers mean (see `httpio.rate_store`)."""
    reset = reset_us / 1e6
    if not allowed:
        return Decision(False, 0, wait_us / 1e6, reset)
    remaining = int((interval_s * burst - reset) / interval_s + 1e-9)
    return Decision(True, max(remaining, 0), 0.0, reset)


def retry_after_header(seconds: float) -> int:
    """RFC 9110 10.2.3 takes whole seconds: rounded up, and never 0 (a 0 invites a retry
    storm at once, which is what the refusal was for)."""
    return max(1, math.ceil(seconds - 1e-9))


class LocalBuckets:
    """The TATs of one limit in this process (see the module header)."""

    __slots__ = ("_clock", "_tats", "burst", "interval_s", "max_keys", "refused")

    def __init__(
        self, rate_per_s: float, burst: int, *, clock: Callable[[], float], max_keys: int = 100_000
    ) -> None:
        self.interval_s = 1.0 / rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self.refused = 0
        self._clock = clock
        self._tats: dict[str, float] = {}

    def __repr__(self) -> str:
        return (
            f"<LocalBuckets rate={1 / self.interval_s:g}/s burst={self.burst} "
            f"keys={len(self._tats)} refused={self.refused}>"
        )

    def statistics(self) -> dict[str, object]:
        return {
            "rate_per_s": 1 / self.interval_s,
            "burst": self.burst,
            "keys": len(self._tats),
            "refused": self.refused,
        }

    def resize(self, rate_per_s: float, burst: int) -> None:
        """A reload changed the limit: keys keep their TATs, the new limit applies at once."""
        self.interval_s = 1.0 / rate_per_s
        self.burst = burst

    def take(self, key: str) -> Decision:
        now = self._clock()
        tats = self._tats
        decision, tat = decide(tats.get(key, now), now, self.interval_s, self.burst)
        if decision.allowed:
            if len(tats) >= self.max_keys and key not in tats:
                self._sweep(now)
            tats[key] = tat
        else:
            self.refused += 1
        return decision

    def _sweep(self, now: float) -> None:
        tats = self._tats
        passed = [k for k, t in tats.items() if t <= now]
        for k in passed:
            del tats[k]
        if len(tats) >= self.max_keys:
            for k in list(tats)[: len(tats) // 2]:
                del tats[k]
