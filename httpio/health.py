"""Per-instance health of one service: a sans-IO state machine whose transitions sit in ONE table.

The original re-checked an instance on every pick by forking ``nc``; one slow probe stalled a
request and one lost packet took an instance out. Here two independent signals feed one state
machine per instance, as Envoy (active health checking + outlier detection) and HAProxy
(``rise``/``fall``) do:

- *active* checks (``CHECK_PASSED``/``CHECK_FAILED``) from ``proxy.health_checker``: ``fall``
  consecutive failures take an instance out until ``rise`` consecutive successes bring it back,
  so one flapping probe neither ejects nor restores it (HAProxy defaults are rise=2, fall=3);
- *passive* outcomes of real requests (``REQUEST_OK``/``REQUEST_FAILED``): ``consecutive_failures``
  connect failures, resets, timeouts or 5xx eject the instance for a back-off of
  ``base_ejection_s * ejection_count`` capped at ``max_ejection_s`` (Envoy's outlier detection).
  The count decays by one per ``max_ejection_s`` spent healthy, so an instance that fails again
  soon after returning stays out longer, and one that behaved for a while starts over.
  At most ``max_ejection_percent`` of the instances are ejected this way at once, but always at
  least one (Envoy's rule): a bad deploy that fails everything must not empty the service.

States: ``HEALTHY`` and ``SUSPECT`` (serving, with a failure streak in progress) take traffic;
``EJECTED`` does not; ``PROBING`` (back-off over) takes exactly one trial request at a time, and
that trial or the next active check decides between ``HEALTHY`` and a longer ejection.
Time never flows by itself: the injected ``clock`` is read on each event and in ``poll()``,
which turns expired back-offs into ``BACKOFF_EXPIRED`` events. Every method returns the
transitions it made so the caller can log them (decide here, act there).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec
from msgspec import Meta

Seconds = Annotated[float, Meta(gt=0)]


class HealthSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    path: str = "/health"
    interval_s: Seconds | None = None  # None -> config.json MSA_healthcheck_interval
    timeout_s: Seconds = 1.0
    rise: Annotated[int, Meta(ge=1)] = 2
    fall: Annotated[int, Meta(ge=1)] = 3
    consecutive_failures: Annotated[int, Meta(ge=1)] = 5
    base_ejection_s: Seconds = 10.0
    max_ejection_s: Seconds = 300.0
    max_ejection_percent: Annotated[int, Meta(ge=0, le=100)] = 50
    panic: bool = True  # no instance usable -> spread over all of them rather than answer 503

    def effective_interval_s(self, default_s: float) -> float:
        return default_s if self.interval_s is None else self.interval_s


class State(enum.Enum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"
    EJECTED = "ejected"
    PROBING = "probing"


class Event(enum.Enum):
    CHECK_PASSED = "check_passed"
    CHECK_FAILED = "check_failed"
    REQUEST_OK = "request_ok"
    REQUEST_FAILED = "request_failed"
    BACKOFF_EXPIRED = "backoff_expired"


class Outcome(enum.Enum):
    """How one proxied request ended, as the proxy reports it to the pool."""

    SUCCESS = "success"  # any response below 500 (4xx is the client's fault, not the instance's)
    SERVER_ERROR = "server_error"  # 5xx
    CONNECT_FAILURE = "connect_failure"
    RESET = "reset"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"  # the client went away: says nothing about the instance

    @property
    def event(self) -> Event | None:
        if self is Outcome.CANCELLED:
            return None
        return Event.REQUEST_OK if self is Outcome.SUCCESS else Event.REQUEST_FAILED


@dataclass(frozen=True, slots=True)
class Transition:
    key: str
    old: State
    new: State
    event: Event
    ejected_for_s: float | None = None  # set when a timed ejection starts


class _Record:
    __slots__ = (
        "check_failures",
        "check_successes",
        "ejected_until",
        "ejection_count",
        "ejections",
        "recovered_at",
        "request_failures",
        "state",
        "trial_started",
    )

    def __init__(self) -> None:
        self.state = State.HEALTHY
        self.check_failures = 0
        self.check_successes = 0
        self.request_failures = 0
        self.ejection_count = 0  # back-off multiplier, decays while healthy
        self.ejections = 0  # lifetime total, for statistics
        self.ejected_until: float | None = None  # None while EJECTED: only checks restore it
        self.recovered_at = 0.0
        self.trial_started: float | None = None


Guard = Callable[["HealthTracker", _Record], bool]
Action = Callable[["HealthTracker", _Record], None]


def _always(t: HealthTracker, r: _Record) -> bool:
    return True


def _streaks_clear(t: HealthTracker, r: _Record) -> bool:
    return r.check_failures == 0 and r.request_failures == 0


def _fall_reached(t: HealthTracker, r: _Record) -> bool:
    return r.check_failures >= t.settings.fall


def _rise_reached_while_down(t: HealthTracker, r: _Record) -> bool:
    return r.ejected_until is None and r.check_successes >= t.settings.rise


def _outlier(t: HealthTracker, r: _Record) -> bool:
    return r.request_failures >= t.settings.consecutive_failures and t.may_eject()


def _eject_timed(t: HealthTracker, r: _Record) -> None:
    s, now = t.settings, t.clock()
    if r.state in (State.HEALTHY, State.SUSPECT):
        r.ejection_count = max(
            0, r.ejection_count - int((now - r.recovered_at) // s.max_ejection_s)
        )
    r.ejection_count += 1
    r.ejections += 1
    r.ejected_until = now + min(s.base_ejection_s * r.ejection_count, s.max_ejection_s)
    if t.next_expiry is None or r.ejected_until < t.next_expiry:
        t.next_expiry = r.ejected_until


def _eject_until_checks_pass(t: HealthTracker, r: _Record) -> None:
    r.ejections += 1
    r.ejected_until = None
    r.check_successes = 0


def _recover(t: HealthTracker, r: _Record) -> None:
    r.check_failures = r.check_successes = r.request_failures = 0
    r.ejected_until = None
    r.recovered_at = t.clock()


H, S, E, P = State.HEALTHY, State.SUSPECT, State.EJECTED, State.PROBING
Rule = tuple[Guard, State, Action | None]

# (state, event) -> alternatives tried in order; the first guard that holds wins. A missing
# pair means "no change". Counters are updated (in `_count`) before the table is consulted.
TRANSITIONS: Final[dict[tuple[State, Event], tuple[Rule, ...]]] = {
    (H, Event.CHECK_FAILED): ((_fall_reached, E, _eject_until_checks_pass), (_always, S, None)),
    (H, Event.REQUEST_FAILED): ((_outlier, E, _eject_timed), (_always, S, None)),
    (S, Event.CHECK_FAILED): ((_fall_reached, E, _eject_until_checks_pass),),
    (S, Event.REQUEST_FAILED): ((_outlier, E, _eject_timed),),
    (S, Event.CHECK_PASSED): ((_streaks_clear, H, None),),
    (S, Event.REQUEST_OK): ((_streaks_clear, H, None),),
    (E, Event.CHECK_PASSED): ((_rise_reached_while_down, H, _recover),),
    (E, Event.BACKOFF_EXPIRED): ((_always, P, None),),
    (P, Event.CHECK_PASSED): ((_always, H, _recover),),
    (P, Event.REQUEST_OK): ((_always, H, _recover),),
    (P, Event.CHECK_FAILED): (
        (_fall_reached, E, _eject_until_checks_pass),
        (_always, E, _eject_timed),
    ),
    (P, Event.REQUEST_FAILED): ((_always, E, _eject_timed),),
}


def _count(r: _Record, event: Event) -> None:
    if event is Event.CHECK_PASSED:
        r.check_successes += 1
        r.check_failures = 0
    elif event is Event.CHECK_FAILED:
        r.check_failures += 1
        r.check_successes = 0
    elif event is Event.REQUEST_OK:
        r.request_failures = 0
    elif event is Event.REQUEST_FAILED:
        r.request_failures += 1


class HealthTracker:
    """Health of every instance of one service, keyed by a string (the endpoint URL)."""

    def __init__(
        self, settings: HealthSettings, clock: Callable[[], float], keys: Iterable[str] = ()
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._records: dict[str, _Record] = {}
        self.next_expiry: float | None = None  # earliest back-off end, so poll() is O(1) mostly
        for key in keys:
            self.add(key)

    def add(self, key: str) -> None:
        if key not in self._records:
            record = _Record()
            record.recovered_at = self.clock()
            self._records[key] = record

    def remove(self, key: str) -> None:
        self._records.pop(key, None)

    def keys(self) -> list[str]:
        return list(self._records)

    def state(self, key: str) -> State:
        return self._records[key].state

    def usable(self, key: str) -> bool:
        r = self._records[key]
        if r.state is H or r.state is S:
            return True
        # A trial whose caller never reported back (a bug, or a lost task) must not keep the
        # instance out forever: after base_ejection_s another trial may go.
        return r.state is P and (
            r.trial_started is None
            or self.clock() - r.trial_started >= self.settings.base_ejection_s
        )

    def may_eject(self) -> bool:
        """Envoy's rule: stay within max_ejection_percent, but one may always go."""
        out = sum(
            1
            for r in self._records.values()
            if r.state is P or (r.state is E and r.ejected_until is not None)
        )
        return out == 0 or (out + 1) * 100 <= self.settings.max_ejection_percent * len(
            self._records
        )

    def start_trial(self, key: str) -> None:
        """A request is about to go to `key`; if it is probing, it is the one trial."""
        r = self._records.get(key)
        if r is not None and r.state is P:
            r.trial_started = self.clock()

    def observe(self, key: str, event: Event) -> Transition | None:
        r = self._records.get(key)
        if r is None:  # removed by a config reload while the request was in flight
            return None
        if event is Event.REQUEST_OK or event is Event.REQUEST_FAILED:
            r.trial_started = None
        _count(r, event)
        for guard, new, action in TRANSITIONS.get((r.state, event), ()):
            if guard(self, r):
                if action is not None:
                    action(self, r)
                old, r.state = r.state, new
                if old is new:
                    return None
                r.trial_started = None
                timed = new is E and r.ejected_until is not None
                return Transition(
                    key, old, new, event, (r.ejected_until or 0) - self.clock() if timed else None
                )
        return None

    def record_check(self, key: str, passed: bool) -> Transition | None:
        self.poll()
        return self.observe(key, Event.CHECK_PASSED if passed else Event.CHECK_FAILED)

    def record_outcome(self, key: str, outcome: Outcome) -> Transition | None:
        event = outcome.event
        if event is None:
            r = self._records.get(key)
            if r is not None:
                r.trial_started = None
            return None
        self.poll()
        return self.observe(key, event)

    def poll(self) -> list[Transition]:
        """Turn every back-off that has run out into PROBING."""
        now = self.clock()
        if self.next_expiry is None or now < self.next_expiry:
            return []
        self.next_expiry = None
        expired = [
            key
            for key, r in self._records.items()
            if r.state is E and r.ejected_until is not None and r.ejected_until <= now
        ]
        for r in self._records.values():
            if r.state is E and r.ejected_until is not None and r.ejected_until > now:
                if self.next_expiry is None or r.ejected_until < self.next_expiry:
                    self.next_expiry = r.ejected_until
        return [t for key in expired if (t := self.observe(key, Event.BACKOFF_EXPIRED))]

    def counts(self) -> dict[str, int]:
        counts = {s.value: 0 for s in State}
        for r in self._records.values():
            counts[r.state.value] += 1
        return counts

    def statistics(self) -> dict[str, dict[str, object]]:
        now = self.clock()
        return {
            key: {
                "state": r.state.value,
                "ejections": r.ejections,
                "ejected_for_s": None
                if r.ejected_until is None
                else max(0.0, r.ejected_until - now),
                "check_failures": r.check_failures,
                "check_successes": r.check_successes,
                "request_failures": r.request_failures,
            }
            for key, r in self._records.items()
        }

    def __repr__(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in self.counts().items() if v)
        return f"<HealthTracker {counts or 'empty'}>"
