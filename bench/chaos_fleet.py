"""The fleet `make chaos` and `make soak` break: the default topology's shape on free ports,
run by `topology.fleet.open_fleet`, in a network namespace of its own when we are root.

The shape is read from ``topology/fleet.yaml`` at run time (2 regions of 2 proxies, 7
backends, 4 auth servers, Redis), and so is every service map and ``config.json``, so the
benchmark measures whatever the shipped defaults are on the day it runs, before and after
fixes alike. Only the ports change: each one of the topology gets a free port, and the
service maps' instance URLs are rewritten to match (their text is kept otherwise). The
proxies' ``config.json`` is the shipped file itself (the launcher points ``Redis_address``
at our Redis).

Isolation: as root we re-exec under ``unshare -n`` (a fresh network namespace, loopback
brought up with ``ip link set lo up``), so no port of ours can collide with another fleet
on the machine, and the load we generate cannot reach anything else; without root (or
without ``unshare``) the fleet uses free ports of 127.0.0.1 and a note says so. The
proxies' hand-off sockets are put under the run directory (``GATEWAY_RUNTIME_DIR``), not
in the host-wide default directory, where they would be keyed by port alone.

`BenchFleet` runs the fleet's trio loop in a background thread (as the e2e harness does),
so the campaign itself is plain blocking code; its exit stops every child by PID (SIGCONT
first for any we stopped, since a stopped process cannot act on SIGTERM), also on Ctrl-C
and on error.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import msgspec
import trio

from topology.fleet import DEFAULT_TOPOLOGY, Fleet, make_run_dir, open_fleet
from topology.load import load_fleet
from topology.schema import FleetTopology, encode_yaml

NETNS_MARK = "GATEWAY_BENCH_NETNS"  # set in the environment of the re-executed process
RUN_BASE = Path("run") / "bench"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
_URL_PORT = re.compile(r"(https?://(?:localhost|127\.0\.0\.1|\[::1\]):)(\d+)")


# -- isolation ---------------------------------------------------------------------------------
def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    try:
        done = subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def isolate(module: str, argv: Sequence[str]) -> str:
    """Re-exec ``python -m module argv`` in a new network namespace when we may (this call
    then never returns); in the re-executed process, bring loopback up. Returns a note
    saying where the fleet runs."""
    if os.environ.get(NETNS_MARK) == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10)
        return "own network namespace (unshare -n), loopback only"
    if os.geteuid() != 0:
        return "not root: no network namespace; free ports on 127.0.0.1 of the host"
    if not _can_unshare():
        return "unshare -n or ip is not available: free ports on 127.0.0.1 of the host"
    os.environ[NETNS_MARK] = "1"
    sys.stdout.flush()
    os.execvp("unshare", ["unshare", "-n", "--", sys.executable, "-m", module, *argv])
    raise AssertionError("unreachable: execvp returned")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def interrupt_on_sigterm() -> None:
    """SIGTERM and SIGHUP raise KeyboardInterrupt in the main thread, so that a run
    unwinds (and stops its fleet) as it does on Ctrl-C."""
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports that were free on 127.0.0.1 a moment ago."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


# -- the topology on free ports ----------------------------------------------------------------
def topology_ports(topology: FleetTopology) -> list[int]:
    ports = [r.elb_port for r in topology.regions]
    ports += [p for r in topology.regions for p in r.proxy_ports]
    ports += list(topology.backends.ports) + list(topology.auth.ports)
    if topology.redis.enabled:
        ports.append(topology.redis.port)
    return ports


def remap_urls(text: str, ports: dict[int, int]) -> str:
    """Rewrite the port of every local instance URL in ``text`` that ``ports`` maps."""

    def sub(m: re.Match[str]) -> str:
        port = int(m.group(2))
        return f"{m.group(1)}{ports.get(port, port)}"

    return _URL_PORT.sub(sub, text)


def remap_topology(
    topology: FleetTopology, ports: dict[int, int], msa: dict[str, str]
) -> FleetTopology:
    """The same topology with every port mapped and each region's msa file renamed."""

    def p(port: int) -> int:
        return ports.get(port, port)

    regions = [
        msgspec.structs.replace(
            r, elb_port=p(r.elb_port), proxy_ports=[p(x) for x in r.proxy_ports], msa=msa[r.code]
        )
        for r in topology.regions
    ]
    return msgspec.structs.replace(
        topology,
        regions=regions,
        backends=msgspec.structs.replace(
            topology.backends, ports=[p(x) for x in topology.backends.ports]
        ),
        auth=msgspec.structs.replace(topology.auth, ports=[p(x) for x in topology.auth.ports]),
        redis=msgspec.structs.replace(topology.redis, port=p(topology.redis.port)),
    )


@dataclass(frozen=True, slots=True)
class Layout:
    """Where the bench fleet's parts listen, by role."""

    topology_path: Path
    topology: FleetTopology
    ports: dict[int, int]  # default topology port -> ours

    def elb(self, region: int = 0) -> tuple[str, int]:
        return self.topology.host, self.topology.regions[region].elb_port


