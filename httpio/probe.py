"""One active health probe: ``GET <path>`` on an origin, passed or not, within a deadline.

Shared by every process that checks another one (the ELB its proxies; the proxy's own checker
may use it too), so that none imports another server's package for it. A probe passes on a
2xx or 3xx status (HAProxy's ``httpchk`` rule) received within ``timeout_s``; a refused or
reset connection, a timeout or any other status fails it. The body is read (up to
``PROBE_BODY_LIMIT``) so that the connection goes back to the pool: at one probe per proxy
every 0.5 s, a kept-alive connection also means a probe does not wait behind a proxy's full
accept queue during a connection burst.
"""

from __future__ import annotations

import structlog
import trio

from httpio.upstream import UpstreamPool

log = structlog.get_logger("httpio.probe")

USER_AGENT = b"pygateway-health-check/1"
PROBE_BODY_LIMIT = 65536


async def probe_health(pool: UpstreamPool, origin: str, path: str, timeout_s: float) -> bool:
    """True when ``origin`` answered ``GET path`` with 2xx/3xx within ``timeout_s``."""
    with trio.move_on_after(timeout_s):
        try:
            response = await pool.request(origin, "GET", path, [(b"user-agent", USER_AGENT)])
        except Exception as exc:  # any failure of the far side means "not healthy"
            log.debug("probe_failed", origin=origin, error=repr(exc))
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
    log.debug("probe_timeout", origin=origin, timeout_s=timeout_s)
    return False
