"""Errors named by who is to blame, and the one JSON body every error response shares.

Every process raises these from deep inside (the pool, a handler, the auth check) and the
server loop turns them into a status line and a body at exactly one place
(`httpio.server`). The tree follows the phase and the blame, as trio's
`ClosedResourceError`/`BrokenResourceError` and httpcore's connect/read/pool errors do:

- `ClientError`: the client sent something we refuse (RFC 9110 15.5: 400, 408, 413, 431...).
- `UpstreamError`: the next hop failed us: unreachable or reset (502, RFC 9110 15.6.3),
  too slow (504, 15.6.5).
- `GatewayRefusal`: we decided not to serve (no route 404, no healthy instance 503, loop 508,
  a method or transfer coding this gateway does not implement 501).

The body is always ``{"status": N, "error": "<code>", "detail": "<text>"}`` so clients can
branch on ``error`` without parsing prose.
"""

from __future__ import annotations

import msgspec


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    status: int
    error: str
    detail: str
    request_id: str = ""  # the proxy's X-Request-ID, so a client's report can be found


_encode = msgspec.json.Encoder().encode


def encode_error(status: int, code: str, detail: str, request_id: str = "") -> bytes:
    return _encode(ErrorBody(status, code, detail, request_id))


def unavailable_response(code: str, detail: str, request_id: bytes = b"") -> bytes:
    """A whole 503 answer (``Retry-After: 1``, then close) for refusing a connection before
    any request was parsed: at the connection cap, or with no proxy to give it to. With a
    ``request_id`` the body and an ``X-Request-ID`` header carry it."""
    body = encode_error(503, code, detail, request_id.decode())
    head = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    if request_id:
        head += b"x-request-id: " + request_id + b"\r\n"
    head += b"connection: close\r\nretry-after: 1\r\ncontent-length: %d\r\n\r\n" % len(body)
    return head + body


class GatewayError(Exception):
    """Base of every error that becomes a response. ``status`` and ``code`` are class-level
    defaults; an instance may override ``headers`` (e.g. ``Retry-After``)."""

    status = 500
    code = "internal_error"
    request_id = ""  # set by the proxy on the way out: the body carries it

    def __init__(self, detail: str = "", *, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        super().__init__(detail or self.code)
        self.detail = detail or self.code.replace("_", " ")
        self.headers = headers

    def body(self) -> bytes:
        return encode_error(self.status, self.code, self.detail, self.request_id)


# -- the client is to blame -------------------------------------------------------------------
class ClientError(GatewayError):
    status = 400
    code = "bad_request"


class RequestTimeout(ClientError):
    status = 408
    code = "request_timeout"


class RequestBodyTooLarge(ClientError):
    status = 413
    code = "body_too_large"


class RequestHeadTooLarge(ClientError):
    status = 431
    code = "headers_too_large"


class Unauthorized(ClientError):
    """RFC 6750 3: 401 always carries a ``WWW-Authenticate: Bearer`` challenge."""

    status = 401
    code = "unauthorized"

    def __init__(self, detail: str = "", *, error: str = "invalid_token") -> None:
        challenge = b'Bearer realm="gateway"'
        if error:
            challenge += b', error="' + error.encode() + b'"'
        super().__init__(detail, headers=((b"www-authenticate", challenge),))


class Forbidden(ClientError):
    status = 403
    code = "forbidden"


class RateLimited(ClientError):
    """Over a rate limit (`proxy.filters.rate_limit`): 429 with ``Retry-After`` and the
    quota fields its limit sends."""

    status = 429
    code = "rate_limited"


class MethodNotAllowed(ClientError):
    """A method we know and refuse everywhere (CONNECT, TRACE). RFC 9110 15.5.6: a 405
    carries ``Allow``, the methods that are served."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, detail: str = "", *, allow: bytes) -> None:
        super().__init__(detail, headers=((b"allow", allow),))


# -- we decided not to serve ------------------------------------------------------------------
class GatewayRefusal(GatewayError):
    status = 500
    code = "refused"


class RouteNotFound(GatewayRefusal):
    status = 404
    code = "not_found"


class NoHealthyInstance(GatewayRefusal):
    status = 503
    code = "no_healthy_instance"


class Overloaded(GatewayRefusal):
    status = 503
    code = "overloaded"


class TooManyConnections(GatewayRefusal):
    """A server at its connection cap (`httpio.server.ServerLimits.max_connections`): the
    connection is answered at once and closed, before any request is read."""

    status = 503
    code = "too_many_connections"


class DependencyUnavailable(GatewayRefusal):
    """A service we need to decide (the auth server) cannot be reached: never fail open."""

    status = 503
    code = "dependency_unavailable"


class Unimplemented(GatewayRefusal):
    """A method or a transfer coding this gateway does not implement (RFC 9110 9.1 and
    15.6.2, RFC 9112 6.1)."""

    status = 501
    code = "not_implemented"


class LoopDetected(GatewayRefusal):
    status = 508
    code = "loop_detected"


# -- the upstream is to blame -----------------------------------------------------------------
class UpstreamError(GatewayError):
    status = 502
    code = "bad_gateway"

    def __init__(self, detail: str = "", *, bytes_sent: bool = False) -> None:
        super().__init__(detail)
        # True once any byte of the request left us: such a request is not retried unless
        # it is idempotent (RFC 9110 9.2.2).
        self.bytes_sent = bytes_sent


class UpstreamUnreachable(UpstreamError):
    """Connect refused, reset, or closed before any response byte."""

    code = "upstream_unreachable"


class UpstreamProtocolError(UpstreamError):
    code = "upstream_protocol_error"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
