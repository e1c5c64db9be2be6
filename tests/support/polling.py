"""Waiting for state that offers no event to wait on (another process, Redis, counters a
server updates after the bytes a client reads): re-check it under a deadline, never a bare
sleep. `wait_until` is for trio tests, `wait_for` for the blocking end-to-end clients.

The deadlines are hang guards, not speed checks: a passing test never waits for them, and a
Python server that imports and binds in one second on a quiet machine took over 15 with the
two h11 builds and other work sharing its two cores. So they are generous."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable

import trio


async def wait_until(
    condition: Callable[[], bool] | Callable[[], Awaitable[bool]],
    timeout_s: float = 30.0,
    interval_s: float = 0.01,
) -> None:
    with trio.fail_after(timeout_s):
        while True:
            result = condition()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await trio.sleep(interval_s)


def wait_for(predicate: Callable[[], bool], *, timeout_s: float = 60.0, what: str = "") -> None:
    """Poll a condition until it holds; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what or predicate}")
