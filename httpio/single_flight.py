"""Single flight: concurrent requests for one key share one call (Go's ``singleflight``).

The first caller for a key leads: it makes the call and lands the flight with what came of
it; callers that find the flight in the air wait for it to land instead of calling too. Two
places need this and used to carry a copy each: the proxy's token introspection (a new
token's first burst asks the auth server once, every waiter gets the same verdict or the same
error) and the response cache (concurrent misses on one key send one request upstream; the
waiters then read the stored entry themselves).

A flight leaves the table when it lands, or when a waiter gives up on it (`abandon`), so a
leader that never lands cannot block its key for longer than the waiters' patience. Landing
is idempotent and only ever removes the flight that is landing, never a newer one for the same
key. Waking is a `trio.Event`; nothing here blocks or does I/O.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Generic, TypeVar

import trio

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


class Flight(Generic[T]):
    """One call in the air; ``result`` or ``error`` once it has landed."""

    __slots__ = ("_landed", "error", "result")

    def __init__(self) -> None:
        self._landed = trio.Event()
        self.result: T | None = None
        self.error: BaseException | None = None

    @property
    def landed(self) -> bool:
        return self._landed.is_set()

    async def wait(self, timeout_s: float = math.inf) -> bool:
        """Wait for the flight to land; False if ``timeout_s`` passed first."""
        with trio.move_on_after(timeout_s):
            await self._landed.wait()
        return self.landed

    def outcome(self) -> T:
        """What the leader's call returned, or raise what it raised."""
        if self.error is not None:
            raise self.error
        assert self.result is not None, "outcome() of a flight that carried no result"
        return self.result

    def __repr__(self) -> str:
        state = "landed" if self.landed else "in the air"
        return f"<Flight {state}{' with an error' if self.error is not None else ''}>"


class SingleFlight(Generic[K, T]):
    """The flights in the air, by key."""

    def __init__(self) -> None:
        self._flights: dict[K, Flight[T]] = {}
        self._led = 0
        self._joined = 0
        self._abandoned = 0

    def __len__(self) -> int:
        return len(self._flights)

    def __repr__(self) -> str:
        return (
            f"<SingleFlight in_the_air={len(self._flights)} led={self._led} joined={self._joined}>"
        )

    def statistics(self) -> dict[str, int]:
        return {
            "in_the_air": len(self._flights),
            "led": self._led,
            "joined": self._joined,
            "abandoned": self._abandoned,
        }

    def join(self, key: K) -> Flight[T] | None:
        """The flight in the air for ``key``, to wait for; None when there is none."""
        flight = self._flights.get(key)
        if flight is not None:
            self._joined += 1
        return flight

    def lead(self, key: K) -> Flight[T] | None:
        """Take the lead for ``key``: a new flight the caller must `land`; None when another
        caller leads one already."""
        if key in self._flights:
            return None
        flight = self._flights[key] = Flight()
        self._led += 1
        return flight

    def land(
        self,
        key: K,
        flight: Flight[T],
        *,
        result: T | None = None,
        error: BaseException | None = None,
    ) -> None:
        """The leader's call is over: wake the waiters and take the flight off the table."""
        if flight.landed:
            return
        flight.result, flight.error = result, error
        flight._landed.set()
        if self._flights.get(key) is flight:
            del self._flights[key]

    def abandon(self, key: K, flight: Flight[T]) -> None:
        """A waiter gave up on ``flight``: a leader that never lands must not block ``key``."""
        if self._flights.get(key) is flight:
            del self._flights[key]
            self._abandoned += 1
