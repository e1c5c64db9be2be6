"""Tokens through the real fleet: enforcement, forms, roles, revocation, a dead auth server."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
from pathlib import Path

import jwt

from tests.e2e.harness import RunningFleet, outcome, post_json, request, sign_in
from tests.support.polling import wait_for


def fleet_key(fleet: RunningFleet) -> str:
    """The key the launcher generated for this fleet, from the config.json it wrote."""
    config = json.loads((fleet.fleet.run_dir / "config.json").read_text())
    return str(config["Auth_keys"][-1]["secret"])


def auth_db(fleet: RunningFleet) -> Path:
    argv = next(c.argv for c in fleet.fleet.plan.children if c.kind == "authsvc")
    assert argv is not None
    return Path(argv[argv.index("--db") + 1])


def operator(fleet: RunningFleet, *args: str) -> str:
    """``authsvc <args> --db <the fleet's db>``, as an operator runs it beside the fleet."""
    command, *rest = args
    done = subprocess.run(
        [sys.executable, "-m", "authsvc.main", command, "--db", str(auth_db(fleet)), *rest],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_missing_token_is_401_with_bearer_challenge(fleet: RunningFleet) -> None:
    r = request(fleet.kr_elb, "/video/echo")
    assert r.status == 401
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.json()["error"] == "unauthorized"


def test_malformed_token_is_400_and_tampered_is_401(fleet: RunningFleet, token: str) -> None:
    r = request(fleet.kr_elb, "/video/echo", headers={"authorization": "Bearer not-a-jwt"})
    assert outcome(r) == (400, "bad_request")
    assert 'error="invalid_request"' in r.headers["www-authenticate"]
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    r = request(
        fleet.kr_elb, "/video/echo", headers={"authorization": f"Bearer {head}.{forged}.{sig}"}
    )
    assert outcome(r) == (401, "unauthorized")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_alg_none_is_refused(fleet: RunningFleet, token: str) -> None:
    claims = jwt.decode(token, options={"verify_signature": False})
    unsigned = jwt.encode(claims, key=None, algorithm="none", headers={"kid": "x"})
    r = request(fleet.kr_elb, "/video/echo", headers={"authorization": f"Bearer {unsigned}"})
    # A well-formed JWS naming an algorithm we do not accept is a refused token (RFC 6750
    # 3.1 invalid_token, RFC 8725 3.1), not an unreadable request: 401, never 400.
    assert outcome(r) == (401, "unauthorized")
    assert 'error="invalid_token"' in r.headers["www-authenticate"]


def test_original_authtoken_header_forms(fleet: RunningFleet, token: str) -> None:
    assert request(fleet.kr_elb, "/video/echo", headers={"authtoken": token}).status == 200
    signin_body = json.dumps({"token": token, "token_type": "Bearer", "username": "e2e-user"})
    assert request(fleet.kr_elb, "/video/echo", headers={"authtoken": signin_body}).status == 200


def test_token_is_a_standard_jwt(fleet: RunningFleet, token: str) -> None:
    claims = jwt.decode(token, fleet_key(fleet), algorithms=["HS256"])
    assert claims["sub"] == "e2e-user" and claims["role"] == "user"
    assert {"iat", "exp", "jti"} <= set(claims)
    assert jwt.get_unverified_header(token)["kid"]


def test_roles_and_public_services(fleet: RunningFleet, token: str) -> None:
    staff = request(fleet.kr_elb, "/staff/echo", headers={"authorization": f"Bearer {token}"})
    assert outcome(staff) == (403, "forbidden")
    admin = sign_in(fleet, "e2e-admin", "pw-admin", "admin")  # asks, is not given
    staff = request(fleet.kr_elb, "/staff/echo", headers={"authorization": f"Bearer {admin}"})
    assert outcome(staff) == (403, "forbidden")
    operator(fleet, "grant", "e2e-admin", "admin")
    admin = sign_in(fleet, "e2e-admin", "pw-admin", "admin")
    assert (
        request(fleet.kr_elb, "/staff/echo", headers={"authorization": f"Bearer {admin}"}).status
        == 200
    )
    assert request(fleet.kr_elb, "/open/echo").status == 200


def test_cross_region_request_is_checked_by_serving_region(fleet: RunningFleet) -> None:
    r = request(fleet.kr_elb, "/sound/echo", headers={"x-region": "en_US"})
    assert outcome(r) == (401, "unauthorized")


def test_signout_revokes_fleet_wide(fleet: RunningFleet) -> None:
    t = sign_in(fleet, "e2e-leaver", "pw-leaver", "user")
    auth = {"authorization": f"Bearer {t}"}
    for proxy in fleet.kr_proxies + fleet.en_proxies:
        path = "/sound/echo" if proxy in fleet.en_proxies else "/video/echo"
        assert request(proxy, path, headers=auth).status == 200
    signed_out = request(fleet.kr_elb, "/auth/signout", method="POST", headers=auth)
    assert signed_out.status == 200 and signed_out.json()["revoked"] is True

    def refused_everywhere() -> bool:
        return all(
            outcome(
                request(p, "/sound/echo" if p in fleet.en_proxies else "/video/echo", headers=auth)
            )
            == (401, "unauthorized")
            for p in fleet.kr_proxies + fleet.en_proxies
        )

    wait_for(refused_everywhere, timeout_s=5.0, what="revocation on every proxy")


def test_dead_auth_server_keeps_cached_verdicts_and_refuses_new_tokens(fleet: RunningFleet) -> None:
    known = sign_in(fleet, "e2e-known", "pw-known", "user")
    fresh = sign_in(fleet, "e2e-fresh", "pw-fresh", "user")
    proxy = fleet.kr_proxies[0]
    assert request(proxy, "/video/echo", headers={"authorization": f"Bearer {known}"}).status == 200
    name = f"authsvc-{fleet.auth_ports[0]}"
    old_pid = fleet.pid(name)
    fleet.call(fleet.fleet.kill, name, signal.SIGSTOP)  # stopped, not dead: no restart races
    try:
        assert (
            request(proxy, "/video/echo", headers={"authorization": f"Bearer {known}"}).status
            == 200
        )
        r = request(proxy, "/video/echo", headers={"authorization": f"Bearer {fresh}"})
        assert r.status == 503, r
        assert r.json()["error"] == "dependency_unavailable"
    finally:
        fleet.call(fleet.fleet.kill, name, signal.SIGCONT)
    wait_for(
        lambda: (
            request(proxy, "/video/echo", headers={"authorization": f"Bearer {fresh}"}).status
            == 200
        ),
        what="new tokens accepted again once the auth server answers",
    )
    assert fleet.pid(name) == old_pid


def test_auth_server_killed_and_restarted_loses_no_user(fleet: RunningFleet) -> None:
    sign_in(fleet, "e2e-durable", "pw-durable", "user")
    name = f"authsvc-{fleet.auth_ports[0]}"
    old_pid = fleet.pid(name)
    fleet.call(fleet.fleet.kill, name, signal.SIGKILL)
    fleet.acall(lambda: fleet.fleet.wait_running(name, not_pid=old_pid))
    r = post_json(
        fleet.kr_elb, "/auth/signin", {"username": "e2e-durable", "password": "pw-durable"}
    )
    assert r.status == 200, r
    fresh = r.json()["token"]
    wait_for(
        lambda: (
            request(
                fleet.kr_elb, "/video/echo", headers={"authorization": f"Bearer {fresh}"}
            ).status
            == 200
        ),
        what="a token issued by the restarted auth server accepted",
    )


def test_auth_servers_internal_endpoints_are_not_open_through_the_gateway(
    fleet: RunningFleet, token: str
) -> None:
    r = post_json(fleet.kr_elb, "/auth/introspect", {"token": token})
    assert outcome(r) == (404, "not_found")
    r = request(fleet.kr_elb, "/auth/revocations?since=0", headers={"x-gateway-internal": "forged"})
    assert outcome(r) == (404, "not_found")
