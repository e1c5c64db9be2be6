"""WebSocket frames (RFC 6455 5) as the relay reads and writes them: bytes in, events out, no I/O.

The relay used wsproto's `Connection` per leg: ~1.6 KiB each (a deque, the frame protocol, its
buffer and decoder), two per idle pair, kept for as long as the socket is open. A relay needs
less than an endpoint: no handshake, no extension, no message assembly (a message is passed on
fragment by fragment, so a 1 MiB one is never held whole). `FrameReader` is that much: a few
slots, its buffer empty and its decoder None while the leg sits at a message boundary, which an
idle leg does.

It is strict, because a client is hostile until shown otherwise; a frame that breaks a rule
raises `FrameError` with the close code to fail the connection with (RFC 6455 7.1.7):

- masking (5.1, 5.3): a client's frames must be masked, a server's must not be (1002);
- reserved bits set (5.2: no extension is negotiated, `httpio.websocket`), an opcode not in
  5.2's table (1002);
- a length not in its minimal form, or a 64-bit length with its high bit set (5.2) (1002);
- control frames (5.5): 125 bytes of payload at most, never fragmented (1002);
- fragmentation (5.4): a continuation outside a message, a new message inside one (1002);
- a close payload of one byte, or a code 7.4 does not allow on the wire (1002), a close reason
  or a text message that is not UTF-8 (8.1: 1007; checked as the bytes come, so an invalid
  sequence is caught in the fragment that has it).
"""

from __future__ import annotations

import codecs
import os
import struct
from dataclasses import dataclass
from typing import Final

CONTINUATION: Final = 0x0
TEXT: Final = 0x1
BINARY: Final = 0x2
CLOSE: Final = 0x8
PING: Final = 0x9
PONG: Final = 0xA
_OPCODES = frozenset({CONTINUATION, TEXT, BINARY, CLOSE, PING, PONG})

PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MAX_CONTROL_PAYLOAD = 125
# 7.4.1's codes an endpoint may send (1004 reserved; 1005, 1006, 1015 never on the wire), the
# IANA registry's 1012 - 1014, and 3000 - 4999 for libraries and applications.
_SENDABLE = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


class FrameError(Exception):
    """The peer broke RFC 6455 (its fault): fail the connection with ``code``."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of a text or binary message: ``first`` of its message, ``last`` ends it."""

    payload: bytes
    text: bool
    first: bool
    last: bool


@dataclass(frozen=True, slots=True)
class Ping:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Pong:
    payload: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """A close frame; ``code`` None when it carried none (reported as 1005, 7.1.5)."""

    code: int | None
    reason: str


Event = Data | Ping | Pong | Close


def sendable_close_code(code: int) -> bool:
    return code in _SENDABLE or 3000 <= code <= 4999


