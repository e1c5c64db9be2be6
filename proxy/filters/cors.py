"""``cors``: preflights answered at the gateway, grants added to actual responses (Fetch
standard, "CORS protocol").

A preflight is an ``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``; it is
answered 204 here, before the token check (browsers never send credentials on a preflight) and
without reaching a backend. An origin or method not allowed gets a 204 with no grant, which
the browser reads as a refusal; nothing says why, as a grant list is no one else's business.

An actual response carries ``Access-Control-Allow-Origin`` with the request's own origin when
it is allowed. ``*`` is sent only for an ``allow_origins: ["*"]`` without credentials; with
credentials the origin is echoed (the Fetch standard refuses ``*`` with credentials).
``Vary: Origin`` goes on every response of a CORS service. The filter sits before the cache,
so a grant is computed for each request on the way out and a stored answer carries none:
one origin's grant is never served to another.

Origins are compared exactly (scheme, host, port; ASCII case-insensitive); an entry
``https://*.example.com`` matches one or more labels before ``.example.com``, never the bare
``example.com`` and never another scheme.
"""

from __future__ import annotations

from dataclasses import dataclass

from httpio.messages import Response
from httpio.protocol import Headers, header_value
from proxy.filters.chain import Exchange, RequestAnswer
from topology.schema import CorsSpec

_VARY_PREFLIGHT = b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
_VARY_ORIGIN = (b"vary", b"Origin")


@dataclass(frozen=True, slots=True)
class OriginRule:
    exact: frozenset[bytes]
    suffixes: tuple[tuple[bytes, bytes], ...]  # (scheme://, .domain[:port])
    any_origin: bool

    @classmethod
    def parse(cls, origins: tuple[str, ...]) -> OriginRule:
        exact: set[bytes] = set()
        suffixes: list[tuple[bytes, bytes]] = []
        for o in origins:
            low = o.lower().encode("ascii")
            if low == b"*":
                continue
            scheme, sep, rest = low.partition(b"://")
            if not sep or not scheme or not rest:
                raise ValueError(f"origin {o!r} is not scheme://host[:port]")
            if rest.startswith(b"*."):
                suffixes.append((scheme + b"://", rest[1:]))
            elif b"*" in rest or b"/" in rest:
                raise ValueError(f"origin {o!r}: '*' only as the first label, and no path")
            else:
                exact.add(low)
        return cls(frozenset(exact), tuple(suffixes), "*" in origins)

    def allows(self, origin: bytes) -> bool:
        low = origin.lower()
        if self.any_origin or low in self.exact:
            return True
        for scheme, suffix in self.suffixes:
            if low.startswith(scheme) and low.endswith(suffix):
                label = low[len(scheme) : len(low) - len(suffix)]
                if label and b"/" not in label and b"@" not in label:
                    return True
        return False


def preflight_headers(spec: CorsSpec, rule: OriginRule, headers: Headers) -> Headers:
    """The headers of the 204 answering a preflight: grants, or none but ``Vary``."""
    origin = method = requested = None
    for name, value in headers:
        if name == b"origin":
            origin = value
        elif name == b"access-control-request-method":
            method = value.strip()
        elif name == b"access-control-request-headers":
            requested = value if requested is None else requested + b"," + value
    out: Headers = [(b"vary", _VARY_PREFLIGHT)]
    if origin is None or method is None or not rule.allows(origin):
        return out
    if method.decode("latin-1") not in spec.allow_methods:
        return out
    allowed_headers = {h.lower() for h in spec.allow_headers}
    asked = [h.strip() for h in (requested or b"").decode("latin-1").split(",") if h.strip()]
    if any(h.lower() not in allowed_headers for h in asked):
        return out
    out.append((b"access-control-allow-origin", allow_origin_value(spec, rule, origin)))
    out.append((b"access-control-allow-methods", ", ".join(spec.allow_methods).encode()))
    if asked:
        out.append((b"access-control-allow-headers", ", ".join(asked).encode("latin-1")))
    if spec.allow_credentials:
        out.append((b"access-control-allow-credentials", b"true"))
    out.append((b"access-control-max-age", str(spec.max_age_s).encode()))
    return out


def allow_origin_value(spec: CorsSpec, rule: OriginRule, origin: bytes) -> bytes:
    return b"*" if rule.any_origin and not spec.allow_credentials else origin


def is_preflight(ex: Exchange) -> bool:
    request = ex.request
    return (
        request.method == "OPTIONS"
        and request.header(b"origin") is not None
        and request.header(b"access-control-request-method") is not None
    )


class Cors:
    name = "cors"

    def __init__(self, spec: CorsSpec) -> None:
        self.spec = spec
        self.rule = OriginRule.parse(spec.allow_origins)
        self._expose = ", ".join(spec.expose_headers).encode()
        # what follows Access-Control-Allow-Origin on an allowed origin's answer: constant
        tail: Headers = []
        if spec.allow_credentials:
            tail.append((b"access-control-allow-credentials", b"true"))
        if self._expose:
            tail.append((b"access-control-expose-headers", self._expose))
        self._grant_tail = tuple(tail)

    def __repr__(self) -> str:
        return f"<Cors origins={len(self.spec.allow_origins)}>"

    def settings(self) -> dict[str, object]:
        return {
            "allow_origins": list(self.spec.allow_origins),
            "allow_methods": list(self.spec.allow_methods),
        }

    def on_request(self, ex: Exchange) -> RequestAnswer:
        if is_preflight(ex):
            return Response(204, preflight_headers(self.spec, self.rule, ex.request.headers))
        return None

    def on_response(self, ex: Exchange, response: Response) -> Response:
        if response.status == 204 and is_preflight(ex):
            return response
        # A new Response, not an edit: the cache stores a streamed answer when its body ends,
        # from the Response it passed on, and a grant must never be stored.
        origin = header_value(ex.request.headers, b"origin")
        if origin is None or not self.rule.allows(origin):
            return Response(response.status, [*response.headers, _VARY_ORIGIN], response.body)
        grant = (b"access-control-allow-origin", allow_origin_value(self.spec, self.rule, origin))
        headers = [*response.headers, _VARY_ORIGIN, grant, *self._grant_tail]
        return Response(response.status, headers, response.body)
