"""Traffic management across real processes: losing an instance under load costs no request.

Three backends and one proxy, started here on free ports (no fleet, no Redis, no auth server:
the services are ``public``). An instance SIGKILLed mid-load must cost the clients nothing:
requests caught on it (a reset before any response byte, a dead pooled connection, a refused
connect) are idempotent GETs, which the proxy sends once more to another instance, and passive
outlier detection then takes the instance out. Active checks run once a minute, so the
ejection seen afterwards is the passive one; ``base_ejection_s: 60`` keeps it from turning
into ``probing`` while the test looks.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, Load, proxy_cluster
from tests.e2e.harness import request
from tests.support.polling import wait_for

WORKERS = 8  # client threads; half keep their connection alive, half reconnect every request
WARMUP_REQUESTS = 40  # completed before the kill, across all workers
AFTER_KILL_REQUESTS = 25  # each worker's requests sent once the instance is dead
# Half the workers ask for an answer that takes 20 ms, so some requests are always in flight
# on the instance when it dies (the "reset before any response byte" case).
PATHS = ("/web/index.html", "/web/echo?delay=0.02")


@pytest.fixture
def policy() -> str:
    """The web service's policy; a test overrides it with ``parametrize("policy", ...)``."""
    return "round_robin"


@pytest.fixture
def cluster(tmp_path: Path, policy: str) -> Iterator[Cluster]:
    def msa(backends: list[str], spare: list[str]) -> str:
        urls = ", ".join(f'"{u}"' for u in backends)
        return f"""service:
  - name: web
    public: true
    policy: {policy}
    instance: [{urls}]
    health: {{base_ejection_s: 60}}
  - name: post
    public: true
    policy: round_robin
    instance: ["{spare[0]}", "{backends[0]}"]
"""

    with proxy_cluster(tmp_path, msa, backends=3, spare=1) as found:
        yield found


@pytest.mark.parametrize("policy", ["round_robin", "least_conn", "p2c"])
def test_instance_killed_under_load_costs_no_request_and_is_ejected(cluster: Cluster) -> None:
    victim, *survivors = cluster.backends
    with Load(cluster.url, PATHS, workers=WORKERS, after_fault=AFTER_KILL_REQUESTS) as load:
        wait_for(lambda: load.completed() >= WARMUP_REQUESTS, what="load under way")
        cluster.kill(victim)
        load.fault.set()
        load.finish()
    assert load.failures() == []
    assert load.completed() >= WARMUP_REQUESTS + WORKERS * AFTER_KILL_REQUESTS

    def victim_ejected() -> bool:
        return bool(cluster.instances("web")[victim]["state"] == "ejected")

    wait_for(victim_ejected, timeout_s=10, what=f"instance {victim} ejected")
    instances = cluster.instances("web")
    assert instances[victim]["failures"] >= 1  # traffic did reach it after the kill
    assert instances[victim]["ejections"] == 1
    assert [instances[p]["state"] for p in survivors] == ["healthy", "healthy"]
    assert cluster.admin()["retry_budget"]["refused"] == 0
    # and the service still answers, from the survivors only
    ports = {request(cluster.url, "/web/echo").json()["port"] for _ in range(6)}
    assert ports <= set(survivors)


def test_post_to_a_dead_on_connect_instance_is_sent_to_another(cluster: Cluster) -> None:
    """Nothing reached the dead instance, so even a POST (not idempotent), and even one whose
    body is too large to hold and is streamed, may go to the next instance."""
    bodies = [b'{"n": 1}', b"x" * 1000, os.urandom(200_000)]
    for body in bodies:
        reply = request(
            cluster.url,
            "/post/echo",
            method="POST",
            body=body,
            headers={"content-type": "application/octet-stream"},
        )
        assert reply.status == 200, reply
        echoed = reply.json()
        assert echoed["port"] == cluster.backends[0]
        assert echoed["body_length"] == len(body)
        assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()
    instances = cluster.instances("post")
    # round robin put the dead instance first (the live one took the retry)
    assert instances[cluster.spare[0]]["failures"] >= 1
    assert instances[cluster.backends[0]]["requests"] == len(bodies)