class FrameReader:
    """The frames of one leg. ``masked``: the peer is a client (its frames must be masked).
    ``receive(data)`` then ``next_event()`` until None (more bytes needed)."""

    __slots__ = (
        "_buf",
        "_control",
        "_decoder",
        "_fin",
        "_key",
        "_left",
        "_masked",
        "_message",
        "_offset",
        "_opcode",
        "_sent_first",
    )

    def __init__(self, *, masked: bool) -> None:
        self._masked = masked
        self._buf = b""
        self._opcode = -1  # of the frame whose payload is being read; -1: at a frame boundary
        self._fin = False
        self._key = b""
        self._left = 0  # payload bytes of the current frame still to come
        self._offset = 0  # payload bytes of the current frame already read (for the mask)
        self._control = b""  # a control frame's payload so far (<= 125 bytes)
        self._message = -1  # TEXT or BINARY while a fragmented message is under way
        self._sent_first = False  # a Data of the current message was already given out
        self._decoder: codecs.IncrementalDecoder | None = None

    def __repr__(self) -> str:
        where = "boundary" if self._opcode < 0 else f"opcode={self._opcode} left={self._left}"
        return f"<FrameReader masked={self._masked} {where} buffered={len(self._buf)}>"

    @property
    def idle(self) -> bool:
        """At a message boundary with nothing buffered: nothing would be lost by a new reader."""
        return self._opcode < 0 and self._message < 0 and not self._buf

    def receive(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data

    def next_event(self) -> Event | None:
        while True:
            if self._opcode < 0 and not self._read_header():
                return None
            event = self._read_payload()
            if event is not None:
                return event
            if self._opcode >= 0:
                return None  # the payload is not all here yet

    # -- the frame header (5.2) ----------------------------------------------------------------
    def _read_header(self) -> bool:
        buf = self._buf
        if len(buf) < 2:
            return False
        b0, b1 = buf[0], buf[1]
        if b0 & 0x70:
            raise FrameError(PROTOCOL_ERROR, "reserved bits set, no extension was negotiated")
        opcode = b0 & 0x0F
        if opcode not in _OPCODES:
            raise FrameError(PROTOCOL_ERROR, f"opcode {opcode:#x} is not defined")
        fin = bool(b0 & 0x80)
        masked = bool(b1 & 0x80)
        if masked != self._masked:
            must = "must be masked" if self._masked else "must not be masked"
            raise FrameError(PROTOCOL_ERROR, f"frames from this peer {must}")
        length = b1 & 0x7F
        at = 2
        if length == 126:
            if len(buf) < 4:
                return False
            (length,) = struct.unpack_from(">H", buf, 2)
            at = 4
            if length < 126:
                raise FrameError(PROTOCOL_ERROR, "a 16-bit length for a payload under 126 bytes")
        elif length == 127:
            if len(buf) < 10:
                return False
            (length,) = struct.unpack_from(">Q", buf, 2)
            at = 10
            if length >> 63:
                raise FrameError(PROTOCOL_ERROR, "a 64-bit length with its high bit set")
            if length < 65536:
                raise FrameError(PROTOCOL_ERROR, "a 64-bit length for a payload under 64 KiB")
        if opcode >= CLOSE:
            if not fin:
                raise FrameError(PROTOCOL_ERROR, "a fragmented control frame")
            if length > MAX_CONTROL_PAYLOAD:
                raise FrameError(PROTOCOL_ERROR, "a control frame over 125 bytes")
        elif opcode == CONTINUATION:
            if self._message < 0:
                raise FrameError(PROTOCOL_ERROR, "a continuation frame outside a message")
        elif self._message >= 0:
            raise FrameError(PROTOCOL_ERROR, "a new message inside a fragmented one")
        key = b""
        if masked:
            if len(buf) < at + 4:
                return False
            key = buf[at : at + 4]
            at += 4
        self._buf = buf[at:]
        self._opcode = opcode
        self._fin = fin
        self._key = key
        self._left = length
        self._offset = 0
        if opcode in (TEXT, BINARY):
            self._message = opcode
            self._sent_first = False
        return True

    # -- the payload ---------------------------------------------------------------------------
    def _take_payload(self) -> bytes:
        buf = self._buf
        n = min(len(buf), self._left)
        chunk, self._buf = buf[:n], buf[n:]
        if self._key:
            chunk = unmask(chunk, self._key, self._offset)
        self._left -= n
        self._offset += n
        return chunk

    def _read_payload(self) -> Event | None:
        opcode = self._opcode
        if opcode >= CLOSE:
            self._control += self._take_payload()
            if self._left:
                return None
            payload, self._control = self._control, b""
            self._opcode = -1
            if opcode == PING:
                return Ping(payload)
            if opcode == PONG:
                return Pong(payload)
            return parse_close(payload)
        chunk = self._take_payload()
        frame_done = not self._left
        if not chunk and not frame_done:
            return None
        last = frame_done and self._fin
        if frame_done:
            self._opcode = -1
        text = self._message == TEXT
        if text:
            self._check_utf8(chunk, last)
        first = not self._sent_first
        self._sent_first = True
        if last:
            self._message = -1
        return Data(chunk, text, first, last)

    def _check_utf8(self, chunk: bytes, last: bool) -> None:
        decoder = self._decoder
        try:
            if decoder is None and last and not self._sent_first:
                chunk.decode()  # a whole message in one piece: no decoder to keep
                return
            if decoder is None:
                decoder = self._decoder = codecs.getincrementaldecoder("utf-8")()
            decoder.decode(chunk, final=last)
        except UnicodeDecodeError:
            raise FrameError(INVALID_DATA, "a text message that is not UTF-8") from None
        if last:
            self._decoder = None


def parse_close(payload: bytes) -> Close:
    """A close frame's payload (5.5.1): nothing, or a code and a UTF-8 reason."""
    if not payload:
        return Close(None, "")
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "a close payload of one byte")
    (code,) = struct.unpack_from(">H", payload)
    if not sendable_close_code(code):
        raise FrameError(PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "a close reason that is not UTF-8") from None
    return Close(code, reason)


def unmask(data: bytes, key: bytes, offset: int = 0) -> bytes:
    """``data`` XOR the 4-byte ``key``, ``offset`` bytes into the payload (5.3)."""
    n = len(data)
    if not n:
        return data
    turn = offset % 4
    if turn:
        key = key[turn:] + key[:turn]
    pad = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(pad, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bool = False) -> bytes:
    """One frame; ``mask``: as a client sends it, with a fresh random key (5.3)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    bit = 0x80 if mask else 0
    if n < 126:
        head = bytes((b0, bit | n))
    elif n < 65536:
        head = struct.pack(">BBH", b0, bit | 126, n)
    else:
        head = struct.pack(">BBQ", b0, bit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + unmask(payload, key)


def close_payload(code: int | None, reason: str = "") -> bytes:
    """A close frame's payload: empty without a code; the reason cut to fit 125 bytes."""
    if code is None:
        return b""
    raw = reason.encode()[:123]
    return struct.pack(">H", code) + raw.decode("utf-8", "ignore").encode()
