"""``fleet [TOPOLOGY]``: run a whole gateway fleet on one machine, like ``docker compose up``.

From one topology file (default: the original's benchmark topology, ``topology/fleet.yaml``)
this writes, into a fresh run directory, the files each process reads *in the original's
formats* (``msa_<code>.yaml``, ``rs_<code>.yaml``, ``r_<code>.yaml``, ``config.json``), so
that a process started by hand with those files behaves exactly as under the launcher.
Every address in them is derived from the topology's ports; nothing here knows 9000 or 6379.

Then it starts Redis, backends, auth servers, proxies and ELBs in that order (each group
ready before the next: a proxy that starts before its Redis and auth servers would fail its
first requests), prints what runs where, supervises, and stops everything on Ctrl-C or
SIGTERM (`topology.supervisor` holds the rules). A child whose program is not installed yet
is reported in the table as ``missing`` and the others run anyway: a half-built fleet is
still worth running.

Every fleet gets a random id (``GATEWAY_FLEET_ID`` in each child's environment), which ties
the ELBs' hand-off sockets to this fleet's proxies (`httpio.handoff`). The ELBs' listening
sockets are the supervisor's, kept open across ELB restarts. Before the command line starts
anything it checks that no other launcher runs from the same run directory base, that no
orphan of an earlier one is alive and that every port is free, and names what is in the way
(`topology.fleet_lock`); children die with a launcher that is SIGKILLed
(`httpio.lifeline`).

``fleet --only backends,auth`` and ``fleet --only proxies,elbs`` run the two halves of one
topology from two terminals (the original's ``make server`` and ``make proxy``), so each
can be watched on its own. Redis goes with the proxies, its only clients (their cache).
Both halves read the same state directory (``run/state/``: the fleet key that the auth
servers sign with and the proxies verify with, and the user database), and each half takes
a lock of its own (`topology.fleet_lock`), so neither refuses the other.

Tests and benchmarks use `open_fleet` (an async context manager yielding a `Fleet`), which
is strict by default: anything missing or failed raises `FleetStartError`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import secrets
import shutil
import signal
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import NoReturn

import msgspec
import trio

from httpio.handoff import FLEET_ENV
from httpio.lifeline import stop_timeout_s
from httpio.origin import Origin, origin_url
from topology import report, top
from topology.fleet_lock import FleetLock, FleetState, obstacles, record_of
from topology.load import ConfigError, load_config, load_fleet, load_msa
from topology.persistent import (
    PersistentState,
    open_persistent_state,
    with_fleet_key,
    write_private,
)
from topology.placement import LOOPBACK_NAMES, Placement, place
from topology.prometheus import prometheus_config
from topology.schema import (
    FleetRegion,
    FleetTopology,
    GatewayConfig,
    InstanceSpec,
    MsaFile,
    ProxyList,
    RegionSpec,
    RegionStructure,
    encode_json,
    encode_yaml,
)
from topology.supervisor import (
    Child,
    ChildSpec,
    Output,
    Probe,
    Supervisor,
)
from topology.supervisor import FleetStartError as FleetStartError
from topology.table import format_rows
from topology.units import unit_files

DEFAULT_TOPOLOGY = Path(__file__).resolve().parent / "fleet.yaml"

# kind -> (console script, module with main()); `plan_fleet` decides the start order.
PROGRAMS: dict[str, tuple[str, str]] = {
    "backend": ("backend", "backends.main"),
    "authsvc": ("authsvc", "authsvc.main"),
    "proxy": ("proxy", "proxy.main"),
    "elb": ("elb", "elb.main"),
}
REDIS_INSTALL_HINT = (
    "redis-server not found on PATH: install it (Debian/Ubuntu: `apt-get install redis-server`; "
    "macOS: `brew install redis`) or set `redis: {enabled: false}` in the topology"
)

# ``fleet --only`` names -> the kind of child each selects; Redis comes with the proxies.
FLEET_PARTS: dict[str, str] = {
    "redis": "redis",
    "backends": "backend",
    "auth": "authsvc",
    "proxies": "proxy",
    "elbs": "elb",
}

REDIS_CONF = "redis.conf"  # only with a Redis_password

# How each kind of child is told the address of its host (Redis: in `_Specs.redis`).
BIND_OPTION: dict[str, str] = {
    "backend": "--host",
    "authsvc": "--host",
    "proxy": "--host",
    "elb": "--host",
}

# A launcher is the argv prefix that runs a program, or a string saying why it cannot run.
Launchers = Mapping[str, tuple[str, ...] | str]


def find_launchers() -> dict[str, tuple[str, ...] | str]:
    """How to run each kind of child from this interpreter's virtualenv."""
    found: dict[str, tuple[str, ...] | str] = {}
    redis = shutil.which("redis-server")
    found["redis"] = (redis,) if redis else REDIS_INSTALL_HINT
    bin_dir = Path(sys.executable).parent
    for kind, (script, module) in PROGRAMS.items():
        try:
            present = importlib.util.find_spec(module) is not None
        except ImportError:
            present = False
        if not present:
            found[kind] = f"module {module} is not there yet (console script `{script}`)"
        elif (bin_dir / script).is_file():
            found[kind] = (str(bin_dir / script),)
        else:
            found[kind] = (sys.executable, "-m", module)
    return found


