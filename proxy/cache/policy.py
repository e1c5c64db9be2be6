"""What the response cache may store, for how long, under which key, and what it may answer.

Pure functions over header lists and a ``now`` in wall-clock seconds; no I/O, no trio.

The gateway is a *shared* cache in RFC 9111 terms, so:

- only GET and HEAD are looked up; a request with ``Range`` is not (we store no partial
  content), ``Cache-Control: no-store`` skips the cache entirely and ``no-cache`` (or
  ``Pragma: no-cache``, RFC 9111 5.4) skips the lookup but stores the fresh answer;
- a response is stored only when its status is heuristically cacheable (RFC 9111 4.2.2)
  or it carries explicit freshness, it has no ``no-store``, ``private`` (3.5) or ``no-cache``
  (we do not revalidate with the origin, so "store but always revalidate" is "do not store"),
  no ``Set-Cookie``, and no ``Vary: *``; errors (>= 400) only when the operator opted in
  with ``cache_errors`` (the original cached every error for 30 s, outages included);
- a response to a request that carried credentials is stored only when it says it may be
  shared (RFC 9111 3.5: ``public``, ``s-maxage`` or ``must-revalidate``) *and* states its own
  lifetime (``s-maxage``, ``max-age`` or ``Expires``); the service's ``default_ttl_s`` never
  applies to it. Credentials are every form of token the proxy accepts (``Authorization``,
  ``AuthToken``: see `authsvc.tokens.extract_token`), ``Proxy-Authorization``, and ``Cookie``
  (Varnish's built-in VCL does not even look up a request with a cookie). That the proxy
  checks the token before it consults the cache decides who may *read* an entry, not what
  an entry may hold: a backend that answers ``/echo`` or ``/me`` with the caller's identity
  and no ``Cache-Control`` would otherwise hand Alice's answer, token included, to Bob;
- freshness otherwise: ``s-maxage`` beats ``max-age`` beats ``Expires - Date`` (4.2.1);
  without any, the service's ``default_ttl_s``: the operator marked the service cacheable
  and so declared its anonymous answers the same for everyone;
- age is RFC 9111 4.2.3 without the request-delay term: ``max(Age, now - Date)`` at
  storage, plus the time spent in the cache; every hit carries ``Age`` (5.1);
- conditional GET/HEAD are answered from the entry (RFC 9110 13.2.2): ``If-None-Match``
  with the weak comparison (8.8.3.2), and only without it, ``If-Modified-Since`` against
  ``Last-Modified``; a 304 carries the fields of RFC 9110 15.4.5.

Unkeyed inputs (cache poisoning, as in Kettle's "Practical Web Cache Poisoning"): what the
origin reads from a request must be in the key or keep the request out of the cache.
``Host`` and the forwarded-authority fields our own hops set are keyed (`keys`). Headers
that make common origin frameworks serve another URL or method (`ROUTING_HEADERS`:
``X-Original-URL``, ``X-Rewrite-URL``, ``X-HTTP-Method-Override``, ``X-Forwarded-Scheme``,
...) are set by no hop of ours, so a request carrying one *bypasses* the cache: neither
looked up nor stored, and still forwarded as sent. Stripping them instead would change what
origins see for clients that rely on them (method override behind restrictive proxies) and
is the forwarding layer's business, not the cache's; a bypass costs only the rare request
that has one. One that overrides the method to an unsafe one also invalidates (4.4). A
header an origin varies on without saying ``Vary`` is declared by the operator
(``cache: {key_headers: [...]}``) and keyed like a ``Vary`` the origin always sends.

A response with ``Vary`` stores a `VaryIndex` under the key (the header names, as Varnish
and nginx do) and the response under a variant key made from the request's values of those
headers. The index carries a random generation that is part of every variant key, so
deleting the index (a purge, an unsafe request) orphans all its variants at once: they can
no longer be reached and expire on their own.
"""

from __future__ import annotations

import enum
import secrets
from dataclasses import dataclass

from httpio.conditional import is_not_modified
from httpio.dates import parse_http_date
from httpio.protocol import Headers, header_value, header_values, strip_hop_by_hop
from proxy.cache import keys
from proxy.cache.records import CachedResponse, VaryIndex
from topology.schema import ServiceCacheSettings

