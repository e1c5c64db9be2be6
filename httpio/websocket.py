"""WebSocket handshakes and close codes as a proxy sees them (RFC 6455): pure decisions, no I/O.

A proxy joins two WebSocket connections, not one: the client's (it is the server there) and
the upstream's (it is the client). The handshake is forwarded, not terminated: the client's
``Sec-WebSocket-Key``, ``-Version`` and ``-Protocol`` go upstream as they are, so the upstream's
``Sec-WebSocket-Accept`` is valid for the client and the upstream picks the subprotocol. What
changes on the way:

- ``Connection`` and ``Upgrade`` are hop-by-hop (RFC 9110 7.6.1, 7.8): stripped with the other
  hop-by-hop fields and written again on each hop as ``Connection: upgrade``, ``Upgrade:
  websocket`` (RFC 6455 4.1 items 5 and 6, 4.2.2 items 5.2 and 5.3);
- ``Sec-WebSocket-Extensions`` is dropped both ways: the proxy reads every frame (to enforce
  ``max_message_bytes``, idle and ping, and to close with a code), and a negotiated
  permessage-deflate would have it inflate every message, a decompression bomb's door. No
  extension is negotiated, which RFC 6455 9.1 allows any endpoint to decline.

A request is an upgrade when it is a GET with ``Upgrade: websocket`` named in ``Connection``
(4.2.1 items 1, 3, 4); `handshake_problem` says what the rest of 4.2.1 needs (a 16-byte
``Sec-WebSocket-Key``, version 13, no body), refused with 400 and ``Sec-WebSocket-Version: 13``
before anything goes upstream (4.4).

Close codes (7.4): 1005, 1006 and 1015 are what an endpoint reports when no code came, never
codes sent; ``wire_close_code`` turns what one side closed with into what the other is sent. A
peer that vanishes without a close frame is reported to the other side as 1001 (the client
went away, as a browser leaving a page says) or 1011 (the upstream failed: an unexpected
condition on the server side).
"""

from __future__ import annotations

import base64
from enum import Enum

from httpio.protocol import Headers, strip_hop_by_hop

NORMAL = 1000
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011
NOT_SENT = frozenset({1004, 1005, 1006, 1015})  # reserved, or "no code was received"

UPGRADE_HEADERS: Headers = [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
_DROPPED = frozenset({b"sec-websocket-extensions"})


class Side(Enum):
    CLIENT = "client"
    UPSTREAM = "upstream"


def _tokens(headers: Headers, name: bytes) -> list[bytes]:
    out: list[bytes] = []
    for n, v in headers:
        if n == name:
            out.extend(t.strip().lower() for t in v.split(b",") if t.strip())
    return out


def is_upgrade(method: str, headers: Headers) -> bool:
    """A WebSocket opening handshake: GET, ``Upgrade: websocket``, ``Connection: upgrade``."""
    if method != "GET":
        return False
    return b"websocket" in _tokens(headers, b"upgrade") and b"upgrade" in _tokens(
        headers, b"connection"
    )


def handshake_problem(headers: Headers) -> str | None:
    """What makes an upgrade request unfit to forward (RFC 6455 4.2.1), or None."""
    keys = [v for n, v in headers if n == b"sec-websocket-key"]
    if len(keys) != 1:
        return "an upgrade needs exactly one Sec-WebSocket-Key"
    try:
        if len(base64.b64decode(keys[0].strip(), validate=True)) != 16:
            return "Sec-WebSocket-Key must be 16 bytes, base64-encoded"
    except ValueError:
        return "Sec-WebSocket-Key is not base64"
    if _tokens(headers, b"sec-websocket-version") != [b"13"]:
        return "only WebSocket version 13 is spoken here"
    for n, v in headers:
        if n == b"transfer-encoding" or (n == b"content-length" and v.strip() != b"0"):
            return "an upgrade request has no body"
    return None


def upstream_handshake_headers(forwarded: Headers) -> Headers:
    """The forwarded request headers (hop-by-hop already stripped) as the upgrade sent on."""
    return [(n, v) for n, v in forwarded if n not in _DROPPED] + UPGRADE_HEADERS


def switched_headers(upstream: Headers) -> Headers:
    """The upstream's 101 headers as the client gets them."""
    kept = [(n, v) for n, v in strip_hop_by_hop(upstream) if n not in _DROPPED]
    return kept + UPGRADE_HEADERS


def wire_close_code(code: int | None) -> int | None:
    """The code to send on when one side closed with ``code`` (None: send no code). A code
    that may not go on the wire is replaced: no status stays no status, anything else that
    is not sendable becomes 1011."""
    if code is None or code == 1005:
        return None
    if code in NOT_SENT or not (1000 <= code <= 4999):
        return INTERNAL_ERROR
    return code


def lost_peer_code(lost: Side) -> int:
    """What the surviving side is told when ``lost`` vanished without a close frame (or
    stopped answering pings)."""
    return GOING_AWAY if lost is Side.CLIENT else INTERNAL_ERROR


def close_reason(text: str) -> str:
    """A close reason fits a control frame: 123 bytes of UTF-8 at most (RFC 6455 5.5)."""
    raw = text.encode()
    if len(raw) <= 123:
        return text
    return raw[:123].decode("utf-8", "ignore")
