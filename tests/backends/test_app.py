"""`backends.app`: the misbehaviour parsing (pure), and the handler served for real by
httpio.server on a free port, read with a tiny h11 client."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import h11
import msgspec
import pytest
import trio

from backends.app import (
    ECHO_TEXT_LIMIT,
    PATTERN,
    BackendApp,
    Misbehaviour,
    PatternBody,
    TruncatedBody,
    parse_byte_count,
    parse_misbehaviour,
)
from backends.static_files import (
    PDF_SIZE,
    StaticSite,
)
from httpio.errors import ClientError
from httpio.run import serve_tcp

# -- misbehaviour parsing -----------------------------------------------------------------------


def test_parse_misbehaviour_defaults_and_unknown_parameters() -> None:
    assert parse_misbehaviour("") == Misbehaviour()
    assert parse_misbehaviour("x=1&y=2") == Misbehaviour()


def test_parse_misbehaviour_values() -> None:
    plan = parse_misbehaviour(
        "delay=1.5&status=503&close=mid&drop=1&set-cookie=1"
        "&cache-control=private%2C%20max-age%3D0&vary=Accept-Encoding"
    )
    assert plan == Misbehaviour(
        delay_s=1.5,
        status=503,
        truncate=True,
        drop=True,
        set_cookie="1",
        cache_control="private, max-age=0",
        vary="Accept-Encoding",
    )
    assert parse_misbehaviour("close=1").truncate
    assert not parse_misbehaviour("close=0&drop=0&set-cookie=0").truncate


@pytest.mark.parametrize(
    "query",
    ["delay=abc", "delay=-1", "delay=100000", "status=99", "status=600", "status=x", "close=2"],
)
def test_parse_misbehaviour_refuses_bad_values(query: str) -> None:
    with pytest.raises(ClientError):
        parse_misbehaviour(query)


def test_parse_misbehaviour_refuses_header_injection() -> None:
    with pytest.raises(ClientError):
        parse_misbehaviour("vary=a%0d%0aX-Evil:%201")


def test_parse_byte_count() -> None:
    assert parse_byte_count("/bytes/0") == 0
    assert parse_byte_count("/bytes/123") == 123
    for bad in ("/bytes/", "/bytes/-1", "/bytes/1e3", "/bytes/99999999999999999"):
        with pytest.raises(ClientError):
            parse_byte_count(bad)


async def _drain(body: PatternBody | TruncatedBody) -> bytes:
    out = bytearray()
    while chunk := await body.read():
        out += chunk
    return bytes(out)


async def test_pattern_body_streams_the_pattern() -> None:
    data = await _drain(PatternBody(200_000))
    assert len(data) == 200_000
    assert data == (PATTERN * 4)[:200_000]
    assert all(data[k] == k % 256 for k in (0, 255, 256, 65535, 65536, 199_999))
    assert await _drain(PatternBody(1000, stop_after=500)) == PATTERN[:500]


async def test_truncated_body_gives_half() -> None:
    assert await _drain(TruncatedBody(b"0123456789")) == b"01234"


# -- served for real ----------------------------------------------------------------------------


@dataclass
class Reply:
    status: int | None
    headers: dict[bytes, bytes] = field(default_factory=dict)
    body: bytes = b""
    complete: bool = False

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


async def fetch(
    port: int,
    method: str,
    target: str,
    headers: Sequence[tuple[str, str | bytes]] = (),
    body: bytes = b"",
    chunks: Sequence[bytes] = (),
) -> Reply:
    """One request on a fresh connection; reads until the message ends or the peer closes."""
    conn = h11.Connection(h11.CLIENT)
    hs = [(b"host", b"127.0.0.1")]
    hs += [(n.encode(), v if isinstance(v, bytes) else v.encode()) for n, v in headers]
    if chunks:
        hs.append((b"content-length", b"%d" % sum(len(c) for c in chunks)))
    elif body or method in ("POST", "PUT"):
        hs.append((b"content-length", b"%d" % len(body)))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(conn.send(h11.Request(method=method, target=target, headers=hs)))
        for chunk in chunks or ([body] if body else []):
            await stream.send_all(conn.send(h11.Data(data=chunk)))
        await stream.send_all(conn.send(h11.EndOfMessage()))
        reply = Reply(None)
        with trio.fail_after(10):
            while True:
                try:
                    event = conn.next_event()
                except h11.RemoteProtocolError:
                    return reply  # closed mid-message
                if event is h11.NEED_DATA:
                    try:
                        data = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        data = b""
                    conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    reply.status = event.status_code
                    reply.headers = {bytes(n): bytes(v) for n, v in event.headers}
                elif isinstance(event, h11.Data):
                    reply.body += bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    reply.complete = True
                    return reply
                elif isinstance(event, h11.ConnectionClosed):
                    return reply


@dataclass
class Running:
    app: BackendApp
    port: int
    sleeps: list[float]


async def start_backend(nursery: trio.Nursery, *, test_faults: bool) -> Running:
    sleeps: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    app = BackendApp(StaticSite.builtin(), name="demo", sleep=fake_sleep, test_faults=test_faults)
    port = await nursery.start(serve_tcp, app, 0)
    app.port = port
    return Running(app, port, sleeps)


@pytest.fixture
async def backend(nursery: trio.Nursery) -> Running:
    """A backend as the tests start it: its fault switches on."""
    return await start_backend(nursery, test_faults=True)


@pytest.fixture
async def shipped_backend(nursery: trio.Nursery) -> Running:
    """A backend as the shipped fleet starts it: no fault switches."""
    return await start_backend(nursery, test_faults=False)


async def test_health(backend: Running) -> None:
    reply = await fetch(backend.port, "GET", "/health")
    assert reply.status == 200
    assert reply.json() == {"status": "ok", "name": "demo"}


@pytest.mark.parametrize(
    ("path", "ctype", "size"),
    [
        ("/", b"text/html; charset=utf-8", None),
        ("/index.html", b"text/html; charset=utf-8", None),
        ("/style.css", b"text/css; charset=utf-8", None),
        ("/image.png", b"image/png", None),
        ("/large.pdf", b"application/pdf", PDF_SIZE),
    ],
)
async def test_static_files(backend: Running, path: str, ctype: bytes, size: int | None) -> None:
    reply = await fetch(backend.port, "GET", path)
    file = backend.app.site.lookup(path)
    assert reply.status == 200 and reply.complete
    assert reply.headers[b"content-type"] == ctype
    assert reply.body == file.body
    assert int(reply.headers[b"content-length"]) == len(file.body) == (size or len(file.body))
    assert reply.headers[b"etag"] == file.etag
    assert reply.headers[b"last-modified"] == b"Wed, 01 Aug 2018 00:00:00 GMT"
    assert reply.headers[b"cache-control"] == b"public, max-age=60"


async def test_head_has_length_and_no_body(backend: Running) -> None:
    reply = await fetch(backend.port, "HEAD", "/image.png")
    assert reply.status == 200 and reply.body == b""
    assert int(reply.headers[b"content-length"]) == len(backend.app.site.lookup("/image.png").body)


async def test_conditional_requests(backend: Running) -> None:
    etag = backend.app.site.lookup("/image.png").etag
    reply = await fetch(backend.port, "GET", "/image.png", [("if-none-match", etag)])
    assert reply.status == 304 and reply.body == b"" and reply.headers[b"etag"] == etag
    assert reply.headers[b"cache-control"] == b"public, max-age=60"
    weak = [("if-none-match", b"W/" + etag)]
    assert (await fetch(backend.port, "GET", "/image.png", weak)).status == 304
    other = [("if-none-match", '"nope"')]
    assert (await fetch(backend.port, "GET", "/image.png", other)).status == 200
    later = [("if-modified-since", "Sat, 01 Sep 2018 00:00:00 GMT")]
    assert (await fetch(backend.port, "GET", "/style.css", later)).status == 304
    earlier = [("if-modified-since", "Sun, 01 Jul 2018 00:00:00 GMT")]
    assert (await fetch(backend.port, "GET", "/style.css", earlier)).status == 200
    assert backend.app.not_modified == 3


async def test_an_if_none_match_list_on_two_lines_is_one_list(backend: Running) -> None:
    """RFC 9110 5.3, as the proxy's cache reads it (`httpio.conditional`)."""
    etag = backend.app.site.lookup("/image.png").etag
    two_lines = [("if-none-match", b'"nope"'), ("if-none-match", etag)]
    assert (await fetch(backend.port, "GET", "/image.png", two_lines)).status == 304


