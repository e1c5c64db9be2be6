"""Sign-in and signup throttles: the arithmetic, with no clock and no storage of its own.

A hostile review sent 60 wrong passwords for one user in 13 s with no slow-down, and 1,000
concurrent sign-ins with made-up names made ~75 % of genuine sign-ins fail. Three limits,
as OWASP's authentication guidance and fail2ban-style lockouts have them:

- **Failures per (username, client address): hard.** ``per_address.free`` failures (5) cost
  nothing; each one after that locks the pair for ``base_s * 2**(n - free)`` seconds, up to
  ``max_s`` (15 min), so guessing from one address falls to ~100 tries a day. The count is
  forgotten ``forget_after_s`` (1 h, longer than the longest lock) after the last failure,
  and a successful sign-in from that address clears it.
- **Failures per username from anywhere: gentle.** The same curve with a higher threshold
  (20) and a short cap (30 s): it slows guessing spread over many addresses, yet a single
  attacker address, locked out by the hard limit long before it reaches 20 failures, never
  locks the real user out from elsewhere, and a distributed one can at worst make the user
  wait 30 s.
- **Signups per client address:** at most ``signups_per_address`` accounts per
  ``signup_window_s`` (a fixed window).

A lock is answered 429 ``too_many_requests`` with ``Retry-After`` in whole seconds, never 0
(RFC 9110 10.2.3; RFC 6585 4). Locked attempts are refused before any scrypt and do not count
as failures, so hammering a locked pair costs the server almost nothing.

The counters must be fleet-wide (four auth servers behind round robin would otherwise give
four times the tries), so `authsvc.store` keeps them in the SQLite file the auth servers
already share: it is there whenever an auth server runs, also one started by hand with only
``--db``, while Redis is optional in the fleet and unknown to the auth server. The write
costs one small transaction per *failed* sign-in, which already cost a ~24 ms scrypt.

The fourth limit is per process and in memory (`ConcurrencyGate`): sign-ins and signups in
progress per client address, ``concurrent_per_address`` (16) at once, a quarter of the queue
of password checks an auth server keeps before it answers 503 (``max_waiting_hashes``, 64).
One client can then never fill that queue, and another client's sign-in waits behind at most
16 of its hashes (~0.2 s at 24 ms each on two cores) instead of behind a thousand; a
benchmark's ``ab -c 20`` from one address, spread over four servers, stays under it.
Counting across processes would need a shared counter that a killed process leaves wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from topology.schema import AuthLimits, FailureRule


@dataclass(frozen=True, slots=True)
class Counter:
    """One stored counter: ``count`` events, the first and the latest at those times."""

    count: int
    first_at: float
    last_at: float


def retry_after(seconds: float) -> int:
    """``Retry-After`` for a wait of ``seconds`` (> 0): whole seconds, rounded up, >= 1."""
    return max(1, math.ceil(seconds))


def _live(counter: Counter | None, rule: FailureRule, now: float) -> Counter | None:
    if counter is None or now - counter.last_at >= rule.forget_after_s:
        return None
    return counter


def locked_for(counter: Counter | None, rule: FailureRule, now: float) -> float:
    """Seconds until another attempt is allowed (0: allowed now)."""
    live = _live(counter, rule, now)
    if live is None:
        return 0.0
    return max(0.0, live.last_at + rule.lockout_s(live.count) - now)


def after_failure(counter: Counter | None, rule: FailureRule, now: float) -> Counter:
    """The counter once one more failure has happened at ``now``."""
    live = _live(counter, rule, now)
    if live is None:
        return Counter(1, now, now)
    return Counter(live.count + 1, live.first_at, now)


def signup_wait(counter: Counter | None, limits: AuthLimits, now: float) -> float:
    """Seconds until this address may sign up again (0: now)."""
    if counter is None or now - counter.first_at >= limits.signup_window_s:
        return 0.0
    if counter.count < limits.signups_per_address:
        return 0.0
    return counter.first_at + limits.signup_window_s - now


def after_signup(counter: Counter | None, limits: AuthLimits, now: float) -> Counter:
    if counter is None or now - counter.first_at >= limits.signup_window_s:
        return Counter(1, now, now)
    return Counter(counter.count + 1, counter.first_at, now)


# -- the keys, one namespace per limit ---------------------------------------------------------
def address_key(username: str, address: str) -> str:
    return f"fail-ua:{address} {username}"


def user_key(username: str) -> str:
    return f"fail-u:{username}"


def signup_key(address: str) -> str:
    return f"signup-a:{address}"


class ConcurrencyGate:
    """Password checks in progress per client address in this process, at most ``limit``."""

    __slots__ = ("_in_flight", "limit", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._in_flight: dict[str, int] = {}
        self.refused = 0

    def try_enter(self, address: str) -> bool:
        n = self._in_flight.get(address, 0)
        if n >= self.limit:
            self.refused += 1
            return False
        self._in_flight[address] = n + 1
        return True

    def leave(self, address: str) -> None:
        n = self._in_flight[address] - 1
        if n:
            self._in_flight[address] = n
        else:
            del self._in_flight[address]

    def statistics(self) -> dict[str, int]:
        return {
            "addresses": len(self._in_flight),
            "in_flight": sum(self._in_flight.values()),
            "limit": self.limit,
            "refused": self.refused,
        }

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<ConcurrencyGate limit={self.limit} in_flight={stats['in_flight']}"
            f" addresses={stats['addresses']} refused={self.refused}>"
        )
