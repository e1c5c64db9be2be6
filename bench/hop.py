"""``make bench-hop`` / ``python -m bench.hop``: the speed of one proxy hop (issue 14), ours
against nginx, HAProxy and Caddy in front of the same fast backend, in one alternating run.

The backend is a Debian nginx answering a small JSON body itself (`bench.hop_anchors`), so the
hop, not the backend, is what is measured. In front of it, each on one core: nginx (one
process, upstream keep-alive), HAProxy (``nbthread 1``, ``http-reuse always``), Caddy
(``GOMAXPROCS=1``, `bench.caddy`), and our proxy, one process: a public service with the
cache off (``proxy``), a token-checked service of the same process (``proxy-token``: the
token is signed by an auth server started here, for a user signed up through the proxy),
and a second process with the cache on and every request hitting (``proxy-cache``, with a
redis-server of its own). ``relay`` is a reference, not a product: the ~30-line trio relay
of `bench.hop_relay`, the floor of what trio costs; ``backend`` is the backend without a hop.

Each target is checked before it is measured: the answer through it must be the backend's
JSON body (with this run's nonce) and carry the backend's header, ``proxy-token`` must
refuse a request without a token (401), and ``proxy-cache`` must answer ``X-Cache: HIT``.
Then, after a short warm-up of each, every round runs each load against every target in
turn (targets alternate, so drift on a shared machine touches them alike): ``wrk -t1 -c50``
(keep-alive), ``ab -c20`` (a connection per request, HTTP/1.0) and ``ab -c20 -k``, each for
``--duration`` seconds. The table shows each figure's best and spread and the ratios
(`COMPARISONS`); the JSON record (every command and raw output, the host's load average
before and after) goes to ``bench/results/hop-<time>.json`` and a PNG chart next to it
(skipped with a note when matplotlib, the ``bench`` extra, is missing).

Everything is started here, on free ports of 127.0.0.1, with its config, logs, pid files and
temp paths in one private temporary directory, and stopped by its PID (SIGTERM, then
SIGKILL) on the way out, on an error, Ctrl-C or SIGTERM too.

A target is a name, a label and a function that starts what it needs in the `Lab` and
returns where to aim. Another scenario is a line in `TARGETS` (plus its pair in
`COMPARISONS`). Issue 14's ``--workers`` item is two: ``proxy-w2`` (the public service of a
``proxy --workers 2``, `proxy.workers`) and ``caddy-2`` (``GOMAXPROCS=2``) beside it, read as
``proxy-w2 / proxy`` (the target: >= 1.7 on a 2-core machine) and ``proxy-w2 / caddy-2``.
On 2 cores the load generator shares them with the two workers, so a ratio below 2 is
expected; its CPU is what ``ab``/``wrk`` leave over, not a fault of the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import hop_anchors, hop_report, run
from bench.caddy import CaddyUnavailable
from bench.hop_lab import (
    CACHED,
    PATH,
    PUBLIC,
    READY_TIMEOUT_S,
    TOKEN,
    Lab,
    Target,
    check_target,
    fetch,
    lab_running,
)
from bench.parse import BenchOutputError, parse_ab, parse_wrk
from bench.policies import Child
from httpio.accel import STATE as ACCEL_STATE
from httpio.protocol import H11_NAME

AB_SOCKET_TIMEOUT_S = 10
AB_MAX_REQUESTS = 500_000  # -t stops ab first; ab keeps per-request stats, ~50 bytes each
WRK_TIMEOUT = "10s"
PROCESS_SLACK_S = 60  # a load tool still running this long after its duration is hung


# -- loads -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Load:
    name: str
    tool: str  # "wrk" or "ab"
    concurrency: int
    keepalive: bool


LOADS: dict[str, Load] = {
    load.name: load
    for load in (
        Load("wrk", "wrk", 50, keepalive=True),
        Load("ab", "ab", 20, keepalive=False),
        Load("ab-k", "ab", 20, keepalive=True),
    )
}


def load_command(
    load: Load, url: str, headers: Sequence[tuple[str, str]], duration_s: int
) -> list[str]:
    """The command line of one timed run. Both tools are bounded by time (ab by ``-t``, with
    ``-n`` only as a ceiling), so a slow target and a fast one get the same duration."""
    header_args = [arg for name, value in headers for arg in ("-H", f"{name}: {value}")]
    if duration_s < 1:
        raise ValueError("both tools count time in whole seconds")
    seconds = str(duration_s)
    if load.tool == "wrk":
        return [
            "wrk", "-t1", "-c", str(load.concurrency), "-d", f"{seconds}s",
            "--timeout", WRK_TIMEOUT, "--latency", *header_args, url,
        ]  # fmt: skip
    command = ["ab", "-s", str(AB_SOCKET_TIMEOUT_S), "-c", str(load.concurrency)]
    command += ["-t", seconds, "-n", str(AB_MAX_REQUESTS)]  # -n after -t: -t resets it
    if load.keepalive:
        command.append("-k")
    return [*command, *header_args, url]


def run_load(load: Load, command: list[str], duration_s: int) -> tuple[Any, str]:
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=duration_s + PROCESS_SLACK_S,
        check=False,
    )
    output = completed.stdout + completed.stderr
    parse = parse_wrk if load.tool == "wrk" else parse_ab
    try:
        return parse(output), output
    except BenchOutputError as exc:
        raise BenchOutputError(f"{' '.join(run.redact(command))}: {exc}") from None


# -- the targets -------------------------------------------------------------------------------
Starter = Callable[[Lab], Target]


@dataclass(frozen=True, slots=True)
class TargetSpec:
    name: str
    label: str
    start: Starter


def _hop(lab: Lab, child: Child, name: str, what: str) -> Target:
    url = f"{child.url}{PATH}"
    lab.wait_until_answers(child, url, what)
    return Target(name, what, url, pid=child.process.pid)


def backend(name: str = "backend") -> TargetSpec:
    label = "backend nginx, no hop"

    def start(lab: Lab) -> Target:
        return Target(name, label, f"http://127.0.0.1:{lab.backend_port}{PATH}", reference=True)

    return TargetSpec(name, label, start)


def nginx(name: str = "nginx") -> TargetSpec:
    label = "nginx (1 worker)"
    return TargetSpec(name, label, lambda lab: _hop(lab, lab.nginx(), name, label))


def haproxy(name: str = "haproxy") -> TargetSpec:
    label = "HAProxy (nbthread 1)"
    return TargetSpec(name, label, lambda lab: _hop(lab, lab.haproxy(), name, label))


def caddy(name: str = "caddy", *, gomaxprocs: int = 1) -> TargetSpec:
    label = f"Caddy (GOMAXPROCS={gomaxprocs})"

    def start(lab: Lab) -> Target:
        port = lab.caddy(gomaxprocs)
        return Target(name, label, f"http://127.0.0.1:{port}{PATH}")

    return TargetSpec(name, label, start)


def relay(name: str = "relay") -> TargetSpec:
    label = "REFERENCE: 30-line trio relay"

    def start(lab: Lab) -> Target:
        target = _hop(lab, lab.relay(), name, label)
        return Target(name, label, target.url, pid=target.pid, reference=True)

    return TargetSpec(name, label, start)


def ours(
    name: str,
    label: str,
    *,
    token: bool = False,
    cache: bool = False,
    proxy_args: tuple[str, ...] = (),
) -> TargetSpec:
    service = CACHED if cache else TOKEN if token else PUBLIC

    def start(lab: Lab) -> Target:
        child = lab.proxy(cache=cache, args=proxy_args)
        if "--workers" in proxy_args:
            wait_for_workers(child.url, int(proxy_args[proxy_args.index("--workers") + 1]))
        headers = (("Authorization", f"Bearer {lab.token(child)}"),) if token else ()
        return Target(
            name,
            label,
            f"{child.url}/{service}{PATH}",
            headers,
            pid=child.process.pid,
            token_required=token,
            cache_hit=cache,
        )

    return TargetSpec(name, label, start)


def wait_for_workers(url: str, count: int) -> None:
    """Until ``count`` workers have answered ``/admin/backends`` (new connections spread
    over them by the kernel), so that no measurement starts with a worker still starting."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    seen: set[int] = set()
    while len(seen) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url}: {len(seen)} of {count} workers answered")
        try:
            reply = fetch(f"{url}/admin/backends")
        except OSError:
            continue
        if reply.status == 200:
            seen.add(int(json.loads(reply.body)["process"]["pid"]))


