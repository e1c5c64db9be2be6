"""The headers a request and a response carry across the proxy. Pure logic.

Towards the upstream (RFC 9110 7.6): hop-by-hop headers go, including those named in
``Connection`` (7.6.1); ``Via`` gains our hop (7.6.3); ``X-Forwarded-For`` gains the client
address, as nginx's ``$proxy_add_x_forwarded_for`` does; ``X-Forwarded-Proto`` and
``-Host`` say what the client asked for unless an earlier hop of ours already said it;
``X-Request-ID`` is kept when the client sent a sane one and generated otherwise, so one
id follows a request through every hop and log. ``Host`` becomes the instance's, as
nginx's default ``proxy_set_header Host $proxy_host`` does.

Back to the client: hop-by-hop headers go and ``Via`` gains our hop.
"""

from __future__ import annotations

import itertools
import os
import re

from httpio.protocol import Headers, strip_hop_by_hop

_REQUEST_ID_SHAPE = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_TRUSTED_HOP_HEADERS = frozenset({b"x-forwarded-proto", b"x-forwarded-host"})


_ID_PREFIX = os.urandom(6).hex()
_id_counter = itertools.count(1)


def new_request_id() -> bytes:
    """Unique per process start and request, without a getrandom(2) call per request
    (which was 1.5 % of the proxy's CPU): a random per-process prefix and a counter."""
    return f"{_ID_PREFIX}{next(_id_counter):010x}".encode()


def request_id_of(headers: Headers) -> bytes:
    for name, value in headers:
        if name == b"x-request-id" and _REQUEST_ID_SHAPE.match(value):
            return value
    return new_request_id()


def upstream_request_headers(
    headers: Headers,
    *,
    client_ip: str,
    via: bytes,
    request_id: bytes,
    from_our_hop: bool,
    drop: frozenset[bytes] = frozenset(),
) -> Headers:
    """``drop`` names headers the caller owns (``x-user`` and friends set after auth)."""
    out: Headers = []
    forwarded_for = prior_via = None
    host = b""
    proto = fhost = None
    for name, value in strip_hop_by_hop(headers):
        if name == b"host":
            host = value
        elif name == b"x-forwarded-for":
            forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
        elif name == b"via":
            prior_via = value if prior_via is None else prior_via + b", " + value
        elif name == b"x-request-id":
            continue
        elif name in _TRUSTED_HOP_HEADERS:
            if from_our_hop:
                if name == b"x-forwarded-proto":
                    proto = value
                else:
                    fhost = value
        elif name not in drop:
            out.append((name, value))
    ip = client_ip.encode()
    out.append((b"x-forwarded-for", forwarded_for + b", " + ip if forwarded_for else ip))
    out.append((b"x-forwarded-proto", proto or b"http"))
    if fhost or host:
        out.append((b"x-forwarded-host", fhost or host))
    out.append((b"via", prior_via + b", " + via if prior_via else via))
    out.append((b"x-request-id", request_id))
    return out


def client_response_headers(headers: Headers, *, via: bytes, request_id: bytes) -> Headers:
    out: Headers = []
    prior_via: bytes | None = None
    has_id = False
    for name, value in strip_hop_by_hop(headers):
        if name == b"via":  # several Via lines are one list, in order (RFC 9110 5.3)
            prior_via = value if prior_via is None else prior_via + b", " + value
            continue
        has_id = has_id or name == b"x-request-id"
        out.append((name, value))
    out.append((b"via", prior_via + b", " + via if prior_via else via))
    if not has_id:
        out.append((b"x-request-id", request_id))
    return out
