"""The headers a request and a response carry across the proxy. Pure logic.

Towards the upstream (RFC 9110 7.6): hop-by-hop headers go, including those named in
``Connection`` (7.6.1); ``Via`` gains our hop (7.6.3); ``X-Forwarded-For`` gains the client
address, as nginx's ``$proxy_add_x_forwarded_for`` does; ``X-Forwarded-Proto`` and
``-Host`` say what the client asked for unless an earlier hop of ours already said it;
``X-Request-ID`` is kept when the client sent a sane one and generated otherwise
(`httpio.trace.request_id_of`), so one id follows a request through every hop and log.
``Host`` becomes the instance's, as nginx's default ``proxy_set_header Host $proxy_host`` does.

What a client must not be able to say to a backend:
- A header whose name holds ``_`` is dropped, as nginx does by default
  (``underscores_in_headers off``): WSGI and CGI turn ``-`` into ``_`` when they build
  ``HTTP_X_USER``, so ``X_User: root`` would reach the application as the ``X-User`` the
  gateway sets after authentication.
- ``X-Real-IP`` and ``Forwarded`` (RFC 7239) are ours, on the same trust rule as
  ``X-Forwarded-Proto``: a client's are dropped; an earlier hop of ours is believed.
  ``X-Real-IP`` is the client's address (the first hop's, when the request came through
  one); ``Forwarded`` gains one element per hop, ``for=`` the address that connected to
  us (the same one ``X-Forwarded-For`` gains), ``proto=http`` and ``by=`` our name as an
  obfuscated node (``_name``, RFC 7239 6.3).
- ``Content-Length`` goes like ``Transfer-Encoding``: the framing of what we send is the
  upstream pool's, computed from the body we actually send (RFC 9112 6.3: an
  intermediary removes a received Content-Length before it re-frames a message).

Back to the client: hop-by-hop headers go, ``Via`` gains our hop, and ``X-Request-ID`` is the
one this hop used (the access log's and the error bodies'), never an upstream's or a cached one.
"""

from __future__ import annotations

import functools
import re

from httpio.protocol import HOP_BY_HOP, Headers, strip_hop_by_hop

# Believed only from an earlier hop of ours (a signed hop mark), never from a client.
_TRUSTED_HOP_HEADERS = frozenset(
    {b"x-forwarded-proto", b"x-forwarded-host", b"x-real-ip", b"forwarded"}
)
# Replaced by our own on every request.
_REPLACED = frozenset({b"x-request-id", b"content-length", b"traceparent"})
_NODE_CHARS = re.compile(rb"[^A-Za-z0-9._-]")
_CONNECTION_ONLY = HOP_BY_HOP | {b"close", b""}


