"""`httpio.sentinel` and the pool behind it: parsing without sockets, then real primaries,
replicas and sentinels (`tests.support.sentinelproc`) failing over under the pool."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from httpio.redis_client import RedisPool, RedisReplyError, RedisSettings, RedisUnavailable
from httpio.sentinel import PrimaryFinder, parse_master_address, parse_switch_master
from tests.support.polling import wait_until
from tests.support.ports import held_port
from tests.support.sentinelproc import SentinelGroup, command, running_sentinels


# -- sans-IO -----------------------------------------------------------------------------------
def test_parse_master_address() -> None:
    assert parse_master_address([b"10.0.0.4", b"6380"]) == ("10.0.0.4", 6380)
    assert parse_master_address(None) is None
    with pytest.raises(RedisUnavailable):
        parse_master_address([b"10.0.0.4"])
    with pytest.raises(RedisUnavailable):
        parse_master_address([b"h", b"port"])
    with pytest.raises(RedisReplyError):
        parse_master_address(RedisReplyError("ERR unknown"))


def test_parse_switch_master() -> None:
    msg = b"gateway 127.0.0.1 6379 127.0.0.1 6380"
    assert parse_switch_master(msg, "gateway") == ("127.0.0.1", 6380)
    assert parse_switch_master(msg, "other") is None
    assert parse_switch_master(b"gateway 127.0.0.1", "gateway") is None


def test_forgetting_an_older_epoch_changes_nothing() -> None:
    finder = PrimaryFinder(["127.0.0.1:1"], "gateway")
    finder._set(("127.0.0.1", 7000))
    epoch = finder.epoch
    finder.forget(epoch - 1)
    assert finder.statistics()["primary"] == "127.0.0.1:7000"
    finder.forget(epoch)
    assert finder.statistics()["primary"] is None and finder.epoch == epoch + 1
    assert "gateway" in repr(finder)
    with pytest.raises(ValueError):
        PrimaryFinder([], "gateway")


# -- real sentinels ----------------------------------------------------------------------------
@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    with running_sentinels() as group:
        yield group


def pool_for(sentinels: list[str], name: str = "gateway") -> RedisPool:
    return RedisPool(
        RedisSettings(sentinels=tuple(sentinels), master_name=name, command_timeout_s=2.0)
    )


async def test_the_pool_finds_the_primary_skipping_a_dead_sentinel(group: SentinelGroup) -> None:
    with held_port() as dead:
        pool = pool_for([f"127.0.0.1:{dead}", *group.sentinel_addresses])
        try:
            assert await pool.execute("SET", "k", "v") == b"OK"
            assert await pool.execute("GET", "k") == b"v"
            stats = pool.statistics()["sentinel"]
            assert isinstance(stats, dict)
            assert stats["primary"] == group.primary.address
            assert stats["sentinel_errors"] == 1 and stats["discoveries"] == 1
            assert stats["sentinels"][0] == group.sentinel_addresses[0]  # the one that answered
            assert "PrimaryFinder" in repr(pool)
        finally:
            await pool.aclose()


async def test_an_unknown_master_name_is_unavailable(group: SentinelGroup) -> None:
    pool = pool_for(group.sentinel_addresses, name="nobody")
    try:
        with pytest.raises(RedisUnavailable, match="does not know"):
            await pool.execute("PING")
    finally:
        await pool.aclose()


async def test_a_replica_named_as_primary_is_refused(group: SentinelGroup) -> None:
    pool = pool_for(group.sentinel_addresses)
    assert pool.finder is not None
    pool.finder._set(("127.0.0.1", group.replica.port))  # a sentinel that is behind
    try:
        with pytest.raises(RedisUnavailable, match="not the primary"):
            await pool.execute("SET", "k", "v")
        assert await pool.execute("SET", "k", "v") == b"OK"  # asked the sentinels again
        assert pool.statistics()["not_primary"] == 1
    finally:
        await pool.aclose()


async def test_sigkill_of_the_primary_fails_over_without_a_restart(group: SentinelGroup) -> None:
    """Commands fail fast while the sentinels decide, then reach the promoted replica on
    the same pool; the watcher saw +switch-master."""
    pool = pool_for(group.sentinel_addresses)
    old = group.primary.port
    results = {"ok": 0, "unavailable": 0}
    stop = trio.Event()

    async def load() -> None:
        while not stop.is_set():
            try:
                await pool.execute("SET", "k", "v")
                results["ok"] += 1
            except RedisUnavailable:
                results["unavailable"] += 1
            await trio.sleep(0.01)

    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            nursery.start_soon(load)
            await wait_until(lambda: results["ok"] > 5)
            group.primary.kill()
            new = await trio.to_thread.run_sync(group.wait_for_failover, old)
            assert new == group.replica.port
            ok_after = results["ok"]
            await wait_until(lambda: results["ok"] > ok_after + 5, timeout_s=30)
            stop.set()
            nursery.cancel_scope.cancel()
        stats = pool.statistics()
        sentinel = stats["sentinel"]
        assert isinstance(sentinel, dict) and sentinel["primary"] == f"127.0.0.1:{new}"
        assert await pool.execute("GET", "k") == b"v"
        assert command("127.0.0.1", new, "GET", "k") == b"v"
        assert results["unavailable"] >= 1
    finally:
        await pool.aclose()


async def test_a_planned_failover_moves_writes_to_the_new_primary(group: SentinelGroup) -> None:
    """SENTINEL FAILOVER demotes a live primary: its connections are killed or answer
    READONLY, and the pool follows either way."""
    pool = pool_for(group.sentinel_addresses)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.run)
            assert await pool.execute("SET", "k", "1") == b"OK"
            reply = command(
                group.sentinels[0].host, group.sentinels[0].port, "SENTINEL", "failover", "gateway"
            )
            assert reply == b"OK"
            await trio.to_thread.run_sync(group.wait_for_failover, group.primary.port)

            async def lands_on_the_new_primary() -> bool:
                """A write made just as the sentinels switch may still reach the old primary
                (Redis's own window): keep writing until one lands on the new one."""
                try:
                    await pool.execute("SET", "k", "2")
                except RedisUnavailable:
                    return False
                return bool(command("127.0.0.1", group.replica.port, "GET", "k") == b"2")

            await wait_until(lands_on_the_new_primary, timeout_s=30, interval_s=0.05)
            sentinel = pool.statistics()["sentinel"]
            assert isinstance(sentinel, dict)
            assert sentinel["primary"] == group.replica.address and sentinel["epoch"] >= 2
            nursery.cancel_scope.cancel()
    finally:
        await pool.aclose()
