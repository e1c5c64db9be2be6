"""Issue 11's filters in a real `ProxyApp` over real sockets (one process, a real backend):
explicit routes with ``strip_prefix`` and 405 ``Allow``, a preflight that never reaches the
backend, a 429 with its headers, 403 by address, 413 by declared length, header rules, the
order of every filter in a chain, and ``/admin/config`` with its secrets redacted."""

from __future__ import annotations

import json
from dataclasses import replace

import msgspec

from proxy.filters.chains import Chains
from tests.proxy.test_app import Backend, direct_request, make_config, proxy_for, service, serving
from topology.schema import (
    AuthKey,
    CorsSpec,
    HeaderRules,
    RateLimitDefault,
    RateLimitSpec,
    RouteSpec,
)

PREFLIGHT = [
    (b"origin", b"https://app.example.com"),
    (b"access-control-request-method", b"POST"),
    (b"access-control-request-headers", b"content-type"),
]


def own(n: int) -> list[tuple[bytes, bytes]]:
    """A key of its own, so that a call is not counted under the others' limit."""
    return [(b"x-api-key", b"call-%d" % n)]


def edge_service(*urls: str) -> object:
    return service(
        "users",
        *urls,
        routes=(
            RouteSpec("/api/users/", methods=("GET", "POST")),
            RouteSpec("/api/v1/data", match="exact", strip_prefix=True),
        ),
        cors=CorsSpec(allow_origins=("https://app.example.com",), allow_headers=("Content-Type",)),
        rate_limit=(
            RateLimitSpec(key="header:X-Api-Key", rate_per_s=0.001, burst=2, scope="local"),
        ),
        response_headers=HeaderRules(set={"X-Region": "${region}"}, remove=("X-Backend",)),
        request_headers=HeaderRules(set={"X-Seen-Ip": "${client_ip}"}),
        deny_cidrs=("192.0.2.0/24",),
        max_body_bytes=8,
    )


async def test_routes_cors_limits_and_rules_end_to_end() -> None:
    backend = Backend("a")
    async with serving(backend.handle) as urls:
        async with proxy_for(make_config(edge_service(*urls))) as proxy:  # type: ignore[arg-type]
            status, headers, body = await proxy.call("GET", "/api/users/7?x=1", own(1))
            assert status == 200
            seen = json.loads(body)
            assert seen["target"] == "/api/users/7?x=1"
            assert seen["headers"]["x-seen-ip"] == "127.0.0.1"
            assert headers[b"x-region"] == b"ko_KR" and headers[b"vary"] == b"Origin"

            status, _, body = await proxy.call("GET", "/api/v1/data", own(2))
            assert status == 200 and json.loads(body)["target"] == "/"
            status, _, _ = await proxy.call("GET", "/users/x")  # the original's form still works
            assert status == 200

            status, headers, body = await proxy.call("DELETE", "/api/users/7", own(4))
            assert status == 405 and headers[b"allow"] == b"GET, POST"
            assert json.loads(body)["error"] == "method_not_allowed"

            before = len(backend.seen)
            status, headers, _ = await proxy.call("OPTIONS", "/api/users/7", [*PREFLIGHT, *own(5)])
            assert status == 204
            assert headers[b"access-control-allow-origin"] == b"https://app.example.com"
            assert len(backend.seen) == before

            status, _, body = await proxy.call("POST", "/api/users/7", own(6), body=b"0123456789")
            assert status == 413 and json.loads(body)["error"] == "body_too_large"

            key = [(b"x-api-key", b"k")]
            assert (await proxy.call("GET", "/api/users/1", key))[0] == 200
            assert (await proxy.call("GET", "/api/users/1", key))[0] == 200
            status, headers, body = await proxy.call("GET", "/api/users/1", key)
            assert status == 429 and json.loads(body)["error"] == "rate_limited"
            assert int(headers[b"retry-after"]) >= 1
            assert headers[b"ratelimit-policy"].startswith(b'"header:X-Api-Key";q=2;')
            assert headers[b"ratelimit"].startswith(b'"header:X-Api-Key";r=0;')
            assert (await proxy.call("GET", "/api/users/1", [(b"x-api-key", b"other")]))[0] == 200


async def test_the_chain_keeps_issue_11s_order() -> None:
    config = make_config(edge_service("http://127.0.0.1:9"))  # type: ignore[arg-type]
    async with proxy_for(config) as proxy:
        chains: Chains = proxy.app.chains
        names = chains.statistics()["services"]["users"]  # type: ignore[index]
    assert names == [
        "ip_filter",
        "cors",
        "route_method",
        "max_body",
        "rate_limit[header:X-Api-Key]",
        "request_headers",
        "response_header_rules",
        "response_headers",
        "forward",
    ]


async def test_config_json_default_limit_applies_to_services_without_their_own() -> None:
    config = make_config(service("plain", "http://127.0.0.1:9"))
    gateway = msgspec.structs.replace(config.gateway, rate_limit_count=3, rate_limit_window_s=60.0)
    async with proxy_for(replace(config, gateway=gateway)) as proxy:
        filters = proxy.app.chains.statistics()["services"]["plain"]  # type: ignore[index]
    assert filters[0] == "rate_limit[client_ip]"
    assert gateway.default_rate_limit() == RateLimitDefault(requests=3, window_s=60.0)


async def test_admin_config_lists_chains_and_redacts_secrets() -> None:
    config = make_config(service("plain", "http://127.0.0.1:9"))
    gateway = msgspec.structs.replace(
        config.gateway,
        auth_key="k" * 32,
        redis_password="pw",
        auth_keys=[AuthKey(kid="a", secret="s" * 32)],
    )
    async with proxy_for(replace(config, gateway=gateway)) as proxy:
        response = await proxy.app.handle(direct_request("/admin/config"))
        through_elb = direct_request("/admin/config", via_elb=True)
        try:
            await proxy.app.handle(through_elb)
            raise AssertionError("an ELB's client reached /admin/config")
        except Exception as err:
            assert getattr(err, "status", None) == 404
    assert response.status == 200
    assert isinstance(response.body, bytes)
    text = response.body.decode()
    assert "k" * 32 not in text and "s" * 32 not in text and '"pw"' not in text
    doc = json.loads(text)
    assert doc["chains"]["services"]["plain"][-1] == {"filter": "forward"}
    assert doc["config"]["gateway"]["Auth_keys"] == [{"kid": "a", "secret": "<redacted>"}]


async def test_an_explicit_route_is_noted_for_the_access_log() -> None:
    from tests.proxy.filters.edge import exchange

    config = make_config(edge_service("http://127.0.0.1:9"))  # type: ignore[arg-type]
    async with proxy_for(config) as proxy:
        chains: Chains = proxy.app.chains
        request = exchange(path="/api/v1/data", headers=[(b"host", b"x")]).request
        _, ex = chains.exchange(request, b"rid")
    assert ex.route is not None and ex.note.route == "/api/v1/data"
