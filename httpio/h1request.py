"""The server half's reading of HTTP/1.1: one request after another off a connection (sans-IO).

`RequestReader` takes the client's bytes (`receive_data`) and gives a request's head
(`next_head`, a `RequestHead`), then its body in pieces (`next_body`, until `END`), then,
after `next_request`, the next request from what is left. It decides as h11's server side
decided, and `tests/httpio/test_h1request.py` feeds both the same bytes to keep it so:

- the head ends at the first empty line; lines end in CRLF or a bare LF (RFC 9112 2.2 lets a
  recipient take LF alone), and an obs-fold is replaced by one SP (RFC 9112 5.2);
- the request line is ``method SP target SP HTTP/d.d``: the method a token, the target
  visible ASCII; a first byte below ``!`` is refused at once (a TLS hello sent to the
  plain-text port is ``0x16``, and would otherwise hold the connection until the timeout);
- field names are tokens, lowercased; values lose their outer OWS;
- ``Content-Length``: digits; equal values, repeated or in a list, are one (kept once, where
  it first came); any other disagreement is a 400. ``Transfer-Encoding``: one field saying
  ``chunked`` (any case), anything else a 501, as nginx answers a coding it does not know;
- HTTP/1.1 needs exactly one ``Host``, and no version more than one (RFC 9112 3.2);
- the body is chunked, or as long as Content-Length says, or empty; a chunked body's
  trailer fields are checked and dropped.

It is stricter than h11 in one way: a head may hold no control byte but HTAB, CR and LF (h11
let ``\\x01`` - ``\\x08``, ``\\x0e`` - ``\\x1f`` and DEL through in field values, which our
upstream side would then refuse to write: the client now hears 400 instead of a 502).

What the reader tells the server besides: ``keep_alive`` (HTTP/1.1 or later and no
``Connection: close``: h11's ``MUST_CLOSE`` otherwise), ``content_length`` (the body's, when
a Content-Length frames it), ``upgrade`` (an ``Upgrade`` field: after an answer other than 101
the connection is not reused, as h11 paused it), and ``expects_continue`` (``Expect:
100-continue`` in HTTP/1.1, until a byte of the body is read or `continue_sent` says the 100
went out).

Errors are the client's (`httpio.errors`): `ClientError` (400), `RequestHeadTooLarge` (431:
an incomplete head past ``max_head_bytes``; a complete one is measured by
`httpio.protocol.refuse_request`), `RequestBodyTooLarge` (413: a Content-Length of more than
18 digits, past any body this process takes), `Unimplemented` (501).

h11 did this before; its general state machine (both roles, events as objects, a regular
expression per field) was the largest single layer of a proxied request's CPU under issue
14's keep-alive load once both sides wrote their own heads. Here a head is one regular
expression search for its end, one ``translate`` over it, one match of its request line, and a
dict lookup and a ``partition`` per field.
"""

from __future__ import annotations

import re
from typing import Final

from httpio.errors import (
    ClientError,
    GatewayError,
    RequestBodyTooLarge,
    RequestHeadTooLarge,
    Unimplemented,
)
from httpio.h1client import (
    _DIGITS,
    _HEAD_BYTES,  # visible ASCII, SP, HTAB, obs-text, and CR LF (CR checked to come before LF)
    _HEX,
    _OWS,
    _TCHAR,
    _VALUE_BYTES,
    END,
    KNOWN_NAMES,
    NEED_DATA,
    field_tokens,
    lowercase_token,
)

__all__ = ["CLOSED", "END", "NEED_DATA", "RequestHead", "RequestReader"]


class _Closed:
    __slots__ = ()

    def __repr__(self) -> str:
        return "CLOSED"


CLOSED: Final = _Closed()
"""The client closed the connection before a byte of another request."""

CONTINUE: Final = b"HTTP/1.1 100 Continue\r\n\r\n"
MAX_CHUNK_LINE_BYTES: Final = 4096

_BLANK_LINE = re.compile(rb"\n\r?\n")
_FOLD = re.compile(rb"\n[ \t]")
# method SP target SP HTTP-version (RFC 9112 3): a token, visible ASCII, HTTP/d.d
_REQUEST_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) ([\x21-\x7e]+) HTTP/([0-9]\.[0-9])")

