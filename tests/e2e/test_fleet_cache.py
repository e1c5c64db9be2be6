"""The response cache through the real fleet and a real Redis."""

from __future__ import annotations

import signal
import uuid

from tests.e2e.harness import Reply, RunningFleet, outcome, post_json, request, sign_in
from tests.support.polling import wait_for


def elb_host(fleet: RunningFleet) -> str:
    """The Host a client of the ko_KR ELB sends: the authority in every proxy's key."""
    return fleet.kr_elb.removeprefix("http://")


def test_fill_on_one_proxy_serves_the_other(fleet: RunningFleet, token: str) -> None:
    auth = {"authorization": f"Bearer {token}", "host": elb_host(fleet)}
    path = f"/image/image.png?v={uuid.uuid4().hex}"
    first = request(fleet.kr_proxies[0], path, headers=auth)
    assert first.status == 200 and first.headers["x-cache"] == "MISS"
    second = request(fleet.kr_proxies[1], path, headers=auth)
    assert second.headers["x-cache"] == "HIT"
    assert second.body == first.body and len(second.body) > 30_000
    assert "age" in second.headers


def test_token_is_checked_before_a_cached_answer(fleet: RunningFleet, token: str) -> None:
    path = f"/image/image.png?v={uuid.uuid4().hex}"
    assert request(fleet.kr_elb, path, headers={"authorization": f"Bearer {token}"}).status == 200
    assert outcome(request(fleet.kr_elb, path)) == (401, "unauthorized")


def test_conditional_request_is_answered_304_from_cache(fleet: RunningFleet, token: str) -> None:
    auth = {"authorization": f"Bearer {token}"}
    path = f"/image/image.png?v={uuid.uuid4().hex}"
    etag = request(fleet.kr_elb, path, headers=auth).headers["etag"]
    r = request(fleet.kr_elb, path, headers={**auth, "if-none-match": etag})
    assert r.status == 304 and r.headers["x-cache"] == "HIT" and r.body == b""


def test_uncacheable_service_and_no_store_bypass(fleet: RunningFleet, token: str) -> None:
    auth = {"authorization": f"Bearer {token}"}
    assert "x-cache" not in request(fleet.kr_elb, "/video/index.html", headers=auth).headers
    path = f"/image/echo?cache-control=no-store&v={uuid.uuid4().hex}"
    request(fleet.kr_elb, path, headers=auth)
    assert request(fleet.kr_elb, path, headers=auth).headers["x-cache"] != "HIT"


def test_purge_is_fleet_wide(fleet: RunningFleet, token: str) -> None:
    auth = {"authorization": f"Bearer {token}", "host": elb_host(fleet)}
    path = f"/image/echo?cache-control=public%2C%20max-age%3D60&v={uuid.uuid4().hex}"
    first = request(fleet.kr_proxies[0], path, headers=auth)
    assert first.headers["x-cache"] == "MISS"
    serial = first.json()["serial"]
    for proxy in fleet.kr_proxies:
        again = request(proxy, path, headers=auth)
        assert again.headers["x-cache"] == "HIT" and again.json()["serial"] == serial
    r = post_json(fleet.kr_proxies[0], "/admin/cache/purge", {"prefix": "gw:v2:ko_KR:image:"})
    assert r.status == 200, r
    assert request(fleet.kr_proxies[0], path, headers=auth).json()["serial"] != serial
    wait_for(
        lambda: request(fleet.kr_proxies[1], path, headers=auth).json()["serial"] != serial,
        what="the other proxy's memory tier dropping the purged entry",
    )


def test_redis_killed_under_load_loses_no_request_and_hits_resume(
    fleet: RunningFleet, token: str
) -> None:
    auth = {"authorization": f"Bearer {token}"}
    old_pid = fleet.pid("redis")
    fleet.call(fleet.fleet.kill, "redis", signal.SIGSTOP)  # hung Redis: the worst case
    try:
        statuses = [
            request(fleet.kr_elb, f"/image/image.png?v={uuid.uuid4().hex}", headers=auth).status
            for _ in range(60)
        ]
    finally:
        fleet.call(fleet.fleet.kill, "redis", signal.SIGKILL)
    assert statuses == [200] * 60
    statuses = [
        request(fleet.kr_elb, f"/image/image.png?v={i}", headers=auth).status for i in range(60)
    ]
    assert statuses == [200] * 60
    fleet.acall(lambda: fleet.fleet.wait_running("redis", not_pid=old_pid))

    def hits_again() -> bool:
        """Each proxy stores through Redis (no BYPASS: its breaker closed) and the other
        one hits what it stored; a fresh URL each time, so a hit cannot be a local one."""
        same = {**auth, "host": elb_host(fleet)}
        for first, second in (fleet.kr_proxies, fleet.kr_proxies[::-1]):
            path = f"/image/image.png?v={uuid.uuid4().hex}"
            if request(first, path, headers=same).headers.get("x-cache") != "MISS":
                return False
            if request(second, path, headers=same).headers.get("x-cache") != "HIT":
                return False
        return True

    wait_for(hits_again, timeout_s=30, what="cache hits across proxies after Redis restarted")


