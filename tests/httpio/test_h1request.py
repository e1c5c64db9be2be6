"""`httpio.h1request`: the server side's request reader, judged against pure h11.

Each case feeds the same bytes to h11's server `Connection` (the reader the server loop used
before) and to `RequestReader`, whole and a byte at a time, and compares what comes out: the
head (method, target, version, fields), the body, whether the connection may carry another
request, whether an upgrade was proposed, whether the client waits for 100 Continue, what is
left over, or the status an error maps to. The one difference on purpose, a control byte in a
field value that h11 let through, is asserted as such.
"""

from __future__ import annotations

from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from httpio.errors import ClientError, GatewayError, RequestBodyTooLarge, RequestHeadTooLarge
from httpio.h1request import CLOSED, CONTINUE, END, NEED_DATA, RequestHead, RequestReader

MAX_HEAD = 1024
MIGHT_SWITCH_PROTOCOL = getattr(h11, "MIGHT_SWITCH_PROTOCOL")  # noqa: B009 (not in its __all__)
Outcome = tuple[Any, ...]


def by_h11(data: bytes, *, closed: bool = False) -> Outcome:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    conn.receive_data(data)
    if closed:
        conn.receive_data(b"")
    try:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            return ("need-data",)
        if type(event) is h11.ConnectionClosed:
            return ("closed",)
        assert type(event) is h11.Request
        head = (
            bytes(event.method),
            bytes(event.target),
            bytes(event.http_version),
            [(bytes(n), bytes(v)) for n, v in event.headers],
        )
        expects = conn.they_are_waiting_for_100_continue
        body = b""
        while True:
            piece = conn.next_event()
            if piece is h11.NEED_DATA:
                return ("head", head, body, "need-data", expects)
            if type(piece) is h11.Data:
                body += bytes(piece.data)
                continue
            assert type(piece) is h11.EndOfMessage, piece
            break
        # (h11 also pauses after a CONNECT, which `httpio.protocol.refuse_request` refuses)
        upgrade = conn.their_state is MIGHT_SWITCH_PROTOCOL
        if upgrade:  # h11's state says the switch, not the keep-alive: its rule, RFC 9112 9.3
            tokens = [
                t.strip().lower() for n, v in head[3] if n == b"connection" for t in v.split(b",")
            ]
            keep = head[2] >= b"1.1" and b"close" not in tokens
        else:
            keep = conn.their_state is h11.DONE  # else MUST_CLOSE
        trailing = bytes(conn.trailing_data[0])
        return ("request", head, body, keep, upgrade, expects, trailing)
    except h11.RemoteProtocolError as exc:
        return ("error", exc.error_status_hint)


def by_reader(data: bytes, *, closed: bool = False, step: int = 0) -> Outcome:
    reader = RequestReader(MAX_HEAD)
    pieces = [data[i : i + step] for i in range(0, len(data), step)] if step else [data]
    pieces.reverse()

    def fed() -> bool:  # one more piece in, or the close once they are all in
        if pieces:
            reader.receive_data(pieces.pop())
            return True
        if closed and not reader.closed:
            reader.receive_data(b"")
            return True
        return False

    try:
        fed()
        while (event := reader.next_head()) is NEED_DATA and fed():
            pass
        if event is NEED_DATA:
            return ("need-data",)
        if event is CLOSED:
            return ("closed",)
        assert isinstance(event, RequestHead)
        head = (event.method, event.target, event.http_version, event.headers)
        expects = reader.expects_continue
        body = b""
        while True:
            piece = reader.next_body()
            if piece is NEED_DATA:
                if fed():
                    continue
                return ("head", head, body, "need-data", expects)
            if piece is END:
                break
            assert isinstance(piece, bytes) and piece
            body += piece
        assert reader.body_done and not reader.expects_continue
        lengths = [v for n, v in head[3] if n == b"content-length"]
        chunked = any(n == b"transfer-encoding" for n, _ in head[3])
        assert reader.content_length == (int(lengths[0]) if lengths and not chunked else None)
        while fed():  # what came after the request stays for the next one
            pass
        return ("request", head, body, reader.keep_alive, reader.upgrade, expects, reader.buffered)
    except GatewayError as exc:
        return ("error", exc.status)


