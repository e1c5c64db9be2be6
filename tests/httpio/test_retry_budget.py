"""Retry budget arithmetic with a fake clock."""

from __future__ import annotations

import msgspec
import pytest

from httpio.retry_budget import RetryBudget
from httpio.settings import RetryBudgetSettings
from tests.support.clock import FakeClock


def budget(**settings: object) -> tuple[RetryBudget, FakeClock]:
    clock = FakeClock(500.0)
    return RetryBudget(msgspec.convert(settings, RetryBudgetSettings), clock=clock), clock


def take_all(b: RetryBudget) -> int:
    granted = 0
    while b.try_retry():
        granted += 1
    return granted


def test_floor_allows_a_few_retries_without_traffic() -> None:
    b, _ = budget(min_retries_per_s=3.0, window_s=10.0)
    assert take_all(b) == 30
    assert b.refused == 1


def test_twenty_percent_of_requests_on_top_of_the_floor() -> None:
    b, _ = budget(ratio=0.2, min_retries_per_s=0.0)
    for _ in range(1000):
        b.record_request()
    assert b.allowance() == pytest.approx(200.0)
    assert take_all(b) == 200


def test_retries_do_not_grow_the_budget() -> None:
    b, _ = budget(ratio=0.2, min_retries_per_s=0.0)
    for _ in range(10):
        b.record_request()
    assert take_all(b) == 2
    assert b.statistics()["requests_in_window"] == 10


def test_window_slides() -> None:
    b, clock = budget(ratio=0.5, min_retries_per_s=0.0, window_s=10.0)
    for _ in range(10):
        b.record_request()
    assert take_all(b) == 5
    clock.now += 5.0
    for _ in range(10):
        b.record_request()
    assert take_all(b) == 5  # 20 requests -> 10 retries, 5 already spent
    clock.now += 5.0  # the first 10 requests and 5 retries have left the window
    assert b.statistics()["requests_in_window"] == 10
    assert b.statistics()["retries_in_window"] == 5
    assert take_all(b) == 0
    clock.now += 10.0
    assert b.statistics() == {
        "requests_in_window": 0,
        "retries_in_window": 0,
        "allowance": 0.0,
        "refused": 3,
    }


def test_repr() -> None:
    b, _ = budget()
    b.record_request()
    assert b.try_retry()
    assert repr(b) == "<RetryBudget retries=1/30.2 requests=1 refused=0>"


def test_settings_schema() -> None:
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"percent": 20}, RetryBudgetSettings)
    with pytest.raises(msgspec.ValidationError, match=r"window_s"):
        msgspec.convert({"window_s": 0}, RetryBudgetSettings)