# -- issue 8: the cache never hands one user's answer to another ------------------------------
def echoed(reply: Reply) -> dict[str, str]:
    """The request headers the backend saw, from its /echo answer."""
    return {name: value for name, value in reply.json()["headers"]}


def bearer(token: str, **more: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}", **more}


SHAREABLE = "cache-control=public%2C%20max-age%3D60"


def test_two_users_never_share_an_answer_without_cache_control(
    fleet: RunningFleet, token: str
) -> None:
    """/echo sends no Cache-Control; the service has default_ttl_s. Alice's answer (her
    token in it) used to be Bob's HIT, from either proxy and through the other region."""
    bob = sign_in(fleet, "e2e-bob", "bob's password", "user")
    path = f"/image/echo?u={uuid.uuid4().hex}"
    alice = request(fleet.kr_elb, path, headers=bearer(token))
    assert alice.status == 200 and alice.headers["x-cache"] == "MISS"
    assert echoed(alice)["authorization"] == f"Bearer {token}"
    for proxy in fleet.kr_proxies:
        again = request(proxy, path, headers=bearer(bob))
        assert again.headers["x-cache"] == "MISS"
        assert echoed(again)["authorization"] == f"Bearer {bob}"
    # from the other region: en_US's proxy forwards to ko_KR (one Redis behind both)
    remote = request(fleet.en_elb, path, headers=bearer(bob, **{"x-region": "ko_KR"}))
    assert remote.status == 200 and remote.headers["x-cache"] == "MISS"
    assert echoed(remote)["authorization"] == f"Bearer {bob}"


def test_an_answer_that_says_public_is_still_shared(fleet: RunningFleet, token: str) -> None:
    bob = sign_in(fleet, "e2e-bob", "bob's password", "user")
    path = f"/image/echo?{SHAREABLE}&v={uuid.uuid4().hex}"
    first = request(fleet.kr_proxies[0], path, headers=bearer(token, host=elb_host(fleet)))
    assert first.headers["x-cache"] == "MISS"
    second = request(fleet.kr_proxies[1], path, headers=bearer(bob, host=elb_host(fleet)))
    assert second.headers["x-cache"] == "HIT" and second.body == first.body


def test_the_host_is_keyed(fleet: RunningFleet, token: str) -> None:
    path = f"/image/echo?{SHAREABLE}&v={uuid.uuid4().hex}"
    evil = request(fleet.kr_elb, path, headers=bearer(token, host="evil.example"))
    assert evil.headers["x-cache"] == "MISS"
    assert echoed(evil)["x-forwarded-host"] == "evil.example"
    plain = request(fleet.kr_elb, path, headers=bearer(token))
    assert plain.headers["x-cache"] == "MISS"
    assert echoed(plain)["x-forwarded-host"] != "evil.example"
    again = request(fleet.kr_elb, path, headers=bearer(token))
    assert again.headers["x-cache"] == "HIT" and again.body == plain.body


def test_a_poisoning_header_does_not_reach_another_user(fleet: RunningFleet, token: str) -> None:
    bob = sign_in(fleet, "e2e-bob", "bob's password", "user")
    shareable = f"/image/echo?{SHAREABLE}&v={uuid.uuid4().hex}"
    rerouted = request(
        fleet.kr_elb, shareable, headers=bearer(token, **{"x-original-url": "/admin"})
    )
    assert rerouted.status == 200 and rerouted.headers["x-cache"] == "BYPASS"
    reply = request(fleet.kr_elb, shareable, headers=bearer(bob))
    assert reply.headers["x-cache"] == "MISS" and "x-original-url" not in echoed(reply)

    plain = f"/image/echo?v={uuid.uuid4().hex}"  # no Cache-Control, unkeyed X-Evil
    request(fleet.kr_elb, plain, headers=bearer(token, **{"x-evil": "<script>x()</script>"}))
    reply = request(fleet.kr_elb, plain, headers=bearer(bob))
    assert reply.headers["x-cache"] == "MISS" and "x-evil" not in echoed(reply)


def test_a_host_sent_through_the_other_region_is_keyed(fleet: RunningFleet, token: str) -> None:
    """Through en_US the client's Host reaches ko_KR as our hop's X-Forwarded-Host (which
    the backend trusts): it is part of the key there, so it cannot plant an entry either."""
    path = f"/image/echo?{SHAREABLE}&v={uuid.uuid4().hex}"
    via_hop = request(
        fleet.en_elb, path, headers=bearer(token, host="evil.example", **{"x-region": "ko_KR"})
    )
    assert via_hop.status == 200 and echoed(via_hop)["x-forwarded-host"] == "evil.example"
    direct = request(fleet.kr_elb, path, headers=bearer(token))
    assert direct.headers["x-cache"] == "MISS"
    assert echoed(direct)["x-forwarded-host"] != "evil.example"
