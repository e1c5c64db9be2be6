"""A real ``redis-server`` for tests: on a free port, in a temporary directory, stopped by PID.

Not a pytest plugin: `running_redis()` is a context manager and `start_redis()` a function,
so fixtures and end-to-end scripts use the same code. ``kill()`` and ``restart()`` exist for
the outage tests (Redis dies, comes back on the same port). Persistence is off: a test
Redis starts empty.

Readiness is "answers PING" (with AUTH when a password is set), polled with a deadline.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.ports import free_port
from tests.support.processes import stop_process

READY_TIMEOUT_S = 30.0


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
    return found


def _answers_ping(port: int, password: str) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            request = b""
            if password:
                request += b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(password), password.encode())
            request += b"*1\r\n$4\r\nPING\r\n"
            sock.sendall(request)
            reply = b""
            while b"PONG" not in reply and b"-" not in reply:
                data = sock.recv(1024)
                if not data:
                    return False
                reply += data
            return b"PONG" in reply
    except OSError:
        return False


@dataclass
class RedisProcess:
    port: int
    directory: Path
    password: str = ""
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    extra_args: list[str] = field(default_factory=list)  # e.g. --replicaof (sentinelproc)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None, "already running"
        args = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(self.directory / "redis.log"),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _answers_ping(self.port, self.password):
            if self.process.poll() is not None:
                log = (self.directory / "redis.log").read_text(errors="replace")[-2000:]
                self.process = None
                raise RuntimeError(f"redis-server exited on port {self.port}:\n{log}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server not ready on port {self.port}")
            time.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL, as an outage: no goodbye to connected clients."""
        if self.process is not None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None

    def restart(self) -> None:
        """Start again on the same port (after `kill` or `stop`)."""
        self.stop()
        self.start()


def start_redis(directory: Path, *, password: str = "", port: int | None = None) -> RedisProcess:
    """Start a redis-server; tries a few free ports in case another process took one."""
    last: Exception | None = None
    for _ in range(5):
        proc = RedisProcess(port or free_port(), directory, password)
        try:
            proc.start()
            return proc
        except RuntimeError as exc:
            last = exc
            if port is not None:
                break
    raise RuntimeError(f"could not start redis-server: {last}")


@contextmanager
def running_redis(*, password: str = "") -> Iterator[RedisProcess]:
    with tempfile.TemporaryDirectory(prefix="test-redis-") as tmp:
        proc = start_redis(Path(tmp), password=password)
        try:
            yield proc
        finally:
            proc.stop()
