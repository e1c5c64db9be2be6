"""Two WebSocket connections joined frame by frame: the client's and the upstream's, after the 101.

A byte pipe would be cheaper, but a gateway must be able to end a WebSocket with a reason: a
message over ``max_message_bytes`` (1009, logged: a silent drop at 64 KiB is a common complaint
about other proxies), no frame either way for ``idle_timeout_s``, a peer that stops answering
the pings sent every ``ping_interval_s`` (dead peers are found, and NAT entries kept warm: a
Traefik complaint is that dead peers are never noticed), ``max_lifetime_s``, and whatever the
caller asks through `Relay.close` (a revoked token: 1008; a drain: 1001). `httpio.ws_frames`
parses and writes the frames (the proxy is the server on the client's leg and the client,
masking, on the upstream's); messages are passed on fragment by fragment as they arrive, so a
1 MiB message is never held whole, and its size is counted on the way.

Pings and pongs are per leg: each leg's pings are answered by the proxy, and the proxy's own
pings (payload ``PING_PAYLOAD``) go to both legs. Only data and pings from a peer count as
activity for ``idle_timeout_s`` (a pong answering our ping does not, or the pings would keep
every idle socket open); any frame from a leg shows it alive.

What an idle pair costs is what 10,000 of them cost (the target: one proxy under 150 MB): an
idle leg has no task. The relay's own task (the connection's) waits for the end; a leg's bytes
are read by a task started when they come, which reads until the kernel has no more and then
hands the socket back to the process's `Readiness`: one task waiting, through an epoll set of
its own, on every idle socket (a task parked in `trio.lowlevel.wait_readable` per leg was ~1.7
KiB with its frames and trio's registration). The lock that keeps a leg's frames in order
exists only while a write waits. The timers and the ``checks`` (a token decided again) need no
task either: a process-wide `RelayClock` ticks every ``tick_s`` and calls ``tick`` on each
relay (a sleeping task per timer per relay was ~2 KiB each). A relay without a running
`Readiness`, or over streams that are not sockets (unit tests), keeps a reading task per leg;
one without a clock runs its own timer task. Measured with tracemalloc and
``sys._debugmallocstats`` in a proxy holding 1,000 idle pairs: see bench/RESULTS.md,
"WebSockets".

Closing (RFC 6455 7): a close from one side is answered to it and passed to the other with its
code (`httpio.websocket.wire_close_code`: never 1005/1006/1015 on the wire); a close the relay
starts is sent to both legs; then the relay waits ``close_grace_s`` for the replies and closes
both TCP connections. A leg that vanishes without a close frame gets the other side told 1001
(the client went away) or 1011 (the upstream failed), `lost_peer_code`.
"""

from __future__ import annotations

import select
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio

from httpio import sockio
from httpio.websocket import (
    GOING_AWAY,
    MESSAGE_TOO_BIG,
    Side,
    close_reason,
    lost_peer_code,
    wire_close_code,
)
from httpio.ws_frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    PONG,
    TEXT,
    Close,
    Data,
    Event,
    FrameError,
    FrameReader,
    Ping,
    close_payload,
    frame,
)

log = structlog.get_logger()

RECEIVE_SIZE = 65536
PING_PAYLOAD = b"gateway"

# A leg's close handshake (RFC 6455 7.1): what wsproto's ConnectionState said, in four ints.
OPEN, LOCAL_CLOSING, REMOTE_CLOSING, CLOSED = range(4)


@dataclass(frozen=True, slots=True)
class RelayLimits:
    """Per-service limits of a relay (0 switches a timer off)."""

    idle_timeout_s: float = 300.0
    max_message_bytes: int = 1 << 20
    max_lifetime_s: float = 0.0
    ping_interval_s: float = 30.0
    close_grace_s: float = 2.0
    send_timeout_s: float = 30.0
    check_interval_s: float = 1.0  # how often the ``checks`` run (a token decided again)


class Waker(Protocol):
    def wake(self) -> None: ...


