"""Properties of the server loop and the request forwarding, checked with hypothesis on
real sockets (issue 8): random and mutated request bytes never end a server, never turn
one client request into two upstream requests, and always get an answer that is either
our JSON error (4xx/5xx) or a valid response.

The servers run for the whole module on a trio loop in a background thread: a counting
upstream (`HttpServer` + a handler that numbers every request it sees whole) and, in
front of it, a `ProxyApp` on its own `HttpServer`, both on free ports of 127.0.0.1. An
example is plain blocking socket code: connect, send the bytes (in pieces, at the drawn
split points), half-close, read to EOF. The half-close makes every example end without
waiting for a timeout: whatever the server could not parse by then is incomplete.

The oracles:
- the proxy and the upstream still answer ``/health`` after every example, and neither
  counted a connection ended by an exception (``failed_connections``);
- every request the upstream saw whole left one mark (its ``x-upstream-serial``
  header) in the bytes the client got: one client request is never two upstream ones;
- the client's first answer parses as HTTP/1.1 (pure h11 is the judge), and a 4xx/5xx
  carries the ``{"status", "error", "detail"}`` body with its own status; nothing is
  answered only when nothing but blank lines was sent.

Examples are bounded and reproducible: ``derandomize=True``, no example database, and
no deadline (a slow CI box must not turn into a failure).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import h11 as pure_h11
import msgspec
import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from httpio.listen import listener_port, open_listeners
from httpio.messages import Request, Response, json_response
from httpio.server import HttpServer
from httpio.settings import ServerLimits
from httpio.upstream import UpstreamPool
from proxy.app import ProxyApp
from proxy.state import ProxyConfig
from tests.support.polling import wait_for
from topology.schema import GatewayConfig, MsaFile, RegionSpec, RegionStructure, ServiceSpec

REGION = "ko_KR"
READ_TIMEOUT_S = 10.0  # a hang guard per socket read; an example normally takes milliseconds
MARK = b"\r\nx-upstream-serial: "
PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the servers, in a thread ----------------------------------------------------------------------
class Upstream:
    """Numbers every request it read whole; ``active`` counts those in progress."""

    def __init__(self) -> None:
        self.whole = 0
        self.active = 0

    async def handle(self, request: Request) -> Response:
        self.active += 1
        try:
            body = await request.body.read_all()
            self.whole += 1
            return json_response(
                200,
                {"method": request.method, "target": request.target, "body_length": len(body)},
                [(b"x-upstream-serial", b"%d" % self.whole)],
            )
        finally:
            self.active -= 1


@dataclass
class Servers:
    upstream: Upstream
    upstream_server: HttpServer
    proxy_server: HttpServer
    proxy_port: int
    upstream_port: int
    thread: threading.Thread
    box: dict[str, Any]

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"Servers(proxy={self.proxy_server!r}, upstream={self.upstream_server!r})")

    def failures(self) -> int:
        return self.upstream_server.failed_connections + self.proxy_server.failed_connections

    def assert_alive(self) -> None:
        # Once the loop is gone every later example fails too, and hypothesis shrinks to
        # a trivial one: the exception that ended it is what the report must name.
        assert self.thread.is_alive(), f"the servers' trio loop ended: {self.box.get('error')!r}"


def proxy_config(upstream_url: str) -> ProxyConfig:
    service = ServiceSpec(name="svc", instance=[upstream_url], public=True)
    return ProxyConfig(
        msa=MsaFile(service=[service]),
        rs=RegionStructure(
            cur_region_code=REGION,
            regions=[RegionSpec(region_code=REGION, available_zone=["http://127.0.0.1:9"])],
        ),
        gateway=GatewayConfig(),
        region=REGION,
        services={"svc": service},
        regions={REGION: ["http://127.0.0.1:9"]},
    )


@pytest.fixture(scope="module")
def servers() -> Iterator[Servers]:
    box: dict[str, Any] = {}
    ready = threading.Event()
    # Small timeouts: an example that somehow waits on one still ends in seconds.
    limits = ServerLimits(head_timeout_s=2, idle_timeout_s=2, body_timeout_s=2)

    async def main() -> None:
        upstream = Upstream()
        upstream_server = HttpServer(upstream.handle, name="upstream")
        up_listeners = await open_listeners(0)
        async with trio.open_nursery() as nursery:
            await nursery.start(upstream_server.serve_listeners, up_listeners)
            url = f"http://127.0.0.1:{listener_port(up_listeners)}"
            pool = UpstreamPool()
            app = ProxyApp(proxy_config(url), pool, name="proxy-properties")
            proxy_server = HttpServer(app.handle, limits, name="proxy")
            listeners = await open_listeners(0)
            await nursery.start(proxy_server.serve_listeners, listeners)
            stop = trio.Event()
            box.update(
                upstream=upstream,
                upstream_server=upstream_server,
                proxy_server=proxy_server,
                proxy_port=listener_port(listeners),
                upstream_port=listener_port(up_listeners),
                stop=stop,
                token=trio.lowlevel.current_trio_token(),
            )
            ready.set()
            await stop.wait()
            nursery.cancel_scope.cancel()
        await pool.aclose()

    def run() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # reported by the test that finds the thread dead
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="property-servers", daemon=True)
    thread.start()
    ready.wait(30)
    if "stop" not in box:
        raise RuntimeError(f"the servers did not start: {box.get('error')!r}")
    yield Servers(
        box["upstream"],
        box["upstream_server"],
        box["proxy_server"],
        box["proxy_port"],
        box["upstream_port"],
        thread,
        box,
    )
    if thread.is_alive():
        trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join(30)
    assert "error" not in box, box.get("error")


# -- a blocking client -------------------------------------------------------------------------------
def send_and_read(port: int, pieces: list[bytes]) -> bytes:
    """Send each piece, half-close, and return everything the server sent until it closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for piece in pieces:
                sock.sendall(piece)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # EPIPE, ECONNRESET, ENOTCONN: it refused early and closed
            pass  # what it sent before is still to read
        received = bytearray()
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break  # after its answer, a server may reset a half-read connection
            if not data:
                break
            received += data
    return bytes(received)


