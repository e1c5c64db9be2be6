"""The auth app served for real on 127.0.0.1:0, talked to through httpio.upstream; also the
proxy's AuthClient against it (introspection, revocation feed, failover, fail-closed)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from authsvc.app import load_auth_config
from authsvc.claims import Claims
from authsvc.tokens import INTERNAL_HEADER, KeyRing, issue_token, key_ring_of, verify_token
from httpio.errors import DependencyUnavailable, Forbidden, Unauthorized
from httpio.messages import Request
from httpio.upstream import UpstreamPool
from proxy.auth import Allowed, Authorizer, AuthPolicy, VerdictCache
from proxy.auth_client import AuthClient
from tests.authsvc.conftest import SECRET, SETTINGS, Server, serve, vouched
from tests.support.clock import FakeClock
from topology.load import ConfigError
from topology.schema import AuthKey, GatewayConfig, ScryptParams


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


async def signup_and_signin(
    server: Server, username: str = "alice", password: str = "pw", role: str = "user"
) -> dict[str, Any]:
    body = {"username": username, "password": password, "role": role}
    assert (await server.call("POST", "/signup", body))[0] == 201
    status, _, answer = await server.call(
        "POST", "/signin", {"username": username, "password": password}
    )
    assert status == 200 and isinstance(answer, dict)
    return answer


# -- the auth server --------------------------------------------------------------------------
async def test_health(server: Server) -> None:
    status, _, body = await server.call("GET", "/health")
    assert (status, body) == (200, {"status": "ok"})


async def test_signup_signin(server: Server) -> None:
    answer = await signup_and_signin(server, "lilpump", "guccigang")
    assert answer["token_type"] == "Bearer" and answer["expires_in"] == 600
    assert (answer["username"], answer["role"]) == ("lilpump", "user")
    claims = KeyRing.from_config(SECRET)
    got = verify_token(claims, answer["token"], now=1_700_000_000.0)
    assert (got.sub, got.role, got.iss) == ("lilpump", "user", "authsvc")


@pytest.mark.parametrize("role", ["admin", "user", "bad role!", None, 5])
async def test_role_at_signup_is_accepted_and_ignored(server: Server, role: object) -> None:
    """The original's clients send a role; nobody picks their own (issue 8 item 5)."""
    body = {"username": "mallory", "password": "pw", "role": role}
    status, _, answer = await server.call("POST", "/signup", body)
    assert (status, answer) == (201, {"username": "mallory", "role": "user"})
    _, _, answer = await server.call("POST", "/signin", {"username": "mallory", "password": "pw"})
    assert answer["role"] == "user"
    claims = verify_token(server.app.ring, answer["token"], now=1_700_000_000.0)
    assert claims.role == "user"


async def test_duplicate_signup_is_409(server: Server) -> None:
    body = {"username": "alice", "password": "pw"}
    assert (await server.call("POST", "/signup", body))[0] == 201
    status, _, error = await server.call("POST", "/signup", body)
    assert status == 409 and error["error"] == "username_taken"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        {"password": "x"},
        {"username": "alice"},
        {"username": "", "password": "x"},
        {"username": "alice", "password": ""},
        {"username": "al ice", "password": "x"},
        {"username": "\u200b\u200d", "password": "x"},
        {"username": "ali\u2215ce", "password": "x"},
        {"username": "a" * 65, "password": "x"},
        {"username": 5, "password": "x"},
    ],
)
async def test_bad_signup_is_400(server: Server, body: Any) -> None:
    status, _, error = await server.call("POST", "/signup", body)
    assert status == 400 and error["error"] == "bad_request"


async def test_oversized_body_is_413(server: Server) -> None:
    body = {"username": "a", "password": "x" * 20000}
    assert (await server.call("POST", "/signup", body))[0] == 413


async def test_wrong_credentials_look_the_same(server: Server) -> None:
    await signup_and_signin(server)
    wrong_pw = await server.call("POST", "/signin", {"username": "alice", "password": "nope"})
    wrong_user = await server.call("POST", "/signin", {"username": "bob", "password": "pw"})
    assert wrong_pw[0] == wrong_user[0] == 401
    assert wrong_pw[2] == wrong_user[2]
    assert wrong_pw[1][b"www-authenticate"].startswith(b"Bearer")
    assert server.app.counters["signin_failures"] == 2


async def test_signin_upgrades_old_hash(server: Server) -> None:
    await signup_and_signin(server)
    server.app.config = GatewayConfig(
        auth_key=SECRET, password_hash="scrypt", scrypt=ScryptParams(n=32)
    )
    await server.call("POST", "/signin", {"username": "alice", "password": "pw"})
    user = server.app.store.get_user("alice")
    assert user is not None and user.password_hash.startswith("$scrypt$ln=5,")
    assert (await server.call("POST", "/signin", {"username": "alice", "password": "pw"}))[0] == 200


