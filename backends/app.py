"""The demo backend: static files, echo, streams, and misbehaviour on demand.

One handler serves every backend of the demo fleet (the services image, video, sound...).
Besides standing in for real services in benchmarks, it is the instrument the gateway's tests
read: `/echo` shows exactly what the proxy forwarded, `serial` numbers every answer so a test
can tell a cached response (same serial) from a fresh one, and `/stats` counts what arrived.

Endpoints
- ``GET /health`` -> ``{"status": "ok", "name": ...}``.
- ``/echo`` and ``/echo/...``, any method -> JSON with method, path, query, headers (as
  received, ``[name, value]`` pairs), the body as text when it is at most ``ECHO_TEXT_LIMIT``
  bytes, and always ``body_length`` + ``body_sha256``. The body is read chunk by chunk and
  hashed as it comes, so a 100 MB upload costs one chunk of memory.
- ``/upload``, any method -> ``{"body_length", "body_sha256"}``, same streaming read.
- ``GET /bytes/<n>`` -> n bytes, byte k being ``k % 256``, with Content-Length, produced in
  64 KiB chunks from one precomputed buffer: a 1 GiB response costs no memory.
- ``GET /stats`` -> the counters of `BackendApp.statistics`.
- ``/ws/echo`` and ``/ws/ticks?n=N``: WebSockets (`backends.websocket`).
- anything else -> a static file (see `backends.static_files`): GET and HEAD only.

A process-wide ``delay_s`` (``backend --delay-ms MS``) delays every answer except ``/health``:
a slow instance for the load-balancing benchmarks (`bench.policies`) that the health checks
still see as up, as a real overloaded or far-away instance would be.

Misbehaviour on demand is for the gateway's tests only and is off unless the process was
started with ``backend --test-faults`` (``BackendApp(test_faults=True)``; a fleet topology's
``backends: {test_faults: true}``, which only the tests' topologies set). Left on in the
shipped fleet, any client could make instances fail on purpose (``?drop=1``, ``?status=503``)
until the proxies ejected them, hold them with ``?delay=600``, or have the gateway's own
origin set a cookie of its choosing (``?set-cookie=``). Off, these parameters are ignored like
any other query parameter. On, they are read from the query on any path (other parameters are
ignored, so the echo endpoint can still show them):
- ``delay=SECONDS``: sleep before answering (at most ``MAX_DELAY_S``).
- ``status=N``: answer with status N (200-599) and a small JSON body instead of the route.
- ``close=1`` or ``close=mid``: send the head with the full Content-Length, then half the
  body, then close the connection. The body ends early; h11 refuses to finish a message
  shorter than its Content-Length and the server loop closes the connection: exactly what
  a crashing upstream looks like to a proxy.
- ``drop=1``: close the connection without any response. The handler raises
  `trio.ClosedResourceError`, which the server loop takes as "this connection is finished".
- ``set-cookie=1`` (or any value), ``cache-control=VALUE``, ``vary=VALUE``: add (or, for
  Cache-Control, replace) that header, for the proxy cache's storability tests.
The process-wide delay comes first, then the per-request delay, then the drop, then the answer.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

import trio

from backends.static_files import StaticFile, StaticSite
from backends.websocket import PATHS as WEBSOCKET_PATHS
from backends.websocket import WebSocketEndpoint
from httpio.errors import ClientError, encode_error
from httpio.messages import Request, Response, json_response
from httpio.metrics import metrics_response
from httpio.websocket import is_upgrade

ECHO_TEXT_LIMIT = 64 * 1024
MAX_DELAY_S = 600.0
STREAM_CHUNK = 64 * 1024
# byte k of every stream is k % 256; STREAM_CHUNK is a multiple of 256, so every chunk is a
# prefix of this one buffer.
PATTERN = bytes(range(256)) * (STREAM_CHUNK // 256)
MAX_STREAM_BYTES = 1 << 40


@dataclass(frozen=True, slots=True)
class Misbehaviour:
    delay_s: float = 0.0
    status: int | None = None
    truncate: bool = False
    drop: bool = False
    set_cookie: str | None = None
    cache_control: str | None = None
    vary: str | None = None


_WELL_BEHAVED = Misbehaviour()


def parse_misbehaviour(query: str) -> Misbehaviour:
    """Read the misbehaviour parameters out of a query string; ClientError on bad values."""
    if not query:
        return _WELL_BEHAVED
    params = dict(parse_qsl(query, keep_blank_values=True))
    delay_s = 0.0
    if "delay" in params:
        try:
            delay_s = float(params["delay"])
        except ValueError:
            raise ClientError(f"delay must be a number, not {params['delay']!r}") from None
        if not 0.0 <= delay_s <= MAX_DELAY_S:
            raise ClientError(f"delay must be within 0..{MAX_DELAY_S:g} seconds")
    status = None
    if "status" in params:
        raw = params["status"]
        if not raw.isdigit() or not 200 <= int(raw) <= 599:
            raise ClientError(f"status must be 200..599, not {raw!r}")
        status = int(raw)
    close = params.get("close")
    if close not in (None, "0", "1", "mid"):
        raise ClientError(f"close must be 1 or mid, not {close!r}")
    cookie = params.get("set-cookie")
    return Misbehaviour(
        delay_s=delay_s,
        status=status,
        truncate=close in ("1", "mid"),
        drop=params.get("drop") not in (None, "0"),
        set_cookie=None if cookie in (None, "0") else _header_text("set-cookie", cookie),
        cache_control=_header_text("cache-control", params.get("cache-control")),
        vary=_header_text("vary", params.get("vary")),
    )


def _header_text(name: str, value: str | None) -> str | None:
    """A header value from the query: printable Latin-1 only (RFC 9110 5.5)."""
    if value is None:
        return None
    if not all(" " <= ch <= "~" or "\xa0" <= ch <= "\xff" or ch == "\t" for ch in value):
        raise ClientError(f"{name} is not a valid header value: {value!r}")
    return value


def parse_byte_count(path: str) -> int:
    """``/bytes/<n>`` -> n."""
    raw = path.removeprefix("/bytes/")
    if not raw.isdigit() or int(raw) > MAX_STREAM_BYTES:
        raise ClientError(f"/bytes/<n> needs 0 <= n <= {MAX_STREAM_BYTES}, not {raw!r}")
    return int(raw)


class PatternBody:
    """``total`` bytes of `PATTERN`, ending early (after ``stop_after`` bytes) on request."""

    __slots__ = ("_left", "_stop_after", "sent")

    def __init__(self, total: int, stop_after: int | None = None) -> None:
        self._left = total if stop_after is None else min(total, stop_after)
        self._stop_after = stop_after
        self.sent = 0

    def __repr__(self) -> str:
        return f"<PatternBody sent={self.sent} left={self._left}>"

    async def read(self) -> bytes:
        size = min(self._left, STREAM_CHUNK)
        self._left -= size
        self.sent += size
        return PATTERN if size == STREAM_CHUNK else PATTERN[:size]

    async def aclose(self) -> None:
        self._left = 0


class TruncatedBody:
    """The first half of a body, then the end: the head still announces the whole length."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data[: len(data) // 2]

    async def read(self) -> bytes:
        data, self._data = self._data, b""
        return data

    async def aclose(self) -> None:
        self._data = b""


