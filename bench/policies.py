"""``python -m bench.policies``: what each load-balancing policy does with a slow instance,
and (``--cost``) what the policy layer costs a proxy.

Default mode: three backends, one of them slowed by ``backend --delay-ms`` (20 ms: a
far-away or overloaded instance that still passes its health checks, since ``/health`` is
never delayed), and one proxy per policy in front of all three. Each proxy is driven in turn
with ``wrk -c C -d D`` (keep-alive; a threaded Python client when wrk is missing), and the
backends' own ``GET /stats`` counters, read before and after each run, say which share of
the requests the slow instance got. Round robin gives it a third whatever it costs; the
policies that look at the load (``least_conn``: in-flight requests; ``p2c``: in-flight times
latency EWMA) should starve it, and the clients' p99 shows what that is worth.

``--cost``: one proxy per policy in front of the same fast backend(s), driven like ``make
regular`` (``ab -c 20 -n 20000``, a new connection per request, after ``--warmup`` requests
that are not counted), plus the backend alone as a baseline row. The policy is the only
difference between the proxy rows, so their req/s gap is the policy's cost. With one
instance (the default) a pick is almost free for every policy (``p2c`` has nothing to draw
from), so the rows measure the layer around it: health poll, in-flight and EWMA bookkeeping.
``--instances 3`` gives the policies something to choose among. On a 2-core machine ab, the
proxy and the backend share the cores, and any other load on the machine moves the rows by
tens of percent; ``--rounds`` repeats the rows interleaved and reports the median. The
``pick us`` column is the steadier answer: ``ServicePool.pick`` + ``begin`` + ``end`` timed in
this process, the whole per-request cost of the policy layer, to set against the
microseconds per request that 1 / req/s gives.

Every child is started here on free ports of 127.0.0.1 and stopped by its PID (SIGTERM, then
SIGKILL after ``STOP_TIMEOUT_S``) on the way out, whatever happened. Results are printed as a
table and saved as JSON in ``bench/results/policies-<timestamp>.json`` (or ``policy-cost-``).
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import trio

from bench import run
from bench.caddy import free_port
from bench.parse import BenchOutputError, BenchResult, format_rows
from httpio.balance import Endpoint, ServicePool, normalize_policy
from httpio.health import Outcome
from httpio.health_check import probe_origin

BIN = Path(sys.executable).parent
SERVICE = "web"
PATH = "/index.html"  # a static file: counted as ``static_hits`` by each backend's /stats
POLICIES = ("round_robin", "least_conn", "p2c")
COST_POLICIES = ("round_robin", "p2c", "least_conn")
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 1.0  # one readiness probe; the deadline over all of them is READY_TIMEOUT_S
HEALTHCHECK_INTERVAL_S = 5  # the slow instance must stay "healthy": only its answers are slow
PYTHON_CLIENT_MAX_REQUESTS = 1_000_000  # per thread; the duration ends a run long before
PICK_SAMPLES = 20000  # in-process picks timed per policy by --cost (~0.1 s each)


# -- the processes ---------------------------------------------------------------------------
@dataclass
class Child:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Children:
    """Processes this run started, stopped in reverse order by `stop_all`."""

    workdir: Path
    started: list[Child] = field(default_factory=list)

    def spawn(self, name: str, port: int, args: list[str]) -> Child:
        with open(self.workdir / f"{name}.log", "wb") as log:  # the child keeps its own copy
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        child = Child(name, port, process)
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        for child in reversed(self.started):
            stop(child.process)


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)  # proxies and backends drain on SIGTERM
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT_S)


@contextmanager
def children() -> Iterator[Children]:
    with tempfile.TemporaryDirectory(prefix="bench-policies-") as workdir:
        found = Children(Path(workdir))
        try:
            yield found
        finally:
            found.stop_all()


def get_json(url: str, path: str) -> Any:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=HTTP_TIMEOUT_S)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"{url}{path} answered {resp.status}: {body[:200]!r}")
        return json.loads(body)
    finally:
        conn.close()


def wait_ready(child: Child) -> None:
    """Until ``child`` passes the health probe every process uses (`httpio.health_check`)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with status {child.process.returncode}")
        if trio.run(probe_origin, child.url, "/health", PROBE_TIMEOUT_S):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{child.name} did not answer /health within {READY_TIMEOUT_S:g}s")


