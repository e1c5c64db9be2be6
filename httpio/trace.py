"""W3C Trace Context (https://www.w3.org/TR/trace-context/): continue or restart a trace.

Sans-IO. A request carrying a valid ``traceparent`` (version ``00``: 2-hex version, 32-hex
trace id, 16-hex parent id, 2-hex flags, none all zeros, lowercase, section 3.2.2) is continued:
the next hop gets the same trace id, a new span id (ours) and the same flags. A missing or
invalid one starts a new trace (sampled flag clear: we record nothing ourselves but the access
log). A higher version is parsed by its first four fields as section 3.2.4 asks. ``tracestate``
is not ours to touch and passes through with the other end-to-end headers. An edge fleet that
does not want clients to pick trace ids restarts every trace (``trust_incoming=False``).

``X-Request-ID`` lives here too: a sane incoming one (`request_id_of`) is kept, else a new one
is made. It is down in `httpio` because the server loop needs it as much as the proxy: a request
it refuses before any handler ran gets its id in the JSON body, the header and the access log.

Ids come from one ``os.urandom`` per process and a counter: a getrandom(2) call per request
was 1.5 % of a proxy's CPU. The ids stay unique per process start, which is what a trace id and
a request id must be.
"""

from __future__ import annotations

import itertools
import os
import re

from httpio.protocol import Headers

_TRACEPARENT = re.compile(rb"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE = b"0" * 32
_ZERO_SPAN = b"0" * 16

_PREFIX = os.urandom(8).hex().encode()  # 16 hex digits per process start
_counter = itertools.count(1)
_REQUEST_ID_SHAPE = re.compile(rb"^[A-Za-z0-9._:-]{1,128}$")
_ID_PREFIX = os.urandom(6).hex()
_id_counter = itertools.count(1)


def new_request_id() -> bytes:
    """Unique per process start and request: a random per-process prefix and a counter."""
    return f"{_ID_PREFIX}{next(_id_counter):010x}".encode()


def request_id_of(headers: Headers) -> bytes:
    """The request's first sane ``X-Request-ID``, or a new one."""
    for name, value in headers:
        if name == b"x-request-id" and _REQUEST_ID_SHAPE.match(value):
            return value
    return new_request_id()


def new_ids() -> tuple[bytes, bytes]:
    """A fresh (trace id, span id) pair: 32 and 16 lowercase hex digits, never all zeros."""
    n = next(_counter)
    return _PREFIX + b"%016x" % n, b"%016x" % (n ^ 0x5DEECE66D | 1)


def parse_traceparent(value: bytes) -> tuple[bytes, bytes] | None:
    """(trace id, flags) of a valid ``traceparent``, or None. Version ``ff`` is invalid;
    version ``00`` allows nothing after the flags (section 3.2.2.3, 3.2.4)."""
    m = _TRACEPARENT.match(value.strip())
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == b"ff" or (version == b"00" and rest):
        return None
    if trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, flags


def next_traceparent(headers: Headers, *, trust_incoming: bool = True) -> tuple[bytes, bytes]:
    """(trace id, the ``traceparent`` for the next hop) of a request with ``headers``."""
    trace_id, span_id = new_ids()
    flags = b"00"
    if trust_incoming:
        for name, value in headers:
            if name == b"traceparent":
                parsed = parse_traceparent(value)
                if parsed is not None:
                    trace_id, flags = parsed
                break
    return trace_id, b"00-" + trace_id + b"-" + span_id + b"-" + flags
