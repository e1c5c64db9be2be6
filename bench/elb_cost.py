"""What the ELB hop costs: one proxy hit directly vs the same proxy behind an ELB, same run.

``python -m bench.elb_cost [--proxy http://127.0.0.1:6000] [--rounds 2]`` needs a running
fleet (for the proxy, its backends and a token). It starts its own ELB on a free port in
front of that one proxy (an ``r_*.yaml`` with one entry), then alternates the same load
against the proxy and against the ELB, ``--rounds`` times each, so that drift on a shared
2-core machine affects both sides alike. Both ab (a new connection per request, as the
original's benchmarks) and wrk (keep-alive) are run; the ELB is stopped by its PID.

Hand-offs go only to a proxy of the ELB's own fleet (`httpio.handoff`), so the ELB is given
the running fleet's id, read from ``--run-dir``'s ``fleet.json`` (``run/``, where ``make
fleet`` keeps it); without it the ELB would relay, and this would measure the relay.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.caddy import free_port
from bench.parse import BenchResult
from bench.run import SCENARIOS, Overrides, acquire_token, request_headers, run_scenario
from httpio.handoff import FLEET_ENV
from topology.fleet_lock import FleetLock


def wait_listening(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"the ELB on :{port} did not start")


def wait_linked(log: Path, timeout_s: float = 10.0) -> None:
    """Until the ELB's hand-off link to the proxy is up (its log says so)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if b'"handoff_link_up"' in log.read_bytes():
            return
        time.sleep(0.05)
    raise SystemExit(f"the ELB opened no hand-off link (see {log}): it would only relay")


Row = tuple[str, str, BenchResult]


def measure(args: argparse.Namespace, elb: str, token: str) -> list[Row]:
    """Each scenario, straight to the proxy and through the new ELB, alternating."""
    rows = []
    for scenario_name, overrides in (
        ("regular", Overrides(requests=args.requests)),
        ("wrk", Overrides(duration="8s")),
    ):
        scenario = SCENARIOS[scenario_name]
        headers = request_headers(scenario, token)
        for side, origin in (("direct", args.proxy), ("elb", elb)) * args.rounds:
            run = run_scenario(scenario, origin + args.path, headers, overrides)
            rows.append((scenario_name, side, run.result))
            print(
                f"{scenario_name:8} {side:7} {run.result.requests_per_s:9.1f} req/s"
                f"  failures={run.result.failures}  p99={run.result.p99_ms} ms",
                flush=True,
            )
    return rows


def print_ratios(rows: list[Row]) -> None:
    for name in ("regular", "wrk"):
        direct = [r.requests_per_s for n, s, r in rows if n == name and s == "direct"]
        via = [r.requests_per_s for n, s, r in rows if n == name and s == "elb"]
        ratio = (sum(via) / len(via)) / (sum(direct) / len(direct))
        print(f"{name}: ELB keeps {100 * ratio:.1f} % of the direct throughput")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.elb_cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--proxy", default="http://127.0.0.1:6000")
    parser.add_argument("--elb", default="http://127.0.0.1:9000", help="fleet ELB, for a token")
    parser.add_argument("--path", default="/video/index.html")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("-n", "--requests", type=int, default=20000)
    parser.add_argument("--run-dir", default="run", help="the fleet's run directory base")
    args = parser.parse_args(argv)
    state = FleetLock(Path(args.run_dir)).read_state()
    if state is None:
        raise SystemExit(f"no {args.run_dir}/fleet.json: is `make fleet` running from here?")
    token = acquire_token(args.elb)
    region_code = "bench"
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        r_file = Path(tmp) / "r_bench.yaml"
        r_file.write_text(f'region_code: "{region_code}"\navailable_zone: ["{args.proxy}"]\n')
        elb_bin = Path(sys.executable).parent / "elb"
        with open(Path(tmp) / "elb.log", "wb") as log:
            elb = subprocess.Popen(
                [str(elb_bin), str(port), str(r_file)],
                stdout=log,
                stderr=log,
                env={**os.environ, FLEET_ENV: state.fleet_id},
            )
        try:
            wait_listening(port)
            wait_linked(Path(tmp) / "elb.log")
            print_ratios(measure(args, f"http://127.0.0.1:{port}", token))
        finally:
            elb.terminate()
            elb.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
