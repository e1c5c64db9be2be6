from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest
import trio

from httpio.redis_client import (
    RedisPool,
    RedisReplyError,
    RedisSettings,
    RedisUnavailable,
    parse_redis_address,
)
from tests.support.polling import wait_until
from tests.support.ports import held_port
from tests.support.redisproc import RedisProcess, running_redis


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    with running_redis() as proc:
        yield proc


@pytest.fixture
async def pool(redis_server):
    pool = RedisPool(RedisSettings(port=redis_server.port, command_timeout_s=2.0))
    yield pool
    await pool.aclose()


def test_parse_redis_address():
    assert parse_redis_address("localhost:6379") == ("localhost", 6379)
    assert parse_redis_address("[::1]:7000") == ("::1", 7000)
    with pytest.raises(ValueError):
        parse_redis_address("localhost")
    settings = RedisSettings.from_address("10.0.0.5:6380", password="pw", db=2)
    assert (settings.host, settings.port, settings.password, settings.db) == (
        "10.0.0.5",
        6380,
        "pw",
        2,
    )


async def test_commands_and_reply_types(pool):
    assert await pool.execute("SET", "k", b"v\x00\xff") == b"OK"
    assert await pool.execute("GET", "k") == b"v\x00\xff"
    assert await pool.execute("GET", "missing") is None
    assert await pool.execute("INCR", "n") == 1
    assert await pool.execute("SET", "t", "x", "PX", 60_000) == b"OK"
    assert 0 < await pool.execute("PTTL", "t") <= 60_000
    with pytest.raises(RedisReplyError, match="wrong number of arguments"):
        await pool.execute("GET")
    # an error reply leaves the connection in step: it is reused
    assert await pool.execute("GET", "k") == b"v\x00\xff"
    assert pool.statistics()["connections_opened"] == 1


async def test_pipeline_is_one_round_trip_and_keeps_errors_in_place(pool):
    replies = await pool.pipeline([("SET", "a", 1), ("GET", "a"), ("INCR", "a"), ("GET", "a")])
    assert replies == [b"OK", b"1", 2, b"2"]
    assert pool.statistics()["round_trips"] == 1
    replies = await pool.pipeline(
        [("SET", "b", "x"), ("INCR", "b"), ("GET", "b")], raise_on_error=False
    )
    assert replies[0] == b"OK" and isinstance(replies[1], RedisReplyError) and replies[2] == b"x"
    with pytest.raises(RedisReplyError):
        await pool.pipeline([("INCR", "b"), ("GET", "b")])
    assert await pool.execute("GET", "b") == b"x"


async def test_big_values_span_many_reads(pool):
    big = bytes(range(256)) * 8192  # 2 MiB
    await pool.execute("SET", "big", big)
    assert await pool.execute("GET", "big") == big


async def test_concurrent_commands_use_separate_connections_and_then_reuse_them(pool):
    async def worker(i: int) -> None:
        for j in range(20):
            await pool.execute("SET", f"c{i}", j)
            assert await pool.execute("GET", f"c{i}") == str(j).encode()

    async with trio.open_nursery() as nursery:
        for i in range(8):
            nursery.start_soon(worker, i)
    stats = pool.statistics()
    assert stats["in_use"] == 0
    assert stats["idle"] == stats["connections_opened"] <= 8
    assert "idle=" in repr(pool)


async def test_a_timed_out_command_closes_its_connection(redis_server):
    pool = RedisPool(RedisSettings(port=redis_server.port, command_timeout_s=0.2))
    await pool.execute("PING")
    # BLPOP blocks server-side for 5 s: the reply would arrive on a reused connection later
    with pytest.raises(RedisUnavailable, match="no reply"):
        await pool.execute("BLPOP", "nothing", 5)
    stats = pool.statistics()
    assert (stats["timeouts"], stats["connections_closed"], stats["idle"]) == (1, 1, 0)
    await pool.execute("RPUSH", "nothing", "late")  # would have fed the abandoned BLPOP
    assert await pool.execute("LPOP", "nothing") == b"late"
    await pool.aclose()


async def test_a_cancelled_command_closes_its_connection(pool):
    await pool.execute("PING")
    with trio.move_on_after(0.1):
        await pool.execute("BLPOP", "nothing", 1)
    assert pool.statistics()["idle"] == 0
    assert await pool.execute("PING") == b"PONG"


