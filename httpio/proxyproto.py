"""PROXY protocol version 2 (HAProxy's spec, section 2.2): how an ELB that relays bytes tells
the proxy behind it who the client really is.

Version 2 is binary with a fixed 16-byte prefix, so a proxy can tell it apart from an HTTP
request line by its first bytes and parse it without scanning for a line end. Only the
``PROXY`` and ``LOCAL`` commands over TCP/IPv4 and TCP/IPv6 are produced or understood;
TLVs are skipped. The receiving side accepts the header only from its ELBs' addresses
(`httpio.server.HttpServer.trusted_proxies`); anyone else could claim any address.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Final

SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"
_V2_PROXY = 0x21
_V2_LOCAL = 0x20
_TCP4 = 0x11
_TCP6 = 0x21


class _NeedMore:
    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE: Final = _NeedMore()


class ProxyProtocolError(ValueError):
    """A header that starts with the v2 signature but is not one we can read."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    length: int  # bytes of the header, to skip before the HTTP request
    source: tuple[str, int] | None  # None for LOCAL (health checks from the ELB itself)
    destination: tuple[str, int] | None


def build_v2(source: tuple[str, int], destination: tuple[str, int]) -> bytes:
    src = ipaddress.ip_address(source[0])
    dst = ipaddress.ip_address(destination[0])
    if src.version != dst.version:
        # mixed families: map IPv4 into IPv6 so both fit one address block
        src = ipaddress.IPv6Address(f"::ffff:{src}") if src.version == 4 else src
        dst = ipaddress.IPv6Address(f"::ffff:{dst}") if dst.version == 4 else dst
    family = _TCP4 if src.version == 4 else _TCP6
    body = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    return SIGNATURE + bytes((_V2_PROXY, family)) + struct.pack("!H", len(body)) + body


def parse_v2(data: bytes) -> ProxyHeader | _NeedMore | None:
    """``NEED_MORE`` until 16 bytes (and then the whole header) are there; ``None`` when
    ``data`` does not start with the signature (plain HTTP); else the parsed header."""
    head = data[:12]
    if not SIGNATURE.startswith(head):
        return None
    if len(data) < 16:
        return NEED_MORE
    ver_cmd, family, length = data[12], data[13], struct.unpack("!H", data[14:16])[0]
    total = 16 + length
    if len(data) < total:
        return NEED_MORE
    if ver_cmd == _V2_LOCAL:
        return ProxyHeader(total, None, None)
    if ver_cmd != _V2_PROXY:
        raise ProxyProtocolError(f"unsupported version/command byte {ver_cmd:#x}")
    block = data[16:total]
    if family == _TCP4 and length >= 12:
        src = str(ipaddress.IPv4Address(block[0:4]))
        dst = str(ipaddress.IPv4Address(block[4:8]))
        sport, dport = struct.unpack("!HH", block[8:12])
    elif family == _TCP6 and length >= 36:
        src6 = ipaddress.IPv6Address(block[0:16])
        dst6 = ipaddress.IPv6Address(block[16:32])
        src = str(src6.ipv4_mapped or src6)
        dst = str(dst6.ipv4_mapped or dst6)
        sport, dport = struct.unpack("!HH", block[32:36])
    else:
        return ProxyHeader(total, None, None)  # UNSPEC or unix: keep the transport address
    return ProxyHeader(total, (src, sport), (dst, dport))
