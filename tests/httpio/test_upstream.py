"""The upstream pool against real sockets on 127.0.0.1: a well-behaved upstream (our own
`serve_tcp`) and scripted raw upstreams that misbehave in one exact way each (close while
idle, close instead of answering, never answer, stall mid-body).

The pool's ``statistics()`` is the oracle for what happened to connections. Timeouts run on
trio's `MockClock` (``autojump_clock``), so none of them takes wall time.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import h11
import msgspec
import pytest
import trio
import trio.testing

from httpio.errors import UpstreamTimeout, UpstreamUnreachable
from httpio.messages import Request, Response, json_response
from httpio.origin import Origin
from httpio.run import serve_tcp
from httpio.settings import UpstreamTimeouts
from httpio.upstream import RECENT_REST_S, UpstreamPool

DEADLINE_S = 10.0
BIG = 1 << 20


# -- a well-behaved upstream -------------------------------------------------------------------
async def echo(request: Request) -> Response:
    if request.path == "/big":
        return Response(200, [], b"x" * BIG)
    body = await request.body.read_all()
    return json_response(
        200,
        {
            "method": request.method,
            "target": request.target,
            "headers": [[n.decode(), v.decode()] for n, v in request.headers],
            "body": body.decode(),
        },
    )


@asynccontextmanager
async def echo_upstream() -> AsyncIterator[str]:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_tcp, echo, 0)
        yield f"http://127.0.0.1:{port}"
        nursery.cancel_scope.cancel()


# -- scripted upstreams ------------------------------------------------------------------------
class Script:
    """One upstream connection seen from the server side, with an h11 server to read
    requests and write answers; ``index`` counts connections from 0."""

    def __init__(self, stream: trio.SocketStream, index: int) -> None:
        self.stream = stream
        self.index = index
        self.conn = h11.Connection(h11.SERVER)

    async def read_request(self) -> h11.Request | None:
        request = None
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(await self.stream.receive_some(65536))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage):
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def answer(self, body: bytes = b"ok") -> None:
        headers = [("content-length", str(len(body)))]
        out = self.conn.send(h11.Response(status_code=200, headers=headers))
        out += self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage())
        await self.stream.send_all(out)
        self.conn.start_next_cycle()


@asynccontextmanager
async def scripted_upstream(
    script: Callable[[Script], Awaitable[None]],
) -> AsyncIterator[str]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    accepted = 0

    async def serve(stream: trio.SocketStream) -> None:
        nonlocal accepted
        index, accepted = accepted, accepted + 1
        async with stream:
            await script(Script(stream, index))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.serve_listeners, serve, listeners)
        yield f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"
        nursery.cancel_scope.cancel()


async def get_json(pool: UpstreamPool, url: str, target: str = "/", **kwargs: Any) -> Any:
    with trio.fail_after(DEADLINE_S):
        response = await pool.request(url, "GET", target, [], **kwargs)
        return msgspec.json.decode(await response.read_all())


def counts(pool: UpstreamPool) -> dict[str, object]:
    stats = pool.statistics()
    del stats["idle"]
    return stats


# -- Origin ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "host", "port", "host_header", "normalized"),
    [
        ("http://example.com", "example.com", 80, b"example.com", "http://example.com"),
        ("http://example.com/", "example.com", 80, b"example.com", "http://example.com"),
        ("http://127.0.0.1:5000", "127.0.0.1", 5000, b"127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("http://backend:8080/base/", "backend", 8080, b"backend:8080", "http://backend:8080/base"),
        ("http://[::1]:6000", "::1", 6000, b"[::1]:6000", "http://[::1]:6000"),
        ("http://[::1]", "::1", 80, b"[::1]", "http://[::1]"),
    ],
)
def test_origin_parsing(
    url: str, host: str, port: int, host_header: bytes, normalized: str
) -> None:
    origin = Origin(url)
    assert (origin.host, origin.port, origin.host_header) == (host, port, host_header)
    assert origin.url == normalized and origin.key == (host, port)
    assert repr(origin) == f"Origin({normalized!r})"


@pytest.mark.parametrize("url", ["https://example.com", "example.com:80", "ftp://x", "//x:1"])
def test_origin_rejects_other_schemes(url: str) -> None:
    with pytest.raises(ValueError, match="only http:// origins"):
        Origin(url)


def test_pool_parses_each_origin_once() -> None:
    pool = UpstreamPool()
    assert pool.origin("http://a:1") is pool.origin("http://a:1")
    pool.drop_origins(["http://b:2"])
    assert pool.origin("http://a:1") is not None


# -- keep-alive --------------------------------------------------------------------------------
async def test_keep_alive_connection_is_reused() -> None:
    pool = UpstreamPool()
    async with echo_upstream() as url:
        first = await get_json(pool, url, "/one?x=1")
        second = await get_json(pool, url, "/two")
        port = url.rsplit(":", 1)[1]
        assert pool.statistics() == {
            "in_use": 0,
            "idle": {f"127.0.0.1:{port}": 1},
            "opened": 1,
            "reused": 1,
            "retried": 0,
            "closed": 0,
        }
        assert repr(pool) == "<UpstreamPool in_use=0 idle=1 opened=1>"
        await pool.aclose()
    assert (first["target"], second["target"]) == ("/one?x=1", "/two")
    assert counts(pool)["closed"] == 1


async def test_host_header_is_added_once() -> None:
    pool = UpstreamPool()
    async with echo_upstream() as url:
        added = await get_json(pool, url)
        with trio.fail_after(DEADLINE_S):
            response = await pool.request(url, "GET", "/", [(b"host", b"api.example")])
            kept = msgspec.json.decode(await response.read_all())
        await pool.aclose()
    host = url.removeprefix("http://")
    assert [v for n, v in added["headers"] if n == "host"] == [host]
    assert [v for n, v in kept["headers"] if n == "host"] == ["api.example"]


async def test_post_bytes_body_gets_a_content_length() -> None:
    pool = UpstreamPool()
    async with echo_upstream() as url:
        with trio.fail_after(DEADLINE_S):
            response = await pool.request(url, "POST", "/", [], b"")
            seen = msgspec.json.decode(await response.read_all())
        await pool.aclose()
    assert ["content-length", "0"] in seen["headers"]


@pytest.mark.parametrize(
    ("method", "rest_s", "reused", "retried"),
    [
        # a request that could not be sent twice always polls: the dead connection is seen
        ("POST", 0.0, 0, 0),
        # a GET polls too once the connection rested RECENT_REST_S
        ("GET", RECENT_REST_S, 0, 0),
        # a GET's first try trusts a connection that rested less: dead, it is sent once more
        ("GET", RECENT_REST_S / 2, 1, 1),
    ],
)
async def test_connection_closed_while_idle_is_not_used(
    mock_clock: trio.testing.MockClock, method: str, rest_s: float, reused: int, retried: int
) -> None:
    closed = trio.Event()

    async def answer_once_then_close(s: Script) -> None:
        await s.read_request()
        await s.answer(b"conn %d" % s.index)
        if s.index == 0:
            await s.stream.aclose()
            closed.set()
        else:
            await trio.sleep_forever()

    pool = UpstreamPool()
    async with scripted_upstream(answer_once_then_close) as url:
        # the mock clock moves only when told: the rest is rest_s exactly
        assert await (await pool.request(url, method, "/", [], b"")).read_all() == b"conn 0"
        await closed.wait()
        await trio.testing.wait_all_tasks_blocked()  # the FIN is in: a poll would see it
        mock_clock.jump(rest_s)
        assert await (await pool.request(url, method, "/", [], b"")).read_all() == b"conn 1"
        await pool.aclose()
    assert counts(pool) == {
        "in_use": 0,
        "opened": 2,
        "reused": reused,
        "retried": retried,
        "closed": 2,
    }


async def close_instead_of_second_answer(s: Script) -> None:
    """Answer the first request with keep-alive; read the second and close without a word
    (the race a pool loses when the upstream's idle timer fires as the request goes out)."""
    await s.read_request()
    await s.answer(b"conn %d" % s.index)
    await s.read_request()


async def test_dead_on_reuse_get_is_retried_once() -> None:
    pool = UpstreamPool()
    async with scripted_upstream(close_instead_of_second_answer) as url:
        with trio.fail_after(DEADLINE_S):
            assert await (await pool.request(url, "GET", "/", [])).read_all() == b"conn 0"
            assert await (await pool.request(url, "GET", "/", [])).read_all() == b"conn 1"
        await pool.aclose()
    assert counts(pool) == {"in_use": 0, "opened": 2, "reused": 1, "retried": 1, "closed": 2}


class Stream:
    """A request body read chunk by chunk, as the proxy relays a client's body."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)

    async def read(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


@pytest.mark.parametrize(
    ("method", "body", "headers"),
    [
        ("POST", b"data", []),
        ("PATCH", b"", []),
        ("GET", Stream(b"not", b" replayable"), [(b"content-length", b"14")]),
    ],
)
async def test_dead_on_reuse_is_not_retried_unless_idempotent_and_replayable(
    method: str, body: bytes | Stream, headers: list[tuple[bytes, bytes]]
) -> None:
    pool = UpstreamPool()
    async with scripted_upstream(close_instead_of_second_answer) as url:
        with trio.fail_after(DEADLINE_S):
            await (await pool.request(url, method, "/", [], b"first")).read_all()
            with pytest.raises(UpstreamUnreachable) as info:
                await pool.request(url, method, "/", headers, body)
        await pool.aclose()
    assert info.value.bytes_sent is True
    assert counts(pool) == {"in_use": 0, "opened": 1, "reused": 1, "retried": 0, "closed": 1}


# -- failures to connect -----------------------------------------------------------------------
async def test_connect_refused_is_unreachable_with_nothing_sent() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago, now closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    pool = UpstreamPool()
    with pytest.raises(UpstreamUnreachable, match="connect failed") as info:
        await pool.request(f"http://127.0.0.1:{port}", "POST", "/", [], b"x")
    assert info.value.bytes_sent is False and info.value.status == 502
    assert counts(pool) == {"in_use": 0, "opened": 0, "reused": 0, "retried": 0, "closed": 0}


@asynccontextmanager
async def unanswered_syn() -> AsyncIterator[str]:
    """A listener whose accept queue (backlog 0) is full: Linux drops further SYNs, so a
    connect stays pending until the caller's deadline."""
    with socket.socket() as listener, socket.socket() as filler:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        filler.connect(listener.getsockname())
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


async def test_connect_timeout(autojump_clock: trio.testing.MockClock) -> None:
    pool = UpstreamPool(UpstreamTimeouts(connect_timeout_s=1.5))
    async with unanswered_syn() as url:
        start = trio.current_time()
        with pytest.raises(UpstreamTimeout, match=r"connect timed out after 1\.5s") as info:
            await pool.request(url, "GET", "/", [])
        assert trio.current_time() - start == pytest.approx(1.5)
        with pytest.raises(UpstreamTimeout, match=r"after 0\.25s"):
            await pool.request(url, "GET", "/", [], connect_timeout_s=0.25)
    assert info.value.bytes_sent is False and info.value.status == 504
    assert pool.in_use == 0


async def never_answer(s: Script) -> None:
    await s.read_request()
    await trio.sleep_forever()


async def test_response_head_timeout(autojump_clock: trio.testing.MockClock) -> None:
    pool = UpstreamPool(UpstreamTimeouts(response_head_timeout_s=5))
    async with scripted_upstream(never_answer) as url:
        start = trio.current_time()
        with pytest.raises(UpstreamTimeout, match="no response head") as info:
            await pool.request(url, "GET", "/", [])
        assert trio.current_time() - start == pytest.approx(5)
        start = trio.current_time()
        with pytest.raises(UpstreamTimeout):
            await pool.request(url, "GET", "/", [], response_head_timeout_s=0.5)
        assert trio.current_time() - start == pytest.approx(0.5)
    assert info.value.bytes_sent is True
    assert counts(pool) == {"in_use": 0, "opened": 2, "reused": 0, "retried": 0, "closed": 2}


async def test_response_body_stall_times_out(autojump_clock: trio.testing.MockClock) -> None:
    async def stall_mid_body(s: Script) -> None:
        await s.read_request()
        await s.stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
        await trio.sleep_forever()

    pool = UpstreamPool(UpstreamTimeouts(body_timeout_s=3))
    async with scripted_upstream(stall_mid_body) as url:
        response = await pool.request(url, "GET", "/", [])
        assert await response.read() == b"abc"
        with pytest.raises(UpstreamTimeout, match="stalled") as info:
            await response.read()
        assert await response.read() == b""
    assert info.value.bytes_sent is True
    assert counts(pool) == {"in_use": 0, "opened": 1, "reused": 0, "retried": 0, "closed": 1}


# -- what goes back into the pool --------------------------------------------------------------
async def test_partly_read_response_is_not_pooled() -> None:
    pool = UpstreamPool()
    async with echo_upstream() as url:
        with trio.fail_after(DEADLINE_S):
            response = await pool.request(url, "GET", "/big", [])
            assert response.status == 200
            assert 0 < len(await response.read()) < BIG
            await response.aclose()
            assert pool.statistics()["idle"] == {}
            assert repr(response) == "<UpstreamResponse 200 done=True>"
            await get_json(pool, url)
        await pool.aclose()
    assert counts(pool) == {"in_use": 0, "opened": 2, "reused": 0, "retried": 0, "closed": 2}


async def test_fully_read_response_is_pooled_after_aclose() -> None:
    pool = UpstreamPool()
    async with echo_upstream() as url:
        with trio.fail_after(DEADLINE_S):
            response = await pool.request(url, "GET", "/big", [])
            assert len(await response.read_all()) == BIG
            await response.aclose()  # a second close is harmless
            await get_json(pool, url)
        await pool.aclose()
    assert counts(pool)["reused"] == 1


async def test_streaming_request_body_with_a_length_is_sent_as_is() -> None:
    pool = UpstreamPool()
    async with echo_upstream() as url:
        with trio.fail_after(DEADLINE_S):
            response = await pool.request(
                url, "PUT", "/", [(b"content-length", b"11")], Stream(b"hello ", b"world")
            )
            seen = msgspec.json.decode(await response.read_all())
        await pool.aclose()
    assert seen["method"] == "PUT" and seen["body"] == "hello world"
    assert ["content-length", "11"] in seen["headers"]
    assert counts(pool)["reused"] == 0


async def put_streamed(body: Stream) -> Any:
    """What the echo upstream saw of a PUT whose body is streamed from ``body``."""
    pool = UpstreamPool()
    async with echo_upstream() as url:
        with trio.fail_after(DEADLINE_S):
            response = await pool.request(url, "PUT", "/", [], body)
            seen = msgspec.json.decode(await response.read_all())
        await pool.aclose()
    return seen


async def test_a_streamed_body_that_declares_its_length_is_sent_with_it() -> None:
    """The proxy forwards no client Content-Length (issue 8, item 6): the length it sends
    is the one the server's request body declares."""

    class Sized(Stream):
        length = 11

    seen = await put_streamed(Sized(b"hello ", b"world"))
    assert seen["body"] == "hello world"
    assert ["content-length", "11"] in seen["headers"]
    assert not any(name == "transfer-encoding" for name, _ in seen["headers"])


async def test_streaming_request_body_without_a_length_is_sent_chunked() -> None:
    seen = await put_streamed(Stream(b"hello ", b"world"))
    assert seen["body"] == "hello world"
    assert ["transfer-encoding", "chunked"] in seen["headers"]


async def test_connects_in_progress_past_the_limit_are_refused_at_once() -> None:
    from httpio.errors import Overloaded
    from httpio.limits import ConcurrencyLimit

    slots = ConcurrencyLimit("max_pending", 1)
    assert slots.try_acquire()  # one connect already under way
    pool = UpstreamPool()
    with pytest.raises(Overloaded) as info:
        await pool.request("http://127.0.0.1:9", "GET", "/", [], connect_slots=slots)
    assert info.value.status == 503 and (b"retry-after", b"1") in info.value.headers
    assert slots.refused == 1 and counts(pool)["opened"] == 0
    slots.release()
