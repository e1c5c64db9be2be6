"""The client half of HTTP/1.1 the upstream pool speaks: bytes in, a response out (sans-IO).

`ResponseReader` parses one upstream answer after another on a connection: its head
(`ResponseHead`), then its body as chunks, framed as RFC 9112 6.3 says, in this order:
- the answer to a HEAD, a 1xx, a 204 and a 304 have no body (1xx heads are skipped: not
  ours to relay; a 101 is refused, the pool never asks for an upgrade);
- ``Transfer-Encoding: chunked`` (the only coding accepted; with a Content-Length too the
  answer is refused, RFC 9112 6.1: it is the shape of a smuggling attempt);
- ``Content-Length`` (equal duplicates merged, digits only);
- otherwise the body runs to the connection's close.

It is strict where a lenient reading would let two parsers disagree about where a message
ends: bare CR or LF, NUL and other control bytes, a space before a colon, obs-fold, a field
name that is not a token, chunk sizes that are not plain hex. Any of these raises
`MalformedResponse` (the upstream is to blame: a 502), and the connection is not reused.

`encode_request` writes a request head from a method, a target and header pairs, refusing
(`MalformedRequest`, our own fault) a name or value that would change the head's framing.

h11 did this before. Its general state machine (both roles, every event type, validation by
regular expression of each field) was 30 % of a proxied request's CPU under issue 14's load;
a proxy's upstream side needs one role and a handful of framings, done with ``bytes.find``,
``split`` and ``translate``, which run in C.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

MAX_HEAD_BYTES: Final = 65536
MAX_CHUNK_LINE_BYTES: Final = 4096
MAX_TRAILER_BYTES: Final = 65536


class MalformedResponse(Exception):
    """The upstream sent bytes that are not a valid HTTP/1.1 response (or stopped mid-way)."""


class MalformedRequest(ValueError):
    """A request head we were asked to send would not be valid HTTP/1.1 (our fault)."""


class _Sentinel:
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA: Final = _Sentinel("NEED_DATA")
"""No event without more bytes: call `ResponseReader.receive_data`."""
END: Final = _Sentinel("END")
"""The body (and so the response) is complete."""

_TCHAR = b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
# What a head may hold: visible ASCII, space, tab, obs-text (RFC 9110 5.5), and CR LF,
# which are then checked to come only in pairs.
_HEAD_BYTES = bytes([9, 10, 13, *range(32, 127), *range(128, 256)])
_VALUE_BYTES = bytes([9, *range(32, 127), *range(128, 256)])
_HEX = b"0123456789abcdefABCDEF"
_DIGITS = b"0123456789"
_OWS = b" \t"
# HTTP/1.x SP a status of 100 or more [SP reason] (RFC 9112 4; the reason may be absent)
_STATUS_LINE = re.compile(rb"HTTP/(1\.[0-9]) ([1-9][0-9][0-9])(?: (.*))?")

# body framings
_NONE, _LENGTH, _CHUNKED, _CLOSE = 0, 1, 2, 3
# chunked sub-states
_SIZE, _DATA, _DATA_END, _TRAILER = 0, 1, 2, 3


class ResponseHead:
    """A response's status line and fields; names lowercased, values stripped of OWS."""

    __slots__ = ("headers", "http_version", "reason", "status")

    def __init__(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], http_version: bytes
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.http_version = http_version

    def __repr__(self) -> str:
        return f"<ResponseHead {self.status} {len(self.headers)} fields>"


