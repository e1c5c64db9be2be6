"""Issue 8's auth holes, shut on the real fleet: the published key, self-chosen roles, roles and
deletions that wait for the token's expiry, unthrottled sign-in, public counters, look-alike
usernames.

The session fleet runs the shipped ``topology/config.json`` (no key: the launcher makes one).
Clients here connect from their own loopback addresses (127.0.0.2 and up, all routed to ``lo``
on Linux) so that the per-address throttles see distinct clients and leave 127.0.0.1, which
the other tests use, alone.
"""

from __future__ import annotations

import http.client
import json
import os
import stat
import time

import jwt

from authsvc.tokens import KeyRing, issue_token
from proxy.hop import sign_hop
from tests.e2e.harness import Reply, RunningFleet, outcome, request
from tests.e2e.test_fleet_auth import auth_db, fleet_key, operator
from tests.support.polling import wait_for
from topology.schema import AuthKey, derive_kid

PUBLISHED_KEY = "private_key"  # the original's topology/config.json


def request_from(
    source: str,
    url: str,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: object = None,
) -> Reply:
    """One request from the local address ``source``."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30, source_address=(source, 0))
    try:
        raw = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=raw, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def signup(source: str, fleet: RunningFleet, username: str, password: str, **extra: str) -> Reply:
    body = {"username": username, "password": password, **extra}
    return request_from(source, fleet.kr_elb, "/auth/signup", method="POST", body=body)


def signin(source: str, fleet: RunningFleet, username: str, password: str) -> Reply:
    body = {"username": username, "password": password}
    return request_from(source, fleet.kr_elb, "/auth/signin", method="POST", body=body)


def every_proxy(fleet: RunningFleet) -> list[tuple[str, str]]:
    """(proxy, a path of a protected service it serves) for every proxy of the fleet."""
    return [(p, "/video/echo") for p in fleet.kr_proxies] + [
        (p, "/sound/echo") for p in fleet.en_proxies
    ]


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# -- item 3: the key -----------------------------------------------------------------------
def test_token_signed_with_the_published_key_is_refused(fleet: RunningFleet, token: str) -> None:
    """An admin token for a user who never signed up, signed with the original's key: under
    the key id the original's fleet derived from it, and under the fleet's own key id (any
    token's header shows it)."""
    fleet_kid = jwt.get_unverified_header(token)["kid"]
    for kid in (derive_kid(PUBLISHED_KEY), fleet_kid):
        ring = KeyRing([AuthKey(kid, PUBLISHED_KEY)])
        forged, _ = issue_token(ring, sub="ghost", role="admin", now=time.time(), ttl_s=600)
        for proxy, path in [*every_proxy(fleet), (fleet.kr_elb, "/staff/echo")]:
            r = request(proxy, path, headers=bearer(forged))
            assert outcome(r) == (401, "unauthorized"), (proxy, path, r)


def test_hop_mark_forged_with_the_published_key_is_not_trusted(
    fleet: RunningFleet, token: str
) -> None:
    rid = "e2e-forged-hop-1"
    mark = sign_hop(PUBLISHED_KEY.encode(), "ko_KR", rid.encode(), time.time())
    r = request(
        fleet.en_elb,
        "/sound/echo",
        headers={
            **bearer(token),
            "x-request-id": rid,
            "x-gateway-hop": mark.decode(),
            "x-forwarded-host": "evil.example",
        },
    )
    assert r.status == 200, r
    seen = {name.lower(): value for name, value in r.json()["headers"]}
    assert seen["x-forwarded-host"] != "evil.example"


def test_the_fleet_key_is_strong_private_and_never_logged(fleet: RunningFleet) -> None:
    key = fleet_key(fleet)
    assert len(key) >= 43 and key != PUBLISHED_KEY
    state = auth_db(fleet).parent
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "fleet.key").stat().st_mode) == 0o600
    assert (state / "fleet.key").read_text().strip() == key
    assert stat.S_IMODE((fleet.fleet.run_dir / "config.json").stat().st_mode) == 0o600
    logs = fleet.fleet.run_dir / "logs"
    for log in logs.iterdir():
        assert key not in log.read_text(errors="replace"), log
    for port in [*fleet.auth_ports]:
        assert "warnings" not in request(f"http://127.0.0.1:{port}", "/health").json()
    for proxy, _ in every_proxy(fleet):
        assert "warnings" not in request(proxy, "/health").json()


# -- items 3 and 5: roles are the operator's, and follow the user --------------------------
def test_signup_asking_for_admin_gets_user(fleet: RunningFleet) -> None:
    r = signup("127.0.0.5", fleet, "e2e-climber", "pw-climber", role="admin")
    assert (r.status, r.json()["role"]) == (201, "user")
    r = signin("127.0.0.5", fleet, "e2e-climber", "pw-climber")
    assert r.json()["role"] == "user"
    assert jwt.decode(r.json()["token"], fleet_key(fleet), algorithms=["HS256"])["role"] == "user"
    staff = request(fleet.kr_elb, "/staff/echo", headers=bearer(r.json()["token"]))
    assert outcome(staff) == (403, "forbidden")