# -- the plan: files to write, processes to run ------------------------------------------------
@dataclass(frozen=True, slots=True)
class FleetPlan:
    topology: FleetTopology
    run_dir: Path
    files: dict[Path, bytes]
    groups: tuple[tuple[ChildSpec, ...], ...]  # in start order
    # SIGTERM -> SIGKILL for every child: config.json's drain and a margin (`stop_timeout_s`)
    stop_grace_s: float

    @property
    def children(self) -> list[ChildSpec]:
        return [c for g in self.groups for c in g]

    @property
    def placement(self) -> Placement:
        return place(self.topology)


def gateway_config(topology: FleetTopology, topology_path: Path) -> GatewayConfig:
    """The topology's config.json with ``Redis_address`` pointing at the fleet's Redis."""
    config = (
        load_config(topology_path.parent / topology.config)
        if topology.config is not None
        else GatewayConfig()
    )
    if topology.redis.enabled:
        address = place(topology).address_of(topology.redis.port)
        shown = f"[{address}]" if ":" in address else address
        config = msgspec.structs.replace(config, redis_address=f"{shown}:{topology.redis.port}")
    return config


def plan_fleet(
    topology: FleetTopology,
    topology_path: str | Path,
    run_dir: str | Path,
    launchers: Launchers,
    state: PersistentState | None = None,
) -> FleetPlan:
    """Everything `open_fleet` will do, decided without touching a process. Reads the
    region msa files and config.json; writes nothing. With ``state`` (`topology.persistent`), the
    fleet's key signs unless config.json names one, and the auth database lives there."""
    topology_path = Path(topology_path)
    run = Path(run_dir).resolve()
    files = run_files(topology, topology_path, run, state)
    specs = _Specs(run, place(topology), launchers)
    # a fleet whose config.json names a PostgreSQL Auth_store has no file of its own
    db: Path | None = (state.path if state is not None else run) / topology.auth.db
    if not gateway_config(topology, topology_path).auth_store.startswith("sqlite:"):
        db = None
    groups = [
        specs.redis(topology, run / REDIS_CONF in files),
        specs.backends(topology, topology_path),
        specs.auth_servers(topology, db),
        specs.proxies(topology),
        specs.elbs(topology),
    ]
    drain_s = gateway_config(topology, topology_path).server.drain_timeout_s
    return FleetPlan(topology, run, files, tuple(g for g in groups if g), stop_timeout_s(drain_s))


