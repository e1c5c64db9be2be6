from __future__ import annotations

from collections.abc import Sequence
from email.utils import formatdate

import msgspec
import pytest

from proxy.cache.policy import (
    Lookup,
    StoreVerdict,
    decide_storage,
    entry_not_modified,
    examine_request,
    headers_to_store,
    make_entry,
    not_modified_headers,
    parse_cache_control,
    request_accepts,
    variant_key,
)
from proxy.cache.records import CachedResponse, VaryIndex, decode_stored, encode_stored
from topology.schema import CacheSettings, ServiceCacheSettings

NOW = 1_700_000_000.0
ON = ServiceCacheSettings(enabled=True, default_ttl_s=30.0)


def http_date(t: float) -> bytes:
    return formatdate(t, usegmt=True).encode()


def verdict(
    status: int = 200,
    headers: Sequence[tuple[bytes, bytes]] = (),
    settings: ServiceCacheSettings = ON,
    now: float = NOW,
    *,
    authenticated: bool = False,
) -> StoreVerdict:
    return decide_storage(status, list(headers), settings, now, authenticated=authenticated)


# -- settings ---------------------------------------------------------------------------------
def test_settings_reject_unknown_fields_and_bad_values():
    assert msgspec.convert({"enabled": True}, ServiceCacheSettings).default_ttl_s == 30.0
    with pytest.raises(msgspec.ValidationError, match="ttl"):
        msgspec.convert({"enabled": True, "ttl": 5}, ServiceCacheSettings)
    with pytest.raises(msgspec.ValidationError, match="breaker_failures"):
        msgspec.convert({"breaker_failures": 0}, CacheSettings)
    assert CacheSettings().namespace == "gw:v2"


# -- requests ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        ("GET", [], Lookup.LOOKUP),
        ("HEAD", [], Lookup.LOOKUP),
        ("POST", [], Lookup.BYPASS),
        ("GET", [(b"cache-control", b"no-store")], Lookup.BYPASS),
        ("GET", [(b"range", b"bytes=0-10")], Lookup.BYPASS),
        ("GET", [(b"cache-control", b"no-cache")], Lookup.REFRESH),
        ("GET", [(b"cache-control", b"max-age=0")], Lookup.REFRESH),
        ("GET", [(b"pragma", b"no-cache")], Lookup.REFRESH),
        ("GET", [(b"cache-control", b"max-age=5")], Lookup.LOOKUP),
    ],
)
def test_classify_request(method, headers, expected):
    assert examine_request(method, headers).mode is expected


def test_cache_control_parsing_joins_fields_and_unquotes():
    cc = parse_cache_control(
        [(b"cache-control", b'Public, Max-Age="60"'), (b"cache-control", b"s-maxage=10")]
    )
    assert cc == {"public": None, "max-age": "60", "s-maxage": "10"}


def test_request_max_age_and_min_fresh_limit_what_a_hit_may_be():
    entry = CachedResponse(200, [], b"x", NOW, 0.0, 60.0)
    later = NOW + 20

    def accepts(headers: list[tuple[bytes, bytes]], now: float = later) -> bool:
        return request_accepts(parse_cache_control(headers), entry, now)

    assert accepts([])
    assert not accepts([(b"cache-control", b"max-age=10")])
    assert accepts([(b"cache-control", b"max-age=30")])
    assert not accepts([(b"cache-control", b"min-fresh=50")])
    assert not accepts([], NOW + 60)  # never stale


# -- storability ------------------------------------------------------------------------------
def test_plain_200_gets_the_service_default_ttl():
    v = verdict()
    assert v.storable and v.ttl_s == 30.0 and v.vary == ()


@pytest.mark.parametrize(
    ("headers", "reason"),
    [
        ([(b"cache-control", b"no-store")], "response no-store"),
        ([(b"cache-control", b"private, max-age=60")], "response private"),
        ([(b"cache-control", b"no-cache")], "response no-cache"),
        ([(b"set-cookie", b"sid=1")], "set-cookie"),
        ([(b"vary", b"Accept, *")], "vary *"),
        ([(b"expires", b"0")], "stale on arrival"),
        ([(b"cache-control", b"max-age=0")], "stale on arrival"),
    ],
)
def test_unstorable_responses(headers, reason):
    v = verdict(headers=headers)
    assert not v.storable
    assert v.reason == reason


def test_errors_are_stored_only_when_the_operator_opts_in():
    assert verdict(404).reason == "error status 404"
    assert verdict(503).reason == "error status 503"
    errors_ok = ServiceCacheSettings(enabled=True, cache_errors=True)
    assert verdict(404, settings=errors_ok).storable
    # 503 is not heuristically cacheable: only with explicit freshness
    assert not verdict(503, settings=errors_ok).storable
    assert verdict(503, [(b"cache-control", b"max-age=5")], settings=errors_ok).storable


def test_statuses_outside_the_heuristic_set_need_explicit_freshness():
    assert not verdict(302).storable
    assert verdict(302, [(b"cache-control", b"max-age=60")]).ttl_s == 60
    assert verdict(302, [(b"cache-control", b"public")]).ttl_s == 30
    assert not verdict(206, [(b"cache-control", b"max-age=60")]).storable
    assert not verdict(304).storable