# phases
_IDLE, _BODY, _DONE = 0, 1, 2
# body framings
_LENGTH, _CHUNKED = 0, 1
# chunked sub-states
_SIZE, _DATA, _DATA_END, _TRAILER = 0, 1, 2, 3


class RequestHead:
    """A request's line and fields: names lowercased, values stripped of OWS, one
    ``content-length`` at most (digits), ``transfer-encoding`` only as ``chunked``."""

    __slots__ = ("headers", "http_version", "method", "target")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        http_version: bytes,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.http_version = http_version

    def __repr__(self) -> str:
        return f"<RequestHead {self.method!r} {self.target[:80]!r} {len(self.headers)} fields>"


def _malformed(what: str) -> ClientError:
    return ClientError(f"malformed request: {what}")


class RequestReader:
    """The requests of one connection, one after another. ``buffered``: what arrived and no
    event has given out yet (after a request, the start of the next one)."""

    __slots__ = (
        "_chunk_left",
        "_chunk_state",
        "_eof",
        "_framing",
        "_left",
        "_max_head_bytes",
        "_phase",
        "_searched",
        "buffered",
        "content_length",
        "expects_continue",
        "keep_alive",
        "upgrade",
    )

    def __init__(self, max_head_bytes: int) -> None:
        self._max_head_bytes = max_head_bytes
        self.buffered = b""
        self._eof = False
        self._searched = 0  # where the search for the head's end starts again
        self._phase = _IDLE
        self._framing = _LENGTH
        self._left = 0
        self._chunk_state = _SIZE
        self._chunk_left = 0
        self.keep_alive = True
        self.upgrade = False
        self.expects_continue = False
        self.content_length: int | None = None

    def __repr__(self) -> str:
        phase = ("idle", "body", "done")[self._phase]
        return f"<RequestReader {phase} buffered={len(self.buffered)} eof={self._eof}>"

    @property
    def closed(self) -> bool:
        """Whether the client has closed its side."""
        return self._eof

    @property
    def body_done(self) -> bool:
        """Whether the current request has been read to its end."""
        return self._phase == _DONE

    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` says it closed its side."""
        if data:
            self.buffered = self.buffered + data if self.buffered else data
        else:
            self._eof = True

    def next_request(self) -> None:
        """The current request is over: read the next one from what is left."""
        self._phase = _IDLE
        self._searched = 0
        self.keep_alive = True
        self.upgrade = False
        self.expects_continue = False

    def continue_sent(self) -> None:
        """The ``100 Continue`` went out: the client is no longer waiting for it."""
        self.expects_continue = False

    # -- the head ---------------------------------------------------------------------------
    def next_head(self) -> RequestHead | object:
        """The next request's head, `NEED_DATA`, or `CLOSED`. Raises `ClientError` (and its
        subclasses) or `Unimplemented`."""
        if self._phase != _IDLE:
            raise RuntimeError("the last request is not over (next_request)")
        buf = self.buffered
        found = _BLANK_LINE.search(buf, self._searched)
        if found is None:
            if not buf:
                return CLOSED if self._eof else NEED_DATA
            if buf[0] < 0x21:
                raise _malformed("illegal request line")
            if len(buf) > self._max_head_bytes:
                raise RequestHeadTooLarge(f"request head exceeds {self._max_head_bytes} bytes")
            if self._eof:
                raise _malformed("connection closed in the middle of a request head")
            self._searched = max(0, len(buf) - 2)
            return NEED_DATA
        if buf[0] < 0x21:
            raise _malformed("illegal request line")
        raw = buf[: found.start()]
        self.buffered = buf[found.end() :]
        head = self._parse(raw)
        self._phase = _BODY
        return head

    def _parse(self, raw: bytes) -> RequestHead:
        if raw.translate(None, _HEAD_BYTES):
            raise _malformed("control byte in the request head")
        if raw.endswith(b"\r"):  # the last line's CR (its LF began the blank line)
            raw = raw[:-1]
        crlf = raw.count(b"\r\n")
        if crlf == raw.count(b"\n") == raw.count(b"\r"):  # no bare CR, no bare LF
            lines = raw.split(b"\r\n")
            if _FOLD.search(raw) is not None:
                lines = _unfold(lines)
        else:  # bare LF line ends, some or all
            lines = [line[:-1] if line.endswith(b"\r") else line for line in raw.split(b"\n")]
            if any(b"\r" in line for line in lines):
                raise _malformed("bare CR in the request head")
            lines = _unfold(lines)
        matched = _REQUEST_LINE.fullmatch(lines[0])
        if matched is None:
            raise _malformed(f"illegal request line {lines[0][:80]!r}")
        method, target, http_version = matched.groups()
        headers: list[tuple[bytes, bytes]] = []
        append = headers.append
        hosts = 0
        length: bytes | None = None
        chunked = False
        close = upgrade = expects = False
        # Every line's syntax is checked before what the fields say, as h11 did: the first
        # such refusal is raised after the loop.
        problem: GatewayError | None = None
        known = KNOWN_NAMES
        for line in lines[1:]:
            raw_name, colon, value = line.partition(b":")
            name = known.get(raw_name)
            if name is None or not colon:
                name = lowercase_token(raw_name) if colon else None
                if name is None:
                    raise _malformed(f"illegal header line {line[:80]!r}")
            value = value.strip(_OWS)
            if len(name) < 4 or name[0] not in b"cthue":  # none of the fields below
                append((name, value))
            elif name == b"host":
                hosts += 1
                append((name, value))
            elif name == b"content-length":
                items = {item.strip(_OWS) for item in value.split(b",")}
                value = items.pop()
                if items:
                    problem = problem or _malformed("conflicting Content-Length values")
                elif not value or value.translate(None, _DIGITS):
                    problem = problem or _malformed(f"bad Content-Length {value[:40]!r}")
                elif length is not None and value != length:
                    problem = problem or _malformed("conflicting Content-Length values")
                elif length is None:
                    length = value
                    append((name, value))
            elif name == b"transfer-encoding":
                if chunked:
                    problem = problem or Unimplemented("two Transfer-Encoding fields")
                elif value.lower() != b"chunked":
                    coding = f"transfer coding not implemented: {value[:40]!r}"
                    problem = problem or Unimplemented(coding)
                chunked = True
                append((name, b"chunked"))
            else:
                if name == b"connection":
                    close = close or b"close" in field_tokens(value)
                elif name == b"upgrade":
                    upgrade = upgrade or bool(field_tokens(value))
                elif name == b"expect":
                    expects = expects or b"100-continue" in field_tokens(value)
                append((name, value))
        if problem is not None:
            raise problem
        if hosts > 1:
            raise _malformed("more than one Host field")
        if not hosts and http_version == b"1.1":
            raise _malformed("no Host field in an HTTP/1.1 request")
        modern = http_version >= b"1.1"
        self.keep_alive = modern and not close
        self.upgrade = upgrade
        self.expects_continue = modern and expects
        self.content_length = None
        if chunked:
            self._framing = _CHUNKED
            self._chunk_state = _SIZE
        else:
            self._framing = _LENGTH
            if length is None:
                self._left = 0
            elif len(length) > 18:
                raise RequestBodyTooLarge(f"a Content-Length of {len(length)} digits")
            else:
                self._left = self.content_length = int(length)
        return RequestHead(method, target, headers, http_version)

    # -- the body ---------------------------------------------------------------------------
    def next_body(self) -> bytes | object:
        """The next piece of the body (never empty), `NEED_DATA`, or `END` once it is all
        read. Raises `ClientError`."""
        phase = self._phase
        if phase == _DONE:
            return END
        if phase != _BODY:
            raise RuntimeError("no request head read yet")
        if self._framing == _CHUNKED:
            piece = self._next_chunk()
        else:
            left = self._left
            if not left:
                return self._finish()
            buf = self.buffered
            if not buf:
                if self._eof:
                    raise _malformed(f"connection closed with {left} body bytes missing")
                return NEED_DATA
            if len(buf) <= left:
                self.buffered = b""
                self._left = left - len(buf)
                piece = buf
            else:
                self.buffered = buf[left:]
                self._left = 0
                piece = buf[:left]
        if piece is not NEED_DATA:
            self.expects_continue = False
        return piece

    def _finish(self) -> object:
        self._phase = _DONE
        self.expects_continue = False
        return END

    def _next_chunk(self) -> bytes | object:
        # The twin of `httpio.h1client.ResponseReader._next_chunk`, kept apart on purpose: this
        # side reads as h11 did (up to 20 hex digits, no BWS before ``;``, trailer lines as
        # fields), that one is stricter, and each blames its own peer.
        while True:
            state = self._chunk_state
            buf = self.buffered
            if state == _DATA:
                if not buf:
                    break
                left = self._chunk_left
                if len(buf) <= left:
                    self.buffered = b""
                    piece = buf
                else:
                    self.buffered = buf[left:]
                    piece = buf[:left]
                left -= len(piece)
                self._chunk_left = left
                if not left:
                    self._chunk_state = _DATA_END
                return piece
            if state == _DATA_END:
                if len(buf) < 2:
                    if buf and buf != b"\r":
                        raise _malformed("chunk data not followed by CRLF")
                    break
                if buf[:2] != b"\r\n":
                    raise _malformed("chunk data not followed by CRLF")
                self.buffered = buf[2:]
                self._chunk_state = _SIZE
                continue
            if state == _SIZE:
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_CHUNK_LINE_BYTES:
                        raise _malformed("chunk size line too long")
                    break
                size = _chunk_size(buf[:end])
                self.buffered = buf[end + 2 :]
                if size:
                    self._chunk_left = size
                    self._chunk_state = _DATA
                else:
                    self._chunk_state = _TRAILER
                continue
            # _TRAILER: fields up to an empty line, checked and dropped.
            if buf[:1] == b"\n" or buf[:2] == b"\r\n":
                self.buffered = buf[1 if buf[:1] == b"\n" else 2 :]
                return self._finish()
            found = _BLANK_LINE.search(buf)
            if found is None:
                if len(buf) > self._max_head_bytes:
                    raise _malformed("chunked trailer section too large")
                break
            trailer = buf[: found.start()]
            self.buffered = buf[found.end() :]
            _check_trailer(trailer)
            return self._finish()
        if self._eof:
            raise _malformed("connection closed in the middle of a chunked body")
        return NEED_DATA


def _unfold(lines: list[bytes]) -> list[bytes]:
    """Each obs-fold (a line that starts with SP or HTAB) joined to the line before with one
    SP, as h11 does; one at the start of the fields is refused."""
    out: list[bytes] = []
    for line in lines:
        if line[:1] in (b" ", b"\t"):
            if len(out) < 2:  # out[0] is the request line
                raise _malformed("continuation line at the start of the fields")
            out[-1] += b" " + line.lstrip(_OWS)
        else:
            out.append(line)
    return out


def _chunk_size(line: bytes) -> int:
    """A chunk-size line's size: 1 - 20 hex digits, then optionally BWS and extensions
    (ignored)."""
    size, semicolon, extension = line.partition(b";")
    if not semicolon:
        size = size.rstrip(_OWS)
    if not size or size.translate(None, _HEX) or len(size) > 20:
        raise _malformed(f"bad chunk size line {line[:40]!r}")
    if extension.translate(None, _VALUE_BYTES):
        raise _malformed("control byte in a chunk extension")
    return int(size, 16)


def _check_trailer(raw: bytes) -> None:
    if raw.endswith(b"\r"):
        raw = raw[:-1]
    if raw.translate(None, _HEAD_BYTES):
        raise _malformed("control byte in the chunked trailer")
    lines = [line[:-1] if line.endswith(b"\r") else line for line in raw.split(b"\n")]
    for line in lines:
        if b"\r" in line:
            raise _malformed("bare CR in the chunked trailer")
        if line[:1] in (b" ", b"\t"):
            continue  # an obs-fold of the field before
        name, colon, _ = line.partition(b":")
        if not colon or not name or name.translate(None, _TCHAR):
            raise _malformed(f"illegal trailer line {line[:80]!r}")
