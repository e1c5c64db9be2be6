"""A circuit breaker for an optional dependency (the response cache's Redis), sans-IO.

When a dependency is down or slow, every request that still tries it pays the full timeout
before falling back. The breaker makes that cost a few requests instead of all of them:
after ``failures`` consecutive failures it opens and callers skip the dependency for
``open_s`` seconds; then one probe is let through (half-open). A good probe closes the
breaker, a bad one reopens it for another ``open_s``. This is the classic three-state
breaker (Nygard, *Release It!*, "Circuit Breaker").

The states and moves live in `_NEXT`, one table, in the style of ``h11/_state.py``. The
breaker does no I/O and reads no clock: callers pass ``now`` (any monotonic-ish seconds).
Every state change is returned as a `BreakerTransition`, so the caller can log it exactly
once; the breaker itself logs nothing.

A probe whose caller was cancelled never reports back. Rather than stay half-open forever,
another probe is allowed once ``open_s`` has passed since the last one started.

"Consecutive" means one after another, not side by side. When the machine stalls (two busy
cores, a GC pause, a burst of connects) every call in flight misses its deadline at the
same moment: that is one observation that the dependency was slow, not fifty. So a caller
notes the breaker's `epoch` when its call starts and passes it to `record_failure`; a
failure of a call that was already in flight when an earlier failure was counted is the
same incident and does not count again (nor can it reopen a half-open breaker: only the
probe decides). A dependency that is really down or hung fails the calls that start after
each failure too, so it still trips after ``failures`` of them; a refused connection does
that in microseconds, a hung one in ``failures`` timeouts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Signal(enum.Enum):
    SUCCESS = "success"
    FAILURE = "failure"
    TRIP = "trip"  # a failure that reaches the threshold
    COOLDOWN_ELAPSED = "cooldown_elapsed"


_C, _O, _H = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN

# (state, signal) -> next state. A pair not listed here cannot happen.
_NEXT: dict[tuple[BreakerState, Signal], BreakerState] = {
    (_C, Signal.SUCCESS): _C,
    (_C, Signal.FAILURE): _C,
    (_C, Signal.TRIP): _O,
    # Late results of calls that started before the breaker opened change nothing.
    (_O, Signal.SUCCESS): _O,
    (_O, Signal.FAILURE): _O,
    (_O, Signal.TRIP): _O,
    (_O, Signal.COOLDOWN_ELAPSED): _H,
    (_H, Signal.SUCCESS): _C,
    (_H, Signal.FAILURE): _O,
    (_H, Signal.TRIP): _O,
}


@dataclass(frozen=True, slots=True)
class BreakerTransition:
    name: str
    previous: BreakerState
    state: BreakerState
    at: float
    reason: str


class CircuitBreaker:
    """``allow(now)`` before calling the dependency; then ``record_success(now)`` or
    ``record_failure(now, reason)``. Each returns the transition it caused, if any."""

    def __init__(self, name: str, *, failures: int = 3, open_s: float = 5.0) -> None:
        if failures < 1:
            raise ValueError("failures must be >= 1")
        if open_s <= 0:
            raise ValueError("open_s must be > 0")
        self.name = name
        self.failures = failures
        self.open_s = open_s
        self._state = BreakerState.CLOSED
        self._consecutive_failures = 0
        self._epoch = 0
        self._overlapping = 0
        self._opened_at = 0.0
        self._probe_started_at: float | None = None
        self._times_opened = 0
        self._rejected = 0
        self._last_reason = ""

    @property
    def state(self) -> BreakerState:
        return self._state

    def __repr__(self) -> str:
        return (
            f"<CircuitBreaker {self.name} {self._state.value} "
            f"failures={self._consecutive_failures}/{self.failures} "
            f"opened={self._times_opened} rejected={self._rejected}>"
        )

    def statistics(self) -> dict[str, object]:
        return {
            "name": self.name,
            "state": self._state.value,
            "consecutive_failures": self._consecutive_failures,
            "overlapping_failures": self._overlapping,
            "times_opened": self._times_opened,
            "rejected": self._rejected,
            "last_failure": self._last_reason,
        }

    def _move(self, signal: Signal, now: float, reason: str) -> BreakerTransition | None:
        previous = self._state
        state = _NEXT[(previous, signal)]
        if state is previous:
            return None
        self._state = state
        if state is BreakerState.OPEN:
            self._opened_at = now
            self._times_opened += 1
            self._probe_started_at = None
        elif state is BreakerState.CLOSED:
            self._consecutive_failures = 0
            self._probe_started_at = None
        return BreakerTransition(self.name, previous, state, now, reason)

    def allow(self, now: float) -> tuple[bool, BreakerTransition | None]:
        """May the caller use the dependency now? In half-open state only one caller (the
        probe) is let through at a time."""
        transition = None
        if self._state is BreakerState.CLOSED:
            return True, None
        if self._state is BreakerState.OPEN:
            if now - self._opened_at < self.open_s:
                self._rejected += 1
                return False, None
            transition = self._move(Signal.COOLDOWN_ELAPSED, now, "cool-down elapsed")
        # half-open
        probe = self._probe_started_at
        if probe is None or now - probe >= self.open_s:
            self._probe_started_at = now
            return True, transition
        self._rejected += 1
        return False, transition

    def record_success(self, now: float) -> BreakerTransition | None:
        if self._state is BreakerState.CLOSED:
            self._consecutive_failures = 0
        return self._move(Signal.SUCCESS, now, "probe succeeded")

    @property
    def epoch(self) -> int:
        """How many failures have been counted; note it when a call starts."""
        return self._epoch

    def record_failure(
        self, now: float, reason: str = "", *, epoch: int | None = None
    ) -> BreakerTransition | None:
        """``epoch``: the breaker's `epoch` when the failed call started. When a failure was
        counted since, this one overlapped it and is not counted (see the module header);
        None counts it whatever happened meanwhile."""
        self._last_reason = reason
        if epoch is not None and epoch < self._epoch:
            self._overlapping += 1
            return None
        self._epoch += 1
        self._consecutive_failures += 1
        tripped = self._consecutive_failures >= self.failures
        return self._move(Signal.TRIP if tripped else Signal.FAILURE, now, reason)
