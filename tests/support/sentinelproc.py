"""A Redis primary, a replica and three Sentinels for tests: real ``redis-server`` processes
on free ports in one temporary directory, each stopped by PID.

There is no separate ``redis-sentinel`` binary on Debian's package path we rely on: a
sentinel is ``redis-server FILE --sentinel``. Each sentinel gets its own generated
``sentinel.conf`` (a sentinel rewrites its file as it learns the topology), watching the
primary as ``master_name`` with a quorum of 2 and ``down-after-milliseconds`` of 1000: a
killed primary is replaced within a few seconds (down-after, then a leader election).

`running_sentinels()` returns once the replica is in sync and every sentinel knows the
replica and the two other sentinels, so a failover can happen as soon as a test kills the
primary; all of it polled with deadlines. ``host`` may be another address (a network
namespace's) for the multi-host tests.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hiredis

from tests.support.ports import free_ports
from tests.support.processes import stop_process
from tests.support.redisproc import RedisProcess, redis_server_binary

READY_TIMEOUT_S = 30.0
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


def command(host: str, port: int, *args: str | int, timeout_s: float = 1.0) -> Any:
    """One command on a fresh blocking connection; the decoded reply (errors returned)."""
    reader = hiredis.Reader()
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(hiredis.pack_command(tuple(args)))  # type: ignore[arg-type]
        while (reply := reader.gets()) is False:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError(f"{host}:{port} closed the connection")
            reader.feed(data)
    return reply


def _pairs(reply: Sequence[bytes]) -> dict[str, str]:
    flat = [bytes(x).decode() for x in reply]
    return dict(zip(flat[0::2], flat[1::2], strict=False))


def _wait(condition: Any, what: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if condition():
                return
        except (OSError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass
class SentinelProcess:
    port: int
    directory: Path
    host: str = "127.0.0.1"
    run_id: str = field(default_factory=lambda: secrets.token_hex(20))
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def write_config(
        self,
        master_name: str,
        primary_host: str,
        primary_port: int,
        *,
        replicas: Sequence[tuple[str, int]] = (),
        peers: Sequence[SentinelProcess] = (),
    ) -> Path:
        """``replicas`` and ``peers`` are written in as already known (``known-replica``,
        ``known-sentinel`` with each peer's run id), which a sentinel otherwise learns from
        the primary's INFO and the hello channel over several seconds."""
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "sentinel.conf"
        known = "".join(
            f"sentinel known-replica {master_name} {r_host} {r_port}\n"
            for r_host, r_port in replicas
        ) + "".join(
            f"sentinel known-sentinel {master_name} {p.host} {p.port} {p.run_id}\n"
            for p in peers
            if p is not self
        )
        conf.write_text(
            f"sentinel myid {self.run_id}\n"
            f"port {self.port}\n"
            f"bind {self.host}\n"
            "daemonize no\n"
            "protected-mode no\n"
            f"dir {self.directory}\n"
            f"logfile {self.directory / 'sentinel.log'}\n"
            f"sentinel monitor {master_name} {primary_host} {primary_port} 2\n"
            f"sentinel down-after-milliseconds {master_name} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {master_name} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {master_name} 1\n"
            f"{known}"
        )
        return conf

    def start(self, conf: Path) -> None:
        """Run the sentinel on ``conf`` (`write_config`'s file) and wait for its PING."""
        self.process = subprocess.Popen(
            [redis_server_binary(), str(conf), "--sentinel"], stdin=subprocess.DEVNULL
        )
        _wait(lambda: command(self.host, self.port, "PING") == b"PONG", f"sentinel {self.port}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@dataclass
class SentinelGroup:
    """The primary, its replica and the sentinels watching them."""

    master_name: str
    primary: RedisProcess
    replica: RedisProcess
    sentinels: list[SentinelProcess]
    host: str = "127.0.0.1"

    @property
    def sentinel_addresses(self) -> list[str]:
        """What ``Redis_sentinels`` holds."""
        return [s.address for s in self.sentinels]

    def reported_primary(self) -> tuple[str, int] | None:
        """What the first sentinel that answers says the primary is."""
        for sentinel in self.sentinels:
            try:
                reply = command(
                    sentinel.host, sentinel.port, "SENTINEL", "get-master-addr-by-name",
                    self.master_name,
                )  # fmt: skip
            except OSError:
                continue
            if isinstance(reply, list):
                return bytes(reply[0]).decode(), int(reply[1])
        return None

    def wait_for_failover(self, old_port: int, timeout_s: float = READY_TIMEOUT_S) -> int:
        """Wait until the sentinels name a primary other than ``old_port``; its port."""
        found: list[int] = []

        def moved() -> bool:
            now = self.reported_primary()
            if now is None or now[1] == old_port:
                return False
            role = command(now[0], now[1], "ROLE")
            found.append(now[1])
            return isinstance(role, list) and role[0] == b"master"

        _wait(moved, "a sentinel failover", timeout_s)
        return found[-1]

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        self.replica.stop()
        self.primary.stop()


def _ready_to_fail_over(group: SentinelGroup) -> bool:
    for sentinel in group.sentinels:
        master = _pairs(
            command(sentinel.host, sentinel.port, "SENTINEL", "master", group.master_name)
        )
        replicas = command(sentinel.host, sentinel.port, "SENTINEL", "replicas", group.master_name)
        if int(master.get("num-other-sentinels", 0)) < len(group.sentinels) - 1:
            return False
        if not replicas or "s_down" in _pairs(replicas[0]).get("flags", "s_down"):
            return False
    return True


def start_sentinel_group(
    directory: Path, *, master_name: str = "gateway", host: str = "127.0.0.1"
) -> SentinelGroup:
    """Primary, replica and three sentinels, started and ready for a failover."""
    p_port, r_port, *s_ports = free_ports(5)
    # A replica syncs at once: the primary does not wait 5 s (Redis 7's default) for more
    # replicas to share a diskless transfer.
    common = ["--bind", host, "--protected-mode", "no", "--repl-diskless-sync-delay", "0"]
    primary = RedisProcess(p_port, directory / "primary", extra_args=common)
    replica = RedisProcess(
        r_port, directory / "replica", extra_args=[*common, "--replicaof", host, str(p_port)]
    )
    sentinels = [SentinelProcess(port, directory / f"sentinel-{port}", host) for port in s_ports]
    group = SentinelGroup(master_name, primary, replica, sentinels, host)
    try:
        for proc in (primary, replica):
            proc.directory.mkdir(parents=True)
            proc.start()
        _wait(
            lambda: b"master_link_status:up" in command(host, r_port, "INFO", "replication"),
            "the replica's sync",
        )
        for sentinel in sentinels:
            conf = sentinel.write_config(
                master_name, host, p_port, replicas=[(host, r_port)], peers=sentinels
            )
            sentinel.start(conf)
        _wait(lambda: _ready_to_fail_over(group), "the sentinels to know each other")
    except BaseException:
        group.stop()
        raise
    return group


@contextmanager
def running_sentinels(*, master_name: str = "gateway") -> Iterator[SentinelGroup]:
    with tempfile.TemporaryDirectory(prefix="test-sentinel-") as tmp:
        group = start_sentinel_group(Path(tmp), master_name=master_name)
        try:
            yield group
        finally:
            group.stop()
