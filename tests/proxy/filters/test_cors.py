"""`proxy.filters.cors`: a browser's exact preflight, refusals without grants, wildcards,
credentials never with ``*``, ``Vary: Origin`` on actual responses."""

from __future__ import annotations

from httpio.messages import Response
from proxy.filters.cors import Cors, OriginRule
from tests.proxy.filters.edge import exchange
from topology.schema import CorsSpec

SPEC = CorsSpec(
    allow_origins=("https://app.example.com", "https://*.example.com"),
    allow_methods=("GET", "POST"),
    allow_headers=("Authorization", "Content-Type"),
    expose_headers=("X-Request-ID",),
    allow_credentials=True,
    max_age_s=600,
)
# What Chrome sends before a POST with a JSON body and a bearer token.
CHROME_PREFLIGHT = [
    (b"host", b"api.example.com"),
    (b"accept", b"*/*"),
    (b"access-control-request-method", b"POST"),
    (b"access-control-request-headers", b"authorization,content-type"),
    (b"origin", b"https://app.example.com"),
    (b"user-agent", b"Mozilla/5.0"),
    (b"sec-fetch-mode", b"cors"),
    (b"sec-fetch-site", b"same-site"),
    (b"sec-fetch-dest", b"empty"),
    (b"referer", b"https://app.example.com/"),
]


def test_a_browsers_preflight_is_answered_204_with_grants() -> None:
    answer = Cors(SPEC).on_request(exchange("OPTIONS", headers=CHROME_PREFLIGHT))
    assert isinstance(answer, Response) and answer.status == 204
    h = dict(answer.headers)
    assert h[b"access-control-allow-origin"] == b"https://app.example.com"
    assert h[b"access-control-allow-methods"] == b"GET, POST"
    assert h[b"access-control-allow-headers"] == b"authorization, content-type"
    assert h[b"access-control-allow-credentials"] == b"true"
    assert h[b"access-control-max-age"] == b"600"
    assert b"Origin" in h[b"vary"]


def test_a_disallowed_origin_method_or_header_gets_no_grant() -> None:
    cors = Cors(SPEC)
    for change in (
        (b"origin", b"https://evil.com"),
        (b"access-control-request-method", b"DELETE"),
        (b"access-control-request-headers", b"x-secret"),
    ):
        headers = [change if n == change[0] else (n, v) for n, v in CHROME_PREFLIGHT]
        answer = cors.on_request(exchange("OPTIONS", headers=headers))
        assert isinstance(answer, Response) and answer.status == 204
        assert b"access-control-allow-origin" not in dict(answer.headers)


def test_a_plain_options_goes_on() -> None:
    assert Cors(SPEC).on_request(exchange("OPTIONS", headers=[(b"origin", b"https://a.b")])) is None


def test_wildcard_origins_match_subdomains_only() -> None:
    rule = OriginRule.parse(("https://*.example.com",))
    assert rule.allows(b"https://a.example.com")
    assert rule.allows(b"https://a.b.example.com")
    assert not rule.allows(b"https://example.com")
    assert not rule.allows(b"http://a.example.com")
    assert not rule.allows(b"https://a.example.com.evil.net")
    assert not rule.allows(b"https://evilexample.com")


def test_actual_responses_echo_an_allowed_origin_never_star_with_credentials() -> None:
    cors = Cors(CorsSpec(allow_origins=("*",), allow_credentials=True))
    r = cors.on_response(exchange(headers=[(b"origin", b"https://x.org")]), Response(200))
    h = dict(r.headers)
    assert h[b"access-control-allow-origin"] == b"https://x.org"
    assert h[b"vary"] == b"Origin"
    star = Cors(CorsSpec(allow_origins=("*",)))
    r = star.on_response(exchange(headers=[(b"origin", b"https://x.org")]), Response(200))
    assert dict(r.headers)[b"access-control-allow-origin"] == b"*"


def test_a_disallowed_origin_gets_vary_and_no_grant() -> None:
    r = Cors(SPEC).on_response(exchange(headers=[(b"origin", b"https://evil.com")]), Response(200))
    assert r.headers == [(b"vary", b"Origin")]


def test_the_response_passed_in_is_not_edited() -> None:
    """The cache stores a streamed answer from the Response it passed on, at the body's end:
    a grant written into it would be stored and served to the next origin."""
    given = Response(200, [(b"content-type", b"text/plain")])
    out = Cors(SPEC).on_response(exchange(headers=[(b"origin", b"https://app.example.com")]), given)
    assert given.headers == [(b"content-type", b"text/plain")]
    assert dict(out.headers)[b"access-control-allow-origin"] == b"https://app.example.com"
