"""`proxy.workers`: a real ``proxy --workers 2`` on a free port of 127.0.0.1. Both workers
answer on the one port, an ELB's hand-offs reach both, a SIGKILLed worker is restarted while
the other serves every request, SIGTERM drains every worker, and a SIGKILLed parent takes its
workers with it. Which worker answered is read off ``/admin/backends`` (``process``), which
only a direct connection from this host sees. Each test is a fleet of its own (hand-off
names, `httpio.handoff`); waits are on conditions under deadlines, never fixed sleeps.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from bench.hop_lab import write_proxy_files
from httpio.lifeline import Backoff
from proxy.workers import worker_argv
from tests.elb.test_main import Reply, running_elb
from tests.elb.test_main import get as get_within
from tests.support.polling import wait_until
from tests.support.ports import free_port
from topology.fleet_lock import process_started

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT")
STARTUP_S = 30.0  # two cold Python starts on a loaded 2-core machine


async def get(port: int, target: str) -> Reply:
    """One request on a new connection, with room for a machine at load 15 (seen here)."""
    return await get_within(port, target, deadline_s=STARTUP_S)


class Proxy:
    """``proxy PORT ... --workers 2`` started by this test, its output in a file."""

    def __init__(self, tmp: Path, fleet: str) -> None:
        self.port = free_port()
        self.fleet = fleet
        self.log = tmp / "proxy.log"
        files = write_proxy_files(
            tmp,
            backend="http://127.0.0.1:9",
            auth="http://127.0.0.1:9",
            auth_key="k" * 43,
            redis_port=0,
        )
        env = {**os.environ, "GATEWAY_FLEET_ID": fleet}
        env.pop("GATEWAY_RUNTIME_DIR", None)
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(BIN / "proxy"), str(self.port), *map(str, files), *self.options(tmp)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
            )

    @staticmethod
    def options(tmp: Path) -> list[str]:
        return ["--workers", "2", "--access-log", str(tmp / "access.log")]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> set[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            return {int(p) for p in path.read_text().split()}
        except OSError:
            return set()

    def events(self, name: str) -> list[dict[str, object]]:
        lines = self.log.read_text().splitlines()
        rows = [json.loads(line) for line in lines if line.startswith("{")]
        return [row for row in rows if row.get("event") == name]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Proxy]:
    running = Proxy(tmp_path, f"test-{secrets.token_hex(6)}")
    try:
        yield running
    finally:
        running.stop()


async def answering_pid(port: int) -> int | None:
    """The pid of the worker that answers ``/admin/backends`` on a new connection; None if
    the connection is refused (no worker listens)."""
    try:
        reply = await get(port, "/admin/backends")
    except OSError:
        return None
    assert reply.status == 200, reply.body
    pid = reply.json()["process"]["pid"]
    assert isinstance(pid, int)
    return pid


async def pids_answering(port: int, count: int) -> set[int]:
    """The workers seen answering ``count`` requests, each on a new connection (the kernel
    spreads connections by their addresses, so both show up in a few), every one a 200."""
    seen = set()
    for _ in range(count):
        pid = await answering_pid(port)
        assert pid is not None
        seen.add(pid)
    return seen


async def both_up(proxy: Proxy) -> set[int]:
    await wait_until(lambda: len(proxy.workers()) == 2, timeout_s=STARTUP_S)
    await wait_until(lambda: len(proxy.events("listening")) >= 2, timeout_s=STARTUP_S)
    return proxy.workers()


@linux_only
async def test_two_workers_share_the_port_take_hand_offs_and_a_killed_one_is_replaced(
    proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    workers = await both_up(proxy)
    # both answer on the one port (64 connections: both appear unless the hash is broken)
    assert await pids_answering(proxy.port, 64) == workers
    # a scrape sees one worker's series, and which worker that is
    scrape = await get(proxy.port, "/metrics")
    (info,) = [line for line in scrape.body.decode().splitlines() if "gateway_worker_info{" in line]
    assert 'workers="2"' in info and any(f'pid="{pid}"' in info for pid in workers)

    # an ELB of the same fleet links to each worker and spreads its hand-offs over them
    monkeypatch.setenv("GATEWAY_FLEET_ID", proxy.fleet)
    async with running_elb([proxy.url]) as (elb, elb_port):
        target = elb.targets[proxy.url]
        await wait_until(lambda: set(target.links) == {0, 1}, timeout_s=STARTUP_S)
        assert {link.peer_pid for link in target.links.values()} == workers
        for _ in range(4):
            reply = await get(elb_port, "/health")
            assert reply.status == 200
        assert (elb.handed_off, elb.relayed) == (4, 0)

    # an ELB of another fleet gets no hand-off: it relays (PROXY v2) to the port, and the
    # kernel spreads those connections as any other (both workers trust the ELB's address)
    monkeypatch.setenv("GATEWAY_FLEET_ID", f"other-{proxy.fleet}")
    async with running_elb([proxy.url]) as (elb, elb_port):
        for _ in range(16):
            reply = await get(elb_port, "/health")
            assert reply.status == 200
        assert (elb.handed_off, elb.relayed) == (0, 16)

    # SIGKILL one worker: once it is gone, every request goes to the other until it is back
    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    await wait_until(
        lambda: victim not in proxy.workers() and process_started(victim) is None,
        timeout_s=STARTUP_S,
    )
    with trio.fail_after(STARTUP_S):  # until its replacement listens (0.5 s back-off)
        while len(proxy.events("listening")) < 3:
            pid = await answering_pid(proxy.port)
            assert pid is not None, "a request was refused while a worker was down"
            assert pid != victim
    replacement = proxy.workers() - workers
    assert len(replacement) == 1
    assert await pids_answering(proxy.port, 64) == (workers - {victim}) | replacement
    assert len(proxy.events("worker_exited")) == 1

    # SIGHUP reaches every worker (each reopens its access log, as logrotate expects)
    await wait_until(lambda: len(proxy.events("listening")) >= 3, timeout_s=STARTUP_S)
    proxy.process.send_signal(signal.SIGHUP)
    await wait_until(
        lambda: {row["worker"] for row in proxy.events("access_log_reopened")} == {0, 1},
        timeout_s=STARTUP_S,
    )

    # SIGTERM drains every worker; the parent exits 0 once they have
    proxy.process.send_signal(signal.SIGTERM)
    assert proxy.process.wait(STARTUP_S) == 0
    stopped = proxy.events("worker_stopped")
    assert sorted((row["worker"], row["code"]) for row in stopped) == [(0, 0), (1, 0)]
    assert len([row for row in proxy.events("draining") if "worker" in row]) == 2


class ProxyWithWorkerMetrics(Proxy):
    """``--workers 2 --worker-metrics-ports A,B``: each worker's /metrics on its own port."""

    def __init__(self, tmp: Path, fleet: str) -> None:
        self.metrics_ports = [free_port(), free_port()]
        super().__init__(tmp, fleet)

    def options(self, tmp: Path) -> list[str]:  # type: ignore[override]
        ports = ",".join(map(str, self.metrics_ports))
        return [*Proxy.options(tmp), "--worker-metrics-ports", ports]


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    ]


