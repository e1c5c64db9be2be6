"""`httpio.single_flight`: one leader per key, waiters get its result or its error, and a
flight leaves the table when it lands or is abandoned, never taking a newer one with it."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from httpio.single_flight import SingleFlight


async def test_waiters_share_the_leaders_result() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    flight = flights.lead("k")
    assert flight is not None and flights.lead("k") is None and len(flights) == 1
    got: list[int] = []

    async def wait() -> None:
        joined = flights.join("k")
        assert joined is flight
        assert await joined.wait()
        got.append(joined.outcome())

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        flights.land("k", flight, result=7)
    assert got == [7, 7, 7]
    assert len(flights) == 0 and flights.join("k") is None
    assert flights.statistics() == {"in_the_air": 0, "led": 1, "joined": 3, "abandoned": 0}


async def test_waiters_get_the_leaders_error() -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    flight = flights.lead("k")
    assert flight is not None
    flights.land("k", flight, error=ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        flight.outcome()


async def test_a_waiter_that_gives_up_abandons_the_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    flights: SingleFlight[str, int] = SingleFlight()
    stuck = flights.lead("k")
    assert stuck is not None
    assert not await stuck.wait(timeout_s=5.0)
    flights.abandon("k", stuck)
    fresh = flights.lead("k")
    assert fresh is not None and fresh is not stuck
    flights.land("k", stuck, result=1)  # the old leader lands late: the new flight stays
    assert flights.join("k") is fresh
    assert flights.statistics()["abandoned"] == 1
    flights.land("k", fresh, result=2)
    flights.land("k", fresh, result=3)  # landing twice changes nothing
    assert fresh.outcome() == 2 and len(flights) == 0
