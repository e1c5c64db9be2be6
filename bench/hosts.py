"""``make bench-hosts`` (``python -m bench.hosts``): what a fleet spread over hosts costs, same run.

Part 1, the auth store (issue 16, "Engines"): signup and signin rates of the auth servers
with their users in SQLite (the one-host default) and in PostgreSQL (``Auth_store =
postgresql://...``, psycopg 3 in worker threads: `authsvc.pgstore`). Each engine gets its
own ``--servers`` auth server processes (2: a fleet's servers share the store) started here on
free ports, and a PostgreSQL cluster of its own (`tests.support.pgproc`, with ``fsync`` on: a
signup is on disk when answered, as SQLite's ``synchronous=FULL`` promises). The engines are
measured in alternating rounds (``--rounds``) so that the drift of a shared 2-core machine
falls on both; each row is the median of its rounds, and the ratio to SQLite is the number to
read.

Two hash settings, because the hash hides the store: with the shipped argon2id (OWASP's
minimum, ~25 ms per sign-in or signup, one per core at once) both engines are bound by the
hash and should be within noise; with a cheap hash (``--cheap``: argon2id m=1 MiB, t=1) the
store's own cost (round trips, fsyncs, thread hops) shows.

Load: ``--concurrency`` trio tasks per round, for ``--duration`` seconds, each POSTing
/signup with a fresh name (phase one) then /signin of the names it created (phase two),
spread over the servers; the client address is one, so the per-address throttles are raised
in the generated config.json (a benchmark, not a deployment). Non-2xx answers are counted and
reported: a row with errors is not a rate.

Part 2, the relay path's cost against the hand-off path (ELB -> proxy on another network
namespace): see `measure_relay`, the place the topology-with-hosts work fills in.

The bench imports `tests.support.pgproc` (a PostgreSQL cluster on a free port, as root
through the ``postgres`` user): one copy of that code for the tests and the bench.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import trio

from bench import hosts_relay
from bench.caddy import free_port
from bench.policies import Child, Children, stop, wait_ready
from httpio.upstream import UpstreamPool

ENGINES = ("sqlite", "postgresql")


@dataclass(frozen=True, slots=True)
class Row:
    engine: str
    hashing: str
    action: str  # signup | signin
    rate: float  # successful answers per second
    errors: int
    rounds: int


def write_config(directory: Path, cheap: bool) -> Path:
    config: dict[str, Any] = {
        "Auth_key": secrets.token_hex(32),
        "Auth_limits": {"signups_per_address": 10_000_000, "concurrent_per_address": 1024},
    }
    if cheap:
        config["Argon2id"] = {"memory_kib": 1024, "time_cost": 1}
    path = directory / ("config-cheap.json" if cheap else "config.json")
    path.write_text(json.dumps(config))
    return path


def start_auth_servers(kids: Children, config: Path, store: str, count: int) -> list[Child]:
    servers = []
    for _ in range(count):
        port = free_port()
        args = [sys.executable, "-m", "authsvc.main", str(port), "--config", str(config)]
        servers.append(kids.spawn(f"authsvc-{port}", port, [*args, "--store", store]))
    for server in servers:
        wait_ready(server)
    return servers


async def _drive(
    origins: list[str], action: str, names: list[list[str]], duration_s: float, prefix: str
) -> tuple[int, int, float]:
    """``len(names)`` tasks POSTing ``action`` for ``duration_s``; (ok, errors, elapsed).
    Signups append the names they created to their task's list; signins cycle through it."""
    pool = UpstreamPool()
    ok = errors = 0
    started = time.monotonic()
    deadline = started + duration_s
    headers = [(b"content-type", b"application/json")]

    async def task(k: int) -> None:
        nonlocal ok, errors
        mine = names[k]
        for i in range(10_000_000):  # bounded; the deadline ends it first
            if time.monotonic() >= deadline:
                return
            if action == "signup":
                name = f"{prefix}-{k}-{i}"
            elif mine:
                name = mine[i % len(mine)]
            else:
                return
            body = json.dumps({"username": name, "password": f"pw-{name}"}).encode()
            origin = origins[(k + i) % len(origins)]
            resp = await pool.request(origin, "POST", f"/{action}", headers, body)
            await resp.read_all()
            if resp.status in (200, 201):
                ok += 1
                if action == "signup":
                    mine.append(name)
            else:
                errors += 1

    try:
        async with trio.open_nursery() as nursery:
            for k in range(len(names)):
                nursery.start_soon(task, k)
    finally:
        await pool.aclose()
    return ok, errors, time.monotonic() - started


