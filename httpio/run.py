"""Entry points: listeners, ``serve_tcp`` for tests, and a process's main loop.

`run_server` is what a console script calls: structlog set up for JSON lines, the trio
loop, and SIGTERM/SIGINT turned into a graceful drain (stop accepting, finish what is in
flight up to ``drain_timeout_s``, exit 0). `serve_until_signalled` is the same for a
process that builds its own handler and background tasks (the proxy).
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable, Iterable

import structlog
import trio

from httpio.errors import GatewayError
from httpio.messages import Handler, Request, Response
from httpio.protocol import h11
from httpio.server import HttpServer, ServerLimits

log = structlog.get_logger()


async def open_listeners(port: int, host: str = "127.0.0.1") -> list[trio.SocketListener]:
    listeners = await trio.open_tcp_listeners(port, host=host, backlog=4096)
    return listeners


def listener_port(listeners: list[trio.SocketListener]) -> int:
    return int(listeners[0].socket.getsockname()[1])


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


Setup = Callable[[trio.Nursery, HttpServer], Awaitable[Handler]]


async def serve_until_signalled(
    setup: Setup,
    port: int,
    *,
    name: str,
    limits: ServerLimits | None = None,
    host: str = "127.0.0.1",
    trusted_proxies: Iterable[str] = (),
    extra: Callable[[trio.Nursery, HttpServer], Awaitable[None]] | None = None,
) -> None:
    """Run a process's server: ``setup(nursery, server)`` starts background tasks (health
    checks, config reload) in ``nursery`` and returns the handler. SIGTERM/SIGINT drain."""
    limits = limits or ServerLimits()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as background:
            server = HttpServer(_not_ready, limits, name=name, trusted_proxies=trusted_proxies)
            server.handler = await setup(background, server)
            try:
                listeners = await open_listeners(port, host)
            except OSError as exc:
                log.error("listen_failed", server=name, port=port, error=str(exc))
                raise SystemExit(2) from exc
            for listener in listeners:
                listener.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            async with trio.open_nursery() as serving:
                await serving.start(server.serve_listeners, listeners)
                if extra is not None:
                    await extra(serving, server)
                log.info("listening", server=name, port=listener_port(listeners), h11=h11.__name__)
                async for signum in signals:
                    log.info("draining", server=name, signal=signal.Signals(signum).name)
                    for listener in listeners:
                        await listener.aclose()
                    await server.drain()
                    serving.cancel_scope.cancel()
                    break
            background.cancel_scope.cancel()
    log.info("stopped", server=name)


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
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(process=name)


def run_server(
    setup: Setup | Handler,
    port: int,
    *,
    name: str,
    limits: ServerLimits | None = None,
    host: str = "127.0.0.1",
) -> None:
    """Console-script entry: logging, the trio loop, drain on a signal, exit status 0.

    ``setup`` is either a plain handler or an ``async def setup(nursery, server) -> handler``.
    """
    configure_logging(name)

    async def _plain(nursery: trio.Nursery, server: HttpServer) -> Handler:
        return setup  # type: ignore[return-value]

    is_setup = len(inspect.signature(setup).parameters) == 2
    chosen: Setup = setup if is_setup else _plain  # type: ignore[assignment]
    trio.run(lambda: serve_until_signalled(chosen, port, name=name, limits=limits, host=host))