class Readiness:
    """Readability of many sockets, waited on by one task: an epoll set of its own (Linux),
    itself waited on in trio, readable when one of its sockets is. ``watch(fd, waker)`` calls
    ``waker.wake()`` once, when ``fd`` has bytes or its peer closed; ``forget`` it before
    closing ``fd``. The waker is stored as it is (a leg), so an idle socket costs a dict entry."""

    __slots__ = ("_epoll", "_waiting")

    def __init__(self) -> None:
        self._epoll: select.epoll | None = None
        self._waiting: dict[int, Waker] = {}

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<Readiness {state} waiting={len(self._waiting)}>"

    def statistics(self) -> dict[str, object]:
        return {"running": self.running, "waiting": len(self._waiting)}

    @property
    def running(self) -> bool:
        return self._epoll is not None

    def watch(self, fd: int, waker: Waker) -> None:
        assert self._epoll is not None, "Readiness.run is not running"
        self._epoll.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
        self._waiting[fd] = waker

    def forget(self, fd: int) -> None:
        if self._waiting.pop(fd, None) is not None and self._epoll is not None:
            self._epoll.unregister(fd)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not hasattr(select, "epoll"):
            task_status.started()  # not Linux: relays keep a reading task per leg
            return
        epoll = self._epoll = select.epoll()
        task_status.started()
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _ in epoll.poll(0):
                    waker = self._waiting.pop(fd, None)
                    if waker is not None:
                        epoll.unregister(fd)
                        waker.wake()
        finally:
            # Stopped before the relays (a shutdown's order): each waiting leg is woken, and
            # finding no Readiness running, waits for its bytes in a task of its own.
            waiting, self._waiting = self._waiting, {}
            self._epoll = None
            epoll.close()
            for waker in waiting.values():
                waker.wake()


class _Leg:
    __slots__ = (
        "awaiting_pong",
        "failed",
        "gone",
        "lock",
        "masks",
        "message_bytes",
        "reader",
        "received",
        "relay",
        "side",
        "sock",
        "state",
        "stream",
        "trailing",
    )

    def __init__(self, relay: Relay, side: Side, stream: trio.abc.Stream, trailing: bytes) -> None:
        self.relay = relay
        self.side = side
        self.stream = stream
        self.sock = stream.socket if isinstance(stream, trio.SocketStream) else None
        self.trailing = trailing
        # The proxy is the server on the client's leg (its frames come masked) and the client,
        # masking what it sends, on the upstream's (RFC 6455 5.3).
        self.masks = side is Side.UPSTREAM
        self.reader = FrameReader(masked=side is Side.CLIENT)
        self.state = OPEN
        self.lock: trio.StrictFIFOLock | None = None  # while a write waits: later ones queue
        self.message_bytes = 0  # of the message being received
        self.awaiting_pong = False
        self.gone = False  # its TCP connection ended or failed
        self.failed = False  # it broke the protocol: no reply to our close is waited for
        self.received = 0  # bytes read off its stream: the access log's bytes (issue 12)

    @property
    def settled(self) -> bool:
        return self.gone or self.state == CLOSED

    def wake(self) -> None:
        """Its socket has bytes (`Readiness`): a task reads them."""
        self.relay._woken(self)


Check = Callable[["Relay"], None]


class RelayClock:
    """The timers of every relay in a process, in one task: ``tick`` on each every ``tick_s``
    (so a timer fires up to ``tick_s`` late: 1 s against limits of seconds to minutes)."""

    def __init__(self, tick_s: float = 1.0) -> None:
        self.tick_s = tick_s
        self.relays: set[Relay] = set()

    def __repr__(self) -> str:
        return f"<RelayClock tick_s={self.tick_s:g} relays={len(self.relays)}>"

    def statistics(self) -> dict[str, object]:
        return {"tick_s": self.tick_s, "relays": len(self.relays)}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.tick_s)
            now = trio.current_time()
            for relay in list(self.relays):
                relay.tick(now)