async def test_introspect_signout_revocations(server: Server, clock: FakeClock) -> None:
    token = (await signup_and_signin(server))["token"]
    status, _, answer = await server.call("POST", "/introspect", {"token": token})
    assert status == 200 and answer["active"] and answer["sub"] == "alice"
    jti = answer["jti"]

    status, _, answer = await server.call("GET", "/revocations?since=0")
    empty = {"cursor": 0, "revoked": [], "users_cursor": 0, "changed_users": []}
    assert (status, answer) == (200, empty)

    status, _, answer = await server.call("POST", "/signout", headers=bearer(token))
    assert status == 200 and answer == {"revoked": True, "jti": jti}
    # The original's AuthToken header form works too, and revoking twice is harmless.
    signin_json = json.dumps({"token": token}).encode()
    assert (await server.call("POST", "/signout", headers=[(b"authtoken", signin_json)]))[0] == 200

    _, _, answer = await server.call("POST", "/introspect", {"token": token})
    assert answer == {"active": False, "reason": "revoked"}
    _, _, feed = await server.call("GET", "/revocations?since=0")
    assert feed["revoked"] == [{"jti": jti, "exp": int(clock.now) + 600}]
    _, _, later = await server.call("GET", f"/revocations?since={feed['cursor']}")
    assert later == {**empty, "cursor": feed["cursor"]}


async def test_introspection_answers_with_the_users_current_role(server: Server) -> None:
    token = (await signup_and_signin(server))["token"]
    assert server.app.store.set_role("alice", "admin") == "alice"
    _, _, answer = await server.call("POST", "/introspect", {"token": token})
    assert answer["active"] and (answer["sub"], answer["role"]) == ("alice", "admin")
    claims = verify_token(server.app.ring, token, now=1_700_000_000.0)
    assert claims.role == "user"  # the token still says what it was signed with
    _, _, feed = await server.call("GET", "/revocations?since=0&users_since=0")
    assert feed["changed_users"] == ["alice"] and feed["users_cursor"] > 0
    _, _, later = await server.call("GET", f"/revocations?users_since={feed['users_cursor']}")
    assert later["changed_users"] == []


async def test_token_of_a_deleted_user_is_inactive(server: Server) -> None:
    token = (await signup_and_signin(server))["token"]
    server.app.store.delete_user("alice")
    _, _, answer = await server.call("POST", "/introspect", {"token": token})
    assert answer == {"active": False, "reason": "unknown_user"}
    # A signed token for a user who never signed up (a leaked key's forgery) is no better.
    ghost, _ = issue_token(
        server.app.ring, sub="ghost", role="admin", now=1_700_000_000.0, ttl_s=60
    )
    _, _, answer = await server.call("POST", "/introspect", {"token": ghost})
    assert answer == {"active": False, "reason": "unknown_user"}


async def test_weak_keys_are_on_every_health_answer(
    nursery: trio.Nursery, tmp_path: Path, clock: FakeClock, pool: UpstreamPool
) -> None:
    settings = msgspec.structs.replace(SETTINGS, auth_key="private_key")
    weak = await serve(nursery, tmp_path / "auth.db", clock, pool, settings)
    for _ in range(2):
        status, _, body = await weak.call("GET", "/health")
        assert status == 200 and body["status"] == "ok"
        assert len(body["warnings"]) == 1 and "published" in body["warnings"][0]
    # ... and it still runs: the original's files load.
    assert (await signup_and_signin(weak))["role"] == "user"


async def test_introspect_refusals(server: Server, clock: FakeClock) -> None:
    token = (await signup_and_signin(server))["token"]
    clock.now += 600
    _, _, answer = await server.call("POST", "/introspect", {"token": token})
    assert answer == {"active": False, "reason": "expired"}
    _, _, answer = await server.call("POST", "/introspect", {"token": "garbage"})
    assert answer == {"active": False, "reason": "malformed"}
    assert (await server.call("POST", "/introspect", {"nope": 1}))[0] == 400


async def test_signout_errors(server: Server, clock: FakeClock) -> None:
    assert (await server.call("POST", "/signout"))[0] == 401
    assert (await server.call("POST", "/signout", headers=bearer("garbage")))[0] == 400
    forged, _ = issue_token(
        KeyRing([AuthKey(KeyRing.from_config(SECRET).signing_kid, "x")]),
        sub="a",
        role="admin",
        now=clock.now,
        ttl_s=60,
    )
    assert (await server.call("POST", "/signout", headers=bearer(forged)))[0] == 401
    token = (await signup_and_signin(server))["token"]
    clock.now += 601
    _, _, answer = await server.call("POST", "/signout", headers=bearer(token))
    assert answer == {"revoked": False, "reason": "expired"}