def upstream_request_headers(
    headers: Headers,
    *,
    client_ip: str,
    via: bytes,
    request_id: bytes,
    from_our_hop: bool,
    drop: frozenset[bytes] = frozenset(),
) -> Headers:
    """``drop`` names headers the caller owns (``x-user`` and friends set after auth).

    Longer than most on purpose: it runs on every proxied request, and one pass over the
    headers, with hop-by-hop ones skipped inside it, is what keeps it cheap (a separate strip
    pass and per-kind helpers cost measurably more per request; see the module header)."""
    out: Headers = []
    forwarded_for = prior_via = None
    host = b""
    proto = fhost = real_ip = forwarded = None
    # One pass, hop-by-hop headers skipped in it; only a Connection header naming an
    # end-to-end header (rare) costs a second pass over the stripped list.
    for name, value in headers:
        if name in HOP_BY_HOP:
            if name == b"connection" and not _only_hop_by_hop(value):
                return upstream_request_headers(
                    strip_hop_by_hop(headers),
                    client_ip=client_ip,
                    via=via,
                    request_id=request_id,
                    from_our_hop=from_our_hop,
                    drop=drop,
                )
            continue
        if 95 in name:  # ord("_"); one sixth of the cost of ``b"_" in name``
            continue
        if name == b"host":
            host = value
        elif name == b"x-forwarded-for":
            forwarded_for = value if forwarded_for is None else forwarded_for + b", " + value
        elif name == b"via":
            prior_via = value if prior_via is None else prior_via + b", " + value
        elif name in _REPLACED:
            continue
        elif name in _TRUSTED_HOP_HEADERS:
            if from_our_hop:
                if name == b"x-forwarded-proto":
                    proto = value
                elif name == b"x-forwarded-host":
                    fhost = value
                elif name == b"x-real-ip":
                    real_ip = value
                else:  # several Forwarded lines are one list, in order (RFC 7239 4)
                    forwarded = value if forwarded is None else forwarded + b", " + value
        elif name not in drop:
            out.append((name, value))
    ip, ours = _our_hop(client_ip, via)
    out.append((b"x-forwarded-for", forwarded_for + b", " + ip if forwarded_for else ip))
    out.append((b"x-forwarded-proto", proto or b"http"))
    if fhost or host:
        out.append((b"x-forwarded-host", fhost or host))
    out.append((b"x-real-ip", real_ip or ip))
    out.append((b"forwarded", forwarded + b", " + ours if forwarded else ours))
    out.append((b"via", prior_via + b", " + via if prior_via else via))
    out.append((b"x-request-id", request_id))
    return out


@functools.lru_cache(maxsize=256)
def _only_hop_by_hop(connection: bytes) -> bool:
    """Whether a Connection value names only headers dropped anyway (``keep-alive``,
    ``close``, ``upgrade``...): the common case, one lookup per request."""
    return all(token.strip().lower() in _CONNECTION_ONLY for token in connection.split(b","))


@functools.lru_cache(maxsize=4096)
def _our_hop(client_ip: str, via: bytes) -> tuple[bytes, bytes]:
    """The client's address and our ``Forwarded`` element, built once per client address
    (they repeat: an ELB's clients, a keep-alive connection's requests)."""
    by = b"_" + _NODE_CHARS.sub(b"-", via.rpartition(b" ")[2])  # RFC 7239 6.3 obfnode
    return client_ip.encode(), b"for=" + forwarded_node(client_ip) + b";proto=http;by=" + by


def forwarded_node(address: str) -> bytes:
    """An address as RFC 7239 6 writes a node: IPv4 as it is, IPv6 bracketed and quoted,
    anything else (a Unix socket) ``unknown``."""
    if ":" in address:
        return b'"[' + address.encode() + b']"'
    if address[:1].isdigit():
        return address.encode()
    return b"unknown"


def client_response_headers(headers: Headers, *, via: bytes, request_id: bytes) -> Headers:
    """The upstream's headers as the client gets them, in one pass as
    `upstream_request_headers`: hop-by-hop ones skipped inside it (only a Connection header
    naming an end-to-end one costs a strip pass first), ``Via`` with our hop, and
    ``X-Request-ID`` this request's own (an upstream's, or one a cache stored, would name
    another request than the access log's line and the error bodies do)."""
    out: Headers = []
    prior_via: bytes | None = None
    for name, value in headers:
        if name in HOP_BY_HOP:
            if name == b"connection" and not _only_hop_by_hop(value):
                return client_response_headers(
                    strip_hop_by_hop(headers), via=via, request_id=request_id
                )
            continue
        if name == b"via":  # several Via lines are one list, in order (RFC 9110 5.3)
            prior_via = value if prior_via is None else prior_via + b", " + value
            continue
        if name != b"x-request-id":
            out.append((name, value))
    out.append((b"via", prior_via + b", " + via if prior_via else via))
    out.append((b"x-request-id", request_id))
    return out


def with_request_id(headers: Headers, request_id: bytes) -> Headers:
    """``headers`` with this request's ``X-Request-ID`` in place of any other (a cached
    answer's headers hold none, entries stored before they were dropped may)."""
    out = [(n, v) for n, v in headers if n != b"x-request-id"]
    out.append((b"x-request-id", request_id))
    return out
