"""`proxy.forwarding`: the headers on each side of the proxy, as pure functions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from httpio.protocol import Headers, strip_hop_by_hop
from proxy.forwarding import (
    client_response_headers,
    forwarded_node,
    upstream_request_headers,
    with_request_id,
)

VIA = b"1.1 proxy-a"
RID = b"rid-1"


def upstream(
    headers: Headers,
    *,
    client_ip: str = "10.0.0.7",
    from_our_hop: bool = False,
    drop: frozenset[bytes] = frozenset(),
) -> Headers:
    return upstream_request_headers(
        headers,
        client_ip=client_ip,
        via=VIA,
        request_id=RID,
        from_our_hop=from_our_hop,
        drop=drop,
    )


def values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


def only(headers: Headers, name: bytes) -> bytes:
    found = values(headers, name)
    assert len(found) == 1, f"{name!r}: {found}"
    return found[0]


# -- towards the upstream ---------------------------------------------------------------------
def test_plain_request_gains_forwarding_headers_and_loses_host() -> None:
    out = upstream([(b"host", b"gw.example"), (b"accept", b"*/*")])
    assert out == [
        (b"accept", b"*/*"),
        (b"x-forwarded-for", b"10.0.0.7"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"gw.example"),
        (b"x-real-ip", b"10.0.0.7"),
        (b"forwarded", b"for=10.0.0.7;proto=http;by=_proxy-a"),
        (b"via", VIA),
        (b"x-request-id", RID),
    ]


def test_hop_by_headers_go_including_those_named_in_connection() -> None:
    out = upstream(
        [
            (b"host", b"gw"),
            (b"connection", b"keep-alive, X-Secret ,x-other"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-connection", b"keep-alive"),
            (b"proxy-authorization", b"Basic Zm9v"),
            (b"te", b"trailers"),
            (b"trailer", b"x-checksum"),
            (b"transfer-encoding", b"chunked"),
            (b"upgrade", b"websocket"),
            (b"x-secret", b"1"),
            (b"x-other", b"2"),
            (b"accept", b"text/html"),
            (b"authorization", b"Bearer t"),
        ]
    )
    names = [n for n, _ in out]
    assert names[:2] == [b"accept", b"authorization"]
    for gone in (
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"x-secret",
        b"x-other",
        b"host",
    ):
        assert gone not in names


def test_end_to_end_headers_keep_their_order_and_repeats() -> None:
    out = upstream([(b"accept", b"a"), (b"cookie", b"x=1"), (b"accept", b"b")])
    assert out[:3] == [(b"accept", b"a"), (b"cookie", b"x=1"), (b"accept", b"b")]


def test_x_forwarded_for_is_appended_to() -> None:
    assert only(upstream([(b"x-forwarded-for", b"1.2.3.4")]), b"x-forwarded-for") == (
        b"1.2.3.4, 10.0.0.7"
    )
    two_lines = [(b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2, 3.3.3.3")]
    assert only(upstream(two_lines), b"x-forwarded-for") == b"1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.7"


def test_via_is_chained() -> None:
    assert only(upstream([(b"via", b"1.0 fred")]), b"via") == b"1.0 fred, 1.1 proxy-a"
    two_lines = [(b"via", b"1.0 fred"), (b"via", b"1.1 elb")]
    assert only(upstream(two_lines), b"via") == b"1.0 fred, 1.1 elb, 1.1 proxy-a"


def test_forwarded_proto_and_host_from_a_client_are_not_trusted() -> None:
    headers = [
        (b"host", b"gw.example"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"evil.example"),
    ]
    out = upstream(headers, from_our_hop=False)
    assert only(out, b"x-forwarded-proto") == b"http"
    assert only(out, b"x-forwarded-host") == b"gw.example"


def test_forwarded_proto_and_host_from_our_hop_are_kept() -> None:
    headers = [
        (b"host", b"elb-en.internal:9001"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"gw.example"),
    ]
    out = upstream(headers, from_our_hop=True)
    assert only(out, b"x-forwarded-proto") == b"https"
    assert only(out, b"x-forwarded-host") == b"gw.example"


def test_our_hop_without_forwarded_headers_falls_back_to_host() -> None:
    out = upstream([(b"host", b"gw.example")], from_our_hop=True)
    assert only(out, b"x-forwarded-proto") == b"http"
    assert only(out, b"x-forwarded-host") == b"gw.example"


def test_no_host_no_forwarded_host() -> None:
    assert values(upstream([]), b"x-forwarded-host") == []


def test_drop_removes_identity_headers_a_client_sent() -> None:
    headers = [(b"x-user", b"mallory"), (b"x-user-role", b"admin"), (b"accept", b"*/*")]
    out = upstream(headers, drop=frozenset({b"x-user", b"x-user-role"}))
    assert values(out, b"x-user") == []
    assert values(out, b"x-user-role") == []
    assert values(out, b"accept") == [b"*/*"]
    # without `drop` they pass (the caller decides which headers it owns)
    assert values(upstream(headers), b"x-user") == [b"mallory"]


def test_request_id_header_is_the_one_given_exactly_once() -> None:
    out = upstream([(b"x-request-id", b"from-client"), (b"x-request-id", b"again")])
    assert values(out, b"x-request-id") == [RID]


# -- what a client must not say to a backend (issue 8, item 10) -------------------------------
@pytest.mark.parametrize(
    "name", [b"x_user", b"x-user_role", b"x_forwarded_for", b"_", b"content_length", b"x__a"]
)
def test_a_header_named_with_an_underscore_is_dropped(name: bytes) -> None:
    out = upstream([(name, b"root"), (b"x-kept", b"1")])
    assert values(out, name) == []
    assert values(out, b"x-kept") == [b"1"]
    assert all(b"_" not in n for n, _ in out)


def test_an_underscore_header_from_our_hop_is_dropped_too() -> None:
    assert values(upstream([(b"x_user", b"root")], from_our_hop=True), b"x_user") == []


def test_a_clients_x_real_ip_is_replaced_by_the_real_address() -> None:
    out = upstream([(b"x-real-ip", b"127.0.0.1"), (b"X-Real-IP".lower(), b"1.1.1.1")])
    assert only(out, b"x-real-ip") == b"10.0.0.7"


def test_x_real_ip_from_our_hop_names_the_first_hops_client() -> None:
    out = upstream([(b"x-real-ip", b"203.0.113.9")], client_ip="10.1.0.2", from_our_hop=True)
    assert only(out, b"x-real-ip") == b"203.0.113.9"
    assert only(upstream([], client_ip="10.1.0.2", from_our_hop=True), b"x-real-ip") == (
        b"10.1.0.2"
    )


def test_a_clients_forwarded_is_replaced_by_ours() -> None:
    forged = [(b"forwarded", b"for=127.0.0.1;by=_admin"), (b"forwarded", b"for=10.0.0.1")]
    out = upstream(forged)
    assert only(out, b"forwarded") == b"for=10.0.0.7;proto=http;by=_proxy-a"


def test_forwarded_from_our_hop_gains_our_element() -> None:
    prior = [(b"forwarded", b"for=203.0.113.9;proto=http;by=_proxy-en"), (b"forwarded", b"for=x")]
    out = upstream(prior, client_ip="10.1.0.2", from_our_hop=True)
    assert only(out, b"forwarded") == (
        b"for=203.0.113.9;proto=http;by=_proxy-en, for=x, for=10.1.0.2;proto=http;by=_proxy-a"
    )


def test_forwarded_for_follows_x_forwarded_for() -> None:
    """Both name the address that connected to us: whoever reads one reads the other."""
    out = upstream([(b"x-forwarded-for", b"1.2.3.4")], client_ip="10.0.0.9")
    assert only(out, b"x-forwarded-for").rpartition(b", ")[2] == b"10.0.0.9"
    assert only(out, b"forwarded").startswith(b"for=10.0.0.9;")


@pytest.mark.parametrize(
    ("address", "node"),
    [
        ("203.0.113.9", b"203.0.113.9"),
        ("2001:db8::1", b'"[2001:db8::1]"'),
        ("::1", b'"[::1]"'),
        ("unix", b"unknown"),
        ("", b"unknown"),
    ],
)
def test_forwarded_nodes_are_written_as_rfc_7239_says(address: str, node: bytes) -> None:
    assert forwarded_node(address) == node


def test_our_name_becomes_an_obfuscated_node() -> None:
    out = upstream_request_headers(
        [],
        client_ip="10.0.0.7",
        via=b"1.1 proxy-ko_KR-6000 x/y",
        request_id=RID,
        from_our_hop=False,
    )
    assert only(out, b"forwarded") == b"for=10.0.0.7;proto=http;by=_x-y"
    out = upstream_request_headers(
        [], client_ip="10.0.0.7", via=b"1.1 proxy-ko_KR-6000", request_id=RID, from_our_hop=False
    )
    assert only(out, b"forwarded").endswith(b";by=_proxy-ko_KR-6000")


def test_the_clients_content_length_is_not_forwarded() -> None:
    """The upstream pool frames what it sends (issue 8, item 6): a Content-Length beside a
    de-chunked body would be a second, wrong framing."""
    out = upstream([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")])
    assert values(out, b"content-length") == [] and values(out, b"transfer-encoding") == []


NAMES = [
    b"host",
    b"connection",
    b"keep-alive",
    b"upgrade",
    b"te",
    b"transfer-encoding",
    b"x-forwarded-for",
    b"x-forwarded-host",
    b"forwarded",
    b"x-real-ip",
    b"via",
    b"x-secret",
    b"x_user",
    b"accept",
]
TOKENS = [b"keep-alive", b"close", b"Upgrade", b"x-secret", b"Host", b"x-forwarded-for", b""]


@settings(max_examples=200, derandomize=True, database=None, deadline=None)
@given(
    headers=st.lists(
        st.tuples(
            st.sampled_from(NAMES),
            st.one_of(
                st.lists(st.sampled_from(TOKENS), min_size=1, max_size=3).map(b" ,".join),
                st.sampled_from([b"1.2.3.4", b"gw.example", b"for=1.2.3.4"]),
            ),
        ),
        max_size=6,
    ),
    from_our_hop=st.booleans(),
)
def test_one_pass_is_the_same_as_stripping_first(
    headers: list[tuple[bytes, bytes]], from_our_hop: bool
) -> None:
    """The single pass (hop-by-hop headers skipped inside it) must say exactly what
    stripping hop-by-hop headers first, then forwarding, says."""
    stripped = strip_hop_by_hop(headers)
    assert upstream(headers, from_our_hop=from_our_hop) == upstream(
        stripped, from_our_hop=from_our_hop
    )
    assert not {n for n, _ in upstream(headers)} & {b"connection", b"keep-alive", b"upgrade"}


def test_connection_naming_an_end_to_end_header_drops_it() -> None:
    out = upstream([(b"connection", b"x-forwarded-for"), (b"x-forwarded-for", b"6.6.6.6")])
    assert only(out, b"x-forwarded-for") == b"10.0.0.7"


# -- back to the client -----------------------------------------------------------------------
def test_response_gains_via_and_request_id() -> None:
    out = client_response_headers([(b"content-type", b"text/plain")], via=VIA, request_id=RID)
    assert out == [(b"content-type", b"text/plain"), (b"via", VIA), (b"x-request-id", RID)]


def test_response_via_is_chained_and_the_request_id_is_ours() -> None:
    """An upstream's own X-Request-ID would name another request than our access log."""
    out = client_response_headers(
        [(b"via", b"1.1 backend"), (b"x-request-id", b"upstream-id")], via=VIA, request_id=RID
    )
    assert only(out, b"via") == b"1.1 backend, 1.1 proxy-a"
    assert only(out, b"x-request-id") == RID