async def test_static_errors(backend: Running) -> None:
    missing = await fetch(backend.port, "GET", "/nope.html")
    assert missing.status == 404 and missing.json()["error"] == "not_found"
    traversal = await fetch(backend.port, "GET", "/../etc/passwd")
    assert traversal.status == 400
    encoded = await fetch(backend.port, "GET", "/%2e%2e/etc/passwd")
    assert encoded.status == 400
    post = await fetch(backend.port, "POST", "/index.html", body=b"x")
    assert post.status == 405 and post.headers[b"allow"] == b"GET, HEAD"


async def test_echo_reflects_the_request(backend: Running) -> None:
    reply = await fetch(
        backend.port,
        "POST",
        "/echo/a/b?x=1&y=two",
        [("x-test", "yes"), ("content-type", "text/plain")],
        body=b"hello",
    )
    assert reply.status == 200
    echo = reply.json()
    assert echo["method"] == "POST"
    assert echo["path"] == "/echo/a/b"
    assert echo["query"] == "x=1&y=two"
    assert echo["target"] == "/echo/a/b?x=1&y=two"
    assert ["x-test", "yes"] in echo["headers"]
    assert ["host", "127.0.0.1"] in echo["headers"]
    assert echo["body"] == "hello"
    assert echo["body_length"] == 5
    assert echo["body_sha256"] == hashlib.sha256(b"hello").hexdigest()
    assert echo["name"] == "demo" and echo["port"] == backend.port
    assert echo["client"][0] == "127.0.0.1"


