"""`httpio.h1response`: the heads and body framings a server writes, against h11 (the
reference it replaced: every combination of method, client version and Connection, answer
status and framing headers must frame the body alike and agree on keeping the connection),
then what it refuses to write. No event loop."""

from __future__ import annotations

import itertools

import h11
import pytest

from httpio.h1request import RequestHead, RequestReader
from httpio.h1response import (
    CHUNKED,
    LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    BodyFraming,
    MalformedAnswer,
    encode_response,
)

Headers = list[tuple[bytes, bytes]]

ANSWER_HEADERS: list[Headers] = [
    [(b"content-type", b"text/plain"), (b"content-length", b"5")],
    [(b"content-length", b"5"), (b"content-length", b"5")],
    [(b"transfer-encoding", b"chunked")],
    [(b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
    [(b"content-type", b"text/plain")],  # no framing of its own
    [(b"content-length", b"5"), (b"connection", b"close")],
    [(b"content-length", b"5"), (b"connection", b"keep-alive, x-hop")],
    [(b"x-a", b"1"), (b"Connection", b"Close")],
]


def with_h11(
    method: bytes, version: bytes, asked: bytes | None, status: int, headers: Headers, body: bytes
) -> tuple[bytes, bool]:
    conn = h11.Connection(h11.SERVER)
    fields = [(b"host", b"x")] + ([(b"connection", asked)] if asked is not None else [])
    request = b"%s / HTTP/%s\r\n" % (method, version)
    request += b"".join(n + b": " + v + b"\r\n" for n, v in fields) + b"\r\n"
    conn.receive_data(request)
    assert type(conn.next_event()) is h11.Request
    assert type(conn.next_event()) is h11.EndOfMessage
    out = conn.send(h11.Response(status_code=status, headers=headers, reason=b"R"))
    if body and method != b"HEAD" and status not in (204, 304):
        out += conn.send(h11.Data(data=body))
    out += conn.send(h11.EndOfMessage())
    return out, conn.our_state is h11.DONE


def ours(
    method: bytes, version: bytes, asked: bytes | None, status: int, headers: Headers, body: bytes
) -> tuple[bytes, bool]:
    head, framing = encode_response(
        status,
        b"R",
        list(headers),
        head=method == b"HEAD",
        http11=version == b"1.1",
        keep_alive=keeps_alive(version, [(b"connection", asked)] if asked is not None else []),
    )
    out = head
    if body and method != b"HEAD" and status not in (204, 304):
        out += framing.data(body)
    return out + framing.end(), framing.keep_alive


def normal(wire: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes]:
    head, _, body = wire.partition(b"\r\n\r\n")
    line, *fields = head.split(b"\r\n")
    pairs = sorted((n.lower(), v) for n, _, v in (f.partition(b": ") for f in fields))
    return line, pairs, body


@pytest.mark.parametrize(
    ("method", "version", "asked"),
    list(itertools.product((b"GET", b"HEAD"), (b"1.1", b"1.0"), (None, b"close", b"keep-alive"))),
)
@pytest.mark.parametrize("status", [200, 204, 304, 404])
@pytest.mark.parametrize("headers", ANSWER_HEADERS)
def test_the_same_answer_as_h11(
    method: bytes, version: bytes, asked: bytes | None, status: int, headers: Headers
) -> None:
    body = b"hello"
    try:
        expected = with_h11(method, version, asked, status, headers, body)
    except h11.LocalProtocolError:
        with pytest.raises(MalformedAnswer):
            ours(method, version, asked, status, headers, body)
        return
    got = ours(method, version, asked, status, headers, body)
    assert normal(got[0]) == normal(expected[0])
    assert got[1] == expected[1]


def test_an_http10_keep_alive_is_promised_where_its_end_is_known() -> None:
    """What the server made of h11's head before: ``Connection: keep-alive`` instead of the
    ``Connection: close`` h11 ends it with, when the answer has a length and no Connection of
    its own."""
    sized = [(b"content-length", b"2")]
    head, framing = encode_response(
        200, b"OK", sized, head=False, http11=False, keep_alive=False, persist=True
    )
    reference = h11.Connection(h11.SERVER)
    reference.receive_data(b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n")
    reference.next_event()
    closing = reference.send(h11.Response(status_code=200, headers=sized, reason=b"OK"))
    assert closing.endswith(b"Connection: close\r\n\r\n")
    assert head == closing.replace(b"Connection: close\r\n\r\n", b"Connection: keep-alive\r\n\r\n")
    assert framing.keep_alive and framing.data(b"ok") == b"ok" and framing.end() == b""
    for headers in ([], [(b"content-length", b"2"), (b"connection", b"close")]):
        head, framing = encode_response(
            200, b"OK", headers, head=False, http11=False, keep_alive=False, persist=True
        )
        assert not framing.keep_alive and head.endswith(b"Connection: close\r\n\r\n")
    head, framing = encode_response(
        200, b"OK", [], head=True, http11=False, keep_alive=False, persist=True
    )
    assert framing.keep_alive and framing.kind == NO_BODY  # a HEAD's end is its head's


def test_framings_frame_their_bodies() -> None:
    length = BodyFraming(LENGTH, 5, True)
    assert length.data(b"abc") == b"abc" and length.data(b"de") == b"de" and length.end() == b""
    with pytest.raises(MalformedAnswer, match="too much"):
        BodyFraming(LENGTH, 2, True).data(b"abc")
    short = BodyFraming(LENGTH, 5, True)
    short.data(b"abc")
    with pytest.raises(MalformedAnswer, match="too little"):
        short.end()
    chunked = BodyFraming(CHUNKED, 0, True)
    assert chunked.data(b"abc") == b"3\r\nabc\r\n" and chunked.data(b"") == b""
    assert chunked.end() == b"0\r\n\r\n"
    assert BodyFraming(UNTIL_CLOSE, 0, False).data(b"x" * 3) == b"xxx"
    with pytest.raises(MalformedAnswer):
        BodyFraming(NO_BODY, 0, True).data(b"x")
    assert "chunked" in repr(chunked)


@pytest.mark.parametrize(
    ("status", "headers"),
    [
        (199, []),
        (101, []),
        (1000, []),
        (200, [(b"x-a", b"1\r\nset-cookie: stolen=1")]),  # response splitting
        (200, [(b"x-a", b"a\nb")]),
        (200, [(b"x-a", b"a\x00b")]),
        (200, [(b"bad name", b"1")]),
        (200, [(b"", b"1")]),
        (200, [(b"x:y", b"1")]),
        (200, [(b"content-length", b"5"), (b"content-length", b"6")]),
        (200, [(b"content-length", b"5, 6")]),
        (200, [(b"content-length", b"-5")]),
        (200, [(b"content-length", b"0x5")]),
        (200, [(b"content-length", b"")]),
        (200, [(b"transfer-encoding", b"gzip")]),
        (200, [(b"transfer-encoding", b"gzip, chunked")]),
        (200, [(b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")]),
    ],
)
def test_what_would_not_be_valid_http_is_refused(status: int, headers: Headers) -> None:
    with pytest.raises(MalformedAnswer):
        encode_response(status, b"R", headers, head=False, http11=True, keep_alive=True)


@pytest.mark.parametrize(
    ("version", "headers", "keeps"),
    [
        ("1.1", [], True),
        ("1.1", [(b"connection", b"keep-alive")], True),
        ("1.1", [(b"connection", b"Upgrade, CLOSE")], False),
        ("1.1", [(b"connection", b"closed")], True),
        ("1.0", [(b"connection", b"keep-alive")], False),  # `persist`'s, not this
        ("2.0", [], True),
    ],
)
def test_which_requests_keep_their_connection(version: str, headers: Headers, keeps: bool) -> None:
    assert keeps_alive(version.encode(), headers) is keeps


def keeps_alive(version: bytes, headers: Headers) -> bool:
    """What the server's reader says of a request's connection (`RequestReader.keep_alive`),
    the ``keep_alive`` the server loop gives `encode_response`."""
    reader = RequestReader(16384)
    fields = b"".join(n + b": " + v + b"\r\n" for n, v in [(b"host", b"x"), *headers])
    reader.receive_data(b"GET / HTTP/%s\r\n%s\r\n" % (version, fields))
    assert isinstance(reader.next_head(), RequestHead)
    return reader.keep_alive
