"""Round robin over client addresses for the scrypt slots: pure decisions."""

from __future__ import annotations

import pytest

from authsvc.fairness import FairQueue


def test_free_slots_are_taken_at_once_then_waiters_queue() -> None:
    queue: FairQueue[str] = FairQueue(2)
    assert queue.acquire("a", "a1") and queue.acquire("a", "a2")
    assert not queue.acquire("a", "a3")
    assert queue.statistics() == {"slots": 2, "running": 2, "waiting": 1, "waiting_addresses": 1}


def test_a_newcomer_waits_for_one_turn_not_for_the_whole_burst() -> None:
    queue: FairQueue[str] = FairQueue(1)
    assert queue.acquire("attacker", "x0")
    for i in range(1, 6):
        assert not queue.acquire("attacker", f"x{i}")
    assert not queue.acquire("user", "u1")
    assert not queue.acquire("other", "o1")
    order = [queue.release() for _ in range(8)]
    assert order == ["x1", "u1", "o1", "x2", "x3", "x4", "x5", None]
    assert queue.free == 1 and queue.waiting == 0


def test_nobody_overtakes_a_queue_while_slots_are_busy() -> None:
    queue: FairQueue[str] = FairQueue(1)
    queue.acquire("a", "a1")
    queue.acquire("b", "b1")
    assert queue.release() == "b1"  # the slot passes straight on: it never becomes free
    assert not queue.acquire("c", "c1")  # ... so a newcomer cannot jump in between
    assert queue.release() == "c1" and queue.release() is None


def test_cancelled_waiters_leave_the_queue() -> None:
    queue: FairQueue[str] = FairQueue(1)
    queue.acquire("a", "a1")
    queue.acquire("a", "a2")
    queue.acquire("b", "b1")
    assert queue.cancel("a", "a2") and not queue.cancel("a", "a2")
    assert queue.waiting == 1 and "addresses=1" in repr(queue)
    assert queue.release() == "b1"
    assert not queue.cancel("b", "b1")  # already granted: the caller must release it
    assert queue.release() is None and queue.free == 1
    with pytest.raises(ValueError):
        FairQueue(0)
