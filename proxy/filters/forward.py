"""The terminal filter of a service's chain: pick an instance and stream the exchange.

Decisions are sans-IO and live elsewhere: which headers go upstream
(`proxy.forwarding.upstream_request_headers`), whether and how a failed try goes again and how
long each try waits for its head (`proxy.retry.Attempts`), which instance (`ServicePool.pick`,
`pick_retry`). This module does the I/O in between.

Retries (`proxy.retry`, RFC 9110 9.2.2): a connect failure is retried on another instance for
any method, since nothing was sent (a refused one without counting against ``retries``); a
reset or a per-try timeout before the response head only for idempotent methods whose body we
still hold (bodies up to ``REPLAYABLE_BODY_BYTES`` are read first for that reason). A retry
goes to an instance not tried and not recently failed, within the request's
``response_timeout_s`` deadline if it has one, and spends from a budget so retries cannot
multiply an outage's load by more than ~20 %. A request never waits in a queue for a slot:
past a service's in-flight limit, or its limit of connections being opened at once
(``max_pending``), it is answered 503 with ``Retry-After`` at once. The in-flight slot is taken
once per request and released once, by the failure path or, once a response head is in, by the
`TrackedBody` that relays it.

The filter holds the service's pool and limiter, which outlive config snapshots (a reload keeps
the health and counters of unchanged instances), so a request that started on an old chain
releases what it took where it took it.
"""

from __future__ import annotations

import time

import structlog

from httpio.balance import Endpoint, ServicePool
from httpio.body import RequestBody
from httpio.errors import NoHealthyInstance, UpstreamError
from httpio.health import Outcome, outcome_of_status
from httpio.limits import ConcurrencyLimit, ServiceLimiter
from httpio.messages import Request, Response
from httpio.protocol import Headers
from httpio.retry_budget import RetryBudget
from httpio.settings import ServiceLimits
from httpio.upstream import IDEMPOTENT, UpstreamPool, UpstreamResponse
from proxy import forwarding, retry
from proxy.filters.chain import Exchange

log = structlog.get_logger()

REPLAYABLE_BODY_BYTES = 65536


async def request_body(request: Request) -> tuple[bytes | RequestBody, bool]:
    """The body to send upstream, and whether it can be sent twice: none, or one small enough
    to hold (read now), or the client's stream itself."""
    if request.body.done:
        return b"", True
    length = request.header(b"content-length")
    if length is None and request.header(b"transfer-encoding") is None:
        return b"", True
    if length is not None and length.isdigit() and int(length) <= REPLAYABLE_BODY_BYTES:
        return await request.body.read_all(), True
    return request.body, False


class TrackedBody:
    """The upstream's response body on its way to the client; tells the service pool how
    the exchange ended (for least-conn counts, latency EWMA and outlier detection)."""

    __slots__ = ("_ended", "_endpoint", "_outcome", "_pool", "_response", "_slot", "_started")

    def __init__(
        self,
        response: UpstreamResponse,
        pool: ServicePool,
        endpoint: Endpoint,
        started: float,
        slot: ConcurrencyLimit | None,
    ) -> None:
        self._response = response
        self._pool = pool
        self._endpoint = endpoint
        self._started = started
        self._slot = slot
        status = response.status
        self._outcome = Outcome.SUCCESS if status < 500 else outcome_of_status(status)
        self._ended = False

    @property
    def finished(self) -> bool:
        return self._response.finished

    async def read(self) -> bytes:
        try:
            chunk = await self._response.read()
        except UpstreamError:
            self._outcome = Outcome.RESET
            self._end()
            raise
        if not chunk:
            self._end()
        return chunk

    async def aclose(self) -> None:
        if not self._ended:
            self._outcome = Outcome.CANCELLED if self._outcome is Outcome.SUCCESS else self._outcome
            self._end()
        await self._response.aclose()

    def _end(self) -> None:
        if not self._ended:
            self._ended = True
            if self._slot is not None:
                self._slot.release()
            self._pool.end(self._endpoint, self._outcome, time.monotonic() - self._started)


def upstream_headers(ex: Exchange, via: bytes, drop: frozenset[bytes]) -> Headers:
    """The request's headers as the next hop gets them (`proxy.forwarding`); ``drop`` names
    those only the gateway may set."""
    request = ex.request
    headers = forwarding.upstream_request_headers(
        request.headers,
        client_ip=request.client[0],
        via=via,
        request_id=ex.request_id,
        from_our_hop=ex.from_hop,
        drop=drop,
    )
    if ex.traceparent:
        headers.append((b"traceparent", ex.traceparent))
    return headers


