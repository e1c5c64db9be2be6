"""The server loop, from the outside: an in-process `HttpServer` on a free port and raw trio
socket clients that send exact bytes and check the exact answer.

Timeouts run on trio's `MockClock` (the pytest-trio ``autojump_clock`` fixture), so a 5 s
head timeout takes no wall time; every read has a deadline, so a server that never answers
fails the test instead of hanging it.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from httpio.errors import ClientError, RouteNotFound, Unauthorized, UpstreamTimeout
from httpio.listen import listener_port, open_listeners
from httpio.messages import Handler, Request, Response, json_response
from httpio.proxyproto import SIGNATURE, build_v2
from httpio.run import serve_tcp
from httpio.server import YIELD_EVERY_REQUESTS, HttpServer
from httpio.settings import ServerLimits
from tests.support.polling import wait_until

DEADLINE_S = 10.0  # per client read; the server timeouts under test are all shorter
DATE = re.compile(rb"\r\ndate: ([^\r]*)\r\n")


# -- a raw client ----------------------------------------------------------------------------
@dataclass
class Reply:
    status_line: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    raw: bytes  # head and body as they came off the wire (chunked framing included)

    @property
    def status(self) -> int:
        return int(self.status_line.split(b" ")[1])

    def header(self, name: bytes) -> bytes | None:
        values = self.all(name)
        assert len(values) <= 1, f"{name!r} appears {len(values)} times"
        return values[0] if values else None

    def all(self, name: bytes) -> list[bytes]:
        return [v for n, v in self.headers if n == name]

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


def masked(raw: bytes) -> bytes:
    """``raw`` with the Date value replaced, after checking that it is an RFC 9110 date."""
    found = DATE.search(raw)
    assert found is not None, raw
    assert parsedate_to_datetime(found.group(1).decode()).tzname() == "UTC"
    return DATE.sub(b"\r\ndate: <date>\r\n", raw)


class RawClient:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def _fill(self) -> bool:
        with trio.fail_after(DEADLINE_S):
            data = await self.stream.receive_some(65536)
        self.buffer += data
        return bool(data)

    async def _take_line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            assert await self._fill(), f"EOF inside a line: {bytes(self.buffer)!r}"
        line = bytes(self.buffer[: end + 2])
        del self.buffer[: end + 2]
        return line

    async def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            assert await self._fill(), f"EOF with {len(self.buffer)} of {n} bytes"
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def read_head(self) -> bytes:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            assert await self._fill(), f"EOF inside a head: {bytes(self.buffer)!r}"
        head = bytes(self.buffer[: end + 4])
        del self.buffer[: end + 4]
        return head

    async def read_response(self, *, method: bytes = b"GET") -> Reply:
        head = await self.read_head()
        status_line, *lines = head[:-4].split(b"\r\n")
        headers = [
            (name.lower(), value.strip())
            for name, _, value in (line.partition(b":") for line in lines)
        ]
        reply = Reply(status_line, headers, b"", head)
        if method == b"HEAD" or reply.status in (204, 304) or reply.status < 200:
            return reply
        if reply.header(b"transfer-encoding") == b"chunked":
            parts = []
            while True:
                size_line = await self._take_line()
                size = int(size_line.split(b";")[0], 16)
                data = await self._take(size + 2)
                reply.raw += size_line + data
                if size == 0:
                    break
                parts.append(data[:-2])
            reply.body = b"".join(parts)
        elif (length := reply.header(b"content-length")) is not None:
            reply.body = await self._take(int(length))
            reply.raw += reply.body
        else:
            reply.body = await self.read_to_eof()
            reply.raw += reply.body
        return reply

    async def read_to_eof(self) -> bytes:
        while await self._fill():
            pass
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    async def aclose(self) -> None:
        await self.stream.aclose()


@asynccontextmanager
async def connect(port: int) -> AsyncIterator[RawClient]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    client = RawClient(stream)
    try:
        yield client
    finally:
        await client.aclose()


def get(path: str, *extra: str, method: str = "GET", version: str = "1.1") -> bytes:
    lines = [f"{method} {path} HTTP/{version}", "host: test", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- the application under the server ---------------------------------------------------------
class Chunks:
    """A streaming `ResponseBody` that records whether the server closed it."""

    def __init__(self, chunks: list[bytes], fail_after: int | None = None) -> None:
        self.chunks = list(chunks)
        self.fail_after = fail_after
        self.closed = False

    async def read(self) -> bytes:
        if self.fail_after is not None and len(self.chunks) == self.fail_after:
            raise UpstreamTimeout("upstream stalled mid-body")
        return self.chunks.pop(0) if self.chunks else b""

    async def aclose(self) -> None:
        self.closed = True


class App:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.bodies: list[Chunks] = []
        self.entered = trio.Event()
        self.release = trio.Event()

    def _chunks(self, chunks: list[bytes], fail_after: int | None = None) -> Chunks:
        body = Chunks(chunks, fail_after)
        self.bodies.append(body)
        return body

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        path = request.path
        if path == "/hello":
            return Response(200, [(b"content-type", b"text/plain")], b"hello")
        if path == "/echo":
            return Response(200, [], await request.body.read_all())
        if path == "/whoami":
            return json_response(
                200,
                {
                    "client": list(request.client),
                    "via_elb": request.via_elb,
                    "method": request.method,
                    "query": request.query,
                    "version": request.http_version,
                },
            )
        if path == "/stream":
            return Response(200, [], self._chunks([b"one", b"two", b"three"]))
        if path == "/stream-sized":
            return Response(200, [(b"content-length", b"6")], self._chunks([b"one", b"two"]))
        if path == "/stream-broken":
            return Response(200, [], self._chunks([b"one", b"two"], fail_after=1))
        if path == "/missing":
            raise RouteNotFound("no service 'missing'")
        if path == "/secret":
            raise Unauthorized("no token", error="")
        if path == "/boom":
            raise RuntimeError("a bug in the handler")
        if path == "/dated":
            return Response(200, [(b"date", b"Mon, 01 Jan 2024 00:00:00 GMT")], b"")
        if path == "/slow":
            self.entered.set()
            await self.release.wait()
            return Response(200, [], b"finally")
        if path.startswith("/status/"):
            return Response(int(path.removeprefix("/status/")), [], b"")
        raise ClientError(f"the test app has no {path}")


@asynccontextmanager
async def serving(
    app: Handler | None = None, limits: ServerLimits | None = None, **kwargs: Any
) -> AsyncIterator[tuple[HttpServer, int]]:
    server = HttpServer(app or App(), limits, name="test", **kwargs)
    listeners = await open_listeners(0)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, listeners)
        yield server, listener_port(listeners)
        nursery.cancel_scope.cancel()


# -- keep-alive, pipelining, HTTP/1.0 --------------------------------------------------------
async def test_exact_response_bytes() -> None:
    async with serving() as (_, port), connect(port) as client:
        await client.send(get("/hello"))
        reply = await client.read_response()
    assert masked(reply.raw) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: <date>\r\n"
        b"content-length: 5\r\n\r\nhello"
    )


async def test_keep_alive_serves_two_requests_on_one_connection() -> None:
    app = App()
    async with serving(app) as (server, port), connect(port) as client:
        await client.send(get("/hello"))
        first = await client.read_response()
        await client.send(get("/whoami?x=1"))
        second = await client.read_response()
        await wait_until(lambda: server.requests_served == 2)  # counted after the send
        assert server.statistics() == {
            "open_connections": 1,
            "requests_served": 2,
            "refused_connections": 0,
            "failed_connections": 0,
            "dropped_connections": {"no_request": 0, "bad_proxy_header": 0},
            "draining": False,
        }
    assert (first.status, first.body, first.header(b"connection")) == (200, b"hello", None)
    assert second.json()["query"] == "x=1"
    assert app.requests[0].client == app.requests[1].client


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with serving() as (_, port), connect(port) as client:
        await client.send(
            get("/whoami?n=1")
            + get("/echo", "content-length: 4", method="POST")
            + b"ping"
            + get("/hello")
            + get("/whoami?n=2")
        )
        replies = [await client.read_response() for _ in range(4)]
    assert [r.body for r in replies[1:3]] == [b"ping", b"hello"]
    assert [replies[0].json()["query"], replies[3].json()["query"]] == ["n=1", "n=2"]


async def test_pipelined_requests_to_a_handler_that_never_waits_let_others_run() -> None:
    # Heads already buffered are read without waiting; the server still yields now and then.
    ticks = 0
    seen: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await trio.lowlevel.checkpoint()

    async def never_waits(request: Request) -> Response:
        seen.append(ticks)
        return Response(200, [], b"ok")

    count = 4 * YIELD_EVERY_REQUESTS
    async with serving(never_waits) as (_, port), connect(port) as client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ticker)
            await client.send(get("/") * count)
            replies = [await client.read_response() for _ in range(count)]
            nursery.cancel_scope.cancel()
    assert [r.body for r in replies] == [b"ok"] * count
    assert len(set(seen)) >= 3  # the ticker ran between requests of the one connection


async def test_unread_request_body_is_skipped_before_the_next_request() -> None:
    async with serving() as (_, port), connect(port) as client:
        await client.send(get("/hello", "content-length: 5", method="POST") + b"12345")
        await client.send(get("/hello"))
        assert [(await client.read_response()).body for _ in range(2)] == [b"hello", b"hello"]


async def test_http_1_0_client_gets_the_whole_response_then_close() -> None:
    async with serving() as (_, port), connect(port) as client:
        await client.send(b"GET /hello HTTP/1.0\r\n\r\n")
        raw = await client.read_to_eof()
    assert masked(raw) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: <date>\r\n"
        b"content-length: 5\r\nConnection: close\r\n\r\nhello"
    )


async def test_http_1_0_streaming_body_is_delimited_by_close() -> None:
    app = App()
    async with serving(app) as (_, port), connect(port) as client:
        await client.send(b"GET /stream HTTP/1.0\r\n\r\n")
        reply = await client.read_response()
        assert await client.read_to_eof() == b""
    assert reply.header(b"transfer-encoding") is None and reply.body == b"onetwothree"
    assert app.bodies[0].closed


async def test_http_1_0_keep_alive_serves_requests_on_one_connection() -> None:
    # RFC 9112 9.3 / RFC 2068 19.7.1: asked for, and the length known, the connection stays.
    app = App()
    ask = "connection: keep-alive"
    async with serving(app) as (server, port), connect(port) as client:
        await client.send(get("/hello", ask, version="1.0"))
        first = await client.read_response()
        await client.send(get("/echo", ask, "content-length: 4", method="POST", version="1.0"))
        await client.send(b"ping" + get("/stream-sized", ask, version="1.0"))  # pipelined
        second, third = await client.read_response(), await client.read_response()
        await client.send(get("/whoami", ask, version="1.0"))
        fourth = await client.read_response()
        await wait_until(lambda: server.requests_served == 4)
        assert server.open_connections == 1
    assert masked(first.raw) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: <date>\r\n"
        b"content-length: 5\r\nConnection: keep-alive\r\n\r\nhello"
    )
    assert [second.body, third.body] == [b"ping", b"onetwo"]
    assert third.header(b"connection") == b"keep-alive"
    assert fourth.json()["version"] == "1.0"
    assert len({r.client for r in app.requests}) == 1


async def test_http_1_0_keep_alive_ends_with_a_body_of_unknown_length() -> None:
    app = App()
    async with serving(app) as (_, port), connect(port) as client:
        await client.send(get("/stream", "connection: keep-alive", version="1.0"))
        reply = await client.read_response()
        assert await client.read_to_eof() == b""
    assert (reply.header(b"connection"), reply.body) == (b"close", b"onetwothree")
    assert app.bodies[0].closed


async def test_http_1_0_keep_alive_ends_on_close_or_drain() -> None:
    app = App()
    async with serving(app) as (server, port):
        async with connect(port) as client:
            await client.send(get("/hello", "connection: keep-alive, close", version="1.0"))
            assert (await client.read_response()).header(b"connection") == b"close"
            assert await client.read_to_eof() == b""
        async with connect(port) as client:
            await client.send(get("/slow", "connection: keep-alive", version="1.0"))
            await app.entered.wait()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(server.drain)
                await wait_until(lambda: server.draining)
                app.release.set()
                reply = await client.read_response()
                assert await client.read_to_eof() == b""
    assert (reply.header(b"connection"), reply.body) == (b"close", b"finally")


@pytest.mark.parametrize(
    ("status", "line"),
    [
        (200, b"HTTP/1.1 200 OK"),
        (201, b"HTTP/1.1 201 Created"),
        (204, b"HTTP/1.1 204 No Content"),
        (301, b"HTTP/1.1 301 Moved Permanently"),
        (404, b"HTTP/1.1 404 Not Found"),
        (418, b"HTTP/1.1 418 I'm a Teapot"),
        (503, b"HTTP/1.1 503 Service Unavailable"),
        (299, b"HTTP/1.1 299 Unknown"),
    ],
)
async def test_reason_phrase_on_the_status_line(status: int, line: bytes) -> None:
    async with serving() as (_, port), connect(port) as client:
        await client.send(get(f"/status/{status}") + get("/hello"))
        reply = await client.read_response()
        assert (await client.read_response()).body == b"hello"  # framing stayed right
    assert reply.status_line == line
    assert reply.header(b"content-length") == (None if status == 204 else b"0")


# -- client faults: 400, 408, 413, 431 -------------------------------------------------------
def assert_error(reply: Reply, status: int, code: str, detail: str = "") -> None:
    assert reply.status == status
    assert reply.header(b"content-type") == b"application/json"
    assert reply.header(b"connection") == b"close"
    body = reply.json()
    # a proxy's refusals carry its request id as a fourth field (issue 12)
    assert list(body)[:3] == ["status", "error", "detail"]
    assert set(body) <= {"status", "error", "detail", "request_id"}
    assert (body["status"], body["error"]) == (status, code)
    assert detail in body["detail"]


async def test_malformed_head_is_400_with_the_json_error_body() -> None:
    async with serving() as (server, port), connect(port) as client:
        await client.send(b"GARBAGE\r\n\r\n")
        reply = await client.read_response()
        assert await client.read_to_eof() == b""
    assert reply.status_line == b"HTTP/1.1 400 Bad Request"
    assert_error(reply, 400, "bad_request", "malformed request")
    assert server.requests_served == 0


async def test_a_refused_head_request_gets_the_head_alone() -> None:
    """A HEAD refused before the handler (here an ambiguous length) is answered with the head
    of its error, Content-Length included, and no body (RFC 9110 9.3.2): a body after it
    would be read as the next answer. h11 refused to write one at all, so before the client
    got nothing but the close."""
    async with serving() as (server, port), connect(port) as client:
        ambiguous = ("content-length: 5", "transfer-encoding: chunked")
        await client.send(get("/x", *ambiguous, method="HEAD") + b"0\r\n\r\n")
        reply = await client.read_response(method=b"HEAD")
        assert await client.read_to_eof() == b""
    assert reply.status_line == b"HTTP/1.1 400 Bad Request"
    assert int(reply.header(b"content-length") or b"0") > 0 and reply.body == b""
    assert reply.header(b"connection") == b"close" and server.requests_served == 0


async def test_head_too_large_in_one_piece_is_431() -> None:
    limits = ServerLimits(max_head_bytes=1024)
    async with serving(limits=limits) as (_, port), connect(port) as client:
        await client.send(get("/hello", "x-big: " + "a" * 2000))
        reply = await client.read_response()
        assert await client.read_to_eof() == b""
    assert reply.status_line == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert_error(reply, 431, "headers_too_large", "1024 bytes")


async def test_head_too_large_trickled_is_431_before_it_ends() -> None:
    limits = ServerLimits(max_head_bytes=1024)
    async with serving(limits=limits) as (_, port), connect(port) as client:
        await client.send(b"GET /hello HTTP/1.1\r\nhost: test\r\n")
        sent = 0
        while sent <= 1024:  # the head never ends: only the incomplete-head bound can fire
            piece = b"x-fill-%04d: %s\r\n" % (sent, b"a" * 100)
            await client.send(piece)
            sent += len(piece)
        reply = await client.read_response()
        assert await client.read_to_eof() == b""
    assert_error(reply, 431, "headers_too_large")


async def test_content_length_over_the_limit_is_413_up_front() -> None:
    app = App()
    limits = ServerLimits(max_body_bytes=100)
    async with serving(app, limits) as (_, port), connect(port) as client:
        await client.send(get("/echo", "content-length: 101", method="POST"))
        reply = await client.read_response()
        assert await client.read_to_eof() == b""
    assert reply.status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert_error(reply, 413, "body_too_large", "100 bytes")
    assert app.requests == []  # refused before the handler ran


async def test_chunked_body_growing_past_the_limit_is_413() -> None:
    limits = ServerLimits(max_body_bytes=100)
    chunk = b"3c\r\n" + b"b" * 60 + b"\r\n"
    async with serving(limits=limits) as (_, port), connect(port) as client:
        await client.send(
            get("/echo", "transfer-encoding: chunked", method="POST") + chunk + chunk + b"0\r\n\r\n"
        )
        reply = await client.read_response()
        assert await client.read_to_eof() == b""
    assert_error(reply, 413, "body_too_large")


async def test_chunked_body_within_the_limit_is_echoed() -> None:
    limits = ServerLimits(max_body_bytes=100)
    async with serving(limits=limits) as (_, port), connect(port) as client:
        await client.send(
            get("/echo", "transfer-encoding: chunked", method="POST")
            + b"5\r\nhello\r\n1;ext=1\r\n!\r\n0\r\n\r\n"
            + get("/hello")
        )
        assert (await client.read_response()).body == b"hello!"
        assert (await client.read_response()).body == b"hello"


async def test_head_not_in_time_is_408(autojump_clock: trio.testing.MockClock) -> None:
    limits = ServerLimits(head_timeout_s=5)
    async with serving(limits=limits) as (_, port), connect(port) as client:
        start = trio.current_time()
        await client.send(b"GET /hello HTTP/1.1\r\nhost: te")
        reply = await client.read_response()
        assert trio.current_time() - start == pytest.approx(5)
        assert await client.read_to_eof() == b""
    assert reply.status_line == b"HTTP/1.1 408 Request Timeout"
    assert_error(reply, 408, "request_timeout", "head")


async def test_second_head_not_in_time_is_408(autojump_clock: trio.testing.MockClock) -> None:
    limits = ServerLimits(head_timeout_s=5, idle_timeout_s=30)
    async with serving(limits=limits) as (_, port), connect(port) as client:
        await client.send(get("/hello"))
        await client.read_response()
        await client.send(b"GET /hello HTTP/1.1\r\n")  # the idle wait ends, the head clock starts
        start = trio.current_time()
        reply = await client.read_response()
        assert trio.current_time() - start == pytest.approx(5)
    assert_error(reply, 408, "request_timeout")


async def test_body_not_in_time_is_408(autojump_clock: trio.testing.MockClock) -> None:
    limits = ServerLimits(body_timeout_s=3)
    async with serving(limits=limits) as (_, port), connect(port) as client:
        await client.send(get("/echo", "content-length: 10", method="POST") + b"abc")
        reply = await client.read_response()
        assert await client.read_to_eof() == b""
    assert_error(reply, 408, "request_timeout", "body")


async def test_idle_keep_alive_connection_is_closed_silently(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = ServerLimits(idle_timeout_s=7, head_timeout_s=1)
    async with serving(limits=limits) as (server, port), connect(port) as client:
        await client.send(get("/hello"))
        await client.read_response()
        start = trio.current_time()
        assert await client.read_to_eof() == b""
        assert trio.current_time() - start == pytest.approx(7)
        await wait_until(lambda: server.open_connections == 0)


# -- limits ------------------------------------------------------------------------------------
async def test_over_max_connections_gets_503_and_close() -> None:
    limits = ServerLimits(max_connections=1)
    async with serving(limits=limits) as (server, port):
        async with connect(port) as first:
            await first.send(get("/hello"))
            await first.read_response()
            async with connect(port) as second:
                raw = await second.read_to_eof()
            await first.send(get("/hello"))
            assert (await first.read_response()).body == b"hello"
        await wait_until(lambda: server.open_connections == 0)
        async with connect(port) as third:
            await third.send(get("/hello"))
            assert (await third.read_response()).status == 200
        assert server.refused_connections == 1
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    request_id = lines[2].removeprefix(b"x-request-id: ")
    assert re.fullmatch(rb"[0-9a-f]{22}", request_id)
    assert lines == [
        b"HTTP/1.1 503 Service Unavailable",
        b"content-type: application/json",
        b"x-request-id: " + request_id,
        b"connection: close",
        b"retry-after: 1",
        b"content-length: %d" % len(body),
    ]
    assert msgspec.json.decode(body) == {
        "status": 503,
        "error": "too_many_connections",
        "detail": "server is at its connection limit",
        "request_id": request_id.decode(),
    }


# -- handler outcomes --------------------------------------------------------------------------
async def test_gateway_error_becomes_its_status_and_json_body() -> None:
    async with serving() as (_, port), connect(port) as client:
        await client.send(get("/missing") + get("/hello"))
        missing = await client.read_response()
        after = await client.read_response()
        await client.send(get("/secret"))
        secret = await client.read_response()
    assert missing.status_line == b"HTTP/1.1 404 Not Found"
    assert missing.json() == {"status": 404, "error": "not_found", "detail": "no service 'missing'"}
    assert missing.header(b"connection") is None  # a refusal leaves the connection usable
    assert after.body == b"hello"
    assert secret.status_line == b"HTTP/1.1 401 Unauthorized"
    assert secret.header(b"www-authenticate") == b'Bearer realm="gateway"'
    assert secret.json() == {"status": 401, "error": "unauthorized", "detail": "no token"}


async def test_client_error_with_a_small_unread_body_skips_it_and_keeps_the_connection() -> None:
    async with serving() as (_, port), connect(port) as client:
        await client.send(
            get("/secret", "content-length: 3", method="POST") + b"abc" + get("/hello")
        )
        reply = await client.read_response()
        after = await client.read_response()
    assert reply.status == 401 and reply.header(b"connection") is None
    assert after.body == b"hello"


async def test_client_error_on_a_bodiless_request_keeps_the_connection() -> None:
    async with serving() as (_, port), connect(port) as client:
        await client.send(get("/secret") + get("/hello"))
        secret = await client.read_response()
        after = await client.read_response()
    assert secret.header(b"connection") is None
    assert after.body == b"hello"


async def test_unexpected_exception_is_500_and_serving_goes_on() -> None:
    async with serving() as (_, port):
        async with connect(port) as client:
            await client.send(get("/boom"))
            reply = await client.read_response()
            await client.send(get("/hello"))
            assert (await client.read_response()).body == b"hello"
        async with connect(port) as client:
            await client.send(get("/hello"))
            assert (await client.read_response()).status == 200
    assert reply.status_line == b"HTTP/1.1 500 Internal Server Error"
    assert reply.json() == {
        "status": 500,
        "error": "internal_error",
        "detail": "internal error while serving the request",
    }


async def test_streaming_body_is_chunked_for_http_1_1() -> None:
    app = App()
    async with serving(app) as (_, port), connect(port) as client:
        await client.send(get("/stream") + get("/stream-sized"))
        chunked = await client.read_response()
        sized = await client.read_response()
    assert masked(chunked.raw) == (
        b"HTTP/1.1 200 OK\r\ndate: <date>\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\none\r\n3\r\ntwo\r\n5\r\nthree\r\n0\r\n\r\n"
    )
    assert sized.header(b"transfer-encoding") is None and sized.body == b"onetwo"
    assert [body.closed for body in app.bodies] == [True, True]


async def test_streaming_body_failing_midway_truncates_and_closes() -> None:
    app = App()
    async with serving(app) as (_, port), connect(port) as client:
        await client.send(get("/stream-broken"))
        head = await client.read_head()
        rest = await client.read_to_eof()
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert rest == b"3\r\none\r\n"  # no last chunk: the client can tell it was cut
    assert app.bodies[0].closed


class Trickle:
    """A streaming body that makes steady progress: one byte a second."""

    def __init__(self, seconds: int) -> None:
        self.left = seconds

    async def read(self) -> bytes:
        if not self.left:
            return b""
        self.left -= 1
        await trio.sleep(1)
        return b"x"

    async def aclose(self) -> None:
        pass


async def test_send_timeout_does_not_cut_a_stream_that_progresses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def trickle(request: Request) -> Response:
        return Response(200, [(b"content-length", b"8")], Trickle(8))

    async with (
        serving(trickle, ServerLimits(send_timeout_s=5)) as (_, port),
        connect(port) as client,
    ):
        await client.send(get("/"))
        reply = await client.read_response()
    assert reply.body == b"x" * 8


async def test_head_request_gets_no_body() -> None:
    app = App()
    async with serving(app) as (_, port), connect(port) as client:
        await client.send(get("/hello", method="HEAD") + get("/stream", method="HEAD"))
        await client.send(get("/hello"))
        head = await client.read_response(method=b"HEAD")
        streamed = await client.read_response(method=b"HEAD")
        after = await client.read_response()
    assert masked(head.raw) == (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ndate: <date>\r\ncontent-length: 5\r\n\r\n"
    )
    assert streamed.status == 200 and streamed.body == b""
    assert after.body == b"hello"  # nothing stray was sent after either HEAD answer
    assert app.bodies[0].closed


async def test_expect_100_continue_is_answered_before_the_body_is_read() -> None:
    async with serving() as (_, port), connect(port) as client:
        await client.send(get("/echo", "content-length: 5", "expect: 100-continue", method="POST"))
        interim = await client.read_head()
        await client.send(b"hello")
        reply = await client.read_response()
    assert interim.startswith(b"HTTP/1.1 100")
    assert reply.body == b"hello"


async def test_100_continue_has_its_reason_phrase() -> None:
    async with serving() as (_, port), connect(port) as client:
        await client.send(get("/echo", "content-length: 1", "expect: 100-continue", method="POST"))
        assert await client.read_head() == b"HTTP/1.1 100 Continue\r\n\r\n"


async def test_no_100_continue_when_the_handler_does_not_read_the_body() -> None:
    async with serving() as (_, port), connect(port) as client:
        await client.send(get("/hello", "content-length: 5", "expect: 100-continue", method="POST"))
        reply = await client.read_response()
    assert reply.status_line == b"HTTP/1.1 200 OK"


async def test_final_response_without_100_continue_closes_the_connection() -> None:
    async with serving() as (_, port), connect(port) as client:
        await client.send(get("/hello", "content-length: 5", "expect: 100-continue", method="POST"))
        reply = await client.read_response()
        # RFC 9110 10.1.1: having seen a final status, the client need not send the body;
        # the server cannot tell body bytes from a next request, so it must close.
        assert reply.header(b"connection") == b"close"
        await client.send(get("/hello"))
        assert await client.read_to_eof() == b""


async def test_date_header_once_and_the_handlers_own_kept() -> None:
    async with serving() as (_, port), connect(port) as client:
        await client.send(get("/hello") + get("/dated"))
        ours = await client.read_response()
        theirs = await client.read_response()
    assert len(ours.all(b"date")) == 1
    assert theirs.all(b"date") == [b"Mon, 01 Jan 2024 00:00:00 GMT"]


# -- drain -------------------------------------------------------------------------------------
async def test_drain_closes_idle_and_finishes_in_flight_with_close() -> None:
    app = App()
    async with serving(app) as (server, port), connect(port) as idle, connect(port) as busy:
        await idle.send(get("/hello"))
        await idle.read_response()
        await busy.send(get("/slow"))
        with trio.fail_after(DEADLINE_S):
            await app.entered.wait()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.drain)
            assert await idle.read_to_eof() == b""
            assert server.open_connections == 1 and server.draining
            app.release.set()
            reply = await busy.read_response()
            assert await busy.read_to_eof() == b""
        assert server.open_connections == 0
    assert (reply.status, reply.body) == (200, b"finally")
    assert reply.header(b"connection") == b"close"
    assert server.statistics()["draining"] is True


async def test_drain_cancels_what_is_left_at_the_drain_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    app = App()
    limits = ServerLimits(drain_timeout_s=4)
    async with serving(app, limits) as (server, port), connect(port) as busy:
        await busy.send(get("/slow"))
        await app.entered.wait()
        start = trio.current_time()
        await server.drain()
        assert trio.current_time() - start == pytest.approx(4)
        assert await busy.read_to_eof() == b""


async def test_drain_closes_a_connection_that_never_sent_a_byte(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = ServerLimits(head_timeout_s=10, drain_timeout_s=10)
    async with serving(limits=limits) as (server, port), connect(port) as silent:
        await wait_until(lambda: server.open_connections == 1)
        start = trio.current_time()
        await server.drain()
        assert trio.current_time() - start < 1
        assert await silent.read_to_eof() == b""
    assert server.dropped_connections["no_request"] == 0  # a drain's close is no drop


# -- a switched connection (101) ---------------------------------------------------------------
class EchoUntilQuit:
    """A switched body: echoes what comes until ``quit``, counting bytes each way."""

    def __init__(self) -> None:
        self.transferred = (0, 0)

    async def take_over(self, stream: trio.SocketStream, trailing: bytes) -> None:
        received = sent = len(trailing)
        data = trailing
        while b"quit" not in data:
            data = await stream.receive_some(1024)
            if not data:
                break
            received += len(data)
            await stream.send_all(data)
            sent += len(data)
            self.transferred = (received, sent)

    async def read(self) -> bytes:
        return b""  # a 101 has no body

    async def aclose(self) -> None:
        pass


async def switching(request: Request) -> Response:
    headers = [(b"upgrade", b"echo"), (b"connection", b"upgrade")]
    return Response(101, headers, EchoUntilQuit())


async def test_a_switched_connection_is_observed_once_at_its_end() -> None:
    """Issue 12: a 101 is shown to the observer when the session ends, with the session's
    duration and the bytes its body counted; not when the 101 goes out."""
    seen = Seen()
    async with serving(switching) as (server, port):
        server.observer = seen
        async with connect(port) as client:
            head = get(
                "/up?access_token=t", "upgrade: echo", "connection: upgrade", "user-agent: ua/1"
            )
            await client.send(head)
            assert (await client.read_response()).status == 101
            await client.send(b"ping")
            assert await client.stream.receive_some(4) == b"ping"
            assert seen.calls == []  # the session is still open
            await client.send(b"quit")
            assert await client.read_to_eof() == b"quit"
        await wait_until(lambda: len(seen.calls) == 1)
    ((request, response, started, sent),) = seen.calls
    assert (response.status, request.method, request.target) == (101, "GET", "/up?access_token=t")
    assert (request.body.length, sent) == (8, 8)  # "ping" and "quit", each way
    assert request.headers == [(b"user-agent", b"ua/1")]  # the slim copy kept for the session
    assert started <= time.monotonic()


# -- connections that end before any request ---------------------------------------------------
class Drops:
    """An ``on_dropped`` that keeps what it was shown."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, int], bool, float]] = []

    def __call__(self, reason: str, peer: tuple[str, int], via_elb: bool, started: float) -> None:
        self.calls.append((reason, peer, via_elb, started))

    def reasons(self) -> list[tuple[str, str, bool]]:
        return [(reason, peer[0], via_elb) for reason, peer, via_elb, _ in self.calls]