TARGETS: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in (
        backend(),
        nginx(),
        haproxy(),
        caddy(),
        ours("proxy", "our proxy (public, cache off)"),
        ours("proxy-token", "our proxy (token check)", token=True),
        ours("proxy-cache", "our proxy (cache hit)", cache=True),
        relay(),
        ours("proxy-w2", "our proxy, 2 workers (public)", proxy_args=("--workers", "2")),
        caddy("caddy-2", gomaxprocs=2),
    )
}
DEFAULT_TARGETS = tuple(TARGETS)

# (numerator, denominator): issue 14's targets read off these.
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("proxy", "caddy"),
    ("proxy-token", "proxy"),
    ("proxy-cache", "proxy"),
    ("relay", "caddy"),
    ("proxy", "relay"),
    ("caddy", "nginx"),
    ("proxy-w2", "proxy"),
    ("caddy-2", "caddy"),
    ("proxy-w2", "caddy-2"),
)


# -- the run -----------------------------------------------------------------------------------
def host_facts() -> dict[str, Any]:
    def version(command: list[str]) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "missing"
        lines = (out.stdout + out.stderr).strip().splitlines()
        return lines[0] if lines else "?"

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "h11": H11_NAME,
        "accel": ACCEL_STATE,  # our modules: compiled (mypyc) or pure, and why
        "nginx": version([hop_anchors.find_program("nginx"), "-v"]),
        "haproxy": version([hop_anchors.find_program("haproxy"), "-v"]),
        "caddy": version(["caddy", "version"]),
        "wrk": version(["wrk", "-v"]),
        "ab": version(["ab", "-V"]),
    }


