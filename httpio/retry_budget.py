"""A retry budget: retries may add at most ``ratio`` extra load, plus a small floor, per window.

A per-request retry count (``ServiceLimits.retries``) alone turns an overloaded service into a
more overloaded one: when every request fails, each is sent 1 + retries times. Finagle's
``RetryBudget`` and Envoy's ``retry_budget`` bound the sum instead: over a sliding window,
retries stay within ``ratio`` (20%, Finagle's default) of first attempts, plus
``min_retries_per_s`` (3/s, Envoy's ``min_retry_concurrency`` order of magnitude) so that a
service with little traffic can still retry at all. Retries are not counted as requests, or
each retry would grow the budget it draws from.

The window is ``BUCKETS`` buckets of ``window_s / BUCKETS`` seconds each with running totals, so
each call costs O(1) amortised and the window slides in steps of a tenth. The clock is injected.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from httpio.settings import RetryBudgetSettings

BUCKETS = 10


class RetryBudget:
    def __init__(
        self, settings: RetryBudgetSettings | None = None, *, clock: Callable[[], float]
    ) -> None:
        self.settings = settings or RetryBudgetSettings()
        self._clock = clock
        self._width = self.settings.window_s / BUCKETS
        self._buckets: deque[list[int]] = deque()  # [bucket id, requests, retries]
        self._requests = 0
        self._retries = 0
        self.refused = 0

    def _current(self) -> list[int]:
        now_id = int(self._clock() // self._width)
        buckets = self._buckets
        while buckets and buckets[0][0] <= now_id - BUCKETS:
            _, requests, retries = buckets.popleft()
            self._requests -= requests
            self._retries -= retries
        if not buckets or buckets[-1][0] != now_id:
            buckets.append([now_id, 0, 0])
        return buckets[-1]

    def record_request(self) -> None:
        """Call once per client request (first attempts only)."""
        self._current()[1] += 1
        self._requests += 1

    def allowance(self) -> float:
        """How many retries the current window allows in total."""
        s = self.settings
        return s.ratio * self._requests + s.min_retries_per_s * s.window_s

    def try_retry(self) -> bool:
        """May one more retry go out now? If so it is counted against the budget."""
        bucket = self._current()
        if self._retries + 1 > self.allowance():
            self.refused += 1
            return False
        bucket[2] += 1
        self._retries += 1
        return True

    def statistics(self) -> dict[str, float | int]:
        self._current()
        return {
            "requests_in_window": self._requests,
            "retries_in_window": self._retries,
            "allowance": self.allowance(),
            "refused": self.refused,
        }

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<RetryBudget retries={stats['retries_in_window']}/{stats['allowance']:g}"
            f" requests={stats['requests_in_window']} refused={self.refused}>"
        )
