"""Prometheus metrics every process shares: the text exposition, and the server loop's series.

Built on ``prometheus-client`` (its text format, its registry and its process collector: RSS,
open fds, CPU seconds). Every process serves ``GET /metrics`` on a local direct connection only
(`Request.local_direct`, the rule of ``/admin/*``; through an ELB it is a 404), so a scraper
on this host sees it and a client behind the ELB does not.

Label values stay bounded: a method is one of the seven the server loop serves, a status code
one of a few dozen, a service one the config names (anything else is ``other``); a path is
never a label. Each process declares its own series in its own package (`proxy.metrics`,
`elb.metrics`, ...); what is here is what every HTTP server has.

Buckets (seconds) run from 1 ms to 10 s, roughly three per decade: a cached answer is ~1 ms on
this hardware, a slow upstream is cut at the per-try timeout (2 s) and the longest wait a
request can have is ``response_timeout_s`` (5 s by default).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from httpio.errors import RouteNotFound
from httpio.messages import Request, Response

if TYPE_CHECKING:
    from httpio.server import HttpServer

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

OPEN_CONNECTIONS = Gauge("gateway_open_connections", "Client connections this process holds open")
SERVER_REQUESTS = Counter(
    "http_server_requests_total", "Requests this process answered", ["method", "code"]
)
SERVER_DURATION = Histogram(
    "http_server_request_duration_seconds",
    "From the request head to the response sent",
    buckets=LATENCY_BUCKETS,
)


def metrics_response(request: Request, registry: CollectorRegistry = REGISTRY) -> Response:
    """``GET /metrics``: the registry's text, to a local direct connection only."""
    if not request.local_direct or request.header(b"via") or request.header(b"x-forwarded-for"):
        # A proxy's connection to an auth server or a backend is local and direct too: what it
        # forwards carries Via and X-Forwarded-For (always set by `proxy.forwarding`), so
        # ``/auth/metrics`` through an ELB is refused like ``/metrics``.
        raise RouteNotFound(f"no service {request.path.split('/')[1]!r}")
    return Response(
        200, [(b"content-type", CONTENT_TYPE_LATEST.encode())], generate_latest(registry)
    )


class DroppedConnections(Collector):
    """``gateway_connections_dropped_total{reason}``: connections closed before any request,
    silent until the head timeout (``no_request``) or with a bad PROXY header
    (``bad_proxy_header``), read from the tracked server at scrape time."""

    def __init__(self) -> None:
        self.server: HttpServer | None = None

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(
            "gateway_connections_dropped",
            "Connections closed before any request, by reason (no_request, bad_proxy_header)",
            labels=["reason"],
        )
        if self.server is not None:
            for reason, count in self.server.dropped_connections.items():
                family.add_metric([reason], count)
        yield family


DROPPED_CONNECTIONS = DroppedConnections()
REGISTRY.register(DROPPED_CONNECTIONS)


def track_open_connections(server: HttpServer) -> None:
    """``gateway_open_connections`` and ``gateway_connections_dropped_total`` read ``server``
    at scrape time (no cost per request)."""
    OPEN_CONNECTIONS.set_function(lambda: server.open_connections)
    DROPPED_CONNECTIONS.server = server


class ServerObserver:
    """The server loop's per-request series for a process with no richer ones (auth server,
    backends): requests by method and code, and their duration. One label child per
    (method, code), looked up once."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, int], Counter] = {}

    def __call__(self, request: Request, response: Response, started: float, sent: int) -> None:
        import time

        key = (request.method, response.status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = SERVER_REQUESTS.labels(key[0], str(key[1]))
        child.inc()
        if response.status != 101:  # a switched connection's life is no request latency
            SERVER_DURATION.observe(time.monotonic() - started)


def observe_server(server: HttpServer) -> None:
    """Give ``server`` the generic series (unless it has an observer of its own)."""
    track_open_connections(server)
    if server.observer is None:
        server.observer = ServerObserver()
