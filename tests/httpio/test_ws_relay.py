"""`httpio.ws_relay.Relay` over in-memory streams, wsproto peers at both ends, on the autojump
clock (idle and ping timers cost no wall time)."""

from __future__ import annotations

import trio
import trio.testing
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Ping, TextMessage

from httpio.websocket import Side
from httpio.ws_relay import Check, Readiness, Relay, RelayClock, RelayLimits
from tests.support.polling import wait_until


class Peer:
    """One end (the browser, or the backend) speaking frames over a memory stream."""

    def __init__(self, stream: trio.abc.Stream, kind: ConnectionType) -> None:
        self.stream = stream
        self.ws = Connection(kind)

    async def send(self, event: Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self) -> Event:
        while True:
            for event in self.ws.events():
                return event
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(bytes(data) or None)


async def run_relay(
    limits: RelayLimits,
    nursery: trio.Nursery,
    clock: RelayClock | None = None,
    checks: tuple[Check, ...] = (),
) -> tuple[Peer, Peer, Relay]:
    browser_end, proxy_client = trio.testing.memory_stream_pair()
    proxy_upstream, backend_end = trio.testing.memory_stream_pair()
    relay = Relay(
        proxy_client, b"", proxy_upstream, b"", limits, name="t", clock=clock, checks=checks
    )
    nursery.start_soon(relay.run)
    return Peer(browser_end, ConnectionType.CLIENT), Peer(backend_end, ConnectionType.SERVER), relay


