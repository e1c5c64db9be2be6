"""The response hook every chain ends with: the upstream's headers as the client gets them.

Hop-by-hop headers go, ``Via`` gains our hop, and ``X-Request-ID`` is this request's, whatever
the upstream sent (`proxy.forwarding.client_response_headers`, pure). It sits just before the terminal,
so on the way back it is the first hook to see an upstream's answer: the cache stores what the
client would get, as it always did. Issue 11's response header rules (``set``, ``add``,
``remove``) go beside it, before it in the list, so they see these headers.
"""

from __future__ import annotations

from httpio.messages import Response
from proxy import forwarding
from proxy.filters.chain import Exchange


class ResponseHeaders:
    name = "response_headers"

    def __init__(self, via: bytes) -> None:
        self._via = via

    def __repr__(self) -> str:
        return f"<ResponseHeaders via={self._via.decode()!r}>"

    def on_response(self, ex: Exchange, response: Response) -> Response:
        response.headers = forwarding.client_response_headers(
            response.headers, via=self._via, request_id=ex.request_id
        )
        return response
