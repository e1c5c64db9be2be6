"""``proxy PORT msa.yaml region.yaml conf.json``: one regional gateway process.

Besides its TCP port, the proxy accepts connections handed over by an ELB of its own fleet
on the same host and in the same network namespace (`httpio.handoff`: the fleet comes from
``GATEWAY_FLEET_ID``, set by the launcher), and PROXY v2 headers only from the addresses of
its own region's ELBs. A hand-off address it cannot have (taken, or an unsafe
``GATEWAY_RUNTIME_DIR``) is logged as an error; the proxy then serves TCP only.

``--workers N`` (N > 1) runs the proxy as N worker processes on the same port
(`proxy.workers`); this process is then their parent and serves nothing itself. Each worker
is this program with ``--worker K`` added, which shares the port (``SO_REUSEPORT``) and
takes hand-offs on worker K's address.

A scrape of the shared port reaches whichever worker the kernel picks, so with
``--worker-metrics-ports P0,P1,...`` (one per worker) worker K also serves ``/metrics`` on its
own port PK, and a Prometheus lists each as a target (`topology.prometheus`, label
``worker``). Separate ports rather than prometheus-client's multiprocess mode: that mode writes
every counter to a memory-mapped file per process (a cost on each request), cannot serve our
scrape-time collectors (``gateway_instance_up``, ``gateway_open_connections``'s callback) nor
each worker's process collector (RSS, fds), and leaves a dead worker's files to clean up; and
rather than the shared port gathering its siblings' metrics, which needs a channel between
workers and answers nothing when the worker that gathers is the one in trouble. One target
per worker is what Prometheus does best: each has its own ``up``, and a dead worker is seen.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import structlog
import trio

from httpio.access_log import AccessLog, Tee, open_access_log
from httpio.access_sqlite import SqliteAccessLog
from httpio.balance import ServicePool
from httpio.errors import RouteNotFound
from httpio.handoff import UnsafeRuntimeDir, handoff_address, serve_handoffs
from httpio.health_check import run_health_checks
from httpio.listen import open_listeners
from httpio.messages import Handler, Request, Response
from httpio.metrics import metrics_response
from httpio.origin import Origin
from httpio.redis_client import RedisPool
from httpio.run import configure_logging, serve_until_signalled
from httpio.server import HttpServer
from httpio.upstream import UpstreamPool
from proxy.app import ProxyApp
from proxy.filters.rate_limit import RateLimitState
from proxy.metrics import AccessSink, ProxyObserver, count_reload
from proxy.state import ProxyConfig, ProxyPaths, load_proxy_config, watch_config
from proxy.wiring import fleet_redis, new_cache, start_auth, start_cache
from proxy.workers import MAX_WORKERS, WORKER_FLAG, WorkerParent, reserve_port
from topology.load import ConfigError
from topology.schema import AccessLogSettings

log = structlog.get_logger()


def elb_addresses(config: ProxyConfig) -> set[str]:
    """Addresses our own region's ELBs connect from, for PROXY protocol trust."""
    out: set[str] = set()
    for url in config.regions.get(config.region, []):
        host = Origin(url).host
        out.update({"127.0.0.1", "::1"} if host in ("localhost", "127.0.0.1", "::1") else {host})
    return out


async def supervise_health_checks(app: ProxyApp) -> None:
    """One health-check task per service pool; follows reloads that add or drop services
    (woken by the app's reload hook rather than polling)."""
    running: dict[str, tuple[ServicePool, trio.CancelScope]] = {}
    changed = trio.Event()

    def on_reload(_: ProxyConfig) -> None:
        changed.set()

    async def check(pool: ServicePool, scope: trio.CancelScope) -> None:
        with scope:
            await run_health_checks(
                pool, app.upstream, default_interval_s=app.config.gateway.healthcheck_interval_s
            )

    app.on_reload.append(on_reload)
    async with trio.open_nursery() as nursery:
        while True:
            for name in [n for n, (pool, _) in running.items() if pool is not app.pools.get(n)]:
                running.pop(name)[1].cancel()
            for name, pool in app.pools.items():
                if name not in running:
                    running[name] = (pool, trio.CancelScope())
                    nursery.start_soon(check, *running[name])
            await changed.wait()
            changed = trio.Event()


def follow(server: HttpServer, config: ProxyConfig) -> None:
    """The original's RS_print_or_not / MSA_print_or_not (``Access_log``: `AccessSwitch`)."""
    if config.gateway.print_region_structure:
        log.info("region_structure", region=config.region, regions=config.regions)
    if config.gateway.print_service_map:
        log.info("service_map", services=config.summary()["services"])


