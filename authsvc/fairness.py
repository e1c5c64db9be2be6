"""Who hashes next: scrypt slots handed out round robin across client addresses. No I/O.

An auth server runs one scrypt per core at a time and queues the rest. With one FIFO queue
(a ``trio.CapacityLimiter``), a client that keeps 16 sign-ins in flight puts 16 hashes in
front of everybody else's: measured with 1,000 connections sending made-up names from one
address, a genuine sign-in from another address took 7.5 s (p50) although the per-address
cap (`authsvc.throttle.ConcurrencyGate`) refused all but 16 of them per server. Handing each
freed slot to the next *address* in turn (round robin over per-address FIFO queues, the
simplest fair queueing, as in Nagle's "On packet switches with infinite storage", RFC 970)
makes a newcomer wait for the hashes already running plus at most one hash of each other
waiting address, however deep their queues.

`FairQueue` only decides; `authsvc.app` parks a task on each waiter and wakes the one
`release` returns.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Generic, TypeVar

W = TypeVar("W")


class FairQueue(Generic[W]):
    """``slots`` at once; waiters queued per key, served one key after another."""

    __slots__ = ("_queues", "_waiting", "free", "slots")

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError("a fair queue needs at least one slot")
        self.slots = slots
        self.free = slots
        self._queues: OrderedDict[str, deque[W]] = OrderedDict()
        self._waiting = 0

    @property
    def waiting(self) -> int:
        return self._waiting

    def acquire(self, key: str, waiter: W) -> bool:
        """True: a slot is ``waiter``'s now. False: it is queued until `release` names it."""
        if self.free > 0 and not self._queues:
            self.free -= 1
            return True
        self._queues.setdefault(key, deque()).append(waiter)
        self._waiting += 1
        return False

    def release(self) -> W | None:
        """A slot was given back: the waiter it passes to (which now holds it), or None."""
        if not self._queues:
            self.free += 1
            return None
        key, queue = self._queues.popitem(last=False)
        waiter = queue.popleft()
        if queue:
            self._queues[key] = queue  # to the back of the round
        self._waiting -= 1
        return waiter

    def cancel(self, key: str, waiter: W) -> bool:
        """Take a queued waiter out (its task was cancelled); False if it is not queued,
        i.e. `release` already gave it a slot, which the caller must then release."""
        queue = self._queues.get(key)
        if queue is None or waiter not in queue:
            return False
        queue.remove(waiter)
        if not queue:
            del self._queues[key]
        self._waiting -= 1
        return True

    def statistics(self) -> dict[str, int]:
        return {
            "slots": self.slots,
            "running": self.slots - self.free,
            "waiting": self._waiting,
            "waiting_addresses": len(self._queues),
        }

    def __repr__(self) -> str:
        return (
            f"<FairQueue running={self.slots - self.free}/{self.slots}"
            f" waiting={self._waiting} addresses={len(self._queues)}>"
        )