async def test_routing_errors(server: Server) -> None:
    assert (await server.call("GET", "/nope"))[0] == 404
    status, headers, _ = await server.call("GET", "/signup")
    assert status == 405 and headers[b"allow"] == b"POST"
    assert (await server.call("GET", "/revocations?since=-1"))[0] == 400
    assert (await server.call("GET", "/revocations?since=abc"))[0] == 400
    status, _, stats = await server.call("GET", "/stats")  # an operator's curl on this host
    assert status == 200 and "store" in stats


async def test_concurrent_signups_in_one_process(server: Server) -> None:
    async def signup(i: int) -> None:
        # From 20 clients a proxy vouches for: one address may not sign up 20 users at once.
        body = {"username": f"u{i}", "password": "p"}
        headers = vouched(server, f"10.0.0.{i}")
        assert (await server.call("POST", "/signup", body, headers=headers))[0] == 201

    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(signup, i)
    assert server.app.store.count_users() == 20


def test_load_auth_config(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(
        json.dumps(
            {
                "Cache_or_not": True,
                "Auth_key": "private_key",
                "Auth_keys": [{"kid": "k2", "secret": "s2"}],
                "Scrypt": {"n": 1024},
            }
        )
    )
    settings = load_auth_config(path)
    assert key_ring_of(settings).signing_kid == "k2" and settings.scrypt.n == 1024
    assert settings.token_ttl_s == 3600
    path.write_text(json.dumps({"Auth_key": "", "Scrypt": {"n": 1000}}))
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_auth_config(path)
    with pytest.raises(ConfigError):
        load_auth_config(tmp_path / "missing.json")


# -- the proxy's client against it --------------------------------------------------------------
def dead_origin() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def make_request(headers: list[tuple[bytes, bytes]], path: str = "/api") -> Request:
    return Request("GET", path, path, "", list(headers), "1.1", ("127.0.0.1", 1), None)  # type: ignore[arg-type]


async def authorize(client: AuthClient, request: Request, policy: AuthPolicy) -> Claims | None:
    """What the proxy's token check does with the client: decide, and settle only when the
    decision needs the auth server (`proxy.filters.auth.TokenCheck`)."""
    verdict = client.decide(request, policy)
    if isinstance(verdict, Allowed):
        return verdict.claims
    return await client.settle(verdict, policy)


def make_client(server: Server, clock: FakeClock, origins: list[str] | None = None) -> AuthClient:
    authorizer = Authorizer(KeyRing.from_config(SECRET), VerdictCache(max_revocation_lag_s=5))
    return AuthClient(server.pool, origins or [server.origin], authorizer, clock=clock)


async def test_client_introspects_once_then_uses_cache(server: Server, clock: FakeClock) -> None:
    token = (await signup_and_signin(server))["token"]
    client = make_client(server, clock, [dead_origin(), server.origin])
    assert await client.poll_once()
    policy = AuthPolicy()
    for _ in range(3):
        claims = await authorize(client, make_request(bearer(token)), policy)
        assert claims is not None and claims.sub == "alice"
    assert client.introspections == 1
    assert server.app.counters["introspections"] == 1
    assert await authorize(client, make_request([], "/x"), AuthPolicy(public=True)) is None


async def test_client_refuses_garbage_without_calling(server: Server, clock: FakeClock) -> None:
    client = make_client(server, clock)
    await client.poll_once()
    with pytest.raises(Exception) as info:
        await authorize(client, make_request(bearer("garbage")), AuthPolicy())
    assert getattr(info.value, "status", None) == 400
    assert client.introspections == 0
    token = (await signup_and_signin(server, role="user"))["token"]
    with pytest.raises(Forbidden):
        await authorize(
            client, make_request(bearer(token)), AuthPolicy(allowed_roles=frozenset({"admin"}))
        )
    assert client.introspections == 1  # the role is the verdict's, not the token's claim


async def test_client_sees_revocation_through_feed(server: Server, clock: FakeClock) -> None:
    token = (await signup_and_signin(server))["token"]
    client = make_client(server, clock)
    await client.poll_once()
    await authorize(client, make_request(bearer(token)), AuthPolicy())
    await server.call("POST", "/signout", headers=bearer(token))
    assert await client.poll_once()
    with pytest.raises(Unauthorized):
        await authorize(client, make_request(bearer(token)), AuthPolicy())
    assert client.introspections == 1  # refused from the revoked set, no second call


async def test_client_follows_grants_and_deletions_through_the_feed(
    server: Server, clock: FakeClock
) -> None:
    token = (await signup_and_signin(server))["token"]
    client = make_client(server, clock)
    admins = AuthPolicy(allowed_roles=frozenset({"admin"}))
    await client.poll_once()
    with pytest.raises(Forbidden):
        await authorize(client, make_request(bearer(token)), admins)
    claims = await authorize(client, make_request(bearer(token)), AuthPolicy())
    assert claims is not None and claims.role == "user" and client.introspections == 1

    server.app.store.set_role("alice", "admin")
    assert await client.poll_once()
    claims = await authorize(client, make_request(bearer(token)), admins)
    assert claims is not None and claims.role == "admin" and client.introspections == 2
    assert await authorize(client, make_request(bearer(token)), admins) == claims
    assert client.introspections == 2  # cached again until the next change

    server.app.store.delete_user("alice")
    assert await client.poll_once()
    with pytest.raises(Unauthorized) as info:
        await authorize(client, make_request(bearer(token)), AuthPolicy())
    assert "unknown_user" in info.value.detail
    assert client.users_cursor > 0 and client.statistics()["users_cursor"] == client.users_cursor


async def test_client_revoked_before_first_sight_is_refused_by_introspection(
    server: Server, clock: FakeClock
) -> None:
    token = (await signup_and_signin(server))["token"]
    await server.call("POST", "/signout", headers=bearer(token))
    client = make_client(server, clock)
    with pytest.raises(Unauthorized):
        await authorize(client, make_request(bearer(token)), AuthPolicy())


async def test_client_fails_closed_when_no_auth_server(server: Server, clock: FakeClock) -> None:
    token = (await signup_and_signin(server))["token"]
    client = make_client(server, clock, [dead_origin(), dead_origin()])
    assert not await client.poll_once()
    with pytest.raises(DependencyUnavailable):
        await authorize(client, make_request(bearer(token)), AuthPolicy())
    assert client.polls_failed == 1 and client.origin_failures == 4


async def test_client_stops_trusting_cache_when_feed_goes_silent(
    server: Server, clock: FakeClock
) -> None:
    token = (await signup_and_signin(server))["token"]
    client = make_client(server, clock)
    await client.poll_once()
    await authorize(client, make_request(bearer(token)), AuthPolicy())
    client.set_origins([dead_origin()])
    clock.now += 6
    assert not await client.poll_once()
    with pytest.raises(DependencyUnavailable):
        await authorize(client, make_request(bearer(token)), AuthPolicy())


async def test_client_coalesces_concurrent_introspections(server: Server, clock: FakeClock) -> None:
    token = (await signup_and_signin(server))["token"]
    client = make_client(server, clock)
    await client.poll_once()
    results: list[Claims | None] = []

    async def one() -> None:
        results.append(await authorize(client, make_request(bearer(token)), AuthPolicy()))

    async with trio.open_nursery() as nursery:
        for _ in range(5):
            nursery.start_soon(one)
    assert len(results) == 5 and all(r is not None and r.sub == "alice" for r in results)
    assert client.introspections == 1 and client.coalesced == 4


async def test_poll_revocations_task_reports_started(
    server: Server, clock: FakeClock, nursery: trio.Nursery
) -> None:
    client = make_client(server, clock)
    await nursery.start(client.poll_revocations)
    assert client.polls_ok == 1 and client.authorizer.cache.is_fresh(clock.now)
    assert "cursor=0" in repr(client)
    assert msgspec.json.encode(client.statistics())


async def test_internal_endpoints_need_the_fleet_proof(server: Server) -> None:
    """A client reaching the auth service through a proxy gets no token oracle and no
    counters: the 404 of an unknown path (issue 8 item 11 for /stats)."""
    for method, target, body in (
        ("POST", "/introspect", {"token": "x"}),
        ("GET", "/revocations?since=0", None),
    ):
        denied = await server.call(
            method, target, body, headers=[(b"x-gateway-internal", b"guess")]
        )
        assert denied[0] == 404 and denied[2]["error"] == "not_found"
    # What a proxy adds when it forwards a client's request: a Via, an X-Forwarded-For.
    for mark in ((b"via", b"1.1 proxy-ko_KR-6000"), (b"x-forwarded-for", b"127.0.0.1")):
        assert (await server.call("GET", "/stats", headers=[mark]))[0] == 404
    assert (await server.call("GET", "/revocations?since=0"))[0] == 200
    proof = [(INTERNAL_HEADER, server.app.ring.internal_proof()), (b"via", b"1.1 p")]
    assert (await server.call("GET", "/stats", headers=proof))[0] == 200
    assert server.app.counters["internal_refusals"] == 4
