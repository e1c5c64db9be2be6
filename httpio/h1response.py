"""The server half's writing of HTTP/1.1: a response head and its body's framing (sans-IO).

`encode_response` writes the head of an answer to one request and returns the
`BodyFraming` its body goes out in, with whether the connection stays open after it. It
decides as h11 decided (RFC 9112 6.3, 9.3), so a client sees the same bytes:

- a 204 or 304, and any answer to a HEAD, has no body; a HEAD's head is framed as the GET's
  would be (``Transfer-Encoding: chunked`` where the GET would be chunked);
- ``Transfer-Encoding: chunked`` (the only coding we send) wins over a Content-Length, which is
  then dropped; ``Content-Length`` (equal duplicates allowed) frames the body by its length;
- neither: chunked to an HTTP/1.1 client; to an HTTP/1.0 one the body runs to the close;
- the connection closes after the answer when the client asked (``Connection: close``, or
  HTTP/1.0 without a keep-alive we promise), when the answer says so, or when its end is the
  close: then ``Connection: close`` is written (its other tokens kept, ``keep-alive`` dropped).
  An HTTP/1.0 client that asked for keep-alive, answered with a known length and no
  ``Connection`` of the answer's own, gets ``Connection: keep-alive`` instead (``persist``).

A name that is not a token, a value that could split the head, a Content-Length that is not
digits or disagrees with itself, a coding other than chunked, a status outside 200 - 999: our
fault (`MalformedAnswer`), nothing is written and the connection is dropped, as h11 did.
The body must then match its framing (`BodyFraming.data`, `BodyFraming.end`): more or fewer
bytes than a Content-Length promised is `MalformedAnswer` too.

h11 did this before, one `send` per event through its general state machine: with its
compiled build a third of a keep-alive exchange's h11 time (the reading side stays with h11).
"""

from __future__ import annotations

from typing import Final

from httpio.h1client import (
    LAST_CHUNK,
    encode_chunk,
    field_problem,
    field_tokens,
)

_DIGITS = b"0123456789"
_OWS = b" \t"

# body framings
NO_BODY: Final = 0
LENGTH: Final = 1
CHUNKED: Final = 2
UNTIL_CLOSE: Final = 3

_CONNECTION, _CONTENT_LENGTH, _TRANSFER_ENCODING = (
    b"connection",
    b"content-length",
    b"transfer-encoding",
)
_FRAMING_NAME_LENGTHS = frozenset({len(_CONNECTION), len(_CONTENT_LENGTH), len(_TRANSFER_ENCODING)})


class MalformedAnswer(ValueError):
    """An answer we were asked to send is not valid HTTP/1.1 (our fault, or the upstream's
    whose head we relay)."""


class BodyFraming:
    """How one answer's body goes out after its head: ``data`` frames each chunk, ``end``
    closes the message; ``keep_alive``: the connection may carry another request after."""

    __slots__ = ("keep_alive", "kind", "remaining")

    def __init__(self, kind: int, remaining: int, keep_alive: bool) -> None:
        self.kind = kind
        self.remaining = remaining
        self.keep_alive = keep_alive

    def __repr__(self) -> str:
        kind = ("none", "length", "chunked", "until-close")[self.kind]
        return f"<BodyFraming {kind} remaining={self.remaining} keep_alive={self.keep_alive}>"

    def data(self, chunk: bytes) -> bytes:
        kind = self.kind
        if kind == LENGTH:
            if len(chunk) > self.remaining:
                raise MalformedAnswer("too much data for the declared Content-Length")
            self.remaining -= len(chunk)
            return chunk
        if kind == CHUNKED:
            return encode_chunk(chunk)
        if kind == UNTIL_CLOSE:
            return chunk
        if chunk:
            raise MalformedAnswer("a body for an answer that has none")
        return b""

    def end(self) -> bytes:
        if self.kind == CHUNKED:
            return LAST_CHUNK
        if self.kind == LENGTH and self.remaining:
            raise MalformedAnswer("too little data for the declared Content-Length")
        return b""


