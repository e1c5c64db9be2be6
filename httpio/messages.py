"""What a handler receives and returns: `Request`, `Response`, and the JSON helpers.

Kept apart from the server loop so that applications (proxy, auth server, backends) depend
on the shape of a request and a response, not on how connections are served. The request
body is read straight off the connection by `httpio.body.RequestBody`; a response body is
bytes (sent with its head in one write) or any object with ``read()``/``aclose()``, which
the server streams and always closes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
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


@dataclass(slots=True)
class Response:
    status: int
    headers: Headers = field(default_factory=list)
    body: bytes | ResponseBody = b""


_json_encode = msgspec.json.Encoder().encode
_JSON = (b"content-type", b"application/json")


def json_response(status: int, obj: object, headers: Headers | None = None) -> Response:
    hs = [_JSON]
    if headers:
        hs.extend(headers)
    return Response(status, hs, _json_encode(obj))


def error_response(err: GatewayError) -> Response:
    return Response(err.status, [_JSON, *err.headers], err.body())


@dataclass(slots=True)
class Request:
    method: str
    target: str
    path: str
    query: str
    headers: Headers
    http_version: str
    client: tuple[str, int]
    body: RequestBody
    via_elb: bool = False  # arrived through an ELB (handed off, or behind a PROXY header)
    note: RequestNote | None = None  # what the application learnt, for the access log

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