def relayed(response: UpstreamResponse, body: TrackedBody) -> Response:
    """The upstream's answer as ours, its body streamed; its headers are the response-headers
    filter's to rewrite."""
    return Response(response.status, response.headers, body)


class Forward:
    """``forward``: the service's instances, one try after another."""

    name = "forward"

    def __init__(
        self,
        service: str,
        *,
        pool: ServicePool,
        limiter: ServiceLimiter,
        limits: ServiceLimits,
        upstream: UpstreamPool,
        budget: RetryBudget,
        via: bytes,
        dependency: bool,
        drop: frozenset[bytes],
    ) -> None:
        self.service = service
        self._pool = pool
        self._limiter = limiter
        self._limits = limits
        self._upstream = upstream
        self._budget = budget
        self._via = via
        self._dependency = dependency
        self._drop = drop

    def __repr__(self) -> str:
        return f"<Forward {self.service} {self._pool!r}>"

    async def respond(self, ex: Exchange) -> Response:
        request = ex.request
        headers = upstream_headers(ex, self._via, self._drop)
        headers.extend(ex.identity)
        body, replayable = await request_body(request)
        attempts = retry.Attempts(
            self.service,
            self._limits,
            replayable=replayable and request.method in IDEMPOTENT,
            dependency=self._dependency,
        )
        self._budget.record_request()
        slot = self._limiter.in_flight
        if not slot.try_acquire():
            raise slot.refusal(f"service {self.service!r}")
        # From here until a TrackedBody owns it, every way out releases the slot once.
        try:
            endpoint, response, started = await self._tries(ex, headers, body, attempts)
        except BaseException:
            slot.release()
            raise
        tracked = TrackedBody(response, self._pool, endpoint, started, slot)
        try:
            return relayed(response, tracked)
        except BaseException:
            await tracked.aclose()  # frees the slot and the pool's count, closes upstream
            raise

    async def _tries(
        self,
        ex: Exchange,
        headers: Headers,
        body: bytes | RequestBody,
        attempts: retry.Attempts,
    ) -> tuple[Endpoint, UpstreamResponse, float]:
        """Try instances until one answers with a head; the instance, its answer and when
        the try started. Raises the error the client gets when none does."""
        pool = self._pool
        client_ip = ex.request.client[0]
        try:
            endpoint = pool.pick(client_ip=client_ip, url=ex.target)
        except NoHealthyInstance as none_left:
            raise retry.unavailable(none_left, dependency=self._dependency) from None
        first = time.monotonic()
        note = ex.note
        while True:
            note.upstream = endpoint.url
            note.retries = len(attempts.tried)  # the tries that failed before this one
            pool.begin(endpoint)
            started = time.monotonic()
            try:
                response = await self._upstream.request(
                    endpoint.url,
                    ex.request.method,
                    ex.target,
                    headers,
                    body,
                    connect_timeout_s=self._limits.connect_timeout_s,
                    response_head_timeout_s=attempts.response_head_timeout_s(started),
                    connect_slots=self._limiter.pending,
                )
            except UpstreamError as err:
                following = self._after_failure(endpoint, err, started, attempts, ex)
                if following is None:
                    final = attempts.final_error(err)
                    if final is err:
                        raise
                    raise final from err
                endpoint = following
                continue
            except BaseException:
                pool.end(endpoint, Outcome.CANCELLED, time.monotonic() - started)
                raise
            note.upstream_ms = round((time.monotonic() - first) * 1000, 3)
            return endpoint, response, started

    def _after_failure(
        self,
        endpoint: Endpoint,
        err: UpstreamError,
        started: float,
        attempts: retry.Attempts,
        ex: Exchange,
    ) -> Endpoint | None:
        """Feed the failed try to the pool's health; where the request goes next, if
        anywhere (the verdict, an instance fit for it, and the budget all agree)."""
        now = time.monotonic()
        outcome = retry.outcome_of(err)
        ex.note.failed_tries += ((endpoint.url, retry.FAILED_TRY.get(outcome, outcome.value)),)
        transition = self._pool.end(endpoint, outcome, now - started)
        if transition is not None:
            log.warning("instance_state", service=self.service, change=str(transition))
        verdict = attempts.failed(endpoint, err, outcome, now)
        if verdict not in retry.TRY_AGAIN:
            return None
        following = self._pool.pick_retry(
            attempts.tried, client_ip=ex.request.client[0], url=ex.target
        )
        if following is None or not self._budget.try_retry():
            return None
        attempts.going_again(verdict)
        return following
