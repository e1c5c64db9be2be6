"""Finding a Redis primary through Sentinel, for `httpio.redis_client.RedisPool`.

Redis Sentinel (https://redis.io/docs/latest/operate/oss_and_stack/management/sentinel/)
watches a primary and its replicas and, when the primary is down for its quorum, promotes a
replica. Clients follow the protocol of "Sentinel clients"
(https://redis.io/docs/latest/develop/reference/sentinel-clients/), which this module keeps:

1. Ask the sentinels in order for ``SENTINEL get-master-addr-by-name NAME``; the first that
   answers moves to the front of the list (as redis-py and Jedis do), a sentinel that does not
   answer within the timeouts is skipped.
2. Connect to that address and check ``ROLE`` says ``master`` (the pool does it in its
   handshake: a sentinel may be behind, and a demoted primary is still reachable).
3. Ask again after a connection error, a ``ROLE`` that is not ``master``, or a ``READONLY``
   reply (the pool calls `PrimaryFinder.forget`), and when a sentinel publishes
   ``+switch-master`` on its pub/sub (`PrimaryFinder.watch`, a background task).

Each change of address bumps ``epoch``; the pool closes the connections it opened in an
older epoch instead of reusing them, so no command lands on a demoted primary twice.

Why not coredis, which speaks Sentinel on anyio (so on trio): on one task it did a GET at
1/2 to 1/3 of our client's rate here (issue 16), and the cache's GET is on every cached
request's path. Discovery is a few commands at failover time, so it is written here, on the
same `RedisConnection`, and the hot path is unchanged.

The parsing (`parse_master_address`, `parse_switch_master`) is sans-IO and tested without
sockets; tests/httpio/test_sentinel.py fails a real primary over under real sentinels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import trio

from httpio.redis_client import (
    RedisConnection,
    RedisReplyError,
    RedisUnavailable,
    pack_commands,
    parse_redis_address,
)

SWITCH_CHANNEL = "+switch-master"
# After a sentinel's pub/sub broke: wait this long before trying the next one, so a watcher
# with every sentinel down does not spin (they are optional to it: commands still
# re-discover on errors).
WATCH_RETRY_S = 1.0


def parse_master_address(reply: Any) -> tuple[str, int] | None:
    """The reply of ``SENTINEL get-master-addr-by-name``: ``[host, port]``, or nil when the
    sentinel does not know the name."""
    if reply is None:
        return None
    if isinstance(reply, RedisReplyError):
        raise reply
    if not (isinstance(reply, list) and len(reply) == 2):
        raise RedisUnavailable(f"sentinel answered {reply!r} for a primary's address")
    host, port = (bytes(part).decode() for part in reply)
    if not port.isdigit():
        raise RedisUnavailable(f"sentinel answered port {port!r}")
    return host, int(port)


def parse_switch_master(data: bytes, master_name: str) -> tuple[str, int] | None:
    """The new primary in a ``+switch-master`` message (``name old-ip old-port new-ip
    new-port``) when it concerns ``master_name``; None otherwise."""
    parts = data.decode(errors="replace").split()
    if len(parts) != 5 or parts[0] != master_name or not parts[4].isdigit():
        return None
    return parts[3], int(parts[4])


class PrimaryFinder:
    """Where ``master_name``'s primary is now, by the sentinels' word; see the module header."""

    def __init__(
        self,
        sentinels: Sequence[str],
        master_name: str,
        *,
        connect_timeout_s: float = 1.0,
        command_timeout_s: float = 0.5,
    ) -> None:
        if not sentinels:
            raise ValueError("a PrimaryFinder needs at least one sentinel")
        self.master_name = master_name
        self._sentinels = [parse_redis_address(s) for s in sentinels]
        self._connect_timeout_s = connect_timeout_s
        self._command_timeout_s = command_timeout_s
        self._primary: tuple[str, int] | None = None
        self.epoch = 0
        self._asking = trio.Lock()  # one discovery at a time; the others wait for its answer
        self._stats = {"discoveries": 0, "sentinel_errors": 0, "switches": 0, "forgotten": 0}

    def __repr__(self) -> str:
        return (
            f"<PrimaryFinder {self.master_name!r} primary={self._format(self._primary)}"
            f" epoch={self.epoch} sentinels={len(self._sentinels)}>"
        )

    @staticmethod
    def _format(address: tuple[str, int] | None) -> str | None:
        return None if address is None else f"{address[0]}:{address[1]}"

    def statistics(self) -> dict[str, object]:
        return {
            "master_name": self.master_name,
            "primary": self._format(self._primary),
            "epoch": self.epoch,
            "sentinels": [self._format(s) for s in self._sentinels],
            **self._stats,
        }

    # -- state changes -------------------------------------------------------------------------
    def _set(self, address: tuple[str, int] | None) -> None:
        if address != self._primary:
            self._primary = address
            self.epoch += 1

    def forget(self, epoch: int) -> None:
        """The primary of ``epoch`` failed us (unreachable, a replica, READONLY): ask the
        sentinels again next time. A failure from an older epoch changes nothing."""
        if epoch == self.epoch and self._primary is not None:
            self._stats["forgotten"] += 1
            self._set(None)

    # -- discovery -----------------------------------------------------------------------------
    async def primary(self) -> tuple[tuple[str, int], int]:
        """The primary's address and its epoch; asks the sentinels when it is not known.
        `RedisUnavailable` when no sentinel knows it."""
        if self._primary is not None:
            return self._primary, self.epoch
        async with self._asking:
            if self._primary is None:
                self._set(await self._discover())
            assert self._primary is not None
            return self._primary, self.epoch

    async def _discover(self) -> tuple[str, int]:
        errors: list[str] = []
        for index, (host, port) in enumerate(list(self._sentinels)):
            try:
                found = await self._ask(host, port)
            except (RedisUnavailable, RedisReplyError, OSError, trio.TooSlowError) as exc:
                self._stats["sentinel_errors"] += 1
                errors.append(f"{host}:{port}: {exc}")
                continue
            if found is None:
                errors.append(f"{host}:{port}: does not know {self.master_name!r}")
                continue
            self._stats["discoveries"] += 1
            if index:  # the sentinel that answered is asked first from now on
                self._sentinels.insert(0, self._sentinels.pop(index))
            return found
        raise RedisUnavailable(f"no sentinel knows the primary: {'; '.join(errors)}")

    async def _open(self, host: str, port: int) -> RedisConnection:
        with trio.fail_after(self._connect_timeout_s):
            return RedisConnection(await trio.open_tcp_stream(host, port))

    async def _ask(self, host: str, port: int) -> tuple[str, int] | None:
        conn = await self._open(host, port)
        try:
            with trio.fail_after(self._command_timeout_s):
                (reply,) = await conn.roundtrip(
                    pack_commands([("SENTINEL", "get-master-addr-by-name", self.master_name)]), 1
                )
            return parse_master_address(reply)
        finally:
            await conn.aclose()

    # -- following a failover ------------------------------------------------------------------
    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Follow ``+switch-master`` on one sentinel at a time until cancelled; reports
        started at once (the watcher is an optimisation: errors re-discover anyway)."""
        task_status.started()
        index = 0
        while True:
            host, port = self._sentinels[index % len(self._sentinels)]
            index += 1
            try:
                conn = await self._open(host, port)
            except (OSError, trio.TooSlowError):
                self._stats["sentinel_errors"] += 1
                await trio.sleep(WATCH_RETRY_S)
                continue
            try:
                await conn.send(pack_commands([("SUBSCRIBE", SWITCH_CHANNEL)]))
                while True:
                    (reply,) = await conn.receive(1)
                    if not (isinstance(reply, list) and len(reply) == 3):
                        continue
                    if reply[0] != b"message":
                        continue
                    new = parse_switch_master(bytes(reply[2]), self.master_name)
                    if new is not None:
                        self._stats["switches"] += 1
                        self._set(new)
            except RedisUnavailable:
                self._stats["sentinel_errors"] += 1
            finally:
                await conn.aclose()
            await trio.sleep(WATCH_RETRY_S)
