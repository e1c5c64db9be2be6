"""``python -m bench.benchmark [SECTION]``: the original's ``make benchmark``, and its
``request.sh SECTION`` runs (``make signin``, ``make region`` ...) against a running fleet.

``benchmark`` (the default) brings a fleet of its own up (`topology.fleet.open_fleet`, in
``run/benchmark-<timestamp>/`` with a fresh user database), then does what the original's
script did, in its order: signs up its five users, runs each section's "Right" and "Wrong"
requests (`bench.original`, each status line printed beside the original's), and each
section's load (`bench.run`'s scenario, with the script's ``AuthToken`` header holding a
whole sign-in body), printing the lines the script kept of ab's report (complete, failed,
time per request, transfer rate, longest). At the end it prints our table, saves each load's
JSON and a summary of the run to ``bench/results/``, and stops the fleet: on success, on an
error, on Ctrl-C or SIGTERM alike (the ab running at that moment is killed too).

The fleet is the default topology's, on the script's ports (9000, 9001, 6000, ...). If any
of them is taken (a ``make fleet`` running, say) it stops before starting anything and names
the holders; ``--free-ports`` runs the same topology on free ports instead. Any other name
runs that one section against the fleet already running on ``--topology``'s ports, as the
original's ``make signin`` and friends did; it signs the script's users up first if they are
missing (the original needed ``make benchmark`` to have run).

ab is the only tool (what ``make fleet`` installs); httpie and curl are replaced by
`bench.original`'s client, which sends their bytes. ``make concurrent`` needs 2,000
descriptors for ab: like the script's ``ulimit -n 9000``, the soft limit is raised to 9,000
(and for a fleet of our own, to the hard limit or 65,536, as its ``boot.sh`` did for the
proxies), and the line says whether the machine refused.
"""

from __future__ import annotations

import argparse
import contextlib
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import msgspec
import trio

from bench.original import (
    LOAD_TOKEN_FROM,
    SECTIONS,
    USERS,
    Endpoints,
    Outcome,
    checks_of,
    essential_lines,
    httpie_request,
    run_checks,
    send,
    sign_in_body,
)
from bench.parse import BenchOutputError, BenchResult, format_table, parse_ab
from bench.run import (
    PROCESS_TIMEOUT_S,
    SCENARIOS,
    SIGNIN_TEST,
    Overrides,
    Run,
    build_command,
    save_record,
)
from topology.fleet import DEFAULT_TOPOLOGY, open_fleet, plan_fleet
from topology.fleet_lock import FleetLock, obstacles
from topology.load import ConfigError, load_fleet, load_msa
from topology.schema import FleetTopology, InstanceSpec, encode_json, encode_yaml

ORDER = ("signup", "signin", "regional", "regular", "concurrent", "image", "large")
SCRIPT_OPEN_FILES = 9000  # request.sh: ulimit -n 9000 before the concurrent load
FLEET_OPEN_FILES = 65536  # boot.sh: ulimit -n 65536 before the ELBs and proxies
Out = Callable[[str], None]


# -- the fleet's addresses ---------------------------------------------------------------------
def endpoints_of(topology: FleetTopology) -> Endpoints:
    """The script's localhost:9000, :9001 and :6000 in ``topology``: the ko_KR and en_US
    ELBs (else the first two regions) and the first proxy of the former."""
    by_code = {r.code: r for r in topology.regions}
    if len(topology.regions) < 2:
        raise ConfigError("topology", "$.regions", "the original's script needs two regions")
    kr = by_code.get("ko_KR", topology.regions[0])
    en = by_code.get("en_US", next(r for r in topology.regions if r is not kr))
    host = f"http://{topology.host}"
    return Endpoints(
        f"{host}:{kr.elb_port}", f"{host}:{en.elb_port}", f"{host}:{kr.proxy_ports[0]}"
    )


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free right now (all bound at once, then released)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _moved(url: str, ports: dict[int, int]) -> str:
    parts = urlsplit(url)
    if parts.port not in ports:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.hostname}:{ports[parts.port]}"))


