"""`httpio.ws_frames`: bytes in, events out, no event loop. wsproto writes the frames a peer
would send, so the reader is checked against another implementation, not against itself."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, TextMessage
from wsproto.events import Ping as WsPing

from httpio.ws_frames import (
    BINARY,
    CLOSE,
    CONTINUATION,
    PING,
    TEXT,
    Close,
    Data,
    Event,
    FrameError,
    FrameReader,
    Ping,
    Pong,
    close_payload,
    frame,
    unmask,
)

KEY = b"\x01\x02\x03\x04"


def client_frame(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """A masked frame, as a browser sends it (fixed key: the bytes are reproducible)."""
    head = frame(opcode, payload, fin=fin)
    return (
        bytes((head[0], head[1] | 0x80))
        + head[2 : len(head) - len(payload)]
        + KEY
        + (unmask(payload, KEY))
    )


def events_of(data: bytes, *, masked: bool) -> list[Event]:
    reader = FrameReader(masked=masked)
    reader.receive(data)
    out = []
    while (event := reader.next_event()) is not None:
        out.append(event)
    return out


def failure(data: bytes, *, masked: bool = True) -> FrameError:
    with pytest.raises(FrameError) as caught:
        events_of(data, masked=masked)
    return caught.value


def test_frames_wsproto_writes_as_a_client_are_read_as_a_browsers() -> None:
    ws = Connection(ConnectionType.CLIENT)
    data = ws.send(TextMessage(data="héllo")) + ws.send(BytesMessage(data=b"\x00" * 70000))
    data += ws.send(WsPing(payload=b"p")) + ws.send(CloseConnection(code=4001, reason="bye"))
    events = events_of(data, masked=True)
    assert events == [
        Data("héllo".encode(), text=True, first=True, last=True),
        Data(b"\x00" * 70000, text=False, first=True, last=True),
        Ping(b"p"),
        Close(4001, "bye"),
    ]


def test_a_servers_frames_are_read_unmasked() -> None:
    ws = Connection(ConnectionType.SERVER)
    data = ws.send(TextMessage(data="", message_finished=False))
    data += ws.send(TextMessage(data="x"))
    assert events_of(data, masked=False) == [
        Data(b"", text=True, first=True, last=False),
        Data(b"x", text=True, first=False, last=True),
    ]


def test_what_the_reader_writes_back_round_trips() -> None:
    for n in (0, 125, 126, 65535, 65536):
        payload = bytes(range(256)) * (n // 256) + bytes(n % 256)
        assert events_of(frame(BINARY, payload, mask=True), masked=True) == [
            Data(payload, text=False, first=True, last=True)
        ]
        assert events_of(frame(BINARY, payload), masked=False) == [
            Data(payload, text=False, first=True, last=True)
        ]


def test_a_close_without_code_and_one_with_a_long_reason() -> None:
    assert events_of(client_frame(CLOSE, b""), masked=True) == [Close(None, "")]
    payload = close_payload(1001, "é" * 100)
    assert len(payload) <= 125
    assert events_of(frame(CLOSE, payload), masked=False)[0] == Close(1001, "é" * 61)


def test_an_idle_reader_holds_nothing() -> None:
    reader = FrameReader(masked=True)
    data = client_frame(TEXT, b"hi")
    reader.receive(data[:3])
    assert reader.next_event() is None and not reader.idle
    reader.receive(data[3:])
    assert reader.next_event() == Data(b"hi", text=True, first=True, last=True)
    assert reader.next_event() is None and reader.idle


@pytest.mark.parametrize(
    ("data", "masked", "code", "why"),
    [
        (frame(TEXT, b"x"), True, 1002, "must be masked"),
        (frame(TEXT, b"x", mask=True), False, 1002, "must not be masked"),
        (bytes((0x80 | 0x40 | TEXT, 0x80)) + KEY, True, 1002, "reserved bits"),
        (bytes((0x80 | 0x3, 0x80)) + KEY, True, 1002, "opcode 0x3"),
        (bytes((0x80 | 0xB, 0x80)) + KEY, True, 1002, "opcode 0xb"),
        (client_frame(PING, b"x" * 126), True, 1002, "over 125"),
        (client_frame(PING, b"x", fin=False), True, 1002, "fragmented control"),
        (client_frame(CONTINUATION, b"x"), True, 1002, "outside a message"),
        (
            client_frame(TEXT, b"a", fin=False) + client_frame(TEXT, b"b"),
            True,
            1002,
            "inside a fragmented",
        ),
        (bytes((0x82, 0x80 | 126)) + struct.pack(">H", 125) + KEY, True, 1002, "16-bit"),
        (bytes((0x82, 0x80 | 127)) + struct.pack(">Q", 1 << 63) + KEY, True, 1002, "high bit"),
        (bytes((0x82, 0x80 | 127)) + struct.pack(">Q", 65535) + KEY, True, 1002, "64-bit"),
        (client_frame(CLOSE, b"\x03"), True, 1002, "one byte"),
        (client_frame(CLOSE, struct.pack(">H", 1005)), True, 1002, "1005"),
        (client_frame(CLOSE, struct.pack(">H", 1006)), True, 1002, "1006"),
        (client_frame(CLOSE, struct.pack(">H", 999)), True, 1002, "999"),
        (client_frame(CLOSE, struct.pack(">H", 5000)), True, 1002, "5000"),
        (client_frame(CLOSE, struct.pack(">H", 1000) + b"\xff"), True, 1007, "reason"),
        (client_frame(TEXT, b"\xc3\x28"), True, 1007, "UTF-8"),
        (client_frame(TEXT, b"\xed\xa0\x80"), True, 1007, "UTF-8"),  # a surrogate
        (
            client_frame(TEXT, b"ok", fin=False) + client_frame(CONTINUATION, b"\xc3"),
            True,
            1007,
            "",
        ),
    ],
)
def test_hostile_frames_are_refused_with_their_close_code(
    data: bytes, masked: bool, code: int, why: str
) -> None:
    err = failure(data, masked=masked)
    assert err.code == code and why in err.detail


def test_an_invalid_sequence_is_caught_in_the_fragment_that_has_it() -> None:
    reader = FrameReader(masked=True)
    reader.receive(client_frame(TEXT, b"ok", fin=False))
    assert reader.next_event() == Data(b"ok", text=True, first=True, last=False)
    reader.receive(client_frame(CONTINUATION, b"\xff", fin=False))
    with pytest.raises(FrameError) as caught:
        reader.next_event()
    assert caught.value.code == 1007


def test_a_huge_announced_length_is_streamed_not_awaited_whole() -> None:
    reader = FrameReader(masked=False)
    reader.receive(bytes((0x82, 127)) + struct.pack(">Q", 1 << 40) + b"abc")
    assert reader.next_event() == Data(b"abc", text=False, first=True, last=False)
    assert reader.next_event() is None


def test_a_split_utf8_character_across_fragments_is_valid() -> None:
    data = client_frame(TEXT, b"\xc3", fin=False) + client_frame(CONTINUATION, b"\xa9")
    assert [e.payload for e in events_of(data, masked=True) if isinstance(e, Data)] == [
        b"\xc3",
        b"\xa9",
    ]


def test_pongs_are_events() -> None:
    assert events_of(frame(0xA, b"gateway"), masked=False) == [Pong(b"gateway")]


STREAM = (
    client_frame(TEXT, "ünï".encode(), fin=False)
    + client_frame(PING, b"mid")
    + client_frame(CONTINUATION, "cødé".encode())
    + client_frame(BINARY, bytes(300))
    + client_frame(BINARY, b"", fin=False)
    + client_frame(CONTINUATION, bytes(range(200)))
    + client_frame(CLOSE, close_payload(1000, "done"))
)


def joined(events: list[Event]) -> list[object]:
    """Events with the pieces of each message put back together (splits move the pieces)."""
    out: list[object] = []
    message = b""
    for event in events:
        if isinstance(event, Data):
            message += event.payload
            if event.last:
                out.append(("message", event.text, message))
                message = b""
        else:
            out.append(event)
    return out


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_of_the_bytes_gives_the_same_events(cuts: list[int]) -> None:
    whole = joined(events_of(STREAM, masked=True))
    reader = FrameReader(masked=True)
    events: list[Event] = []
    at = 0
    for cut in [*sorted(cuts), len(STREAM)]:
        reader.receive(STREAM[at:cut])
        at = max(at, cut)
        while (event := reader.next_event()) is not None:
            events.append(event)
    assert joined(events) == whole
    assert len(whole) == 5 and reader.idle
    firsts = [e.first for e in events if isinstance(e, Data)]
    assert firsts.count(True) == 3


@given(st.binary(max_size=64))
def test_garbage_either_parses_or_raises_frame_error(data: bytes) -> None:
    for masked in (True, False):
        try:
            events_of(data, masked=masked)
        except FrameError as err:
            assert err.code in (1002, 1007)
