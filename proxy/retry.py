"""Whether a failed try of a proxied request is tried again, and what the client gets if not.

Pure decisions for the forward filter (`proxy.filters.forward`), which does the I/O: `Attempts`
keeps the tries of one request and says, after each failure, whether and how it goes again and
how long the next try may wait for its response head; where a retry goes is
`httpio.balance.ServicePool.pick_retry`'s decision, and whether the fleet can afford it the
retry budget's (`httpio.retry_budget`).

A try is sent again (RFC 9110 9.2.2) when nothing of the request reached the instance (a
refused or timed-out connect: any method), or when the request may be sent twice (an
idempotent method whose body the proxy still holds) and the instance reset the connection,
broke the protocol or let the per-try timeout run out (Envoy's ``retry_on: connect-failure,
reset, gateway-error``). At most ``retries`` times, and not once the request's
``response_timeout_s`` deadline has passed.

A refused connect does not count against ``retries``: the request goes on to another
instance not yet tried while there is one (nginx's default ``proxy_next_upstream error``;
HAProxy's ``retries`` are for exactly this). It costs no instance any work and the proxy a
fraction of a millisecond, and it is what makes losing instances together cost no request:
when two instances die at once, the proxy cannot know the second is dead until something
fails on it, and the retry of a request that failed on the first may be that something
(4 of 20 runs of ``tests/e2e/test_health_faults.py`` before this rule). Every such
try still spends from the retry budget, so an outage of every instance stays bounded too.
A connect that timed out counts: it cost ``connect_timeout_s``.

What the client gets when the last try failed: the instance's own failure (502 for a reset or
garbage, 504 for a timeout), except when no try reached any instance. Then nothing happened
and nothing will until an instance comes back: 503 with ``Retry-After``, as Envoy answers a
connect failure (nginx says 502, but the request can safely be sent again, and 503 is the
status that says "later", RFC 9110 15.6.4). For the auth service it is
``dependency_unavailable``, the code a token check gives when no auth server answers, so a
client sees one code for "auth is down" whether it signs in or presents a token.
"""

from __future__ import annotations

import enum
import math
from typing import Final

from httpio.balance import Endpoint
from httpio.errors import (
    DependencyUnavailable,
    GatewayError,
    NoHealthyInstance,
    UpstreamError,
    UpstreamTimeout,
)
from httpio.health import Outcome
from httpio.limits import RETRY_AFTER
from httpio.settings import ServiceLimits


class Verdict(enum.Enum):
    RETRY = "retry"  # counts against ``retries``
    NEXT_INSTANCE = "next_instance"  # refused: another instance, not counted
    RETRIES_EXHAUSTED = "retries_exhausted"
    NOT_REPLAYABLE = "not_replayable"  # the instance may have acted on it; it cannot go twice
    DEADLINE_PASSED = "deadline_passed"
    NOT_RETRIABLE = "not_retriable"  # the instance answered; its answer is the answer


TRY_AGAIN = frozenset({Verdict.RETRY, Verdict.NEXT_INSTANCE})
_RETRIABLE = frozenset(
    {Outcome.CONNECT_FAILURE, Outcome.CONNECT_TIMEOUT, Outcome.RESET, Outcome.TIMEOUT}
)


# ``gateway_upstream_attempts_total``'s outcome of a try that got no answer (one that got an
# answer is ``ok``, or ``5xx``): the words an operator looks for, one per way a try fails.
FAILED_TRY: Final = {
    Outcome.CONNECT_FAILURE: "connect_error",
    Outcome.CONNECT_TIMEOUT: "connect_timeout",
    Outcome.RESET: "reset",
    Outcome.TIMEOUT: "timeout",
}


def decide_retry(
    *,
    outcome: Outcome,
    request_sent: bool,
    replayable: bool,
    retries_done: int,
    max_retries: int,
    time_left_s: float,
) -> Verdict:
    """The verdict on one failed try. ``request_sent``: any byte of the request left the
    proxy; ``replayable``: the method is idempotent and the proxy holds the whole body;
    ``retries_done``: the retries so far that count (`Verdict.RETRY`); ``time_left_s``:
    what remains of the request's deadline (``math.inf`` if none)."""
    if outcome not in _RETRIABLE:
        return Verdict.NOT_RETRIABLE
    if time_left_s <= 0:
        return Verdict.DEADLINE_PASSED
    if outcome is Outcome.CONNECT_FAILURE:
        return Verdict.NEXT_INSTANCE
    if retries_done >= max_retries:
        return Verdict.RETRIES_EXHAUSTED
    if request_sent and not replayable:
        return Verdict.NOT_REPLAYABLE
    return Verdict.RETRY