async def test_messages_cross_both_ways_and_a_close_is_passed_on(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        browser, backend, relay = await run_relay(RelayLimits(), nursery)
        await browser.send(TextMessage(data="hi"))
        assert (await backend.next_event()).data == "hi"  # type: ignore[attr-defined]
        await backend.send(BytesMessage(data=b"\x00" * 70000))
        got = b""
        while len(got) < 70000:
            got += (await browser.next_event()).data  # type: ignore[attr-defined]
        await browser.send(CloseConnection(code=4001, reason="bye"))
        closed = await backend.next_event()
        assert isinstance(closed, CloseConnection) and closed.code == 4001
        await backend.send(closed.response())
        echoed = await browser.next_event()
        assert isinstance(echoed, CloseConnection) and echoed.code == 4001
    assert relay.messages == {relay.client.side: 1, relay.upstream.side: 1}


async def test_a_message_over_the_limit_closes_both_with_1009(autojump_clock: object) -> None:
    async with trio.open_nursery() as nursery:
        browser, backend, _ = await run_relay(RelayLimits(max_message_bytes=100), nursery)
        await browser.send(BytesMessage(data=b"x" * 101))
        closed = await browser.next_event()
        assert isinstance(closed, CloseConnection) and closed.code == 1009
        told = await backend.next_event()
        assert isinstance(told, CloseConnection) and told.code == 1009


async def test_idle_closes_with_1001_and_pings_do_not_count(autojump_clock: object) -> None:
    limits = RelayLimits(idle_timeout_s=60, ping_interval_s=10)
    async with trio.open_nursery() as nursery:
        browser, backend, relay = await run_relay(limits, nursery)

        async def answer_pings(peer: Peer, codes: list[int]) -> None:
            while True:
                event = await peer.next_event()
                if isinstance(event, Ping):
                    await peer.send(event.response())
                elif isinstance(event, CloseConnection):
                    codes.append(event.code)
                    return

        codes: list[int] = []
        started = trio.current_time()
        async with trio.open_nursery() as peers:
            peers.start_soon(answer_pings, browser, codes)
            peers.start_soon(answer_pings, backend, codes)
        assert codes == [1001, 1001]
        assert 60 <= trio.current_time() - started < 70
        assert "idle" in relay.close_why


async def test_a_shared_clock_ticks_the_timers_and_the_checks_of_each_relay(
    autojump_clock: object,
) -> None:
    # One RelayClock task for every relay (no timer task per relay): idle pairs cost less.
    clock = RelayClock(tick_s=1.0)
    checked: list[float] = []

    def refuse_at_five(relay: Relay) -> None:
        checked.append(trio.current_time())
        if len(checked) == 5:
            relay.close(1008, "token refused")

    limits = RelayLimits(idle_timeout_s=60, ping_interval_s=0, check_interval_s=1.0)
    async with trio.open_nursery() as nursery:
        await nursery.start(clock.run)
        browser, _backend, checked_relay = await run_relay(
            limits, nursery, clock, (refuse_at_five,)
        )
        other_browser, _other_backend, idle_relay = await run_relay(limits, nursery, clock)
        await wait_until(lambda: len(clock.relays) == 2)
        assert isinstance(await browser.next_event(), CloseConnection)
        assert checked_relay.close_codes == {Side.CLIENT: 1008, Side.UPSTREAM: 1008}
        assert len(checked) == 5
        started = trio.current_time()
        event = await other_browser.next_event()
        assert isinstance(event, CloseConnection) and event.code == 1001
        assert "idle" in idle_relay.close_why
        assert trio.current_time() - started < 60
        nursery.cancel_scope.cancel()
    assert clock.relays == set()


async def test_a_peer_that_stops_answering_pings_is_found(autojump_clock: object) -> None:
    limits = RelayLimits(idle_timeout_s=0, ping_interval_s=10)
    async with trio.open_nursery() as nursery:
        browser, backend, relay = await run_relay(limits, nursery)

        async def answer_pings() -> None:
            while True:
                event = await browser.next_event()
                if isinstance(event, Ping):
                    await browser.send(event.response())
                elif isinstance(event, CloseConnection):
                    return

        nursery.start_soon(answer_pings)
        while True:  # the backend reads but never answers
            event = await backend.next_event()
            if isinstance(event, CloseConnection):
                break
        assert relay.close_codes[relay.client.side] == 1011
        assert "ping" in relay.close_why


async def test_max_lifetime_closes_with_1001_even_when_busy(autojump_clock: object) -> None:
    limits = RelayLimits(idle_timeout_s=0, ping_interval_s=0, max_lifetime_s=30)
    async with trio.open_nursery() as nursery:
        browser, backend, relay = await run_relay(limits, nursery)
        started = trio.current_time()
        while True:
            await browser.send(TextMessage(data="busy"))
            event = await backend.next_event()
            if isinstance(event, CloseConnection):
                break
            await trio.sleep(1)
        assert event.code == 1001 and 30 <= trio.current_time() - started < 32
        assert "open for 30 s" in relay.close_why


async def socket_relay(
    limits: RelayLimits, nursery: trio.Nursery, readiness: Readiness
) -> tuple[Peer, Peer, Relay]:
    """The relay over real sockets, its idle legs waiting in ``readiness`` (no task each)."""
    browser_sock, client_sock = trio.socket.socketpair()
    upstream_sock, backend_sock = trio.socket.socketpair()
    relay = Relay(
        trio.SocketStream(client_sock),
        b"",
        trio.SocketStream(upstream_sock),
        b"",
        limits,
        name="s",
        readiness=readiness,
    )
    nursery.start_soon(relay.run)
    browser = Peer(trio.SocketStream(browser_sock), ConnectionType.CLIENT)
    return browser, Peer(trio.SocketStream(backend_sock), ConnectionType.SERVER), relay


async def test_idle_socket_legs_have_no_task_and_wake_when_bytes_come() -> None:
    readiness = Readiness()
    async with trio.open_nursery() as nursery:
        await nursery.start(readiness.run)
        browser, backend, relay = await socket_relay(RelayLimits(), nursery, readiness)
        await wait_until(lambda: readiness.statistics()["waiting"] == 2)
        # the relay's own task, its clock, and the readiness task: no reader per leg
        tasks = len(nursery.child_tasks)
        assert tasks == 2, nursery.child_tasks
        for size in (0, 125, 70000, 1 << 20):
            nursery.start_soon(browser.send, BytesMessage(data=b"b" * size))
            got = b""
            while True:
                event = await backend.next_event()
                assert isinstance(event, BytesMessage), relay.close_why
                got += event.data
                if event.message_finished:
                    break
            assert got == b"b" * size
        await backend.send(TextMessage(data="é" * 1000))
        text = ""
        while len(text) < 1000:
            text += (await browser.next_event()).data  # type: ignore[attr-defined]
        assert text == "é" * 1000
        await wait_until(lambda: readiness.statistics()["waiting"] == 2)
        assert relay.client.lock is None and relay.upstream.lock is None
        await browser.send(CloseConnection(code=1000, reason="done"))
        closed = await backend.next_event()
        assert isinstance(closed, CloseConnection) and closed.code == 1000
        await backend.send(closed.response())
        assert isinstance(await browser.next_event(), CloseConnection)
        await wait_until(lambda: relay.client.settled and relay.upstream.settled)
        await wait_until(lambda: readiness.statistics()["waiting"] == 0)
        await browser.stream.aclose()
        await backend.stream.aclose()
        nursery.cancel_scope.cancel()


async def test_a_browser_breaking_the_protocol_gets_1002_and_the_backend_1001(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        browser, backend, relay = await run_relay(RelayLimits(), nursery)
        await browser.stream.send_all(b"\x81\x02hi")  # a browser's frame, not masked
        closed = await browser.next_event()
        assert isinstance(closed, CloseConnection) and closed.code == 1002
        told = await backend.next_event()
        assert isinstance(told, CloseConnection) and told.code == 1001
        await backend.send(told.response())
    assert "must be masked" in relay.close_why


async def test_an_upstream_sending_invalid_utf8_gets_1007_and_the_browser_1011(
    autojump_clock: object,
) -> None:
    async with trio.open_nursery() as nursery:
        browser, backend, relay = await run_relay(RelayLimits(), nursery)
        await backend.stream.send_all(b"\x81\x02\xc3\x28")
        closed = await backend.next_event()
        assert isinstance(closed, CloseConnection) and closed.code == 1007
        told = await browser.next_event()
        assert isinstance(told, CloseConnection) and told.code == 1011
        await browser.send(told.response())
    assert relay.close_codes == {Side.CLIENT: 1011, Side.UPSTREAM: 1007}


async def test_legs_read_on_when_the_readiness_stops_under_them() -> None:
    # At a shutdown the Readiness task may end before the relays it watches for: the legs it
    # held are woken and wait for their bytes in tasks of their own; nothing is lost.
    readiness = Readiness()
    async with trio.open_nursery() as nursery:
        watching = trio.CancelScope()

        async def run_readiness() -> None:
            with watching:
                await readiness.run()

        nursery.start_soon(run_readiness)
        await wait_until(lambda: readiness.running)
        browser, backend, _ = await socket_relay(RelayLimits(), nursery, readiness)
        await wait_until(lambda: readiness.statistics()["waiting"] == 2)
        watching.cancel()
        await wait_until(lambda: not readiness.running)
        for n in range(3):
            await browser.send(TextMessage(data=f"there {n}"))
            assert (await backend.next_event()).data == f"there {n}"  # type: ignore[attr-defined]
            await backend.send(TextMessage(data=f"back {n}"))
            assert (await browser.next_event()).data == f"back {n}"  # type: ignore[attr-defined]
        await browser.stream.aclose()
        await backend.stream.aclose()
        nursery.cancel_scope.cancel()
