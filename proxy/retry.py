"""Whether a failed try of a proxied request is tried again, and what the client gets if not.

Pure decisions for `proxy.app.ProxyApp.fetch`, which does the I/O; where a retry goes is
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

from httpio.errors import DependencyUnavailable, GatewayError, NoHealthyInstance, UpstreamError
from httpio.health import Outcome
from httpio.limits import RETRY_AFTER


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
