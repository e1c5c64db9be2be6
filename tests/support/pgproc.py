"""A real PostgreSQL server for tests: its own cluster in a temporary directory, on a free port,
stopped by PID.

Debian's PostgreSQL 15 binaries live in /usr/lib/postgresql/15/bin (not on PATH);
`postgres_bin_dir` finds the newest installed. ``initdb`` and ``postgres`` refuse to run as
root, and the suite may run as root (the namespace tests need it): then both run as the
unprivileged ``postgres`` system user the Debian package creates (``subprocess``'s
``user=``/``group=``, so the PID we hold is the server's own, not a wrapper's), and the
cluster directory is handed to that user. Without root they run as the caller.

The cluster has one role, ``gateway``, with a generated password (scram-sha-256 over TCP,
as a deployment would use), and one database, ``gateway``. ``listen`` may name an address
other than 127.0.0.1 (a network namespace's), and ``hba_network`` the clients allowed.
``fsync`` is off by default (a test cluster need not survive a power cut; the benchmark turns
it on). Readiness is "a client signs in", polled with a deadline.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ports import free_port
from tests.support.processes import stop_process

READY_TIMEOUT_S = 30.0
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries, or no unprivileged user to run them as root."""


def postgres_bin_dir() -> Path:
    found = sorted(
        (Path(p) for p in glob.glob(DEBIAN_BIN_GLOB) if (Path(p) / "postgres").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1]
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    raise PostgresUnavailable("PostgreSQL is not installed (apt-get install -y postgresql)")


def _run_as() -> dict[str, Any]:
    """``Popen`` keywords that drop root to the ``postgres`` user; {} when not root."""
    if os.geteuid() != 0:
        return {}
    try:
        entry = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            "running as root and there is no 'postgres' user to run initdb as"
        ) from None
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


@dataclass
class PostgresProcess:
    directory: Path
    port: int
    listen: str = "127.0.0.1"
    hba_network: str = "127.0.0.1/32"
    fsync: bool = False
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    user: str = "gateway"
    database: str = "gateway"
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def dsn(self) -> str:
        """What ``Auth_store`` holds for this server."""
        return f"postgresql://{self.user}:{self.password}@{self.listen}:{self.port}/{self.database}"

    @property
    def admin_dsn(self) -> str:
        """The cluster's own ``postgres`` database (exists from initdb on)."""
        return self.dsn.rsplit("/", 1)[0] + "/postgres"

    def init(self) -> None:
        """A new cluster with the ``gateway`` role and database."""
        bindir = postgres_bin_dir()
        as_user = _run_as()
        self.directory.mkdir(parents=True, exist_ok=True)
        pwfile = self.directory / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if as_user:
            for path in (self.directory, pwfile):
                os.chown(path, as_user["user"], as_user["group"])
        result = subprocess.run(
            [
                str(bindir / "initdb"),
                "-D", str(self.data),
                "-U", self.user,
                "--pwfile", str(pwfile),
                "--auth-local=scram-sha-256",
                "--auth-host=scram-sha-256",
                "-E", "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            stdin=subprocess.DEVNULL,
            check=False,
            **as_user,
        )  # fmt: skip
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.decode(errors='replace')[-2000:]}")
        pwfile.unlink()
        if self.hba_network != "127.0.0.1/32":
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {self.hba_network} scram-sha-256\n")

    def start(self) -> None:
        assert self.process is None, "already running"
        bindir = postgres_bin_dir()
        log = (self.directory / "postgres.log").open("ab")
        try:
            self.process = subprocess.Popen(
                [
                    str(bindir / "postgres"),
                    "-D", str(self.data),
                    "-p", str(self.port),
                    "-c", f"listen_addresses={self.listen}",
                    "-c", f"unix_socket_directories={self.directory}",
                    "-c", f"fsync={'on' if self.fsync else 'off'}",
                    "-c", "max_connections=100",
                    "-c", "shared_buffers=32MB",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                **_run_as(),
            )  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._answers():
            if self.process.poll() is not None:
                self.process = None
                raise RuntimeError(f"postgres exited on port {self.port}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"postgres not ready on port {self.port}:\n{self.log_tail()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.admin_dsn, connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def log_tail(self) -> str:
        try:
            return (self.directory / "postgres.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """SIGKILL of the postmaster, as a crash (its backends exit when they notice)."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, the cluster is consistent."""
        if self.process is not None:
            stop_process(self.process, signal.SIGINT, grace_s=15)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self, name: str) -> str:
        """A new empty database owned by ``gateway``; its DSN (one per test keeps them apart)."""
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.dsn.rsplit("/", 1)[0] + "/" + name


def start_postgres(
    directory: Path,
    *,
    listen: str = "127.0.0.1",
    hba_network: str = "127.0.0.1/32",
    fsync: bool = False,
    port: int | None = None,
) -> PostgresProcess:
    """A new cluster in ``directory``, started; a few free ports are tried in case another
    process took one between finding and binding it."""
    proc = PostgresProcess(directory, port or free_port(), listen, hba_network, fsync)
    proc.init()
    last: Exception | None = None
    for _ in range(5 if port is None else 1):
        try:
            proc.start()
        except RuntimeError as exc:
            last = exc
            proc.port = free_port()
            continue
        proc.create_database(proc.database)
        return proc
    raise RuntimeError(f"could not start postgres: {last}")


@contextmanager
def running_postgres(*, fsync: bool = False) -> Iterator[PostgresProcess]:
    """A server for the duration of the block; its directory is removed after."""
    tmp = tempfile.mkdtemp(prefix="test-postgres-")
    os.chmod(tmp, 0o755)  # the postgres user must reach its cluster inside
    try:
        proc = start_postgres(Path(tmp) / "cluster", fsync=fsync)
        try:
            yield proc
        finally:
            proc.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
