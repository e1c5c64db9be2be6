"""The health state machine, driven by hand with a fake clock: no event loop, no sockets."""

from __future__ import annotations

import msgspec
import pytest

from httpio.health import (
    TRANSITIONS,
    Event,
    HealthTracker,
    Outcome,
    State,
    outcome_of_status,
)
from httpio.settings import DEFAULT_PER_TRY_TIMEOUT_S, HealthSettings
from tests.support.clock import FakeClock


def tracker(n: int = 1, **settings: object) -> tuple[HealthTracker, FakeClock]:
    clock = FakeClock(1000.0)
    t = HealthTracker(msgspec.convert(settings, HealthSettings), clock, [f"i{k}" for k in range(n)])
    return t, clock


def fail_requests(t: HealthTracker, key: str, times: int) -> None:
    for _ in range(times):
        t.record_outcome(key, Outcome.SERVER_ERROR)


def test_table_targets_and_sources_are_states() -> None:
    for (state, event), rules in TRANSITIONS.items():
        assert isinstance(state, State) and isinstance(event, Event)
        assert rules and all(isinstance(new, State) for _, new, _ in rules)
    reached = {new for rules in TRANSITIONS.values() for _, new, _ in rules}
    assert reached == set(State)


def test_fall_then_rise_with_active_checks() -> None:
    t, _ = tracker()
    assert t.record_check("i0", False) is not None
    assert t.state("i0") is State.SUSPECT and t.usable("i0")
    t.record_check("i0", False)
    assert t.state("i0") is State.SUSPECT
    tr = t.record_check("i0", False)
    assert tr is not None and tr.new is State.EJECTED and tr.ejected_for_s is None
    assert not t.usable("i0")
    t.record_check("i0", True)
    assert t.state("i0") is State.EJECTED  # rise=2: one success is not enough
    t.record_check("i0", True)
    assert t.state("i0") is State.HEALTHY and t.usable("i0")


def test_flapping_neither_ejects_nor_restores() -> None:
    t, _ = tracker()
    for _ in range(10):
        t.record_check("i0", False)
        t.record_check("i0", True)
    assert t.state("i0") is State.HEALTHY
    for _ in range(3):
        t.record_check("i0", False)
    assert t.state("i0") is State.EJECTED
    for _ in range(10):
        t.record_check("i0", True)
        t.record_check("i0", False)
    assert t.state("i0") is State.EJECTED


def test_suspect_clears_only_when_both_streaks_clear() -> None:
    t, _ = tracker()
    t.record_outcome("i0", Outcome.RESET)
    assert t.state("i0") is State.SUSPECT
    t.record_check("i0", True)  # the request streak is still open
    assert t.state("i0") is State.SUSPECT
    t.record_outcome("i0", Outcome.SUCCESS)
    assert t.state("i0") is State.HEALTHY


def test_passive_ejection_backoff_grows_and_is_capped() -> None:
    t, clock = tracker(consecutive_failures=5, base_ejection_s=10.0, max_ejection_s=25.0)
    fail_requests(t, "i0", 4)
    assert t.state("i0") is State.SUSPECT
    tr = t.record_outcome("i0", Outcome.CONNECT_FAILURE)
    assert tr is not None and tr.new is State.EJECTED and tr.ejected_for_s == 10.0
    for expected_s in (20.0, 25.0, 25.0):  # base * count, up to the cap
        clock.now += tr.ejected_for_s - 0.001
        assert t.poll() == [] and t.state("i0") is State.EJECTED
        clock.now += 0.001
        [probing] = t.poll()
        assert probing.new is State.PROBING and t.usable("i0")
        tr = t.record_outcome("i0", Outcome.TIMEOUT)
        assert tr is not None and tr.ejected_for_s is not None
        assert tr.new is State.EJECTED and tr.ejected_for_s == pytest.approx(expected_s)
    assert t.statistics()["i0"]["ejections"] == 4


