"""What the edge filters' tests share: an `Exchange` for a request given by its parts."""

from __future__ import annotations

from httpio.messages import Request
from httpio.protocol import Headers
from proxy.filters.chain import Exchange


def exchange(
    method: str = "GET",
    path: str = "/s/x",
    headers: Headers | None = None,
    client: str = "127.0.0.1",
) -> Exchange:
    request = Request(method, path, path, "", list(headers or []), "1.1", (client, 1), None)  # type: ignore[arg-type]
    return Exchange(request, b"id-1", "/x", False)