# RFC 9111 4.2.2 via RFC 9110 15.1: heuristically cacheable status codes.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# Never stored whatever the headers say: interim, partial (no Range support), not-modified.
NEVER_STORED_STATUSES = frozenset({206, 304})
# Dropped from a stored response: recomputed on every hit (Content-Length by the server,
# Age and X-Cache by us).
# Per response, not per resource: a HIT gets its own (the trace headers and X-Request-ID
# name the request that filled the entry, W3C Trace Context's ``traceresponse`` included).
NOT_STORED_HEADERS = frozenset(
    {
        b"content-length",
        b"age",
        b"x-cache",
        b"x-request-id",
        b"traceparent",
        b"tracestate",
        b"traceresponse",
    }
)
# RFC 9110 15.4.5: what a 304 repeats of the 200 it stands for.
NOT_MODIFIED_HEADERS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"}
)
# A request carrying any of these is an authenticated one for RFC 9111 3.5.
CREDENTIAL_HEADERS = frozenset({b"authorization", b"authtoken", b"proxy-authorization", b"cookie"})
# Set by no hop of ours; they make IIS, Symfony, Laravel, Rails/Rack, Spring, Traefik or
# nginx-fronted apps serve another URL, scheme, prefix or method than the one in the key.
ROUTING_HEADERS = frozenset(
    {
        b"x-original-url",
        b"x-rewrite-url",
        b"x-original-uri",
        b"x-forwarded-uri",
        b"x-forwarded-path",
        b"x-forwarded-prefix",
        b"x-forwarded-scheme",
        b"x-forwarded-server",
        b"x-forwarded-ssl",
        b"x-url-scheme",
        b"x-host",
        b"x-original-host",
        b"x-http-method-override",
        b"x-http-method",
        b"x-method-override",
    }
)
METHOD_OVERRIDE_HEADERS = frozenset(
    {b"x-http-method-override", b"x-http-method", b"x-method-override"}
)
# What our hops (proxy.forwarding) tell the origin about the client's authority: keyed.
FORWARDED_HEADERS = frozenset(
    {b"x-forwarded-host", b"x-forwarded-proto", b"x-forwarded-port", b"forwarded"}
)
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


# -- header parsing ---------------------------------------------------------------------------
def parse_cache_control(headers: Headers) -> dict[str, str | None]:
    """Directives of every ``Cache-Control`` field, names lowercased, values unquoted."""
    return _directives(header_values(headers, b"cache-control"))


def _directives(values: list[bytes]) -> dict[str, str | None]:
    directives: dict[str, str | None] = {}
    for value in values:
        for part in value.decode("latin-1").split(","):
            name, sep, arg = part.strip().partition("=")
            name = name.strip().lower()
            if name and name not in directives:
                directives[name] = arg.strip().strip('"') if sep else None
    return directives


def _seconds(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value)


def parse_vary(headers: Headers) -> tuple[str, ...]:
    names: set[str] = set()
    for value in header_values(headers, b"vary"):
        for token in value.decode("latin-1").split(","):
            if token.strip():
                names.add(token.strip().lower())
    return tuple(sorted(names))