def health(port: int) -> int:
    raw = send_and_read(port, [b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"])
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


def first_answer(raw: bytes, method: bytes) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """The first final response in ``raw`` as an independent client reads it."""
    client = pure_h11.Connection(pure_h11.CLIENT)
    client.send(pure_h11.Request(method=method, target=b"/", headers=[(b"host", b"x")]))
    client.send(pure_h11.EndOfMessage())
    client.receive_data(raw)
    client.receive_data(b"")
    status, headers, body = 0, [], bytearray()
    while True:
        event = client.next_event()
        if type(event) is pure_h11.InformationalResponse:
            continue
        if type(event) is pure_h11.Response:
            status, headers = event.status_code, list(event.headers)
        elif type(event) is pure_h11.Data:
            body += event.data
        elif type(event) is pure_h11.EndOfMessage:
            return status, headers, bytes(body)
        else:
            raise AssertionError(f"no complete answer: {event!r} in {raw[:300]!r}")


def check_example(servers: Servers, pieces: list[bytes], ambiguous_at: int | None = None) -> None:
    data = b"".join(pieces)
    servers.assert_alive()
    before = servers.upstream.whole
    raw = send_and_read(servers.proxy_port, pieces)
    wait_for(lambda: servers.upstream.active == 0, timeout_s=10, what="the upstream idle")
    seen = servers.upstream.whole - before
    # Never two upstream requests out of one: each whole one is answered to this client.
    assert seen == raw.count(MARK), (seen, raw[:500])
    if ambiguous_at is not None:  # nothing after an ambiguous length may become a request
        event("an ambiguous length")
        assert seen <= ambiguous_at, (seen, raw[:500])
    event(f"the upstream saw {min(seen, 2)}{'+' if seen > 2 else ''}")
    if not raw:
        event("no answer")
        assert data.strip(b"\r\n") == b"", f"no answer to {data[:300]!r}"
    else:
        method = b"HEAD" if data.startswith(b"HEAD ") else b"GET"
        status, headers, body = first_answer(raw, method)
        event(f"first answer {status}")
        if status >= 400:
            assert (b"content-type", b"application/json") in headers, raw[:300]
            error = msgspec.json.decode(body)
            # a proxy's own refusals carry its request id too (issue 12)
            assert list(error)[:3] == ["status", "error", "detail"] and error["status"] == status
            assert set(error) <= {"status", "error", "detail", "request_id"}
        else:
            assert 200 <= status < 300, raw[:300]
    servers.assert_alive()
    assert health(servers.proxy_port) == 200 and health(servers.upstream_port) == 200
    assert servers.failures() == 0  # no exception reached a connection's boundary


# -- requests, valid and mutated --------------------------------------------------------------------
TCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
METHODS = [b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"CONNECT", b"TRACE"]
ODD_METHODS = [b"get", b"PRI", b"PROPFIND", b"M-SEARCH", b"G ET", b"GET\x00"]
FRAMINGS = {
    "none": [],
    "cl": ["content-length: {n}"],
    "te": ["transfer-encoding: chunked"],
    "cl+te": ["content-length: {n}", "transfer-encoding: chunked"],
    "te+cl": ["transfer-encoding: chunked", "content-length: {n}"],
    "cl-twice": ["content-length: {n}", "content-length: {n}"],
    "cl-list": ["content-length: {n}, {n}"],
    "cl-conflict": ["content-length: {n}", "content-length: 1{n}"],
    "cl-short": ["content-length: 1"],
    "cl-long": ["content-length: 9{n}"],
    "cl-sign": ["content-length: +{n}"],
    "te-list": ["transfer-encoding: chunked, identity"],
    "te-odd": ["transfer-encoding: xchunked"],
    "te-twice": ["transfer-encoding: chunked", "transfer-encoding: chunked"],
    "te-case": ["Transfer-Encoding: CHUNKED"],
    "te-space": ["transfer-encoding : chunked"],
    "te-fold": ["transfer-encoding:\r\n chunked"],
}
HEADER_NAMES = [
    b"x-a",
    b"X_User",
    b"x-user_role",
    b"forwarded",
    b"x-real-ip",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"via",
    b"expect",
    b"connection",
    b"upgrade",
    b"te",
    b"x-region",
    b"x-gateway-hop",
    b"host",
]

targets = st.one_of(
    st.integers(0, 10**6).map(lambda n: b"/svc/echo?n=%d" % n),
    st.integers(0, 10**6).map(lambda n: b"/svc/echo/%d" % n),
    st.sampled_from(
        [b"*", b"http://x/svc/echo", b"/svc/../admin/backends", b"/health", b"//svc", b"/nosvc/"]
    ),
    st.binary(min_size=1, max_size=30).map(lambda b: b"/svc/" + b),
    st.integers(15_000, 20_000).map(lambda n: b"/svc/" + b"a" * n),
)
header_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=30).map(
        str.encode
    ),
    st.sampled_from([b"100-continue", b"close", b"websocket", b"en_US", b"1.2.3.4", b"a\x00b"]),
)
headers = st.lists(
    st.tuples(
        st.one_of(
            st.sampled_from(HEADER_NAMES), st.text(TCHAR, min_size=1, max_size=10).map(str.encode)
        ),
        header_values,
    ),
    max_size=4,
)