def run_files(
    topology: FleetTopology, topology_path: Path, run: Path, state: PersistentState | None
) -> dict[Path, bytes]:
    """The files each process reads, in the original's formats: one config.json, and per
    region its service map, region structure and proxy list."""
    config = gateway_config(topology, topology_path)
    if topology.hosts and topology.redis.enabled and not config.redis_password:
        address = place(topology).address_of(topology.redis.port)
        if address not in LOOPBACK_NAMES:
            raise ConfigError(
                topology_path,
                "$.redis",
                f"Redis on {address}, a network address, needs Redis_password in config.json",
            )
    config = with_fleet_key(config, state) if state is not None else config
    files = {run / "config.json": encode_json(config) + b"\n"}
    files[run / "prometheus.yml"] = prometheus_config(topology)
    if topology.redis.enabled and config.redis_password:
        # a file, not argv: a command line is readable by every user of the host
        password = config.redis_password.replace("\\", "\\\\").replace('"', '\\"')
        files[run / REDIS_CONF] = f'requirepass "{password}"\n'.encode()
    where = place(topology)

    def url(port: int) -> str:
        return origin_url(where.address_of(port), port)

    every_elb = [RegionSpec(r.code, [url(r.elb_port)]) for r in topology.regions]
    for region in topology.regions:
        code = region.code
        msa = topology_path.parent / region.msa
        files[run / f"msa_{code}.yaml"] = (
            encode_yaml(placed_service_map(load_msa(msa), topology))
            if topology.hosts
            else msa.read_bytes()
        )
        files[run / f"rs_{code}.yaml"] = encode_yaml(RegionStructure(code, every_elb))
        files[run / f"r_{code}.yaml"] = encode_yaml(
            ProxyList(code, [url(p) for p in region.proxy_ports])
        )
    return files


def placed_service_map(msa: MsaFile, topology: FleetTopology) -> MsaFile:
    """The service map with each ``localhost:PORT`` instance that is a backend or an auth
    server of the topology pointing at the host that runs it: a proxy on another machine
    must not look for it on its own loopback. Other instances are left as written."""
    where = place(topology)
    ours = {*topology.backends.ports, *topology.auth.ports}

    def placed(instance: InstanceSpec) -> InstanceSpec:
        origin = Origin(instance.url)
        if origin.host not in LOOPBACK_NAMES or origin.port not in ours:
            return instance
        return InstanceSpec(origin_url(where.address_of(origin.port), origin.port), instance.weight)

    services = [
        msgspec.structs.replace(s, instance=[placed(i) for i in s.instances()]) for s in msa.service
    ]
    return msgspec.structs.replace(msa, service=services)


@dataclass(frozen=True, slots=True)
class _Specs:
    """The `ChildSpec` of each process of a fleet run from ``run``, one group at a time."""

    run: Path
    placement: Placement
    launchers: Launchers

    def child(
        self,
        kind: str,
        name: str,
        port: int,
        args: Sequence[str],
        *,
        region: str = "",
        probe: Probe = "http",
        listen: bool = False,
    ) -> ChildSpec:
        launcher = self.launchers.get(kind, f"no launcher for {kind}")
        address = self.placement.address_of(port)
        if self.placement.hosts and kind in BIND_OPTION:  # else: as before hosts existed
            args = [*args, BIND_OPTION[kind], address]
        argv = None if isinstance(launcher, str) else (*launcher, *args)
        missing = launcher if isinstance(launcher, str) else ""
        log = self.run / "logs" / f"{name}.log"
        return ChildSpec(name, kind, port, argv, log, probe, region, address, missing, listen)

    def redis(self, topology: FleetTopology, has_password: bool) -> tuple[ChildSpec, ...]:
        if not topology.redis.enabled:
            return ()
        p = topology.redis.port
        conf = self.run / REDIS_CONF
        args = [str(conf)] if has_password else []
        args += ["--port", str(p), "--bind", self.placement.address_of(p), "--save", ""]
        args += ["--appendonly", "no", "--dir", str(self.run)]
        return (self.child("redis", "redis", p, args, probe="redis"),)

    def backends(self, topology: FleetTopology, topology_path: Path) -> tuple[ChildSpec, ...]:
        faults = ["--test-faults"] if topology.backends.test_faults else []
        if topology.backends.root is not None:
            root = (topology_path.parent / topology.backends.root).resolve()
            if not root.is_dir():
                raise ConfigError(topology_path, "$.backends.root", f"{root} is not a directory")
            faults = [*faults, "--root", str(root)]
        return tuple(
            self.child("backend", f"backend-{p}", p, [str(p), "--name", f"backend-{p}", *faults])
            for p in topology.backends.ports
        )

    def auth_servers(self, topology: FleetTopology, db: Path | None) -> tuple[ChildSpec, ...]:
        args = ["--config", str(self.run / "config.json")]
        if db is not None:
            args += ["--db", str(db)]
        return tuple(
            self.child("authsvc", f"authsvc-{p}", p, [str(p), *args]) for p in topology.auth.ports
        )

    def proxies(self, topology: FleetTopology) -> tuple[ChildSpec, ...]:
        def files(code: str) -> list[str]:
            names = (f"msa_{code}.yaml", f"rs_{code}.yaml", "config.json")
            return [str(self.run / n) for n in names]

        def args(region: FleetRegion, port: int) -> list[str]:
            access = self.run / "logs" / f"access-proxy-{region.code}-{port}.log"
            workers = region.proxy_workers
            more = ["--workers", str(workers)] if workers > 1 else []
            metrics = region.metrics_ports_of(port)
            if metrics:
                more += ["--worker-metrics-ports", ",".join(map(str, metrics))]
            return [str(port), *files(region.code), "--access-log", str(access), *more]

        return tuple(
            self.child("proxy", f"proxy-{r.code}-{p}", p, args(r, p), region=r.code)
            for r in topology.regions
            for p in r.proxy_ports
        )

    def elbs(self, topology: FleetTopology) -> tuple[ChildSpec, ...]:
        return tuple(
            self.child(
                "elb",
                f"elb-{r.code}-{r.elb_port}",
                r.elb_port,
                [str(r.elb_port), str(self.run / f"r_{r.code}.yaml"), *elb_metrics(r)],
                region=r.code,
                listen=True,
            )
            for r in topology.regions
        )