def test_s_maxage_beats_max_age_beats_expires():
    both = [(b"cache-control", b"max-age=100, s-maxage=7"), (b"expires", http_date(NOW + 500))]
    assert verdict(headers=both).ttl_s == 7
    assert verdict(headers=[(b"cache-control", b"max-age=100")]).ttl_s == 100
    expires = [(b"date", http_date(NOW)), (b"expires", http_date(NOW + 500))]
    assert verdict(headers=expires).ttl_s == 500


def test_expires_is_measured_from_date_and_age_from_the_age_header():
    # Expires - Date, not Expires - now: the origin's clock need not match ours
    slow_origin = [(b"date", http_date(NOW - 10)), (b"expires", http_date(NOW + 110))]
    v = verdict(headers=slow_origin)
    assert (v.lifetime_s, v.initial_age_s, v.ttl_s) == (120, 10, 110)
    # a response dated 1000 s ago with 120 s of life arrives stale (RFC 9111 4.2.3)
    old = [(b"date", http_date(NOW - 1000)), (b"expires", http_date(NOW - 880))]
    assert verdict(headers=old).reason == "stale on arrival"
    aged = [(b"cache-control", b"max-age=60"), (b"age", b"45"), (b"date", http_date(NOW))]
    v = verdict(headers=aged)
    assert v.initial_age_s == 45 and v.ttl_s == 15


def test_vary_names_are_normalised():
    v = verdict(headers=[(b"vary", b"Accept-Encoding, accept-language"), (b"vary", b"Accept")])
    assert v.vary == ("accept", "accept-encoding", "accept-language")


def test_stored_headers_drop_hop_by_hop_and_recomputed_fields_and_add_date():
    stored = headers_to_store(
        [
            (b"Content-Type", b"text/plain"),
            (b"connection", b"x-trace"),
            (b"x-trace", b"1"),
            (b"transfer-encoding", b"chunked"),
            (b"content-length", b"5"),
            (b"age", b"3"),
            (b"x-cache", b"MISS"),
        ],
        http_date(NOW),
    )
    assert stored == [(b"content-type", b"text/plain"), (b"date", http_date(NOW))]


def test_what_names_one_request_is_not_stored():
    """A HIT gets its own request id and trace context, not the filling request's."""
    stored = headers_to_store(
        [
            (b"etag", b'"a"'),
            (b"X-Request-ID", b"filler"),
            (b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            (b"tracestate", b"v=1"),
            (b"traceresponse", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ],
        http_date(NOW),
    )
    assert stored == [(b"etag", b'"a"'), (b"date", http_date(NOW))]


def test_entries_round_trip_through_msgpack_and_report_their_age():
    entry = make_entry(200, [(b"etag", b'"a"')], b"body", verdict(), NOW, http_date(NOW))
    index = VaryIndex(("accept",), "0a1b", NOW + 30)
    assert decode_stored(encode_stored(entry)) == entry
    assert decode_stored(encode_stored(index)) == index
    assert decode_stored(b"not msgpack \xc1") is None
    assert entry.age(NOW + 12) == 12 and entry.remaining_s(NOW + 12) == 18


# -- conditional requests ---------------------------------------------------------------------
ENTRY_HEADERS = [
    (b"etag", b'W/"v1"'),
    (b"last-modified", http_date(NOW - 3600)),
    (b"content-type", b"image/png"),
    (b"cache-control", b"max-age=60"),
    (b"date", http_date(NOW)),
]


def test_is_not_modified():
    """The entry's validators go to `httpio.conditional` (whose own tests hold the cases)."""
    entry = CachedResponse(200, ENTRY_HEADERS, b"png", NOW, 0.0, 60.0)
    assert entry_not_modified([(b"if-none-match", b'"v1"')], entry)
    assert not entry_not_modified([(b"if-none-match", b'"v2"')], entry)
    assert entry_not_modified([(b"if-modified-since", http_date(NOW - 3600))], entry)
    assert not entry_not_modified([], entry)


def test_304_keeps_the_validators_and_cache_fields_only():
    names = [n for n, _ in not_modified_headers(ENTRY_HEADERS)]
    assert names == [b"etag", b"cache-control", b"date"]
    without_etag = [h for h in ENTRY_HEADERS if h[0] != b"etag"]
    assert b"last-modified" in [n for n, _ in not_modified_headers(without_etag)]


# -- keys -------------------------------------------------------------------------------------
def test_variant_keys_follow_the_varied_request_headers_only():
    index = VaryIndex(("accept-language",), "g1", NOW + 30)
    base = "gw:v2:ko_KR:image://h/a"
    ko = variant_key(base, index, [(b"accept-language", b"ko"), (b"x-other", b"1")])
    ko_again = variant_key(base, index, [(b"accept-language", b"ko"), (b"x-other", b"2")])
    en = variant_key(base, index, [(b"accept-language", b"en")])
    assert ko == ko_again != en
    assert ko.startswith(base + "|v=g1:")
    other_generation = VaryIndex(("accept-language",), "g2", NOW + 30)
    assert variant_key(base, other_generation, [(b"accept-language", b"ko")]) != ko