def assert_same(data: bytes, *, closed: bool = False) -> Outcome:
    expected = by_h11(data, closed=closed)
    got = by_reader(data, closed=closed)
    assert got == expected, data
    if expected[0] != "need-data":  # a byte at a time reaches the same (head and body)
        stepped = by_reader(data, closed=closed, step=1)
        if expected[0] == "error":
            assert stepped[0] == "error", data
        else:
            assert stepped == expected, data
    return got


GET = b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n"
POST = b"POST /echo HTTP/1.1\r\nHost: x\r\n"
SAME = {
    "simple": GET + b"\r\n",
    "fields": GET + b"User-Agent: wrk\r\nAccept: */*\r\nX-Empty:\r\nX-Pad:  a b  \r\n\r\n",
    "names lowercased": GET + b"X-MiXeD: v\r\n\r\n",
    "pipelined": GET + b"\r\n" + GET + b"\r\n",
    "bare lf": b"GET / HTTP/1.1\nHost: x\nA: b\n\n",
    "mixed line ends": b"GET / HTTP/1.1\r\nHost: x\nA: b\r\n\n",
    "obs-fold": GET + b"X-A: a\r\n b\r\n\tc\r\n\r\n",
    "obs-fold first": b"GET / HTTP/1.1\r\n X: a\r\nHost: x\r\n\r\n",
    "http/1.0": b"GET / HTTP/1.0\r\n\r\n",
    "http/1.0 keep-alive": b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    "http/2.0 in h1": b"GET / HTTP/2.0\r\n\r\n",
    "http/0.9 line": b"GET /\r\n\r\n",
    "close": GET + b"Connection: keep-alive, Close\r\n\r\n",
    "upgrade": GET + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "upgrade empty": GET + b"Upgrade: \r\n\r\n",
    "expect": POST + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    "expect 1.0": b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nhi",
    "expect with body": POST + b"Expect: 100-Continue\r\nContent-Length: 2\r\n\r\nhi",
    "expect empty body": POST + b"Expect: 100-continue\r\nContent-Length: 0\r\n\r\n",
    "no host": b"GET / HTTP/1.1\r\n\r\n",
    "two hosts": GET + b"Host: y\r\n\r\n",
    "host in 1.0 twice": b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
    "leading crlf": b"\r\n" + GET + b"\r\n",
    "leading space": b" " + GET + b"\r\n",
    "tls hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    "lowercase method": b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
    "odd method": b"M-SEARCH * HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad method": b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "two spaces": b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
    "trailing space": b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n",
    "bad version": b"GET / HTTP/1.x\r\nHost: x\r\n\r\n",
    "lower version": b"GET / http/1.1\r\nHost: x\r\n\r\n",
    "garbage": b"GARBAGE\r\n\r\n",
    "obs-text target": b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n",
    "obs-text value": GET + b"X-A: caf\xc3\xa9\r\n\r\n",
    "nul in value": GET + b"X-A: a\x00b\r\n\r\n",
    "nul in target": b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    "bare cr in value": GET + b"X-A: a\rb\r\n\r\n",
    "bare cr in value, lf": b"GET / HTTP/1.1\nHost: x\nX-A: a\rb\n\n",
    "space before colon": GET + b"X-A : b\r\n\r\n",
    "no colon": GET + b"X-A b\r\n\r\n",
    "empty name": GET + b": b\r\n\r\n",
    "cl": POST + b"Content-Length: 5\r\n\r\nhello",
    "cl short": POST + b"Content-Length: 5\r\n\r\nhel",
    "cl zero": POST + b"Content-Length: 0\r\n\r\n",
    "cl twice": POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    "cl list": POST + b"Content-Length: 5, 5\r\n\r\nhello",
    "cl list empty item": POST + b"Content-Length: 5,\r\n\r\nhello",
    "cl conflict": POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "cl zeros": POST + b"Content-Length: 05\r\nContent-Length: 5\r\n\r\nhello",
    "cl sign": POST + b"Content-Length: +5\r\n\r\nhello",
    "cl hex": POST + b"Content-Length: 0x5\r\n\r\nhello",
    "cl empty": POST + b"Content-Length:\r\n\r\n",
    "cl then body and next": POST + b"Content-Length: 2\r\n\r\nhi" + GET + b"\r\n",
    "te": POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "te case": POST + b"Transfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n",
    "te list": POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
    "te odd": POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te twice": POST + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "te fold": POST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "te and cl": POST + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    "chunks": POST + b"Transfer-Encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\nX",
    "chunk ext": POST + b"Transfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n0;x\r\n\r\n",
    "chunk size ows": POST + b"Transfer-Encoding: chunked\r\n\r\n5  \r\nhello\r\n0\r\n\r\n",
    "chunk size bws": POST + b"Transfer-Encoding: chunked\r\n\r\n5 ;a\r\nhello\r\n0\r\n\r\n",
    "chunk upper hex": POST + b"Transfer-Encoding: chunked\r\n\r\nA\r\n0123456789\r\n0\r\n\r\n",
    "chunk bad size": POST + b"Transfer-Encoding: chunked\r\n\r\nz\r\nhello\r\n0\r\n\r\n",
    "chunk no crlf": POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n",
    "chunk trailer": POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\nZ",
    "chunk bad trailer": POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\nX-T 1\r\n\r\n",
    "chunk lf end": POST + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\n",
    "chunk unfinished": POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhel",
    "head of a body": POST + b"Content-Length: 3\r\n",
    "a partial line": b"GET / HT",
}


