"""Per-instance health of one service: a sans-IO state machine whose transitions sit in ONE table.

The original re-checked an instance on every pick by forking ``nc``; one slow probe stalled a
request and one lost packet took an instance out. Here two independent signals feed one state
machine per instance, as Envoy (active health checking + outlier detection) and HAProxy
(``rise``/``fall``) do:

- *active* checks (``CHECK_PASSED``/``CHECK_FAILED``) from ``httpio.health_check``: ``fall``
  consecutive failures take an instance out until ``rise`` consecutive successes bring it back,
  so one flapping probe neither ejects nor restores it (HAProxy defaults are rise=2, fall=3);
- *passive* outcomes of real requests (``REQUEST_OK``/``REQUEST_FAILED``), Envoy's outlier
  detection with its two consecutive-failure rules: ``consecutive_failures`` (Envoy's
  ``consecutive_5xx``, default 5: any 5xx answer or no answer at all) and
  ``consecutive_gateway_failures`` (Envoy's ``consecutive_gateway_failure``: connect failures,
  resets, timeouts and 502/503/504 answers). Envoy ships the gateway rule with enforcement
  off; here it is on, at 3 (HAProxy's ``fall``), because "did not answer" three times in a row
  is the only evidence a hung instance gives: a ``kill -STOP``ped backend accepts connections
  (the kernel completes the handshake) and never answers, so only per-try timeouts reveal it,
  and with the proxy's 2 s per-try timeout it is out ~2 s after it stopped under load.
  An ejection lasts ``base_ejection_s * ejection_count`` capped at ``max_ejection_s``
  (nginx's ``fail_timeout`` is 10 s, Envoy's base 30 s; 10 s because a restarted backend is
  back in ~1 s). The count decays by one per ``max_ejection_s`` spent healthy, so an instance
  that fails again soon after returning stays out longer, and one that behaved for a while
  starts over. At most ``max_ejection_percent`` of the instances are ejected this way at once,
  but always at least one (Envoy's rule; 50 % rather than Envoy's 10 %, which with the
  fleet's two to five instances would let only one of them go).

Each record also keeps when and why its instance last failed and when it last answered, for
two readers: the operator (``statistics()``, shown by ``/admin/backends``), and a retry,
which should go to an instance that is ``HEALTHY`` with no failure in the last
``recently_failed_s`` (`fit_for_retry`), preferably the one that answered last (see
``httpio.balance.ServicePool.pick_retry``).

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
from typing import Final

from httpio.settings import HealthSettings

# Members are singletons and compared with ``is``: hashed by identity, in C. Enum's own
# __hash__ is a Python call (hash of the name), and the transition table and the balancer look
# states and outcomes up on every request (145 ns a lookup of a (state, event) key, timeit).


class State(enum.Enum):
    __hash__ = object.__hash__

    HEALTHY = "healthy"
    SUSPECT = "suspect"
    EJECTED = "ejected"
    PROBING = "probing"


class Event(enum.Enum):
    __hash__ = object.__hash__

    CHECK_PASSED = "check_passed"
    CHECK_FAILED = "check_failed"
    REQUEST_OK = "request_ok"
    REQUEST_FAILED = "request_failed"
    BACKOFF_EXPIRED = "backoff_expired"


class Outcome(enum.Enum):
    """How one proxied request ended, as the proxy reports it to the pool."""

    __hash__ = object.__hash__

    SUCCESS = "success"  # any response below 500 (4xx is the client's fault, not the instance's)
    SERVER_ERROR = "server_error"  # 500, 501, 505...: an answer, if a bad one
    GATEWAY_ERROR = "gateway_error"  # 502, 503, 504 from the instance
    CONNECT_FAILURE = "connect_failure"  # refused or unreachable at once: nothing was sent
    CONNECT_TIMEOUT = "connect_timeout"  # no handshake within connect_timeout_s: nothing sent
    RESET = "reset"  # the connection broke after the request (or part of it) went out
    TIMEOUT = "timeout"  # no response head within the per-try timeout
    CANCELLED = "cancelled"  # the client went away: says nothing about the instance


# What Envoy's consecutive_gateway_failure counts: the instance gave no answer, or a gateway's.
GATEWAY_FAILURES: Final = frozenset(
    {
        Outcome.GATEWAY_ERROR,
        Outcome.CONNECT_FAILURE,
        Outcome.CONNECT_TIMEOUT,
        Outcome.RESET,
        Outcome.TIMEOUT,
    }
)


def outcome_of_status(status: int) -> Outcome:
    """How an answer with this status counts for the instance that sent it."""
    if status < 500:
        return Outcome.SUCCESS
    return Outcome.GATEWAY_ERROR if 502 <= status <= 504 else Outcome.SERVER_ERROR


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
        "ejected_because",
        "ejected_until",
        "ejection_count",
        "ejections",
        "gateway_failures",
        "last_failure_at",
        "last_failure_reason",
        "last_success_at",
        "recovered_at",
        "request_failures",
        "state",
        "trial_started",
    )

    def __init__(self) -> None:
        self.state = State.HEALTHY
        self.check_failures = 0
        self.check_successes = 0
        self.request_failures = 0  # consecutive: any failure (the consecutive_failures rule)
        self.gateway_failures = 0  # consecutive: GATEWAY_FAILURES only
        self.ejection_count = 0  # back-off multiplier, decays while healthy
        self.ejections = 0  # lifetime total, for statistics
        self.ejected_until: float | None = None  # None while EJECTED: only checks restore it
        self.ejected_because = ""
        self.recovered_at = 0.0
        self.trial_started: float | None = None
        self.last_failure_at: float | None = None
        self.last_failure_reason = ""
        self.last_success_at: float | None = None


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
    s = t.settings
    return (
        r.request_failures >= s.consecutive_failures
        or r.gateway_failures >= s.consecutive_gateway_failures
    ) and t.may_eject()


def _eject_timed(t: HealthTracker, r: _Record) -> None:
    s, now = t.settings, t.clock()
    if r.state is State.PROBING:
        r.ejected_because = "trial_failed"
    elif r.gateway_failures >= s.consecutive_gateway_failures:
        r.ejected_because = "consecutive_gateway_failures"
    else:
        r.ejected_because = "consecutive_failures"
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
    r.ejected_because = "health_checks"
    r.ejections += 1
    r.ejected_until = None
    r.check_successes = 0


def _recover(t: HealthTracker, r: _Record) -> None:
    r.check_failures = r.check_successes = r.request_failures = r.gateway_failures = 0
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

    def fit_for_retry(self, key: str, now: float) -> bool:
        """Whether a retry may go to `key`: ``HEALTHY`` (not suspect, ejected or on trial)
        and no request or check failed there in the last ``recently_failed_s``."""
        r = self._records.get(key)
        return (
            r is not None
            and r.state is H
            and (
                r.last_failure_at is None
                or now - r.last_failure_at >= self.settings.recently_failed_s
            )
        )

    def last_success_at(self, key: str) -> float | None:
        """When a request to `key` last ended well (by the injected clock), if ever."""
        r = self._records.get(key)
        return None if r is None else r.last_success_at

    def record_check(self, key: str, passed: bool) -> Transition | None:
        self.poll()
        r = self._records.get(key)
        if r is not None and not passed:
            r.last_failure_at = self.clock()
            r.last_failure_reason = "check_failed"
        return self.observe(key, Event.CHECK_PASSED if passed else Event.CHECK_FAILED)

    def record_outcome(self, key: str, outcome: Outcome) -> Transition | None:
        r = self._records.get(key)
        if r is None:  # removed by a config reload while the request was in flight
            return None
        if outcome is Outcome.CANCELLED:
            r.trial_started = None
            return None
        now = self.clock()
        if outcome is Outcome.SUCCESS:
            r.last_success_at = now
            r.gateway_failures = 0
            event = Event.REQUEST_OK
        else:
            r.last_failure_at = now
            r.last_failure_reason = outcome.value
            if outcome in GATEWAY_FAILURES:
                r.gateway_failures += 1
            else:  # an answer, if a bad one: the instance is not hung
                r.gateway_failures = 0
            event = Event.REQUEST_FAILED
        if self.next_expiry is not None and now >= self.next_expiry:
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
        """Per instance: its state and why (the streaks, the last failure, what ejected it)."""
        now = self.clock()

        def age(at: float | None) -> float | None:
            return None if at is None else round(max(0.0, now - at), 3)

        return {
            key: {
                "state": r.state.value,
                "ejections": r.ejections,
                "ejected_for_s": None
                if r.ejected_until is None
                else max(0.0, r.ejected_until - now),
                "ejected_because": r.ejected_because or None,
                "check_failures": r.check_failures,
                "check_successes": r.check_successes,
                "request_failures": r.request_failures,
                "gateway_failures": r.gateway_failures,
                "last_failure_reason": r.last_failure_reason or None,
                "last_failure_age_s": age(r.last_failure_at),
                "last_success_age_s": age(r.last_success_at),
            }
            for key, r in self._records.items()
        }

    def __repr__(self) -> str:
        counts = " ".join(f"{k}={v}" for k, v in self.counts().items() if v)
        return f"<HealthTracker {counts or 'empty'}>"