def test_a_stored_request_id_is_replaced_by_this_requests() -> None:
    stored = [(b"content-type", b"image/png"), (b"x-request-id", b"the-one-that-filled-it")]
    out = with_request_id(stored, RID)
    assert out == [(b"content-type", b"image/png"), (b"x-request-id", RID)]


def test_response_hop_by_hop_headers_go() -> None:
    out = client_response_headers(
        [
            (b"connection", b"close, x-internal"),
            (b"keep-alive", b"timeout=5"),
            (b"transfer-encoding", b"chunked"),
            (b"x-internal", b"1"),
            (b"content-length", b"3"),
        ],
        via=VIA,
        request_id=RID,
    )
    assert [n for n, _ in out] == [b"content-length", b"via", b"x-request-id"]


def test_response_via_on_two_lines_ends_with_our_hop() -> None:
    out = client_response_headers([(b"via", b"1.0 a"), (b"via", b"1.1 b")], via=VIA, request_id=RID)
    combined = b", ".join(values(out, b"via"))
    assert combined == b"1.0 a, 1.1 b, 1.1 proxy-a"


def test_response_connection_naming_only_hop_by_hop_headers_goes_in_the_one_pass() -> None:
    out = client_response_headers(
        [(b"connection", b"Keep-Alive"), (b"keep-alive", b"timeout=5"), (b"x-a", b"1")],
        via=VIA,
        request_id=RID,
    )
    assert out == [(b"x-a", b"1"), (b"via", VIA), (b"x-request-id", RID)]