def start_backend(kids: Children, delay_ms: float = 0.0) -> Child:
    port = free_port()
    args = [str(BIN / "backend"), str(port)]
    if delay_ms:
        args += ["--delay-ms", f"{delay_ms:g}"]
    return kids.spawn(f"backend-{port}", port, args)


def proxy_files(directory: Path, policy: str, backends: Sequence[str]) -> list[Path]:
    """msa.yaml, rs.yaml and config.json of a proxy whose one public service ``web`` spreads
    over ``backends`` with ``policy``."""
    directory.mkdir(parents=True, exist_ok=True)
    msa, rs, config = directory / "msa.yaml", directory / "rs.yaml", directory / "config.json"
    instances = ", ".join(f'"{url}"' for url in backends)
    msa.write_text(
        f"service:\n  - name: {SERVICE}\n    public: true\n    policy: {policy}\n"
        f"    instance: [{instances}]\n"
    )
    # The region's ELB is never dialled: every request here is for the local region.
    rs.write_text(
        "cur_region_code: bench\nregions:\n  - region_code: bench\n"
        '    available_zone: ["http://127.0.0.1:9"]\n'
    )
    config.write_text(
        json.dumps(
            {
                "Auth_key": "bench-policies-key-long-enough-for-hs256",
                "MSA_healthcheck_interval": HEALTHCHECK_INTERVAL_S,
                "Load_balancer_policy": policy,
            }
        )
    )
    return [msa, rs, config]


def start_proxy(kids: Children, policy: str, backends: Sequence[Child], label: str = "") -> Child:
    port = free_port()
    name = f"proxy-{label or policy}-{port}"
    files = proxy_files(kids.workdir / name, policy, [b.url for b in backends])
    return kids.spawn(name, port, [str(BIN / "proxy"), str(port), *map(str, files)])


# -- the load --------------------------------------------------------------------------------
def drive_wrk(url: str, connections: int, duration_s: float) -> run.Run:
    scenario = run.Scenario("policies", "wrk", PATH, connections, duration=f"{duration_s:g}s")
    return run.run_scenario(scenario, url, [], run.Overrides())


def drive_ab(url: str, concurrency: int, requests: int) -> run.Run:
    scenario = run.Scenario("policy-cost", "ab", PATH, concurrency, requests, authenticated=False)
    return run.run_scenario(scenario, url, [], run.Overrides())


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (what ab prints) of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(pct / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def drive_python(url: str, connections: int, duration_s: float) -> run.Run:
    """wrk's job when wrk is missing: ``connections`` threads, each one keep-alive connection
    sending GETs until the duration is over. Slower than wrk (the GIL): compare runs made
    with the same tool only."""
    parts = urlsplit(url)
    host, port, path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors = [0] * connections
    non_2xx = [0] * connections
    started = time.monotonic()
    deadline = started + duration_s

    def work(i: int) -> None:
        conn: http.client.HTTPConnection | None = None
        mine = latencies[i]
        for _ in range(PYTHON_CLIENT_MAX_REQUESTS):
            if time.monotonic() >= deadline:
                break
            t0 = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT_S)
                conn.request("GET", path)
                resp = conn.getresponse()
                resp.read()
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                if conn is not None:
                    conn.close()
                conn = None
                continue
            mine.append(time.monotonic() - t0)
            if not 200 <= resp.status < 300:
                non_2xx[i] += 1
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration_s + HTTP_TIMEOUT_S + 5)
    elapsed = time.monotonic() - started
    samples = sorted(ms * 1000 for per_thread in latencies for ms in per_thread)
    if not samples:
        raise BenchOutputError(f"the python client got no answer from {url}")
    result = python_result(samples, elapsed, sum(errors), sum(non_2xx))
    command = ["python-client", "-c", str(connections), "-d", f"{duration_s:g}s", url]
    return run.Run(result, command, "")


def python_result(
    samples: Sequence[float], elapsed: float, errors: int, non_2xx: int
) -> BenchResult:
    """The record of a python-client run: ``samples`` are latencies in ms, ascending."""
    return BenchResult(
        tool="python",
        requests=len(samples),
        duration_s=round(elapsed, 3),
        requests_per_s=round(len(samples) / elapsed, 2),
        failures=errors,
        non_2xx=non_2xx,
        mean_ms=round(sum(samples) / len(samples), 3),
        p50_ms=round(percentile(samples, 50), 3),
        p99_ms=round(percentile(samples, 99), 3),
        longest_ms=round(samples[-1], 3),
        transfer_kib_s=None,
        percentiles_ms={str(p): round(percentile(samples, p), 3) for p in (50, 75, 90, 99)},
    )


