"""`proxy.filters.header_rules`: remove, set, add, and the variables."""

from __future__ import annotations

import pytest

from authsvc.claims import Claims
from httpio.messages import Response
from proxy.filters.header_rules import RequestHeaderRules, ResponseHeaderRules, compile_value
from tests.proxy.filters.edge import exchange
from topology.schema import HeaderRules


def test_request_rules_remove_set_add_with_variables() -> None:
    rules = HeaderRules(
        set={"X-Client": "${client_ip}/${region}"},
        add={"X-Trace": "${request_id} ${user}"},
        remove=("Cookie",),
    )
    ex = exchange(headers=[(b"cookie", b"a=1"), (b"x-client", b"forged"), (b"accept", b"*/*")])
    ex.claims = Claims(sub="alice", role="user", iat=0, exp=1, jti="j")
    RequestHeaderRules(rules, "ko_KR").on_request(ex)
    assert ex.request.headers == [
        (b"accept", b"*/*"),
        (b"x-client", b"127.0.0.1/ko_KR"),
        (b"x-trace", b"id-1 alice"),
    ]


def test_response_rules() -> None:
    r = ResponseHeaderRules(HeaderRules(remove=("Server",), set={"X-Frame-Options": "DENY"}), "r")
    out = r.on_response(exchange(), Response(200, [(b"server", b"x"), (b"x-frame-options", b"a")]))
    assert out.headers == [(b"x-frame-options", b"DENY")]


def test_unknown_variables_and_control_characters_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown variable"):
        compile_value("${password}", "r")
    with pytest.raises(ValueError, match="control"):
        compile_value("a\r\nInjected: 1", "r")


def test_the_response_passed_in_is_not_edited() -> None:
    given = Response(200, [(b"server", b"x")])
    out = ResponseHeaderRules(HeaderRules(set={"X-Ip": "${client_ip}"}), "r").on_response(
        exchange(), given
    )
    assert given.headers == [(b"server", b"x")]
    assert dict(out.headers)[b"x-ip"] == b"127.0.0.1"
