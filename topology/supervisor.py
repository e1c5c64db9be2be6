"""Start, watch, restart and stop the fleet's child processes, group by group.

Children come in dependency groups (redis, then backends, auth servers, proxies, ELBs). A
group is started all at once and must be *ready* before the next starts: for an HTTP child
that means ``GET /health`` passes the probe every process uses (`httpio.health_check`: 2xx
or 3xx in time), for Redis that ``PING`` answers ``+PONG``; a port
that merely accepts connections is not enough, because our servers listen before their
first health check has run. A child that does not come up within ``ready_timeout_s`` (15 s:
a cold Python start with imports takes about half a second here, so this only trips on a
real failure) is reported with the tail of its log and stopped; the rest keep running.

Once up, a child that exits is restarted with exponential backoff (`Backoff`: 0.5 s doubling
to 30 s, forgiven after 10 s of uptime), as systemd's and Kubernetes' crash-loop backoff do:
quick enough for a one-off crash, quiet for a crash loop. The 10 s is systemd's default
``StartLimitIntervalSec``: a child that served for that long was not crash-looping. With the
60 s used before, a fault campaign that SIGKILLed the same auth server four or five times
within a minute waited 4.7 s and 8.7 s for its restarts although each run had been healthy.

Every child runs in its own session (``start_new_session=True``), so a Ctrl-C typed at the
terminal reaches only the launcher, which then stops the groups in reverse order (ELBs
first, so no new traffic enters while the proxies and backends drain) with SIGTERM, and
SIGKILL after ``grace_s`` (the fleet's: config.json's drain and a margin,
`httpio.lifeline.stop_timeout_s`; 10 s when not given). The signal goes to the
child's whole process group, so nothing a child forked is left behind. A launcher killed
with SIGKILL cannot do this; the kernel then kills the children (`httpio.lifeline`).

A child whose spec says ``listen`` (the ELBs) gets its listening socket from the
supervisor, which binds it before the child's first start, passes it with ``--listen-fd``
and keeps it open across restarts: while a crashed ELB is restarted, new connections wait
in the kernel's backlog instead of being refused (HAProxy and Envoy hand their listeners to
their successors; systemd's socket activation does the same).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal

import trio

from httpio.health_check import probe_origin
from httpio.lifeline import Backoff, ChildProcess, start_child

Probe = Literal["http", "redis", "tcp"]
PROBE_TIMEOUT_S = 1.0  # one readiness check; a child that is up answers in milliseconds
Output = Callable[[str], None]
STANDBY_BACKLOG = 4096  # as the servers' own listeners


class FleetStartError(Exception):
    """Some children could not be started or did not become ready; the message names each
    one with the reason and the tail of its log."""


@dataclass(frozen=True, slots=True)
class ChildSpec:
    """One process to run. ``argv`` is None when its program is not installed; ``missing``
    then says why."""

    name: str
    kind: str
    port: int
    argv: tuple[str, ...] | None
    log: Path
    probe: Probe = "http"
    region: str = ""
    host: str = "127.0.0.1"
    missing: str = ""
    listen: bool = False  # the supervisor holds its listening socket (``--listen-fd``)


class State(Enum):
    PENDING = "pending"
    MISSING = "missing"  # its program is not installed
    STARTING = "starting"
    RUNNING = "running"  # ready: answered its probe
    BACKOFF = "backoff"  # crashed, waiting to restart
    FAILED = "failed"  # never became ready at start; not restarted
    STOPPED = "stopped"


@dataclass(slots=True)
class Child:
    spec: ChildSpec
    backoff: Backoff
    state: State = State.PENDING
    process: ChildProcess | None = None
    standby: socket.socket | None = None  # the listening socket kept across restarts
    started_at: float = 0.0
    restarts: int = 0
    error: str = ""
    stopping: bool = False
    watch_scope: trio.CancelScope | None = None
    watch_done: trio.Event | None = None

    @property
    def pid(self) -> int | None:
        p = self.process
        return p.pid if p is not None and p.returncode is None else None


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


def read_log_tail(path: Path, lines: int = 15) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _open_log(path: Path, argv: Sequence[str]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.write(fd, f"--- fleet: starting {shlex.join(argv)}\n".encode())
    return fd


async def probe_once(spec: ChildSpec, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """One readiness check; False on any failure (refused, reset, wrong answer, slow). An
    HTTP child is probed as every process probes another (`httpio.health_check.probe_origin`),
    so a child that is up holds no idle connection of ours."""
    if spec.probe == "http":
        return await probe_origin(f"http://{spec.host}:{spec.port}", "/health", timeout_s)
    with trio.move_on_after(timeout_s):
        try:
            stream = await trio.open_tcp_stream(spec.host, spec.port)
        except OSError:
            return False
        async with stream:
            if spec.probe == "tcp":
                return True
            try:
                await stream.send_all(b"PING\r\n")
                answer = b""
                while b"\r\n" not in answer and len(answer) < 4096:
                    data = await stream.receive_some(4096)
                    if not data:
                        break
                    answer += data
            except (trio.BrokenResourceError, OSError):
                return False
            # -NOAUTH: up, with a password (the launcher's redis.conf)
            return answer.startswith((b"+PONG", b"-NOAUTH"))
    return False


class Supervisor:
    """Runs ``groups`` of children in order; see the module docstring for the rules."""

    def __init__(
        self,
        groups: Sequence[Sequence[ChildSpec]],
        *,
        out: Output = print,
        ready_timeout_s: float = 15.0,
        grace_s: float = 10.0,
        backoff: Callable[[], Backoff] = Backoff,
        probe_interval_s: float = 0.05,
        env: Mapping[str, str] | None = None,
        on_spawn: Callable[[Child], None] | None = None,
    ) -> None:
        self.groups = [[Child(spec, backoff()) for spec in group] for group in groups]
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.on_spawn = on_spawn
        self.out = out
        self.ready_timeout_s = ready_timeout_s
        self.grace_s = grace_s
        self.probe_interval_s = probe_interval_s
        self.stopping = False
        self._changed = trio.Event()

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for child in self.children:
            counts[child.state.value] = counts.get(child.state.value, 0) + 1
        states = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
        return f"<Supervisor children={len(self.children)} {states}>"

    @property
    def children(self) -> list[Child]:
        return [c for group in self.groups for c in group]

    def child(self, name: str) -> Child:
        for c in self.children:
            if c.spec.name == name:
                return c
        raise KeyError(name)

    def statistics(self) -> dict[str, object]:
        return {
            c.spec.name: {"state": c.state.value, "pid": c.pid, "restarts": c.restarts}
            for c in self.children
        }

    def problems(self) -> list[Child]:
        return [c for c in self.children if c.state in (State.MISSING, State.FAILED)]

    def _set(self, child: Child, state: State) -> None:
        child.state = state
        self._changed.set()
        self._changed = trio.Event()

    # -- starting ----------------------------------------------------------------------------
    async def start(self, nursery: trio.Nursery) -> None:
        """Start every group in order, each ready before the next. The children's watch
        tasks live in ``nursery``, which must outlive `stop`. Failures are recorded in each
        child's ``state``/``error``; see `problems`."""
        for group in self.groups:
            async with trio.open_nursery() as starting:
                for child in group:
                    if child.spec.argv is None:
                        child.error = child.spec.missing or "program not installed"
                        self._set(child, State.MISSING)
                        self.out(f"{child.spec.name}: not started: {child.error}")
                        continue
                    starting.start_soon(nursery.start, self._watch, child)

    def _spawn(self, child: Child) -> None:
        """Start the child (on this thread: see `httpio.lifeline`); OSError if it cannot
        be started or, the first time, its port cannot be listened on."""
        spec = child.spec
        assert spec.argv is not None
        argv: list[str] = list(spec.argv)
        if spec.listen and child.standby is None:
            child.standby = _open_standby(spec)
        pass_fds: tuple[int, ...] = ()
        if child.standby is not None:
            argv += ["--listen-fd", str(child.standby.fileno())]
            pass_fds = (child.standby.fileno(),)
        fd = _open_log(spec.log, argv)
        try:
            child.process = start_child(argv, output=fd, env=self.env, pass_fds=pass_fds)
        finally:
            os.close(fd)
        child.started_at = trio.current_time()
        self._set(child, State.STARTING)
        if self.on_spawn is not None:
            self.on_spawn(child)

    async def _wait_ready(self, child: Child) -> str:
        """'' once the child answers its probe; otherwise why it did not."""
        process = child.process
        assert process is not None
        with trio.move_on_after(self.ready_timeout_s):
            while True:
                if process.returncode is not None:
                    return f"exited with {describe_exit(process.returncode)} before it was ready"
                if await probe_once(child.spec):
                    return ""
                await trio.sleep(self.probe_interval_s)
        return f"not ready after {self.ready_timeout_s:g}s (port {child.spec.port})"

    async def _watch(
        self, child: Child, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        child.watch_scope = trio.CancelScope()
        child.watch_done = trio.Event()
        try:
            with child.watch_scope:
                try:
                    self._spawn(child)
                except OSError as exc:
                    child.error = f"cannot start: {exc}"
                    self._set(child, State.FAILED)
                    self.out(f"{child.spec.name}: FAILED: {child.error}")
                    task_status.started()
                    return
                reason = await self._wait_ready(child)
                if reason:
                    await self._fail(child, reason)
                    task_status.started()
                    return
                self._set(child, State.RUNNING)
                task_status.started()
                await self._keep_running(child)
        finally:
            child.watch_done.set()

    async def _fail(self, child: Child, reason: str) -> None:
        tail = read_log_tail(child.spec.log)
        child.error = reason
        self.out(f"{child.spec.name}: FAILED: {reason}; log {child.spec.log}:")
        for line in tail.splitlines():
            self.out(f"    {line}")
        await self._terminate(child)
        self._set(child, State.FAILED)

    async def _keep_running(self, child: Child) -> None:
        while True:
            process = child.process
            assert process is not None
            code = await process.wait()
            if self.stopping or child.stopping:
                return
            uptime = trio.current_time() - child.started_at
            delay = child.backoff.next_delay(uptime)
            self._set(child, State.BACKOFF)
            self.out(
                f"{child.spec.name}: exited with {describe_exit(code)} after {uptime:.1f}s; "
                f"restarting in {delay:g}s (log {child.spec.log})"
            )
            await trio.sleep(delay)
            if self.stopping or child.stopping:
                return
            try:
                self._spawn(child)
            except OSError as exc:
                self.out(f"{child.spec.name}: cannot restart: {exc}")
                continue
            child.restarts += 1
            self.out(f"{child.spec.name}: restarted, pid {child.pid} (restart #{child.restarts})")
            reason = await self._wait_ready(child)
            if reason:
                self.out(f"{child.spec.name}: {reason}")
            else:
                self._set(child, State.RUNNING)

    # -- observing ---------------------------------------------------------------------------
    async def wait_running(
        self, name: str, *, not_pid: int | None = None, timeout_s: float = 15.0
    ) -> int:
        """Wait until ``name`` is ready (with a pid other than ``not_pid``, e.g. after a
        kill); returns its pid. Raises `trio.TooSlowError` at the deadline."""
        child = self.child(name)
        with trio.fail_after(timeout_s):
            while True:
                pid = child.pid
                if child.state is State.RUNNING and pid is not None and pid != not_pid:
                    return pid
                await self._changed.wait()

    def send_signal(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal one child (SIGKILL simulates a crash; the supervisor restarts it)."""
        process = self.child(name).process
        if process is not None and process.returncode is None:
            process.send_signal(sig)

    # -- stopping ----------------------------------------------------------------------------
    async def stop(self) -> None:
        """Stop every child, groups in reverse order. Shielded: safe in ``finally``."""
        self.stopping = True
        with trio.CancelScope(shield=True):
            for group in reversed(self.groups):
                async with trio.open_nursery() as stopping:
                    for child in group:
                        stopping.start_soon(self._stop_child, child)

    async def _stop_child(self, child: Child) -> None:
        child.stopping = True
        if child.watch_scope is not None:
            child.watch_scope.cancel()
        if child.watch_done is not None:
            await child.watch_done.wait()
        _close_standby(child)  # no new connections wait for an ELB that is going away
        await self._terminate(child)
        if child.state not in (State.MISSING, State.FAILED):
            self._set(child, State.STOPPED)

    async def _terminate(self, child: Child) -> None:
        process = child.process
        if process is None or process.returncode is not None:
            return
        with trio.CancelScope(shield=True):
            _signal_group(process, signal.SIGTERM)
            with trio.move_on_after(self.grace_s):
                await process.wait()
            if process.returncode is None:
                self.out(f"{child.spec.name}: no exit {self.grace_s:g}s after SIGTERM; SIGKILL")
                _signal_group(process, signal.SIGKILL)
                await process.wait()

    def kill_all(self) -> None:
        """SIGKILL every child at once (a second Ctrl-C while stopping)."""
        for child in self.children:
            child.stopping = True
            _close_standby(child)
            if child.process is not None and child.process.returncode is None:
                _signal_group(child.process, signal.SIGKILL)


def _open_standby(spec: ChildSpec) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((spec.host, spec.port))
        sock.listen(STANDBY_BACKLOG)
    except OSError as exc:
        sock.close()
        raise OSError(
            exc.errno, f"cannot listen on {spec.host}:{spec.port}: {exc.strerror}"
        ) from None
    return sock


def _close_standby(child: Child) -> None:
    if child.standby is not None:
        child.standby.close()
        child.standby = None


def _signal_group(process: ChildProcess, sig: int) -> None:
    # The child leads its own session, so its pid is its process group id.
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        process.send_signal(sig)