def elb_metrics(region: FleetRegion) -> list[str]:
    port = region.elb_metrics_port
    return [] if port is None else ["--metrics-port", str(port)]


def parse_parts(text: str) -> frozenset[str]:
    """``"backends,auth"`` -> the parts named; ValueError naming the unknown ones."""
    parts = frozenset(name.strip() for name in text.split(",") if name.strip())
    unknown = sorted(parts - FLEET_PARTS.keys())
    if unknown or not parts:
        raise ValueError(
            f"--only {text!r}: unknown part(s) {', '.join(unknown) or '(none given)'};"
            f" choose from {', '.join(FLEET_PARTS)}"
        )
    return parts


def select_parts(
    groups: Sequence[tuple[ChildSpec, ...]], parts: frozenset[str]
) -> tuple[tuple[ChildSpec, ...], ...]:
    """The children of ``parts`` only, in start order. Redis is the proxies' (the cache's
    store: no backend or auth server talks to it), so it comes with ``proxies``."""
    kinds = {FLEET_PARTS[p] for p in parts}
    if "proxies" in parts:
        kinds.add("redis")
    selected = (tuple(c for c in group if c.kind in kinds) for group in groups)
    return tuple(group for group in selected if group)


def part_name(parts: frozenset[str] | None) -> str:
    """The lock's name for a launcher of ``parts``: "" for the whole fleet."""
    if parts is None or parts >= FLEET_PARTS.keys() - {"redis"}:
        return ""
    return "+".join(p for p in FLEET_PARTS if p in parts)


def write_run_files(plan: FleetPlan) -> None:
    (plan.run_dir / "logs").mkdir(parents=True, exist_ok=True)
    for path, content in plan.files.items():
        write_private(path, content)  # config.json holds the fleet key


def make_run_dir(base: str | Path, now: datetime) -> Path:
    """``base/<YYYYmmdd-HHMMSS>`` (a suffix if taken), with ``base/latest`` pointing at it."""
    base = Path(base)
    base.mkdir(parents=True, exist_ok=True)
    stamp = now.strftime("%Y%m%d-%H%M%S")
    run, n = base / stamp, 1
    while True:
        try:
            run.mkdir()
            break
        except FileExistsError:
            n += 1
            run = base / f"{stamp}-{n}"
    latest = base / "latest"
    tmp = base / f".latest-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run.name)
    os.replace(tmp, latest)
    return run


# -- the table ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TableRow:
    name: str
    kind: str
    region: str
    port: int
    pid: int | None
    status: str
    log: str


