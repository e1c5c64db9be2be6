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
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.harness import free_ports, request, wait_for

BIN = Path(sys.executable).parent
WORKERS = 8  # client threads; half keep their connection alive, half reconnect every request
WARMUP_REQUESTS = 40  # completed before the kill, across all workers
AFTER_KILL_REQUESTS = 25  # each worker's requests sent once the instance is dead
MAX_REQUESTS_PER_WORKER = 2000  # a bound in case the kill never lands
# Half the workers ask for an answer that takes 20 ms, so some requests are always in flight
# on the instance when it dies (the "reset before any response byte" case).
PATHS = ("/web/index.html", "/web/echo?delay=0.02")


@dataclass
class Cluster:
    url: str
    backends: list[int]
    dead: int  # a port nothing listens on
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def admin(self) -> dict[str, Any]:
        reply = request(self.url, "/admin/backends", timeout=5)
        assert reply.status == 200, reply
        return dict(reply.json())

    def instances(self, service: str) -> dict[int, dict[str, Any]]:
        """The proxy's view of each instance of ``service``, by port."""
        pool = next(s for s in self.admin()["services"] if s["service"] == service)
        return {int(i["url"].rsplit(":", 1)[1]): i for i in pool["instances"]}


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def _up(port: int) -> bool:
    try:
        return request(f"http://127.0.0.1:{port}", "/health", timeout=1).status == 200
    except OSError:
        return False


@pytest.fixture
def policy() -> str:
    """The web service's policy; a test overrides it with ``parametrize("policy", ...)``."""
    return "round_robin"


@pytest.fixture
def cluster(tmp_path: Path, policy: str) -> Iterator[Cluster]:
    *backends, dead, proxy, elb = free_ports(6)
    urls = ", ".join(f'"http://127.0.0.1:{p}"' for p in backends)
    (tmp_path / "msa.yaml").write_text(
        f"""service:
  - name: web
    public: true
    policy: {policy}
    instance: [{urls}]
    health: {{base_ejection_s: 60}}
  - name: post
    public: true
    policy: round_robin
    instance: ["http://127.0.0.1:{dead}", "http://127.0.0.1:{backends[0]}"]
"""
    )
    (tmp_path / "rs.yaml").write_text(
        f"""cur_region_code: ko_KR
regions:
  - region_code: ko_KR
    available_zone: ["http://127.0.0.1:{elb}"]
"""
    )
    (tmp_path / "config.json").write_text(
        json.dumps({"Auth_key": "k" * 32, "MSA_healthcheck_interval": 60})
    )
    found = Cluster(f"http://127.0.0.1:{proxy}", backends, dead)
    try:
        for port in backends:
            found.processes[port] = spawn(
                [str(BIN / "backend"), str(port), "--test-faults"], tmp_path / f"backend-{port}.log"
            )
        wait_for(lambda: all(_up(p) for p in backends), what="backends up")
        found.processes[proxy] = spawn(
            [
                str(BIN / "proxy"),
                str(proxy),
                str(tmp_path / "msa.yaml"),
                str(tmp_path / "rs.yaml"),
                str(tmp_path / "config.json"),
            ],
            tmp_path / "proxy.log",
        )
        wait_for(lambda: _up(proxy), what="proxy up")
        yield found
    finally:
        for proc in found.processes.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


class Load:
    """``WORKERS`` client threads, each sending GETs until it has sent
    ``AFTER_KILL_REQUESTS`` after `killed` is set (or ``MAX_REQUESTS_PER_WORKER`` in all)."""

    def __init__(self, url: str) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.killed = threading.Event()
        self.statuses: list[int] = []
        self.errors: list[str] = []
        self.threads = [
            threading.Thread(target=self._work, args=(i,), name=f"load-{i}") for i in range(WORKERS)
        ]

    def completed(self) -> int:
        return len(self.statuses) + len(self.errors)

    def _work(self, index: int) -> None:
        keep_alive = index % 2 == 0
        path = PATHS[index // 2 % len(PATHS)]
        conn: http.client.HTTPConnection | None = None
        after_kill = 0
        try:
            for _ in range(MAX_REQUESTS_PER_WORKER):
                if self.killed.is_set():
                    if after_kill >= AFTER_KILL_REQUESTS:
                        return
                    after_kill += 1
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                try:
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    resp.read()
                    self.statuses.append(resp.status)
                except (OSError, http.client.HTTPException) as exc:
                    self.errors.append(f"{path}: {exc!r}")
                    conn.close()
                    conn = None
                    continue
                if not keep_alive or resp.will_close:
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.killed.set()  # a failing test must not leave the threads running to the bound
        for t in self.threads:
            t.join(60)
        assert not any(t.is_alive() for t in self.threads), "load threads did not finish"


@pytest.mark.parametrize("policy", ["round_robin", "least_conn", "p2c"])
def test_instance_killed_under_load_costs_no_request_and_is_ejected(cluster: Cluster) -> None:
    victim, *survivors = cluster.backends
    with Load(cluster.url) as load:
        wait_for(lambda: load.completed() >= WARMUP_REQUESTS, what="load under way")
        os.kill(cluster.processes[victim].pid, signal.SIGKILL)
        cluster.processes[victim].wait(10)
        load.killed.set()
    assert load.errors == []
    assert load.statuses == [200] * len(load.statuses)
    assert len(load.statuses) >= WARMUP_REQUESTS + WORKERS * AFTER_KILL_REQUESTS

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
    # round robin put the dead instance first every time (the live one took the retry)
    assert instances[cluster.dead]["failures"] == len(bodies)
    assert instances[cluster.backends[0]]["requests"] == len(bodies)
