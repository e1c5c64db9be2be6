"""What a handler receives and returns: `Request`, `Response`, and the JSON helpers.

Kept apart from the server loop so that applications (proxy, auth server, backends) depend
on the shape of a request and a response, not on how connections are served. The request
body is read straight off the connection by `httpio.body.RequestBody`; a response body is
bytes (sent with its head in one write) or any object with ``read()``/``aclose()``, which
the server streams and always closes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Protocol

import msgspec

from httpio.body import RequestBody
from httpio.errors import GatewayError
from httpio.protocol import Headers, header_value

if TYPE_CHECKING:
    from httpio.access_log import RequestNote


class ResponseBody(Protocol):
    """A streamed response body. It may also have ``finished`` (bool): true once the end is
    known to be buffered, so that ``read()`` returns b"" and ``aclose()`` does no I/O."""

    async def read(self) -> bytes: ...

    async def aclose(self) -> None: ...


class Response:
    """An answer: its status, its header lines (ours to change until it is sent) and its
    body. A plain class rather than a dataclass: under mypyc (`httpio.accel`) its
    constructor is native, where a dataclass's generated ``__init__`` stays interpreted
    Python, and a request makes one to four of them."""

    __slots__ = ("body", "headers", "status")

    def __init__(
        self, status: int, headers: Headers | None = None, body: bytes | ResponseBody = b""
    ) -> None:
        self.status = status
        self.headers: Headers = [] if headers is None else headers
        self.body = body

    def __repr__(self) -> str:
        return f"Response(status={self.status!r}, headers={self.headers!r}, body={self.body!r})"


_json_encode = msgspec.json.Encoder().encode
_JSON = (b"content-type", b"application/json")


def json_response(status: int, obj: object, headers: Headers | None = None) -> Response:
    hs = [_JSON]
    if headers:
        hs.extend(headers)
    return Response(status, hs, _json_encode(obj))


def error_response(err: GatewayError) -> Response:
    return Response(err.status, [_JSON, *err.headers], err.body())


class Request:
    """A request as a handler gets it (a plain class for the reason `Response` is one).
    ``via_elb``: it arrived through an ELB (handed off, or behind a PROXY header); ``note``:
    what the application learnt, for the access log."""

    __slots__ = (
        "body",
        "client",
        "headers",
        "http_version",
        "method",
        "note",
        "path",
        "query",
        "target",
        "via_elb",
    )

    def __init__(
        self,
        method: str,
        target: str,
        path: str,
        query: str,
        headers: Headers,
        http_version: str,
        client: tuple[str, int],
        body: RequestBody,
        via_elb: bool = False,
        note: RequestNote | None = None,
    ) -> None:
        self.method = method
        self.target = target
        self.path = path
        self.query = query
        self.headers = headers
        self.http_version = http_version
        self.client = client
        self.body = body
        self.via_elb = via_elb
        self.note = note

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} HTTP/{self.http_version} from {self.client}>"

    @property
    def local_direct(self) -> bool:
        """From this host and not through an ELB: who may see /metrics and /admin/*. From this
        host is from loopback, or from the very address the connection came in on (a process
        bound to its host's address, `topology.placement`, scraped by a Prometheus on that
        host): Linux takes no packet with one of its own source addresses from outside
        (``accept_local`` is off), so such a peer is this host."""
        if self.via_elb:
            return False
        client = self.client[0]
        return client in ("127.0.0.1", "::1") or client == self.body.local_address()

    def header(self, name: bytes) -> bytes | None:
        return header_value(self.headers, name)


Handler = Callable[[Request], Awaitable[Response]]
