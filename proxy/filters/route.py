"""Where a request goes: which region, which service, which upstream path. Pure logic.

A request ``/<service>/<rest>?<query>`` is served by ``<service>`` as ``/<rest>?<query>``
(the original dropped the query string; we keep it, byte for byte).

The region comes from, in order:
1. ``X-Region: <code>``: explicit; an unknown code is a 404, as in the original.
2. ``Accept-Language: <code>`` when the whole value has the shape of a region code
   (``ko_KR``): the original's clients put the code there. A browser's language list
   (``ko-KR,ko;q=0.9``) is not a region request and is ignored.
3. Otherwise the proxy's own region.

A request for another region goes to that region's ELB carrying ``X-Gateway-Hop``; a proxy
that receives a marked request which it would forward again answers 508 (RFC 5842 7.2)
instead of bouncing it between regions.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass

from httpio.errors import LoopDetected, RouteNotFound
from httpio.protocol import Headers
from proxy.hop import HOP_HEADER

_REGION_SHAPE = re.compile(rb"^[a-z]{2,3}_[A-Z]{2}$")


class Local:
    """To ``service`` of this region; ``target``: what its instance sees, ``/<rest>?<query>``.
    A value written out, not a frozen dataclass: see `proxy.auth.Allowed`."""

    __slots__ = ("service", "target")

    def __init__(self, service: str, target: str) -> None:
        self.service = service
        self.target = target

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Local) and (other.service, other.target) == (
            self.service,
            self.target,
        )

    def __hash__(self) -> int:
        return hash((self.service, self.target))

    def __repr__(self) -> str:
        return f"Local(service={self.service!r}, target={self.target!r})"


@dataclass(frozen=True, slots=True)
class Remote:
    region: str


def requested_region(headers: Headers) -> str | None:
    explicit = language = None
    for name, value in headers:
        if name == b"x-region":
            explicit = value.strip()
        elif name == b"accept-language":
            language = value.strip()
    if explicit:
        return explicit.decode("latin-1")
    if language and _REGION_SHAPE.match(language):
        return language.decode("latin-1")
    return None


def split_service(path: str, query: str) -> tuple[str, str]:
    """``/image/a/b`` -> ``("image", "/a/b")``; the query string rides along."""
    if not path.startswith("/"):
        raise RouteNotFound(f"request target {path!r} is not an origin-form path")
    service, _, rest = path[1:].partition("/")
    if not service:
        raise RouteNotFound("no service in the path: expected /<service>/<path>")
    target = "/" + rest
    if query:
        target += "?" + query
    return service, target


def route(
    path: str,
    query: str,
    headers: Headers,
    *,
    local_region: str,
    regions: Collection[str],
    services: Collection[str],
) -> Local | Remote:
    region = requested_region(headers) or local_region
    if region not in regions:
        raise RouteNotFound(f"unknown region {region!r}")
    if region != local_region:
        if any(name == HOP_HEADER for name, _ in headers):
            raise LoopDetected(f"request already forwarded once, and region {region!r} is not here")
        return Remote(region)
    service, target = split_service(path, query)
    if service not in services:
        raise RouteNotFound(f"no service {service!r} in region {local_region!r}")
    return Local(service, target)
