"""`proxy.websocket`: the token forms of a handshake and the 101's subprotocol. No event loop."""

from __future__ import annotations

from typing import Any

from httpio.messages import Request
from proxy.websocket import (
    Handshake,
    adopt_handshake_token,
    answer_headers,
    take_protocol_token,
    take_query_token,
    without_query_token,
)


def make_request(target: str, headers: list[tuple[bytes, bytes]]) -> Request:
    path, _, query = target.partition("?")
    body: Any = None
    return Request("GET", target, path, query, headers, "1.1", ("127.0.0.1", 1), body)


def test_bearer_subprotocol_is_taken_out_of_the_list() -> None:
    headers = [(b"sec-websocket-protocol", b"chat, bearer, tok.en-1"), (b"host", b"gw")]
    out, token, offered = take_protocol_token(headers)
    assert token == "tok.en-1" and offered
    assert (b"sec-websocket-protocol", b"chat") in out and (b"host", b"gw") in out


def test_only_bearer_and_token_leave_no_protocol_header() -> None:
    out, token, offered = take_protocol_token([(b"sec-websocket-protocol", b"bearer, t")])
    assert token == "t" and offered and out == []


def test_no_bearer_leaves_the_headers_alone() -> None:
    headers = [(b"sec-websocket-protocol", b"chat")]
    assert take_protocol_token(headers) == (headers, None, False)


def test_query_token_is_removed_and_decoded() -> None:
    assert take_query_token("a=1&access_token=x%2Ey&b=2") == ("a=1&b=2", "x.y")
    assert take_query_token("a=1") == ("a=1", None)
    assert without_query_token("/ws/echo?access_token=s") == "/ws/echo"
    assert without_query_token("/ws/ticks?n=3&access_token=s") == "/ws/ticks?n=3"


def test_adopted_token_becomes_authorization_and_leaves_the_target() -> None:
    request = make_request("/chat/ws?access_token=secret&n=1", [(b"host", b"gw")])
    handshake = adopt_handshake_token(request)
    assert handshake == Handshake(bearer_offered=False)
    assert (b"authorization", b"Bearer secret") in request.headers
    assert "secret" not in request.target and "secret" not in request.query
    assert request.target == "/chat/ws?n=1"


def test_a_header_token_wins_over_the_subprotocol_one() -> None:
    request = make_request(
        "/chat/ws",
        [(b"authorization", b"Bearer mine"), (b"sec-websocket-protocol", b"bearer, other")],
    )
    handshake = adopt_handshake_token(request)
    assert handshake.bearer_offered
    assert [v for n, v in request.headers if n == b"authorization"] == [b"Bearer mine"]
    assert not any(n == b"sec-websocket-protocol" for n, _ in request.headers)


def test_the_101_names_bearer_when_the_upstream_chose_nothing() -> None:
    offered = Handshake(bearer_offered=True)
    assert (b"sec-websocket-protocol", b"bearer") in answer_headers([], offered)
    chosen = [(b"sec-websocket-protocol", b"chat")]
    assert answer_headers(chosen, offered) == chosen
    assert answer_headers([], Handshake()) == []