def free_port_topology(source: Path, target: Path) -> Path:
    """A copy of the topology at ``source`` in ``target`` with every port a free one (the
    service maps' instance URLs follow); returns the new topology file."""
    topology = load_fleet(source)
    plan = plan_fleet(topology, source, target, {})
    old = sorted({c.port for c in plan.children})
    ports = dict(zip(old, free_ports(len(old)), strict=True))
    target.mkdir(parents=True, exist_ok=True)
    regions = []
    for region in topology.regions:
        msa = load_msa(source.parent / region.msa)
        services = [
            msgspec.structs.replace(
                s,
                instance=[
                    msgspec.structs.replace(i, url=_moved(i.url, ports))
                    if isinstance(i, InstanceSpec)
                    else _moved(i, ports)
                    for i in s.instance
                ],
            )
            for s in msa.service
        ]
        name = f"msa_{region.code}.yaml"
        (target / name).write_bytes(encode_yaml(msgspec.structs.replace(msa, service=services)))
        regions.append(
            msgspec.structs.replace(
                region,
                elb_port=ports[region.elb_port],
                proxy_ports=[ports[p] for p in region.proxy_ports],
                msa=name,
            )
        )
    backends = topology.backends
    root = None if backends.root is None else str((source.parent / backends.root).resolve())
    moved = msgspec.structs.replace(
        topology,
        regions=regions,
        backends=msgspec.structs.replace(
            backends, ports=[ports[p] for p in backends.ports], root=root
        ),
        auth=msgspec.structs.replace(topology.auth, ports=[ports[p] for p in topology.auth.ports]),
        redis=msgspec.structs.replace(
            topology.redis, port=ports.get(topology.redis.port, topology.redis.port)
        ),
        config=None if topology.config is None else "config.json",
    )
    if topology.config is not None:
        (target / "config.json").write_bytes((source.parent / topology.config).read_bytes())
    path = target / "fleet.yaml"
    path.write_bytes(encode_yaml(moved))
    return path


def raise_open_files(wanted: int) -> str:
    """``ulimit -n wanted`` for this process and its children; says what the machine did.
    Without the privilege to raise the hard limit, the soft one goes as far as it allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return f"ulimit -n {wanted}: not needed, the limit is already {soft}"
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return f"ulimit -n {wanted}: raised from {soft} (and the hard limit from {hard})"
        except (ValueError, OSError) as exc:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return f"ulimit -n {wanted}: the machine refuses ({exc}); raised to its hard {hard}"
    resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return f"ulimit -n {wanted}: raised from {soft}"


# -- one run -----------------------------------------------------------------------------------
@dataclass
class Report:
    """What a run printed, kept for the summary JSON."""

    checks: list[dict[str, object]] = field(default_factory=list)
    loads: list[tuple[str, BenchResult]] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def regressions(self) -> list[dict[str, object]]:
        return [c for c in self.checks if c["verdict"] == "WORSE"]


class Loads:
    """Runs ab for one scenario at a time, so that a cancelled benchmark can kill it."""

    def __init__(self, out_dir: Path, requests: int | None = None) -> None:
        self.out_dir = out_dir
        self.overrides = Overrides(requests=requests)  # a smoke run's: not the original's
        self.current: subprocess.Popen[str] | None = None

    def kill(self) -> None:
        if self.current is not None and self.current.poll() is None:
            self.current.kill()

    def run(self, name: str, endpoints: Endpoints, out: Out) -> tuple[BenchResult, Path]:
        scenario = SCENARIOS[name]
        url = endpoints.kr_elb + scenario.path
        headers = []
        if scenario.authenticated:
            headers.append(("AuthToken", sign_in_body(endpoints, LOAD_TOKEN_FROM[name])))
        if scenario.region:
            headers.append(("Accept-Language", scenario.region))
        with tempfile.NamedTemporaryFile(prefix="bench-signin-", suffix=".txt") as body:
            body.write(SIGNIN_TEST.read_bytes())
            body.flush()
            command = build_command(
                scenario,
                url,
                headers,
                self.overrides,
                body_file=body.name if scenario.signin else None,
            )
            command.insert(1, "-q")  # as the script ran it: no progress lines
            self.current = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            try:
                stdout, stderr = self.current.communicate(timeout=PROCESS_TIMEOUT_S)
            finally:
                self.kill()
                self.current = None
        for line in essential_lines(stdout):
            out(line)
        try:
            result = parse_ab(stdout + stderr)
        except BenchOutputError as exc:
            raise BenchOutputError(f"{name}: {exc}") from None
        shown = [
            "AuthToken: <redacted>" if arg.startswith("AuthToken: ") else arg for arg in command
        ]
        return result, save_record(self.out_dir, name, url, Run(result, shown, stdout + stderr))


def ensure_users(endpoints: Endpoints) -> None:
    """The script's users, signed up if missing (a 409 is fine), printing nothing."""
    for where, name, password, role in USERS:
        fields = (("username", name), ("password", password), ("role", role))
        origin = endpoints.origin(where)
        answer = send(origin, httpie_request(origin, "/auth/signup", fields))
        if answer.status not in (200, 201, 409):
            raise BenchOutputError(f"signing {name} up answered {answer.status_line}")


