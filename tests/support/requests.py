"""A connection's reader as the server loop leaves it for a handler: one bodiless request
head read (`httpio.h1request`), for tests that build a `httpio.server.RequestBody` by hand."""

from __future__ import annotations

from httpio.h1request import RequestHead, RequestReader


def bodiless_get(max_head_bytes: int = 16384) -> RequestReader:
    """A reader that has just given out ``GET / HTTP/1.1`` with no body."""
    reader = RequestReader(max_head_bytes)
    reader.receive_data(b"GET / HTTP/1.1\r\nhost: p\r\n\r\n")
    assert isinstance(reader.next_head(), RequestHead)
    return reader