def test_probing_takes_one_trial_and_its_success_restores() -> None:
    t, clock = tracker(consecutive_failures=1)
    t.record_outcome("i0", Outcome.SERVER_ERROR)
    clock.now += 10.0
    t.poll()
    assert t.state("i0") is State.PROBING and t.usable("i0")
    t.start_trial("i0")
    assert not t.usable("i0")  # one trial at a time
    t.record_outcome("i0", Outcome.CANCELLED)  # says nothing about the instance
    assert t.state("i0") is State.PROBING and t.usable("i0")
    t.start_trial("i0")
    tr = t.record_outcome("i0", Outcome.SUCCESS)
    assert tr is not None and tr.old is State.PROBING and tr.new is State.HEALTHY


def test_a_trial_that_never_reports_back_does_not_block_forever() -> None:
    t, clock = tracker(consecutive_failures=1, base_ejection_s=10.0)
    t.record_outcome("i0", Outcome.SERVER_ERROR)
    clock.now += 10.0
    t.poll()
    t.start_trial("i0")
    clock.now += 9.0
    assert not t.usable("i0")
    clock.now += 1.0
    assert t.usable("i0")


def test_probing_decided_by_next_active_check() -> None:
    t, clock = tracker(consecutive_failures=1)
    t.record_outcome("i0", Outcome.SERVER_ERROR)
    clock.now += 10.0
    t.record_check("i0", True)  # record_check polls first: the back-off is over
    assert t.state("i0") is State.HEALTHY


def test_failed_check_while_probing_reejects_for_longer() -> None:
    t, clock = tracker(consecutive_failures=1)
    t.record_outcome("i0", Outcome.SERVER_ERROR)
    clock.now += 10.0
    tr = t.record_check("i0", False)
    assert tr is not None and tr.new is State.EJECTED and tr.ejected_for_s == 20.0


def test_ejection_count_decays_while_healthy() -> None:
    t, clock = tracker(consecutive_failures=1, base_ejection_s=10.0, max_ejection_s=100.0)
    t.record_outcome("i0", Outcome.SERVER_ERROR)  # count 1: 10 s
    clock.now += 10.0
    t.record_outcome("i0", Outcome.SUCCESS)  # trial passes
    tr = t.record_outcome("i0", Outcome.SERVER_ERROR)  # soon again: count 2
    assert tr is not None and tr.ejected_for_s == 20.0
    clock.now += 20.0
    t.record_outcome("i0", Outcome.SUCCESS)
    clock.now += 200.0  # two max_ejection_s of good behaviour: count 2 -> 0
    tr = t.record_outcome("i0", Outcome.SERVER_ERROR)
    assert tr is not None and tr.ejected_for_s == 10.0


def test_max_ejection_percent() -> None:
    t, _ = tracker(4, consecutive_failures=1, max_ejection_percent=50)
    for key in ("i0", "i1", "i2", "i3"):
        t.record_outcome(key, Outcome.SERVER_ERROR)
    assert [t.state(k) for k in ("i0", "i1", "i2", "i3")] == [
        State.EJECTED,
        State.EJECTED,
        State.SUSPECT,
        State.SUSPECT,
    ]
    assert t.counts() == {"healthy": 0, "suspect": 2, "ejected": 2, "probing": 0}


def test_at_least_one_may_be_ejected_even_at_zero_percent() -> None:
    t, _ = tracker(3, consecutive_failures=1, max_ejection_percent=0)
    t.record_outcome("i0", Outcome.SERVER_ERROR)
    t.record_outcome("i1", Outcome.SERVER_ERROR)
    assert t.state("i0") is State.EJECTED and t.state("i1") is State.SUSPECT


def test_active_check_ejection_ignores_max_percent() -> None:
    t, _ = tracker(2, max_ejection_percent=0)
    for _ in range(3):
        t.record_check("i0", False)
        t.record_check("i1", False)
    assert t.counts()["ejected"] == 2


