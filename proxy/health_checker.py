"""Active health checks: every interval, ``GET <health path>`` on each instance of a service.

The original forked ``nc`` on every pick, so a check cost a process and blocked the request.
Here one task per service probes all its instances concurrently once per interval, each probe
under ``timeout_s``, with at most ``max_concurrency`` probes in flight (a large service must not
open hundreds of sockets at once). Results go into the pool's health state machine
(``httpio.health``), whose rise/fall thresholds decide; this module only does the I/O.

A probe passes on any 2xx or 3xx status (HAProxy's ``httpchk`` rule); a timeout, refused
connection, reset or other status fails it. Rounds start on a fixed schedule
(``sleep_until``), so a slow round does not push the next one later and later. The instance
list and the pool's health settings are re-read each round, so a config reload
(``ServicePool.swap_endpoints``, ``set_health``) takes effect at the next round without
restarting this task.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NoReturn, Protocol

import structlog
import trio

from httpio.balance import Endpoint, ServicePool
from httpio.health import HealthSettings

log = structlog.get_logger("proxy.health_checker")

USER_AGENT = b"pygateway-health-check/1"
PROBE_BODY_LIMIT = 65536


class ProbeResponse(Protocol):
    @property
    def status(self) -> int: ...

    async def read(self) -> bytes: ...

    async def aclose(self) -> None: ...


class ProbeClient(Protocol):
    """The part of `httpio.upstream.UpstreamPool` a probe needs."""

    async def request(
        self,
        *,
        origin: str,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> ProbeResponse: ...


async def probe(upstream: ProbeClient, endpoint: Endpoint, settings: HealthSettings) -> bool:
    """One check of one instance; True when it answered 2xx/3xx within `timeout_s`."""
    headers = [(b"user-agent", USER_AGENT)]  # the pool adds Host
    with trio.move_on_after(settings.timeout_s):
        try:
            resp = await upstream.request(
                origin=endpoint.url, method="GET", target=settings.path, headers=headers, body=b""
            )
        except Exception as exc:  # every failure of the far side means "not healthy"
            log.debug("health_probe_failed", instance=endpoint.url, error=repr(exc))
            return False
        try:
            passed = 200 <= resp.status < 400
            # Read the (small) body to its end so that the connection goes back to the
            # pool: a probe per instance per interval should not cost a TCP handshake.
            remaining = PROBE_BODY_LIMIT
            try:
                while remaining > 0 and (chunk := await resp.read()):
                    remaining -= len(chunk)
            except Exception:  # a body that breaks off: the status already answered
                pass
            return passed
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + settings.timeout_s):
                await resp.aclose()
    log.debug("health_probe_timeout", instance=endpoint.url, timeout_s=settings.timeout_s)
    return False


async def check_round(
    pool: ServicePool,
    settings: HealthSettings,
    upstream: ProbeClient,
    limiter: trio.CapacityLimiter,
) -> dict[str, bool]:
    """Probe every current instance once, concurrently; feed and return the results."""
    results: dict[str, bool] = {}

    async def check(endpoint: Endpoint) -> None:
        async with limiter:
            passed = await probe(upstream, endpoint, settings)
        results[endpoint.url] = passed
        transition = pool.record_check(endpoint, passed)
        if transition is not None:
            log.info(
                "health_transition",
                service=pool.name,
                instance=endpoint.url,
                old=transition.old.value,
                new=transition.new.value,
                cause=transition.event.value,
            )

    endpoints: Sequence[Endpoint] = pool.endpoints
    async with trio.open_nursery() as nursery:
        for endpoint in endpoints:
            nursery.start_soon(check, endpoint)
    return results


async def run_health_checks(
    pool: ServicePool,
    upstream: ProbeClient,
    settings: HealthSettings | None = None,
    *,
    default_interval_s: float = 10.0,
    max_concurrency: int = 32,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Run forever (cancel the enclosing scope to stop). `settings` defaults to the pool's,
    read again each round so that a config reload (``ServicePool.set_health``) changes the
    path, timeout and interval from the next round; `default_interval_s` is config.json's
    ``MSA_healthcheck_interval`` for when ``settings.interval_s`` is None."""
    fixed = settings
    current = fixed or pool.health.settings
    limiter = trio.CapacityLimiter(max_concurrency)
    log.info(
        "health_checks_started",
        service=pool.name,
        interval_s=current.effective_interval_s(default_interval_s),
        path=current.path,
    )
    task_status.started()
    next_round = trio.current_time()
    while True:
        current = fixed or pool.health.settings
        await check_round(pool, current, upstream, limiter)
        next_round += current.effective_interval_s(default_interval_s)
        now = trio.current_time()
        if next_round < now:  # a round overran: skip the missed slots instead of bursting
            next_round = now
        await trio.sleep_until(next_round)
