"""httpio.h1client: the upstream side's HTTP/1.1 response reader and request writer."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from httpio.h1client import (
    END,
    KNOWN_NAMES,
    LAST_CHUNK,
    MAX_KNOWN_NAMES,
    NEED_DATA,
    MalformedRequest,
    MalformedResponse,
    ResponseHead,
    ResponseReader,
    encode_chunk,
    encode_request,
    lowercase_token,
)


def read_all(
    data: bytes, method: str = "GET", pieces: list[int] | None = None, eof: bool = False
) -> tuple[ResponseHead, bytes, ResponseReader]:
    """Feed ``data`` (cut at ``pieces``' offsets), then the close if ``eof``; the head, the
    body, and the reader after END."""
    reader = ResponseReader()
    reader.start(method)
    cuts = sorted(set(pieces or []))
    chunks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    chunks = [c for c in chunks if c]
    head = None
    body = b""
    while True:
        event = reader.next_head() if head is None else reader.next_body()
        if event is NEED_DATA:
            if chunks:
                reader.receive_data(chunks.pop(0))
            elif eof:
                reader.receive_data(b"")
                eof = False
            else:
                raise AssertionError("reader wants more than there is")
            continue
        if event is END:
            break
        if isinstance(event, ResponseHead):
            head = event
        else:
            assert isinstance(event, bytes) and event
            body += event
    assert head is not None
    return head, body, reader


def test_a_sized_answer_is_read_and_leaves_the_connection_reusable() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    head, body, reader = read_all(data)
    assert (head.status, head.reason, head.http_version) == (200, b"OK", b"1.1")
    assert head.headers == [(b"content-type", b"text/plain"), (b"content-length", b"5")]
    assert body == b"hello"
    assert reader.reusable


def test_values_lose_their_surrounding_whitespace_and_names_are_lowercased() -> None:
    head, _, _ = read_all(b"HTTP/1.1 204 \r\nX-A:  v w \t\r\nX-Empty:\r\n\r\n")
    assert head.reason == b""
    assert head.headers == [(b"x-a", b"v w"), (b"x-empty", b"")]


def test_a_status_line_without_a_reason_is_accepted() -> None:
    head, body, reader = read_all(b"HTTP/1.1 204\r\n\r\n")
    assert (head.status, body, reader.reusable) == (204, b"", True)


def test_chunked_body_with_extensions_and_trailers() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n1 \r\n,\r\n6\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n"
    )
    _, body, reader = read_all(data)
    assert body == b"hello, world"
    assert reader.reusable


def test_a_body_to_the_close_ends_the_connection() -> None:
    _, body, reader = read_all(b"HTTP/1.1 200 OK\r\n\r\nall of it", eof=True)
    assert body == b"all of it"
    assert not reader.reusable


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_for_204_and_304_even_with_a_length(status: int) -> None:
    data = b"HTTP/1.1 %d X\r\nContent-Length: 10\r\n\r\n" % status
    _, body, reader = read_all(data)
    assert body == b""
    assert reader.reusable


def test_no_body_for_the_answer_to_a_head_request() -> None:
    _, body, reader = read_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", method="HEAD")
    assert body == b""
    assert reader.reusable


def test_informational_answers_are_skipped() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early\r\nLink: x\r\n\r\n"
    data += b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    head, body, _ = read_all(data)
    assert (head.status, body) == (201, b"")


@pytest.mark.parametrize(
    ("data", "request_close"),
    [
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\nContent-Length: 0\r\n\r\n", False),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n", False),
    ],
    ids=["http-1.0", "connection-close", "request-said-close", "bytes-after-the-answer"],
)
def test_when_the_connection_is_not_reused(data: bytes, request_close: bool) -> None:
    reader = ResponseReader()
    reader.start("GET", close=request_close)
    reader.receive_data(data)
    assert isinstance(reader.next_head(), ResponseHead)
    assert reader.next_body() is END
    assert not reader.reusable


def test_a_second_exchange_on_the_same_reader() -> None:
    reader = ResponseReader()
    for body in (b"one", b"second"):
        reader.start("GET")
        reader.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        assert isinstance(reader.next_head(), ResponseHead)
        assert reader.next_body() == body
        assert reader.next_body() is END
        assert reader.reusable


def test_equal_content_lengths_are_one() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\nabc"
    assert read_all(data)[1] == b"abc"


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x3\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234567890123456789\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A : b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: b\r\n folded\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: b\nX-B: c\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: b\rX-B: c\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: b\x00c\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-A: b\x7fc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n: empty name\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX(A): b\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 099 X\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"http/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1\r\n\r\n",
        b"garbage\r\n\r\n",
    ],
)
def test_malformed_heads_are_refused(head: bytes) -> None:
    reader = ResponseReader()
    reader.start("GET")
    reader.receive_data(head)
    with pytest.raises(MalformedResponse):
        reader.next_head()


@pytest.mark.parametrize(
    "body",
    [
        b"x\r\nabc\r\n0\r\n\r\n",
        b"-1\r\n\r\n",
        b"0x3\r\nabc\r\n0\r\n\r\n",
        b"3\r\nabcd\r\n0\r\n\r\n",
        b"3\r\nabc0\r\n\r\n",
        b"1234567890abcdef0\r\n",
        b"3;\x00\r\nabc\r\n0\r\n\r\n",
        b"0\r\nbad trailer\r\n\r\n",
    ],
)
def test_malformed_chunked_bodies_are_refused(body: bytes) -> None:
    reader = ResponseReader()
    reader.start("GET")
    reader.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
    assert isinstance(reader.next_head(), ResponseHead)
    with pytest.raises(MalformedResponse):
        for _ in range(10):
            reader.next_body()


@pytest.mark.parametrize(
    ("head", "body"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", b"short"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhel"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"5\r\nhello\r\n"),
    ],
    ids=["sized", "mid-chunk", "no-last-chunk"],
)
def test_a_close_before_the_end_of_the_body_is_an_error(head: bytes, body: bytes) -> None:
    reader = ResponseReader()
    reader.start("GET")
    reader.receive_data(head + body)
    reader.receive_data(b"")
    assert isinstance(reader.next_head(), ResponseHead)
    with pytest.raises(MalformedResponse):
        for _ in range(10):
            assert reader.next_body() is not END


@pytest.mark.parametrize("received", [b"", b"HTTP/1.1 200 O"])
def test_a_close_before_the_head_is_an_error(received: bytes) -> None:
    reader = ResponseReader()
    reader.start("GET")
    reader.receive_data(received)
    reader.receive_data(b"")
    with pytest.raises(MalformedResponse):
        reader.next_head()


def test_a_head_that_never_ends_is_refused_past_the_limit() -> None:
    reader = ResponseReader()
    reader.start("GET")
    reader.receive_data(b"HTTP/1.1 200 OK\r\n")
    with pytest.raises(MalformedResponse, match="exceeds"):
        for _ in range(2000):
            assert reader.next_head() is NEED_DATA
            reader.receive_data(b"X-Filler: " + b"a" * 40 + b"\r\n")


def test_a_trailer_section_that_never_ends_is_refused() -> None:
    reader = ResponseReader()
    reader.start("GET")
    reader.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n")
    assert isinstance(reader.next_head(), ResponseHead)
    with pytest.raises(MalformedResponse, match="trailer"):
        for _ in range(3000):
            assert reader.next_body() is NEED_DATA
            reader.receive_data(b"X-T: " + b"a" * 40 + b"\r\n")


def test_calls_out_of_order_are_our_bug() -> None:
    reader = ResponseReader()
    with pytest.raises(MalformedRequest):
        reader.next_head()
    reader.start("GET")
    with pytest.raises(MalformedRequest):
        reader.next_body()
    with pytest.raises(MalformedRequest):
        reader.start("GET")


RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\nX-A: 1\r\n\r\nhello world",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3\r\nhel\r\n8;x=y\r\nlo world\r\n0\r\nT: 1\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n",
]


@settings(max_examples=300, deadline=None)
@given(
    which=st.integers(0, len(RESPONSES) - 1),
    cuts=st.lists(st.integers(1, 200), max_size=12),
)
def test_any_split_of_the_bytes_reads_the_same_as_h11(which: int, cuts: list[int]) -> None:
    """The same bytes, however they arrive, give what h11 (the reference) makes of them."""
    data = RESPONSES[which]
    head, body, reader = read_all(data, pieces=[c for c in cuts if c < len(data)])
    ref = h11.Connection(h11.CLIENT)
    ref.send(h11.Request(method="GET", target="/", headers=[(b"host", b"x")]))
    ref.send(h11.EndOfMessage())
    ref.receive_data(data)
    events = []
    while True:
        event = ref.next_event()
        if event is h11.NEED_DATA or isinstance(event, h11.EndOfMessage):
            break
        events.append(event)
    final = next(e for e in events if isinstance(e, h11.Response))
    assert head.status == final.status_code
    assert head.headers == list(final.headers)
    assert body == b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data))
    assert reader.reusable


def test_a_request_head_is_written_as_given() -> None:
    head = encode_request("POST", "/a?b=c", [(b"host", b"x:1"), (b"content-length", b"2")])
    assert head == b"POST /a?b=c HTTP/1.1\r\nhost: x:1\r\ncontent-length: 2\r\n\r\n"
    ref = h11.Connection(h11.SERVER)
    ref.receive_data(head)
    event = ref.next_event()
    assert isinstance(event, h11.Request)
    assert event.target == b"/a?b=c"


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        ("GET", "/", [(b"x-a", b"v\r\nInjected: 1")]),
        ("GET", "/", [(b"x-a", b"v\nInjected: 1")]),
        ("GET", "/", [(b"x-a", b"v\x00")]),
        ("GET", "/", [(b"x a", b"v")]),
        ("GET", "/", [(b"x-a:", b"v")]),
        ("GET", "/", [(b"", b"v")]),
        ("GET", "/a b", []),
        ("GET", "/a\r\nX: y", []),
        ("G ET", "/", []),
    ],
)
def test_a_request_head_that_would_split_is_refused(
    method: str, target: str, headers: list[tuple[bytes, bytes]]
) -> None:
    with pytest.raises(MalformedRequest):
        encode_request(method, target, headers)


def test_chunks_frame_what_they_carry_and_never_end_the_body_early() -> None:
    assert encode_chunk(b"hello") + encode_chunk(b"") + LAST_CHUNK == b"5\r\nhello\r\n0\r\n\r\n"


def test_field_names_are_remembered_lowercased_and_only_up_to_a_bound() -> None:
    assert lowercase_token(b"X-Seen-Once") == b"x-seen-once"
    assert KNOWN_NAMES[b"X-Seen-Once"] == b"x-seen-once"
    assert lowercase_token(b"x a") is None and b"x a" not in KNOWN_NAMES
    assert lowercase_token(b"") is None
    for n in range(MAX_KNOWN_NAMES + 10):  # names a peer makes up, one per message
        assert lowercase_token(b"x-made-up-%d" % n) == b"x-made-up-%d" % n
    assert len(KNOWN_NAMES) == MAX_KNOWN_NAMES
    assert lowercase_token(b"X-Past-The-Bound") == b"x-past-the-bound"  # checked all the same
    assert b"X-Past-The-Bound" not in KNOWN_NAMES
    reader = ResponseReader()
    reader.start("GET")
    reader.receive_data(b"HTTP/1.1 200 OK\r\nX-Past-The-Bound: 1\r\nBad Name: 2\r\n\r\n")
    with pytest.raises(MalformedResponse):
        reader.next_head()  # a name not remembered is still checked


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [
        (b"HTTP/1.1 200 OK", 200, b"OK"),
        (b"HTTP/1.0 404 Not Found", 404, b"Not Found"),
        (b"HTTP/1.1 204", 204, b""),  # the reason may be left out
        (b"HTTP/1.1 200 ", 200, b""),
        (b"HTTP/1.1 599 \xe9t\xe9", 599, b"\xe9t\xe9"),  # obs-text in a reason
    ],
)
def test_status_lines_read(line: bytes, status: int, reason: bytes) -> None:
    reader = ResponseReader()
    reader.start("GET")
    reader.receive_data(line + b"\r\nContent-Length: 0\r\n\r\n")
    head = reader.next_head()
    assert isinstance(head, ResponseHead)
    assert (head.status, head.reason) == (status, reason)


@pytest.mark.parametrize(
    ("line", "said"),
    [
        (b"HTTP/2.0 200 OK", "HTTP version not supported"),
        (b"HTTP/1.1 099 Low", "bad status code 99"),
        (b"HTTP/1.1 2000 OK", "bad status line"),
        (b"HTTP/1.1 200OK", "bad status line"),
        (b"HTTP/1.x 200 OK", "bad status line"),
        (b"HTTP/1.1  200 OK", "bad status line"),
        (b"ICY 200 OK", "bad status line"),
    ],
)
def test_odd_status_lines_are_refused_saying_why(line: bytes, said: str) -> None:
    reader = ResponseReader()
    reader.start("GET")
    reader.receive_data(line + b"\r\n\r\n")
    with pytest.raises(MalformedResponse, match=said):
        reader.next_head()