def run_sections(
    sections: list[str], endpoints: Endpoints, loads: Loads, out: Out, report: Report
) -> None:
    for section in sections:
        title, _, load = SECTIONS[section]
        out(f"\n====== {title} ======")
        outcomes: list[Outcome] = run_checks(section, endpoints, out) if checks_of(section) else []
        for outcome in outcomes:
            report.checks.append(
                {
                    "section": section,
                    "label": outcome.check.label.rstrip(" :"),
                    "ours": outcome.answer.status_line,
                    "original": outcome.check.expected,
                    "verdict": outcome.verdict,
                }
            )
        if load is None:
            continue
        if load == "concurrent":
            note = raise_open_files(SCRIPT_OPEN_FILES)
            report.notes.append(note)
            out(note)
        out(" * Load : ")
        result, path = loads.run(load, endpoints, out)
        report.loads.append((load, result))
        report.saved.append(str(path))


def finish(report: Report, out_dir: Path, out: Out, fleet_table: str = "") -> Path:
    out("")
    if report.loads:
        out(format_table(report.loads))
    worse = report.regressions()
    same = sum(1 for c in report.checks if c["verdict"] == "same")
    out(
        f"checks: {len(report.checks)}, {same} as the original, "
        f"{len(report.checks) - same - len(worse)} better, {len(worse)} worse"
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"benchmark-{time.strftime('%Y%m%dT%H%M%S')}.json"
    summary = {
        "checks": report.checks,
        "loads": {name: msgspec.to_builtins(result) for name, result in report.loads},
        "saved": report.saved,
        "notes": report.notes,
        "fleet": fleet_table,
    }
    path.write_bytes(encode_json(summary) + b"\n")
    out(f"saved: {path}")
    return path


async def run_in_thread(fn: Callable[[], None], loads: Loads) -> None:
    """``fn`` (blocking: sockets and ab) off the event loop; cancelled, it is abandoned and
    its ab killed, so that the fleet stops at once."""
    try:
        await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
    finally:
        loads.kill()


async def benchmark(topology_path: Path, run_dir: Path, loads: Loads, out: Out) -> int:
    report = Report()
    out_dir = loads.out_dir
    table = ""
    note = raise_open_files(FLEET_OPEN_FILES)
    report.notes.append(note)
    out(f"fleet: {note}")
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal(scope: trio.CancelScope) -> None:
                async for signum in signals:
                    out(f"benchmark: {signal.Signals(signum).name}: stopping the fleet")
                    scope.cancel()
                    return

            with trio.CancelScope() as running:
                nursery.start_soon(stop_on_signal, running)
                async with open_fleet(topology_path, run_dir, out=out) as fleet:
                    out(fleet.table())
                    endpoints = endpoints_of(fleet.plan.topology)
                    await run_in_thread(
                        lambda: run_sections(list(ORDER), endpoints, loads, out, report), loads
                    )
                    table = fleet.table()
                out("benchmark: fleet stopped")
            nursery.cancel_scope.cancel()
    if running.cancelled_caught:
        return 130
    finish(report, out_dir, out, table)
    return 1 if report.regressions() else 0


def section_against_running_fleet(section: str, topology_path: Path, loads: Loads, out: Out) -> int:
    endpoints = endpoints_of(load_fleet(topology_path))
    report = Report()
    try:
        ensure_users(endpoints)
        run_sections([section], endpoints, loads, out, report)
    except OSError as exc:
        out(f"error: {exc}: is the fleet of {topology_path} running? (make fleet)")
        return 1
    finish(report, loads.out_dir, out)
    return 1 if report.regressions() else 0


def _print(line: str) -> None:
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.benchmark", description="the original's benchmark script, on ours"
    )
    parser.add_argument(
        "section", nargs="?", default="benchmark", choices=["benchmark", *ORDER[1:]]
    )
    parser.add_argument("--topology", type=Path, default=DEFAULT_TOPOLOGY)
    parser.add_argument("--free-ports", action="store_true", help="benchmark: on free ports")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--run-base", type=Path, default=Path("run"))
    parser.add_argument(
        "-n", "--requests", type=int, help="every load's ab -n (a smoke run; not the original's)"
    )
    args = parser.parse_args(argv)
    loads = Loads(args.out, args.requests)
    try:
        if args.section != "benchmark":
            return section_against_running_fleet(args.section, args.topology, loads, _print)
        run_dir = args.run_base / f"benchmark-{datetime.now():%Y%m%d-%H%M%S}"
        topology = args.topology
        if args.free_ports:
            topology = free_port_topology(args.topology, run_dir / "topology")
        ports = {
            c.name: c.port for c in plan_fleet(load_fleet(topology), topology, run_dir, {}).children
        }
        blocked = obstacles(FleetLock(args.run_base / "benchmark"), ports, "127.0.0.1")
        if blocked:
            print("\n".join(blocked), file=sys.stderr)
            print(
                "benchmark: or run it on free ports: make benchmark ARGS=--free-ports",
                file=sys.stderr,
            )
            return 2
        return trio.run(benchmark, topology, run_dir, loads, _print)
    except (ConfigError, BenchOutputError, subprocess.TimeoutExpired) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
