"""The auth layer as `proxy.wiring` starts it: key checks at start and on reload, and the
client address a proxy vouches for to the auth service."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest
import trio

from authsvc.tokens import CLIENT_HEADER
from httpio.messages import Request
from httpio.upstream import UpstreamPool
from proxy.app import ProxyApp
from proxy.filters.auth import VouchClient, client_address
from proxy.hop import HOP_HEADER, sign_hop
from proxy.state import ProxyConfig
from proxy.wiring import AuthLayer, fleet_redis, start_auth
from topology.schema import (
    AuthKey,
    GatewayConfig,
    MsaFile,
    RegionSpec,
    RegionStructure,
    ServiceSpec,
)

STRONG = "wiring-test-key-that-is-long-enough!"


def config(**gateway: Any) -> ProxyConfig:
    # Nothing listens on port 9: the revocation poll fails at once, as with auth servers down.
    services = [ServiceSpec(name="auth", instance=["http://127.0.0.1:9"])]
    return ProxyConfig(
        msa=MsaFile(service=services),
        rs=RegionStructure(
            cur_region_code="ko_KR",
            regions=[RegionSpec(region_code="ko_KR", available_zone=["http://127.0.0.1:9"])],
        ),
        gateway=GatewayConfig(**gateway),
        region="ko_KR",
        services={s.name: s for s in services},
        regions={"ko_KR": ["http://127.0.0.1:9"]},
    )


def request(
    headers: list[tuple[bytes, bytes]], peer: str = "127.0.0.1", path: str = "/auth/signin"
) -> Request:
    return Request("GET", path, path, "", headers, "1.1", (peer, 1), None)  # type: ignore[arg-type]


@pytest.fixture
async def upstream() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool()
    yield pool
    await pool.aclose()


async def health(app: ProxyApp) -> dict[str, Any]:
    response = await app.handle(request([], path="/health"))
    assert isinstance(response.body, bytes)
    return msgspec.json.decode(response.body)  # type: ignore[no-any-return]


async def proxy_app(
    config: ProxyConfig, upstream: UpstreamPool, nursery: trio.Nursery
) -> tuple[ProxyApp, AuthLayer]:
    auth = await start_auth(config, upstream, nursery, proxy="p")
    return ProxyApp(config, upstream, name="p", auth=auth), auth


async def test_published_key_runs_loudly_until_replaced(
    nursery: trio.Nursery, upstream: UpstreamPool
) -> None:
    app, _ = await proxy_app(config(auth_key="private_key"), upstream, nursery)
    assert len(app.warnings) == 1 and "published" in app.warnings[0]
    assert (await health(app))["warnings"] == app.warnings
    app.apply(config(auth_keys=[AuthKey("k2", STRONG)]))
    assert app.warnings == [] and "warnings" not in await health(app)
    app.apply(config(auth_keys=[AuthKey("k3", "short")]))
    assert "5 bytes" in app.warnings[0]


async def test_no_key_cannot_start_and_cannot_be_reloaded_to(
    nursery: trio.Nursery, upstream: UpstreamPool
) -> None:
    with pytest.raises(SystemExit):
        await start_auth(config(), upstream, nursery, proxy="p")
    app, auth = await proxy_app(config(auth_keys=[AuthKey("k", STRONG)]), upstream, nursery)
    app.apply(config())
    assert auth.client.authorizer.ring.signing_kid == "k"  # the previous keys are kept


async def test_requests_to_the_auth_service_carry_the_vouched_client(
    nursery: trio.Nursery, upstream: UpstreamPool
) -> None:
    app, auth = await proxy_app(config(auth_keys=[AuthKey("k", STRONG)]), upstream, nursery)
    vouch = app.chains.chain("auth").filters[0]
    assert isinstance(vouch, VouchClient)
    chain, ex = app.chains.exchange(request([], peer="203.0.113.5"), b"req-1")
    assert chain is app.chains.chain("auth")
    assert vouch.on_request(ex) is None
    headers = ex.identity
    assert len(headers) == 1 and headers[0][0] == CLIENT_HEADER
    assert auth.client.authorizer.ring.vouched_client(headers[0][1]) == "203.0.113.5"


def test_client_behind_another_regions_proxy_is_the_one_it_saw() -> None:
    app = ProxyApp(config(auth_keys=[AuthKey("k", STRONG)]), UpstreamPool(), name="p")
    rid = b"req-7"
    mark = sign_hop(STRONG.encode(), "en_US", rid, time.time())
    hopped = [
        (b"x-request-id", rid),
        (b"x-forwarded-for", b"10.0.0.1, 198.51.100.9"),
        (HOP_HEADER, mark),
    ]

    def seen_from(headers: list[tuple[bytes, bytes]], peer: str) -> str:
        _, ex = app.chains.exchange(request(headers, peer=peer), rid)
        return client_address(ex)

    assert seen_from(hopped, "127.0.0.1") == "198.51.100.9"
    forged = sign_hop(b"private_key", "en_US", rid, time.time())
    claimed = [(n, forged if n == HOP_HEADER else v) for n, v in hopped]
    assert seen_from(claimed, "192.0.2.4") == "192.0.2.4"
    assert seen_from(hopped[:2], "192.0.2.4") == "192.0.2.4"


def test_the_fleet_redis_is_the_sentinels_primary_when_they_are_named() -> None:
    """The cache and the fleet-wide rate limits open the same store: with Sentinel, its
    primary (the limits counted on ``Redis_address`` before, which a failover leaves
    behind as a replica)."""
    plain = fleet_redis(config(redis_address="10.0.0.5:6380", redis_db=2))
    assert (plain.host, plain.port, plain.db, plain.sentinels) == ("10.0.0.5", 6380, 2, ())
    named = fleet_redis(
        config(redis_sentinels=["127.0.0.1:26379", "127.0.0.1:26380"], redis_master_name="gw")
    )
    assert named.sentinels == ("127.0.0.1:26379", "127.0.0.1:26380")
    assert named.master_name == "gw"
