"""`httpio.protocol.refuse_request`: what a parsed head is refused for before any handler
runs. Pure: no event loop, no socket."""

from __future__ import annotations

import pytest

from httpio.errors import ClientError, MethodNotAllowed, RequestHeadTooLarge, Unimplemented
from httpio.protocol import ALLOW, SERVED_METHODS, refuse_request

HOST = [(b"host", b"x")]


def refuse(
    method: bytes = b"GET",
    headers: list[tuple[bytes, bytes]] | None = None,
    *,
    version: bytes = b"1.1",
    target: bytes = b"/",
    limit: int = 16384,
) -> object:
    return refuse_request(method, version, target, HOST if headers is None else headers, limit)


@pytest.mark.parametrize("method", SERVED_METHODS)
def test_served_methods_pass(method: bytes) -> None:
    assert refuse(method) is None


@pytest.mark.parametrize("method", [b"CONNECT", b"TRACE"])
def test_connect_and_trace_are_405_with_the_served_methods_in_allow(method: bytes) -> None:
    err = refuse(method)
    assert isinstance(err, MethodNotAllowed) and err.status == 405
    assert err.headers == ((b"allow", b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"),)
    assert ALLOW == b"GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS"
    assert method.decode() in err.detail


@pytest.mark.parametrize("method", [b"get", b"Get", b"FOO", b"PROPFIND", b"PRI", b"M-SEARCH"])
def test_anything_else_is_501(method: bytes) -> None:
    err = refuse(method)
    assert isinstance(err, Unimplemented) and (err.status, err.code) == (501, "not_implemented")


def test_content_length_with_transfer_encoding_is_400() -> None:
    err = refuse(b"POST", [*HOST, (b"content-length", b"5"), (b"transfer-encoding", b"chunked")])
    assert type(err) is ClientError and err.status == 400
    assert "Content-Length and Transfer-Encoding" in err.detail


def test_transfer_encoding_in_http_1_0_is_400() -> None:
    err = refuse(b"POST", [(b"transfer-encoding", b"chunked")], version=b"1.0")
    assert type(err) is ClientError and "HTTP/1.0" in err.detail


@pytest.mark.parametrize(
    "headers",
    [
        [*HOST, (b"content-length", b"5")],
        [*HOST, (b"transfer-encoding", b"chunked")],
        [(b"content-length", b"0")],
    ],
)
def test_one_framing_header_passes(headers: list[tuple[bytes, bytes]]) -> None:
    assert refuse(b"POST", headers) is None


def test_a_head_over_the_limit_is_431_whole_or_not() -> None:
    headers = [*HOST, (b"x-big", b"a" * 100)]
    size = len(b"/") + sum(len(n) + len(v) + 4 for n, v in headers)
    assert refuse(headers=headers, limit=size) is None
    err = refuse(headers=headers, limit=size - 1)
    assert isinstance(err, RequestHeadTooLarge) and err.status == 431


def test_the_method_is_checked_before_the_size() -> None:
    assert isinstance(refuse(b"CONNECT", [(b"x", b"a" * 100)], limit=10), MethodNotAllowed)
