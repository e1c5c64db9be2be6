"""The response cache through the real fleet and a real Redis."""

from __future__ import annotations

import signal
import uuid

from tests.e2e.harness import RunningFleet, post_json, request, wait_for


def test_fill_on_one_proxy_serves_the_other(fleet: RunningFleet, token: str) -> None:
    auth = {"authorization": f"Bearer {token}"}
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
    assert request(fleet.kr_elb, path).status == 401


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
    auth = {"authorization": f"Bearer {token}"}
    path = f"/image/echo?cache-control=public%2C%20max-age%3D60&v={uuid.uuid4().hex}"
    first = request(fleet.kr_proxies[0], path, headers=auth)
    assert first.headers["x-cache"] == "MISS"
    serial = first.json()["serial"]
    for proxy in fleet.kr_proxies:
        again = request(proxy, path, headers=auth)
        assert again.headers["x-cache"] == "HIT" and again.json()["serial"] == serial
    r = post_json(fleet.kr_proxies[0], "/admin/cache/purge", {"prefix": "gw:v1:ko_KR:image:"})
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
    path = f"/image/image.png?v={uuid.uuid4().hex}"

    def hits_again() -> bool:
        request(fleet.kr_proxies[0], path, headers=auth)
        return request(fleet.kr_proxies[1], path, headers=auth).headers.get("x-cache") == "HIT"

    wait_for(hits_again, timeout_s=30, what="cache hits across proxies after Redis restarted")
