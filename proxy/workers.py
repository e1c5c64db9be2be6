"""``proxy --workers N``: one proxy on N processes, so that it uses the cores a machine has.

A proxy is one trio loop on one thread; CPython runs it on one core. N workers, each a whole
proxy (its own upstream pools, health checks, cache client, rate-limit state, config watch),
listen on the same port with ``SO_REUSEPORT`` (socket(7)), and the kernel spreads new
connections over them by a hash of the connection's addresses. That is how nginx
(``reuseport``), HAProxy (``nbproc``) and Envoy spread listeners, and unlike one socket
accepted by N processes it does not wake every worker for each connection nor favour the
busiest. The relay from an ELB (PROXY v2) is such a TCP connection and spreads the same
way; the ELB's hand-off has one address per worker (`httpio.handoff`: ``-wK``), which the
ELB links to and balances by open connections (`elb.main`). What must be counted over the
whole fleet (rate limits, the shared cache) is in Redis already; what each worker keeps for
itself (health state, breakers, the in-memory cache tier, ``/admin/*``, ``/metrics``) is
per worker, as it is per proxy: a scrape of the shared port sees the worker it landed on,
named by ``gateway_worker_info`` (`proxy.metrics`) and ``process`` in ``/admin/backends``.

This module is the parent: it starts the workers (``proxy ... --worker K``), restarts one
that exits with `httpio.lifeline.Backoff` (0.5 s doubling to 30 s, forgiven after 10 s up),
passes SIGHUP on to every worker (each reopens its access log; each also watches its
config files as a single proxy does), and turns SIGTERM or SIGINT into SIGTERM to every
worker, each of which drains as a single proxy does; a worker that outlives its drain
deadline by ``WORKER_KILL_GRACE_S`` (`httpio.lifeline`) is killed. Workers are started with `httpio.lifeline`, so a
SIGKILLed parent takes its workers with it (the kernel's ``PR_SET_PDEATHSIG``).

Before the first worker starts, the parent binds the port itself with ``SO_REUSEPORT`` and
never listens on it: a port held by someone else fails at once (exit 2) instead of as N
crash-looping workers, and while every worker is down (all restarting) no process of
another user can take the port, since ``SO_REUSEPORT`` shares a port only within one uid.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Sequence

import structlog
import trio

from httpio.lifeline import WORKER_KILL_GRACE_S, Backoff, ChildProcess, start_child

log = structlog.get_logger()

MAX_WORKERS = 64  # as topology.schema's bound and the ELB's search (elb.main.MAX_WORKERS)
WORKER_FLAG = "--worker"
_WORKER_MAIN = "import sys; from proxy.main import main; main(sys.argv[1:])"


def worker_argv(argv: Sequence[str], index: int) -> list[str]:
    """The command line of worker ``index``: this process's own arguments plus
    ``--worker index`` (``--workers N`` is kept; the worker reports it)."""
    return [sys.executable, "-c", _WORKER_MAIN, *argv, WORKER_FLAG, str(index)]


def reserve_port(host: str, port: int) -> list[socket.socket]:
    """Bind ``port`` of ``host`` with ``SO_REUSEPORT`` (without listening), one socket per
    address ``host`` resolves to; OSError if someone else holds it."""
    held: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            sock = socket.socket(family, kind, proto)
            held.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except BaseException:
        for sock in held:
            sock.close()
        raise
    return held


class Worker:
    """One worker's process and its restart history."""

    def __init__(self, index: int, argv: list[str]) -> None:
        self.index = index
        self.argv = argv
        self.backoff = Backoff()
        self.process: ChildProcess | None = None
        self.started_at = 0.0
        self.restarts = 0

    def __repr__(self) -> str:
        pid = self.process.pid if self.process is not None else None
        return f"<Worker {self.index} pid={pid} restarts={self.restarts} {self.backoff!r}>"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def send_signal(self, signum: int) -> None:
        if self.running:
            assert self.process is not None
            self.process.send_signal(signum)


class WorkerParent:
    """The parent of ``proxy --workers N``: `run` until SIGTERM/SIGINT has drained them."""

    def __init__(
        self, argv: Sequence[str], count: int, *, name: str, drain_timeout_s: float
    ) -> None:
        self.name = name
        self.workers = [Worker(k, worker_argv(argv, k)) for k in range(count)]
        self.drain_timeout_s = drain_timeout_s
        self.stopping = False

    def __repr__(self) -> str:
        return f"<WorkerParent {self.name} workers={self.workers}>"

    async def run(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async with trio.open_nursery() as nursery:
                for worker in self.workers:
                    nursery.start_soon(self._keep_running, worker)
                log.info("workers_started", server=self.name, workers=len(self.workers))
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        for worker in self.workers:
                            worker.send_signal(signal.SIGHUP)
                        continue
                    log.info("draining", server=self.name, signal=signal.Signals(signum).name)
                    await self._stop_all()
                    nursery.cancel_scope.cancel()
                    break
        log.info("stopped", server=self.name)

    async def _keep_running(self, worker: Worker) -> None:
        """Start ``worker``, and again after each exit (after its back-off) until stopping."""
        while not self.stopping:
            try:
                worker.process = start_child(
                    worker.argv, output=sys.stdout.fileno(), env=os.environ
                )
            except OSError as exc:
                log.error(
                    "worker_start_failed", server=self.name, worker=worker.index, error=str(exc)
                )
                await trio.sleep(worker.backoff.next_delay(0.0))
                continue
            worker.started_at = time.monotonic()
            log.info(
                "worker_started", server=self.name, worker=worker.index, pid=worker.process.pid
            )
            code = await worker.process.wait()
            if self.stopping:
                return
            uptime = time.monotonic() - worker.started_at
            delay = worker.backoff.next_delay(uptime)
            worker.restarts += 1
            log.warning(
                "worker_exited",
                server=self.name,
                worker=worker.index,
                code=code,
                uptime_s=round(uptime, 3),
                restart_in_s=delay,
            )
            await trio.sleep(delay)

    async def _stop_all(self) -> None:
        """SIGTERM to every worker, SIGKILL to those still running ``WORKER_KILL_GRACE_S`` after
        their own drain deadline."""
        self.stopping = True
        for worker in self.workers:
            worker.send_signal(signal.SIGTERM)
        with trio.move_on_after(self.drain_timeout_s + WORKER_KILL_GRACE_S):
            for worker in self.workers:
                if worker.process is not None:
                    await worker.process.wait()
        for worker in self.workers:
            if worker.process is None:
                continue
            if worker.running:
                log.error("worker_killed", server=self.name, worker=worker.index)
                worker.send_signal(signal.SIGKILL)
            code = await worker.process.wait()
            log.info("worker_stopped", server=self.name, worker=worker.index, code=code)