async def test_auth_and_select_on_connect(tmp_path):
    with running_redis(password="s3cret") as proc:
        anonymous = RedisPool(RedisSettings(port=proc.port))
        with pytest.raises(RedisReplyError, match="NOAUTH"):
            await anonymous.execute("GET", "x")
        wrong = RedisPool(RedisSettings(port=proc.port, password="nope"))
        with pytest.raises(RedisUnavailable, match="handshake"):
            await wrong.execute("PING")
        db3 = RedisPool(RedisSettings(port=proc.port, password="s3cret", db=3))
        db0 = RedisPool(RedisSettings(port=proc.port, password="s3cret"))
        await db3.execute("SET", "where", "three")
        assert await db3.execute("GET", "where") == b"three"
        assert await db0.execute("GET", "where") is None
        for pool in (anonymous, wrong, db3, db0):
            await pool.aclose()


async def test_connect_refused_is_unavailable():
    with held_port() as port:  # bound, not listening: connections are refused
        pool = RedisPool(RedisSettings(port=port))
        with pytest.raises(RedisUnavailable, match="cannot connect"):
            await pool.execute("PING")
    assert pool.statistics()["unavailable"] == 1


async def test_a_restarted_redis_costs_no_failed_command(redis_server):
    pool = RedisPool(RedisSettings(port=redis_server.port, command_timeout_s=2.0))
    await pool.execute("SET", "k", "v")
    redis_server.restart()  # the idle connection is now dead
    assert await pool.execute("GET", "k") is None
    assert pool.statistics()["retries"] == 1
    await pool.aclose()


async def test_a_killed_redis_is_unavailable(redis_server):
    pool = RedisPool(RedisSettings(port=redis_server.port))
    await pool.execute("PING")
    redis_server.kill()
    with pytest.raises(RedisUnavailable):
        await pool.execute("PING")
    await pool.aclose()


async def test_subscribe_receives_published_messages(pool):
    async with pool.subscribe("chan") as subscription:
        assert await pool.execute("PUBLISH", "chan", b"hello") == 1
        assert await pool.execute("PUBLISH", "other", b"ignored") == 0
        assert await pool.execute("PUBLISH", "chan", b"world") == 1
        received = [await subscription.__anext__(), await subscription.__anext__()]
    assert received == [(b"chan", b"hello"), (b"chan", b"world")]

    async def unsubscribed() -> bool:  # the exit closes the connection; Redis sees it soon
        return bool(await pool.execute("PUBLISH", "chan", b"gone") == 0)

    await wait_until(unsubscribed)


async def test_subscription_breaks_when_redis_dies(redis_server, pool):
    async with pool.subscribe("chan") as subscription:
        redis_server.kill()
        with pytest.raises(RedisUnavailable):
            async for _ in subscription:
                pass


def stat(pool: RedisPool, name: str) -> int:
    value = pool.statistics()[name]
    assert isinstance(value, int)
    return value


async def test_a_burst_opens_at_most_max_connecting_connections_at_once():
    """Fifty requests and no idle connection (a proxy's first burst): four connects run,
    the others wait for a connection handed back instead of all connecting (and timing out)
    together. ``CLIENT PAUSE`` holds every AUTH, so the connects are pending all at once."""
    with running_redis(password="pw") as proc:
        settings = RedisSettings(port=proc.port, password="pw", command_timeout_s=5.0)
        pool = RedisPool(msgspec.structs.replace(settings, connect_timeout_s=5.0))
        admin = RedisPool(settings)
        await admin.execute("CLIENT", "PAUSE", 500)
        replies: list[object] = []

        async def ping() -> None:
            replies.append(await pool.execute("PING"))

        async with trio.open_nursery() as nursery:
            for _ in range(50):
                nursery.start_soon(ping)

            async def all_waiting_behind_four() -> bool:
                return stat(pool, "connect_waits") >= 46

            await wait_until(all_waiting_behind_four)
            assert pool.statistics()["connecting"] == settings.max_connecting == 4
        assert replies == [b"PONG"] * 50
        assert stat(pool, "peak_connecting") == 4 and stat(pool, "connections_opened") < 50
        await pool.aclose()
        await admin.aclose()


async def test_warm_opens_one_idle_connection_and_tells_when_redis_is_away(redis_server):
    pool = RedisPool(RedisSettings(port=redis_server.port))
    assert await pool.warm()
    assert pool.statistics()["idle"] == 1
    redis_server.kill()
    await pool.aclose()
    pool = RedisPool(RedisSettings(port=redis_server.port))
    assert not await pool.warm()
    await pool.aclose()