class ResponseReader:
    """One connection's responses, one after another. Call `start` before each exchange
    (with the request's method and whether it asked to close), then `next_head` until it
    gives a head, then `next_body` until `END`. ``reusable`` is True once an answer ended
    with the connection fit for another request."""

    __slots__ = (
        "_buf",
        "_chunk_left",
        "_chunk_state",
        "_eof",
        "_framing",
        "_head_only",
        "_keep",
        "_left",
        "_phase",
        "reusable",
    )

    def __init__(self) -> None:
        self._buf = b""
        self._eof = False
        self._phase = 0  # 0: idle, 1: reading a head, 2: reading a body, 3: done
        self._head_only = False
        self._keep = True
        self._framing = _NONE
        self._left = 0
        self._chunk_state = _SIZE
        self._chunk_left = 0
        self.reusable = False

    @property
    def buffered(self) -> bytes:
        """What arrived and is not part of any event given out yet."""
        return self._buf

    def start(self, method: str, close: bool = False) -> None:
        """A request went (or is going) out: read its answer next. ``close``: the request
        said ``Connection: close``, so the connection ends after this answer."""
        if self._phase not in (0, 3):
            raise MalformedRequest("a new request before the last answer was read")
        self._phase = 1
        self._head_only = method == "HEAD"
        self._keep = not close
        self.reusable = False

    def receive_data(self, data: bytes) -> None:
        """Bytes from the upstream; ``b""`` says it closed the connection."""
        if data:
            self._buf = self._buf + data if self._buf else data
        else:
            self._eof = True

    def next_head(self) -> ResponseHead | _Sentinel:
        """The final response's head, or `NEED_DATA`. Raises `MalformedResponse`."""
        if self._phase != 1:
            raise MalformedRequest("no request awaits an answer")
        while True:
            buf = self._buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise MalformedResponse(f"response head exceeds {MAX_HEAD_BYTES} bytes")
                if self._eof:
                    raise MalformedResponse(
                        "connection closed before a response head"
                        if buf
                        else "connection closed with no response"
                    )
                return NEED_DATA
            if end > MAX_HEAD_BYTES:
                raise MalformedResponse(f"response head exceeds {MAX_HEAD_BYTES} bytes")
            raw = buf[:end]
            self._buf = buf[end + 4 :]
            head = _parse_head(raw)
            status = head.status
            if status < 200:
                if status == 101:
                    raise MalformedResponse("101 Switching Protocols to a request not upgrading")
                continue  # 100, 102, 103: informational, not ours to relay
            self._frame(head)
            return head

    def _frame(self, head: ResponseHead) -> None:
        """Decide how the body of ``head`` ends (RFC 9112 6.3), and whether the connection
        may carry another request after it."""
        status = head.status
        lengths: list[bytes] = []
        coding: list[bytes] = []
        keep = self._keep and head.http_version == b"1.1"
        for name, value in head.headers:
            if name == b"content-length":
                lengths.append(value)
            elif name == b"transfer-encoding":
                coding.append(value)
            elif name == b"connection" and keep and b"close" in field_tokens(value):
                keep = False
        self._phase = 2
        self._keep = keep
        if self._head_only or status in (204, 304):
            self._framing = _NONE
            return
        if coding:
            if lengths:
                raise MalformedResponse("both Transfer-Encoding and Content-Length")
            if len(coding) != 1 or coding[0].lower() != b"chunked":
                raise MalformedResponse(f"transfer coding not supported: {b', '.join(coding)!r}")
            self._framing = _CHUNKED
            self._chunk_state = _SIZE
            return
        if lengths:
            self._framing = _LENGTH
            self._left = _content_length(lengths)
            return
        self._framing = _CLOSE
        self._keep = False

    def next_body(self) -> bytes | _Sentinel:
        """The next piece of the body (never empty), `NEED_DATA`, or `END` once complete.
        Raises `MalformedResponse`."""
        if self._phase == 3:
            return END
        if self._phase != 2:
            raise MalformedRequest("no response head read yet")
        framing = self._framing
        if framing == _LENGTH:
            left = self._left
            if not left:
                return self._finish()
            buf = self._buf
            if not buf:
                if self._eof:
                    raise MalformedResponse(f"connection closed with {left} body bytes missing")
                return NEED_DATA
            if len(buf) <= left:
                self._buf = b""
                self._left = left - len(buf)
                return buf
            self._buf = buf[left:]
            self._left = 0
            return buf[:left]
        if framing == _CHUNKED:
            return self._next_chunk()
        if framing == _NONE:
            return self._finish()
        buf = self._buf  # _CLOSE: everything up to the connection's end
        if buf:
            self._buf = b""
            return buf
        return self._finish() if self._eof else NEED_DATA

    def _finish(self) -> _Sentinel:
        self._phase = 3
        # Bytes after a complete answer, before any request of ours, are not a response
        # to anything: such a connection is not reused.
        self.reusable = self._keep and not self._buf and not self._eof
        return END

    def _next_chunk(self) -> bytes | _Sentinel:
        while True:
            state = self._chunk_state
            buf = self._buf
            if state == _DATA:
                if not buf:
                    break
                left = self._chunk_left
                if len(buf) <= left:
                    self._buf = b""
                    piece = buf
                else:
                    self._buf = buf[left:]
                    piece = buf[:left]
                left -= len(piece)
                self._chunk_left = left
                if not left:
                    self._chunk_state = _DATA_END
                return piece
            if state == _DATA_END:
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise MalformedResponse("chunk data not followed by CRLF")
                self._buf = buf[2:]
                self._chunk_state = _SIZE
                continue
            end = buf.find(b"\r\n")
            if state == _SIZE:
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE_BYTES:
                        raise MalformedResponse("chunk size line too long")
                    break
                size = _chunk_size(buf[:end])
                self._buf = buf[end + 2 :]
                if size:
                    self._chunk_left = size
                    self._chunk_state = _DATA
                else:
                    self._chunk_state = _TRAILER
                    self._left = 0  # trailer bytes seen
                continue
            # _TRAILER: fields up to an empty line, dropped (not relayed as trailers).
            if end < 0:
                if self._left + len(buf) > MAX_TRAILER_BYTES:
                    raise MalformedResponse("chunked trailer section too large")
                break
            line = buf[:end]
            self._buf = buf[end + 2 :]
            if not line:
                return self._finish()
            self._left += end + 2
            if self._left > MAX_TRAILER_BYTES:
                raise MalformedResponse("chunked trailer section too large")
            _check_field_line(line)
        if self._eof:
            raise MalformedResponse("connection closed in the middle of a chunked body")
        return NEED_DATA