# -- the two modes ---------------------------------------------------------------------------
def static_hits(backend: Child) -> int:
    return int(get_json(backend.url, "/stats")["static_hits"])


def slow_share(before: Sequence[int], after: Sequence[int], slow: int) -> float | None:
    """Share of the requests between two readings of the backends' counters that went to
    backend number ``slow``; None when none arrived."""
    deltas = [a - b for a, b in zip(after, before, strict=True)]
    total = sum(deltas)
    return None if total <= 0 else deltas[slow] / total


def compare_policies(args: argparse.Namespace) -> dict[str, Any]:
    use_wrk = shutil.which("wrk") is not None
    if not use_wrk:
        print("warning: wrk is not installed; using the (slower) Python client", file=sys.stderr)
    rows: list[dict[str, Any]] = []
    with children() as kids:
        backends = [
            start_backend(kids, args.slow_delay_ms),
            start_backend(kids),
            start_backend(kids),
        ]
        proxies = {p: start_proxy(kids, p, backends) for p in args.policies}
        for child in [*backends, *proxies.values()]:
            wait_ready(child)
        for policy, proxy in proxies.items():
            url = proxy.url + f"/{SERVICE}{PATH}"
            get_json(proxy.url, "/admin/backends")  # preflight: the proxy answers its admin
            before = [static_hits(b) for b in backends]
            if use_wrk:
                outcome = drive_wrk(url, args.connections, args.duration)
            else:
                outcome = drive_python(url, args.connections, args.duration)
            after = [static_hits(b) for b in backends]
            pool = get_json(proxy.url, "/admin/backends")["services"][0]
            rows.append(
                {
                    "policy": policy,
                    "url": url,
                    "command": outcome.command,
                    "result": msgspec.to_builtins(outcome.result),
                    "backend_hits": [a - b for a, b in zip(after, before, strict=True)],
                    "slow_share": slow_share(before, after, 0),
                    "proxy_view": pool["instances"],
                    "output": outcome.output,
                }
            )
            print(f"{policy}: {' '.join(outcome.command)}", file=sys.stderr)
    return {
        "mode": "policies",
        "slow_delay_ms": args.slow_delay_ms,
        "connections": args.connections,
        "duration_s": args.duration,
        "backends": ["slow", "fast", "fast"],
        "rows": rows,
    }


def pick_cost_us(policy: str, instances: int, picks: int = PICK_SAMPLES) -> float:
    """Microseconds per ``pick`` + ``begin`` + ``end`` of a `ServicePool`, in this process:
    the policy layer's cost per request without the noise of a load test around it."""
    endpoints = [Endpoint.parse(f"http://127.0.0.1:{10000 + i}") for i in range(instances)]
    pool = ServicePool(SERVICE, endpoints, policy=policy, clock=time.monotonic)
    started = time.perf_counter()
    for _ in range(picks):
        endpoint = pool.pick(client_ip="127.0.0.1", url=PATH)
        pool.begin(endpoint)
        pool.end(endpoint, Outcome.SUCCESS, 0.001)
    return (time.perf_counter() - started) / picks * 1e6