def measure_round(
    servers: list[Child], concurrency: int, duration_s: float, prefix: str
) -> dict[str, tuple[int, int, float]]:
    names: list[list[str]] = [[] for _ in range(concurrency)]
    origins = [s.url for s in servers]
    return {
        action: trio.run(_drive, origins, action, names, duration_s, prefix)
        for action in ("signup", "signin")
    }


@contextmanager
def engine_stores(workdir: Path) -> Iterator[dict[str, str]]:
    """``Auth_store`` of each engine: a new SQLite file, a new PostgreSQL cluster."""
    from tests.support.pgproc import running_postgres

    with running_postgres(fsync=True) as server:
        yield {"sqlite": f"sqlite:{workdir / 'auth.sqlite3'}", "postgresql": server.dsn}


def measure_auth(args: argparse.Namespace, workdir: Path) -> list[Row]:
    rows: list[Row] = []
    hashings = ("argon2id-default", "argon2id-cheap") if args.cheap else ("argon2id-default",)
    with engine_stores(workdir) as stores, ExitStack() as stack:
        kids = Children(workdir)
        stack.callback(kids.stop_all)
        for hashing in hashings:
            config = write_config(workdir, cheap=hashing.endswith("cheap"))
            servers = {
                engine: start_auth_servers(kids, config, stores[engine], args.servers)
                for engine in ENGINES
            }
            samples: dict[tuple[str, str], list[tuple[int, int, float]]] = {}
            for r in range(args.rounds):
                for engine in ENGINES if r % 2 == 0 else ENGINES[::-1]:
                    prefix = f"{hashing}-{r}-{secrets.token_hex(3)}"
                    found = measure_round(servers[engine], args.concurrency, args.duration, prefix)
                    for action, sample in found.items():
                        samples.setdefault((engine, action), []).append(sample)
                        print(
                            f"  {hashing:17} {engine:10} {action:6} round {r + 1}:"
                            f" {sample[0] / sample[2]:8.1f}/s  errors {sample[1]}",
                            file=sys.stderr,
                        )
            for (engine, action), runs in samples.items():
                rate = statistics.median(ok / elapsed for ok, _, elapsed in runs)
                errors = sum(e for _, e, _ in runs)
                rows.append(Row(engine, hashing, action, rate, errors, len(runs)))
            for engine in ENGINES:  # the next hash setting starts servers of its own
                for child in servers[engine]:
                    stop(child.process)
    return rows


def measure_relay(args: argparse.Namespace, workdir: Path) -> list[Row]:
    """Part 2: the ELB's TCP relay with PROXY v2 to a proxy on another network namespace,
    against the hand-off to a local proxy, same run (`bench.hosts_relay`); its rows are
    printed here, in a table of their own."""
    relay_rows = hosts_relay.measure_relay(workdir, rounds=args.rounds)
    if relay_rows:
        print(hosts_relay.report_relay(relay_rows), flush=True)
    return []


def report(rows: list[Row], load_before: float) -> str:
    lines = [
        f"load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}",
        "",
        f"{'hashing':17} {'action':6} {'engine':10} {'per s':>8} {'vs sqlite':>9} {'errors':>6}",
    ]
    anchors = {(r.hashing, r.action): r.rate for r in rows if r.engine == "sqlite"}
    for r in sorted(rows, key=lambda r: (r.hashing, r.action, r.engine != "sqlite")):
        anchor = anchors.get((r.hashing, r.action))
        ratio = f"{r.rate / anchor:9.2f}" if anchor else f"{'-':>9}"
        lines.append(
            f"{r.hashing:17} {r.action:6} {r.engine:10} {r.rate:8.1f} {ratio} {r.errors:6}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench.hosts", description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="auth,relay", help="auth, relay, or both")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--servers", type=int, default=2, help="auth servers per engine")
    parser.add_argument(
        "--cheap", action=argparse.BooleanOptionalAction, default=True,
        help="also measure with a cheap hash, where the store's cost shows",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    # the readiness probes' "not up yet" lines are debug: the table is the output
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    parts = set(args.parts.split(","))
    rows: list[Row] = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-hosts-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)
        if "auth" in parts:
            rows += measure_auth(args, workdir)
        if "relay" in parts:
            rows += measure_relay(args, workdir)
    print(report(rows, load_before))
    if args.json is not None:
        rows_json = [{name: getattr(r, name) for name in Row.__slots__} for r in rows]
        args.json.write_text(json.dumps(rows_json, indent=2))


if __name__ == "__main__":
    try:
        main()
    except subprocess.CalledProcessError as exc:
        raise SystemExit(f"bench-hosts: {exc}") from None