@pytest.mark.parametrize("data", SAME.values(), ids=SAME.keys())
def test_reads_as_h11_did(data: bytes) -> None:
    assert_same(data)


@pytest.mark.parametrize(
    "data",
    [b"", b"GET / HT", GET, POST + b"Content-Length: 5\r\n\r\nhel", SAME["chunk unfinished"]],
    ids=["nothing", "a partial line", "a head", "a short body", "a short chunk"],
)
def test_a_close_reads_as_h11_did(data: bytes) -> None:
    assert_same(data, closed=True)


def test_a_control_byte_in_a_value_is_refused_where_h11_let_it_through() -> None:
    for byte in [*range(1, 9), *range(14, 32), 127]:
        data = GET + b"X-A: a" + bytes([byte]) + b"b\r\n\r\n"
        assert by_h11(data)[0] == "request", byte
        assert by_reader(data) == ("error", 400), byte


def test_an_incomplete_head_past_the_limit_is_431() -> None:
    data = GET + b"X-Long: " + b"a" * MAX_HEAD
    assert assert_same(data) == ("error", 431)
    reader = RequestReader(MAX_HEAD)
    reader.receive_data(data)
    with pytest.raises(RequestHeadTooLarge):
        reader.next_head()


def test_a_content_length_past_eighteen_digits_is_413() -> None:
    reader = RequestReader(MAX_HEAD)
    reader.receive_data(POST + b"Content-Length: " + b"9" * 19 + b"\r\n\r\n")
    with pytest.raises(RequestBodyTooLarge):
        reader.next_head()


def test_one_reader_serves_the_requests_of_a_connection_in_turn() -> None:
    reader = RequestReader(MAX_HEAD)
    reader.receive_data(POST + b"Content-Length: 2\r\n\r\nhi" + GET + b"\r\nGET /n")
    first = reader.next_head()
    assert isinstance(first, RequestHead) and first.method == b"POST"
    with pytest.raises(RuntimeError):
        reader.next_head()  # not before the first is over
    assert reader.next_body() == b"hi" and reader.next_body() is END
    assert reader.next_body() is END  # and it stays over
    reader.next_request()
    second = reader.next_head()
    assert isinstance(second, RequestHead) and second.target == b"/a?b=c"
    assert reader.next_body() is END
    reader.next_request()
    assert reader.next_head() is NEED_DATA and reader.buffered == b"GET /n"
    reader.receive_data(b"")
    with pytest.raises(ClientError):
        reader.next_head()  # closed in the middle of a head