async def test_a_connection_silent_until_the_head_timeout_is_counted_and_shown(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Closed without a word, but not unseen (issue 12): ``no_request``. An idle keep-alive
    connection closed after its request, and a client that closes before speaking, are not."""
    drops = Drops()
    limits = ServerLimits(head_timeout_s=5.0, idle_timeout_s=7.0)
    async with serving(limits=limits) as (server, port):
        server.on_dropped = drops
        async with connect(port) as silent:
            start = trio.current_time()
            assert await silent.read_to_eof() == b""
            assert 5.0 <= trio.current_time() - start < 6.0
        async with connect(port) as idle:
            await idle.send(get("/hello"))
            await idle.read_response()
            assert await idle.read_to_eof() == b""  # closed at the idle timeout
        async with connect(port):
            pass  # closed before a byte
        await wait_until(lambda: server.open_connections == 0)
        assert server.dropped_connections == {"no_request": 1, "bad_proxy_header": 0}
    (reason, peer, via_elb, started) = drops.calls[0]
    assert (reason, peer[0], via_elb, len(drops.calls)) == ("no_request", "127.0.0.1", False, 1)
    assert started < time.monotonic()


# -- PROXY protocol v2 -------------------------------------------------------------------------
async def test_proxy_header_from_a_trusted_peer_names_the_client() -> None:
    app = App()
    async with serving(app, trusted_proxies=["127.0.0.1"]) as (_, port), connect(port) as client:
        header = build_v2(("203.0.113.7", 40000), ("127.0.0.1", port))
        await client.send(header[:10])  # a header split across reads is reassembled
        await client.send(header[10:] + get("/whoami") + get("/whoami"))
        first = await client.read_response()
        second = await client.read_response()
    assert first.json()["client"] == ["203.0.113.7", 40000]
    assert first.json()["via_elb"] is True
    assert second.json() == first.json()


async def test_plain_http_from_a_trusted_peer_is_served_as_is() -> None:
    app = App()
    async with serving(app, trusted_proxies=["127.0.0.1"]) as (_, port), connect(port) as client:
        await client.send(get("/whoami"))
        body = (await client.read_response()).json()
        assert body["client"] == ["127.0.0.1", client.stream.socket.getsockname()[1]]
    assert body["via_elb"] is False


async def test_local_proxy_header_keeps_the_transport_address() -> None:
    async with serving(trusted_proxies=["127.0.0.1"]) as (_, port), connect(port) as client:
        await client.send(SIGNATURE + b"\x20\x00\x00\x00" + get("/whoami"))
        body = (await client.read_response()).json()
        assert body["client"] == ["127.0.0.1", client.stream.socket.getsockname()[1]]
    assert body["via_elb"] is True


async def test_broken_proxy_header_from_a_trusted_peer_is_dropped() -> None:
    drops = Drops()
    async with serving(trusted_proxies=["127.0.0.1"]) as (server, port):
        server.on_dropped = drops
        async with connect(port) as client:
            await client.send(SIGNATURE + b"\x13\x11\x00\x00" + get("/whoami"))
            assert await client.read_to_eof() == b""
        await wait_until(lambda: server.open_connections == 0)
        assert server.dropped_connections == {"no_request": 0, "bad_proxy_header": 1}
    assert drops.reasons() == [("bad_proxy_header", "127.0.0.1", False)]


async def test_a_trusted_peer_silent_mid_proxy_header_is_closed_at_the_head_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limits = ServerLimits(head_timeout_s=5.0)
    drops = Drops()
    async with serving(None, limits, trusted_proxies=["127.0.0.1"]) as (server, port):
        server.on_dropped = drops
        async with connect(port) as client:
            await client.send(SIGNATURE[:6])  # a PROXY header begun, never finished
            start = trio.current_time()
            assert await client.read_to_eof() == b""
            assert 5.0 <= trio.current_time() - start < 6.0
        async with connect(port) as client:  # and one that says nothing at all
            assert await client.read_to_eof() == b""
        await wait_until(lambda: len(drops.calls) == 2)
    assert drops.reasons() == [
        ("bad_proxy_header", "127.0.0.1", False),
        ("no_request", "127.0.0.1", False),
    ]


async def test_proxy_header_from_an_untrusted_peer_is_400() -> None:
    app = App()
    async with serving(app, trusted_proxies=["192.0.2.1"]) as (_, port), connect(port) as client:
        await client.send(build_v2(("203.0.113.7", 40000), ("127.0.0.1", port)) + get("/whoami"))
        reply = await client.read_response()
        assert await client.read_to_eof() == b""
    assert_error(reply, 400, "bad_request")
    assert app.requests == []


# -- entry point -------------------------------------------------------------------------------
async def test_serve_tcp_reports_its_port() -> None:
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_tcp, App(), 0)
        async with connect(port) as client:
            await client.send(get("/whoami"))
            assert (await client.read_response()).json()["method"] == "GET"
        nursery.cancel_scope.cancel()


# -- what the observer sees of requests refused before the handler ------------------------------
class Seen:
    """An observer that keeps what it was shown."""

    def __init__(self) -> None:
        self.calls: list[tuple[Request, Response, float, int]] = []

    def __call__(self, request: Request, response: Response, started: float, sent: int) -> None:
        self.calls.append((request, response, started, sent))

    def refused(self) -> list[tuple[str, str, str, int, str]]:
        out = []
        for request, response, _, _ in self.calls:
            note = request.note
            if note is None:  # answered by the handler
                continue
            assert note.refused
            out.append(
                (request.client[0], request.method, request.target, response.status, note.error)
            )
        return out


async def refused_each_then_capped(server: HttpServer, port: int, raws: list[bytes]) -> list[Reply]:
    """Each of ``raws`` on a connection of its own, then a connection over a cap of 1 (while
    another holds it); the answers, in order."""
    replies = []
    for raw in raws:
        async with connect(port) as client:
            await client.send(raw)
            replies.append(await client.read_response())
            await client.read_to_eof()
        await wait_until(lambda: server.open_connections == 0)  # the cap is 1
    async with connect(port) as first:
        await first.send(get("/hello"))
        await first.read_response()
        async with connect(port) as second:
            replies.append(await second.read_response())
            await second.read_to_eof()
    return replies


async def test_refusals_before_the_handler_reach_the_observer() -> None:
    """400 (no head parsed: method and target unknown), 431, 405 and 501 with the head they
    had, 413 on a declared length, the connection cap's 503: each is shown to the observer
    with its error kind and the body bytes of its answer."""
    seen = Seen()
    limits = ServerLimits(max_head_bytes=1024, max_connections=1)
    async with serving(limits=limits) as (server, port):
        server.observer = seen
        raws = [
            b"GARBAGE\r\n\r\n",
            get("/hello", "x-big: " + "a" * 2000),
            get("/x?access_token=secret", method="TRACE"),
            get("/y", method="BREW"),
            get("/echo", "content-length: 2000000000", method="POST"),
        ]
        await refused_each_then_capped(server, port, raws)
        await wait_until(lambda: len(seen.calls) == 7)
    assert seen.refused() == [
        ("127.0.0.1", "-", "-", 400, "bad_request"),
        ("127.0.0.1", "GET", "/hello", 431, "headers_too_large"),
        ("127.0.0.1", "TRACE", "/x?access_token=secret", 405, "method_not_allowed"),
        ("127.0.0.1", "-", "/y", 501, "not_implemented"),  # an unknown method is no label
        ("127.0.0.1", "POST", "/echo", 413, "body_too_large"),
        ("127.0.0.1", "-", "-", 503, "too_many_connections"),
    ]
    sizes = [sent for r, _, _, sent in seen.calls if r.note is not None]
    assert all(n > 0 for n in sizes)  # the JSON body of each answer
    assert server.requests_served == 2  # /hello, and the 413 (its head was a request)


async def test_every_refusal_carries_a_request_id_in_its_answer_and_its_note() -> None:
    """Issue 12: a refused request has a request id like any other, in the JSON body, an
    ``X-Request-ID`` header and what the observer sees (the access log's ``request_id``): the
    client's own when its head parsed, a new one when it did not or never came."""
    seen = Seen()
    limits = ServerLimits(max_connections=1)
    async with serving(limits=limits) as (server, port):
        server.observer = seen
        raws = [
            b"GARBAGE\r\n\r\n",
            get("/x", "x-request-id: client-id-1", method="TRACE"),
            get("/echo", "x-request-id: bad id", "content-length: 2000000000", method="POST"),
        ]
        replies = await refused_each_then_capped(server, port, raws)
        await wait_until(lambda: len(seen.calls) == 5)
    noted = [r.note.request_id for r, _, _, _ in seen.calls if r.note is not None]
    sent = [reply.header(b"x-request-id") for reply in replies]
    assert [reply.status for reply in replies] == [400, 405, 413, 503]
    assert [reply.json()["request_id"] for reply in replies] == noted
    assert [value.decode() if value else None for value in sent] == noted
    assert noted[1] == "client-id-1"  # the client's sane id is kept
    assert all(re.fullmatch("[0-9a-f]{22}", rid) for rid in (noted[0], *noted[2:]))
    assert len(set(noted)) == 4
    responses = [response for r, response, _, _ in seen.calls if r.note is not None]
    assert [dict(response.headers).get(b"x-request-id") for response in responses] == sent


async def test_a_head_that_never_completes_is_shown_with_its_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen = Seen()
    async with serving(limits=ServerLimits(head_timeout_s=5)) as (server, port):
        server.observer = seen
        async with connect(port) as client:
            await client.send(b"GET /hello HTTP/1.1\r\nhost: te")
            await client.read_response()
        await wait_until(lambda: len(seen.calls) == 1)
    assert seen.refused() == [("127.0.0.1", "-", "-", 408, "request_timeout")]
