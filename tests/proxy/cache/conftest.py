"""Fixtures for the cache tests: a real redis-server per test (`tests.redisproc`), a pool on
it with short timeouts, and a clock the test sets by hand."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from httpio.redis_client import RedisPool, RedisSettings
from tests.support.clock import FakeClock
from tests.support.redisproc import RedisProcess, running_redis


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    with running_redis() as proc:
        yield proc


@pytest.fixture
async def redis_pool(redis_server):
    pool = RedisPool(
        RedisSettings(port=redis_server.port, connect_timeout_s=0.5, command_timeout_s=0.5)
    )
    yield pool
    await pool.aclose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)