async def not_found_total(ports: list[int]) -> float:
    """The 404s counted by the workers behind ``ports``, summed."""
    total = 0.0
    for port in ports:
        text = (await get(port, "/metrics")).body.decode()
        total += sum(
            v for labels, v in samples(text, "gateway_requests_total") if labels["code"] == "404"
        )
    return total


@linux_only
async def test_each_worker_serves_its_own_metrics_and_together_they_count_every_request(
    tmp_path: Path,
) -> None:
    """Issue 12: a scrape of the shared port sees one worker; each worker's own port sees
    that worker, and the sum over them is the proxy's (what prometheus.yml lists)."""
    proxy = ProxyWithWorkerMetrics(tmp_path, f"test-{secrets.token_hex(6)}")
    try:
        workers = await both_up(proxy)
        await wait_until(
            lambda: len(proxy.events("worker_metrics_listening")) == 2, timeout_s=STARTUP_S
        )
        seen = []
        for k, port in enumerate(proxy.metrics_ports):
            reply = await get(port, "/metrics")
            assert reply.status == 200
            ((info, _),) = samples(reply.body.decode(), "gateway_worker_info")
            seen.append((info["worker"], int(info["pid"])))
            assert info["worker"] == str(k)
            assert (await get(port, "/admin/backends")).status == 404  # /metrics only
        assert {pid for _, pid in seen} == workers
        before = await not_found_total(proxy.metrics_ports)
        for _ in range(24):  # each on a new connection: the kernel spreads them
            assert (await get(proxy.port, "/nowhere/x")).status == 404
        assert await not_found_total(proxy.metrics_ports) == before + 24
    finally:
        proxy.stop()


@linux_only
async def test_a_sigkilled_parent_leaves_no_worker_running(proxy: Proxy) -> None:
    # no need to wait for them to serve: a worker is tied to its parent before it execs
    await wait_until(lambda: len(proxy.workers()) == 2, timeout_s=STARTUP_S)
    workers = proxy.workers()
    proxy.process.kill()
    proxy.process.wait(10)
    await wait_until(
        lambda: all(process_started(pid) is None for pid in workers), timeout_s=STARTUP_S
    )


def test_a_port_held_by_someone_else_is_exit_2_before_any_worker(tmp_path: Path) -> None:
    files = write_proxy_files(
        tmp_path,
        backend="http://127.0.0.1:9",
        auth="http://127.0.0.1:9",
        auth_key="k" * 43,
        redis_port=0,
    )
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run(
            [str(BIN / "proxy"), str(port), *map(str, files), "--workers", "2"],
            capture_output=True,
            timeout=STARTUP_S,
            cwd=REPO,
        )
    assert done.returncode == 2
    assert b"listen_failed" in done.stdout
    assert b"worker_started" not in done.stdout


def test_a_worker_is_the_same_command_with_its_index() -> None:
    argv = ["6000", "msa.yaml", "rs.yaml", "config.json", "--workers", "2"]
    assert worker_argv(argv, 1)[-8:] == [*argv, "--worker", "1"]
    assert worker_argv(argv, 1)[0] == sys.executable


def test_a_crash_looping_worker_backs_off_and_one_that_served_is_forgiven() -> None:
    backoff = Backoff()
    assert [backoff.next_delay(0.1) for _ in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff.next_delay(10.0) == 0.5
