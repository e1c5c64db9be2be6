"""Issue 12 through the real fleet: access-log lines, /metrics, trace context."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from tests.e2e.harness import RunningFleet, request
from tests.support.polling import wait_for

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


def access_log(fleet: RunningFleet, proxy_url: str) -> Path:
    port = int(proxy_url.rsplit(":", 1)[1])
    names = [n for n in fleet.ports if n.startswith("proxy-") and n.endswith(f"-{port}")]
    return fleet.fleet.run_dir / "logs" / f"access-{names[0]}.log"


def line_for(fleet: RunningFleet, proxy_url: str, request_id: str) -> dict[str, Any]:
    """The access-log line of ``request_id`` (flushed within a second of the answer)."""
    path = access_log(fleet, proxy_url)
    found: dict[str, Any] = {}

    def look() -> bool:
        if not path.exists():
            return False
        for raw in path.read_text().splitlines():
            doc = json.loads(raw)
            if doc["request_id"] == request_id:
                found.update(doc)
                return True
        return False

    wait_for(look, timeout_s=10, what=f"the access-log line of {request_id} in {path}")
    return found


def rid() -> str:
    return f"obs-{uuid.uuid4().hex[:12]}"


def test_a_cached_hit_is_logged_with_its_user_and_no_token(fleet: RunningFleet, token: str) -> None:
    proxy = fleet.kr_proxies[0]
    path = f"/image/image.png?v={uuid.uuid4().hex}&access_token={token}"
    auth = {"authorization": f"Bearer {token}", "user-agent": "obs-test/1"}
    request(proxy, path, headers={**auth, "x-request-id": rid()})
    second = rid()
    r = request(proxy, path, headers={**auth, "x-request-id": second})
    assert r.headers["x-cache"] == "HIT"
    assert r.headers["x-request-id"] == second  # its own, not the one that filled the entry
    line = line_for(fleet, proxy, second)
    assert line["cache"] == "HIT" and line["status"] == 200
    assert line["service"] == "image" and line["region"] == "ko_KR"
    assert line["user"] == "e2e-user" and line["user_agent"] == "obs-test/1"
    assert line["bytes_out"] == len(r.body) > 30_000
    assert token not in json.dumps(line) and "access_token=REDACTED" in line["path"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"])
    assert line["duration_ms"] >= 0 and line["client_ip"] == "127.0.0.1"


def test_a_401_names_its_error_and_the_body_carries_the_request_id(fleet: RunningFleet) -> None:
    proxy = fleet.kr_proxies[0]
    request_id = rid()
    r = request(proxy, "/video/index.html", headers={"x-request-id": request_id})
    assert r.status == 401 and r.json()["request_id"] == request_id
    line = line_for(fleet, proxy, request_id)
    assert (line["status"], line["error"], line["user"]) == (401, "unauthorized", "-")
    assert line["upstream"] == "-" and line["cache"] == "-"


def test_a_cross_region_forward_names_the_other_regions_elb(
    fleet: RunningFleet, token: str
) -> None:
    proxy = fleet.kr_proxies[0]
    request_id = rid()
    headers = {"authorization": f"Bearer {token}", "x-region": "en_US", "x-request-id": request_id}
    assert request(proxy, "/sound/index.html", headers=headers).status == 200
    line = line_for(fleet, proxy, request_id)
    assert line["region"] == "en_US" and line["service"] == "sound"
    assert line["upstream"] == fleet.en_elb and line["upstream_ms"] is not None


def test_a_retried_request_counts_its_retries(fleet: RunningFleet, token: str) -> None:
    proxy = fleet.kr_proxies[1]
    request_id = rid()
    headers = {"authorization": f"Bearer {token}", "x-request-id": request_id}
    r = request(proxy, f"/video/echo?drop=1&v={uuid.uuid4().hex}", headers=headers)
    assert r.status == 502
    line = line_for(fleet, proxy, request_id)
    assert line["retries"] == 1 and line["upstream"].startswith("http://127.0.0.1:")
    assert line["error"] == r.json()["error"] and line["upstream_ms"] is None


def test_traceparent_is_continued_with_a_new_span(fleet: RunningFleet, token: str) -> None:
    proxy = fleet.kr_proxies[0]
    request_id = rid()
    headers = {
        "authorization": f"Bearer {token}",
        "traceparent": PARENT,
        "tracestate": "vendor=opaque",
        "x-request-id": request_id,
    }
    echoed = dict(
        (k, v) for k, v in request(proxy, "/video/echo", headers=headers).json()["headers"]
    )
    version, trace, span, flags = echoed["traceparent"].split("-")
    assert (version, trace, flags) == ("00", TRACE, "01") and span != "00f067aa0ba902b7"
    assert echoed["tracestate"] == "vendor=opaque" and echoed["x-request-id"] == request_id
    assert line_for(fleet, proxy, request_id)["trace_id"] == TRACE


def test_an_invalid_traceparent_is_replaced(fleet: RunningFleet, token: str) -> None:
    headers = {"authorization": f"Bearer {token}", "traceparent": "00-zz-bad-01"}
    echoed = dict(
        (k, v)
        for k, v in request(fleet.kr_proxies[0], "/video/echo", headers=headers).json()["headers"]
    )
    version, trace, _, flags = echoed["traceparent"].split("-")
    assert version == "00" and len(trace) == 32 and trace != "0" * 32 and flags == "00"


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_are_served_direct_and_refused_through_the_elb(fleet: RunningFleet) -> None:
    through = request(fleet.kr_elb, "/metrics")
    assert through.status == 404 and b"gateway_requests_total" not in through.body
    # nor the auth server's or a backend's, forwarded by a proxy (open and public services)
    for path in ("/auth/metrics", "/open/metrics"):
        forwarded = request(fleet.kr_elb, path)
        assert forwarded.status == 404 and b"process_resident" not in forwarded.body, path
    for url in (
        fleet.kr_proxies[0],
        f"http://127.0.0.1:{fleet.auth_ports[0]}",
        f"http://127.0.0.1:{fleet.backends[0]}",
    ):
        r = request(url, "/metrics")
        assert r.status == 200 and r.headers["content-type"].startswith("text/plain")
        assert b"process_resident_memory_bytes" in r.body
        assert b"gateway_open_connections" in r.body


def test_request_counters_move_as_traffic_does(fleet: RunningFleet, token: str) -> None:
    proxy = fleet.kr_proxies[0]
    labels = {"region": "ko_KR", "service": "video", "method": "GET", "code": "200"}
    before = metric(request(proxy, "/metrics").body.decode(), "gateway_requests_total", **labels)
    for _ in range(5):
        assert (
            request(proxy, "/video/index.html", headers={"authorization": f"Bearer {token}"}).status
            == 200
        )
    text = request(proxy, "/metrics").body.decode()
    assert metric(text, "gateway_requests_total", **labels) == before + 5
    assert metric(text, "gateway_instance_up", service="video") == 2
    assert metric(text, "gateway_auth_verdicts_total", result="valid") >= 5
    assert metric(text, "gateway_request_duration_seconds_count", service="video") >= 5
    assert "/video/index.html" not in text  # paths are never labels


def test_a_bad_proxy_header_is_logged_and_counted(fleet: RunningFleet) -> None:
    """A connection from an ELB's address whose PROXY header is bad carried no request: it is
    still one bounded access-log line (status 0, its reason as the error) and a counter."""
    import socket

    from httpio.proxyproto import SIGNATURE

    proxy = fleet.kr_proxies[0]
    port = int(proxy.rsplit(":", 1)[1])
    labels = {"reason": "bad_proxy_header"}
    name = "gateway_connections_dropped_total"
    before = metric(request(proxy, "/metrics").body.decode(), name, **labels)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(SIGNATURE + b"\x13\x11\x00\x00GET / HTTP/1.1\r\n\r\n")
        assert sock.recv(100) == b""  # closed without a word
    after = metric(request(proxy, "/metrics").body.decode(), name, **labels)
    assert after == before + 1
    path = access_log(fleet, proxy)

    def logged() -> bool:
        raws = path.read_text().splitlines() if path.exists() else []
        errors = [str(json.loads(raw)["error"]) for raw in raws]
        return errors.count("bad_proxy_header") >= after

    wait_for(logged, timeout_s=10, what=f"a bad_proxy_header line in {path}")
    lines = [json.loads(raw) for raw in path.read_text().splitlines()]
    line = [x for x in lines if x["error"] == "bad_proxy_header"][-1]
    assert (line["status"], line["method"], line["path"], line["client_ip"]) == (
        0,
        "-",
        "-",
        "127.0.0.1",
    )
    assert re.fullmatch(r"[0-9a-f]{22}", line["request_id"])


def test_admin_cache_shows_tiers_and_hit_ratios_direct_only(
    fleet: RunningFleet, token: str
) -> None:
    proxy = fleet.kr_proxies[0]
    path = f"/image/image.png?v={uuid.uuid4().hex}"
    for _ in range(2):
        request(proxy, path, headers={"authorization": f"Bearer {token}"})
    doc = request(proxy, "/admin/cache").json()
    assert doc["memory"]["entries"] >= 1 and 0 < doc["hit_ratio"] <= 1
    assert {"breaker", "connected"} <= set(doc["redis"])
    assert request(fleet.kr_elb, "/admin/cache").status == 404


def test_fleet_top_renders_every_process_and_service(fleet: RunningFleet, token: str) -> None:
    import subprocess
    import sys

    for _ in range(3):
        request(fleet.kr_elb, "/video/index.html", headers={"authorization": f"Bearer {token}"})
    topology = fleet.fleet.run_dir.parent / "fleet.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "topology.fleet", "top", str(topology), "--once", "--width", "160"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = done.stdout
    for name in fleet.ports:
        if name.startswith(("proxy-", "authsvc-", "backend-")):
            assert name in text, text
    assert "down" not in text, text
    assert "video" in text and "2/2" in text  # video's two instances up
    assert "last reload per proxy" in text


class TopOnATerminal:
    """``fleet top`` in live mode on a pseudo-terminal of 60 x 160, as an operator runs it;
    what it wrote so far, without the terminal's escape sequences, split into its frames."""

    ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\r")

    def __init__(self, topology: Path) -> None:
        import fcntl
        import os
        import pty
        import struct
        import subprocess
        import sys
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 60, 160, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "160", "LINES": "60"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "topology.fleet", "top", str(topology), "--interval", "0.5"],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            close_fds=True,
        )
        os.close(slave)
        self.raw = b""

    def read(self) -> None:
        """What the terminal received so far (waiting at most 0.2 s for more)."""
        import os
        import select

        while select.select([self.master], [], [], 0.2)[0]:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the other end closed
                return
            if not chunk:
                return
            self.raw += chunk

    def video_rates(self) -> list[float]:
        """video's req/s in each frame drawn so far that has a video row."""
        text = self.ANSI.sub("", self.raw.decode("utf-8", "replace"))
        rates = []
        for line in text.splitlines():
            cells = [c.strip() for c in line.split("\u2502")]  # rich's box-drawing bar
            if len(cells) >= 7 and cells[1] == "video" and "/" in cells[5]:
                rates.append(float(cells[2]))
        return rates

    def stop(self) -> int:
        import os
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            code = self.process.wait(timeout=20)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.read()
            os.close(self.master)
        return code


