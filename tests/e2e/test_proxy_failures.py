"""A proxy on its own (real processes, no fleet): drain on SIGTERM, dead and slow upstreams."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.cluster import Cluster, proxy_cluster
from tests.e2e.harness import outcome, request
from tests.support.polling import wait_for


@pytest.fixture
def lone_proxy(tmp_path: Path) -> Iterator[Cluster]:
    def msa(backends: list[str], spare: list[str]) -> str:
        return f"""service:
  - name: web
    public: true
    instance: ["{backends[0]}"]
    limits: {{response_timeout_s: 1.0, retries: 1}}
  - name: gone
    public: true
    instance: ["{spare[0]}"]
"""

    with proxy_cluster(tmp_path, msa, backends=1, spare=1) as cluster:
        yield cluster


def proxy_process(cluster: Cluster) -> subprocess.Popen[bytes]:
    port = int(cluster.url.rsplit(":", 1)[1])
    return cluster.processes[port]


def test_dead_upstream_is_503_and_slow_upstream_is_504(lone_proxy: Cluster) -> None:
    url = lone_proxy.url
    r = request(url, "/gone/x")  # nothing reached it: come back later (Envoy's 503)
    assert r.status == 503 and r.json()["error"] == "no_healthy_instance"
    assert r.headers["retry-after"] == "1"
    r = request(url, "/web/echo?delay=3")
    assert r.status == 504 and r.json()["error"] == "upstream_timeout"
    assert request(url, "/web/echo").status == 200  # the proxy is still fine


def test_access_log_has_one_line_per_response(lone_proxy: Cluster) -> None:
    """``"Access_log": true`` (the original's flag): the JSON access log's line on standard
    output, the process log, since no --access-log file is given."""
    url = lone_proxy.url
    r = request(url, "/gone/x?q=1", headers={"x-request-id": "trace-me-1"})
    assert outcome(r) == (503, "no_healthy_instance")
    log_path = lone_proxy.log

    def logged() -> list[dict[str, object]]:
        lines = [
            json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
        ]
        return [e for e in lines if "event" not in e and e.get("request_id") == "trace-me-1"]

    wait_for(lambda: bool(logged()), what="the access log line")
    (entry,) = logged()
    assert entry["status"] == 503 and entry["method"] == "GET" and entry["path"] == "/gone/x?q=1"
    assert entry["client_ip"] == "127.0.0.1" and isinstance(entry["duration_ms"], float)
    assert entry["error"] == "no_healthy_instance" and entry["service"] == "gone"


def test_upstream_error_status_passes_through(lone_proxy: Cluster) -> None:
    r = request(lone_proxy.url, "/web/echo?status=418")
    assert outcome(r) == (418, "")  # the backend's own answer, not an error of ours
    assert r.json()["status"] == 418


def test_drain_finishes_requests_in_flight_then_exits_zero(lone_proxy: Cluster) -> None:
    url = lone_proxy.url
    process = proxy_process(lone_proxy)
    results: list[int] = []

    def slow() -> None:
        results.append(request(url, "/web/echo?delay=0.8", timeout=30).status)

    threads = [threading.Thread(target=slow) for _ in range(5)]
    for t in threads:
        t.start()

    def all_in_flight() -> bool:
        stats = request(url, "/admin/backends").json()
        return bool(stats["limits"]["web"]["in_flight"]["in_use"] == 5)

    wait_for(all_in_flight, what="5 requests in flight")
    os.kill(process.pid, signal.SIGTERM)
    for t in threads:
        t.join(30)
    assert results == [200] * 5
    assert process.wait(15) == 0
    with pytest.raises(OSError):
        request(url, "/health", timeout=2)