class Relay:
    """One joined pair; ``run()`` until it ends. ``close(code, reason)`` ends it from outside."""

    __slots__ = (
        "_checks",
        "_clock",
        "_last_frame",
        "_next_check",
        "_next_ping",
        "_nursery",
        "_readiness",
        "_started",
        "client",
        "close_codes",
        "close_why",
        "closing",
        "limits",
        "messages",
        "name",
        "upstream",
    )

    def __init__(
        self,
        client: trio.abc.Stream,
        client_trailing: bytes,
        upstream: trio.abc.Stream,
        upstream_trailing: bytes,
        limits: RelayLimits,
        *,
        name: str = "relay",
        clock: RelayClock | None = None,
        checks: tuple[Check, ...] = (),
        readiness: Readiness | None = None,
    ) -> None:
        self.limits = limits
        self.name = name
        self._clock = clock
        self._checks = checks
        self._readiness = readiness
        self.client = _Leg(self, Side.CLIENT, client, client_trailing)
        self.upstream = _Leg(self, Side.UPSTREAM, upstream, upstream_trailing)
        self.messages = {Side.CLIENT: 0, Side.UPSTREAM: 0}  # received from that side
        self.closing = False
        self.close_codes: dict[Side, int | None] = {}  # what the relay sent each leg
        self.close_why = ""
        self._nursery: trio.Nursery | None = None
        self._last_frame = 0.0
        self._started = 0.0
        self._next_ping = 0.0
        self._next_check = 0.0

    def __repr__(self) -> str:
        state = "closing" if self.closing else "open"
        return f"<Relay {self.name} {state} messages={self.messages[Side.CLIENT]}/{self.messages[Side.UPSTREAM]}>"

    def statistics(self) -> dict[str, object]:
        return {
            "name": self.name,
            "closing": self.closing,
            "from_client": self.messages[Side.CLIENT],
            "from_upstream": self.messages[Side.UPSTREAM],
            "close_codes": {s.value: c for s, c in self.close_codes.items()},
            "close_why": self.close_why,
        }

    # -- control from outside ----------------------------------------------------------------
    def close(self, code: int, reason: str) -> None:
        """Close both legs with ``code`` (a drain, a revoked token); a no-op once closing."""
        self._begin_close({Side.CLIENT: code, Side.UPSTREAM: code}, reason)

    def close_after(self, delay_s: float, code: int, reason: str) -> None:
        """``close`` in ``delay_s`` unless the relay has ended by then."""
        if self._nursery is not None and not self.closing:
            self._nursery.start_soon(self._close_later, delay_s, code, reason)

    async def _close_later(self, delay_s: float, code: int, reason: str) -> None:
        await trio.sleep(delay_s)
        self.close(code, reason)

    def start_soon(self, fn: Callable[..., object], *args: object) -> None:
        """Run ``fn(*args)`` in the relay's nursery (a check that must wait), if still open."""
        if self._nursery is not None and not self.closing:
            self._nursery.start_soon(fn, *args)  # type: ignore[arg-type]

    # -- the run ---------------------------------------------------------------------------
    async def run(self) -> None:
        """Relay until both legs are closed; the streams are closed when it returns. The
        calling task only waits: each leg's bytes are read by a task of their own while they
        come (see the module header)."""
        now = trio.current_time()
        self._started = self._last_frame = now
        self._next_ping = now + self.limits.ping_interval_s
        self._next_check = now + self.limits.check_interval_s
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._pump, self.client)
                nursery.start_soon(self._pump, self.upstream)
                if self._clock is None:
                    nursery.start_soon(self._own_clock)
                else:
                    self._clock.relays.add(self)
                await trio.sleep_forever()  # until _finish cancels the nursery
        finally:
            self._nursery = None
            if self._clock is not None:
                self._clock.relays.discard(self)
            for leg in (self.upstream, self.client):
                if leg.sock is not None and self._readiness is not None:
                    self._readiness.forget(leg.sock.fileno())
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.upstream.stream)
                await trio.aclose_forcefully(self.client.stream)

    def _finish(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _other(self, leg: _Leg) -> _Leg:
        return self.upstream if leg is self.client else self.client

    def _woken(self, leg: _Leg) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self._pump, leg)

    async def _pump(self, src: _Leg) -> None:
        """Frames from ``src`` until the kernel has no more bytes of it (then the socket goes
        back to the `Readiness`, and this task ends) or it is settled."""
        dst = self._other(src)
        data, src.trailing = src.trailing, b""
        readiness = self._readiness
        watched = src.sock is not None and readiness is not None and readiness.running
        while True:
            if data:
                src.awaiting_pong = False
                src.reader.receive(data)
                try:
                    while (event := src.reader.next_event()) is not None:
                        await self._on_event(src, dst, event)
                except FrameError as err:
                    self._failed(src, dst, err)
                    return
            if src.settled:
                self._check_settled()
                return
            try:
                if watched:
                    assert src.sock is not None and readiness is not None
                    got = sockio.try_receive(src.sock, RECEIVE_SIZE)
                    if got is None and readiness.running:
                        readiness.watch(src.sock.fileno(), src)
                        return
                    if got is None:  # the Readiness stopped (a shutdown): wait here instead
                        got = await sockio.receive(src.sock, RECEIVE_SIZE)
                    else:
                        await trio.lowlevel.checkpoint()  # a peer that never pauses yields here
                else:
                    got = await _receive(src.stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                got = b""
            if not got:
                src.gone = True
                self._lost(src, "closed without a close frame")
                return
            data = got
            src.received += len(data)

    async def _on_event(self, src: _Leg, dst: _Leg, event: Event) -> None:
        if isinstance(event, Data):
            if self.closing or src.state != OPEN:
                return  # a close is under way: nothing more goes across
            self._last_frame = trio.current_time()
            src.message_bytes += len(event.payload)
            limit = self.limits.max_message_bytes
            if src.message_bytes > limit:
                log.warning(
                    "websocket_message_too_big",
                    relay=self.name,
                    sender=src.side.value,
                    limit=limit,
                    received=src.message_bytes,
                )
                why = f"message exceeds {limit} bytes"
                self._begin_close(
                    {Side.CLIENT: MESSAGE_TOO_BIG, Side.UPSTREAM: MESSAGE_TOO_BIG}, why
                )
                return
            if event.last:
                src.message_bytes = 0
                self.messages[src.side] += 1
            opcode = (TEXT if event.text else BINARY) if event.first else CONTINUATION
            if not await self._send(dst, opcode, event.payload, fin=event.last):
                self._lost(dst, "failed while being written to")
        elif isinstance(event, Ping):
            self._last_frame = trio.current_time()
            await self._send(src, PONG, event.payload)
        elif isinstance(event, Close):
            if src.state == OPEN:  # the peer starts the close: answered with its code
                src.state = REMOTE_CLOSING
                await self._send(src, CLOSE, close_payload(event.code, event.reason))
                self._begin_close({dst.side: wire_close_code(event.code)}, event.reason)
            elif src.state == LOCAL_CLOSING:  # its answer to ours
                src.state = CLOSED
            self._check_settled()
        # a Pong: src.awaiting_pong was cleared when its bytes came

    def _failed(self, src: _Leg, dst: _Leg, err: FrameError) -> None:
        """``src`` broke the protocol: it gets ``err.code`` (RFC 6455 7.1.7), the other side
        what it would get had ``src`` vanished."""
        log.info(
            "websocket_protocol_error", relay=self.name, sender=src.side.value, error=err.detail
        )
        src.failed = True
        if self.closing:
            src.state = CLOSED
            self._check_settled()
            return
        reason = f"{src.side.value}: {err.detail}"
        self._begin_close({src.side: err.code, dst.side: lost_peer_code(src.side)}, reason)

    def _lost(self, leg: _Leg, what: str) -> None:
        if not self.closing:
            other = self._other(leg)
            self._begin_close({other.side: lost_peer_code(leg.side)}, f"{leg.side.value} {what}")
        self._check_settled()

    async def _send(self, leg: _Leg, opcode: int, payload: bytes, *, fin: bool = True) -> bool:
        """Write one frame to ``leg``; False (and the leg marked gone) when it cannot take it.
        A frame its close handshake no longer allows is not sent (True)."""
        if leg.gone:
            return False
        if opcode == CLOSE:
            if leg.state == OPEN:
                leg.state = LOCAL_CLOSING
            elif leg.state == REMOTE_CLOSING:
                leg.state = CLOSED
            else:
                return True
        elif leg.state != OPEN:
            return True
        await self._write(leg, frame(opcode, payload, fin=fin, mask=leg.masks))
        return not leg.gone

    async def _write(self, leg: _Leg, data: bytes) -> None:
        sent = 0
        sock = leg.sock
        if leg.lock is None and sock is not None:
            try:
                sent = sockio.try_send(sock, data)  # the common case: no wait, no lock
            except OSError:
                leg.gone = True
                return
            if sent == len(data):
                return
        lock = leg.lock
        if lock is None:
            lock = leg.lock = trio.StrictFIFOLock()
        try:
            async with lock:
                with trio.move_on_after(self.limits.send_timeout_s) as waited:
                    try:
                        if sock is not None:
                            await sockio.send_all(sock, data, sent)
                        else:
                            await leg.stream.send_all(data)
                    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                        leg.gone = True
                if waited.cancelled_caught:
                    leg.gone = True
        finally:
            if leg.lock is lock and not lock.locked():
                leg.lock = None  # no writer waits: an idle leg keeps no lock

    # -- closing -----------------------------------------------------------------------------
    def _begin_close(self, codes: dict[Side, int | None], reason: str) -> None:
        if self.closing:
            return
        self.closing = True
        self.close_why = reason
        if self._nursery is None:
            return
        self._nursery.start_soon(self._close_legs, codes, close_reason(reason))

    async def _close_legs(self, codes: dict[Side, int | None], reason: str) -> None:
        for leg in (self.client, self.upstream):
            if leg.gone or leg.state != OPEN:
                continue
            code = wire_close_code(codes.get(leg.side, GOING_AWAY))
            self.close_codes[leg.side] = code
            await self._send(leg, CLOSE, close_payload(code, reason))
            if leg.failed:
                leg.state = CLOSED  # a peer that broke the protocol is not waited for
        self._check_settled()
        # Both legs settled cancels this wait with the relay (`_finish`); else the grace ends.
        await trio.sleep(self.limits.close_grace_s)
        self._finish()

    def _check_settled(self) -> None:
        if self.client.settled and self.upstream.settled:
            if not self.closing:
                self.closing = True
            self._finish()

    # -- timers ------------------------------------------------------------------------------
    def _next_deadline(self) -> float:
        limits = self.limits
        deadlines = [self._next_check] if self._checks else []
        if limits.idle_timeout_s > 0:
            deadlines.append(self._last_frame + limits.idle_timeout_s)
        if limits.max_lifetime_s > 0:
            deadlines.append(self._started + limits.max_lifetime_s)
        if limits.ping_interval_s > 0:
            deadlines.append(self._next_ping)
        return min(deadlines, default=float("inf"))

    async def _own_clock(self) -> None:
        """The timers, for a relay no `RelayClock` ticks."""
        while not self.closing:
            await trio.sleep_until(self._next_deadline())
            self.tick(trio.current_time())

    def tick(self, now: float) -> None:
        """Idle, lifetime, pings and checks due at ``now``; what must wait runs in a task."""
        limits = self.limits
        if self.closing or self._nursery is None:
            return
        if limits.idle_timeout_s > 0 and now >= self._last_frame + limits.idle_timeout_s:
            self.close(GOING_AWAY, f"idle for {limits.idle_timeout_s:g} s")
            return
        if limits.max_lifetime_s > 0 and now >= self._started + limits.max_lifetime_s:
            self.close(GOING_AWAY, f"open for {limits.max_lifetime_s:g} s, the limit")
            return
        if limits.ping_interval_s > 0 and now >= self._next_ping:
            for leg in (self.client, self.upstream):
                if leg.awaiting_pong:
                    self._lost(leg, "did not answer a ping")
                    return
            self._next_ping = now + limits.ping_interval_s
            self._nursery.start_soon(self._ping_legs)
        if self._checks and now >= self._next_check:
            self._next_check = now + limits.check_interval_s
            for check in self._checks:
                check(self)
                if self.closing:
                    return

    async def _ping_legs(self) -> None:
        for leg in (self.client, self.upstream):
            leg.awaiting_pong = True
            if not await self._send(leg, PING, PING_PAYLOAD):
                self._lost(leg, "failed while being pinged")
                return


async def _receive(stream: trio.abc.Stream) -> bytes:
    """The next bytes from ``stream``: on a socket, a raw read (`httpio.sockio`), waiting in
    `trio.lowlevel.wait_readable` only; bytes already there still cost a checkpoint, so a
    peer that never pauses cannot hold the event loop."""
    if isinstance(stream, trio.SocketStream):
        data = sockio.try_receive(stream.socket, RECEIVE_SIZE)
        if data is None:
            return await sockio.receive(stream.socket, RECEIVE_SIZE)
        await trio.lowlevel.checkpoint()
        return data
    return bytes(await stream.receive_some(RECEIVE_SIZE))