def final_error(
    last: UpstreamError, *, reached_any: bool, service: str, dependency: bool, tries: int
) -> GatewayError:
    """The error for a request whose last try failed with `last` (see the module header).
    ``reached_any``: some try sent bytes to an instance; ``dependency``: `service` is the
    gateway's auth service."""
    if reached_any:
        return last
    detail = f"no instance of service {service!r} accepted a connection ({tries} tried)"
    if dependency:
        return DependencyUnavailable(detail, headers=RETRY_AFTER)
    return NoHealthyInstance(detail, headers=RETRY_AFTER)


def unavailable(err: NoHealthyInstance, *, dependency: bool) -> GatewayError:
    """Every instance is out before any try: for the auth service that is a dependency down."""
    if dependency:
        return DependencyUnavailable(err.detail, headers=RETRY_AFTER)
    return err


def outcome_of(err: UpstreamError) -> Outcome:
    """What a failed try tells the instance's health: whether any byte reached it, and
    whether it timed out or broke."""
    timed_out = isinstance(err, UpstreamTimeout)
    if not err.bytes_sent:  # nothing reached the instance
        return Outcome.CONNECT_TIMEOUT if timed_out else Outcome.CONNECT_FAILURE
    return Outcome.TIMEOUT if timed_out else Outcome.RESET


class Attempts:
    """The tries of one proxied request so far, and what they allow next. Pure: the caller
    passes monotonic times in and does every I/O.

    ``replayable``: the method is idempotent and the proxy holds the whole body; ``dependency``:
    the service is the gateway's auth service (its outage reads ``dependency_unavailable``)."""

    __slots__ = (
        "_deadline_s",
        "_first_started",
        "_max_retries",
        "_per_try_s",
        "dependency",
        "reached_any",
        "replayable",
        "retries_done",
        "service",
        "tried",
    )

    def __init__(
        self, service: str, limits: ServiceLimits, *, replayable: bool, dependency: bool
    ) -> None:
        self.service = service
        self.replayable = replayable
        self.dependency = dependency
        self._per_try_s = limits.response_head_timeout_s()
        self._deadline_s = limits.response_timeout_s
        self._max_retries = limits.retries
        self._first_started: float | None = None
        self.tried: list[Endpoint] = []
        self.retries_done = 0
        self.reached_any = False

    def __repr__(self) -> str:
        return (
            f"<Attempts {self.service} tried={len(self.tried)} retries={self.retries_done}"
            f" reached_any={self.reached_any}>"
        )

    def response_head_timeout_s(self, started: float) -> float:
        """How long the try starting at ``started`` may wait for its response head: the
        per-try timeout, cut to what is left of the request's deadline, if it has one."""
        if self._first_started is None:
            self._first_started = started
        if self._deadline_s is None:
            return self._per_try_s
        return min(self._per_try_s, self._deadline_s - (started - self._first_started))

    def failed(
        self, endpoint: Endpoint, err: UpstreamError, outcome: Outcome, now: float
    ) -> Verdict:
        """Record a try on ``endpoint`` that failed with ``err`` at ``now``; the verdict."""
        self.tried.append(endpoint)
        self.reached_any = self.reached_any or err.bytes_sent
        started = self._first_started if self._first_started is not None else now
        left = math.inf if self._deadline_s is None else self._deadline_s - (now - started)
        return decide_retry(
            outcome=outcome,
            request_sent=err.bytes_sent,
            replayable=self.replayable,
            retries_done=self.retries_done,
            max_retries=self._max_retries,
            time_left_s=left,
        )

    def going_again(self, verdict: Verdict) -> None:
        """The request goes to another instance on ``verdict`` (one of `TRY_AGAIN`)."""
        if verdict is Verdict.RETRY:
            self.retries_done += 1

    def final_error(self, last: UpstreamError) -> GatewayError:
        """What the client gets when the last try failed with ``last``."""
        return final_error(
            last,
            reached_any=self.reached_any,
            service=self.service,
            dependency=self.dependency,
            tries=len(self.tried),
        )
