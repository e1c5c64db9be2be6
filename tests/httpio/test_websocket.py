"""`httpio.websocket`: which requests are upgrades, what the handshake carries each way, which
close codes go on the wire. No event loop."""

from __future__ import annotations

import pytest

from httpio.websocket import (
    Side,
    close_reason,
    handshake_problem,
    is_upgrade,
    lost_peer_code,
    switched_headers,
    upstream_handshake_headers,
    wire_close_code,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 1.3's sample key
HANDSHAKE = [
    (b"host", b"gw"),
    (b"upgrade", b"websocket"),
    (b"connection", b"keep-alive, Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
]


def test_an_upgrade_is_a_get_with_upgrade_websocket_named_in_connection() -> None:
    assert is_upgrade("GET", HANDSHAKE)  # Firefox's "keep-alive, Upgrade"
    assert is_upgrade("GET", [(b"upgrade", b"WebSocket"), (b"connection", b"upgrade")])
    assert not is_upgrade("POST", HANDSHAKE)
    assert not is_upgrade("GET", [(b"upgrade", b"websocket")])  # not named in Connection
    assert not is_upgrade("GET", [(b"upgrade", b"h2c"), (b"connection", b"upgrade")])
    assert not is_upgrade("GET", [(b"host", b"gw")])


def test_a_well_formed_handshake_has_no_problem() -> None:
    assert handshake_problem(HANDSHAKE) is None


@pytest.mark.parametrize(
    "change",
    [
        [(b"sec-websocket-key", b"short")],
        [(b"sec-websocket-key", b"not base64!!")],
        [(b"sec-websocket-version", b"8")],
        [(b"content-length", b"5")],
        [(b"transfer-encoding", b"chunked")],
    ],
)
def test_a_malformed_handshake_is_refused(change: list[tuple[bytes, bytes]]) -> None:
    names = {n for n, _ in change}
    headers = [(n, v) for n, v in HANDSHAKE if n not in names] + change
    assert handshake_problem(headers) is not None


def test_two_keys_are_a_problem() -> None:
    assert handshake_problem([*HANDSHAKE, (b"sec-websocket-key", KEY)]) is not None


def test_upstream_handshake_drops_extensions_and_says_upgrade_again() -> None:
    forwarded = [
        (b"host", b"gw"),
        (b"sec-websocket-key", KEY),
        (b"sec-websocket-extensions", b"permessage-deflate"),
        (b"sec-websocket-protocol", b"chat"),
    ]
    out = upstream_handshake_headers(forwarded)
    assert (b"sec-websocket-extensions", b"permessage-deflate") not in out
    assert (b"sec-websocket-key", KEY) in out and (b"sec-websocket-protocol", b"chat") in out
    assert out[-2:] == [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]


def test_switched_headers_keep_accept_and_protocol_and_strip_hop_by_hop() -> None:
    upstream = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade, x-secret"),
        (b"x-secret", b"1"),
        (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        (b"sec-websocket-protocol", b"chat"),
        (b"sec-websocket-extensions", b"permessage-deflate"),
    ]
    out = switched_headers(upstream)
    names = [n for n, _ in out]
    assert b"x-secret" not in names and b"sec-websocket-extensions" not in names
    assert (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in out
    assert names.count(b"connection") == 1 and names.count(b"upgrade") == 1


@pytest.mark.parametrize(
    ("received", "sent"),
    [
        (1000, 1000),
        (1001, 1001),
        (1008, 1008),
        (4000, 4000),
        (None, None),
        (1005, None),  # "no status" is reported as no code, not sent as 1005
        (1006, 1011),
        (1015, 1011),
        (999, 1011),
        (5000, 1011),
    ],
)
def test_wire_close_code_never_sends_what_rfc_6455_forbids(
    received: int | None, sent: int | None
) -> None:
    assert wire_close_code(received) == sent


def test_a_lost_peer_is_reported_as_going_away_or_an_upstream_failure() -> None:
    assert lost_peer_code(Side.CLIENT) == 1001
    assert lost_peer_code(Side.UPSTREAM) == 1011


def test_close_reason_fits_a_control_frame() -> None:
    assert close_reason("short") == "short"
    assert len(close_reason("é" * 100).encode()) <= 123
