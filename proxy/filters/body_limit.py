"""``max_body``: a service's ``max_body_bytes``, refused with 413 before more is read.

A declared ``Content-Length`` over the limit is refused at once, so the body is never read
(the connection is then closed by the server loop, as for every 413 of its own). A chunked
body declares nothing, so it is counted as it streams (`LimitedBody`): the chunk that would
cross the limit is not handed on, and its read raises `RequestBodyTooLarge` instead
(`proxy.filters.limited_body`, apart: it derives from a Python class, so it is never
compiled, where this filter is). The
forward is then reading the body to send it upstream: it closes that connection in the
middle of the chunked message (`httpio.upstream`), so the backend sees an aborted request,
never a shorter one that looks complete; the client gets the 413 JSON and a closed
connection (its framing is lost). A body too large for the server's own limit is refused
by the server first, as before.
"""

from __future__ import annotations

from httpio.errors import RequestBodyTooLarge
from proxy.filters.chain import Exchange, RequestAnswer
from proxy.filters.limited_body import LimitedBody


def declared_length(value: bytes | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


class BodyLimit:
    name = "max_body"

    def __init__(self, max_body_bytes: int) -> None:
        self.max_body_bytes = max_body_bytes

    def __repr__(self) -> str:
        return f"<BodyLimit {self.max_body_bytes} bytes>"

    def settings(self) -> dict[str, object]:
        return {"max_body_bytes": self.max_body_bytes}

    def on_request(self, ex: Exchange) -> RequestAnswer:
        request = ex.request
        raw = None
        chunked = False
        for name, value in request.headers:  # one pass for both (most requests have neither)
            if name == b"content-length":
                raw = value
                break  # the first one decides, whatever follows
            if name == b"transfer-encoding":
                chunked = True
        if raw is None:
            if chunked and not request.body.done:
                request.body = LimitedBody(request.body, self.max_body_bytes)
            return None
        length = declared_length(raw)
        if length is not None and length > self.max_body_bytes:
            raise RequestBodyTooLarge(
                f"request body of {length} bytes exceeds this service's {self.max_body_bytes}"
            )
        return None
