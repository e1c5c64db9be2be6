"""What issue 11's filters cost when they are configured and never trigger: ``make bench-edge``.

One proxy process (a real ``proxy``, on free ports) serves two services on the same demo
backend and the same Redis: ``plain`` has none of the edge filters, ``edge`` has every one
(an allow list that admits 127.0.0.1, CORS, explicit routes with methods, a body limit, a
fleet-wide and a local rate limit far above the load, request and response header rules).
The fleet-wide limit's burst leases 64 tokens per Redis round trip (`httpio.rate_lease`);
``--exact`` makes it too small to lease, a round trip per request, as before leases.
Both are ``public`` (the token check is in both chains, and cheap). wrk (keep-alive) and ab
(a connection per request) alternate between the two in one run, two rounds each, so the
machine's noise falls on both; the result is the ratio edge/plain per tool. On a shared,
busy machine throughput swings with the neighbours' load far more than by the filters' cost,
so each run also reads the CPU time the proxy (and redis-server) spent (``/proc/<pid>/stat``)
over the requests it served: CPU per request is what the filters add, and it does not depend
on how much of the CPU the proxy got. JSON goes to ``bench/results/edge-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.parse import parse_ab, parse_wrk
from tests.support.ports import free_ports
from tests.support.redisproc import running_redis

MSA = """service:
  - name: plain
    instance: ["http://127.0.0.1:{backend}"]
    public: true
  - name: edge
    instance: ["http://127.0.0.1:{backend}"]
    public: true
    routes:
      - {{path: "/api/edge/", methods: [GET, HEAD, POST], strip_prefix: true}}
    allow_cidrs: ["127.0.0.0/8", "::1/128"]
    deny_cidrs: ["192.0.2.0/24"]
    cors: {{allow_origins: ["https://app.example.com"], allow_methods: [GET, POST]}}
    max_body_bytes: 1048576
    rate_limit:
      - {{key: client_ip, rate_per_s: 1000000, burst: {burst}, scope: {scope}}}
      - {{key: "header:X-Api-Key", rate_per_s: 1000000, burst: 1000000, scope: local}}
    request_headers: {{set: {{X-Client: "${{client_ip}}"}}}}
    response_headers: {{set: {{X-Region: "${{region}}"}}, remove: [X-Powered-By]}}
"""
RS = """cur_region_code: ko_KR
regions:
  - {{region_code: ko_KR, available_zone: ["http://127.0.0.1:{elb}"]}}