class AccessSwitch:
    """``Access_log`` in config.json, followed across reloads: ``true`` is the original's
    "print every request", now the JSON access log's line on standard output (the process
    log), unless ``--access-log`` names a file, which then takes the lines whatever the
    config says; ``{sqlite: PATH}`` adds the database (opened at start). One observer reads
    its ``access_log`` after every answer, so switching is one assignment; with nothing to
    log and ``--metrics off`` the server has no observer at all (what that flag measures)."""

    def __init__(
        self,
        server: HttpServer,
        observer: ProxyObserver,
        sinks: list[AccessSink],
        stdout: AccessLog,
        *,
        has_file: bool,
    ) -> None:
        self.server = server
        self.observer = observer
        self.sinks = sinks  # --access-log PATH and the SQLite database: always on
        self.stdout = stdout
        self.has_file = has_file

    def follow(self, config: ProxyConfig) -> None:
        sinks = list(self.sinks)
        if config.gateway.access_log is True and not self.has_file:
            sinks.append(self.stdout)  # a file named by --access-log has every line already
        observer = self.observer
        observer.access_log = sinks[0] if len(sinks) == 1 else Tee(*sinks) if sinks else None
        needed = observer.metrics or observer.access_log is not None
        self.server.observer = observer if needed else None
        self.server.on_dropped = observer.dropped if observer.access_log is not None else None


async def start_proxy(
    config: ProxyConfig,
    paths: ProxyPaths,
    name: str,
    nursery: trio.Nursery,
    server: HttpServer,
    access_log: AccessLog | None = None,
    metrics: bool = True,
    worker: tuple[int, int] | None = None,
) -> Handler:
    """The auth layer, the cache and the app, then the config watch and the health checks,
    all in ``nursery``; the handler the server is to call. The metrics and the access log
    (when one is open: flushed every second, reopened on SIGHUP) see every answer."""
    upstream = UpstreamPool(config.gateway.upstream)
    auth = await start_auth(config, upstream, nursery, proxy=name)
    cache = await start_cache(config, nursery)
    limits = RateLimitState(redis=RedisPool(fleet_redis(config)))
    app = ProxyApp(config, upstream, name=name, auth=auth, cache=cache, rate_limits=limits)
    app.worker = worker

    def apply(config: ProxyConfig) -> None:
        """A reload: the rate limits and the cache follow a moved Redis before the chains
        are rebuilt; the pools they no longer use are closed. ``Cache_or_not`` switched on
        starts the cache (its first lookups find the memory tier empty and Redis warm);
        switched off, the chains stop using it and it stays ready for the next switch."""
        redis = fleet_redis(config)
        unused = [limits.follow_redis(redis)]
        if app.cache is not None:
            unused.append(app.cache.follow_redis(redis))
        elif config.gateway.cache_enabled:
            app.cache = new_cache(config)
            nursery.start_soon(app.cache.run)
            log.info("cache_started", proxy=name)
        app.apply(config)
        for pool in unused:
            if pool is not None:
                nursery.start_soon(pool.aclose)

    follow(server, app.config)
    app.on_reload.append(partial(follow, server))
    sqlite = config.gateway.access_log
    database = None
    if isinstance(sqlite, AccessLogSettings):
        database = SqliteAccessLog(paths.config.parent / sqlite.sqlite)
        await nursery.start(database.run)
    sinks: list[AccessSink] = [s for s in (access_log, database) if s is not None]
    observer = ProxyObserver(app, None, metrics=metrics)
    stdout = AccessLog("-")
    switch = AccessSwitch(server, observer, sinks, stdout, has_file=access_log is not None)
    switch.follow(app.config)
    app.on_reload.append(switch.follow)
    count_reload(ok=True)
    if access_log is not None:
        await nursery.start(access_log.run)
    await nursery.start(stdout.run)
    await nursery.start(
        watch_config, paths, apply, lambda: app.config.gateway.config_check_interval_s
    )
    nursery.start_soon(supervise_health_checks, app)
    nursery.start_soon(drain_websockets, server, app)
    await nursery.start(app.websockets.clock.run)
    await nursery.start(app.websockets.readiness.run)
    return app.handle


async def drain_websockets(server: HttpServer, app: ProxyApp) -> None:
    """On SIGTERM, open WebSockets get their ``drain_s``, then a 1001 (`proxy.ws_sessions`)."""
    await server.drain_started.wait()
    app.websockets.shutting_down(server.limits.drain_timeout_s)


async def accept_handoffs(
    port: int, nursery: trio.Nursery, server: HttpServer, worker: int | None = None
) -> None:
    """Connections handed over by an ELB of this fleet on this host, besides the TCP port
    (on worker ``worker``'s own address when this is one of ``--workers N``)."""
    try:
        address = handoff_address(port, worker)
    except (UnsafeRuntimeDir, ValueError) as exc:
        log.error("handoff_disabled", error=str(exc))
        return
    if address is not None:
        await nursery.start(serve_handoffs, server, address)