def start_targets(lab: Lab, names: Sequence[str]) -> list[Target]:
    lab.start_backend()
    targets = []
    for name in names:
        target = TARGETS[name].start(lab)
        check_target(target, lab.expected_body)
        print(f"checked {name}: {target.url} answers the backend's body", file=sys.stderr)
        targets.append(target)
    return targets


def measure(
    targets: Sequence[Target],
    loads: Sequence[Load],
    *,
    rounds: int,
    duration_s: int,
    warmup_s: int,
) -> list[hop_report.Sample]:
    for target in targets if warmup_s else ():
        for load in loads:
            run_load(load, load_command(load, target.url, target.headers, warmup_s), warmup_s)
    samples = []
    for round_no in range(rounds):
        for load in loads:
            for target in targets:
                command = load_command(load, target.url, target.headers, duration_s)
                result, output = run_load(load, command, duration_s)
                samples.append(
                    hop_report.Sample(
                        target.name, load.name, round_no, run.redact(command), result, output
                    )
                )
                print(
                    f"round {round_no + 1}/{rounds} {load.name:5} {target.name:12}"
                    f" {result.requests_per_s:10,.0f} req/s  failures={result.failures}"
                    f" non-2xx={result.non_2xx}",
                    file=sys.stderr,
                    flush=True,
                )
    return samples


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.hop", description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated")
    parser.add_argument("--loads", default=",".join(LOADS), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    # whole seconds: neither wrk -d nor ab -t takes a fraction
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds per target and load")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument(
        "--hold", action="store_true", help="start and check the targets, then wait for Ctrl-C"
    )
    args = parser.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    args.loads = [name for name in args.loads.split(",") if name]
    for name in args.targets:
        if name not in TARGETS:
            parser.error(f"unknown target {name!r} (known: {', '.join(TARGETS)})")
    for name in args.loads:
        if name not in LOADS:
            parser.error(f"unknown load {name!r} (known: {', '.join(LOADS)})")
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        parser.error("--rounds and --duration must be >= 1, --warmup >= 0")
    return args


def exit_on_termination() -> None:
    """SIGTERM and SIGHUP end this process through its ``finally`` blocks, as Ctrl-C does, so
    what it started is stopped (their default action would leave the children running)."""

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, leave)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run.raise_open_files_limit()
    exit_on_termination()
    loads = [LOADS[name] for name in args.loads]
    started = time.strftime("%Y%m%dT%H%M%S", time.localtime())
    try:
        with lab_running() as lab:
            targets = start_targets(lab, args.targets)
            if args.hold:
                for target in targets:
                    print(f"target {target.name} {target.url} pid {target.pid}")
                for child in lab.children.started:
                    print(f"process {child.name} pid {child.process.pid}")
                print("holding; Ctrl-C stops everything", flush=True)
                while True:
                    time.sleep(3600)
            load_before = os.getloadavg()
            samples = measure(
                targets,
                loads,
                rounds=args.rounds,
                duration_s=args.duration,
                warmup_s=args.warmup,
            )
            load_after = os.getloadavg()
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    except (
        hop_anchors.AnchorUnavailable,
        CaddyUnavailable,
        run.TokenUnavailable,
        BenchOutputError,
        RuntimeError,
        OSError,
        subprocess.TimeoutExpired,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    labels = {t.name: t.label for t in targets}
    figures = hop_report.aggregate(samples)
    found = hop_report.ratios(figures, COMPARISONS, args.loads)
    host = {
        **host_facts(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }
    data = hop_report.record(
        started=started,
        host=host,
        settings={
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "loads": {load.name: load_command(load, "URL", [], args.duration) for load in loads},
        },
        targets=[
            {"name": t.name, "label": t.label, "url": t.url, "reference": t.reference}
            for t in targets
        ],
        samples=samples,
        figures=figures,
        found=found,
    )
    path = hop_report.save(args.out, f"hop-{started}", data)
    print(hop_report.figures_table(figures, labels, args.loads))
    print()
    print(hop_report.ratios_table(found, args.loads))
    note = hop_report.failures_note(figures)
    if note:
        print(note)
    print(
        f"\nload average (1, 5, 15 min) before {host['loadavg_before']}, after"
        f" {host['loadavg_after']}; {host['cpus']} CPUs; h11: {H11_NAME}; ours: {ACCEL_STATE}"
    )
    print(f"record: {path}")
    if not args.no_chart:
        chart = path.with_suffix(".png")
        title = f"one proxy hop, {started}, load avg {host['loadavg_before'][0]}"
        skipped = hop_report.draw_chart(chart, figures, labels, args.loads, title)
        print(skipped or f"chart: {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
