"""The proxy's conversation with the auth servers: introspection and the revocation feed.

`proxy.auth` decides; this module does the two network calls it may ask for:

- ``introspect(token)``: once per new token, to learn whether it was revoked, whether its
  user still exists and the user's current role. Concurrent requests carrying the same new
  token share one call. If no auth server answers we refuse with 503
  (`DependencyUnavailable`): a proxy never fails open.
- ``poll_revocations()``: every ``poll_interval_s`` (1 s) read
  ``GET /revocations?since=N&users_since=M`` from any auth server that answers, evict revoked
  tokens and the verdicts of changed users (a role granted, a user deleted) from the verdict
  cache. With a 1 s poll and the cache refusing to answer after ``max_revocation_lag_s``
  (5 s) of silence, a signout, a grant or a deletion is honoured by every proxy within ~1 s
  normally and 5 s at worst.

Auth servers are interchangeable (one shared database), so each call starts at the next
origin in turn and moves on to the others when one is down, slow or answers 5xx. Each call has
``CONNECT_TIMEOUT_S`` (2 s) to connect, ``RESPONSE_HEAD_TIMEOUT_S`` (2 s) for the head of the
answer and ``CALL_TIMEOUT_S`` (4 s) for the whole of it, body included, far below the pool's
general response timeout: an auth server that does not answer in 2 s is better skipped than
waited for.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from urllib.parse import quote

import msgspec
import structlog
import trio

from authsvc.claims import Claims
from authsvc.tokens import INTERNAL_HEADER
from httpio.errors import DependencyUnavailable, Unauthorized, UpstreamError
from httpio.messages import Request
from httpio.single_flight import SingleFlight
from httpio.upstream import UpstreamPool
from proxy.auth import Authorizer, AuthPolicy, NeedsIntrospection, Verdict
from proxy.auth_records import decode_introspection, decode_page

log = structlog.get_logger()

_MAX_RESPONSE_BYTES = 1 << 20
CONNECT_TIMEOUT_S = 2.0
RESPONSE_HEAD_TIMEOUT_S = 2.0
CALL_TIMEOUT_S = CONNECT_TIMEOUT_S + RESPONSE_HEAD_TIMEOUT_S
_PRUNE_EVERY_S = 60.0


_JSON = (b"content-type", b"application/json")


class _AuthServerFailed(Exception):
    """One auth server did not give a usable answer; try the next."""


class AuthClient:
    def __init__(
        self,
        pool: UpstreamPool,
        auth_origins: Sequence[str],
        authorizer: Authorizer,
        *,
        clock: Callable[[], float] = time.time,
        poll_interval_s: float = 1.0,
    ) -> None:
        self.pool = pool
        self.authorizer = authorizer
        self.clock = clock
        self.poll_interval_s = poll_interval_s
        self.cursor = 0
        self.users_cursor = 0
        self._origins: list[str] = list(auth_origins)
        self._next = 0
        self._flights: SingleFlight[str, Claims] = SingleFlight()
        self._last_prune = 0.0
        self.introspections = 0
        self.coalesced = 0
        self.polls_ok = 0
        self.polls_failed = 0
        self.origin_failures = 0

    def __repr__(self) -> str:
        return (
            f"<AuthClient origins={len(self._origins)} cursor={self.cursor}"
            f" introspections={self.introspections} polls_ok={self.polls_ok}"
            f" polls_failed={self.polls_failed}>"
        )

    def statistics(self) -> dict[str, object]:
        return {
            "origins": list(self._origins),
            "cursor": self.cursor,
            "users_cursor": self.users_cursor,
            "introspections": self.introspections,
            "coalesced": self.coalesced,
            "inflight": len(self._flights),
            "polls_ok": self.polls_ok,
            "polls_failed": self.polls_failed,
            "origin_failures": self.origin_failures,
            "authorizer": self.authorizer.statistics(),
        }

    def set_origins(self, auth_origins: Sequence[str]) -> None:
        """Replace the auth server list (config reload)."""
        self._origins = list(auth_origins)

    # -- the decision, end to end ------------------------------------------------------------
    def decide(self, request: Request, policy: AuthPolicy) -> Verdict:
        """`Allowed` (a cached verdict or a public path: no network call), `NeedsIntrospection`
        (then `settle`), or raise the error to answer with (garbage, forgeries, a refused
        role are all refused here)."""
        return self.authorizer.decide(request.headers, request.path, policy, self.clock())

    async def settle(self, pending: NeedsIntrospection, policy: AuthPolicy) -> Claims:
        """Ask an auth server about a token `decide` could not answer; its verdict's claims,
        or raise the error to answer with."""
        claims = await self.introspect(pending.token)
        return self.authorizer.accept_introspection(pending, claims, policy, self.clock())

    # -- introspection -----------------------------------------------------------------------
    async def introspect(self, token: str) -> Claims:
        """The token's claims if an auth server says it is active; `Unauthorized` if inactive;
        `DependencyUnavailable` if no auth server answers."""
        flight = self._flights.join(token)
        if flight is not None:
            self.coalesced += 1
            await flight.wait()
            return flight.outcome()
        flight = self._flights.lead(token)
        assert flight is not None  # no checkpoint since join() found none
        try:
            claims = await self._introspect_once(token)
        except Exception as exc:
            self._flights.land(token, flight, error=exc)
            raise
        except BaseException:  # cancelled: the waiters must not wait for us
            cancelled = DependencyUnavailable("introspection was cancelled")
            self._flights.land(token, flight, error=cancelled)
            raise
        self._flights.land(token, flight, result=claims)
        return claims

    async def _introspect_once(self, token: str) -> Claims:
        self.introspections += 1
        body = msgspec.json.encode({"token": token})
        raw = await self._call_any("POST", "/introspect", body)
        try:
            answer = decode_introspection(raw)
        except msgspec.DecodeError as exc:
            raise DependencyUnavailable(f"auth server sent an unreadable answer: {exc}") from None
        if not answer.active:
            raise Unauthorized(f"token refused: {answer.reason or 'inactive'}")
        if answer.sub is None or answer.role is None or answer.jti is None:
            raise DependencyUnavailable("auth server said active but sent no claims")
        return Claims(
            sub=answer.sub, role=answer.role, iat=answer.iat, exp=answer.exp, jti=answer.jti
        )

    # -- revocation feed ---------------------------------------------------------------------
    async def poll_revocations(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Run forever; reports started after the first attempt, successful or not."""
        await self.poll_once()
        task_status.started()
        while True:
            await trio.sleep(self.poll_interval_s)
            await self.poll_once()

    async def poll_once(self) -> bool:
        """Read the feed to its end; True if the cache is now in sync."""
        cache = self.authorizer.cache
        try:
            while True:
                target = (
                    f"/revocations?since={quote(str(self.cursor))}"
                    f"&users_since={quote(str(self.users_cursor))}"
                )
                raw = await self._call_any("GET", target)
                try:
                    page = decode_page(raw)
                except msgspec.DecodeError as unreadable:
                    raise DependencyUnavailable(
                        f"unreadable revocation feed: {unreadable}"
                    ) from None
                now = self.clock()
                cache.revoke(((r.jti, r.exp) for r in page.revoked), now)
                cache.forget_users(page.changed_users)
                moved = (page.cursor, page.users_cursor) != (self.cursor, self.users_cursor)
                self.cursor, self.users_cursor = page.cursor, page.users_cursor
                if not (page.revoked or page.changed_users) or not moved:
                    break
        except DependencyUnavailable as exc:
            self.polls_failed += 1
            log.warning("revocation_poll_failed", error=exc.detail, cursor=self.cursor)
            return False
        cache.mark_synced(now)
        if now - self._last_prune >= _PRUNE_EVERY_S:
            cache.prune(now)
            self._last_prune = now
        self.polls_ok += 1
        return True

    # -- one call, any auth server -----------------------------------------------------------
    async def _call_any(self, method: str, target: str, body: bytes = b"") -> bytes:
        origins = self._origins
        if not origins:
            raise DependencyUnavailable("no auth server configured")
        start = self._next % len(origins)
        self._next += 1
        problems = []
        for i in range(len(origins)):
            origin = origins[(start + i) % len(origins)]
            try:
                return await self._call(origin, method, target, body)
            except (_AuthServerFailed, UpstreamError) as exc:
                self.origin_failures += 1
                problems.append(f"{origin}: {exc}")
        raise DependencyUnavailable("no auth server answered (" + "; ".join(problems) + ")")

    async def _call(self, origin: str, method: str, target: str, body: bytes) -> bytes:
        headers = [(INTERNAL_HEADER, self.authorizer.ring.internal_proof())]
        if body:
            headers.append(_JSON)
        with trio.move_on_after(CALL_TIMEOUT_S) as scope:
            response = await self.pool.request(
                origin,
                method,
                target,
                headers,
                body,
                connect_timeout_s=CONNECT_TIMEOUT_S,
                response_head_timeout_s=RESPONSE_HEAD_TIMEOUT_S,
            )
            raw = await response.read_all(_MAX_RESPONSE_BYTES)
        if scope.cancelled_caught:
            raise _AuthServerFailed("timed out")
        if response.status != 200:
            raise _AuthServerFailed(f"status {response.status}")
        return raw
