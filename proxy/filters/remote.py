"""The terminal filter of a request for another region: forward it to that region's ELB.

Untouched by auth: the serving region checks the token in full (a proxy never vouches for a
request it did not check). The decision is sans-IO (`hop_mark`: the ``X-Gateway-Hop`` value
that proves the hop to the next proxy, `proxy.hop`; `proxy.forwarding` for the rest of the
headers); this module picks one of the region's ELBs and streams the exchange. A request that
arrives already marked and would leave again never gets here: route resolution answers 508
(`proxy.filters.route`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from httpio.balance import ServicePool
from httpio.errors import UpstreamError
from httpio.health import Outcome
from httpio.messages import Response
from httpio.upstream import UpstreamPool
from proxy.filters.chain import Exchange
from proxy.filters.forward import TrackedBody, relayed, request_body, upstream_headers
from proxy.hop import HOP_HEADER, sign_hop
from proxy.retry import FAILED_TRY, outcome_of

_HOP_HEADERS = frozenset({HOP_HEADER})


def hop_mark(keys: Sequence[bytes], region: str, request_id: bytes, now: float) -> bytes:
    """The mark our hop puts on a request leaving ``region``: signed with the newest key, or
    the bare region when there is none (it still marks the hop for loop detection; it proves
    nothing)."""
    return sign_hop(keys[-1], region, request_id, now) if keys else region.encode()


class RemoteForward:
    """``forward_to_region``: one of another region's ELBs."""

    name = "forward_to_region"

    def __init__(
        self,
        region: str,
        *,
        pool: ServicePool,
        upstream: UpstreamPool,
        via: bytes,
        local_region: str,
        hop_keys: Sequence[bytes],
    ) -> None:
        self.region = region
        self._pool = pool
        self._upstream = upstream
        self._via = via
        self._local_region = local_region
        self._hop_keys = tuple(hop_keys)

    def __repr__(self) -> str:
        return f"<RemoteForward {self.region} {self._pool!r}>"

    async def respond(self, ex: Exchange) -> Response:
        request = ex.request
        headers = upstream_headers(ex, self._via, _HOP_HEADERS)
        mark = hop_mark(self._hop_keys, self._local_region, ex.request_id, time.time())
        headers.append((HOP_HEADER, mark))
        body, _ = await request_body(request)
        pool = self._pool
        endpoint = pool.pick()
        ex.note.upstream = endpoint.url
        started = time.monotonic()
        pool.begin(endpoint)
        try:
            response = await self._upstream.request(
                endpoint.url, request.method, ex.target, headers, body
            )
            ex.note.upstream_ms = round((time.monotonic() - started) * 1000, 3)
        except UpstreamError as err:
            outcome = outcome_of(err)
            ex.note.failed_tries += ((endpoint.url, FAILED_TRY.get(outcome, outcome.value)),)
            pool.end(endpoint, outcome, time.monotonic() - started)
            raise
        except BaseException:
            pool.end(endpoint, Outcome.CANCELLED, time.monotonic() - started)
            raise
        return relayed(response, TrackedBody(response, pool, endpoint, started, None))
