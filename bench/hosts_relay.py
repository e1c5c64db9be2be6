"""``make bench-hosts``, part 2: the ELB's relay to a proxy on another host against its
hand-off to a proxy on its own, in one run (`bench.hosts` calls `measure_relay`).

Two simulated hosts (`tests.support.netns`, root only): host a runs two ELBs, a proxy and
a backend; host b a second proxy. ELB ``handoff`` (region ``local``) has the proxy of a,
which it hands each client's socket (same host, same network namespace); ELB ``relay``
(region ``remote``) has the proxy of b, which it reaches over TCP with a PROXY v2 header.
Both proxies forward to the same backend on a, so the two paths differ only in the ELB's
way to its proxy (and b's one veth hop back to the backend). One launcher per host
(``fleet --host``), as a real fleet over two machines runs.

The load is ``ab`` from the test's own namespace over the bridge, without keep-alive (a new
connection per request: the ELB's work is per connection, so this is where the paths
differ most) and, as a second row, with keep-alive (``-k``: the relay's byte copying).
Paths are measured in alternating rounds so the drift of a shared machine falls on both;
each row is the median of its rounds; the hand-off is the anchor.
"""

from __future__ import annotations

import json
import re
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HANDOFF_ELB, RELAY_ELB, PROXY_A, PROXY_B, BACKEND = 9000, 9001, 6000, 6001, 5000
START_TIMEOUT_S = 90.0


@dataclass(frozen=True, slots=True)
class RelayRow:
    path: str  # handoff | relay
    keepalive: bool
    rate: float  # requests per second, median of rounds
    failed: int
    rounds: int


def _topology(work: Path, a: str, b: str) -> Path:
    msa = {
        "service": [
            {"name": "echo", "public": True, "instance": [f"http://localhost:{BACKEND}"]},
        ]
    }
    config = {"Auth_key": secrets.token_hex(32), "Cache_or_not": False}
    topology = {
        "hosts": [
            {"name": "a", "address": a, "ports": [HANDOFF_ELB, RELAY_ELB, PROXY_A, BACKEND]},
            {"name": "b", "address": b, "ports": [PROXY_B]},
        ],
        "regions": [
            {"code": "local", "elb_port": HANDOFF_ELB, "proxy_ports": [PROXY_A], "msa": "msa.json"},
            {"code": "remote", "elb_port": RELAY_ELB, "proxy_ports": [PROXY_B], "msa": "msa.json"},
        ],
        "backends": {"ports": [BACKEND]},
        "redis": {"enabled": False},
        "config": "config.json",
        "run_dir": str(work / "run"),
    }
    (work / "msa.json").write_text(json.dumps(msa))
    (work / "config.json").write_text(json.dumps(config))
    path = work / "topology.yaml"
    path.write_text(json.dumps(topology))
    return path


def _launched(log: Path) -> bool:
    return b"fleet: up" in log.read_bytes()


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench-hosts: timed out waiting for {what}")
        time.sleep(0.1)


def _ab(url: str, requests: int, concurrency: int, keepalive: bool) -> tuple[float, int]:
    argv = ["ab", "-q", "-n", str(requests), "-c", str(concurrency), "-s", "10"]
    argv += ["-k", url] if keepalive else [url]
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    rate = re.search(r"Requests per second:\s+([\d.]+)", out)
    if rate is None:
        raise RuntimeError(f"bench-hosts: ab gave no rate:\n{out[-1000:]}")
    # ab's "Length" failures are answers whose length differs from the first one's: the
    # echo's serial number grows a digit; only connect/receive/exceptions and non-2xx count.
    errors = 0
    for pattern in (r"Connect: (\d+)", r"Receive: (\d+)", r"Exceptions: (\d+)",
                    r"Non-2xx responses:\s+(\d+)"):  # fmt: skip
        found = re.search(pattern, out)
        errors += int(found.group(1)) if found else 0
    return float(rate.group(1)), errors


def measure_relay(
    workdir: Path, *, rounds: int = 3, requests: int = 3000, concurrency: int = 16
) -> list[RelayRow]:
    """The rows of part 2; [] with a message when simulated hosts cannot be made here."""
    from tests.support.netns import simulated_hosts, unavailable

    why = unavailable()
    if why:
        print(f"bench-hosts: relay vs hand-off skipped: {why}", file=sys.stderr)
        return []
    work = workdir / "relay"
    work.mkdir()
    rows: list[RelayRow] = []
    with simulated_hosts(["a", "b"]) as lab:
        a, b = lab["a"], lab["b"]
        topology = _topology(work, a.address, b.address)
        for host in (b, a):
            argv = [sys.executable, "-m", "topology.fleet", "--host", host.name]
            argv += ["--run-dir", str(work / "run" / host.name), str(topology)]
            log = work / f"fleet-{host.name}.log"
            host.spawn(f"fleet-{host.name}", argv, log, cwd=ROOT)
            _wait_for(partial(_launched, log), log.name, START_TIMEOUT_S)
        urls = {
            "handoff": f"http://{a.address}:{HANDOFF_ELB}/echo/echo",
            "relay": f"http://{a.address}:{RELAY_ELB}/echo/echo",
        }
        for keepalive in (False, True):
            for url in urls.values():  # warm-up: links, pools, health
                _ab(url, 200, 4, keepalive)
            results: dict[str, list[tuple[float, int]]] = {p: [] for p in urls}
            for i in range(rounds):
                order = list(urls) if i % 2 == 0 else list(urls)[::-1]
                for path in order:
                    results[path].append(_ab(urls[path], requests, concurrency, keepalive))
            for path, runs in results.items():
                rate = statistics.median(r for r, _ in runs)
                rows.append(RelayRow(path, keepalive, rate, sum(e for _, e in runs), rounds))
        elb_log = (work / "run" / "a" / "logs" / f"elb-local-{HANDOFF_ELB}.log").read_text()
        if "handoff_link_up" not in elb_log:
            print("bench-hosts: the hand-off ELB never linked to its proxy", file=sys.stderr)
    return rows


def report_relay(rows: list[RelayRow]) -> str:
    lines = [f"{'connections':12} {'path':8} {'req/s':>9} {'vs handoff':>10} {'failed':>6}"]
    anchors = {r.keepalive: r.rate for r in rows if r.path == "handoff"}
    for r in rows:
        anchor = anchors.get(r.keepalive)
        ratio = f"{r.rate / anchor:10.2f}" if anchor else f"{'-':>10}"
        kind = "keep-alive" if r.keepalive else "new each"
        lines.append(f"{kind:12} {r.path:8} {r.rate:9.1f} {ratio} {r.failed:6}")
    return "\n".join(lines)
