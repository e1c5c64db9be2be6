"""`proxy.filters.chains`: which filters each service gets, in which order, built once per
snapshot; route resolution picks the chain; a reload swaps whole chains and a request in
flight finishes on the one it started with. The last test runs real backends in-process."""

from __future__ import annotations

import dataclasses
import json
import time

import msgspec
import pytest
import trio

from authsvc.tokens import KeyRing, issue_token
from httpio.errors import RouteNotFound
from httpio.messages import Request
from httpio.upstream import UpstreamPool
from proxy.app import ProxyApp
from proxy.auth import Authorizer, AuthPolicy, VerdictCache
from proxy.auth_client import AuthClient
from proxy.cache import HttpCache
from proxy.filters.auth import TokenCheck
from proxy.filters.chain import Exchange
from proxy.filters.chains import IDENTITY_HEADERS, Parts, build_chains
from tests.proxy.test_app import (
    DEADLINE_S,
    Backend,
    direct_request,
    make_config,
    service,
    serving,
)
from topology.schema import CacheSettings, ServiceCacheSettings

RING = KeyRing.from_config("chains-test-key-long-enough-for-hs256!")


def request(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Request:
    return Request("GET", path, path, "", headers or [], "1.1", ("127.0.0.1", 1), None)  # type: ignore[arg-type]


def names(app_chains: object, service: str) -> list[str]:
    return [getattr(f, "name", "?") for f in app_chains.chain(service).filters]  # type: ignore[attr-defined]


def test_each_service_gets_its_filters_in_order() -> None:
    config = make_config(
        service("auth", "http://127.0.0.1:8000"),
        service("img", "http://127.0.0.1:5000", cache=ServiceCacheSettings(enabled=True)),
        service("vid", "http://127.0.0.1:5001"),
        elbs={"ko_KR": ["http://127.0.0.1:9"], "en_US": ["http://127.0.0.1:9001"], "xx_XX": []},
    )
    config = dataclasses.replace(
        config, gateway=msgspec.structs.replace(config.gateway, cache_enabled=True)
    )
    client = AuthClient(UpstreamPool(), [], Authorizer(RING, VerdictCache()))
    cache = HttpCache(CacheSettings(), None)
    app = ProxyApp(config, UpstreamPool(), name="p")
    parts = Parts(
        upstream=app.upstream,
        budget=app.retry_budget,
        via=app.via,
        pools=app.pools,
        limiters=app.limiters,
        elb_pools=app.elb_pools,
        auth=client,
        cache=cache,
    )
    chains = build_chains(config, parts)
    assert names(chains, "auth") == ["vouch_client", "response_headers", "forward"]
    assert names(chains, "img") == ["auth", "cache", "response_headers", "forward"]
    assert names(chains, "vid") == ["auth", "response_headers", "forward"]
    # an upgrade for another region is relayed there (its proxy decides whether it may be)
    assert chains.statistics()["regions"] == {
        "en_US": [
            "websocket_handshake",
            "response_headers",
            "websocket_to_region",
            "forward_to_region",
        ]
    }
    # without an auth layer or a cache (a proxy started without them, as in tests)
    assert names(app.chains, "img") == ["response_headers", "forward"]
    chain, ex = chains.exchange(request("/img/a.png"), b"id")
    assert chain is chains.chain("img") and ex.target == "/a.png" and not ex.from_hop
    chain, ex = chains.exchange(request("/a", [(b"x-region", b"en_US")]), b"id")
    assert chain.name == "region:en_US" and ex.target == "/a"
    with pytest.raises(RouteNotFound, match="has no ELB"):
        chains.exchange(request("/a", [(b"x-region", b"xx_XX")]), b"id")


def test_the_identity_a_client_claims_is_never_forwarded() -> None:
    assert {b"x-user", b"x-user-role", b"x-gateway-hop", b"x-gateway-internal"} <= IDENTITY_HEADERS


async def test_a_known_token_is_checked_without_an_await() -> None:
    authorizer = Authorizer(RING, VerdictCache())
    client = AuthClient(UpstreamPool(), [], authorizer)
    check = TokenCheck(client, AuthPolicy())
    token, claims = issue_token(RING, sub="alice", role="admin", now=time.time(), ttl_s=60)
    authorizer.cache.mark_synced(time.time())
    authorizer.cache.store(token, claims, time.time())
    ex = Exchange(
        request("/svc/x", [(b"authorization", b"Bearer " + token.encode())]), b"id", "/x", False
    )
    assert check.on_request(ex) is None  # answered from the verdict cache, synchronously
    assert ex.identity == [(b"x-user", b"alice"), (b"x-user-role", b"admin")]
    unseen, _ = issue_token(RING, sub="bob", role="user", now=time.time(), ttl_s=60)
    ex = Exchange(
        request("/svc/x", [(b"authorization", b"Bearer " + unseen.encode())]), b"id", "/x", False
    )
    pending = check.on_request(ex)
    assert pending is not None and hasattr(pending, "__await__")  # introspection needs I/O
    pending.close()  # type: ignore[union-attr]


async def test_a_request_finishes_on_the_chain_it_started_with() -> None:
    old, new = Backend("old"), Backend("new")
    async with serving(old.handle, new.handle) as (old_url, new_url):
        upstream = UpstreamPool()
        app = ProxyApp(make_config(service("svc", old_url)), upstream, name="p")
        first_chains = app.chains
        answers: list[str] = []

        async def call(path: str) -> None:
            response = await app.handle(direct_request(path))
            body = b""
            assert not isinstance(response.body, bytes)
            while chunk := await response.body.read():
                body += chunk
            await response.body.aclose()
            answers.append(json.loads(body)["backend"])

        with trio.fail_after(DEADLINE_S):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "/svc/slow")
                await old.entered.wait()
                app.apply(make_config(service("svc", new_url)))  # while the request waits
                assert app.chains is not first_chains
                await call("/svc/after")
                old.release.set()
        await upstream.aclose()
    assert answers == ["new", "old"]
    assert app.limiters["svc"].in_flight.in_use == 0