def test_outcomes_of_removed_instances_are_ignored() -> None:
    t, _ = tracker(1)
    t.remove("i0")
    assert t.record_outcome("i0", Outcome.SERVER_ERROR) is None
    assert t.record_check("i0", False) is None
    assert t.keys() == []


def test_repr_and_statistics() -> None:
    t, _ = tracker(2, consecutive_failures=1)
    t.record_outcome("i1", Outcome.SERVER_ERROR)
    assert repr(t) == "<HealthTracker healthy=1 ejected=1>"
    stats = t.statistics()
    assert stats["i1"]["state"] == "ejected" and stats["i1"]["ejected_for_s"] == 10.0
    assert stats["i0"]["ejected_for_s"] is None


def test_settings_schema() -> None:
    s = msgspec.json.decode(b'{"path": "/healthz", "rise": 1}', type=HealthSettings)
    assert s.path == "/healthz" and s.fall == 3 and s.effective_interval_s(10.0) == 10.0
    assert HealthSettings(interval_s=2.5).effective_interval_s(10.0) == 2.5
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(b'{"bogus": 1}', type=HealthSettings)
    with pytest.raises(msgspec.ValidationError, match=r"max_ejection_percent"):
        msgspec.json.decode(b'{"max_ejection_percent": 101}', type=HealthSettings)
    with pytest.raises(msgspec.ValidationError, match=r"\$.rise"):
        msgspec.json.decode(b'{"rise": 0}', type=HealthSettings)


# -- timeouts and other gateway failures as outlier evidence -------------------------------------
def fail_with(t: HealthTracker, key: str, *outcomes: Outcome) -> list[State]:
    states = []
    for outcome in outcomes:
        t.record_outcome(key, outcome)
        states.append(t.state(key))
    return states


def test_consecutive_timeouts_eject_like_connect_failures() -> None:
    t, _ = tracker(2)  # the shipped defaults: 3 consecutive gateway failures
    assert fail_with(t, "i0", Outcome.TIMEOUT, Outcome.TIMEOUT, Outcome.TIMEOUT) == [
        State.SUSPECT,
        State.SUSPECT,
        State.EJECTED,
    ]
    assert not t.usable("i0")
    stats = t.statistics()["i0"]
    assert stats["ejected_because"] == "consecutive_gateway_failures"
    assert stats["ejected_for_s"] == 10.0 and stats["last_failure_reason"] == "timeout"
    assert stats["gateway_failures"] == 3 and stats["request_failures"] == 3


@pytest.mark.parametrize(
    "outcomes",
    [
        (Outcome.CONNECT_FAILURE, Outcome.TIMEOUT, Outcome.RESET),
        (Outcome.GATEWAY_ERROR, Outcome.GATEWAY_ERROR, Outcome.TIMEOUT),
    ],
)
def test_every_kind_of_gateway_failure_counts_in_one_streak(outcomes: tuple[Outcome, ...]) -> None:
    t, _ = tracker(2)
    assert fail_with(t, "i0", *outcomes)[-1] is State.EJECTED


def test_an_answer_breaks_the_gateway_streak_but_not_the_5xx_one() -> None:
    t, _ = tracker(2)
    # A 500 is an answer: the instance is not hung, but it is failing.
    states = fail_with(
        t, "i0", Outcome.TIMEOUT, Outcome.TIMEOUT, Outcome.SERVER_ERROR, Outcome.TIMEOUT
    )
    assert states == [State.SUSPECT] * 4
    assert t.statistics()["i0"]["gateway_failures"] == 1
    assert fail_with(t, "i0", Outcome.SERVER_ERROR) == [State.EJECTED]  # 5 in a row
    assert t.statistics()["i0"]["ejected_because"] == "consecutive_failures"


