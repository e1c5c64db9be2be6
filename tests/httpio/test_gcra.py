"""`httpio.gcra`: burst then rate, Retry-After rounding, remaining, bounded memory."""

from __future__ import annotations

from httpio.gcra import LocalBuckets, decide, retry_after_header


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_at_once_then_the_rate() -> None:
    clock = Clock()
    b = LocalBuckets(10, 5, clock=clock)
    assert [b.take("k").allowed for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.1
    assert b.take("k").allowed
    assert not b.take("k").allowed


def test_allowed_over_a_duration_is_rate_times_duration_plus_burst() -> None:
    clock = Clock()
    b = LocalBuckets(50, 100, clock=clock)
    allowed = 0
    for _ in range(10_000):  # 10 s at 1,000 attempts per second
        allowed += b.take("k").allowed
        clock.now += 0.001
    assert abs(allowed - (50 * 10 + 100)) <= 2


def test_remaining_counts_down_and_a_refusal_says_when() -> None:
    clock = Clock()
    b = LocalBuckets(1, 3, clock=clock)
    assert [b.take("k").remaining for _ in range(3)] == [2, 1, 0]
    refused = b.take("k")
    assert not refused.allowed and abs(refused.retry_after_s - 1.0) < 1e-9
    assert b.refused == 1


def test_keys_are_independent() -> None:
    b = LocalBuckets(1, 1, clock=Clock())
    assert b.take("a").allowed and b.take("b").allowed and not b.take("a").allowed


def test_retry_after_is_whole_seconds_rounded_up_never_zero() -> None:
    assert retry_after_header(0.0) == 1
    assert retry_after_header(0.001) == 1
    assert retry_after_header(1.0) == 1
    assert retry_after_header(1.2) == 2


def test_a_refusal_leaves_the_schedule_alone() -> None:
    _, tat = decide(10.0, 0.0, 1.0, 1)
    assert tat == 10.0


def test_memory_is_bounded_by_sweeping_passed_keys() -> None:
    clock = Clock()
    b = LocalBuckets(1000, 1, clock=clock, max_keys=100)
    for i in range(1000):
        b.take(f"k{i}")
        clock.now += 0.01
    assert b.statistics()["keys"] <= 100  # type: ignore[operator]


def test_a_resize_keeps_the_debt() -> None:
    clock = Clock()
    b = LocalBuckets(1, 1, clock=clock)
    assert b.take("k").allowed
    b.resize(2, 1)
    assert not b.take("k").allowed
