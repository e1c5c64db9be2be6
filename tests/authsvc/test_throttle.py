"""Throttle arithmetic with a clock that is just a number."""

from __future__ import annotations

import msgspec
import pytest

from authsvc.throttle import (
    ConcurrencyGate,
    Counter,
    after_failure,
    after_signup,
    locked_for,
    retry_after,
    signup_wait,
)
from topology.schema import AuthLimits, FailureRule

HARD = AuthLimits().per_address
GENTLE = AuthLimits().per_user


def fail(times: int, rule: FailureRule, start: float = 1000.0, step: float = 0.5) -> Counter:
    counter = None
    for i in range(times):
        counter = after_failure(counter, rule, start + i * step)
    assert counter is not None
    return counter


def test_five_free_failures_then_locks_that_double() -> None:
    assert [HARD.lockout_s(n) for n in range(1, 9)] == [0, 0, 0, 0, 1, 2, 4, 8]
    assert HARD.lockout_s(30) == 900 and HARD.lockout_s(10**6) == 900
    four = fail(4, HARD)
    assert locked_for(four, HARD, four.last_at) == 0
    five = after_failure(four, HARD, 1001.0)
    assert locked_for(five, HARD, 1001.0) == 1.0
    assert locked_for(five, HARD, 1001.5) == 0.5
    assert locked_for(five, HARD, 1002.0) == 0


def test_sixty_guesses_in_thirteen_seconds_are_no_longer_possible() -> None:
    """The hostile review's attack: one guess every 0.22 s, each allowed only when unlocked."""
    counter, now, tried = None, 0.0, 0
    while now < 13.0:
        if locked_for(counter, HARD, now) == 0:
            counter = after_failure(counter, HARD, now)
            tried += 1
        now += 0.22
    assert tried <= 8


def test_the_gentle_per_user_limit_starts_late_and_stays_short() -> None:
    assert [GENTLE.lockout_s(n) for n in (19, 20, 21, 25, 100)] == [0, 1, 2, 30, 30]


def test_counts_are_forgotten_after_a_quiet_spell() -> None:
    counter = fail(10, HARD)
    quiet = counter.last_at + HARD.forget_after_s
    assert locked_for(counter, HARD, quiet) == 0
    assert after_failure(counter, HARD, quiet) == Counter(1, quiet, quiet)
    assert after_failure(counter, HARD, quiet - 1).count == 11
    assert HARD.forget_after_s > HARD.max_s  # a lock never outlives its memory


def test_retry_after_is_whole_seconds_never_zero() -> None:
    assert [retry_after(s) for s in (0.001, 0.5, 1.0, 1.01, 899.2)] == [1, 1, 1, 2, 900]


def test_signups_per_address_in_a_fixed_window() -> None:
    limits = AuthLimits(signups_per_address=3, signup_window_s=100.0)
    counter = None
    for i in range(3):
        assert signup_wait(counter, limits, 10.0 + i) == 0
        counter = after_signup(counter, limits, 10.0 + i)
    assert counter == Counter(3, 10.0, 12.0)
    assert signup_wait(counter, limits, 12.0) == 98.0
    assert signup_wait(counter, limits, 110.0) == 0
    assert after_signup(counter, limits, 110.0) == Counter(1, 110.0, 110.0)


def test_limits_load_from_config_json_and_refuse_nonsense() -> None:
    raw = b'{"per_address": {"free": 3, "max_s": 60}, "concurrent_per_address": 2}'
    limits = msgspec.json.decode(raw, type=AuthLimits)
    assert limits.per_address == FailureRule(free=3, max_s=60.0)
    assert limits.per_user == GENTLE and limits.concurrent_per_address == 2
    for bad in (b'{"per_address": {"free": 0, "max_s": 1}}', b'{"signups_per_address": 0}'):
        with pytest.raises(msgspec.ValidationError):
            msgspec.json.decode(bad, type=AuthLimits)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(b'{"per_adress": {}}', type=AuthLimits)


def test_concurrency_gate_caps_each_address_alone() -> None:
    gate = ConcurrencyGate(2)
    assert gate.try_enter("a") and gate.try_enter("a")
    assert not gate.try_enter("a")
    assert gate.try_enter("b")
    assert gate.statistics() == {"addresses": 2, "in_flight": 3, "limit": 2, "refused": 1}
    gate.leave("a")
    assert gate.try_enter("a")
    for address in ("a", "a", "b"):
        gate.leave(address)
    assert gate.statistics()["addresses"] == 0 and "refused=1" in repr(gate)