def format_table(rows: Sequence[TableRow]) -> str:
    header = ("NAME", "KIND", "REGION", "PORT", "PID", "STATUS", "LOG")
    cells = [
        (r.name, r.kind, r.region or "-", str(r.port), str(r.pid or "-"), r.status, r.log)
        for r in rows
    ]
    return format_rows(header, cells, left=len(header))


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# -- the running fleet -------------------------------------------------------------------------
@dataclass(slots=True)
class Fleet:
    """A running fleet: ``ports`` and ``pids`` by child name (``redis``, ``backend-5000``,
    ``authsvc-8000``, ``proxy-ko_KR-6000``, ``elb-ko_KR-9000``)."""

    plan: FleetPlan
    supervisor: Supervisor
    ports: dict[str, int] = field(default_factory=dict)
    fleet_id: str = ""

    def __repr__(self) -> str:
        return f"<Fleet {self.plan.run_dir} {self.supervisor!r}>"

    @property
    def run_dir(self) -> Path:
        return self.plan.run_dir

    @property
    def pids(self) -> dict[str, int]:
        return {c.spec.name: pid for c in self.supervisor.children if (pid := c.pid) is not None}

    def url(self, name: str) -> str:
        return origin_url(self.plan.placement.address_of(self.ports[name]), self.ports[name])

    def statistics(self) -> dict[str, object]:
        return self.supervisor.statistics()

    def table(self) -> str:
        return format_table(
            [
                TableRow(
                    c.spec.name,
                    c.spec.kind,
                    c.spec.region,
                    c.spec.port,
                    c.pid,
                    c.state.value,
                    _relative(c.spec.log),
                )
                for c in self.supervisor.children
            ]
        )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one child; the supervisor restarts it (see `wait_running`)."""
        self.supervisor.send_signal(name, sig)

    async def wait_running(
        self, name: str, *, not_pid: int | None = None, timeout_s: float = 15.0
    ) -> int:
        return await self.supervisor.wait_running(name, not_pid=not_pid, timeout_s=timeout_s)

    async def stop(self) -> None:
        await self.supervisor.stop()


def prepare_fleet(
    topology_path: str | Path,
    run_dir: str | Path,
    launchers: Launchers | None = None,
    state_dir: str | Path | None = None,
) -> FleetPlan:
    """Load the topology, open the fleet's state (default ``<run_dir>/state``), plan, and
    write the run files. Raises `ConfigError`, or `OSError` for an untrustworthy state."""
    topology = load_fleet(topology_path)
    state = open_persistent_state(state_dir if state_dir is not None else Path(run_dir) / "state")
    plan = plan_fleet(topology, topology_path, run_dir, launchers or find_launchers(), state)
    write_run_files(plan)
    return plan


def new_fleet_id() -> str:
    """A fleet's identity: random, so that no two fleets on a host share one."""
    return secrets.token_hex(8)


def _problems_report(supervisor: Supervisor) -> str:
    return "; ".join(f"{c.spec.name}: {c.error}" for c in supervisor.problems())


@asynccontextmanager
async def open_fleet(
    topology_path: str | Path,
    run_dir: str | Path,
    *,
    strict: bool = True,
    out: Output = print,
    ready_timeout_s: float = 15.0,
    grace_s: float = 10.0,
    launchers: Launchers | None = None,
) -> AsyncIterator[Fleet]:
    """Bring the fleet up in ``run_dir`` (used as is, created if needed), yield it, and
    stop every child on exit, also on error or cancellation. With ``strict``, a child that
    is missing or fails to start raises `FleetStartError` (after stopping the rest)."""
    plan = prepare_fleet(topology_path, run_dir, launchers)
    fleet_id = new_fleet_id()
    supervisor = Supervisor(
        plan.groups,
        out=out,
        ready_timeout_s=ready_timeout_s,
        grace_s=grace_s,
        env={FLEET_ENV: fleet_id},
    )
    # Errors are raised after the nursery, not inside it, so that the caller sees its own
    # exception (or FleetStartError) rather than an ExceptionGroup wrapping it.
    error: BaseException | None = None
    async with trio.open_nursery() as nursery:
        try:
            await supervisor.start(nursery)
            if strict and supervisor.problems():
                error = FleetStartError(_problems_report(supervisor))
            else:
                try:
                    yield Fleet(plan, supervisor, {c.name: c.port for c in plan.children}, fleet_id)
                except BaseException as exc:
                    error = exc
        finally:
            await supervisor.stop()
    if error is not None:
        raise error


