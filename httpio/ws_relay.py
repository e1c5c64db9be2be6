"""Two WebSocket connections joined frame by frame: the client's and the upstream's, after the 101.

A byte pipe would be cheaper, but a gateway must be able to end a WebSocket with a reason: a
message over ``max_message_bytes`` (1009, logged: a silent drop at 64 KiB is a common complaint
about other proxies), no frame either way for ``idle_timeout_s``, a peer that stops answering
the pings sent every ``ping_interval_s`` (dead peers are found, and NAT entries kept warm: a
Traefik complaint is that dead peers are never noticed), ``max_lifetime_s``, and whatever the
caller asks through `Relay.close` (a revoked token: 1008; a drain: 1001). wsproto parses and
writes the frames (the proxy is the server on the client's leg and the client, masking, on the
upstream's); messages are passed on fragment by fragment as they arrive, so a 1 MiB message is
never held whole, and its size is counted on the way.

Pings and pongs are per leg: each leg's pings are answered by the proxy, and the proxy's own
pings (payload ``PING_PAYLOAD``) go to both legs. Only data and pings from a peer count as
activity for ``idle_timeout_s`` (a pong answering our ping does not, or the pings would keep
every idle socket open); any frame from a leg shows it alive.

What an idle pair costs is what 10,000 of them cost (the target: one proxy under 150 MB): a
relay is the connection's own task (client -> upstream) plus one more (upstream -> client), each
parked in `trio.lowlevel.wait_readable` on the raw socket (`httpio.sockio`: trio's
``SocketStream.receive_some`` keeps ~3 KiB of conflict detector, context managers and cancel
scopes alive per waiting read). The timers and the ``checks`` (a token decided again) need no
task of their own: a process-wide `RelayClock` ticks every ``tick_s`` and calls ``tick`` on each
relay (a sleeping task per timer per relay was ~2 KiB each); a relay without one (unit tests)
runs its own timer task. Measured with tracemalloc and ``sys._debugmallocstats`` in a proxy
holding 1,000 idle pairs: see bench/RESULTS.md, "WebSockets".

Closing (RFC 6455 7): a close from one side is answered to it and passed to the other with its
code (`httpio.websocket.wire_close_code`: never 1005/1006/1015 on the wire); a close the relay
starts is sent to both legs; then the relay waits ``close_grace_s`` for the replies and closes
both TCP connections. A leg that vanishes without a close frame gets the other side told 1001
(the client went away) or 1011 (the upstream failed), `lost_peer_code`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog
import trio
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Message,
    Ping,
    Pong,
    TextMessage,
)

from httpio import sockio
from httpio.websocket import (
    GOING_AWAY,
    MESSAGE_TOO_BIG,
    Side,
    close_reason,
    lost_peer_code,
    wire_close_code,
)

log = structlog.get_logger()

RECEIVE_SIZE = 65536
PING_PAYLOAD = b"gateway"


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


class _Leg:
    __slots__ = (
        "alive",
        "awaiting_pong",
        "gone",
        "lock",
        "message_bytes",
        "received",
        "side",
        "stream",
        "ws",
    )

    def __init__(self, side: Side, stream: trio.abc.Stream, ws: Connection) -> None:
        self.side = side
        self.stream = stream
        self.ws = ws
        self.lock = trio.StrictFIFOLock()  # one writer at a time, bytes in the order made
        self.message_bytes = 0  # of the message being received
        self.awaiting_pong = False
        self.gone = False  # its TCP connection ended or failed
        self.received = 0  # bytes read off its stream: the access log's bytes (issue 12)

    @property
    def settled(self) -> bool:
        return self.gone or self.ws.state is ConnectionState.CLOSED


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
    ) -> None:
        self.limits = limits
        self.name = name
        self._clock = clock
        self._checks = checks
        self.client = _Leg(
            Side.CLIENT, client, Connection(ConnectionType.SERVER, trailing_data=client_trailing)
        )
        self.upstream = _Leg(
            Side.UPSTREAM,
            upstream,
            Connection(ConnectionType.CLIENT, trailing_data=upstream_trailing),
        )
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
        calling task carries client -> upstream; one more task the other way."""
        now = trio.current_time()
        self._started = self._last_frame = now
        self._next_ping = now + self.limits.ping_interval_s
        self._next_check = now + self.limits.check_interval_s
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._pump, self.upstream, self.client)
                if self._clock is None:
                    nursery.start_soon(self._own_clock)
                else:
                    self._clock.relays.add(self)
                await self._pump(self.client, self.upstream)
                await trio.sleep_forever()  # until _finish cancels the nursery
        finally:
            self._nursery = None
            if self._clock is not None:
                self._clock.relays.discard(self)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.upstream.stream)
                await trio.aclose_forcefully(self.client.stream)

    def _finish(self) -> None:
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    def _other(self, leg: _Leg) -> _Leg:
        return self.upstream if leg is self.client else self.client

    async def _pump(self, src: _Leg, dst: _Leg) -> None:
        while True:
            for event in src.ws.events():
                await self._on_event(src, dst, event)
            if src.settled:
                self._check_settled()
                return
            try:
                data = await _receive(src.stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                data = b""
            if not data:
                src.gone = True
                self._lost(src, "closed without a close frame")
                return
            src.received += len(data)
            src.awaiting_pong = False
            src.ws.receive_data(bytes(data))

    async def _on_event(self, src: _Leg, dst: _Leg, event: Event) -> None:
        if isinstance(event, Message):
            if self.closing:
                return  # a close is under way: nothing more goes across
            self._last_frame = trio.current_time()
            if isinstance(event, TextMessage):
                src.message_bytes += len(event.data.encode())
                out: TextMessage | BytesMessage = TextMessage(
                    data=event.data, message_finished=event.message_finished
                )
            else:
                assert isinstance(event, BytesMessage)
                src.message_bytes += len(event.data)
                out = BytesMessage(data=bytes(event.data), message_finished=event.message_finished)
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
            if event.message_finished:
                src.message_bytes = 0
                self.messages[src.side] += 1
            if not await self._send(dst, out):
                self._lost(dst, "failed while being written to")
        elif isinstance(event, Ping):
            self._last_frame = trio.current_time()
            await self._send(src, event.response())
        elif isinstance(event, Pong):
            pass  # src.awaiting_pong was cleared when its bytes came
        elif isinstance(event, CloseConnection):
            state = src.ws.state
            if state is ConnectionState.REMOTE_CLOSING:  # the peer starts the close
                await self._send(src, event.response())
                code = wire_close_code(event.code)
                self._begin_close({self._other(src).side: code}, event.reason or "")
            elif state is ConnectionState.OPEN:  # wsproto could not parse what src sent
                reason = f"{src.side.value}: {event.reason}"
                self._begin_close(
                    {src.side: event.code, dst.side: lost_peer_code(src.side)}, reason
                )
            self._check_settled()

    def _lost(self, leg: _Leg, what: str) -> None:
        if not self.closing:
            other = self._other(leg)
            self._begin_close({other.side: lost_peer_code(leg.side)}, f"{leg.side.value} {what}")
        self._check_settled()

    async def _send(self, leg: _Leg, event: Event) -> bool:
        """Write one frame to ``leg``; False (and the leg marked gone) when it cannot take it."""
        if leg.gone:
            return False
        async with leg.lock:
            try:
                data = leg.ws.send(event)
            except Exception:  # wsproto: not sendable in this state (the leg is closing)
                return True
            with trio.move_on_after(self.limits.send_timeout_s) as waited:
                try:
                    await leg.stream.send_all(data)
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    leg.gone = True
            if waited.cancelled_caught:
                leg.gone = True
        return not leg.gone

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
            if leg.gone or leg.ws.state is not ConnectionState.OPEN:
                continue
            code = wire_close_code(codes.get(leg.side, GOING_AWAY))
            self.close_codes[leg.side] = code
            await self._send(
                leg, CloseConnection(code=code or 1005, reason=reason if code else None)
            )
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
            if not await self._send(leg, Ping(payload=PING_PAYLOAD)):
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
