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
- freshness: ``s-maxage`` beats ``max-age`` beats ``Expires - Date`` (4.2.1); without any, the
  service's ``default_ttl_s``: the operator marked the service cacheable and so declared
  its answers the same for every authorised caller. For the same reason a request's
  ``Authorization`` does not make the response unstorable (3.5): the proxy authenticates
  before it consults the cache, so a hit is never served to an unauthenticated client;
- age is RFC 9111 4.2.3 without the request-delay term: ``max(Age, now - Date)`` at
  storage, plus the time spent in the cache; every hit carries ``Age`` (5.1);
- conditional GET/HEAD are answered from the entry (RFC 9110 13.2.2): ``If-None-Match``
  with the weak comparison (8.8.3.2), and only without it, ``If-Modified-Since`` against
  ``Last-Modified``; a 304 carries the fields of RFC 9110 15.4.5.

Keys: ``namespace:region:service:path?query``, readable so an operator can purge by
prefix (``gw:v1:ko_KR:image:/thumbs/``). A key longer than `MAX_KEY_CHARS` keeps its first
`READABLE_CHARS` and ends with the sha256 of the whole. A response with ``Vary`` stores a
`VaryIndex` under the key (the header names, as Varnish and nginx do) and the response
under a variant key made from the request's values of those headers. The index carries a
random generation that is part of every variant key, so deleting the index (a purge, an
unsafe request) orphans all its variants at once: they can no longer be reached and
expire on their own.
"""

from __future__ import annotations

import enum
import hashlib
import re
import secrets
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Annotated

import msgspec

from httpio.protocol import Headers, header_value, strip_hop_by_hop

MiB = 1_048_576
MAX_KEY_CHARS = 512
READABLE_CHARS = 200
VARIANT_MARK = "|v="

# RFC 9111 4.2.2 via RFC 9110 15.1: heuristically cacheable status codes.
HEURISTIC_STATUSES = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# Never stored whatever the headers say: interim, partial (no Range support), not-modified.
NEVER_STORED_STATUSES = frozenset({206, 304})
# Dropped from a stored response: recomputed on every hit (Content-Length by the server,
# Age and X-Cache by us).
NOT_STORED_HEADERS = frozenset({b"content-length", b"age", b"x-cache"})
# RFC 9110 15.4.5: what a 304 repeats of the 200 it stands for.
NOT_MODIFIED_HEADERS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary"}
)


# -- settings ---------------------------------------------------------------------------------
class ServiceCacheSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``cache:`` of one service in msa.yaml."""

    enabled: bool = False
    default_ttl_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    max_body_bytes: Annotated[int, msgspec.Meta(ge=0)] = 2 * MiB
    cache_errors: bool = False


class CacheSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The cache section of config.json, shared by all services of a proxy.

    ``memory_max_bytes`` bounds the per-process tier; ``memory_max_object_bytes`` keeps a
    few large bodies from flushing many small ones. Redis timeouts are short because a
    cache slower than the backend is worse than none; after ``breaker_failures`` failures
    in a row Redis is skipped for ``breaker_open_s``. A request waiting for another's
    identical fetch gives up after ``coalesce_timeout_s`` and fetches itself.
    """

    memory_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 64 * MiB
    memory_max_object_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1 * MiB
    redis_connect_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 0.2
    redis_command_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 0.2
    breaker_failures: Annotated[int, msgspec.Meta(ge=1)] = 3
    breaker_open_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    coalesce_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    namespace: str = "gw:v1"


# -- stored records ---------------------------------------------------------------------------
class CachedResponse(msgspec.Struct, frozen=True, array_like=True, tag="r"):
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    stored_at: float  # wall-clock seconds when the response arrived
    initial_age_s: float  # corrected_initial_age, RFC 9111 4.2.3
    lifetime_s: float  # freshness_lifetime, RFC 9111 4.2.1

    def age(self, now: float) -> float:
        return self.initial_age_s + max(0.0, now - self.stored_at)

    def remaining_s(self, now: float) -> float:
        return self.lifetime_s - self.age(now)

    def size(self) -> int:
        return len(self.body) + sum(len(n) + len(v) + 16 for n, v in self.headers) + 64


class VaryIndex(msgspec.Struct, frozen=True, array_like=True, tag="v"):
    names: tuple[str, ...]  # lowercase, sorted
    generation: str
    expires_at: float

    def size(self) -> int:
        return sum(len(n) for n in self.names) + 64


Stored = CachedResponse | VaryIndex
encode_stored = msgspec.msgpack.Encoder().encode
_decoder = msgspec.msgpack.Decoder(Stored)


def decode_stored(data: bytes) -> Stored | None:
    """None for anything we did not write (another namespace version, a stray key)."""
    try:
        value: Stored = _decoder.decode(data)
    except msgspec.DecodeError:
        return None
    return value


# -- header parsing ---------------------------------------------------------------------------
def header_values(headers: Headers, name: bytes) -> list[bytes]:
    return [v for n, v in headers if n.lower() == name]


def parse_cache_control(headers: Headers) -> dict[str, str | None]:
    """Directives of every ``Cache-Control`` field, names lowercased, values unquoted."""
    directives: dict[str, str | None] = {}
    for value in header_values(headers, b"cache-control"):
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


def parse_http_date(value: bytes | None) -> float | None:
    if value is None:
        return None
    try:
        return parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_vary(headers: Headers) -> tuple[str, ...]:
    names: set[str] = set()
    for value in header_values(headers, b"vary"):
        for token in value.decode("latin-1").split(","):
            if token.strip():
                names.add(token.strip().lower())
    return tuple(sorted(names))


_ETAG = re.compile(r'(W/)?"[^"]*"')


def _opaque_tags(value: bytes) -> set[str]:
    """Entity tags of an ``If-None-Match``/``ETag`` list, weak prefix dropped (8.8.3.2)."""
    text = value.decode("latin-1")
    return {m.group(0).removeprefix("W/") for m in _ETAG.finditer(text)}


# -- requests ---------------------------------------------------------------------------------
class Lookup(enum.Enum):
    BYPASS = "bypass"  # neither read nor write the cache
    REFRESH = "refresh"  # do not answer from the cache, but store the new answer
    LOOKUP = "lookup"


def classify_request(method: str, headers: Headers) -> tuple[Lookup, str]:
    if method not in ("GET", "HEAD"):
        return Lookup.BYPASS, "method"
    if header_value(headers, b"range") is not None:
        return Lookup.BYPASS, "range"
    cc = parse_cache_control(headers)
    if "no-store" in cc:
        return Lookup.BYPASS, "request no-store"
    if "no-cache" in cc or cc.get("max-age") == "0":
        return Lookup.REFRESH, "request no-cache"
    if not cc and any(b"no-cache" in v.lower() for v in header_values(headers, b"pragma")):
        return Lookup.REFRESH, "request pragma no-cache"
    return Lookup.LOOKUP, ""


def request_accepts(headers: Headers, entry: CachedResponse, now: float) -> bool:
    """Is the (fresh) entry acceptable to this request's ``max-age``/``min-fresh``
    (RFC 9111 5.2.1)? We never serve stale entries, so ``max-stale`` does not matter."""
    if entry.remaining_s(now) <= 0:
        return False
    cc = parse_cache_control(headers)
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
    status: int, headers: Headers, settings: ServiceCacheSettings, now: float
) -> StoreVerdict:
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
def is_not_modified(request_headers: Headers, entry_headers: Headers) -> bool:
    """RFC 9110 13.2.2 steps 3 and 4 for a GET/HEAD answered by the cache."""
    if_none_match = header_values(request_headers, b"if-none-match")
    if if_none_match:
        etag = header_value(entry_headers, b"etag")
        if any(v.strip() == b"*" for v in if_none_match):
            return True
        if etag is None:
            return False
        wanted: set[str] = set()
        for value in if_none_match:
            wanted |= _opaque_tags(value)
        return bool(_opaque_tags(etag) & wanted)
    since = parse_http_date(header_value(request_headers, b"if-modified-since"))
    modified = parse_http_date(header_value(entry_headers, b"last-modified"))
    return since is not None and modified is not None and modified <= since


def not_modified_headers(entry_headers: Headers) -> list[tuple[bytes, bytes]]:
    has_etag = header_value(entry_headers, b"etag") is not None
    return [
        (n, v)
        for n, v in entry_headers
        if n in NOT_MODIFIED_HEADERS or (n == b"last-modified" and not has_etag)
    ]


# -- keys -------------------------------------------------------------------------------------
def cache_key(namespace: str, region: str, service: str, path_and_query: str) -> str:
    key = f"{namespace}:{region}:{service}:{path_and_query}"
    if len(key) <= MAX_KEY_CHARS:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{key[:READABLE_CHARS]}#{digest}"


def variant_key(base: str, index: VaryIndex, request_headers: Headers) -> str:
    parts = []
    for name in index.names:
        values = header_values(request_headers, name.encode("latin-1"))
        parts.append(name + ":" + b", ".join(v.strip() for v in values).decode("latin-1"))
    digest = hashlib.sha256("\n".join(parts).encode("latin-1")).hexdigest()[:32]
    return f"{base}{VARIANT_MARK}{index.generation}:{digest}"


def is_key_or_variant(candidate: str, key: str) -> bool:
    return candidate == key or candidate.startswith(key + VARIANT_MARK)
