"""The clock the sans-IO classes take (``clock=``): a number a test moves by hand.

Health trackers, retry budgets, breakers, verdict caches and cache tiers read time only
through the callable they were given, so a test decides what "now" is and no test waits
for time to pass.
"""

from __future__ import annotations


class FakeClock:
    """``clock()`` returns ``now``; move it with ``clock.now = ...`` or `advance`."""

    __slots__ = ("now",)

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def __repr__(self) -> str:
        return f"FakeClock({self.now})"