def test_fleet_top_live_refreshes_as_traffic_moves_counters(
    fleet: RunningFleet, token: str
) -> None:
    """The live loop, not ``--once``: on a terminal, frame after frame, video's req/s goes from
    idle to busy while requests flow and back to 0.0 once they stop; Ctrl-C ends it cleanly.
    Each step waits for a condition under a deadline, whatever the machine's speed."""
    import time

    top = TopOnATerminal(fleet.fleet.run_dir.parent / "fleet.yaml")
    auth = {"authorization": f"Bearer {token}"}
    try:
        deadline = time.monotonic() + 60
        while "last reload per proxy" not in top.raw.decode("utf-8", "replace"):
            assert time.monotonic() < deadline and top.process.poll() is None, top.raw[-2000:]
            top.read()
        idle = top.video_rates()
        assert all(rate == 0.0 for rate in idle), idle  # no video traffic yet
        drawn = len(idle)
        while not any(rate > 0 for rate in top.video_rates()[drawn:]):
            assert time.monotonic() < deadline and top.process.poll() is None, top.raw[-2000:]
            for _ in range(5):
                assert request(fleet.kr_elb, "/video/index.html", headers=auth).status == 200
            top.read()
        busy = len(top.video_rates())
        while 0.0 not in top.video_rates()[busy:]:  # the traffic stopped: idle again
            assert time.monotonic() < deadline and top.process.poll() is None, top.raw[-2000:]
            top.read()
        assert "proxy-ko_KR-" in top.raw.decode("utf-8", "replace")
    finally:
        code = top.stop()
    assert code == 0, top.raw[-2000:]


def test_the_elb_serves_its_own_metrics_and_counts_connections(fleet: RunningFleet) -> None:
    port = fleet.fleet.plan.topology.regions[0].elb_metrics_port
    request(fleet.kr_elb, "/health")
    text = request(f"http://127.0.0.1:{port}", "/metrics").body.decode()
    assert metric(text, "elb_connections_total") >= 1
    assert metric(text, "elb_proxy_up") == len(fleet.kr_proxies)
    assert "process_resident_memory_bytes" in text
