"""Which h11 this process speaks with, and the few HTTP/1.1 facts every module shares.

`h11-mypyc` is the same state machine compiled with mypyc (alpha). It is an optional
accelerator: ``GATEWAY_H11=pure`` forces the pure-Python build, ``GATEWAY_H11=mypyc``
demands the compiled one, and the default takes the compiled one when it is installed.
The test suite runs under both. Its sentinels (``NEED_DATA``, ``PAUSED``, the states) are
classes that are not instances of themselves, so they are only ever compared with ``is``.

Hop-by-hop headers (RFC 9110 7.6.1) are listed here because both the server side and the
upstream side strip them.
"""

from __future__ import annotations

import importlib
import os
from http import HTTPStatus

import h11 as _pure_h11

h11 = _pure_h11
_choice = os.environ.get("GATEWAY_H11", "auto")
if _choice not in ("auto", "pure", "mypyc"):
    raise SystemExit(f"GATEWAY_H11 must be auto, pure or mypyc, not {_choice!r}")
if _choice != "pure":
    try:
        h11 = importlib.import_module("h11_mypyc")
    except ImportError:
        if _choice == "mypyc":
            raise
H11_NAME: str = h11.__name__

Headers = list[tuple[bytes, bytes]]

REASONS: dict[int, bytes] = {s.value: s.phrase.encode() for s in HTTPStatus}


def reason_for(status: int) -> bytes:
    return REASONS.get(status, b"Unknown")


# RFC 9110 7.6.1 plus the legacy ones every proxy strips (RFC 2616 13.5.1).
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def strip_hop_by_hop(headers: Headers) -> Headers:
    """Drop hop-by-hop headers, including every header named in ``Connection``."""
    named: set[bytes] | None = None
    for name, value in headers:
        if name == b"connection":
            if named is None:
                named = set()
            named.update(token.strip().lower() for token in value.split(b","))
    if named is None:
        return [(n, v) for n, v in headers if n not in HOP_BY_HOP]
    return [(n, v) for n, v in headers if n not in HOP_BY_HOP and n not in named]


def header_value(headers: Headers, name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None
