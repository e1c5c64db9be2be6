"""Which h11 this process speaks with (the upstream WebSocket handshake's, `httpio.upgrade`),
and the few HTTP/1.1 facts every module shares.

`h11-mypyc` is the same state machine compiled with mypyc (alpha). It is an optional
accelerator: ``GATEWAY_H11=pure`` forces the pure-Python build, ``GATEWAY_H11=mypyc``
demands the compiled one, and the default takes the compiled one when it is installed.
The test suite runs under both. Its sentinels (``NEED_DATA``, ``PAUSED``, the states) are
classes that are not instances of themselves, so they are only ever compared with ``is``.

Hop-by-hop headers (RFC 9110 7.6.1) are listed here because both the server side and the
upstream side strip them.

`refuse_request` is what the server loop refuses in a head that `httpio.h1request` parsed,
before any handler runs (the reader already refuses what it cannot parse, as h11 did: a
space before a colon, a control byte or a bare CR in a field, conflicting Content-Lengths,
a Transfer-Encoding other than ``chunked``):

- Methods. Every process serves and forwards GET, HEAD, POST, PUT, DELETE, PATCH and
  OPTIONS. CONNECT and TRACE are known and refused with 405 and ``Allow``, as nginx does
  (``ngx_http_process_request_header`` answers 405 to both): a 2xx to CONNECT turns the
  connection into a tunnel (RFC 9110 9.3.6), and a TRACE that echoes the request would
  hand a page's script the cookies and credentials it cannot otherwise read (cross-site
  tracing). Any other token is 501, as RFC 9110 9.1 asks of a method "unrecognized or not
  implemented" (nginx would pass it on; a gateway whose backends expect one of the seven
  should not). Methods are case-sensitive: ``get`` is not GET.
- Content-Length together with Transfer-Encoding is refused with 400, as nginx and Envoy
  do by default: RFC 9112 6.1 lets a server reject it and says it "ought to be handled as
  an error" (6.3); the two headers are how request smuggling splits one request into two
  between hops. Transfer-Encoding in HTTP/1.0 is 400 too: 6.1 calls that framing faulty.
- A head larger than the limit even though it arrived whole (the reader bounds only an
  incomplete one) is 431.

Each refusal closes the connection (the caller's job): after a refused CONNECT or an
ambiguous length the next bytes cannot be trusted to start a request.

HTTP/1.0 keep-alive (RFC 9112 9.3 and Appendix C.2.2, RFC 2068 19.7.1): an HTTP/1.0
connection persists only when the client asked (``Connection: keep-alive``) and the answer
says so too. h11 makes every HTTP/1.0 exchange its connection's last (it writes
``Connection: close``, and both sides end in ``MUST_CLOSE``), so ``ab -k`` and any 1.0
client that asks paid a TCP connection per request. `asks_keep_alive` and
`http10_may_persist` decide (sans-IO), `httpio.h1response` writes the head that promises
the connection, and the server loop reads the next request from it. A body the client can
only delimit by the close (no Content-Length: a 1.0 client knows no chunked) never persists,
nor does an answer that already carries a ``Connection`` header of its own (a drain's or a
refusal's close).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable
from http import HTTPStatus

import h11 as _pure_h11

from httpio.errors import (
    ClientError,
    GatewayError,
    MethodNotAllowed,
    RequestHeadTooLarge,
    Unimplemented,
)
from httpio.h1client import connection_tokens

h11 = _pure_h11
# The name is found first and the module bound once from it: compiled (`httpio.accel`), a
# read of ``h11`` would be of the module imported statically, whatever was bound since.
_choice = os.environ.get("GATEWAY_H11", "auto")
if _choice not in ("auto", "pure", "mypyc"):
    raise SystemExit(f"GATEWAY_H11 must be auto, pure or mypyc, not {_choice!r}")
H11_NAME = "h11"
if _choice != "pure":
    try:
        h11 = importlib.import_module("h11_mypyc")
        H11_NAME = "h11_mypyc"
    except ImportError:
        if _choice == "mypyc":
            raise

Headers = list[tuple[bytes, bytes]]

REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}


def reason_for(status: int) -> bytes:
    return REASONS.get(status, b"Unknown")


# RFC 9110 7.6.1 plus the legacy ones every proxy strips (RFC 2616 13.5.1).
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Drop hop-by-hop headers, including every header named in ``Connection``."""
    named: set[bytes] | None = None
    for name, value in headers:
        if name == b"connection":
            if named is None:
                named = set()
            named.update(token.strip().lower() for token in value.split(b","))
    if named is None:
        return [(n, v) for n, v in headers if n not in HOP_BY_HOP]
    return [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in named]


def header_value(headers: Headers, name: bytes) -> bytes | None:
    """The first value of field ``name`` (lowercase: h11 lowercases every name it parses,
    and ours are written so), or None."""
    for n, v in headers:
        if n == name:
            return v
    return None


def header_values(headers: Headers, name: bytes) -> list[bytes]:
    """Every value of field ``name``, in order (a list field may span several lines)."""
    return [v for n, v in headers if n == name]


def asks_keep_alive(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether ``Connection`` names ``keep-alive`` and not ``close``: how an HTTP/1.0 client
    asks to keep its connection (an HTTP/1.1 one persists by default; h11 sees to that)."""
    tokens = connection_tokens(headers)
    return b"keep-alive" in tokens and b"close" not in tokens


def http10_may_persist(method: str, status: int, headers: Headers, sized_body: bool) -> bool:
    """Whether the answer to an HTTP/1.0 request that asked for keep-alive may leave the
    connection open: its end is known without the close (a bytes body, which gets its
    Content-Length; a Content-Length; or no body at all), and nobody asked to close."""
    length = sized_body or method == "HEAD" or status in (204, 304)
    for name, _ in headers:
        if name == b"connection":
            return False
        if name == b"content-length":
            length = True
    return length


SERVED_METHODS: tuple[bytes, ...] = (
    b"GET",
    b"HEAD",
    b"POST",
    b"PUT",
    b"DELETE",
    b"PATCH",
    b"OPTIONS",
)
ALLOW: bytes = b", ".join(SERVED_METHODS)
_SERVED = frozenset(SERVED_METHODS)
_REFUSED = frozenset({b"CONNECT", b"TRACE"})


def refuse_request(
    method: bytes,
    http_version: bytes,
    target: bytes,
    headers: Iterable[tuple[bytes, bytes]],
    max_head_bytes: int,
) -> GatewayError | None:
    """Why a parsed request head must be answered with an error (and the connection
    closed) before any handler sees it; None for a request to serve."""
    if method not in _SERVED:
        name = method.decode("ascii", "replace")  # the reader let only a token through
        if method in _REFUSED:
            return MethodNotAllowed(f"{name} is not served here", allow=ALLOW)
        return Unimplemented(f"method {name} is not implemented")
    size = len(target)
    chunked = sized = False
    for name_, value in headers:
        size += len(name_) + len(value) + 4
        if name_ == b"transfer-encoding":
            chunked = True
        elif name_ == b"content-length":
            sized = True
    if size > max_head_bytes:
        return RequestHeadTooLarge(f"request head exceeds {max_head_bytes} bytes")
    if chunked:
        if sized:
            return ClientError(
                "Content-Length and Transfer-Encoding together make the length ambiguous"
            )
        if http_version == b"1.0":
            return ClientError("Transfer-Encoding in an HTTP/1.0 request")
    return None