def test_a_clean_close_between_requests() -> None:
    reader = RequestReader(MAX_HEAD)
    assert reader.next_head() is NEED_DATA
    reader.receive_data(b"")
    assert reader.closed and reader.next_head() is CLOSED


def test_expects_continue_until_the_100_goes_out() -> None:
    reader = RequestReader(MAX_HEAD)
    reader.receive_data(POST + b"Expect: 100-continue\r\nContent-Length: 2\r\n\r\n")
    assert isinstance(reader.next_head(), RequestHead)
    assert reader.expects_continue and reader.next_body() is NEED_DATA
    assert reader.expects_continue  # no byte of the body yet
    reader.continue_sent()
    assert not reader.expects_continue
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"


def test_a_huge_chunk_size_line_is_refused() -> None:
    reader = RequestReader(MAX_HEAD)
    reader.receive_data(POST + b"Transfer-Encoding: chunked\r\n\r\n" + b"0" * 5000)
    assert isinstance(reader.next_head(), RequestHead)
    with pytest.raises(ClientError):
        reader.next_body()


# -- generated requests --------------------------------------------------------------------------
TCHAR = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-.^_`|~"
good_names = st.one_of(
    st.sampled_from(
        [b"Host", b"content-length", b"Transfer-Encoding", b"connection", b"Upgrade", b"expect"]
    ),
    st.text(TCHAR, min_size=1, max_size=8).map(str.encode),
)
names = st.one_of(good_names, good_names, good_names, st.sampled_from([b"x a", b"", b"x:y", b" x"]))
good_values = st.one_of(
    st.sampled_from(
        [b"chunked", b"close", b"keep-alive", b"100-continue", b"websocket", b"5", b"0", b"5, 5"]
    ),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12).map(
        str.encode
    ),
)
values = st.one_of(
    good_values,
    good_values,
    good_values,
    st.binary(max_size=12).filter(lambda v: b"\r" not in v and b"\n" not in v),
)
methods = st.one_of(
    st.sampled_from([b"GET", b"POST", b"HEAD"]),
    st.sampled_from([b"GET", b"POST", b"HEAD"]),
    st.sampled_from([b"get", b"M-SEARCH", b"G T", b""]),
)
targets = st.one_of(
    st.sampled_from([b"/", b"*", b"/a?b"]),
    st.sampled_from([b"/", b"*", b"/a?b"]),
    st.sampled_from([b"", b"/\x7f"]),
    st.binary(max_size=6),
)
versions = st.one_of(
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
    st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"]),
    st.sampled_from([b"HTTP/2.0", b"HTTP/1", b"http/1.1"]),
)
line_ends = st.sampled_from([b"\r\n", b"\n"])
bodies = st.sampled_from(
    [b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n", b"0\r\n\r\nGET / HTTP/1.1\r\n"]
)

# The bytes h11 let through in a value and the reader refuses (asserted above, one by one).
DEVIATIONS = frozenset([*range(1, 9), *range(14, 32), 127])


@settings(max_examples=1500, deadline=None)
@given(
    methods,
    targets,
    versions,
    st.lists(st.tuples(names, values), max_size=4),
    st.booleans(),
    line_ends,
    bodies,
)
def test_generated_requests_read_as_h11_did(
    method: bytes,
    target: bytes,
    version: bytes,
    fields: list[tuple[bytes, bytes]],
    host: bool,
    end: bytes,
    body: bytes,
) -> None:
    if host:
        fields = [(b"Host", b"x"), *fields]
    data = method + b" " + target + b" " + version + end
    data += b"".join(name + b": " + value + end for name, value in fields) + end + body
    got = by_reader(data)
    if DEVIATIONS.intersection(data[: data.find(end + end)]):
        assert got == ("error", 400), data  # whatever h11 made of the rest of the head
    else:
        assert got == by_h11(data), data