async def worker_metrics(request: Request) -> Response:
    """A worker's own metrics port: ``/metrics`` (local direct only), nothing else."""
    if request.path == "/metrics":
        return metrics_response(request)
    raise RouteNotFound("this port serves /metrics only")


async def serve_worker_metrics(host: str, port: int, nursery: trio.Nursery, name: str) -> None:
    """Worker ``name``'s ``/metrics`` on ``port`` of ``host``. A port it cannot have is
    logged as an error: the worker serves its traffic anyway, and its target shows down."""
    try:
        listeners = await open_listeners(port, host)
    except OSError as exc:
        log.error("worker_metrics_disabled", server=name, port=port, error=str(exc))
        return
    server = HttpServer(worker_metrics, name=f"{name}-metrics")
    await nursery.start(server.serve_listeners, listeners)
    log.info("worker_metrics_listening", server=name, port=port)


async def start_extras(
    port: int,
    worker: int | None,
    metrics_port: int | None,
    host: str,
    name: str,
    nursery: trio.Nursery,
    server: HttpServer,
) -> None:
    """After the port is open: the hand-offs, and a worker's own metrics port if it has one."""
    await accept_handoffs(port, nursery, server, worker)
    if metrics_port is not None:
        await serve_worker_metrics(host, metrics_port, nursery, name)


def parse_ports(text: str) -> list[int]:
    """``"9100,9101"`` -> [9100, 9101]; ValueError on anything else."""
    ports = [int(p) for p in text.split(",")]
    if not all(0 < p < 65536 for p in ports):
        raise ValueError(f"not ports: {text!r}")
    return ports


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="proxy", description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("msa", type=Path, help="service map (msa*.yaml)")
    parser.add_argument("region", type=Path, help="region structure (rs_*.yaml)")
    parser.add_argument("config", type=Path, help="config.json")
    parser.add_argument("--name", default=None)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument(
        "--access-log",
        default="off",
        metavar="PATH|-|off",
        help="one JSON line per request to PATH (- for standard output); default off, or "
        'standard output while config.json says "Access_log": true',
    )
    parser.add_argument(
        "--metrics",
        choices=("on", "off"),
        default="on",
        help="count requests for /metrics (off: only for measuring what counting costs)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help=f"serve the port with N processes (1-{MAX_WORKERS}; default 1: this one)",
    )
    parser.add_argument(
        "--worker-metrics-ports",
        type=parse_ports,
        default=None,
        metavar="P0,P1,...",
        help="with --workers N: worker K serves /metrics on its own port PK (N ports)",
    )
    parser.add_argument(WORKER_FLAG, type=int, default=None, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    if not 1 <= args.workers <= MAX_WORKERS:
        parser.error(f"--workers must be 1-{MAX_WORKERS}, not {args.workers}")
    if args.workers > 1 and args.port == 0:
        parser.error("--workers needs a fixed port, not 0")
    metrics_ports = args.worker_metrics_ports
    if metrics_ports is not None and (args.workers == 1 or len(metrics_ports) != args.workers):
        parser.error("--worker-metrics-ports needs --workers N and N ports")
    paths = ProxyPaths(args.msa, args.region, args.config)
    try:
        config = load_proxy_config(paths)
    except ConfigError as err:
        print(f"proxy: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    name = args.name or f"proxy-{config.region}-{args.port}"
    configure_logging(name)
    if args.workers > 1 and args.worker is None:
        run_parent(argv, args.workers, args.host, args.port, name, config)
        return
    worker = None if args.worker is None else (args.worker, args.workers)
    metrics_port = None
    if worker is not None:
        structlog.contextvars.bind_contextvars(worker=args.worker)
        if metrics_ports is not None and args.worker < len(metrics_ports):
            metrics_port = metrics_ports[args.worker]
    access_log = open_access_log(args.access_log)
    trio.run(
        lambda: serve_until_signalled(
            partial(
                start_proxy,
                config,
                paths,
                name,
                access_log=access_log,
                metrics=args.metrics == "on",
                worker=worker,
            ),
            args.port,
            name=name,
            limits=config.gateway.server,
            host=args.host,
            trusted_proxies=elb_addresses(config),
            extra=partial(start_extras, args.port, args.worker, metrics_port, args.host, name),
            reuse_port=worker is not None,
        )
    )


def run_parent(
    argv: list[str], count: int, host: str, port: int, name: str, config: ProxyConfig
) -> None:
    """Be the parent of ``count`` workers (`proxy.workers`) until a signal drains them."""
    try:
        held = reserve_port(host, port)
    except OSError as exc:
        log.error("listen_failed", server=name, port=port, error=str(exc))
        raise SystemExit(2) from exc
    parent = WorkerParent(
        argv, count, name=name, drain_timeout_s=config.gateway.server.drain_timeout_s
    )
    try:
        trio.run(parent.run)
    finally:
        for sock in held:
            sock.close()
