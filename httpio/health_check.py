"""Active health checks: one probe, a round of probes, and the schedule rounds run on.

Shared by every process that checks another (the proxy its services' instances, the ELB its
proxies, the launcher its children), so that none grows its own copy or imports another
server's package for it. This module does the I/O; what a result means is the caller's state
machine (`httpio.health` for a proxy's instances, `elb.ejection` for an ELB's proxies).

The original forked ``nc`` on every pick, so a check cost a process and blocked the request.
Here a probe is ``GET <path>`` through an upstream pool, under ``timeout_s``; it passes on any
2xx or 3xx status (HAProxy's ``httpchk`` rule), and a timeout, refused connection, reset or
other status fails it. The body is read (up to ``PROBE_BODY_LIMIT``) so that the connection
goes back to the pool: a probe per instance per interval should not cost a TCP handshake, and
a kept-alive connection also means a probe does not wait behind a proxy's full accept queue
during a connection burst.

A round probes every target concurrently, at most ``max_concurrency`` at once (a large
service must not open hundreds of sockets together), and reports each result as it comes.
Rounds start on a fixed schedule (``sleep_until``), so a slow round does not push the next
one later and later; a round that overran its slot starts the next one at once instead of
bursting to catch up. `run_health_checks` re-reads a service pool's instances and health
settings each round, so a config reload (``ServicePool.swap_endpoints``, ``set_health``)
takes effect at the next round without restarting the task.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn, Protocol

import structlog
import trio

from httpio.balance import ServicePool
from httpio.settings import HealthSettings
from httpio.upstream import UpstreamPool

log = structlog.get_logger("httpio.health_check")

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


async def probe_health(client: ProbeClient, origin: str, path: str, timeout_s: float) -> bool:
    """True when ``origin`` answered ``GET path`` with 2xx/3xx within ``timeout_s``."""
    headers = [(b"user-agent", USER_AGENT)]  # the pool adds Host
    with trio.move_on_after(timeout_s):
        try:
            response = await client.request(
                origin=origin, method="GET", target=path, headers=headers, body=b""
            )
        except Exception as exc:  # every failure of the far side means "not healthy"
            log.debug("health_probe_failed", origin=origin, error=repr(exc))
            return False
        try:
            left = PROBE_BODY_LIMIT
            try:
                while left > 0 and (chunk := await response.read()):
                    left -= len(chunk)
            except Exception:  # a body cut short: the status has already answered
                pass
            return 200 <= response.status < 400
        finally:
            with trio.CancelScope(shield=True, deadline=trio.current_time() + timeout_s):
                await response.aclose()
    log.debug("health_probe_timeout", origin=origin, timeout_s=timeout_s)
    return False


async def probe_origin(origin: str, path: str, timeout_s: float) -> bool:
    """`probe_health` on a pool of its own, closed after the probe: for a caller with no pool
    that must leave no idle connection behind (the launcher's readiness checks, benchmarks)."""
    pool = UpstreamPool()
    try:
        return await probe_health(pool, origin, path, timeout_s)
    finally:
        await pool.aclose()


async def probe_round(
    client: ProbeClient,
    origins: Sequence[str],
    settings: HealthSettings,
    on_result: Callable[[str, bool], None],
    limiter: trio.CapacityLimiter,
) -> None:
    """Probe every origin once, concurrently (``limiter`` bounds how many at once), and call
    ``on_result(origin, passed)`` as each one answers or times out."""

    async def check(origin: str) -> None:
        async with limiter:
            passed = await probe_health(client, origin, settings.path, settings.timeout_s)
        on_result(origin, passed)

    async with trio.open_nursery() as nursery:
        for origin in origins:
            nursery.start_soon(check, origin)


async def run_on_schedule(round_: Callable[[], Awaitable[float]]) -> NoReturn:
    """Run ``round_`` forever on a fixed schedule: each round returns the interval from its
    own start to the next one's; a round that overran its slot is followed at once by the
    next, never by a burst."""
    next_round = trio.current_time()
    while True:
        next_round += await round_()
        now = trio.current_time()
        if next_round < now:
            next_round = now
        await trio.sleep_until(next_round)


async def check_round(
    pool: ServicePool,
    settings: HealthSettings,
    client: ProbeClient,
    limiter: trio.CapacityLimiter,
) -> dict[str, bool]:
    """Probe every current instance of ``pool`` once; feed and return the results."""
    results: dict[str, bool] = {}
    by_url = {e.url: e for e in pool.endpoints}

    def record(url: str, passed: bool) -> None:
        results[url] = passed
        transition = pool.record_check(by_url[url], passed)
        if transition is not None:
            log.info(
                "health_transition",
                service=pool.name,
                instance=url,
                old=transition.old.value,
                new=transition.new.value,
                cause=transition.event.value,
            )

    await probe_round(client, list(by_url), settings, record, limiter)
    return results


async def run_health_checks(
    pool: ServicePool,
    client: ProbeClient,
    settings: HealthSettings | None = None,
    *,
    default_interval_s: float = 10.0,
    max_concurrency: int = 32,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Check ``pool`` forever (cancel the enclosing scope to stop). `settings` defaults to the
    pool's, read again each round so that a config reload changes the path, timeout and
    interval from the next round; `default_interval_s` is config.json's
    ``MSA_healthcheck_interval`` for when ``settings.interval_s`` is None."""
    limiter = trio.CapacityLimiter(max_concurrency)

    async def one_round() -> float:
        current = settings or pool.health.settings
        await check_round(pool, current, client, limiter)
        return current.effective_interval_s(default_interval_s)

    first = settings or pool.health.settings
    log.info(
        "health_checks_started",
        service=pool.name,
        interval_s=first.effective_interval_s(default_interval_s),
        path=first.path,
    )
    task_status.started()
    await run_on_schedule(one_round)