@dataclass(frozen=True)
class Sent:
    """The bytes of an example, and the index of the first request whose length is
    ambiguous (None when there is none, or when mutations make it unknowable)."""

    data: bytes
    ambiguous_at: int | None

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        # How hypothesis prints a failing example: a 70 KB body would bury the report.
        data = self.data
        shown = data if len(data) <= 600 else data[:500] + b"..." + data[-80:]
        printer.text(f"Sent({shown!r}, len={len(data)}, ambiguous_at={self.ambiguous_at})")


@st.composite
def one_request(draw: st.DrawFn) -> tuple[bytes, bool]:
    """A request, and whether its length is ambiguous (RFC 9112 6.1: Content-Length
    beside Transfer-Encoding, or Transfer-Encoding in HTTP/1.0)."""
    # Most draws are well-formed, so that the upstream sees many of them; the rest are
    # the odd and the hostile variants.
    method = draw(st.sampled_from(METHODS * 4 + ODD_METHODS))
    version = draw(st.sampled_from([b"1.1"] * 6 + [b"1.0", b"2.0"]))
    framing = draw(st.sampled_from(["none", "cl", "te"] * 5 + sorted(FRAMINGS)))
    size = draw(st.one_of(st.integers(0, 40), st.just(70_000)))  # 70 KB: streamed upstream
    body = b"b" * size
    lines = [method + b" " + draw(targets) + b" HTTP/" + version, b"host: x"]
    if draw(st.booleans()):
        lines += [name + b": " + value for name, value in draw(headers)]
    lines += [line.format(n=size).encode() for line in FRAMINGS[framing]]
    chunked = "te" in framing and framing not in ("te-odd", "te-list")
    if chunked:
        body = (b"%x\r\n" % size + body + b"\r\n" if size else b"") + b"0\r\n\r\n"
    eol = draw(st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n"]))
    ambiguous = framing in ("cl+te", "te+cl") or (chunked and version == b"1.0")
    return eol.join(lines) + eol + eol + body, ambiguous


@st.composite
def mutated(draw: st.DrawFn, requests: st.SearchStrategy[tuple[bytes, bool]]) -> Sent:
    pipeline = draw(st.lists(requests, min_size=1, max_size=3))
    data = bytearray(b"".join(request for request, _ in pipeline))
    flags = [ambiguous for _, ambiguous in pipeline]
    ambiguous_at = flags.index(True) if True in flags else None
    mutations = draw(st.sampled_from([0, 0, 0, 1, 2, 3]))
    for _ in range(mutations):
        kind = draw(st.sampled_from(["insert", "delete", "replace", "truncate", "repeat"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        byte = draw(st.sampled_from([b"\r", b"\n", b" ", b":", b"\x00", b"0", b"\t", b"\xff"]))
        if kind == "insert":
            data[at:at] = byte
        elif kind == "delete":
            del data[at : at + 1]
        elif kind == "replace":
            data[at : at + 1] = byte
        elif kind == "truncate":
            del data[at:]
        else:
            end = draw(st.integers(at, min(len(data), at + 64)))
            data[at:at] = data[at:end]
    return Sent(bytes(data), ambiguous_at if not mutations else None)


def split(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p % (len(data) + 1) for p in points})
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True) if b > a]


# -- the properties ----------------------------------------------------------------------------------
@PROPERTY
@given(sent=mutated(one_request()), points=st.lists(st.integers(0, 10**6), max_size=3))
def test_mutated_requests_through_the_proxy(
    servers: Servers, sent: Sent, points: list[int]
) -> None:
    check_example(servers, split(sent.data, points), sent.ambiguous_at)


@settings(PROPERTY, max_examples=100)
@given(data=st.binary(max_size=300), points=st.lists(st.integers(0, 10**6), max_size=3))
def test_random_bytes_through_the_proxy(servers: Servers, data: bytes, points: list[int]) -> None:
    check_example(servers, split(data, points))


def test_the_oracle_sees_a_smuggled_request(servers: Servers) -> None:
    """The mark count is a real oracle: two pipelined requests are two upstream requests
    and two marks, so a request smuggled inside another's body would show as a third."""
    servers.assert_alive()
    before = servers.upstream.whole
    raw = send_and_read(servers.proxy_port, [b"GET /svc/a HTTP/1.1\r\nHost: x\r\n\r\n" * 2])
    assert servers.upstream.whole - before == 2 and raw.count(MARK) == 2


def test_the_oracle_sees_a_request_behind_an_ambiguous_length(servers: Servers) -> None:
    """What the old proxy did (issue 8, item 6): a 500 for the first request, and the bytes
    after its chunked body served as a second one."""
    servers.assert_alive()
    before = servers.upstream.whole
    smuggling = (
        b"POST /svc/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /svc/SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    raw = send_and_read(servers.proxy_port, [smuggling])
    assert servers.upstream.whole - before == 0 and raw.count(b"HTTP/1.1 ") == 1
    assert raw.startswith(b"HTTP/1.1 400 ")
