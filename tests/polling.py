"""Waiting, in trio tests, for state that offers no event to wait on (another process,
Redis, counters a server updates after the bytes a client reads): re-check it under a
deadline, never a bare sleep."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

import trio


async def wait_until(
    condition: Callable[[], bool] | Callable[[], Awaitable[bool]],
    timeout_s: float = 10.0,
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
