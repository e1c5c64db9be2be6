"""A small Redis client for trio: hiredis parses, trio moves bytes, a pool reuses connections.

redis-py speaks asyncio and threads, not trio. Its own fast path is hiredis, a sans-IO RESP
parser (``hiredis.pack_command`` encodes, ``Reader.feed``/``Reader.gets`` decode, ``gets``
returns a sentinel while a reply is incomplete), so the protocol is not ours to write: this
module only owns connections, timeouts and the pool, as httpcore does for HTTP. It lives in
`httpio` because it is a general client, not the cache's: any process may talk to Redis, and
the loader checks ``Redis_address`` with the same `parse_redis_address` the pool dials by.

The proxy's cache treats Redis as optional, so every failure is fast and named:

- `RedisUnavailable`: could not connect, AUTH/SELECT refused, no reply within
  ``command_timeout_s``, or the connection broke. Callers (the cache's breaker) bypass Redis.
- `RedisReplyError`: Redis answered ``-ERR ...``: the command was wrong; the connection is
  still in step and goes back to the pool.

Timeouts are for a loaded machine, not for a fast Redis. A local Redis answers a GET in
~0.1 ms, but the proxy shares two cores with a dozen processes, and a stall of its event
loop, a GC pause or a busy scheduler shows up as Redis "not answering": at the former 0.2 s
the breaker opened with no Redis fault (36-176 BYPASS answers per path in a soak). The
others give Redis far more: redis-py sets no timeout at all by default, Envoy's Redis proxy
takes its connect timeout from the cluster (5 s by default) and has no default ``op_timeout``,
nginx's redis/redis2 modules wait 60 s to connect, send and read. Redis is optional to the
cache, so every request waits out a hung one until the breaker opens; ``command_timeout_s``
= 0.5 s (5,000 times a GET, 2.5 times the stall that used to trip us) and
``connect_timeout_s`` = 1 s (connects are rare with a pool, and happen when the machine is
busiest: at start and after a Redis restart) keep that wait short and still leave a loaded
machine room. A connect with the handshake has ``connect_timeout_s``; the whole call,
waiting for a connection included, ``connect_timeout_s + command_timeout_s``.

At most ``max_connecting`` connections are opened at once (4, as a burst of requests at
start would otherwise open one each, all competing for the same busy cores and all timing
out together); a request that finds none idle and no connect slot waits for the first
connection handed back, which with pipelined round trips of ~0.1 ms comes soon.

A connection whose reply was not read to the end (timeout, cancellation,
broken stream) is closed, never reused: the next reply on it would answer the wrong command.

A connection taken from the idle list may have died while idle (Redis restarted). A command
that fails that way on a *reused* connection is retried once on a fresh one, after dropping
the whole idle list (a restart kills all of them). The commands the cache sends (GET, SET PX,
UNLINK, SCAN, PUBLISH of an idempotent purge) are safe to repeat.

With ``sentinels`` set, the address is not ``host:port`` but whatever the sentinels say the
primary of ``master_name`` is (`httpio.sentinel.PrimaryFinder`; why not coredis is said
there): the handshake adds ``ROLE`` and refuses a replica, a connection error or a
``READONLY`` reply makes the pool ask again, and connections opened for an older primary
are closed rather than reused. While a failover runs, commands fail fast with
`RedisUnavailable` (the cache's breaker bypasses Redis, counted in its statistics) and
the first command after it finds the new primary, with no restart.

Pub/sub takes a dedicated connection (`RedisPool.subscribe`): once subscribed, RESP2 allows
nothing but (un)subscribe commands on it, and its reads wait without a timeout.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import hiredis
import msgspec
import trio

if TYPE_CHECKING:
    from httpio.sentinel import PrimaryFinder

Arg = bytes | str | int | float
Reply = Any  # bytes | int | None | list[Reply] | RedisReplyError

RECEIVE_SIZE = 65536
_INCOMPLETE = object()


class RedisError(Exception):
    pass


class RedisUnavailable(RedisError):
    """Redis could not be reached, was too slow, or broke the connection."""


class RedisReplyError(RedisError):
    """Redis answered with an error reply: the command (ours) was at fault."""


class RedisSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 6379
    password: str = ""
    db: int = 0
    connect_timeout_s: float = 1.0
    command_timeout_s: float = 0.5
    max_connections: int = 64
    max_connecting: int = 4
    # "host:port" of Redis Sentinels: when set, host/port above are not dialled
    sentinels: tuple[str, ...] = ()
    master_name: str = "mymaster"

    @classmethod
    def from_address(cls, address: str, **fields: Any) -> RedisSettings:
        """``"host:port"`` as config.json writes ``Redis_address``."""
        host, port = parse_redis_address(address)
        return cls(host=host, port=port, **fields)

    def where(self) -> str:
        """Which Redis, for a log line: ``host:port/db``, or the sentinels' primary."""
        if self.sentinels:
            return f"{self.master_name} of {','.join(self.sentinels)}/{self.db}"
        return f"{self.host}:{self.port}/{self.db}"