def _method_not_allowed(method: str) -> Response:
    body = encode_error(405, "method_not_allowed", f"{method} is not served here")
    return Response(405, [(b"content-type", b"application/json"), (b"allow", b"GET, HEAD")], body)


class BackendApp:
    """The request handler of one backend process. ``sleep`` is injectable for tests;
    ``delay_s`` is added before every answer but ``/health``'s; ``test_faults`` turns on the
    misbehaviour switches of the query string."""

    def __init__(
        self,
        site: StaticSite,
        *,
        name: str,
        port: int = 0,
        sleep: Callable[[float], Awaitable[None]] = trio.sleep,
        delay_s: float = 0.0,
        test_faults: bool = False,
    ) -> None:
        if not 0.0 <= delay_s <= MAX_DELAY_S:
            raise ValueError(f"delay must be within 0..{MAX_DELAY_S:g} seconds, not {delay_s}")
        self.site = site
        self.name = name
        self.port = port
        self._sleep = sleep
        self.delay_s = delay_s
        self.test_faults = test_faults
        self.requests = 0
        self.static_hits = 0
        self.not_modified = 0
        self.echoes = 0
        self.streams = 0
        self.dropped = 0
        self.truncated = 0
        self.body_bytes_received = 0

    def __repr__(self) -> str:
        delay = f" delay={self.delay_s * 1000:g}ms" if self.delay_s else ""
        faults = " test-faults" if self.test_faults else ""
        return (
            f"<BackendApp {self.name}:{self.port}{delay}{faults} requests={self.requests}"
            f" site={self.site!r}>"
        )

    def statistics(self) -> dict[str, object]:
        return {
            "name": self.name,
            "port": self.port,
            "delay_s": self.delay_s,
            "test_faults": self.test_faults,
            "requests": self.requests,
            "static_hits": self.static_hits,
            "not_modified": self.not_modified,
            "echoes": self.echoes,
            "streams": self.streams,
            "dropped": self.dropped,
            "truncated": self.truncated,
            "body_bytes_received": self.body_bytes_received,
            "site": self.site.statistics(),
        }

    async def __call__(self, request: Request) -> Response:
        self.requests += 1
        serial = self.requests
        if self.delay_s > 0 and request.path != "/health":
            await self._sleep(self.delay_s)
        plan = parse_misbehaviour(request.query) if self.test_faults else _WELL_BEHAVED
        if plan.delay_s > 0:
            await self._sleep(plan.delay_s)
        if plan.drop:
            self.dropped += 1
            raise trio.ClosedResourceError("connection dropped on request (?drop=1)")
        if plan.status is not None:
            response = self._status(request, plan.status, serial)
        else:
            response = await self._route(request, serial)
        self._decorate(response, plan)
        if plan.truncate:
            response = self._truncate(response)
        return response

    async def _route(self, request: Request, serial: int) -> Response:
        path = request.path
        if path == "/health":
            return json_response(200, {"status": "ok", "name": self.name})
        if path == "/echo" or path.startswith("/echo/"):
            return await self._echo(request, serial)
        if path in WEBSOCKET_PATHS and is_upgrade(request.method, request.headers):
            return Response(101, [], WebSocketEndpoint(path, request.query))
        if path == "/upload":
            length, digest, _ = await self._consume(request, keep=0)
            return json_response(
                200,
                {"name": self.name, "serial": serial, "body_length": length, "body_sha256": digest},
            )
        if path.startswith("/bytes/"):
            return self._stream(parse_byte_count(path))
        if path == "/stats":
            return json_response(200, self.statistics(), [(b"cache-control", b"no-store")])
        if path == "/metrics":
            return metrics_response(request)
        if request.method not in ("GET", "HEAD"):
            return _method_not_allowed(request.method)
        return self._static(request, self.site.lookup(path))

    def _status(self, request: Request, status: int, serial: int) -> Response:
        if status in (204, 304):
            return Response(status)
        return json_response(
            status, {"status": status, "name": self.name, "path": request.path, "serial": serial}
        )

    async def _consume(self, request: Request, keep: int) -> tuple[int, str, bytes]:
        """Read the whole body: (length, sha256 hex, its first ``keep`` + 1 bytes)."""
        digest = hashlib.sha256()
        length = 0
        head = bytearray()
        while chunk := await request.body.read():
            digest.update(chunk)
            length += len(chunk)
            if len(head) <= keep:
                head += chunk[: keep + 1 - len(head)]
        self.body_bytes_received += length
        return length, digest.hexdigest(), bytes(head)

    async def _echo(self, request: Request, serial: int) -> Response:
        self.echoes += 1
        length, digest, head = await self._consume(request, keep=ECHO_TEXT_LIMIT)
        text = head.decode("utf-8", "replace") if length <= ECHO_TEXT_LIMIT else None
        return json_response(
            200,
            {
                "name": self.name,
                "port": self.port,
                "serial": serial,
                "method": request.method,
                "target": request.target,
                "path": request.path,
                "query": request.query,
                "http_version": request.http_version,
                "client": list(request.client),
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in request.headers],
                "body": text,
                "body_length": length,
                "body_sha256": digest,
            },
        )

    def _stream(self, total: int) -> Response:
        self.streams += 1
        headers = [
            (b"content-type", b"application/octet-stream"),
            (b"content-length", b"%d" % total),
        ]
        return Response(200, headers, PatternBody(total))

    def _static(self, request: Request, file: StaticFile) -> Response:
        headers = file.validator_headers()
        if file.not_modified_for(request.headers):
            self.not_modified += 1
            return Response(304, headers)
        self.static_hits += 1
        headers.append((b"content-type", file.content_type))
        return Response(200, headers, file.body)

    @staticmethod
    def _decorate(response: Response, plan: Misbehaviour) -> None:
        headers = response.headers
        if plan.cache_control is not None:
            headers[:] = [(n, v) for n, v in headers if n != b"cache-control"]
            headers.append((b"cache-control", plan.cache_control.encode("latin-1")))
        if plan.vary is not None:
            headers.append((b"vary", plan.vary.encode("latin-1")))
        if plan.set_cookie is not None:
            value = "demo=1" if plan.set_cookie == "1" else plan.set_cookie
            headers.append((b"set-cookie", f"{value}; Path=/".encode("latin-1")))

    def _truncate(self, response: Response) -> Response:
        self.truncated += 1
        body = response.body
        if isinstance(body, PatternBody):
            total = next(int(v) for n, v in response.headers if n == b"content-length")
            response.body = PatternBody(total, stop_after=total // 2)
            return response
        if isinstance(body, bytes):
            response.headers = [(n, v) for n, v in response.headers if n != b"content-length"]
            response.headers.append((b"content-length", b"%d" % len(body)))
            response.body = TruncatedBody(body)
        return response
