from __future__ import annotations

import pytest

from httpio.breaker import BreakerState, CircuitBreaker

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def tripped(failures: int = 3, open_s: float = 5.0, now: float = 100.0) -> CircuitBreaker:
    breaker = CircuitBreaker("redis", failures=failures, open_s=open_s)
    for _ in range(failures):
        assert breaker.allow(now) == (True, None)
        breaker.record_failure(now, "refused")
    assert breaker.state is OPEN
    return breaker


def test_stays_closed_below_the_threshold_and_success_resets_the_count():
    breaker = CircuitBreaker("redis", failures=3, open_s=5.0)
    assert breaker.record_failure(0.0, "x") is None
    assert breaker.record_failure(0.0, "x") is None
    assert breaker.record_success(0.0) is None
    assert breaker.record_failure(0.0, "x") is None
    assert breaker.record_failure(0.0, "x") is None
    assert breaker.state is CLOSED
    assert breaker.statistics()["consecutive_failures"] == 2


def test_trips_once_on_the_threshold():
    breaker = CircuitBreaker("redis", failures=2, open_s=5.0)
    assert breaker.record_failure(10.0, "timeout") is None
    transition = breaker.record_failure(10.0, "timeout")
    assert transition is not None
    assert (transition.previous, transition.state, transition.reason) == (CLOSED, OPEN, "timeout")
    # more failures of calls already in flight: no new transition to log
    assert breaker.record_failure(10.5, "timeout") is None
    assert breaker.statistics()["times_opened"] == 1


def test_open_rejects_until_the_cool_down_then_lets_one_probe_through():
    breaker = tripped(now=100.0, open_s=5.0)
    assert breaker.allow(104.9) == (False, None)
    allowed, transition = breaker.allow(105.0)
    assert allowed
    assert transition is not None and (transition.previous, transition.state) == (OPEN, HALF_OPEN)
    assert breaker.allow(105.1) == (False, None)  # one probe at a time
    assert breaker.statistics()["rejected"] == 2


def test_good_probe_closes():
    breaker = tripped(now=0.0, open_s=1.0)
    assert breaker.allow(1.0)[0]
    transition = breaker.record_success(1.01)
    assert transition is not None and (transition.previous, transition.state) == (HALF_OPEN, CLOSED)
    assert breaker.allow(1.02) == (True, None)
    assert breaker.statistics()["consecutive_failures"] == 0


def test_bad_probe_reopens_for_another_cool_down():
    breaker = tripped(now=0.0, open_s=1.0)
    assert breaker.allow(1.0)[0]
    transition = breaker.record_failure(1.1, "refused")
    assert transition is not None and (transition.previous, transition.state) == (HALF_OPEN, OPEN)
    assert breaker.allow(2.0) == (False, None)
    assert breaker.allow(2.1)[0]


def test_a_lost_probe_does_not_wedge_the_breaker():
    breaker = tripped(now=0.0, open_s=1.0)
    assert breaker.allow(1.0)[0]  # its caller gets cancelled and never reports
    assert breaker.allow(1.5) == (False, None)
    assert breaker.allow(2.0) == (True, None)


def test_late_success_while_open_changes_nothing():
    breaker = tripped(now=0.0, open_s=1.0)
    assert breaker.record_success(0.1) is None
    assert breaker.state is OPEN


def test_repr_and_validation():
    breaker = tripped()
    assert "redis open failures=3/3" in repr(breaker)
    with pytest.raises(ValueError):
        CircuitBreaker("x", failures=0)
    with pytest.raises(ValueError):
        CircuitBreaker("x", open_s=0)


# -- one incident is one failure (calls that fail side by side) -------------------------------
def test_calls_in_flight_together_that_fail_together_count_once():
    breaker = CircuitBreaker("redis", failures=3, open_s=5.0)
    epochs = [breaker.epoch for _ in range(50)]  # fifty calls start; the machine stalls
    transitions = [breaker.record_failure(1.0, "timeout", epoch=e) for e in epochs]
    assert transitions == [None] * 50
    assert breaker.state is CLOSED
    stats = breaker.statistics()
    assert (stats["consecutive_failures"], stats["overlapping_failures"]) == (1, 49)


def test_failures_one_after_another_trip_it():
    breaker = CircuitBreaker("redis", failures=3, open_s=5.0)
    for now in (1.0, 1.5):
        assert breaker.record_failure(now, "timeout", epoch=breaker.epoch) is None
    transition = breaker.record_failure(2.0, "timeout", epoch=breaker.epoch)
    assert transition is not None and transition.state is OPEN


def test_a_success_between_failures_resets_the_count_but_not_the_epoch():
    breaker = CircuitBreaker("redis", failures=2, open_s=5.0)
    stale = breaker.epoch
    breaker.record_failure(1.0, "timeout", epoch=breaker.epoch)
    breaker.record_success(1.1)
    assert breaker.record_failure(1.2, "timeout", epoch=stale) is None  # same incident
    assert breaker.record_failure(1.3, "timeout", epoch=breaker.epoch) is None
    assert breaker.state is CLOSED and breaker.statistics()["consecutive_failures"] == 1


def test_only_the_probe_decides_a_half_open_breaker():
    breaker = CircuitBreaker("redis", failures=1, open_s=1.0)
    hung = breaker.epoch  # a call that hangs from before the breaker opened
    breaker.record_failure(0.0, "refused", epoch=breaker.epoch)
    assert breaker.allow(1.0)[0]
    assert breaker.record_failure(1.1, "late timeout", epoch=hung) is None
    assert breaker.state is HALF_OPEN
    transition = breaker.record_success(1.2)
    assert transition is not None and transition.state is CLOSED