def _parse_head(raw: bytes) -> ResponseHead:
    """A head's bytes (up to, not including, its empty line) as a `ResponseHead`."""
    if raw.translate(None, _HEAD_BYTES):
        raise MalformedResponse("control byte in response head")
    lines = raw.split(b"\r\n")
    if raw.count(b"\r") != len(lines) - 1 or raw.count(b"\n") != len(lines) - 1:
        raise MalformedResponse("bare CR or LF in response head")
    status_line = lines[0]
    matched = _STATUS_LINE.fullmatch(status_line)
    if matched is not None:  # the usual one: HTTP/1.x, a status of 100 or more
        version, code, reason = matched.groups()
        status = int(code)
    else:
        version, status, reason = _odd_status_line(status_line)
    headers: list[tuple[bytes, bytes]] = []
    append = headers.append
    known = KNOWN_NAMES
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        lower = known.get(name)
        if lower is None or not colon:
            lower = lowercase_token(name) if colon else None
            if lower is None:
                # also a line that starts with SP or HT: obs-fold (RFC 9112 5.2)
                raise MalformedResponse(f"bad header line: {line[:80]!r}")
        append((lower, value.strip(_OWS)))
    return ResponseHead(status, reason or b"", headers, version)


def _odd_status_line(status_line: bytes) -> tuple[bytes, int, bytes]:
    """What `_STATUS_LINE` did not match, said precisely: a version we do not speak, a
    status below 100, or no status line at all (`MalformedResponse` in each case)."""
    if (
        len(status_line) < 12
        or status_line[:5] != b"HTTP/"
        or status_line[6:7] != b"."
        or status_line[8:9] != b" "
        or not status_line[5:6].isdigit()
        or not status_line[7:8].isdigit()
        or status_line[9:12].translate(None, _DIGITS)
        or (len(status_line) > 12 and status_line[12:13] != b" ")
    ):
        raise MalformedResponse(f"bad status line: {status_line[:80]!r}")
    version = status_line[5:8]
    if version[:1] != b"1":
        raise MalformedResponse(f"HTTP version not supported: {version!r}")
    status = int(status_line[9:12])
    if status < 100:
        raise MalformedResponse(f"bad status code {status}")
    raise AssertionError(f"_STATUS_LINE refused a good status line {status_line[:80]!r}")


def _check_field_line(line: bytes) -> None:
    name, colon, value = line.partition(b":")
    if not colon or not name or name.translate(None, _TCHAR) or value.translate(None, _VALUE_BYTES):
        raise MalformedResponse(f"bad trailer line: {line[:80]!r}")


