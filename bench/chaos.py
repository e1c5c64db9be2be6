"""``python -m bench.chaos`` (``make chaos``): the fault campaign of issue 9 as a benchmark.

It starts a fleet of the default shape on free ports (`bench.chaos_fleet`; in a network
namespace of its own when run as root), puts a steady open-loop load through the first
region's ELB (`bench.chaos_load`: ~140 req/s of keep-alive and new connections, a cached and
an uncached path, with a token from signup/signin, plus about two new signins a second whose
token is used at once), and then injects one fault at a time:

==============  =========================================================================
none            nothing: the control row, the noise floor of the machine and the tool
proxy-kill      SIGKILL of the region's first proxy (the launcher restarts it)
backends-kill   SIGKILL of two adjacent instances of the loaded service
backend-stop    SIGSTOP of one instance for 20 s, then SIGCONT (a hung backend)
redis-stop      SIGSTOP of Redis for 10 s, then SIGCONT
redis-kill      SIGKILL of Redis (restarted empty)
auth-kill       SIGKILL of every auth server, while tokens are used and signins go on
elb-kill        SIGKILL of the loaded region's ELB
reload-add      one more instance in the region's service map (the proxies poll it)
reload-remove   one instance fewer
reload-break    the service map replaced by invalid YAML (the proxies must keep theirs)
reload-fix      the broken file fixed again
==============  =========================================================================

Each fault starts from a whole fleet: every child running, the service map as shipped and
applied, every instance "healthy" in every proxy (waited for, bounded); then a settle
period (15 s, the baseline), the fault, and a recovery window (30 s after the fault ends).
`bench.chaos_measure` defines the windows, the row's numbers and the recovery time. The
``back s`` column is, for a kill, the time from the signal until the launcher's replacement
answered its readiness probe (the slowest one, for several); for a reload, until every
proxy of the region ran the new file (or, for a broken one, logged that it refused it).

The ``load`` column is the machine's 1-minute load average when the window closed: the
fleet and the load alone keep it near 1 on 2 cores, and a much higher one means other work
shared the cores and the latencies of that row are not the fleet's alone.

Output: the table, JSON in ``bench/results/chaos-<timestamp>.json`` (rows, per-second bins
of every fault window, the failed and the slowest requests), and the block ``chaos`` of
``bench/RESULTS.md``. ``--faults a,b`` runs a subset in the given order, ``--duration-scale
0.2`` shortens every phase (a smoke run: the numbers are then only indicative), ``--rate``
sets the load. Everything started here is stopped by PID on the way out, also on Ctrl-C,
SIGTERM and errors; a stopped process is continued first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import signal
import sys
import textwrap
import time
import traceback
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import yaml

from bench.chaos_fleet import RUN_BASE, BenchFleet, interrupt_on_sigterm, isolate
from bench.chaos_load import LoadGenerator, Record, RequestClass
from bench.chaos_measure import (
    FaultRow,
    format_fault_table,
    in_fault_window,
    percentile,
    replace_block,
    summarize,
)
from bench.policies import save
from bench.run import acquire_token, raise_open_files_limit, signin_body
from topology.load import load_msa

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
PROSE_WIDTH = 95  # as the hand-written parts of RESULTS.md
SERVICE = "video"  # the loaded service: five instances in the default ko_KR map
CACHED = f"/{SERVICE}/index.html"
UNCACHED = f"/{SERVICE}/index.html?cache-control=no-store"  # the backend says no-store
DEFAULT_RATE = 140.0
HEALTHY_TIMEOUT_S = 90.0  # after a kill, re-admission takes rise x MSA_healthcheck_interval
APPLY_TIMEOUT_S = 30.0  # several Config_check_interval periods
ADMIN_TIMEOUT_S = 2.0
RESTART_TIMEOUT_S = 60.0
BROKEN_YAML = b"service: [this is: not, valid yaml\n"
RELOADED = b"config_reloaded"
REFUSED = b"config_reload_refused"

FAULTS: dict[str, str] = {
    "none": "no fault (control)",
    "proxy-kill": "proxy SIGKILL",
    "backends-kill": "two backends SIGKILL",
    "backend-stop": "backend SIGSTOP 20 s",
    "redis-stop": "Redis SIGSTOP 10 s",
    "redis-kill": "Redis SIGKILL",
    "auth-kill": "every auth server SIGKILL",
    "elb-kill": "ELB SIGKILL",
    "reload-add": "reload: add an instance",
    "reload-remove": "reload: remove an instance",
    "reload-break": "reload: invalid YAML",
    "reload-fix": "reload: fixed again",
}


def load_mix(rate: float) -> list[RequestClass]:
    """Four equal shares (keep-alive / new connection x cached / uncached) and about two
    signins a second (scrypt makes each cost ~25 ms of a core)."""
    share = max(1, round(rate / 4))
    return [
        RequestClass("ka-cached", CACHED, keepalive=True, weight=share),
        RequestClass("ka-uncached", UNCACHED, keepalive=True, weight=share),
        RequestClass("new-cached", CACHED, keepalive=False, weight=share),
        RequestClass("new-uncached", UNCACHED, keepalive=False, weight=share),
        RequestClass("signin", "/auth/signin", keepalive=False, weight=2, signin=True),
    ]


@dataclass(frozen=True, slots=True)
class Phases:
    warmup_s: float = 10.0
    settle_s: float = 15.0
    window_s: float = 30.0
    backend_stop_s: float = 20.0
    redis_stop_s: float = 10.0

    def scaled(self, factor: float) -> Phases:
        return Phases(*(v * factor for v in dataclasses.astuple(self)))


@dataclass(slots=True)
class Injection:
    """What the campaign saw of one fault while injecting it."""

    fault: str
    t0: float
    t_end: float
    settle_s: float
    back_s: float | None = None
    note: str = ""
    load1: float | None = None

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


def parse_positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
    return value


def parse_faults(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown fault(s) {', '.join(unknown)}; known: {', '.join(FAULTS)}"
        )
    return names


# -- the campaign ----------------------------------------------------------------------------------
@dataclass
class Campaign:
    fleet: BenchFleet
    phases: Phases
    out: Callable[[str], None] = print
    clock: Callable[[], float] = time.monotonic
    injections: list[Injection] = field(default_factory=list)

    def __post_init__(self) -> None:
        layout = self.fleet.layout
        assert layout is not None and self.fleet.run_dir is not None
        self.region = layout.topology.regions[0].code
        self.msa_path = self.fleet.run_dir / f"msa_{self.region}.yaml"
        self.original_msa = self.msa_path.read_bytes()
        msa = load_msa(self.msa_path)
        services = {s.name: s for s in msa.service}
        if SERVICE not in services or len(services[SERVICE].instance) < 3:
            raise SystemExit(f"chaos: {self.msa_path} needs a service {SERVICE!r} of 3+ instances")
        self.instances = [i.url for i in services[SERVICE].instances()]
        others = [
            i.url
            for s in msa.service
            if s.name != SERVICE
            for i in s.instances()
            if urlsplit(i.url).port in self._backend_ports() and i.url not in self.instances
        ]
        if not others:
            raise SystemExit(f"chaos: no backend outside {SERVICE!r} to add by a reload")
        self.spare_instance = others[0]
        self.proxies = self.fleet.names("proxy", self.region)

    def _backend_ports(self) -> set[int]:
        return {self.fleet.port(n) for n in self.fleet.names("backend")}

    def _backend_of(self, url: str) -> str:
        port = urlsplit(url).port
        for name in self.fleet.names("backend"):
            if self.fleet.port(name) == port:
                return name
        raise SystemExit(f"chaos: no backend of the fleet listens at {url}")

    def run(self, faults: Sequence[str]) -> list[Injection]:
        for name in faults:
            self.out(f"chaos: {name}: preparing (fleet whole and healthy)")
            note = self.prepare(name)
            t_settle = self.clock()
            self._sleep_until(t_settle + self.phases.settle_s)
            t0 = self.clock()
            self.out(f"chaos: {name}: {FAULTS[name]}")
            injection = Injection(name, t0, t0, self.phases.settle_s, note=note)
            hold = self.inject(injection)
            injection.t_end = t0 + hold + self.phases.window_s
            self.injections.append(injection)
            self._sleep_until(injection.t_end)
            injection.load1 = round(os.getloadavg()[0], 2)
            back = "-" if injection.back_s is None else f"{injection.back_s:.2f} s"
            self.out(f"chaos: {name}: window closed (back: {back}) {injection.note}".rstrip())
        return self.injections

    def _sleep_until(self, deadline: float) -> None:
        while (left := deadline - self.clock()) > 0:
            time.sleep(min(left, 1.0))

    # -- a whole, healthy fleet before each fault --------------------------------------------------
    def prepare(self, fault: str) -> str:
        for name in list(self.fleet.stopped):
            self.fleet.cont(name)
        notes = []
        for name in self.fleet.names():
            try:
                self.fleet.wait_running(name, timeout_s=RESTART_TIMEOUT_S)
            except Exception as exc:  # reported, and the campaign goes on
                notes.append(f"{name} not running: {exc!r}")
        if self.msa_path.read_bytes() != self.original_msa:
            if self.write_and_wait(self.original_msa, RELOADED) is None:
                notes.append("the shipped service map was not re-applied in time")
        if not self._wait(self.all_healthy, HEALTHY_TIMEOUT_S):
            notes.append(f"not every instance healthy after {HEALTHY_TIMEOUT_S:g} s")
        if fault == "reload-fix" and self.write_and_wait(BROKEN_YAML, REFUSED) is None:
            notes.append("the broken file was not refused in time")
        return "; ".join(notes)

    def admin(self, proxy: str) -> dict[str, Any]:
        with urllib.request.urlopen(
            f"{self.fleet.url(proxy)}/admin/backends", timeout=ADMIN_TIMEOUT_S
        ) as resp:
            answer: dict[str, Any] = json.load(resp)
        return answer

    def all_healthy(self) -> bool:
        for proxy in self.fleet.names("proxy"):
            try:
                view = self.admin(proxy)
            except (OSError, ValueError):
                return False
            pools = [*view.get("services", []), *view.get("regions", [])]
            if any(i.get("state") != "healthy" for p in pools for i in p.get("instances", [])):
                return False
        return True

    def service_ports(self, proxy: str) -> set[int] | None:
        try:
            view = self.admin(proxy)
        except (OSError, ValueError):
            return None
        for pool in view.get("services", []):
            if pool.get("service") == SERVICE:
                return {urlsplit(i["url"]).port for i in pool.get("instances", [])}
        return set()

    def _wait(self, condition: Callable[[], bool], timeout_s: float) -> float | None:
        """Seconds until ``condition()`` held, re-checked every 0.1 s; None at the deadline."""
        start = self.clock()
        while self.clock() - start < timeout_s:
            if condition():
                return self.clock() - start
            time.sleep(0.1)
        return None

    # -- the service map -----------------------------------------------------------------------
    def _log(self, proxy: str) -> Path:
        assert self.fleet.run_dir is not None
        return self.fleet.run_dir / "logs" / f"{proxy}.log"

    def write_and_wait(self, content: bytes, event: bytes) -> float | None:
        """Replace the service map (atomically, as an operator's editor would not, but a
        half-written file is not the fault under test) and wait until every proxy of the
        region logged ``event`` after the write; the seconds that took, or None."""
        offsets = {p: self._log(p).stat().st_size for p in self.proxies}
        tmp = self.msa_path.with_name(self.msa_path.name + ".new")
        tmp.write_bytes(content)
        start = self.clock()
        tmp.replace(self.msa_path)

        def logged() -> bool:
            for proxy, offset in offsets.items():
                with self._log(proxy).open("rb") as f:
                    f.seek(offset)
                    if event not in f.read():
                        return False
            return True

        waited = self._wait(logged, APPLY_TIMEOUT_S)
        return None if waited is None else self.clock() - start

    def msa_with(self, instances: list[str]) -> bytes:
        """The shipped map with the service's instances replaced, and nothing else changed
        (plain YAML data, so no default is written out that the shipped file left out)."""
        data = yaml.safe_load(self.original_msa)
        for service in data["service"]:
            if service["name"] == SERVICE:
                kept = [
                    entry
                    for entry in service["instance"]
                    if (entry if isinstance(entry, str) else entry["url"]) in instances
                ]
                urls = {e if isinstance(e, str) else e["url"] for e in kept}
                service["instance"] = kept + [u for u in instances if u not in urls]
        return yaml.safe_dump(data, sort_keys=False).encode()

    def reload_to(self, instances: list[str]) -> float | None:
        """Write a map with ``instances`` for the service; seconds until every proxy of the
        region routes over exactly them."""
        start = self.clock()
        wanted = {urlsplit(u).port for u in instances}
        tmp = self.msa_path.with_name(self.msa_path.name + ".new")
        tmp.write_bytes(self.msa_with(instances))
        tmp.replace(self.msa_path)
        waited = self._wait(
            lambda: all(self.service_ports(p) == wanted for p in self.proxies), APPLY_TIMEOUT_S
        )
        return None if waited is None else self.clock() - start

    # -- the faults ------------------------------------------------------------------------------
    def inject(self, injection: Injection) -> float:
        """Do the fault of ``injection`` (started at ``injection.t0``), fill in what was seen,
        and return how long the fault lasted (0 for a kill or a reload)."""
        name = injection.fault
        if name == "none":
            return 0.0
        if name == "proxy-kill":
            return self.kill(injection, [self.proxies[0]])
        if name == "backends-kill":
            return self.kill(injection, [self._backend_of(u) for u in self.instances[:2]])
        if name == "backend-stop":
            return self.stop(injection, self._backend_of(self.instances[2]), "backend")
        if name == "redis-stop":
            return self.stop(injection, "redis", "redis")
        if name == "redis-kill":
            return self.kill(injection, ["redis"])
        if name == "auth-kill":
            return self.kill(injection, self.fleet.names("authsvc"))
        if name == "elb-kill":
            return self.kill(injection, self.fleet.names("elb", self.region))
        if name == "reload-add":
            injection.back_s = self.reload_to([*self.instances, self.spare_instance])
            injection.add_note(f"added {self.spare_instance}")
            return 0.0
        if name == "reload-remove":
            injection.back_s = self.reload_to(self.instances[:-1])
            injection.add_note(f"removed {self.instances[-1]}")
            return 0.0
        if name == "reload-break":
            injection.back_s = self.write_and_wait(BROKEN_YAML, REFUSED)
            return 0.0
        if name == "reload-fix":
            injection.back_s = self.write_and_wait(self.original_msa, RELOADED)
            return 0.0
        raise AssertionError(f"no injection for {name}")

    def kill(self, injection: Injection, names: list[str]) -> float:
        pids = self.fleet.pids()
        for name in names:
            self.fleet.signal(name, signal.SIGKILL)
        back = self.fleet.wait_all_running(
            {n: pids.get(n) for n in names}, since=injection.t0, timeout_s=RESTART_TIMEOUT_S
        )
        seen = [s for s in back.values() if s is not None]
        injection.back_s = max(seen) if len(seen) == len(names) else None
        if len(names) > 1:
            injection.add_note(
                "back: "
                + ", ".join(f"{n} {'-' if s is None else f'{s:.2f}'}" for n, s in back.items())
            )
        return 0.0

    def stop(self, injection: Injection, name: str, what: str) -> float:
        hold = self.phases.backend_stop_s if what == "backend" else self.phases.redis_stop_s
        self.fleet.signal(name, signal.SIGSTOP)
        try:
            self._sleep_until(injection.t0 + hold)
        finally:
            self.fleet.cont(name)
        injection.add_note(f"{name} stopped for {hold:g} s")
        return hold


# -- results ---------------------------------------------------------------------------------------
def rows_of(injections: Sequence[Injection], records: Sequence[Record]) -> list[FaultRow]:
    return [
        summarize(
            i.fault,
            FAULTS[i.fault],
            records,
            t0=i.t0,
            t_end=i.t_end,
            settle_s=i.settle_s,
            back_s=i.back_s,
            note=i.note,
            load1=i.load1,
        )
        for i in injections
    ]


def bins_of(injection: Injection, records: Sequence[Record]) -> list[list[float | int | None]]:
    """[second from the fault, sent, failed, p99 ms of the steady GETs] for each second of
    the settle period and the fault window, by the time each request was sent (the JSON)."""
    out: list[list[float | int | None]] = []
    first = -math.floor(injection.settle_s)
    last = math.ceil(injection.t_end - injection.t0)
    for k in range(first, last):
        start = injection.t0 + k
        inside = [r for r in records if start <= r.t < start + 1.0]
        p99 = percentile([r.latency_s for r in inside if r.timed], 99)
        out.append(
            [
                k,
                len(inside),
                sum(r.failed for r in inside),
                None if p99 is None else round(p99 * 1000, 1),
            ]
        )
    return out


def notable(injection: Injection, records: Sequence[Record], slowest: int = 20) -> dict[str, Any]:
    """The failed and the slowest requests of the fault window, times from the fault."""
    inside = [
        r for r in records if in_fault_window(r, injection.t0, injection.t_end, injection.settle_s)
    ]

    def rel(r: Record) -> dict[str, Any]:
        d = msgspec.structs.asdict(r)
        d["t"] = round(r.t - injection.t0, 3)
        d["latency_s"] = round(r.latency_s, 4)
        d["start_delay_s"] = round(r.start_delay_s, 4)
        return d

    return {
        "failed": [rel(r) for r in inside if r.failed],
        "slowest": [rel(r) for r in sorted(inside, key=lambda r: -r.latency_s)[:slowest]],
    }


def results_block(
    rows: Sequence[FaultRow],
    command: str,
    isolation: str,
    rate: float,
    json_path: Path,
    generator: dict[str, object],
) -> str:
    notes = [f"- `{r.fault}`: {r.note}" for r in rows if r.note]
    if generator.get("saturated"):
        notes.append(
            f"- the load generator had {generator['workers']} requests in flight, its limit,"
            f" {generator['saturated']} times: those requests waited for a worker, and their"
            " latency includes the wait"
        )
    intro = (
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, `{command}`; {isolation}; load {rate:g} req/s"
        " through the first region's ELB (keep-alive and new connections, cached and"
        " uncached /video, about two signins a second). Windows, recovery time and"
        " `back s` are defined in the headers of `bench/chaos_measure.py` and"
        " `bench/chaos.py`; `load` is the machine's 1-minute load average at the end of each"
        " window (2 cores: above ~3, other work shared them). Per-second bins, the failed and"
        f" the slowest requests are in `{json_path}`."
    )
    return "\n".join(
        [
            "## Fault campaign (`make chaos`)",
            "",
            textwrap.fill(intro, width=PROSE_WIDTH, break_on_hyphens=False),
            "",
            "```",
            format_fault_table(rows),
            "```",
            *([""] if notes else []),
            *notes,
        ]
    )


def write_results_md(block: str, path: Path = RESULTS_MD) -> None:
    document = path.read_text() if path.exists() else ""
    path.write_text(replace_block(document, "chaos", "chaos", block))


# -- the command line ------------------------------------------------------------------------------
def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos", description="the fault campaign against a fleet of its own"
    )
    parser.add_argument(
        "--faults",
        type=parse_faults,
        default=list(FAULTS),
        help=f"comma-separated subset, in order (default: all: {','.join(FAULTS)})",
    )
    parser.add_argument(
        "--duration-scale", type=parse_positive, default=1.0, help="scale every phase"
    )
    parser.add_argument(
        "--rate", type=parse_positive, default=DEFAULT_RATE, help="requests per second"
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--no-results-md", action="store_true", help="do not rewrite the block in RESULTS.md"
    )
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    isolation = isolate("bench.chaos", argv)
    interrupt_on_sigterm()
    raise_open_files_limit()
    phases = Phases().scaled(args.duration_scale)
    print(f"chaos: {isolation}", flush=True)
    injections: list[Injection] = []
    records: list[Record] = []
    interrupted = ""
    with BenchFleet(RUN_BASE / "chaos", out=lambda line: print(line, flush=True)) as fleet:
        print(fleet.call(fleet.fleet.table), flush=True)
        host, port = fleet.layout.elb() if fleet.layout else ("127.0.0.1", 0)
        token = acquire_token(f"http://{host}:{port}")
        load = LoadGenerator(
            host, port, load_mix(args.rate), rate=args.rate, token=token, signin_body=signin_body()
        )
        campaign = Campaign(fleet, phases, out=lambda line: print(line, flush=True))
        load.start()
        try:
            time.sleep(phases.warmup_s)
            campaign.run(args.faults)
        except KeyboardInterrupt as exc:
            interrupted = str(exc) or "interrupted"
            print(f"chaos: {interrupted}: stopping; the rows so far follow", flush=True)
        except Exception as exc:
            traceback.print_exc()
            interrupted = f"error: {exc!r}"
            print("chaos: the campaign failed; stopping; the rows so far follow", flush=True)
        finally:
            load.stop()
            injections = campaign.injections
            records = load.records()
        generator = load.statistics()
        run_dir = str(fleet.run_dir)
    rows = rows_of(injections, records)
    print(format_fault_table(rows))
    record = {
        "tool": "chaos",
        "command": " ".join(["python -m bench.chaos", *argv]),
        "isolation": isolation,
        "rate": args.rate,
        "phases": dataclasses.asdict(phases),
        "run_dir": run_dir,
        "generator": generator,
        "interrupted": interrupted,
        "rows": [msgspec.to_builtins(r) for r in rows],
        "bins": {i.fault: bins_of(i, records) for i in injections},
        "requests": {i.fault: notable(i, records) for i in injections},
    }
    path = save(args.out, "chaos", record)
    print(f"chaos: saved {path}")
    if not args.no_results_md and not interrupted and rows:
        command = "make chaos" if not argv else f"python -m bench.chaos {' '.join(argv)}"
        write_results_md(results_block(rows, command, isolation, args.rate, path, generator))
        print(f"chaos: updated the chaos block of {RESULTS_MD}")
    if interrupted:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