def write_bench_topology(
    base: Path, source: Path = DEFAULT_TOPOLOGY, *, test_faults: bool = False
) -> Layout:
    """Write ``base/fleet.yaml`` and the regions' msa files: ``source`` on free ports, with
    the demo backends' query switches on when ``test_faults`` (the soak's ``cache-control=``)."""
    base.mkdir(parents=True, exist_ok=True)
    source = source.resolve()
    topology = load_fleet(source)
    old = topology_ports(topology)
    ports = dict(zip(old, free_ports(len(old)), strict=True))
    msa: dict[str, str] = {}
    for region in topology.regions:
        name = f"msa_{region.code}.source.yaml"
        text = (source.parent / region.msa).read_text()
        (base / name).write_text(remap_urls(text, ports))
        msa[region.code] = name
    ours = remap_topology(topology, ports, msa)
    if ours.config is not None:
        ours = msgspec.structs.replace(ours, config=str(source.parent / ours.config))
    if test_faults:
        backends = msgspec.structs.replace(ours.backends, test_faults=True)
        ours = msgspec.structs.replace(ours, backends=backends)
    path = base / "fleet.yaml"
    path.write_bytes(encode_yaml(ours))
    return Layout(path, ours, ports)


# -- the running fleet -------------------------------------------------------------------------
@dataclass
class BenchFleet:
    """``with BenchFleet(base) as fleet:`` a running fleet; see the module docstring."""

    base: Path
    source: Path = DEFAULT_TOPOLOGY
    out: Callable[[str], None] = print
    layout: Layout | None = None
    test_faults: bool = False  # the demo backends' query switches (soak: cache-control=)
    run_dir: Path | None = None
    stopped: set[str] = field(default_factory=set)  # children we sent SIGSTOP
    _box: dict[str, Any] = field(default_factory=dict)
    _thread: threading.Thread | None = None

    def __enter__(self) -> BenchFleet:
        self.layout = write_bench_topology(
            self.base / "topology", self.source, test_faults=self.test_faults
        )
        self.run_dir = make_run_dir(self.base, datetime.now())
        sockets = self.run_dir / "sockets"
        sockets.mkdir(mode=0o700, exist_ok=True)
        os.environ["GATEWAY_RUNTIME_DIR"] = str(sockets)
        ready = threading.Event()
        box = self._box

        async def run() -> None:
            stop = trio.Event()
            box["stop"] = stop
            assert self.layout is not None and self.run_dir is not None
            async with open_fleet(self.layout.topology_path, self.run_dir, out=self.out) as fleet:
                box["fleet"] = fleet
                box["token"] = trio.lowlevel.current_trio_token()
                ready.set()
                await stop.wait()

        def runner() -> None:
            try:
                trio.run(run)
            except BaseException as exc:  # reported by __enter__ or __exit__
                box["error"] = exc
            finally:
                ready.set()

        self._thread = threading.Thread(target=runner, name="bench-fleet", daemon=True)
        self._thread.start()
        try:
            if not ready.wait(START_TIMEOUT_S) or "fleet" not in box:
                raise RuntimeError(f"the fleet did not start: {box.get('error')!r}")
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop()

    def _stop(self) -> None:
        for name in list(self.stopped):
            self.cont(name)
        if "stop" in self._box and "token" in self._box and "error" not in self._box:
            try:
                trio.from_thread.run_sync(self._box["stop"].set, trio_token=self._box["token"])
            except trio.RunFinishedError:
                pass
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                self.out("bench: the fleet did not stop in time; SIGKILL to every child")
                self._kill_all()

    def _kill_all(self) -> None:
        fleet: Fleet | None = self._box.get("fleet")
        if fleet is not None:
            for pid in list(fleet.pids.values()):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    # -- handles -------------------------------------------------------------------------------
    @property
    def fleet(self) -> Fleet:
        fleet: Fleet = self._box["fleet"]
        return fleet

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run_sync(fn, *args, trio_token=self._box["token"])

    def acall(self, afn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run(afn, *args, trio_token=self._box["token"])

    def names(self, kind: str | None = None, region: str | None = None) -> list[str]:
        """The children of the plan (all, or of one kind and region), in start order."""
        return [
            c.name
            for c in self.fleet.plan.children
            if (kind is None or c.kind == kind) and (region is None or c.region == region)
        ]

    def pids(self) -> dict[str, int]:
        return dict(self.call(lambda: self.fleet.pids))

    def signal(self, name: str, sig: int) -> None:
        self.call(self.fleet.kill, name, sig)
        if sig == signal.SIGSTOP:
            self.stopped.add(name)

    def cont(self, name: str) -> None:
        try:
            self.call(self.fleet.kill, name, signal.SIGCONT)
        finally:
            self.stopped.discard(name)

    def wait_running(
        self, name: str, *, not_pid: int | None = None, timeout_s: float = 30.0
    ) -> int:
        async def wait() -> int:
            return await self.fleet.wait_running(name, not_pid=not_pid, timeout_s=timeout_s)

        return int(self.acall(wait))

    def wait_all_running(
        self, not_pids: dict[str, int | None], *, since: float, timeout_s: float
    ) -> dict[str, float | None]:
        """Wait, all at once, until each child runs again with a pid other than the one
        given; per child the seconds from ``since`` (a ``time.monotonic()`` value) until it
        was seen running, or None if it was not within ``timeout_s``."""
        seen: dict[str, float | None] = dict.fromkeys(not_pids)

        async def wait_one(name: str, old: int | None) -> None:
            try:
                await self.fleet.wait_running(name, not_pid=old, timeout_s=timeout_s)
            except trio.TooSlowError:
                return
            seen[name] = time.monotonic() - since

        async def wait_all() -> None:
            async with trio.open_nursery() as nursery:
                for name, old in not_pids.items():
                    nursery.start_soon(wait_one, name, old)

        self.acall(wait_all)
        return seen

    def url(self, name: str) -> str:
        return str(self.call(self.fleet.url, name))

    def port(self, name: str) -> int:
        return int(self.call(lambda: self.fleet.ports[name]))