def test_a_success_or_a_cancel_between_timeouts() -> None:
    t, _ = tracker(2)
    fail_with(t, "i0", Outcome.TIMEOUT, Outcome.TIMEOUT, Outcome.SUCCESS)
    assert t.state("i0") is State.HEALTHY  # the streak is over
    fail_with(t, "i0", Outcome.TIMEOUT, Outcome.TIMEOUT, Outcome.CANCELLED)
    assert t.state("i0") is State.SUSPECT  # a client that left says nothing either way
    assert fail_with(t, "i0", Outcome.TIMEOUT) == [State.EJECTED]


def test_a_hung_instance_under_load_is_out_within_three_seconds() -> None:
    """The proxy's view of a SIGSTOPped instance: every request sent there from the moment
    it stopped ends as a timeout one per-try timeout later. At 5 requests/s to it (a light
    share of the fleet's load), it is ejected ~2.4 s after it stopped."""
    t, clock = tracker(5)
    stopped_at = clock.now
    sent = [stopped_at + k * 0.2 for k in range(20)]  # 5 requests/s, each times out
    ejected_at = None
    for start in sent:
        clock.now = start + DEFAULT_PER_TRY_TIMEOUT_S
        t.record_outcome("i0", Outcome.TIMEOUT)
        if t.state("i0") is State.EJECTED:
            ejected_at = clock.now
            break
    assert ejected_at is not None
    assert ejected_at - stopped_at <= 3.0
    assert [t.state(f"i{k}") for k in range(1, 5)] == [State.HEALTHY] * 4


def test_fit_for_retry_needs_healthy_and_no_recent_failure() -> None:
    t, clock = tracker(2, recently_failed_s=5.0)
    assert t.fit_for_retry("i0", clock.now) and not t.fit_for_retry("gone", clock.now)
    t.record_outcome("i0", Outcome.CONNECT_FAILURE)
    assert not t.fit_for_retry("i0", clock.now)  # suspect
    clock.now += 1.0
    t.record_outcome("i0", Outcome.SUCCESS)
    assert t.state("i0") is State.HEALTHY
    assert not t.fit_for_retry("i0", clock.now)  # healthy again, but it failed 1 s ago
    clock.now += 4.0
    assert t.fit_for_retry("i0", clock.now)
    t.record_check("i1", False)
    t.record_check("i1", True)
    assert t.state("i1") is State.HEALTHY and not t.fit_for_retry("i1", clock.now)
    assert t.statistics()["i1"]["last_failure_reason"] == "check_failed"


def test_statistics_say_why_an_instance_is_out() -> None:
    t, clock = tracker(2)
    t.record_outcome("i1", Outcome.SUCCESS)
    clock.now += 2.0
    for _ in range(3):
        t.record_outcome("i0", Outcome.CONNECT_FAILURE)
    clock.now += 1.5
    stats = t.statistics()
    assert stats["i0"] == {
        "state": "ejected",
        "ejections": 1,
        "ejected_for_s": 8.5,
        "ejected_because": "consecutive_gateway_failures",
        "check_failures": 0,
        "check_successes": 0,
        "request_failures": 3,
        "gateway_failures": 3,
        "last_failure_reason": "connect_failure",
        "last_failure_age_s": 1.5,
        "last_success_age_s": None,
    }
    assert stats["i1"]["last_success_age_s"] == 3.5 and stats["i1"]["ejected_because"] is None
    for _ in range(3):
        t.record_check("i1", False)
    assert t.statistics()["i1"]["ejected_because"] == "health_checks"


def test_outcome_of_status() -> None:
    assert [outcome_of_status(s) for s in (200, 404, 500, 501, 502, 503, 504, 505)] == [
        Outcome.SUCCESS,
        Outcome.SUCCESS,
        Outcome.SERVER_ERROR,
        Outcome.SERVER_ERROR,
        Outcome.GATEWAY_ERROR,
        Outcome.GATEWAY_ERROR,
        Outcome.GATEWAY_ERROR,
        Outcome.SERVER_ERROR,
    ]
