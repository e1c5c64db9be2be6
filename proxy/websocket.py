"""How a WebSocket handshake carries its token, and what the 101 must say back. Pure logic.

A browser's ``new WebSocket(url, protocols)`` cannot set ``Authorization``; it can set the
subprotocol list and the URL. So besides ``Authorization`` and ``AuthToken`` (read as for any
request, `authsvc.tokens.extract_token`) a handshake may carry its token as:

- ``Sec-WebSocket-Protocol: bearer, <token>`` (the form Kubernetes' API server reads): the two
  items are taken out of the list the upstream sees, and the 101 names ``bearer`` when the
  upstream chose no subprotocol, because a browser drops a connection whose 101 names none of
  the subprotocols it offered (RFC 6455 4.1, client step 6; Chromium and Firefox both do);
- ``?access_token=<token>`` (RFC 6750 2.3): taken out of the target before it goes upstream or
  into any log (the request's ``target`` and ``query`` are rewritten in place, so the access
  log, written from them after the exchange, never sees it).

Either becomes ``Authorization: Bearer <token>`` on the request when it has none, so the token
check and the revocation watch read one place. A header token wins over both.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from httpio.messages import Request
from httpio.protocol import Headers

BEARER = b"bearer"
PROTOCOL = b"sec-websocket-protocol"
QUERY_TOKEN = "access_token"


@dataclass(frozen=True, slots=True)
class Handshake:
    """What the handshake's 101 must honour: ``bearer`` offered as a subprotocol."""

    bearer_offered: bool = False


def take_protocol_token(headers: Headers) -> tuple[Headers, str | None, bool]:
    """The headers without ``bearer, <token>`` in their subprotocol list, the token, and
    whether ``bearer`` was offered."""
    items: list[bytes] = []
    for name, value in headers:
        if name == PROTOCOL:
            items.extend(t.strip() for t in value.split(b",") if t.strip())
    lowered = [i.lower() for i in items]
    if BEARER not in lowered:
        return headers, None, False
    at = lowered.index(BEARER)
    token = items[at + 1].decode("latin-1") if at + 1 < len(items) else None
    rest = items[:at] + items[at + 2 :]
    out = [(n, v) for n, v in headers if n != PROTOCOL]
    if rest:
        out.append((PROTOCOL, b", ".join(rest)))
    return out, token, True


def without_query_token(target: str) -> str:
    """``target`` (path and query) without ``access_token``."""
    path, mark, query = target.partition("?")
    if not mark:
        return target
    query, _ = take_query_token(query)
    return path + ("?" + query if query else "")


def take_query_token(query: str) -> tuple[str, str | None]:
    """The query without its ``access_token`` parameters, and the (last) token."""
    if QUERY_TOKEN not in query:
        return query, None
    kept: list[str] = []
    token = None
    for part in query.split("&"):
        key, _, value = part.partition("=")
        if unquote(key) == QUERY_TOKEN:
            token = unquote(value) or token
        else:
            kept.append(part)
    return "&".join(kept), token


def has_header_token(headers: Headers) -> bool:
    return any(n in (b"authorization", b"authtoken") for n, _ in headers)


def adopt_handshake_token(request: Request) -> Handshake:
    """Move a subprotocol or query token into ``Authorization`` (see the module header),
    rewriting ``request`` in place; what the 101 must honour."""
    headers, protocol_token, offered = take_protocol_token(request.headers)
    query, query_token = take_query_token(request.query)
    if query_token is not None or query != request.query:
        request.query = query
        request.target = request.path + ("?" + query if query else "")
    token = protocol_token or query_token
    if token and not has_header_token(headers):
        headers.append((b"authorization", b"Bearer " + token.encode("latin-1")))
    request.headers = headers
    return Handshake(bearer_offered=offered)


def answer_headers(headers: Headers, handshake: Handshake) -> Headers:
    """The 101's headers: ``bearer`` named when it was offered and the upstream chose none."""
    if handshake.bearer_offered and not any(n == PROTOCOL for n, _ in headers):
        return [*headers, (PROTOCOL, BEARER)]
    return headers
