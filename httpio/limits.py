"""Per-service concurrency limits: refuse at once with 503 + Retry-After rather than queue.

A service that is slow makes requests pile up in the gateway; past some point each queued
request only adds latency and memory, and the client would do better to retry elsewhere or
later. Like Envoy's circuit-breaker thresholds (``max_requests``, ``max_pending_requests``)
and HAProxy's ``maxconn``/``maxqueue``, each service has two counters: requests in flight to it,
and requests waiting for an upstream connection. When a counter is full the proxy answers
``503 overloaded`` with ``Retry-After: 1`` immediately (RFC 9110 15.6.4, 10.2.3).

The counters are pure: ``try_acquire()``/``release()``, and ``refusal()`` is the
``Overloaded`` to answer when one is full. ``ServiceLimits`` (`httpio.settings`) holds these and the per-service
timeouts and retry count from msa.yaml; each timeout has its unit in its name and one call
site in the proxy.

The timeouts of one proxied request, in the order they run:

- ``connect_timeout_s`` (1 s): the TCP connect of one try.
- the response-head timeout of one try, from the end of the request to the response head.
  In code it has one name, ``response_head_timeout_s`` (`ServiceLimits.response_head_timeout_s`
  computes it, `proxy.retry.Attempts` cuts it to the deadline left, and the upstream pool's
  head scope is its one call site, with config.json's ``Upstream.response_head_timeout_s`` the
  default for exchanges that set none: probes, region forwards). msa.yaml spells it
  ``per_try_timeout_s`` (Envoy's ``per_try_timeout``, kept so that written files mean what
  they meant), 2 s by default. A try that runs out is a timeout: outlier evidence against
  the instance, and retried on another one when the request may be sent twice. 2 s is ten
  times the longest response head seen under ``make concurrent`` (169 ms; bench/RESULTS.md);
  it is also what bounds the cost of a hung instance: a request caught on one waits at most
  one per-try timeout plus one retry elsewhere. A service whose answers take longer by
  design says so (the fleet's auth service, whose scrypt signins took up to 1.1 s under
  ``make signin``, has 5 s).
- ``response_timeout_s``: a deadline for the response head over all tries together (Envoy's
  route ``timeout``, minus the body): a retry gets what is left of it. Unset, each try has
  its own per-try timeout and nothing more.
- the body is not under either: once the head is in, the upstream pool's
  ``body_timeout_s`` (between two chunks from the upstream) and the server's send timeout
  (per write to the client) only ask that it keeps moving, so a large download may take as
  long as it takes.

Files written before ``per_try_timeout_s`` existed set ``response_timeout_s`` alone, meaning
the head timeout of each try: they keep that meaning (it is then the per-try timeout too),
which `ServiceLimits.response_head_timeout_s` is the one place to decide.
"""

from __future__ import annotations

from httpio.errors import Overloaded
from httpio.settings import ServiceLimits

RETRY_AFTER: tuple[tuple[bytes, bytes], ...] = ((b"retry-after", b"1"),)


class ConcurrencyLimit:
    """A counter with a ceiling; `refused` counts the requests turned away."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.in_use = 0
        self.peak = 0
        self.refused = 0

    def try_acquire(self) -> bool:
        if self.in_use >= self.limit:
            self.refused += 1
            return False
        self.in_use += 1
        self.peak = max(self.peak, self.in_use)
        return True

    def release(self) -> None:
        if self.in_use <= 0:
            raise RuntimeError(f"{self.name}: release() without a matching try_acquire()")
        self.in_use -= 1

    def refusal(self, subject: str = "") -> Overloaded:
        """The error for a refused ``try_acquire()``: 503 with ``Retry-After: 1``."""
        where = f"{subject}: " if subject else ""
        return Overloaded(f"{where}{self.name} limit of {self.limit} reached", headers=RETRY_AFTER)

    def statistics(self) -> dict[str, int]:
        return {
            "in_use": self.in_use,
            "limit": self.limit,
            "peak": self.peak,
            "refused": self.refused,
        }

    def __repr__(self) -> str:
        return f"<ConcurrencyLimit {self.name} {self.in_use}/{self.limit} refused={self.refused}>"


class ServiceLimiter:
    """The two counters of one service. Resizing (config reload) keeps the current counts."""

    def __init__(self, service: str, limits: ServiceLimits | None = None) -> None:
        self.service = service
        self.limits = limits or ServiceLimits()
        self.in_flight = ConcurrencyLimit("max_in_flight", self.limits.max_in_flight)
        self.pending = ConcurrencyLimit("max_pending", self.limits.max_pending)

    def resize(self, limits: ServiceLimits) -> None:
        self.limits = limits
        self.in_flight.limit = limits.max_in_flight
        self.pending.limit = limits.max_pending

    def statistics(self) -> dict[str, object]:
        return {
            "service": self.service,
            "in_flight": self.in_flight.statistics(),
            "pending": self.pending.statistics(),
        }

    def __repr__(self) -> str:
        return f"<ServiceLimiter {self.service} {self.in_flight!r} {self.pending!r}>"
