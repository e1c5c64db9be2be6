"""A proxy on its own (real processes, no fleet): drain on SIGTERM, dead and slow upstreams."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import free_ports, request, wait_for

BIN = Path(sys.executable).parent


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
def lone_proxy(tmp_path: Path) -> Iterator[dict[str, object]]:
    backend, dead, proxy, elb = free_ports(4)
    (tmp_path / "msa.yaml").write_text(
        f"""service:
  - name: web
    public: true
    instance: ["http://127.0.0.1:{backend}"]
    limits: {{response_timeout_s: 1.0, retries: 1}}
  - name: gone
    public: true
    instance: ["http://127.0.0.1:{dead}"]
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
        json.dumps({"Auth_key": "k" * 32, "MSA_healthcheck_interval": 60, "Access_log": True})
    )
    procs = [spawn([str(BIN / "backend"), str(backend), "--test-faults"], tmp_path / "backend.log")]
    wait_for(lambda: _up(backend), what="backend up")
    p = spawn(
        [
            str(BIN / "proxy"),
            str(proxy),
            str(tmp_path / "msa.yaml"),
            str(tmp_path / "rs.yaml"),
            str(tmp_path / "config.json"),
        ],
        tmp_path / "proxy.log",
    )
    procs.append(p)
    wait_for(lambda: _up(proxy), what="proxy up")
    try:
        yield {"url": f"http://127.0.0.1:{proxy}", "process": p, "log": tmp_path / "proxy.log"}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


def _up(port: int) -> bool:
    try:
        return request(f"http://127.0.0.1:{port}", "/health", timeout=1).status == 200
    except OSError:
        return False


def test_dead_upstream_is_502_and_slow_upstream_is_504(lone_proxy: dict[str, object]) -> None:
    url = str(lone_proxy["url"])
    r = request(url, "/gone/x")
    assert r.status == 502 and r.json()["error"] == "upstream_unreachable"
    r = request(url, "/web/echo?delay=3")
    assert r.status == 504 and r.json()["error"] == "upstream_timeout"
    assert request(url, "/web/echo").status == 200  # the proxy is still fine


def test_access_log_has_one_line_per_response(lone_proxy: dict[str, object]) -> None:
    url = str(lone_proxy["url"])
    r = request(url, "/gone/x?q=1", headers={"x-request-id": "trace-me-1"})
    assert r.status == 502
    log_path = lone_proxy["log"]
    assert isinstance(log_path, Path)

    def logged() -> list[dict[str, object]]:
        lines = [
            json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")
        ]
        return [
            e for e in lines if e.get("event") == "access" and e.get("request_id") == "trace-me-1"
        ]

    wait_for(lambda: bool(logged()), what="the access log line")
    entry = logged()[0]
    assert entry["status"] == 502 and entry["method"] == "GET" and entry["target"] == "/gone/x?q=1"
    assert entry["client"] == "127.0.0.1" and isinstance(entry["duration_ms"], float)


def test_upstream_error_status_passes_through(lone_proxy: dict[str, object]) -> None:
    r = request(str(lone_proxy["url"]), "/web/echo?status=418")
    assert r.status == 418


def test_drain_finishes_requests_in_flight_then_exits_zero(lone_proxy: dict[str, object]) -> None:
    url = str(lone_proxy["url"])
    process = lone_proxy["process"]
    assert isinstance(process, subprocess.Popen)
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