def test_granted_role_applies_to_a_token_already_issued(fleet: RunningFleet) -> None:
    assert signup("127.0.0.5", fleet, "e2e-promoted", "pw-promoted").status == 201
    token = signin("127.0.0.5", fleet, "e2e-promoted", "pw-promoted").json()["token"]
    proxies = fleet.kr_proxies
    for proxy in proxies:
        assert outcome(request(proxy, "/staff/echo", headers=bearer(token))) == (403, "forbidden")
        role = dict(request(proxy, "/video/echo", headers=bearer(token)).json()["headers"])
        assert role["x-user-role"] == "user"
    assert "e2e-promoted: role admin" in operator(fleet, "grant", "e2e-promoted", "admin")

    def admitted_everywhere() -> bool:
        return all(request(p, "/staff/echo", headers=bearer(token)).status == 200 for p in proxies)

    wait_for(admitted_everywhere, timeout_s=5.0, what="the grant on every proxy")
    for proxy in proxies:
        echoed = dict(request(proxy, "/staff/echo", headers=bearer(token)).json()["headers"])
        assert echoed["x-user-role"] == "admin"
    # ... and taken away again the same way.
    operator(fleet, "grant", "e2e-promoted", "user")
    wait_for(
        lambda: all(
            outcome(request(p, "/staff/echo", headers=bearer(token))) == (403, "forbidden")
            for p in proxies
        ),
        timeout_s=5.0,
        what="the demotion on every proxy",
    )


def test_deleted_user_is_refused_within_the_revocation_delay(fleet: RunningFleet) -> None:
    assert signup("127.0.0.5", fleet, "e2e-deleted", "pw-deleted").status == 201
    token = signin("127.0.0.5", fleet, "e2e-deleted", "pw-deleted").json()["token"]
    for proxy, path in every_proxy(fleet):
        assert request(proxy, path, headers=bearer(token)).status == 200
    assert "e2e-deleted: deleted" in operator(fleet, "delete-user", "e2e-deleted")

    def refused_everywhere() -> bool:
        return all(
            outcome(request(proxy, path, headers=bearer(token))) == (401, "unauthorized")
            for proxy, path in every_proxy(fleet)
        )

    wait_for(refused_everywhere, timeout_s=5.0, what="the deletion on every proxy")
    assert outcome(signin("127.0.0.5", fleet, "e2e-deleted", "pw-deleted")) == (401, "unauthorized")


# -- item 9: sign-in throttle ----------------------------------------------------------------
def test_guessing_from_one_address_is_throttled_but_the_user_still_signs_in(
    fleet: RunningFleet,
) -> None:
    assert signup("127.0.0.6", fleet, "e2e-target", "the-real-password").status == 201
    statuses = []
    # Locks grow 1 s, 2 s, 4 s... after 5 failures, so even on a machine so slow that a lock
    # ends between two attempts, a 429 comes within a few more.
    for _ in range(12):
        r = signin("127.0.0.7", fleet, "e2e-target", "a-guess")
        statuses.append(r.status)
        if r.status == 401:
            assert outcome(r) == (401, "unauthorized")
        if r.status == 429:
            break
    assert statuses[:5] == [401] * 5 and statuses[-1] == 429, statuses
    assert r.json()["error"] == "too_many_requests"
    assert r.headers["retry-after"].isdigit() and int(r.headers["retry-after"]) >= 1
    # The real user, from elsewhere, is not locked out by the attacker.
    assert signin("127.0.0.6", fleet, "e2e-target", "the-real-password").status == 200


# -- item 11: the counters are internal ------------------------------------------------------
def test_auth_stats_is_not_public_through_the_elb(fleet: RunningFleet) -> None:
    for via in (fleet.kr_elb, fleet.en_elb, *fleet.kr_proxies):
        r = request(via, "/auth/stats")
        assert r.status == 404 and r.json()["error"] == "not_found", via
    direct = request(f"http://127.0.0.1:{fleet.auth_ports[0]}", "/stats")
    assert direct.status == 200 and "signins" in direct.json()


# -- item 12: look-alike usernames, signups per address --------------------------------------
def test_look_alike_usernames_are_one_user(fleet: RunningFleet) -> None:
    assert signup("127.0.0.8", fleet, "E2e-Lookalike", "pw-lookalike").status == 201
    for twin in ("e2e-lookalike", "\uff45\uff12\uff45-lookalike", "e2e-look\u200balike"):
        r = signup("127.0.0.8", fleet, twin, "pw-other")
        assert outcome(r) == (409, "username_taken"), (twin, r)
    r = signin("127.0.0.8", fleet, "E2E-LOOKALIKE", "pw-lookalike")
    assert r.status == 200 and r.json()["username"] == "e2e-lookalike"


def test_signups_per_address_are_limited(fleet: RunningFleet) -> None:
    source = "127.0.0.9"
    statuses = [
        signup(source, fleet, f"e2e-bulk-{os.getpid()}-{i}", "pw").status for i in range(21)
    ]
    assert statuses == [201] * 20 + [429], statuses
    assert signup("127.0.0.10", fleet, f"e2e-bulk-{os.getpid()}-x", "pw").status == 201
