"""One fleet per run directory, and a start that names what stands in its way.

A second ``make fleet`` used to start all its children and watch each one fail on its port.
Before anything starts, the launcher now checks three things and stops with one report that
names PIDs and ports:

1. another launcher runs from the same run directory base: it holds ``fleet.lock``
   (``flock``, so the kernel releases it when that launcher dies, SIGKILL included);
2. processes of an earlier fleet from this base are still alive without their launcher
   (``fleet.json`` lists every child the last launcher started; a PID counts only if the
   process still has the start time recorded for it, so a reused PID is not mistaken for
   ours). With `httpio.lifeline` this needs a launcher killed on a system without
   ``PR_SET_PDEATHSIG``, or an older version's orphans;
3. a port of the topology is taken by anyone at all (another fleet under another base, a
   system Redis): the holder's PID and command line come from ``/proc`` where we may read
   them.

The launcher rewrites ``fleet.json`` (atomically: a temporary file renamed over it) each time
it starts a child. The parsers of ``/proc`` text are pure functions.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

import msgspec

LOCK_NAME = "fleet.lock"
STATE_NAME = "fleet.json"
LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column


class ProcessRecord(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    pid: int
    port: int = 0
    started: int = 0  # /proc/<pid>/stat start time (clock ticks since boot)


class FleetState(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    launcher: ProcessRecord
    fleet_id: str
    run_dir: str
    children: list[ProcessRecord] = msgspec.field(default_factory=list)


# -- /proc, parsed -----------------------------------------------------------------------------
def parse_start_time(stat: str) -> int | None:
    """The start time in ``/proc/<pid>/stat``; None for a zombie (it is gone, only not
    reaped: its parent died and nobody waits for it)."""
    fields = stat.rsplit(")", 1)[-1].split()  # the command name may hold spaces and ")"
    if len(fields) < 20 or fields[0] == "Z":
        return None
    return int(fields[19])


def listening_inodes(table: str, port: int) -> set[int]:
    """Socket inodes listening on ``port`` in a ``/proc/net/tcp`` or ``tcp6`` table."""
    found = set()
    for line in table.splitlines()[1:]:
        cols = line.split()
        if len(cols) > 9 and cols[3] == LISTEN and int(cols[1].rsplit(":", 1)[1], 16) == port:
            found.add(int(cols[9]))
    return found


def process_started(pid: int) -> int | None:
    try:
        return parse_start_time(Path(f"/proc/{pid}/stat").read_text())
    except (OSError, ValueError):
        return None


def is_alive(record: ProcessRecord) -> bool:
    return record.pid > 0 and process_started(record.pid) == record.started


def record_of(name: str, pid: int, port: int = 0) -> ProcessRecord:
    return ProcessRecord(name, pid, port, process_started(pid) or 0)


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)


def port_holders(port: int) -> list[int]:
    """PIDs with a socket listening on ``port`` (those whose descriptors we may read)."""
    inodes: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            inodes |= listening_inodes(Path(table).read_text(), port)
    if not inodes:
        return []
    wanted = {f"socket:[{inode}]" for inode in inodes}
    holders = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry.name}/fd")
            if any(os.readlink(f"/proc/{entry.name}/fd/{fd}") in wanted for fd in fds):
                holders.append(int(entry.name))
        except OSError:
            continue
    return sorted(holders)


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


# -- the lock and the state file ---------------------------------------------------------------
class FleetLock:
    """``fleet.lock`` and ``fleet.json`` in a run directory base; for a launcher of a part of
    the fleet (``fleet --only``), ``fleet-<part>.lock`` and ``fleet-<part>.json``, so that the
    two halves of one fleet run side by side (their ports keep them from overlapping)."""

    def __init__(self, base: Path, part: str = "") -> None:
        self.base = base
        suffix = f"-{part}" if part else ""
        self.lock_path = base / LOCK_NAME.replace("fleet", f"fleet{suffix}", 1)
        self.state_path = base / STATE_NAME.replace("fleet", f"fleet{suffix}", 1)
        self._fd: int | None = None

    def __repr__(self) -> str:
        return f"<FleetLock {self.base} held={self._fd is not None}>"

    def acquire(self) -> bool:
        """Take the lock for as long as this process lives; False if another holds it."""
        self.base.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def read_state(self) -> FleetState | None:
        try:
            return msgspec.json.decode(self.state_path.read_bytes(), type=FleetState)
        except (OSError, msgspec.DecodeError, msgspec.ValidationError):
            return None

    def write_state(self, state: FleetState) -> None:
        tmp = self.state_path.with_name(f".{self.state_path.name}.{os.getpid()}")
        tmp.write_bytes(msgspec.json.format(msgspec.json.encode(state), indent=2) + b"\n")
        os.replace(tmp, self.state_path)


# -- what stands in the way --------------------------------------------------------------------
def _rows(records: Iterable[ProcessRecord]) -> list[str]:
    return [f"    {r.name:<24} pid {r.pid:<8} port {r.port or '-'}" for r in records]


def obstacles(
    lock: FleetLock,
    ports: Mapping[str, int],
    host: str,
    addresses: Mapping[str, str] | None = None,
) -> list[str]:
    """Lines saying why a fleet must not start (none: it may). Takes ``lock`` if it can;
    the caller keeps it for as long as the fleet runs. Ports are checked on ``host``, or on
    each child's own address in ``addresses`` (a topology with hosts)."""
    state = lock.read_state()
    if not lock.acquire():
        if state is None:
            return [f"fleet: another launcher holds {lock.lock_path} (no {STATE_NAME} yet)"]
        alive = [c for c in state.children if is_alive(c)]
        return [
            f"fleet: a fleet is already running from {lock.base}: launcher pid"
            f" {state.launcher.pid}, run directory {state.run_dir}",
            *_rows(alive),
            f"fleet: stop it first (Ctrl-C in its terminal, or kill {state.launcher.pid})",
        ]
    if state is not None:
        orphans = [c for c in state.children if is_alive(c)]
        if orphans:
            pids = " ".join(str(c.pid) for c in orphans)
            return [
                f"fleet: processes of an earlier fleet from {lock.base} are still running"
                f" without their launcher (pid {state.launcher.pid}, gone):",
                *_rows(orphans),
                f"fleet: stop them first: kill {pids}",
            ]
    where = addresses or {}
    busy = [(n, port) for n, port in ports.items() if port_in_use(where.get(n, host), port)]
    if not busy:
        return []
    lines = [f"fleet: {len(busy)} port(s) of this topology are in use:"]
    for name, port in busy:
        holders = port_holders(port)
        who = ", ".join(f"pid {pid} ({command_line(pid)[:80]})" for pid in holders) or "?"
        lines.append(f"    {port:<6} ({name}) held by {who}")
    lines.append("fleet: stop what holds them, or give the topology other ports")
    return lines
