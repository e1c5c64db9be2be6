"""A process's main loop: logging, the trio loop, and SIGTERM/SIGINT turned into a drain.

`run_until_signalled` is the one signal loop every process has (the HTTP servers and the
ELB): ``start(nursery)`` brings the process up, the first SIGTERM or SIGINT calls
``drain()`` (stop accepting, let what is in flight finish, up to the process's own drain
deadline), and then everything left is cancelled and the process exits 0.
`serve_until_signalled` is that loop for an `HttpServer` whose ``setup(nursery, server)``
starts background tasks (health checks, config reload) and returns the handler;
`run_server` is what a console script calls, with a setup (`serving` makes one of a plain
handler). `serve_tcp` serves a handler on a port for tests.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal
from collections.abc import Awaitable, Callable, Iterable

import structlog
import trio

from httpio import accel
from httpio.errors import GatewayError
from httpio.listen import listener_port, open_listeners
from httpio.messages import Handler, Request, Response
from httpio.metrics import observe_server
from httpio.protocol import h11
from httpio.server import HttpServer
from httpio.settings import ServerLimits

log = structlog.get_logger()

Setup = Callable[[trio.Nursery, HttpServer], Awaitable[Handler]]


def serving(handler: Handler) -> Setup:
    """The setup of a process that needs nothing but its handler (a backend)."""

    async def setup(nursery: trio.Nursery, server: HttpServer) -> Handler:
        return handler

    return setup


async def serve_tcp(
    handler: Handler,
    port: int,
    *,
    host: str = "127.0.0.1",
    limits: ServerLimits | None = None,
    name: str = "server",
    trusted_proxies: Iterable[str] = (),
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port (useful with ``port=0``)."""
    server = HttpServer(handler, limits, name=name, trusted_proxies=trusted_proxies)
    listeners = await open_listeners(port, host)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, listeners)
        task_status.started(listener_port(listeners))


NR_OPEN_CAP = 1 << 20  # when the hard limit is "unlimited": Linux's default fs.nr_open


def raise_open_files_limit() -> tuple[int, int]:
    """RLIMIT_NOFILE's soft limit up to its hard limit, as nginx (``worker_rlimit_nofile``) and
    HAProxy do at start: a shell's default soft limit is 1024, and a proxy holding WebSockets
    uses two descriptors for each (10,000 idle ones need 20,000). The limits after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NR_OPEN_CAP if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass  # left as it was: the process still runs, with fewer connections
    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    return limits[0], limits[1]


async def run_until_signalled(
    name: str,
    start: Callable[[trio.Nursery], Awaitable[None]],
    drain: Callable[[], Awaitable[None]],
) -> None:
    """``start(nursery)``, then wait for SIGTERM/SIGINT; on the first, ``drain()`` and cancel
    whatever still runs in ``nursery``. The open files limit is raised first."""
    soft, hard = raise_open_files_limit()
    log.debug("open_files_limit", server=name, soft=soft, hard=hard)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            await start(nursery)
            # What start-up built (modules, config, pools) lives as long as the process: out
            # of the cyclic collector's sight, a full collection under load walks only what
            # requests allocate (CPython's advice for gc.freeze; the GC was 4 % of a proxy's
            # CPU per request, issue 14).
            gc.freeze()
            async for signum in signals:
                log.info("draining", server=name, signal=signal.Signals(signum).name)
                await drain()
                nursery.cancel_scope.cancel()
                break
    log.info("stopped", server=name)


async def serve_until_signalled(
    setup: Setup,
    port: int,
    *,
    name: str,
    limits: ServerLimits | None = None,
    host: str = "127.0.0.1",
    trusted_proxies: Iterable[str] = (),
    extra: Callable[[trio.Nursery, HttpServer], Awaitable[None]] | None = None,
    reuse_port: bool = False,
) -> None:
    """Run a process's `HttpServer` until a signal drains it. ``setup`` runs before the port
    is opened (a server that listens answers at once); ``extra`` after (the proxy's hand-off
    socket). ``reuse_port``: share the port with the other workers of one proxy."""
    server = HttpServer(
        _not_ready, limits or ServerLimits(), name=name, trusted_proxies=trusted_proxies
    )

    async def start(nursery: trio.Nursery) -> None:
        server.handler = await setup(nursery, server)
        observe_server(server)  # /metrics' server series (the proxy brings its own observer)
        try:
            listeners = await open_listeners(port, host, reuse_port=reuse_port)
        except OSError as exc:
            log.error("listen_failed", server=name, port=port, error=str(exc))
            raise SystemExit(2) from exc
        await nursery.start(server.serve_listeners, listeners)
        if extra is not None:
            await extra(nursery, server)
        log.info(
            "listening",
            server=name,
            port=listener_port(listeners),
            h11=h11.__name__,
            accel=accel.STATE,
        )

    await run_until_signalled(name, start, server.drain)


async def _not_ready(request: Request) -> Response:
    raise GatewayError("server is starting")


def configure_logging(name: str) -> None:
    level = logging.DEBUG if os.environ.get("GATEWAY_DEBUG") else logging.INFO
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(level),
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,  # exc_info -> the traceback as text
            structlog.processors.JSONRenderer(),
        ],
        # One write per line, its newline included: print() writes the newline apart, and
        # with PYTHONUNBUFFERED (common in containers) the workers of ``proxy --workers N``
        # sharing one stdout then interleaved lines ("{...}{...}\n\n").
        logger_factory=structlog.WriteLoggerFactory(),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(process=name)


def run_server(
    setup: Setup,
    port: int,
    *,
    name: str,
    limits: ServerLimits | None = None,
    host: str = "127.0.0.1",
) -> None:
    """Console-script entry: logging, the trio loop, drain on a signal, exit status 0."""
    configure_logging(name)
    trio.run(lambda: serve_until_signalled(setup, port, name=name, limits=limits, host=host))