def parse_redis_address(address: str) -> tuple[str, int]:
    """``host:port`` (an IPv6 host may be bracketed); ValueError for anything else."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"Redis address must be host:port, not {address!r}")
    return host.strip("[]"), int(port)


def _new_reader() -> Any:
    return hiredis.Reader(notEnoughData=_INCOMPLETE, replyError=RedisReplyError)


class RedisConnection:
    """One TCP connection. ``in_step`` is False once a reply may be left unread on it."""

    __slots__ = ("_reader", "_stream", "epoch", "in_step")

    def __init__(self, stream: trio.abc.Stream, epoch: int = 0) -> None:
        self._stream = stream
        self._reader = _new_reader()
        self.in_step = True
        self.epoch = epoch  # of the `PrimaryFinder` when it was opened

    async def send(self, payload: bytes) -> None:
        self.in_step = False
        try:
            await self._stream.send_all(payload)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise RedisUnavailable(f"connection to redis broke: {exc!r}") from exc

    async def receive(self, count: int) -> list[Reply]:
        replies: list[Reply] = []
        reader = self._reader
        try:
            while len(replies) < count:
                reply = reader.gets()
                if reply is _INCOMPLETE:
                    data = await self._stream.receive_some(RECEIVE_SIZE)
                    if not data:
                        raise RedisUnavailable("redis closed the connection")
                    reader.feed(data)
                    continue
                replies.append(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise RedisUnavailable(f"connection to redis broke: {exc!r}") from exc
        except hiredis.ProtocolError as exc:
            raise RedisUnavailable(f"redis protocol error: {exc}") from exc
        return replies

    async def roundtrip(self, payload: bytes, count: int) -> list[Reply]:
        await self.send(payload)
        replies = await self.receive(count)
        self.in_step = True
        return replies

    async def aclose(self) -> None:
        self.in_step = False
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(self._stream)


def _is_primary(role_reply: Reply) -> bool:
    return isinstance(role_reply, list) and bool(role_reply) and role_reply[0] == b"master"


def _is_readonly(reply: Reply) -> bool:
    return isinstance(reply, RedisReplyError) and str(reply).startswith("READONLY")


def pack_commands(commands: Sequence[Sequence[Arg]]) -> bytes:
    return b"".join(hiredis.pack_command(cast(Any, tuple(command))) for command in commands)


class RedisPool:
    """Connections to one Redis, opened on demand, at most ``max_connections`` at once."""

    def __init__(self, settings: RedisSettings) -> None:
        self.settings = settings
        self.finder: PrimaryFinder | None = None
        if settings.sentinels:
            from httpio.sentinel import PrimaryFinder  # it builds on this module

            self.finder = PrimaryFinder(
                settings.sentinels,
                settings.master_name,
                connect_timeout_s=settings.connect_timeout_s,
                command_timeout_s=settings.command_timeout_s,
            )
        self._idle: list[RedisConnection] = []
        self._slots = trio.Semaphore(settings.max_connections)
        self._handed_back = trio.lowlevel.ParkingLot()  # waiting for an idle connection
        self._in_use = 0
        self._connecting = 0
        self._closed = False
        self._stats = {
            "connections_opened": 0,
            "connect_waits": 0,
            "peak_connecting": 0,
            "connections_closed": 0,
            "commands": 0,
            "round_trips": 0,
            "timeouts": 0,
            "unavailable": 0,
            "reply_errors": 0,
            "retries": 0,
            "not_primary": 0,  # ROLE said replica, or a READONLY reply: asked the sentinels
            "stale_closed": 0,  # connections of a former primary, closed instead of reused
        }

    def __repr__(self) -> str:
        s = self.settings
        where = repr(self.finder) if self.finder is not None else f"{s.host}:{s.port}"
        return (
            f"<RedisPool {where}/{s.db} idle={len(self._idle)} "
            f"in_use={self._in_use} opened={self._stats['connections_opened']} "
            f"timeouts={self._stats['timeouts']}>"
        )

    def statistics(self) -> dict[str, object]:
        return {
            "idle": len(self._idle),
            "in_use": self._in_use,
            "connecting": self._connecting,
            **self._stats,
            **({"sentinel": self.finder.statistics()} if self.finder is not None else {}),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The pool's background work until cancelled: following ``+switch-master`` when
        Sentinel is configured (returns at once otherwise)."""
        if self.finder is None:
            task_status.started()
            return
        await self.finder.watch(task_status=task_status)

    # -- connections -------------------------------------------------------------------------
    async def _connect(self) -> RedisConnection:
        s = self.settings
        handshake: list[list[Arg]] = []
        if s.password:
            handshake.append(["AUTH", s.password])
        if s.db:
            handshake.append(["SELECT", s.db])
        host, port, epoch = s.host, s.port, 0
        if self.finder is not None:
            handshake.append(["ROLE"])
        if self.finder is not None:  # each sentinel asked has timeouts of its own
            (host, port), epoch = await self.finder.primary()
        try:
            with trio.fail_after(s.connect_timeout_s):
                stream = await trio.open_tcp_stream(host, port)
                conn = RedisConnection(stream, epoch)
                try:
                    if handshake:
                        replies = await conn.roundtrip(pack_commands(handshake), len(handshake))
                        for reply in replies:
                            if isinstance(reply, RedisReplyError):
                                raise RedisUnavailable(f"redis refused the handshake: {reply}")
                        if self.finder is not None and not _is_primary(replies[-1]):
                            self._stats["not_primary"] += 1
                            raise RedisUnavailable(f"redis {host}:{port} is not the primary")
                except BaseException:
                    await conn.aclose()
                    raise
        except trio.TooSlowError as exc:
            self._forget(epoch)
            raise RedisUnavailable(
                f"no connection to redis {host}:{port} within {s.connect_timeout_s}s"
            ) from exc
        except OSError as exc:
            self._forget(epoch)
            raise RedisUnavailable(f"cannot connect to redis {host}:{port}: {exc}") from exc
        except RedisUnavailable:
            self._forget(epoch)
            raise
        self._stats["connections_opened"] += 1
        return conn

    def _forget(self, epoch: int) -> None:
        if self.finder is not None:
            self.finder.forget(epoch)

    def _is_stale(self, conn: RedisConnection) -> bool:
        return self.finder is not None and conn.epoch != self.finder.epoch

    async def _checkout(self) -> tuple[RedisConnection, bool]:
        """An idle connection (True: reused), or a new one when fewer than
        ``max_connecting`` are being opened; otherwise wait for one to be handed back."""
        while True:
            while self._idle and self._is_stale(self._idle[-1]):
                self._stats["stale_closed"] += 1
                await self._discard(self._idle.pop())
            if self._idle:
                return self._idle.pop(), True
            if self._connecting < self.settings.max_connecting:
                self._connecting += 1
                self._stats["peak_connecting"] = max(
                    self._stats["peak_connecting"], self._connecting
                )
                try:
                    return await self._connect(), False
                finally:
                    self._connecting -= 1
                    self._handed_back.unpark()  # a connect slot is free: one waiter retries
            self._stats["connect_waits"] += 1
            await self._handed_back.park()

    def _hand_back(self, conn: RedisConnection) -> None:
        self._idle.append(conn)
        self._handed_back.unpark()

    async def warm(self) -> bool:
        """Open one connection into the idle list (at start, so that the first requests do
        not all connect at once); False if Redis cannot be reached now."""
        try:
            await self.execute("PING")
        except RedisUnavailable:
            return False
        return True

    async def _discard(self, conn: RedisConnection) -> None:
        self._stats["connections_closed"] += 1
        await conn.aclose()

    async def _drop_idle(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await self._discard(conn)

    # -- commands ----------------------------------------------------------------------------
    async def execute(self, *command: Arg) -> Reply:
        """One command; an error reply is raised as `RedisReplyError`."""
        (reply,) = await self.pipeline([command])
        return reply

    async def pipeline(
        self, commands: Sequence[Sequence[Arg]], *, raise_on_error: bool = True
    ) -> list[Reply]:
        """Send all ``commands`` in one write and read their replies in order (one round
        trip). All replies are read before an error reply is raised, so the connection
        stays usable; with ``raise_on_error=False`` error replies are returned in place."""
        if self._closed:
            raise RedisUnavailable("pool is closed")
        payload = pack_commands(commands)
        self._stats["commands"] += len(commands)
        replies = await self._run(payload, len(commands))
        if raise_on_error:
            for reply in replies:
                if isinstance(reply, RedisReplyError):
                    self._stats["reply_errors"] += 1
                    raise reply
        return replies

    async def _run(self, payload: bytes, count: int) -> list[Reply]:
        timeout = self.settings.command_timeout_s
        try:
            with trio.fail_after(timeout + self.settings.connect_timeout_s):
                async with self._slots:
                    self._in_use += 1
                    try:
                        return await self._run_on_a_connection(payload, count)
                    finally:
                        self._in_use -= 1
        except trio.TooSlowError as exc:
            self._stats["timeouts"] += 1
            self._stats["unavailable"] += 1
            raise RedisUnavailable(f"no reply from redis within {timeout}s") from exc
        except RedisUnavailable:
            self._stats["unavailable"] += 1
            raise

    async def _run_on_a_connection(self, payload: bytes, count: int) -> list[Reply]:
        timeout = self.settings.command_timeout_s
        for attempt in (1, 2):
            conn, reused = await self._checkout()
            try:
                with trio.fail_after(timeout):
                    replies = await conn.roundtrip(payload, count)
                self._stats["round_trips"] += 1
                if self.finder is not None and any(map(_is_readonly, replies)):
                    # a demoted primary still answers: its writes are refused
                    self._stats["not_primary"] += 1
                    self.finder.forget(conn.epoch)
                    conn.in_step = False  # closed below, not handed back
                    raise RedisUnavailable("redis answered READONLY: the primary moved")
                return replies
            except RedisUnavailable:
                if not (reused and attempt == 1):
                    raise
                self._stats["retries"] += 1
                await self._drop_idle()
            finally:
                if conn.in_step and not self._closed and not self._is_stale(conn):
                    self._hand_back(conn)
                else:
                    await self._discard(conn)
        raise AssertionError("unreachable")

    # -- pub/sub -----------------------------------------------------------------------------
    @asynccontextmanager
    async def subscribe(self, *channels: str) -> AsyncIterator[RedisSubscription]:
        """A dedicated connection subscribed to ``channels``; closed on exit."""
        conn = await self._connect()
        try:
            try:
                with trio.fail_after(self.settings.command_timeout_s):
                    await conn.send(pack_commands([("SUBSCRIBE", *channels)]))
                    await conn.receive(len(channels))
            except trio.TooSlowError as exc:
                raise RedisUnavailable("redis did not confirm the subscription") from exc
            yield RedisSubscription(conn)
        finally:
            await self._discard(conn)

    async def aclose(self) -> None:
        self._closed = True
        await self._drop_idle()


class RedisSubscription:
    """Messages of a subscribed connection, as ``(channel, data)``; waits without a timeout
    and raises `RedisUnavailable` when the connection breaks."""

    def __init__(self, conn: RedisConnection) -> None:
        self._conn = conn
        self.received = 0

    def __repr__(self) -> str:
        return f"<RedisSubscription received={self.received}>"

    def __aiter__(self) -> RedisSubscription:
        return self

    async def __anext__(self) -> tuple[bytes, bytes]:
        while True:
            (reply,) = await self._conn.receive(1)
            if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"message":
                self.received += 1
                return bytes(reply[1]), bytes(reply[2])
