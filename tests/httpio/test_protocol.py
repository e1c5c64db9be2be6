"""Shared HTTP/1.1 facts: hop-by-hop stripping (RFC 9110 7.6.1), reason phrases, HTTP/1.0
keep-alive (RFC 9112 9.3), and the choice between the pure and the compiled h11. Pure: no
event loop."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from httpio import protocol
from httpio.protocol import (
    HOP_BY_HOP,
    asks_keep_alive,
    h11,
    header_value,
    http10_may_persist,
    reason_for,
    strip_hop_by_hop,
)


def test_strip_drops_the_fixed_hop_by_hop_set_and_keeps_order() -> None:
    headers = [
        (b"host", b"example.com"),
        (b"keep-alive", b"timeout=5"),
        (b"transfer-encoding", b"chunked"),
        (b"x-a", b"1"),
        (b"te", b"trailers"),
        (b"proxy-authorization", b"Basic eA=="),
        (b"upgrade", b"websocket"),
        (b"x-b", b"2"),
        (b"trailer", b"x-checksum"),
        (b"proxy-connection", b"keep-alive"),
        (b"proxy-authenticate", b"Basic"),
    ]
    assert strip_hop_by_hop(headers) == [(b"host", b"example.com"), (b"x-a", b"1"), (b"x-b", b"2")]


def test_strip_drops_headers_named_in_connection() -> None:
    headers = [
        (b"connection", b"close, X-Private ,x-other"),
        (b"x-private", b"secret"),
        (b"x-other", b"1"),
        (b"connection", b"x-third"),
        (b"x-third", b"3"),
        (b"x-kept", b"yes"),
    ]
    assert strip_hop_by_hop(headers) == [(b"x-kept", b"yes")]


def test_strip_leaves_end_to_end_headers_alone() -> None:
    headers = [(b"content-length", b"3"), (b"x-connection", b"close")]
    assert strip_hop_by_hop(headers) == headers
    assert strip_hop_by_hop([]) == []


def test_hop_by_hop_covers_rfc_9110() -> None:
    assert {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"} <= (
        HOP_BY_HOP
    )


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (100, b"Continue"),
        (200, b"OK"),
        (204, b"No Content"),
        (304, b"Not Modified"),
        (400, b"Bad Request"),
        (408, b"Request Timeout"),
        (413, b"Request Entity Too Large"),
        (431, b"Request Header Fields Too Large"),
        (502, b"Bad Gateway"),
        (503, b"Service Unavailable"),
        (504, b"Gateway Timeout"),
        (508, b"Loop Detected"),
        (599, b"Unknown"),
        (299, b"Unknown"),
    ],
)
def test_reason_for(status: int, reason: bytes) -> None:
    assert reason_for(status) == reason


def test_header_value_returns_the_first() -> None:
    headers = [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]
    assert header_value(headers, b"a") == b"1"
    assert header_value(headers, b"c") is None


def test_h11_build_follows_gateway_h11() -> None:
    expected = {"pure": "h11", "mypyc": "h11_mypyc"}.get(os.environ.get("GATEWAY_H11", "auto"))
    if expected is not None:
        assert protocol.H11_NAME == expected
    assert protocol.h11.__name__ == protocol.H11_NAME


def test_unknown_gateway_h11_stops_the_process() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import httpio.protocol"],
        env={**os.environ, "GATEWAY_H11": "fast"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "GATEWAY_H11 must be auto, pure or mypyc, not 'fast'" in result.stderr


# -- HTTP/1.0 keep-alive ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "asked"),
    [
        ([(b"connection", b"keep-alive")], True),
        ([(b"connection", b"Keep-Alive")], True),
        ([(b"connection", b"x-private, keep-alive")], True),
        ([(b"connection", b"keep-alive"), (b"connection", b"close")], False),
        ([(b"connection", b"keep-alive, close")], False),
        ([(b"connection", b"close")], False),
        ([(b"keep-alive", b"timeout=5")], False),  # the parameter header alone asks nothing
        ([(b"connection", b"keep-alive-ish")], False),
        ([], False),
    ],
)
def test_asks_keep_alive(headers: list[tuple[bytes, bytes]], asked: bool) -> None:
    assert asks_keep_alive(headers) is asked


@pytest.mark.parametrize(
    ("method", "status", "headers", "sized", "persists"),
    [
        ("GET", 200, [], True, True),  # a bytes body: the server writes its Content-Length
        ("GET", 200, [(b"content-length", b"6")], False, True),
        ("GET", 200, [], False, False),  # streamed, length unknown: only the close ends it
        ("HEAD", 200, [], False, True),
        ("GET", 204, [], False, True),
        ("GET", 304, [], False, True),
        ("GET", 200, [(b"connection", b"close")], True, False),  # a drain, a refusal
        ("GET", 200, [(b"content-length", b"6"), (b"connection", b"close")], False, False),
    ],
)
def test_http10_may_persist_only_with_a_known_length(
    method: str, status: int, headers: list[tuple[bytes, bytes]], sized: bool, persists: bool
) -> None:
    assert http10_may_persist(method, status, headers, sized) is persists


def http10_head(headers: list[tuple[bytes, bytes]], status: int = 200) -> bytes:
    """What this build of h11 writes for an answer to an HTTP/1.0 keep-alive request."""
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
    assert type(conn.next_event()) is h11.Request
    return bytes(
        conn.send(h11.Response(status_code=status, headers=headers, reason=reason_for(status)))
    )