"""


def wait_ok(url: str, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"bench-edge: {url} did not answer within {deadline_s}s")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (Linux ``/proc/<pid>/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_load(tool: str, url: str, seconds: int, connections: int) -> dict[str, object]:
    if tool == "wrk":
        cmd = ["wrk", "-t", "1", "-c", str(connections), "-d", f"{seconds}s", "--latency", url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True)
        result = parse_wrk(out.stdout)
    else:
        cmd = [
            "ab",
            "-q",
            "-s",
            "10",
            "-c",
            str(connections),
            "-t",
            str(seconds),
            "-n",
            "1000000",
            url,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True)
        result = parse_ab(out.stdout)
    return {
        "requests": result.requests,
        "rps": result.requests_per_s,
        "p99_ms": result.p99_ms,
        "failures": result.failures,
        "non_2xx": result.non_2xx,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.edge", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument(
        "--scope", choices=("fleet", "local"), default="fleet", help="the client_ip limit's"
    )
    parser.add_argument(
        "--exact",
        action="store_true",
        help="the client_ip limit's burst 150: too small to lease (a Redis round trip per "
        "request), never reached at 10^6/s",
    )
    args = parser.parse_args(argv)
    bin_dir = Path(sys.executable).parent
    backend_port, proxy_port, elb_port = free_ports(3)
    procs: list[subprocess.Popen[bytes]] = []
    with running_redis() as redis, tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "msa.yaml").write_text(
            MSA.format(backend=backend_port, scope=args.scope, burst=150 if args.exact else 1000000)
        )
        (d / "rs.yaml").write_text(RS.format(elb=elb_port))
        (d / "config.json").write_text(
            json.dumps({"Redis_address": redis.address, "Auth_key": os.urandom(32).hex()})
        )
        try:
            procs.append(
                subprocess.Popen(
                    [bin_dir / "backend", str(backend_port)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            proxy = subprocess.Popen(
                [
                    bin_dir / "proxy",
                    str(proxy_port),
                    d / "msa.yaml",
                    d / "rs.yaml",
                    d / "config.json",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(proxy)
            redis_pid = redis.pid
            assert redis_pid is not None
            base = f"http://127.0.0.1:{proxy_port}"
            targets = {"plain": f"{base}/plain/test.css", "edge": f"{base}/api/edge/test.css"}
            for url in targets.values():
                wait_ok(url)
            rows: list[dict[str, object]] = []
            for rnd in range(args.rounds):
                for tool in ("wrk", "ab"):
                    for name in ("plain", "edge") if rnd % 2 == 0 else ("edge", "plain"):
                        row: dict[str, object] = {"round": rnd, "tool": tool, "chain": name}
                        before = cpu_seconds(proxy.pid), cpu_seconds(redis_pid)
                        row.update(run_load(tool, targets[name], args.seconds, args.connections))
                        requests = row["requests"]
                        assert isinstance(requests, int)
                        served = max(1, requests)
                        row["proxy_cpu_us"] = (cpu_seconds(proxy.pid) - before[0]) / served * 1e6
                        row["redis_cpu_us"] = (cpu_seconds(redis_pid) - before[1]) / served * 1e6
                        rows.append(row)
                        print(json.dumps(row), flush=True)
        finally:
            for p in reversed(procs):
                p.terminate()
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    summary: dict[str, dict[str, float]] = {}
    for tool in ("wrk", "ab"):

        def total(chain: str, tool: str = tool) -> float:
            picked = [r["rps"] for r in rows if r["tool"] == tool and r["chain"] == chain]
            return sum(float(v) for v in picked if isinstance(v, (int, float)))

        def cpu(chain: str, field: str, tool: str = tool) -> float:
            """CPU microseconds per request over the chain's rounds (weighted by requests)."""
            served = spent = 0.0
            for r in rows:
                n, us = r["requests"], r[field]
                if r["tool"] == tool and r["chain"] == chain:
                    assert isinstance(n, int) and isinstance(us, float)
                    served, spent = served + n, spent + us * n
            return spent / max(served, 1.0)

        plain_cpu, edge_cpu = cpu("plain", "proxy_cpu_us"), cpu("edge", "proxy_cpu_us")
        both = cpu("plain", "redis_cpu_us") + plain_cpu, cpu("edge", "redis_cpu_us") + edge_cpu
        summary[tool] = {
            "plain_rps": total("plain") / args.rounds,
            "edge_rps": total("edge") / args.rounds,
            "ratio": total("edge") / total("plain"),
            "plain_proxy_cpu_us": plain_cpu,
            "edge_proxy_cpu_us": edge_cpu,
            "cpu_ratio": plain_cpu / edge_cpu if edge_cpu else 0.0,
            "cpu_ratio_with_redis": both[0] / both[1] if both[1] else 0.0,
        }
    load = os.getloadavg()
    report = {"rows": rows, "summary": summary, "loadavg": load, "args": vars(args)}
    out = Path("bench/results")
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"edge-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    for tool, s in summary.items():
        print(
            f"{tool}: plain {s['plain_rps']:.0f} req/s, edge {s['edge_rps']:.0f} req/s, ratio {s['ratio']:.3f}; "
            f"proxy CPU per request plain {s['plain_proxy_cpu_us']:.0f} us, edge "
            f"{s['edge_proxy_cpu_us']:.0f} us: plain/edge {s['cpu_ratio']:.3f} "
            f"({s['cpu_ratio_with_redis']:.3f} with redis-server's)"
        )
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