def measure_cost(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("ab") is None:
        raise run.FleetUnavailable("ab is not installed (apt-get install apache2-utils)")
    rows: list[dict[str, Any]] = []
    with children() as kids:
        backends = [start_backend(kids) for _ in range(args.instances)]
        proxies = {p: start_proxy(kids, p, backends, f"cost-{p}") for p in args.policies}
        for child in [*backends, *proxies.values()]:
            wait_ready(child)
        targets = [("direct", backends[0].url + PATH)]
        targets += [(p, proxy.url + f"/{SERVICE}{PATH}") for p, proxy in proxies.items()]
        for _, url in targets:  # first requests of a process pay for imports and pools
            drive_ab(url, args.concurrency, args.warmup)
        for round_no in range(args.rounds):
            for label, url in targets:
                outcome = drive_ab(url, args.concurrency, args.requests)
                rows.append(
                    {
                        "row": label,
                        "round": round_no,
                        "url": url,
                        "command": outcome.command,
                        "result": msgspec.to_builtins(outcome.result),
                        "output": outcome.output,
                    }
                )
                print(
                    f"{label} (round {round_no + 1}): {' '.join(outcome.command)}", file=sys.stderr
                )
    return {
        "mode": "cost",
        "instances": args.instances,
        "concurrency": args.concurrency,
        "requests": args.requests,
        "rounds": args.rounds,
        "warmup_requests": args.warmup,
        "pick_us": {p: round(pick_cost_us(p, args.instances), 2) for p in args.policies},
        "rows": rows,
    }


# -- reporting -------------------------------------------------------------------------------
def _num(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def policies_table(record: dict[str, Any]) -> str:
    lines = []
    for row in record["rows"]:
        r = row["result"]
        share = row["slow_share"]
        lines.append(
            (
                row["policy"],
                _num(r["requests_per_s"], 1),
                _num(r["p50_ms"]),
                _num(r["p99_ms"]),
                "-" if share is None else f"{share * 100:.1f}%",
                "/".join(map(str, row["backend_hits"])),
                str(r["failures"] + r["non_2xx"]),
            )
        )
    header = ("policy", "req/s", "p50 ms", "p99 ms", "to slow", "hits slow/fast/fast", "errors")
    return format_rows(header, lines)


def median_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per row label (in first-seen order), the run with the median req/s."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_label.setdefault(row["row"], []).append(row)
    chosen = []
    for runs in by_label.values():
        ordered = sorted(runs, key=lambda r: float(r["result"]["requests_per_s"]))
        chosen.append(ordered[(len(ordered) - 1) // 2])
    return chosen


def cost_table(record: dict[str, Any]) -> str:
    rows = median_rows(record["rows"])
    base = next(
        (float(r["result"]["requests_per_s"]) for r in rows if r["row"] == "round_robin"), None
    )
    lines = []
    for row in rows:
        r = row["result"]
        rps = float(r["requests_per_s"])
        vs = "-" if base is None or row["row"] == "direct" else f"{(rps / base - 1) * 100:+.1f}%"
        lines.append(
            (
                row["row"],
                _num(record["pick_us"].get(row["row"])),
                _num(rps, 1),
                vs,
                _num(r["mean_ms"]),
                _num(r["p99_ms"], 0),
                str(r["failures"] + r["non_2xx"]),
            )
        )
    header = ("row", "pick us", "req/s", "vs round_robin", "mean ms", "p99 ms", "errors")
    return format_rows(header, lines)


def save(out_dir: Path, name: str, record: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime())
    path = out_dir / f"{name}-{stamp}.json"
    path.write_text(json.dumps({"started": stamp, **record}, indent=2) + "\n")
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.policies",
        description="load-balancing policies against a slow instance, or (--cost) their cost",
    )
    parser.add_argument("--cost", action="store_true", help="measure the policy layer's cost")
    parser.add_argument("--policies", help="comma-separated (default: all three of the mode)")
    parser.add_argument("--duration", type=float, default=8.0, help="wrk seconds per policy")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument(
        "--slow-delay-ms", type=float, default=20.0, help="the slow backend's delay"
    )
    parser.add_argument("--requests", type=int, default=20000, help="--cost: ab -n")
    parser.add_argument("--concurrency", type=int, default=20, help="--cost: ab -c")
    parser.add_argument("--instances", type=int, default=1, help="--cost: fast backends")
    parser.add_argument("--rounds", type=int, default=1, help="--cost: interleaved repetitions")
    parser.add_argument(
        "--warmup", type=int, default=500, help="--cost: ab -n per row before measuring"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    default = COST_POLICIES if args.cost else POLICIES
    try:
        names = args.policies.split(",") if args.policies else default
        args.policies = tuple(dict.fromkeys(normalize_policy(n) for n in names))
    except ValueError as exc:
        parser.error(str(exc))
    for name, value in (
        ("--duration", args.duration),
        ("--connections", args.connections),
        ("--requests", args.requests),
        ("--concurrency", args.concurrency),
        ("--instances", args.instances),
        ("--rounds", args.rounds),
        ("--warmup", args.warmup),
    ):
        if not value > 0:
            parser.error(f"{name} must be positive")
    if not 0 < args.slow_delay_ms <= 10_000:
        parser.error("--slow-delay-ms must be within (0, 10000]")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run.raise_open_files_limit()
    try:
        record = measure_cost(args) if args.cost else compare_policies(args)
    except (
        run.FleetUnavailable,
        BenchOutputError,
        RuntimeError,
        OSError,
        subprocess.TimeoutExpired,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    path = save(args.out, "policy-cost" if args.cost else "policies", record)
    print(f"  -> {path}", file=sys.stderr)
    print(cost_table(record) if args.cost else policies_table(record))
    return 0


if __name__ == "__main__":
    sys.exit(main())