def _content_length(values: list[bytes]) -> int:
    """One length from the Content-Length fields (RFC 9110 8.6: equal values in a list or
    repeated fields are one; anything else is refused)."""
    seen: bytes | None = None
    for field in values:
        for item in field.split(b","):
            item = item.strip(_OWS)
            if not item or item.translate(None, _DIGITS) or len(item) > 18:
                raise MalformedResponse(f"bad Content-Length: {field[:40]!r}")
            if seen is not None and item.lstrip(b"0") != seen.lstrip(b"0"):
                raise MalformedResponse("conflicting Content-Length values")
            seen = item
    assert seen is not None
    return int(seen)


def _chunk_size(line: bytes) -> int:
    """A chunk-size line's size: hex digits, optionally chunk extensions (ignored)."""
    size, _, extension = line.partition(b";")
    size = size.rstrip(_OWS)  # BWS before a chunk extension (RFC 9112 7.1.1)
    if not size or size.translate(None, _HEX) or len(size) > 15:
        raise MalformedResponse(f"bad chunk size line: {line[:40]!r}")
    if extension.translate(None, _VALUE_BYTES):
        raise MalformedResponse("control byte in a chunk extension")
    return int(size, 16)


# Field names seen and found to be tokens, each with its lowercase: the names of one head are
# those of the last, and one lookup stands for the check (a translate) and the lower(), two new
# objects. Bounded: names made up by a peer fill it to MAX_KNOWN_NAMES, then are checked each time.
KNOWN_NAMES: dict[bytes, bytes] = {}
MAX_KNOWN_NAMES: Final = 4096


def lowercase_token(name: bytes) -> bytes | None:
    """``name`` lowercased if it is a token (a field name), else None; remembered."""
    lower = KNOWN_NAMES.get(name)
    if lower is None:
        if not name or name.translate(None, _TCHAR):
            return None
        lower = name.lower()
        if len(KNOWN_NAMES) < MAX_KNOWN_NAMES:
            KNOWN_NAMES[name] = lower
    return lower


def field_tokens(value: bytes) -> list[bytes]:
    """The items of a comma-separated field value (``Connection``'s tokens), lowercased and
    stripped of OWS, empty ones dropped (RFC 9110 5.6.1)."""
    return [t for t in (item.strip(_OWS).lower() for item in value.split(b",")) if t]


def connection_tokens(headers: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    """Every token of a message's ``Connection`` fields (names lowercased, as parsed)."""
    tokens: list[bytes] = []
    for name, value in headers:
        if name == b"connection":
            tokens.extend(field_tokens(value))
    return tokens


# a byte no field value may hold: a control byte other than HTAB (CR and LF among them)
_NOT_IN_VALUES = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def field_problem(headers: list[tuple[bytes, bytes]]) -> str | None:
    """What makes a head to be sent invalid: a name that is not a token, or a value holding
    CR, LF, NUL or another control byte, which could split the head; None when nothing.
    (The values are searched at once: one search costs less than a check per value.)"""
    known = KNOWN_NAMES
    for name, _ in headers:
        if name not in known and lowercase_token(name) is None:
            return f"bad header name {name[:40]!r}"
    if _NOT_IN_VALUES.search(b"".join([value for _, value in headers])) is not None:
        for name, value in headers:
            if _NOT_IN_VALUES.search(value) is not None:
                return f"bad value for header {name[:40]!r}"
    return None


def encode_request(method: str, target: str, headers: list[tuple[bytes, bytes]]) -> bytes:
    """A request head's bytes. Raises `MalformedRequest` for a name or value that would
    split the head (`field_problem`)."""
    problem = field_problem(headers)
    if problem is not None:
        raise MalformedRequest(problem)
    line = f"{method} {target} HTTP/1.1\r\n".encode("latin-1")
    if line.translate(None, _HEAD_BYTES) or line.count(b" ") != 2 or line.count(b"\n") != 1:
        raise MalformedRequest(f"bad request line {line[:80]!r}")
    if not headers:
        return line + b"\r\n"
    return line + b"\r\n".join([name + b": " + value for name, value in headers]) + b"\r\n\r\n"


def encode_chunk(data: bytes) -> bytes:
    """One chunk of a chunked body (never an empty one: that would end the body)."""
    return b"%x\r\n%b\r\n" % (len(data), data) if data else b""


LAST_CHUNK: Final = b"0\r\n\r\n"
