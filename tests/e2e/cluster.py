"""A proxy in front of backends it owns, as real processes on free ports, and a bounded load.

For the traffic and fault tests that need no fleet (no Redis, no auth server: the services
are ``public``): the test writes the service map, starts the processes here, signals them
by PID (SIGKILL, SIGSTOP) and reads the proxy's ``/admin/backends``; everything started is
killed in ``finally``. `Load` is a few client threads sending GETs until told to stop, each
loop bounded in requests and time, recording every request's status and duration.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.harness import request
from tests.support.polling import wait_for
from tests.support.ports import free_ports

BIN = Path(sys.executable).parent


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)


def is_up(port: int) -> bool:
    try:
        return request(f"http://127.0.0.1:{port}", "/health", timeout=1).status == 200
    except OSError:
        return False


@dataclass
class Cluster:
    url: str
    backends: list[int]
    spare: list[int]  # ports nothing listens on
    log: Path
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    stopped: set[int] = field(default_factory=set)

    def admin(self) -> dict[str, Any]:
        reply = request(self.url, "/admin/backends", timeout=5)
        assert reply.status == 200, reply
        return dict(reply.json())

    def instances(self, service: str) -> dict[int, dict[str, Any]]:
        """The proxy's view of each instance of ``service``, by port."""
        pool = next(s for s in self.admin()["services"] if s["service"] == service)
        return {int(i["url"].rsplit(":", 1)[1]): i for i in pool["instances"]}

    def kill(self, *ports: int) -> None:
        """SIGKILL all of them at once, then reap them."""
        for port in ports:
            self.processes[port].kill()
        for port in ports:
            self.processes[port].wait(10)

    def stop(self, port: int) -> None:
        """SIGSTOP: the process hangs, its listening socket still completes handshakes."""
        self.stopped.add(port)
        os.kill(self.processes[port].pid, signal.SIGSTOP)

    def resume(self, port: int) -> None:
        if port in self.stopped and self.processes[port].poll() is None:
            os.kill(self.processes[port].pid, signal.SIGCONT)
        self.stopped.discard(port)


@contextmanager
def proxy_cluster(
    tmp_path: Path,
    msa: Callable[[list[str], list[str]], str],
    *,
    backends: int = 3,
    spare: int = 0,
    healthcheck_interval_s: float = 60,
) -> Iterator[Cluster]:
    """``msa(backend_urls, spare_urls)`` is the service map. Active checks run once a minute
    by default, so what a test sees is passive outlier detection."""
    ports = free_ports(backends + spare + 2)
    backend_ports, spare_ports = ports[:backends], ports[backends : backends + spare]
    proxy, elb = ports[-2:]

    def urls(ps: Sequence[int]) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in ps]

    (tmp_path / "msa.yaml").write_text(msa(urls(backend_ports), urls(spare_ports)))
    (tmp_path / "rs.yaml").write_text(
        f"""cur_region_code: ko_KR
regions:
  - region_code: ko_KR
    available_zone: ["http://127.0.0.1:{elb}"]
"""
    )
    (tmp_path / "config.json").write_text(
        json.dumps(
            {
                "Auth_key": "k" * 32,
                "MSA_healthcheck_interval": healthcheck_interval_s,
                "Access_log": True,
            }
        )
    )
    found = Cluster(f"http://127.0.0.1:{proxy}", backend_ports, spare_ports, tmp_path / "proxy.log")
    try:
        for port in backend_ports:
            found.processes[port] = spawn(
                [str(BIN / "backend"), str(port), "--test-faults"], tmp_path / f"backend-{port}.log"
            )
        wait_for(lambda: all(is_up(p) for p in backend_ports), what="backends up")
        found.processes[proxy] = spawn(
            [
                str(BIN / "proxy"),
                str(proxy),
                str(tmp_path / "msa.yaml"),
                str(tmp_path / "rs.yaml"),
                str(tmp_path / "config.json"),
            ],
            found.log,
        )
        wait_for(lambda: is_up(proxy), what="proxy up")
        yield found
    finally:
        for port in list(found.stopped):
            found.resume(port)
        for proc in found.processes.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)


@dataclass(frozen=True, slots=True)
class Result:
    path: str
    status: int | None  # None: the request failed without an answer (see error)
    duration_s: float
    after_fault: bool  # sent after `Load.fault` was set
    error: str = ""


class Load:
    """``workers`` client threads, half keeping their connection alive, half reconnecting
    for every request. Each sends GETs until `stop` is set, or until it has sent
    ``after_fault`` requests since `fault` was set (when given), or ``max_requests``, or for
    ``max_s`` seconds, whichever comes first."""

    def __init__(
        self,
        url: str,
        paths: Sequence[str],
        *,
        workers: int = 8,
        after_fault: int | None = None,
        max_requests: int = 2000,
        max_s: float = 60.0,
        timeout_s: float = 60.0,
    ) -> None:
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.paths = list(paths)
        self.after_fault = after_fault
        self.max_requests = max_requests
        self.max_s = max_s
        self.timeout_s = timeout_s
        self.fault = threading.Event()
        self.stop = threading.Event()
        self.results: list[Result] = []
        self.threads = [
            threading.Thread(target=self._work, args=(i,), name=f"load-{i}") for i in range(workers)
        ]

    def completed(self) -> int:
        return len(self.results)

    def failures(self) -> list[Result]:
        return [r for r in self.results if r.status != 200]

    def _work(self, index: int) -> None:
        keep_alive = index % 2 == 0
        path = self.paths[index // 2 % len(self.paths)]
        conn: http.client.HTTPConnection | None = None
        after_fault = 0
        give_up_at = time.monotonic() + self.max_s
        try:
            for _ in range(self.max_requests):
                if self.stop.is_set() or time.monotonic() > give_up_at:
                    return
                faulted = self.fault.is_set()
                if faulted and self.after_fault is not None:
                    if after_fault >= self.after_fault:
                        return
                    after_fault += 1
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
                started = time.monotonic()
                try:
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    took = time.monotonic() - started
                    self.results.append(Result(path, None, took, faulted, repr(exc)))
                    conn.close()
                    conn = None
                    continue
                took = time.monotonic() - started
                self.results.append(Result(path, resp.status, took, faulted))
                if not keep_alive or resp.will_close:
                    conn.close()
                    conn = None
        finally:
            if conn is not None:
                conn.close()

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()  # a failing test must not leave the threads running to the bound
        for t in self.threads:
            t.join(self.timeout_s + 10)
        assert not any(t.is_alive() for t in self.threads), "load threads did not finish"

    def finish(self) -> None:
        """Wait for every worker to reach its bound (``after_fault`` once `fault` is set)."""
        for t in self.threads:
            t.join(self.timeout_s + self.max_s)
        assert not any(t.is_alive() for t in self.threads), "load threads did not finish"