def _length_of(value: bytes, seen: int | None) -> int:
    if value.isdigit() and len(value) <= 18 and seen is None:  # the usual one: digits alone
        return int(value)
    length = seen
    for item in value.split(b","):
        item = item.strip(_OWS)
        if not item or item.translate(None, _DIGITS) or len(item) > 18:
            raise MalformedAnswer(f"bad Content-Length {value[:40]!r}")
        if length is not None and int(item) != length:
            raise MalformedAnswer("conflicting Content-Length values")
        length = int(item)
    assert length is not None
    return length


def encode_response(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    *,
    head: bool,
    http11: bool,
    keep_alive: bool,
    persist: bool = False,
) -> tuple[bytes, BodyFraming]:
    """The head of an answer to a request (``head``: a HEAD; ``http11``: the client speaks
    HTTP/1.1 or later; ``keep_alive``: the request lets the connection persist,
    `httpio.h1request.RequestReader.keep_alive`; ``persist``: an HTTP/1.0 client asked for keep-alive and may be
    promised it), and how its body is framed. Raises `MalformedAnswer`."""
    if not 200 <= status <= 999:
        raise MalformedAnswer(f"status {status} cannot be a final answer")
    problem = field_problem(headers)
    if problem is not None:
        raise MalformedAnswer(problem)
    length: int | None = None
    lengths = 0  # Content-Length items seen
    chunked = False
    tokens: list[bytes] | None = None  # the answer's own Connection tokens
    for name, value in headers:
        if len(name) in _FRAMING_NAME_LENGTHS:
            lower = name.lower()
            if lower == _CONTENT_LENGTH:
                length = _length_of(value, length)
                lengths += 1 + value.count(b",")
            elif lower == _TRANSFER_ENCODING:
                if chunked or value.strip(_OWS).lower() != b"chunked":
                    raise MalformedAnswer(f"cannot send Transfer-Encoding {value[:40]!r}")
                chunked = True
            elif lower == _CONNECTION:
                if tokens is None:
                    tokens = []
                tokens.extend(field_tokens(value))
    out = headers
    need_close = False
    if status == 204 or status == 304:
        kind = NO_BODY
    elif chunked or length is None:  # a body of unknown length
        if length is not None:
            out = [h for h in out if h[0].lower() != _CONTENT_LENGTH]
        if http11:
            kind = CHUNKED
            if not chunked:
                out = [*out, (b"Transfer-Encoding", b"chunked")]
        else:  # an HTTP/1.0 client knows no chunks: the close ends the body
            kind = UNTIL_CLOSE
            if chunked:
                out = [h for h in out if h[0].lower() != _TRANSFER_ENCODING]
            need_close = not head
    else:
        kind = LENGTH
    if head:
        kind = NO_BODY
    if lengths > 1 and length is not None and kind != CHUNKED:  # equal duplicates: one line
        at = next(i for i, h in enumerate(out) if h[0].lower() == _CONTENT_LENGTH)
        out = [h for h in out if h[0].lower() != _CONTENT_LENGTH]
        out.insert(at, (b"Content-Length", b"%d" % length))
    close = need_close or not keep_alive
    if close and persist and tokens is None and not need_close:
        out = [*out, (b"Connection", b"keep-alive")]
        close = False
    elif close:
        wanted = set(tokens or ())
        wanted.discard(b"keep-alive")
        wanted.add(b"close")
        if tokens is not None:
            out = [h for h in out if h[0].lower() != _CONNECTION]
        out = [*out, *[(b"Connection", t) for t in sorted(wanted)]]
    elif tokens is not None and b"close" in tokens:
        close = True  # the answer's own: written as it came
    line = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    if not out:
        return line + b"\r\n", BodyFraming(kind, length or 0, not close)
    fields = b"\r\n".join([name + b": " + value for name, value in out])
    return line + fields + b"\r\n\r\n", BodyFraming(kind, length or 0, not close)