async def start_fleet(
    topology_path: str | Path,
    run_dir: str | Path,
    *,
    strict: bool = True,
    out: Output = print,
    task_status: trio.TaskStatus[Fleet] = trio.TASK_STATUS_IGNORED,
) -> None:
    """``fleet = await nursery.start(start_fleet, path, run_dir)``; runs until cancelled."""
    async with open_fleet(topology_path, run_dir, strict=strict, out=out) as fleet:
        task_status.started(fleet)
        await trio.sleep_forever()


# -- the command line --------------------------------------------------------------------------
async def run_until_signalled(plan: FleetPlan, out: Output, lock: FleetLock | None = None) -> None:
    """The foreground fleet: start, print the table, supervise; the first SIGINT/SIGTERM
    stops everything in order, a second one SIGKILLs whatever is left. With ``lock``, its
    ``fleet.json`` follows every child started."""
    fleet_id = new_fleet_id()
    launcher = record_of("fleet", os.getpid())
    supervisor: Supervisor

    def remember(_: Child) -> None:
        if lock is not None:
            children = [
                record_of(c.spec.name, pid, c.spec.port)
                for c in supervisor.children
                if (pid := c.pid) is not None
            ]
            lock.write_state(FleetState(launcher, fleet_id, str(plan.run_dir), children))

    supervisor = Supervisor(
        plan.groups,
        out=out,
        grace_s=plan.stop_grace_s,
        env={FLEET_ENV: fleet_id},
        on_spawn=remember,
    )
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as running:

                async def on_signals() -> None:
                    async for signum in signals:
                        name = signal.Signals(signum).name
                        if not running.cancel_called:
                            out(f"fleet: {name}: stopping (again to kill at once)")
                            running.cancel()
                        else:
                            out(f"fleet: {name} again: killing every child")
                            supervisor.kill_all()

                nursery.start_soon(on_signals)
                try:
                    await supervisor.start(nursery)
                    fleet = Fleet(plan, supervisor, fleet_id=fleet_id)
                    out(fleet.table())
                    if supervisor.problems():
                        out(f"fleet: running without: {_problems_report(supervisor)}")
                    out("fleet: up; Ctrl-C to stop")
                    await trio.sleep_forever()
                finally:
                    await supervisor.stop()
                    out("fleet: stopped")
            nursery.cancel_scope.cancel()


def _print(line: str) -> None:
    print(line, flush=True)


def select_host(
    groups: Sequence[tuple[ChildSpec, ...]], placement: Placement, host: str
) -> tuple[tuple[ChildSpec, ...], ...]:
    """The children that ``host`` of the topology's hosts runs, in start order."""
    selected = (tuple(c for c in g if placement.host_of(c.port) == host) for g in groups)
    return tuple(group for group in selected if group)


def _check_host(topology: FleetTopology, host: str | None) -> str:
    """'' if ``host`` may be asked for, else why not."""
    if host is None:
        return ""
    names = place(topology).names
    if not names:
        return f"--host {host}: the topology names no hosts"
    if host not in names:
        return f"--host {host}: no such host (the topology has {', '.join(names)})"
    return ""


def _fail(message: str) -> NoReturn:
    print(f"fleet: {message}", file=sys.stderr)
    raise SystemExit(2)


