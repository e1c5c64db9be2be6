"""The server loop against hostile clients (issue 8): methods it must refuse, requests whose
framing is ambiguous, bodies that trickle, connections that never speak, and handlers or
bodies that raise what nobody expected. The same in-process server and raw clients as
`tests.httpio.test_server`; timeouts run on trio's `MockClock` where they matter.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import msgspec
import pytest
import structlog.testing
import trio
import trio.testing

from httpio.messages import Request, Response, json_response
from httpio.protocol import h11
from httpio.settings import ServerLimits
from tests.httpio.test_server import (
    DEADLINE_S,
    App,
    RawClient,
    Reply,
    assert_error,
    connect,
    get,
    serving,
)
from tests.support.polling import wait_until

SERVED = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"]


class Recorder:
    """Answers every request with what it saw, body included (read to the end)."""

    def __init__(self) -> None:
        self.requests: list[tuple[Request, bytes]] = []

    async def __call__(self, request: Request) -> Response:
        body = await request.body.read_all()
        self.requests.append((request, body))
        return json_response(
            200,
            {
                "method": request.method,
                "target": request.target,
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in request.headers],
                "body": body.decode("latin-1"),
            },
        )


async def exchange(port: int, data: bytes, *, method: bytes = b"GET") -> tuple[Reply, bytes]:
    """Send ``data`` on a new connection; the first answer and whatever follows it to EOF."""
    async with connect(port) as client:
        await client.send(data)
        reply = await client.read_response(method=method)
        rest = await client.read_to_eof()
    return reply, rest


async def still_serves(port: int) -> None:
    async with connect(port) as client:
        await client.send(get("/hello"))
        assert (await client.read_response()).status == 200


# -- methods ------------------------------------------------------------------------------------
async def test_connect_is_405_with_allow_and_close_before_the_handler_runs() -> None:
    app = App()
    async with serving(app) as (_, port):
        reply, rest = await exchange(port, b"CONNECT /health HTTP/1.1\r\nHost: x\r\n\r\n")
        await still_serves(port)
    assert reply.status_line == b"HTTP/1.1 405 Method Not Allowed"
    assert_error(reply, 405, "method_not_allowed", "CONNECT")
    assert reply.header(b"allow") == b", ".join(m.encode() for m in SERVED)
    assert rest == b""
    assert [r.path for r in app.requests] == ["/hello"]  # the CONNECT never reached it


async def test_connect_with_an_authority_target_is_405() -> None:
    async with serving() as (_, port):
        reply, rest = await exchange(port, b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert_error(reply, 405, "method_not_allowed")
    assert rest == b""


async def test_trace_is_405_and_never_reflects_the_request() -> None:
    async with serving() as (_, port):
        reply, _ = await exchange(
            port, b"TRACE / HTTP/1.1\r\nHost: x\r\nCookie: secret=1\r\nX-Probe: xst\r\n\r\n"
        )
    assert_error(reply, 405, "method_not_allowed", "TRACE")
    assert b"secret" not in reply.raw and b"xst" not in reply.raw


@pytest.mark.parametrize("method", ["FOO", "get", "PROPFIND", "FOO_BAR", "BREW", "PRI"])
async def test_a_method_we_do_not_implement_is_501_and_close(method: str) -> None:
    app = App()
    async with serving(app) as (_, port):
        reply, rest = await exchange(port, get("/hello", method=method))
        await still_serves(port)
    assert reply.status_line == b"HTTP/1.1 501 Not Implemented"
    assert_error(reply, 501, "not_implemented", method)
    assert rest == b""
    assert len(app.requests) == 1  # only the request of still_serves


@pytest.mark.parametrize("method", SERVED)
async def test_every_served_method_reaches_the_handler(method: str) -> None:
    app = App()
    async with serving(app) as (_, port), connect(port) as client:
        await client.send(get("/whoami", method=method) + get("/hello"))
        reply = await client.read_response(method=method.encode())
        assert (await client.read_response()).body == b"hello"  # the connection is kept
    assert reply.status == 200
    assert app.requests[0].method == method


# -- no exception ends the process ---------------------------------------------------------------
class Raising:
    """A response body that raises ``exc`` from ``read`` or ``aclose``."""

    def __init__(self, exc: BaseException, *, where: str) -> None:
        self.exc = exc
        self.where = where
        self.sent = False

    async def read(self) -> bytes:
        if not self.sent:
            self.sent = True
            return b"part"
        if self.where == "read":
            raise self.exc
        return b""

    async def aclose(self) -> None:
        if self.where == "aclose":
            raise self.exc


def surprises() -> list[BaseException]:
    return [
        h11.LocalProtocolError("can't handle event type Data"),
        h11.RemoteProtocolError("odd"),
        ValueError("bad value"),
        KeyError("missing"),
        AssertionError("an assert in a library"),
        ExceptionGroup("from a nursery", [ValueError("one"), KeyError("two")]),
        RuntimeError("anything else"),
    ]


def connection_failures(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == "connection_failed"]


def aborted(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    """What the server said about a response it could not finish."""
    return [e for e in logs if e["event"] in ("connection_failed", "response_aborted")]


@pytest.mark.parametrize("where", ["read", "aclose"])
@pytest.mark.parametrize("exc", surprises(), ids=lambda e: type(e).__name__)
async def test_a_response_body_raising_closes_that_connection_only(
    exc: BaseException, where: str
) -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/hello":
            return Response(200, [], b"hello")
        return Response(200, [], Raising(exc, where=where))

    with structlog.testing.capture_logs() as logs:
        async with serving(handler) as (server, port):
            async with connect(port) as other:  # a connection that is not to blame
                await other.send(get("/hello"))
                await other.read_response()
                async with connect(port) as victim:
                    await victim.send(get("/raise"))
                    head = await victim.read_head()
                    await victim.read_to_eof()  # closed: no hang, no second answer
                await other.send(get("/hello"))
                assert (await other.read_response()).body == b"hello"
            await still_serves(port)
            await wait_until(lambda: server.open_connections == 0)
    assert head.startswith(b"HTTP/1.1 200 OK")
    said = aborted(logs)
    assert len(said) == 1, logs  # once, whichever way it was caught
    assert said[0]["server"] == "test"
    if said[0]["event"] == "connection_failed":
        assert said[0]["error"] == repr(exc)
        assert said[0]["exc_info"] is exc
    else:  # a body short of its length: the known way a streamed answer ends early
        assert isinstance(exc, h11.LocalProtocolError) and where == "read"


@pytest.mark.parametrize("exc", surprises(), ids=lambda e: type(e).__name__)
async def test_an_on_close_callback_raising_is_logged_and_serving_goes_on(
    exc: BaseException,
) -> None:
    def on_close() -> None:
        raise exc

    with structlog.testing.capture_logs() as logs:
        async with serving() as (server, port):
            a, b = trio.socket.socketpair()
            server.start_connection(trio.SocketStream(a), on_close=on_close)
            client = RawClient(trio.SocketStream(b))
            await client.send(get("/hello", "connection: close"))
            assert (await client.read_response()).body == b"hello"
            await client.aclose()
            await wait_until(lambda: server.open_connections == 0)
            await still_serves(port)
    failures = connection_failures(logs)
    assert len(failures) == 1 and failures[0]["exc_info"] is exc


async def test_a_handler_exception_group_is_a_500_and_the_connection_goes_on() -> None:
    async def handler(request: Request) -> Response:
        if request.path == "/hello":
            return Response(200, [], b"hello")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.sleep_forever)
            raise ValueError("in a nursery")
        raise AssertionError("unreachable")

    async with serving(handler) as (_, port), connect(port) as client:
        await client.send(get("/group") + get("/hello"))
        reply = await client.read_response()
        after = await client.read_response()
    assert reply.status == 500 and reply.json()["error"] == "internal_error"
    assert after.body == b"hello"


async def test_keyboard_interrupt_from_a_handler_is_not_swallowed() -> None:
    async def handler(request: Request) -> Response:
        raise KeyboardInterrupt

    with trio.fail_after(DEADLINE_S), pytest.raises(BaseExceptionGroup) as info:
        async with serving(handler) as (_, port), connect(port) as client:
            await client.send(get("/"))
            await client.read_to_eof()
            await trio.sleep_forever()  # the interrupt must end the server, and so this
    assert info.group_contains(KeyboardInterrupt)


async def test_cancellation_still_ends_a_connection_stuck_in_a_body(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Forever:
        async def read(self) -> bytes:
            await trio.sleep_forever()
            return b""

        async def aclose(self) -> None:
            pass

    entered = trio.Event()

    async def handler(request: Request) -> Response:
        entered.set()
        return Response(200, [(b"content-length", b"10")], Forever())

    with trio.fail_after(DEADLINE_S):
        async with (
            serving(handler, ServerLimits(drain_timeout_s=2)) as (server, port),
            connect(port) as client,
        ):
            await client.send(get("/"))
            await entered.wait()
            await server.drain()  # cancels what is left at drain_timeout_s ...
    assert server.open_connections == 0  # ... and nothing swallowed that cancellation


# -- framing: RFC 9112 6.1 and 6.3 ----------------------------------------------------------------
SMUGGLE = (
    b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"0\r\n\r\nGET /echo?SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n"
)


async def test_content_length_with_transfer_encoding_is_400_and_close() -> None:
    app = Recorder()
    async with serving(app) as (_, port):
        reply, rest = await exchange(port, SMUGGLE)
    assert_error(reply, 400, "bad_request", "Content-Length")
    assert rest == b""  # the tail was not served as a second request
    assert app.requests == []


@pytest.mark.parametrize(
    ("framing", "status", "code"),
    [
        # Any coding but one "chunked" is 501, as nginx answers (RFC 9112 6.1).
        (b"Transfer-Encoding: chunked, identity", 501, "not_implemented"),
        (b"Transfer-Encoding: identity", 501, "not_implemented"),
        (b"Transfer-Encoding: xchunked", 501, "not_implemented"),
        (b"Transfer-Encoding: gzip, chunked", 501, "not_implemented"),
        (b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked", 501, "not_implemented"),
        (b"Content-Length: 5\r\nContent-Length: 6", 400, "bad_request"),
        (b"Content-Length: +5", 400, "bad_request"),
        (b"Content-Length: 5 5", 400, "bad_request"),
        (b"Content-Length : 5", 400, "bad_request"),  # a space before the colon
        (b"Content-Length: 5\r\nX-A: a\x00b", 400, "bad_request"),
        (b"Content-Length: 5\r\nX\x00A: b", 400, "bad_request"),
        (b"Content-Length: 5\r\nX-A: a\rb", 400, "bad_request"),
    ],
)
async def test_ambiguous_framing_is_refused_and_closes(
    framing: bytes, status: int, code: str
) -> None:
    app = Recorder()
    async with serving(app) as (_, port):
        data = b"POST /echo HTTP/1.1\r\nHost: x\r\n" + framing + b"\r\n\r\n0\r\n\r\n"
        reply, rest = await exchange(port, data + get("/echo?SMUGGLED"))
    assert_error(reply, status, code)
    assert rest == b""
    assert app.requests == []


async def test_transfer_encoding_in_http_1_0_is_400_and_close() -> None:
    app = Recorder()
    async with serving(app) as (_, port):
        data = b"POST /echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
        reply, rest = await exchange(port, data)
    assert_error(reply, 400, "bad_request", "HTTP/1.0")
    assert rest == b"" and app.requests == []


@pytest.mark.parametrize(
    ("head", "body"),
    [
        (b"Content-Length: 5\r\nContent-Length: 5", b"hello"),  # equal duplicates: one length
        (b"Content-Length: 5, 5", b"hello"),  # RFC 9110 8.6 allows the list of equal values
        (b"Transfer-Encoding: CHUNKED", b"5\r\nhello\r\n0\r\n\r\n"),  # codings are caseless
    ],
)
async def test_unambiguous_variants_are_served_once(head: bytes, body: bytes) -> None:
    app = Recorder()
    async with serving(app) as (_, port), connect(port) as client:
        await client.send(b"POST /echo HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n\r\n" + body)
        reply = await client.read_response()
        await client.send(get("/echo?after"))
        after = await client.read_response()
    assert reply.status == 200 and reply.json()["body"] == "hello"
    assert [r.target for r, _ in app.requests] == ["/echo", "/echo?after"]
    assert after.status == 200


async def test_obs_fold_is_unfolded_to_one_space() -> None:
    """RFC 9112 5.2: replace each obs-fold with SP before interpreting or forwarding."""
    app = Recorder()
    async with serving(app) as (_, port), connect(port) as client:
        await client.send(b"GET /echo HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n")
        reply = await client.read_response()
    assert ["x-a", "a b"] in reply.json()["headers"]
    assert len(app.requests) == 1


async def test_bare_lf_line_ends_are_one_request() -> None:
    """RFC 9112 2.2 lets a recipient take a bare LF as a line end; we re-frame what we
    forward, so no hop behind us can read these bytes differently."""
    app = Recorder()
    async with serving(app) as (_, port), connect(port) as client:
        await client.send(b"GET /echo HTTP/1.1\nHost: x\nX-A: b\n\n")
        reply = await client.read_response()
        await client.send(get("/echo?after"))
        await client.read_response()
    assert ["x-a", "b"] in reply.json()["headers"]
    assert [r.target for r, _ in app.requests] == ["/echo", "/echo?after"]


async def test_the_declared_length_is_on_the_request_body() -> None:
    seen: list[int | None] = []

    async def handler(request: Request) -> Response:
        seen.append(request.body.length)
        return Response(200, [], await request.body.read_all())

    async with serving(handler) as (_, port), connect(port) as client:
        await client.send(get("/", "content-length: 3", method="POST") + b"abc")
        await client.read_response()
        await client.send(
            get("/", "transfer-encoding: chunked", method="POST") + b"3\r\nabc\r\n0\r\n\r\n"
        )
        await client.read_response()
        await client.send(get("/"))
        await client.read_response()
    assert seen == [3, None, None]


# -- slow bodies: a deadline for the whole body and a minimum rate -------------------------------
async def trickle(
    client: RawClient, total: int, *, piece: bytes, every_s: float, limit: int
) -> Reply:
    """Send ``piece`` every ``every_s`` (the client's pace, on the mock clock) until
    ``limit`` pieces went out or an answer came; the answer."""
    got: list[Reply] = []
    answered = trio.Event()

    async def read() -> None:
        # Longer than RawClient's per-read deadline may pass before the answer: wait for it
        # here, on the mock clock, under the deadline below.
        await trio.lowlevel.wait_readable(client.stream.socket)
        got.append(await client.read_response())
        answered.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await client.send(get("/echo", f"content-length: {total}", method="POST"))
        for _ in range(limit):
            if answered.is_set():
                break
            try:
                await client.send(piece)
            except trio.BrokenResourceError:
                break
            await trio.sleep(every_s)
        with trio.fail_after(DEADLINE_S * 10):  # virtual time: the per-read timeout and more
            await answered.wait()
    return got[0]


@pytest.mark.parametrize(
    ("limits", "total", "piece", "detail", "within_s"),
    [
        # a byte a second: never 5 s between reads, but below 10 bytes/s once 2 s are gone
        (
            ServerLimits(body_timeout_s=5, body_rate_grace_s=2, min_body_rate_bytes_per_s=10),
            1000,
            b"x",
            "slower than 10 bytes/s",
            (2, 4),
        ),
        # 100 bytes a second: fast enough for 1 byte/s, not done by the 20 s deadline
        (
            ServerLimits(
                body_timeout_s=5,
                body_rate_grace_s=1,
                min_body_rate_bytes_per_s=1,
                body_deadline_s=20,
            ),
            100_000,
            b"y" * 100,
            "not complete within 20 s",
            (19, 21.5),
        ),
    ],
    ids=["rate", "deadline"],
)
async def test_a_trickling_body_is_408_and_close(
    autojump_clock: trio.testing.MockClock,
    limits: ServerLimits,
    total: int,
    piece: bytes,
    detail: str,
    within_s: tuple[float, float],
) -> None:
    async with serving(limits=limits) as (_, port), connect(port) as client:
        start = trio.current_time()
        # 200 pieces a second apart: before the fix, only the 5 s after the last ended it
        reply = await trickle(client, total, piece=piece, every_s=1, limit=200)
        elapsed = trio.current_time() - start
        assert await client.read_to_eof() == b""
    assert_error(reply, 408, "request_timeout", detail)
    assert within_s[0] <= elapsed <= within_s[1]


async def test_a_body_at_a_steady_rate_above_the_minimum_is_served(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = ServerLimits(
        body_timeout_s=5, body_rate_grace_s=2, min_body_rate_bytes_per_s=10, body_deadline_s=600
    )
    async with serving(limits=limits) as (_, port), connect(port) as client:
        reply = await trickle(client, 300, piece=b"z" * 20, every_s=1, limit=15)
    assert reply.status == 200 and reply.body == b"z" * 300


async def test_a_minimum_rate_of_zero_switches_the_rate_off(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = ServerLimits(body_timeout_s=5, body_rate_grace_s=0, min_body_rate_bytes_per_s=0)
    async with serving(limits=limits) as (_, port), connect(port) as client:
        reply = await trickle(client, 30, piece=b"x", every_s=1, limit=30)
    assert reply.status == 200 and reply.body == b"x" * 30


async def test_time_the_handler_takes_before_reading_is_not_the_clients(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def handler(request: Request) -> Response:
        await trio.sleep(30)  # e.g. a slow token check
        return Response(200, [], await request.body.read_all())

    limits = ServerLimits(
        body_timeout_s=60, body_rate_grace_s=5, min_body_rate_bytes_per_s=10, body_deadline_s=6
    )
    async with serving(handler, limits) as (_, port), connect(port) as client:
        await client.send(get("/", "content-length: 4", method="POST") + b"ab")
        await trio.sleep(31)
        await client.send(b"cd")
        reply = await client.read_response()
    assert reply.body == b"abcd"


@pytest.mark.parametrize(
    ("field", "bad", "expected"),
    [
        ("body_deadline_s", 0, "> 0.0"),
        ("min_body_rate_bytes_per_s", -1, ">= 0"),
        ("body_rate_grace_s", -1, ">= 0.0"),
    ],
)
def test_body_limits_are_validated(field: str, bad: float, expected: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        msgspec.convert({field: bad}, ServerLimits)
    assert str(info.value).endswith(f"{expected} - at `$.{field}`")


def test_body_limits_take_their_units_from_the_config() -> None:
    limits = msgspec.convert(
        {"body_deadline_s": 5, "min_body_rate_bytes_per_s": 0, "body_rate_grace_s": 0.5},
        ServerLimits,
    )
    assert (limits.body_deadline_s, limits.min_body_rate_bytes_per_s) == (5.0, 0)
    assert ServerLimits().min_body_rate_bytes_per_s == 1024  # on unless switched off


# -- connections that never speak ------------------------------------------------------------------
async def test_a_connection_that_never_sent_a_byte_is_closed_silently(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = ServerLimits(head_timeout_s=5)
    async with serving(limits=limits) as (server, port), connect(port) as silent:
        start = trio.current_time()
        assert await silent.read_to_eof() == b""  # no 408: nginx closes such a one silently
        assert trio.current_time() - start == pytest.approx(5)
        await wait_until(lambda: server.open_connections == 0)


async def test_a_connection_that_sent_part_of_a_head_still_gets_its_408(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = ServerLimits(head_timeout_s=5)
    async with serving(limits=limits) as (_, port), connect(port) as client:
        await client.send(b"G")
        reply = await client.read_response()
    assert_error(reply, 408, "request_timeout")


async def test_health_is_answered_while_hundreds_of_idle_connections_time_out() -> None:
    idle_count = 300
    limits = ServerLimits(head_timeout_s=0.5)
    async with serving(limits=limits) as (server, port):
        idle = [RawClient(await trio.open_tcp_stream("127.0.0.1", port)) for _ in range(idle_count)]
        answers: list[int] = []
        # Ask, one request after another, until every idle connection has been closed (the
        # listener accepts in order: once a request is answered, every idle one was taken).
        with trio.fail_after(DEADLINE_S * 3):
            while server.open_connections > 0 and len(answers) < 5000:
                async with connect(port) as client:
                    await client.send(get("/hello", "connection: close"))
                    with trio.fail_after(DEADLINE_S):
                        answers.append((await client.read_response()).status)
        heard = [await c.read_to_eof() for c in idle]
        for c in idle:
            await c.aclose()
    assert answers and set(answers) == {200}
    assert set(heard) == {b""}  # no 408s to write: each one was closed without a word
