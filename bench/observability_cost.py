"""What the access log and the metrics cost a proxy: the same proxy three ways, same run.

One demo backend and three proxies in front of it, started from the same files, differing only
in their flags: ``bare`` (``--metrics off``, no access log), ``metrics`` (the default) and
``metrics+log`` (``--access-log FILE``, what `make fleet` runs). Each round drives each proxy in
turn with wrk (``make wrk``'s keep-alive load, -c 50) and ab (``make regular``'s, -c 20, a new
connection per request); rounds alternate the order so drift on a shared machine falls on every
variant alike. Reported: req/s and p99 per variant (median over rounds), the proxy's own CPU
time per request (from /proc: what a busy shared machine distorts least), the ratio of each to
``bare``, and the load average before and after (issue 12's budget: metrics within 5 %,
access logs within 10 %).

    python -m bench.observability_cost --rounds 2 --duration 6 --requests 20000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench import policies
from bench.caddy import free_port
from bench.policies import BIN, PATH, SERVICE, Children, children, start_backend, wait_ready

VARIANTS = ("bare", "metrics", "metrics+log")
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` so far (/proc/PID/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def start_variant(kids: Children, variant: str, backend: policies.Child) -> policies.Child:
    port = free_port()
    name = f"proxy-{variant.replace('+', '-')}-{port}"
    files = policies.proxy_files(kids.workdir / name, "round_robin", [backend.url])
    args = [str(BIN / "proxy"), str(port), *map(str, files)]
    if variant == "bare":
        args += ["--metrics", "off"]
    if variant == "metrics+log":
        args += ["--access-log", str(kids.workdir / f"access-{name}.log")]
    return kids.spawn(name, port, args)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    load_before = os.getloadavg()
    rows: dict[str, dict[str, list[float]]] = {
        v: {
            "wrk_rps": [],
            "wrk_p99": [],
            "ab_rps": [],
            "ab_p99": [],
            "wrk_cpu_us": [],
            "ab_cpu_us": [],
        }
        for v in VARIANTS
    }
    with children() as kids:
        backend = start_backend(kids)
        proxies = {v: start_variant(kids, v, backend) for v in VARIANTS}
        for child in [backend, *proxies.values()]:
            wait_ready(child)
        for r in range(args.rounds):
            order = VARIANTS if r % 2 == 0 else tuple(reversed(VARIANTS))
            for variant in order:
                url = proxies[variant].url + f"/{SERVICE}{PATH}"
                pid = proxies[variant].process.pid
                cpu = cpu_seconds(pid)
                wrk = policies.drive_wrk(url, args.connections, args.duration).result
                cpu_wrk = cpu_seconds(pid) - cpu
                cpu = cpu_seconds(pid)
                ab = policies.drive_ab(url, args.concurrency, args.requests).result
                cpu_ab = cpu_seconds(pid) - cpu
                rows[variant]["wrk_cpu_us"].append(cpu_wrk / max(wrk.requests, 1) * 1e6)
                rows[variant]["ab_cpu_us"].append(cpu_ab / max(ab.requests, 1) * 1e6)
                for tool, result in (("wrk", wrk), ("ab", ab)):
                    rows[variant][f"{tool}_rps"].append(result.requests_per_s)
                    rows[variant][f"{tool}_p99"].append(result.p99_ms or float("nan"))
                    if result.failures or result.non_2xx:
                        raise RuntimeError(f"{variant} {tool}: {result}")
        log_lines = sum(1 for p in kids.workdir.glob("access-*.log") for _ in p.open())
    medians = {
        v: {k: statistics.median(vals) for k, vals in cols.items()} for v, cols in rows.items()
    }
    return {
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "rounds": args.rounds,
        "samples": rows,
        "medians": medians,
        "access_log_lines": log_lines,
        "ratios": {
            v: {
                "wrk": medians[v]["wrk_rps"] / medians["bare"]["wrk_rps"],
                "ab": medians[v]["ab_rps"] / medians["bare"]["ab_rps"],
                "wrk_cpu": medians[v]["wrk_cpu_us"] / medians["bare"]["wrk_cpu_us"],
                "ab_cpu": medians[v]["ab_cpu_us"] / medians["bare"]["ab_cpu_us"],
            }
            for v in VARIANTS
        },
    }


def table(record: dict[str, Any]) -> str:
    out = [
        f"{'variant':<13}{'wrk req/s':>11}{'wrk p99':>9}{'ratio':>7}{'ab req/s':>10}{'ab p99':>8}"
        f"{'ratio':>7}{'wrk CPU us/req':>16}{'ratio':>7}{'ab CPU us/req':>15}{'ratio':>7}"
    ]
    for v in VARIANTS:
        m, r = record["medians"][v], record["ratios"][v]
        out.append(
            f"{v:<13}{m['wrk_rps']:>11.0f}{m['wrk_p99']:>9.2f}{r['wrk']:>7.3f}"
            f"{m['ab_rps']:>10.0f}{m['ab_p99']:>8.2f}{r['ab']:>7.3f}"
            f"{m['wrk_cpu_us']:>16.1f}{r['wrk_cpu']:>7.3f}{m['ab_cpu_us']:>15.1f}{r['ab_cpu']:>7.3f}"
        )
    lb, la = record["load_before"], record["load_after"]
    out.append(f"load average before {lb[0]:.2f} {lb[1]:.2f}, after {la[0]:.2f} {la[1]:.2f}")
    out.append(f"access-log lines written: {record['access_log_lines']}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="bench.observability_cost", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=6.0, help="wrk seconds per variant")
    parser.add_argument("--connections", type=int, default=50, help="wrk connections")
    parser.add_argument("--concurrency", type=int, default=20, help="ab concurrency")
    parser.add_argument("--requests", type=int, default=20000, help="ab requests per variant")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    args = parser.parse_args(argv)
    record = measure(args)
    print(table(record))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"observability-cost-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