# -- requests ---------------------------------------------------------------------------------
class Lookup(enum.Enum):
    BYPASS = "bypass"  # neither read nor write the cache
    REFRESH = "refresh"  # do not answer from the cache, but store the new answer
    LOOKUP = "lookup"


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the cache needs of a request, read in one pass over its headers.

    ``authority`` is None when the request cannot be keyed (a Host we do not accept);
    ``unsafe``: a success must invalidate the target (RFC 9111 4.4)."""

    mode: Lookup
    reason: str
    authority: str | None
    authenticated: bool
    unsafe: bool
    cache_control: dict[str, str | None]


_NO_DIRECTIVES: dict[str, str | None] = {}
# name -> what it tells us; one dict probe per request header
_HOST, _CREDENTIAL, _ROUTING, _FORWARDED, _CACHE_CONTROL, _PRAGMA, _RANGE = range(7)
_FIELDS: dict[bytes, int] = {
    b"host": _HOST,
    b"cache-control": _CACHE_CONTROL,
    b"pragma": _PRAGMA,
    b"range": _RANGE,
    **dict.fromkeys(CREDENTIAL_HEADERS, _CREDENTIAL),
    **dict.fromkeys(ROUTING_HEADERS, _ROUTING),
    **dict.fromkeys(FORWARDED_HEADERS, _FORWARDED),
}


def examine_request(method: str, headers: Headers) -> RequestFacts:
    """Lookup mode, key authority and credentials of a request (names are lowercase, as
    `httpio` delivers them)."""
    host: bytes | None = None
    hosts = 0
    authenticated = False
    routing: list[tuple[bytes, bytes]] | None = None
    forwarded: list[tuple[bytes, bytes]] | None = None
    cache_control: list[bytes] | None = None
    pragma: list[bytes] | None = None
    ranged = False
    for name, value in headers:
        kind = _FIELDS.get(name)
        if kind is None:
            continue
        if kind == _HOST:
            host, hosts = value, hosts + 1
        elif kind == _CREDENTIAL:
            authenticated = True
        elif kind == _CACHE_CONTROL:
            cache_control = [*(cache_control or ()), value]
        elif kind == _FORWARDED:
            forwarded = [*(forwarded or ()), (name, value)]
        elif kind == _ROUTING:
            routing = [*(routing or ()), (name, value)]
        elif kind == _PRAGMA:
            pragma = [*(pragma or ()), value]
        else:
            ranged = True
    unsafe = method not in SAFE_METHODS or (
        routing is not None
        and any(
            n in METHOD_OVERRIDE_HEADERS and v.strip().upper() not in (b"GET", b"HEAD")
            for n, v in routing
        )
    )
    authority: str | None = ""
    if hosts > 1:
        authority = None
    elif host is not None:
        normal = keys.normalise_host(host)
        authority = None if normal is None else keys.authority_of(normal, forwarded)
    cc = _directives(cache_control) if cache_control is not None else _NO_DIRECTIVES

    mode, reason = lookup_mode(method, authority, routing is not None, ranged, cc, pragma)
    return RequestFacts(mode, reason, authority, authenticated, unsafe, cc)


def lookup_mode(
    method: str,
    authority: str | None,
    rerouted: bool,
    ranged: bool,
    cc: dict[str, str | None],
    pragma: list[bytes] | None,
) -> tuple[Lookup, str]:
    """Whether a request may read the cache, only refresh it, or neither, and why (the
    module header gives the rules, in this order)."""
    if method not in ("GET", "HEAD"):
        return Lookup.BYPASS, "method"
    if authority is None:
        return Lookup.BYPASS, "host"
    if rerouted:
        return Lookup.BYPASS, "routing header"
    if ranged:
        return Lookup.BYPASS, "range"
    if "no-store" in cc:
        return Lookup.BYPASS, "request no-store"
    if "no-cache" in cc or cc.get("max-age") == "0":
        return Lookup.REFRESH, "request no-cache"
    if not cc and pragma is not None and any(b"no-cache" in v.lower() for v in pragma):
        return Lookup.REFRESH, "request pragma no-cache"
    return Lookup.LOOKUP, ""


def request_accepts(cc: dict[str, str | None], entry: CachedResponse, now: float) -> bool:
    """Is the (fresh) entry acceptable to a request with these ``Cache-Control`` directives
    (``max-age``/``min-fresh``, RFC 9111 5.2.1)? We never serve stale entries, so
    ``max-stale`` does not matter."""
    if entry.remaining_s(now) <= 0:
        return False
    if not cc:
        return True
    max_age = _seconds(cc.get("max-age"))
    if max_age is not None and entry.age(now) > max_age:
        return False
    min_fresh = _seconds(cc.get("min-fresh"))
    return min_fresh is None or entry.remaining_s(now) >= min_fresh


# -- responses --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class StoreVerdict:
    """``lifetime_s`` > 0 means storable; otherwise ``reason`` says why not."""

    lifetime_s: float
    initial_age_s: float
    vary: tuple[str, ...]
    reason: str

    @property
    def storable(self) -> bool:
        return self.lifetime_s > self.initial_age_s

    @property
    def ttl_s(self) -> float:
        return self.lifetime_s - self.initial_age_s


def _refuse(reason: str) -> StoreVerdict:
    return StoreVerdict(0.0, 0.0, (), reason)


def decide_storage(
    status: int,
    headers: Headers,
    settings: ServiceCacheSettings,
    now: float,
    *,
    authenticated: bool,
) -> StoreVerdict:
    """May this response be stored, for how long, under which Vary names? ``authenticated``:
    the request carried credentials (`RequestFacts.authenticated`)."""
    if status < 200 or status in NEVER_STORED_STATUSES:
        return _refuse(f"status {status}")
    if status >= 400 and not settings.cache_errors:
        return _refuse(f"error status {status}")
    cc = parse_cache_control(headers)
    for directive in ("no-store", "private", "no-cache"):
        if directive in cc:
            return _refuse(f"response {directive}")
    if header_values(headers, b"set-cookie"):
        return _refuse("set-cookie")
    vary = parse_vary(headers)
    if "*" in vary:
        return _refuse("vary *")
    if authenticated and not ("public" in cc or "s-maxage" in cc or "must-revalidate" in cc):
        return _refuse("authenticated request, response not marked shareable")
    if settings.key_headers:
        vary = tuple(sorted({*vary, *settings.key_headers}))
    date = parse_http_date(header_value(headers, b"date"))
    lifetime: float | None = None
    if (s_maxage := _seconds(cc.get("s-maxage"))) is not None:
        lifetime = s_maxage
    elif (max_age := _seconds(cc.get("max-age"))) is not None:
        lifetime = max_age
    elif (expires_field := header_value(headers, b"expires")) is not None:
        # An invalid Expires (e.g. "0") means "already expired" (RFC 9111 5.3).
        expires = parse_http_date(expires_field)
        lifetime = 0.0 if expires is None else max(0.0, expires - (date or now))
    elif authenticated:
        return _refuse("authenticated request, no explicit lifetime")
    elif status in HEURISTIC_STATUSES or "public" in cc:
        lifetime = settings.default_ttl_s
    if lifetime is None:
        return _refuse(f"no freshness for status {status}")
    age_value = _seconds((header_value(headers, b"age") or b"").decode("latin-1")) or 0
    apparent_age = max(0.0, now - date) if date is not None else 0.0
    initial_age = max(float(age_value), apparent_age)
    if lifetime <= initial_age:
        return _refuse("stale on arrival")
    return StoreVerdict(float(lifetime), initial_age, vary, "")


def headers_to_store(headers: Headers, date: bytes) -> list[tuple[bytes, bytes]]:
    """End-to-end headers, names lowercased, with a ``Date`` if the origin sent none (RFC
    9110 6.6.1: a cache adds one)."""
    kept = [
        (n.lower(), v)
        for n, v in strip_hop_by_hop([(n.lower(), v) for n, v in headers])
        if n.lower() not in NOT_STORED_HEADERS
    ]
    if header_value(kept, b"date") is None:
        kept.append((b"date", date))
    return kept


def make_entry(
    status: int, headers: Headers, body: bytes, verdict: StoreVerdict, now: float, date: bytes
) -> CachedResponse:
    return CachedResponse(
        status,
        headers_to_store(headers, date),
        body,
        now,
        verdict.initial_age_s,
        verdict.lifetime_s,
    )


def new_vary_index(names: tuple[str, ...], expires_at: float) -> VaryIndex:
    return VaryIndex(names, secrets.token_hex(4), expires_at)


# -- conditional requests ---------------------------------------------------------------------
def entry_not_modified(request_headers: Headers, entry: CachedResponse) -> bool:
    """Whether a conditional GET/HEAD is answered 304 from ``entry`` (`httpio.conditional`)."""
    headers = entry.headers
    return is_not_modified(
        request_headers, header_value(headers, b"etag"), header_value(headers, b"last-modified")
    )


def not_modified_headers(entry_headers: Headers) -> list[tuple[bytes, bytes]]:
    has_etag = header_value(entry_headers, b"etag") is not None
    return [
        (n, v)
        for n, v in entry_headers
        if n in NOT_MODIFIED_HEADERS or (n == b"last-modified" and not has_etag)
    ]


# -- keys -------------------------------------------------------------------------------------
def variant_key(base: str, index: VaryIndex, request_headers: Headers) -> str:
    """The variant of ``base`` this request selects: its values of the index's names, each
    field list joined as RFC 9111 4.1 allows."""
    parts = []
    for name in index.names:
        encoded = name.encode("latin-1")
        values = [v.strip() for n, v in request_headers if n == encoded]
        parts.append((encoded, b", ".join(values)))
    return keys.variant_key(base, index.generation, parts)
