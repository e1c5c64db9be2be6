"""PROXY protocol v2 (HAProxy spec 2.2): build and parse, byte by byte. Pure: no event loop."""

from __future__ import annotations

import struct

import pytest

from httpio.proxyproto import (
    NEED_MORE,
    SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    build_v2,
    parse_v2,
)

REQUEST = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"


def test_ipv4_round_trip_and_exact_bytes() -> None:
    header = build_v2(("203.0.113.7", 51234), ("10.0.0.2", 6000))
    assert header == (
        SIGNATURE
        + b"\x21\x11\x00\x0c"
        + bytes([203, 0, 113, 7, 10, 0, 0, 2])
        + struct.pack("!HH", 51234, 6000)
    )
    parsed = parse_v2(header + REQUEST)
    assert parsed == ProxyHeader(28, ("203.0.113.7", 51234), ("10.0.0.2", 6000))
    assert (header + REQUEST)[28:] == REQUEST


def test_ipv6_round_trip() -> None:
    header = build_v2(("2001:db8::1", 443), ("::1", 6001))
    assert header[12:16] == b"\x21\x21\x00\x24" and len(header) == 16 + 36
    assert parse_v2(header) == ProxyHeader(52, ("2001:db8::1", 443), ("::1", 6001))


def test_mixed_families_map_ipv4_into_ipv6_and_back() -> None:
    header = build_v2(("192.0.2.1", 1000), ("::1", 2000))
    assert header[13] == 0x21
    assert parse_v2(header) == ProxyHeader(52, ("192.0.2.1", 1000), ("::1", 2000))


def test_need_more_until_the_whole_header_is_there() -> None:
    header = build_v2(("192.0.2.1", 1000), ("192.0.2.2", 2000))
    for cut in range(len(header)):
        assert parse_v2(header[:cut]) is NEED_MORE, cut
    assert isinstance(parse_v2(header), ProxyHeader)
    assert repr(NEED_MORE) == "NEED_MORE"


@pytest.mark.parametrize(
    "data", [REQUEST, b"G", b"\r\n\r\nGET", SIGNATURE[:11] + b"X", b"PROXY TCP4 1.2.3.4"]
)
def test_plain_http_is_none(data: bytes) -> None:
    assert parse_v2(data) is None


def test_local_command_has_no_addresses() -> None:
    local = SIGNATURE + b"\x20\x00\x00\x00"
    assert parse_v2(local + REQUEST) == ProxyHeader(16, None, None)
    # a LOCAL header may still carry an address block, which is skipped
    padded = SIGNATURE + b"\x20\x11\x00\x0c" + bytes(12)
    assert parse_v2(padded) == ProxyHeader(28, None, None)


def test_unspec_family_keeps_the_transport_address() -> None:
    tlv_only = SIGNATURE + b"\x21\x00\x00\x03" + b"\x04\x00\x00"
    assert parse_v2(tlv_only) == ProxyHeader(19, None, None)


def test_tlvs_after_the_address_block_are_skipped() -> None:
    block = bytes([192, 0, 2, 1, 192, 0, 2, 2]) + struct.pack("!HH", 1, 2)
    tlv = b"\x04\x00\x02ok"
    header = SIGNATURE + b"\x21\x11" + struct.pack("!H", len(block + tlv)) + block + tlv
    assert parse_v2(header + REQUEST) == ProxyHeader(33, ("192.0.2.1", 1), ("192.0.2.2", 2))


@pytest.mark.parametrize("ver_cmd", [b"\x00", b"\x11", b"\x22", b"\x2f", b"\xff"])
def test_garbage_after_signature_is_an_error(ver_cmd: bytes) -> None:
    with pytest.raises(ProxyProtocolError, match="version/command"):
        parse_v2(SIGNATURE + ver_cmd + b"\x11\x00\x00")
