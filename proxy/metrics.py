"""The proxy's Prometheus series, and the observer that moves them with every answer.

What moves per request is counted once, after the response went out (`ProxyObserver`, the
server loop's observer): one label child per (service, method, code) looked up in a dict of
our own, so a request costs a dict lookup and two ``inc``/``observe`` calls, not a
``labels()`` call each. What describes state (instances up, the Redis breaker) is read from
the proxy at scrape time by `ProxyCollector` and costs nothing per request.

``gateway_upstream_attempts_total`` counts tries, not requests: each try that got no answer
against its own instance (``RequestNote.failed_tries``), and the one that got an answer as
``ok`` or ``5xx``. A request the server loop refused before any handler is counted like any
other (service ``-``) and logged within `REFUSAL_LINES_PER_S`. So is a connection that ended
before any request (`ProxyObserver.dropped`: silent until the head timeout, or a bad PROXY
header): its line has status 0, as Envoy logs a connection answered nothing, its reason as
``error``, and a new request id; ``gateway_connections_dropped_total`` counts it (`httpio.metrics`).

A WebSocket handshake answered 101 is shown once, when its session ends (`httpio.server`): it
counts under code ``101`` and its line has the session's duration and bytes, but it stays out
of ``gateway_request_duration_seconds``, whose p99 an hour-long session would make meaningless.

Label values are bounded: ``service`` is a service the config names, ``other`` else (a path
is never a label; a request for another region counts under ``region:<code>``, one per
configured region); ``code`` is the status; ``method`` one of the seven the server serves.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from httpio.access_log import AccessLine, RequestNote, now_rfc3339, redact_target
from httpio.messages import Request, Response
from httpio.metrics import LATENCY_BUCKETS
from httpio.trace import new_request_id

if TYPE_CHECKING:
    from proxy.app import ProxyApp

log = structlog.get_logger()

REQUESTS = Counter(
    "gateway_requests", "Requests a proxy answered", ["region", "service", "method", "code"]
)
DURATION = Histogram(
    "gateway_request_duration_seconds",
    "From a request's head to its response sent",
    ["service"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_DURATION = Histogram(
    "gateway_upstream_duration_seconds",
    "From the first try to the upstream's response head",
    ["service"],
    buckets=LATENCY_BUCKETS,
)
UPSTREAM_ATTEMPTS = Counter(
    "gateway_upstream_attempts",
    "Tries sent upstream, by instance and how each ended (ok, 5xx, connect_error, "
    "connect_timeout, reset, timeout)",
    ["service", "instance", "outcome"],
)
CACHE_REQUESTS = Counter(
    "gateway_cache_requests", "Cache look-ups by their result", ["service", "result"]
)
AUTH_VERDICTS = Counter("gateway_auth_verdicts", "Token checks by their verdict", ["result"])
CONFIG_RELOADS = Counter("gateway_config_reloads", "Config reloads by their result", ["result"])
LAST_RELOAD = Gauge(
    "gateway_config_last_reload_success_timestamp_seconds",
    "When the running config was applied (Unix time)",
)

_CACHE_RESULTS = {b"HIT": "HIT", b"MISS": "MISS", b"BYPASS": "BYPASS", b"STALE": "STALE"}
_AUTH_RESULT = {401: "unauthorized", 403: "forbidden", 503: "unavailable"}


def count_reload(ok: bool) -> None:
    CONFIG_RELOADS.labels("success" if ok else "failure").inc()
    if ok:
        LAST_RELOAD.set_to_current_time()


class ProxyCollector(Collector):
    """State read at scrape time: ``gateway_instance_up``, ``gateway_redis_breaker_open``,
    ``gateway_ratelimit_decisions_total`` (plain counts the limits keep), and for a worker of
    ``proxy --workers N`` ``gateway_worker_info``."""

    def __init__(self, app: Callable[[], ProxyApp | None]) -> None:
        self._app = app

    def collect(self) -> Iterator[Metric]:
        app = self._app()
        if app is None:
            return
        up = GaugeMetricFamily(
            "gateway_instance_up",
            "1 while an instance takes requests (not ejected)",
            labels=["service", "instance"],
        )
        for name, pool in app.pools.items():
            for url, row in pool.health.statistics().items():
                up.add_metric([name, url], 0.0 if row["state"] == "ejected" else 1.0)
        yield up
        breaker = GaugeMetricFamily(
            "gateway_redis_breaker_open", "1 while the cache keeps off Redis"
        )
        store = app.cache.store if app.cache is not None else None
        breaker.add_metric(
            [], 1.0 if store is not None and store.breaker.state.value == "open" else 0.0
        )
        yield breaker
        decisions = CounterMetricFamily(
            "gateway_ratelimit_decisions",
            "Rate-limit decisions (issue 11's filters count here)",
            labels=["service", "key", "decision"],
        )
        for (service, key), (allowed, denied) in app.rate_limits.decisions.items():
            decisions.add_metric([service, key, "allow"], allowed)
            decisions.add_metric([service, key, "deny"], denied)
        yield decisions
        if app.worker is not None:
            # with ``--workers N`` a scrape of the shared port reaches one worker, this one
            info = GaugeMetricFamily(
                "gateway_worker_info",
                "1: these series are this worker's (proxy --workers N)",
                labels=["worker", "workers", "pid"],
            )
            info.add_metric([str(app.worker[0]), str(app.worker[1]), str(os.getpid())], 1.0)
            yield info


_current: list[ProxyApp] = []


def _current_app() -> ProxyApp | None:
    return _current[-1] if _current else None


REGISTRY.register(ProxyCollector(_current_app))


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    for n, v in headers:
        if n == name:
            return v
    return None


class AccessSink(Protocol):
    """Where access-log lines go (`httpio.access_log.AccessLog`, the SQLite sink, or both)."""

    def write(self, line: AccessLine) -> None: ...


# Lines a second for requests the server loop refused before any handler (a malformed head,
# a head too large or too slow, the connection cap): a flood of garbage is counted in full by
# the metrics, but writes no more than this to the log (the rest are counted and said once a
# second, ``refusal_lines_dropped``).
REFUSAL_LINES_PER_S = 100


class ProxyObserver:
    """After each answer: the metrics, and the access-log line when a log is open."""

    def __init__(
        self,
        app: ProxyApp,
        access_log: AccessSink | None,
        *,
        metrics: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self._clock = clock
        self.access_log = access_log
        self.metrics = metrics
        self._requests: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._others: dict[tuple[object, ...], Any] = {}
        self._refusal_second = 0
        self._refusal_lines = 0
        self.refusal_lines_dropped = 0
        _current.append(app)
        del _current[:-1]

    def __call__(self, request: Request, response: Response, started: float, sent: int) -> None:
        now = self._clock()
        note = request.note
        if note is None:
            note = _NO_NOTE
        duration = now - started
        if not self.metrics:
            if note.refused:
                self._write_refusal(request, response, note, duration, sent, now)
                return
            if self.access_log is not None and request.path not in _UNLOGGED:
                cache = _cache_result(response) if note.service != "-" else "-"
                self.access_log.write(line_of(request, response, note, duration, sent, cache))
            return
        service = note.service if note.region != "-" else "-"
        key = (service, request.method, response.status)
        children = self._requests.get(key)
        if children is None:
            children = self._children(key)
        children[0].inc()
        if response.status != 101:  # a WebSocket's session is no request latency
            children[1].observe(duration)
        if note.refused:
            self._write_refusal(request, response, note, duration, sent, now)
            return
        cache = "-"
        if note.service != "-":
            label = self._label(note.service)
            cache = _cache_result(response)
            if cache != "-":
                self._child(CACHE_REQUESTS, label, cache).inc()
            if note.upstream_ms is not None:
                self._child(UPSTREAM_DURATION, label).observe(note.upstream_ms / 1000)
            for instance, outcome in note.failed_tries:  # each try that got no answer
                self._child(UPSTREAM_ATTEMPTS, label, instance, outcome).inc()
            if note.upstream_ms is not None:  # and the one that did
                outcome = "ok" if response.status < 500 else "5xx"
                self._child(UPSTREAM_ATTEMPTS, label, note.upstream, outcome).inc()
            if note.user != "-":
                self._child(AUTH_VERDICTS, "valid").inc()
            elif response.status in _AUTH_RESULT and note.error in (
                "unauthorized",
                "forbidden",
                "dependency_unavailable",
            ):
                self._child(AUTH_VERDICTS, _AUTH_RESULT[response.status]).inc()
        if self.access_log is not None and request.path not in _UNLOGGED:
            self.access_log.write(line_of(request, response, note, duration, sent, cache))

    def _write_refusal(
        self,
        request: Request,
        response: Response,
        note: RequestNote,
        duration: float,
        sent: int,
        now: float,
    ) -> None:
        """The line of a request refused before the handler, within `REFUSAL_LINES_PER_S`."""
        if self.access_log is not None and self._refusal_line_allowed(now):
            self.access_log.write(line_of(request, response, note, duration, sent, "-"))

    def dropped(self, reason: str, peer: tuple[str, int], via_elb: bool, started: float) -> None:
        """The line of a connection that ended before any request (`httpio.server`'s
        ``on_dropped``), within the refusals' `REFUSAL_LINES_PER_S`."""
        now = self._clock()
        if self.access_log is None or not self._refusal_line_allowed(now):
            return
        self.access_log.write(dropped_line_of(reason, peer[0], now - started))

    def _refusal_line_allowed(self, now: float) -> bool:
        second = int(now)
        if second != self._refusal_second:
            if self.refusal_lines_dropped:
                log.warning("refusal_lines_dropped", lines=self.refusal_lines_dropped)
            self._refusal_second, self._refusal_lines, self.refusal_lines_dropped = second, 0, 0
        if self._refusal_lines >= REFUSAL_LINES_PER_S:
            self.refusal_lines_dropped += 1
            return False
        self._refusal_lines += 1
        return True

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once: ``labels()`` costs a lock and a tuple
        build per call, a dict lookup is a fraction of that."""
        key = (id(metric), *labels)
        child = self._others.get(key)
        if child is None:
            child = metric.labels(*labels)
            if len(self._others) < 4096:
                self._others[key] = child
        return child

    def _label(self, service: str) -> str:
        if service in self.app.pools or service.startswith("region:"):
            return service
        return "other"

    def _children(self, key: tuple[str, str, int]) -> tuple[Counter, Histogram]:
        service = self._label(key[0]) if key[0] != "-" else "-"
        region = self.app.config.region
        children = (
            REQUESTS.labels(region, service, key[1], str(key[2])),
            DURATION.labels(service),
        )
        if len(self._requests) < 4096:  # bounded even if a label set were not
            self._requests[key] = children
        return children


def _cache_result(response: Response) -> str:
    x_cache = header(response.headers, b"x-cache")
    return "-" if x_cache is None else _CACHE_RESULTS.get(x_cache, "-")


_NO_NOTE = RequestNote()
# The ELB's probes (two a second per proxy) and scrapes would drown the requests.
_UNLOGGED = frozenset({"/health", "/metrics"})


def line_of(
    request: Request,
    response: Response,
    note: RequestNote,
    duration_s: float,
    sent: int,
    cache: str,
) -> AccessLine:
    request_id = note.request_id
    if request_id == "-":
        sent_id = header(response.headers, b"x-request-id")
        request_id = sent_id.decode("latin-1") if sent_id is not None else "-"
    length = request.body.length
    user_agent = request.header(b"user-agent")
    return AccessLine(
        time=now_rfc3339(),
        request_id=request_id,
        trace_id=note.trace_id,
        client_ip=request.client[0],
        method=request.method,
        path=redact_target(request.target),
        status=response.status,
        bytes_in=length if length is not None else 0,
        bytes_out=sent,
        duration_ms=round(duration_s * 1000, 3),
        upstream_ms=note.upstream_ms,
        service=note.service,
        region=note.region,
        route=note.route,
        upstream=note.upstream,
        retries=note.retries,
        cache=cache,
        user=note.user,
        rate_limited=note.rate_limited,
        error=note.error,
        user_agent=user_agent.decode("latin-1") if user_agent is not None else "-",
    )


def dropped_line_of(reason: str, client_ip: str, duration_s: float) -> AccessLine:
    """The line of a connection that ended before any request: status 0 (nothing was
    answered), ``reason`` as its error."""
    return AccessLine(
        time=now_rfc3339(),
        request_id=new_request_id().decode(),
        trace_id="-",
        client_ip=client_ip,
        method="-",
        path="-",
        status=0,
        bytes_in=0,
        bytes_out=0,
        duration_ms=round(duration_s * 1000, 3),
        upstream_ms=None,
        service="-",
        region="-",
        route="-",
        upstream="-",
        retries=0,
        cache="-",
        user="-",
        rate_limited=False,
        error=reason,
        user_agent="-",
    )