def write_units(argv: list[str]) -> None:
    """``fleet units --host NAME [TOPOLOGY]``: the run files and one systemd unit per process
    of that host (`topology.units`)."""
    parser = argparse.ArgumentParser(
        prog="fleet units", description="write one systemd unit per process of a host"
    )
    parser.add_argument(
        "topology", nargs="?", default=str(DEFAULT_TOPOLOGY), help="default: %(default)s"
    )
    parser.add_argument("--host", required=True, metavar="NAME", help="a host of the topology")
    parser.add_argument(
        "--run-dir", help="the processes' files and logs (default: <run_dir>/host-<NAME>)"
    )
    parser.add_argument("--out", help="where the units go (default: <run dir>/units)")
    args = parser.parse_args(argv)
    try:
        topology = load_fleet(args.topology)
    except ConfigError as exc:
        _fail(str(exc))
    if problem := _check_host(topology, args.host):
        _fail(problem)
    run = Path(args.run_dir or Path(topology.run_dir) / f"host-{args.host}").resolve()
    state = None if args.run_dir else Path(topology.run_dir) / "state"
    try:
        plan = prepare_fleet(args.topology, run, find_launchers(), state)
        files = unit_files(
            select_host(plan.groups, plan.placement, args.host),
            host=args.host,
            fleet_id=new_fleet_id(),
            env_name=FLEET_ENV,
            source=Path(args.topology).resolve(),
            stop_s=plan.stop_grace_s,
        )
    except (ConfigError, OSError, ValueError) as exc:
        _fail(str(exc))
    out = Path(args.out) if args.out else run / "units"
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
    _print(f"fleet: {len(files)} units for host {args.host} in {_relative(out)}:")
    for name in files:
        _print(f"  {name}")
    _print(
        f"fleet: install: cp {_relative(out)}/* /etc/systemd/system/ && systemctl daemon-reload"
        f" && systemctl enable --now {' '.join(n for n in files if n.endswith('.socket'))}"
        f" {' '.join(n for n in files if n.endswith('.service'))}"
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "units":
        write_units(argv[1:])
        return
    if argv[:1] == ["report"]:  # fleet report [RUN_DIR]: a run's access logs, summarised
        report.main(argv[1:])
        return
    if argv[:1] == ["top"]:  # fleet top [TOPOLOGY]: the live view of a running fleet
        top.main(argv[1:])
        return
    parser = argparse.ArgumentParser(
        prog="fleet",
        description="run the gateway fleet of a topology in the foreground"
        " (`fleet units --host NAME` writes systemd units instead)",
    )
    parser.add_argument(
        "topology", nargs="?", default=str(DEFAULT_TOPOLOGY), help="default: %(default)s"
    )
    parser.add_argument(
        "--run-dir", help="use this directory as is (default: <run_dir>/<timestamp>)"
    )
    parser.add_argument(
        "--only",
        metavar="PARTS",
        help=f"run only these parts, comma-separated: {', '.join(FLEET_PARTS)}"
        " (Redis comes with proxies), e.g. backends,auth or proxies,elbs",
    )
    parser.add_argument(
        "--host",
        metavar="NAME",
        help="run only the processes of this host of the topology's hosts (one launcher each)",
    )
    args = parser.parse_args(argv)
    try:
        parts = parse_parts(args.only) if args.only is not None else None
    except ValueError as exc:
        parser.error(str(exc))
    try:
        topology = load_fleet(args.topology)
    except ConfigError as exc:
        _fail(str(exc))
    if problem := _check_host(topology, args.host):
        parser.error(problem)
    launchers = find_launchers()
    redis = launchers["redis"]
    wants_redis = parts is None or "proxies" in parts or "redis" in parts
    if args.host is not None and place(topology).host_of(topology.redis.port) != args.host:
        wants_redis = False
    if topology.redis.enabled and wants_redis and isinstance(redis, str):
        _fail(redis)
    base = Path(args.run_dir) if args.run_dir else Path(topology.run_dir)
    lock_part = "+".join(p for p in (part_name(parts), args.host and f"host-{args.host}") if p)
    lock = FleetLock(base, lock_part)

    def selected(groups: Sequence[tuple[ChildSpec, ...]]) -> tuple[tuple[ChildSpec, ...], ...]:
        groups = tuple(groups)
        if parts is not None:
            groups = select_parts(groups, parts)
        if args.host is not None:
            groups = select_host(groups, place(topology), args.host)
        return groups

    try:
        groups = selected(plan_fleet(topology, args.topology, base, launchers).groups)
        ports = {c.name: c.port for group in groups for c in group}
        addresses = {c.name: c.host for group in groups for c in group}
        blocked = obstacles(lock, ports, topology.host, addresses)
    except (ConfigError, OSError) as exc:
        _fail(str(exc))
    if blocked:
        print("\n".join(blocked), file=sys.stderr)
        raise SystemExit(2)
    run = Path(args.run_dir) if args.run_dir else make_run_dir(topology.run_dir, datetime.now())
    state = None if args.run_dir else Path(topology.run_dir) / "state"  # kept across runs
    try:
        plan = prepare_fleet(args.topology, run, launchers, state)
    except (ConfigError, OSError) as exc:
        _fail(str(exc))
    plan = dataclasses.replace(plan, groups=selected(plan.groups))
    where = f" (host {args.host})" if args.host else ""
    _print(f"fleet: run directory {_relative(plan.run_dir)}{where}")
    trio.run(run_until_signalled, plan, _print, lock)


if __name__ == "__main__":
    main()