async def test_echo_serial_distinguishes_fresh_answers(backend: Running) -> None:
    first = (await fetch(backend.port, "GET", "/echo")).json()["serial"]
    second = (await fetch(backend.port, "GET", "/echo")).json()["serial"]
    assert second > first


async def test_echo_streams_large_bodies_without_their_text(backend: Running) -> None:
    chunks = [bytes([i]) * 65536 for i in range(40)]  # 2.5 MiB in 40 sends
    reply = await fetch(backend.port, "PUT", "/echo", chunks=chunks)
    echo = reply.json()
    assert echo["body"] is None
    assert echo["body_length"] == 40 * 65536 > ECHO_TEXT_LIMIT
    assert echo["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()


async def test_upload_counts_and_hashes(backend: Running) -> None:
    chunks = [b"abc" * 10000] * 50
    reply = await fetch(backend.port, "POST", "/upload", chunks=chunks)
    assert reply.json()["body_length"] == 1_500_000
    assert reply.json()["body_sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert backend.app.body_bytes_received == 1_500_000


@pytest.mark.parametrize("n", [0, 1, 65536, 300_001])
async def test_bytes_streams_n_bytes(backend: Running, n: int) -> None:
    reply = await fetch(backend.port, "GET", f"/bytes/{n}")
    assert reply.status == 200 and reply.complete
    assert int(reply.headers[b"content-length"]) == n
    assert reply.body == (PATTERN * (n // len(PATTERN) + 1))[:n]


async def test_delay_sleeps_before_answering(backend: Running) -> None:
    reply = await fetch(backend.port, "GET", "/health?delay=2.5")
    assert reply.status == 200
    assert backend.sleeps == [2.5]


async def test_status_override(backend: Running) -> None:
    reply = await fetch(backend.port, "GET", "/anything?status=503")
    assert reply.status == 503
    assert reply.json() == {"status": 503, "name": "demo", "path": "/anything", "serial": 1}
    no_content = await fetch(backend.port, "GET", "/x?status=204")
    assert no_content.status == 204 and no_content.body == b""
    bad = await fetch(backend.port, "GET", "/x?status=999")
    assert bad.status == 400


async def test_header_misbehaviours(backend: Running) -> None:
    reply = await fetch(
        backend.port, "GET", "/style.css?set-cookie=1&cache-control=no-store&vary=Accept"
    )
    assert reply.status == 200
    assert reply.headers[b"set-cookie"] == b"demo=1; Path=/"
    assert reply.headers[b"cache-control"] == b"no-store"
    assert reply.headers[b"vary"] == b"Accept"
    custom = await fetch(backend.port, "GET", "/echo?set-cookie=sid%3Dabc")
    assert custom.headers[b"set-cookie"] == b"sid=abc; Path=/"


@pytest.mark.parametrize("close", ["1", "mid"])
async def test_close_mid_response_truncates_static(backend: Running, close: str) -> None:
    size = len(backend.app.site.lookup("/image.png").body)
    reply = await fetch(backend.port, "GET", f"/image.png?close={close}")
    assert reply.status == 200
    assert int(reply.headers[b"content-length"]) == size
    assert not reply.complete
    assert len(reply.body) == size // 2


async def test_close_mid_response_truncates_streams(backend: Running) -> None:
    reply = await fetch(backend.port, "GET", "/bytes/1000000?close=mid")
    assert reply.headers[b"content-length"] == b"1000000"
    assert not reply.complete and len(reply.body) == 500_000


async def test_drop_closes_without_a_response(backend: Running) -> None:
    reply = await fetch(backend.port, "GET", "/health?drop=1")
    assert reply.status is None and not reply.complete
    assert backend.app.dropped == 1
    # the server keeps serving
    assert (await fetch(backend.port, "GET", "/health")).status == 200


@pytest.mark.parametrize(
    "query",
    ["drop=1", "status=503", "delay=600", "close=1", "set-cookie=sid%3Devil", "status=999"],
)
async def test_without_test_faults_no_client_can_make_it_misbehave(
    shipped_backend: Running, query: str
) -> None:
    reply = await fetch(shipped_backend.port, "GET", f"/echo?{query}")
    assert reply.status == 200 and reply.complete
    assert reply.json()["query"] == query  # an ordinary query parameter, shown by /echo
    assert b"set-cookie" not in reply.headers
    assert shipped_backend.sleeps == []
    app = shipped_backend.app
    assert (app.dropped, app.truncated) == (0, 0)
    assert not app.test_faults and "test-faults" not in repr(app)


async def test_stats_and_repr(backend: Running) -> None:
    await fetch(backend.port, "GET", "/index.html")
    stats = (await fetch(backend.port, "GET", "/stats")).json()
    assert stats["requests"] == 2 and stats["static_hits"] == 1
    assert stats["site"]["files"] == 7
    assert "demo" in repr(backend.app)
