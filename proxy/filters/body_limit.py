"""``max_body``: a service's ``max_body_bytes``, refused with 413 before the body is read.

A declared ``Content-Length`` over the limit is refused at once, so the body is never read
(the connection is then closed by the server loop, as for every 413 of its own). A chunked
body declares nothing: it is bounded while read by the server's own ``max_body_bytes``
(`httpio.server.ServerLimits`); this filter does not wrap the body stream.
"""

from __future__ import annotations

from httpio.errors import RequestBodyTooLarge
from proxy.filters.chain import Exchange, RequestAnswer


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
        length = declared_length(ex.request.header(b"content-length"))
        if length is not None and length > self.max_body_bytes:
            raise RequestBodyTooLarge(
                f"request body of {length} bytes exceeds this service's {self.max_body_bytes}"
            )
        return None
