"""The retry verdict and the final error, called directly: no event loop, no sockets."""

from __future__ import annotations

import math

import pytest

from httpio.balance import Endpoint
from httpio.errors import (
    DependencyUnavailable,
    NoHealthyInstance,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from httpio.health import Outcome
from httpio.settings import ServiceLimits
from proxy.retry import Attempts, Verdict, decide_retry, final_error, outcome_of, unavailable

Out = Outcome


@pytest.mark.parametrize(
    ("outcome", "sent", "replayable", "done", "left_s", "verdict"),
    [
        # refused: nothing reached the instance, nothing was done, no time was lost: any
        # method goes on to another instance, and it does not count as a retry
        (Out.CONNECT_FAILURE, False, False, 0, math.inf, Verdict.NEXT_INSTANCE),
        (Out.CONNECT_FAILURE, False, True, 1, math.inf, Verdict.NEXT_INSTANCE),
        # a connect that timed out cost connect_timeout_s: a retry, for any method
        (Out.CONNECT_TIMEOUT, False, False, 0, math.inf, Verdict.RETRY),
        (Out.CONNECT_TIMEOUT, False, False, 1, math.inf, Verdict.RETRIES_EXHAUSTED),
        # the request (or part of it) went out: only if it may be sent twice
        (Out.RESET, True, True, 0, math.inf, Verdict.RETRY),
        (Out.RESET, True, False, 0, math.inf, Verdict.NOT_REPLAYABLE),
        # a GET caught on a hung instance is retried once elsewhere; a POST is not
        (Out.TIMEOUT, True, True, 0, 10.0, Verdict.RETRY),
        (Out.TIMEOUT, True, False, 0, 10.0, Verdict.NOT_REPLAYABLE),
        # bounds: the retry count, then the request's deadline
        (Out.TIMEOUT, True, True, 1, math.inf, Verdict.RETRIES_EXHAUSTED),
        (Out.TIMEOUT, True, True, 0, 0.0, Verdict.DEADLINE_PASSED),
        (Out.CONNECT_FAILURE, False, True, 0, -0.5, Verdict.DEADLINE_PASSED),
        # answers are relayed, never retried; a client that left is not a failure to retry
        (Out.SERVER_ERROR, True, True, 0, math.inf, Verdict.NOT_RETRIABLE),
        (Out.GATEWAY_ERROR, True, True, 0, math.inf, Verdict.NOT_RETRIABLE),
        (Out.CANCELLED, True, True, 0, math.inf, Verdict.NOT_RETRIABLE),
        (Out.SUCCESS, True, True, 0, math.inf, Verdict.NOT_RETRIABLE),
    ],
)
def test_decide_retry(
    outcome: Outcome, sent: bool, replayable: bool, done: int, left_s: float, verdict: Verdict
) -> None:
    got = decide_retry(
        outcome=outcome,
        request_sent=sent,
        replayable=replayable,
        retries_done=done,
        max_retries=1,
        time_left_s=left_s,
    )
    assert got is verdict


def test_no_retries_configured_means_none() -> None:
    verdict = decide_retry(
        outcome=Out.RESET,
        request_sent=False,
        replayable=True,
        retries_done=0,
        max_retries=0,
        time_left_s=math.inf,
    )
    assert verdict is Verdict.RETRIES_EXHAUSTED


def test_no_try_reached_an_instance_is_503_with_retry_after() -> None:
    last = UpstreamUnreachable("http://b:2: connect failed", bytes_sent=False)
    err = final_error(last, reached_any=False, service="video", dependency=False, tries=2)
    assert isinstance(err, NoHealthyInstance) and err.status == 503
    assert err.headers == ((b"retry-after", b"1"),)
    assert "'video'" in err.detail and "2 tried" in err.detail
    auth = final_error(last, reached_any=False, service="auth", dependency=True, tries=2)
    assert isinstance(auth, DependencyUnavailable) and auth.code == "dependency_unavailable"
    assert auth.status == 503 and auth.headers == ((b"retry-after", b"1"),)


@pytest.mark.parametrize(
    "last",
    [
        UpstreamTimeout("no response head in time", bytes_sent=True),
        UpstreamUnreachable("connection reset", bytes_sent=True),
        UpstreamProtocolError("garbage", bytes_sent=True),
    ],
)
def test_a_try_that_reached_an_instance_keeps_its_own_error(last: UpstreamTimeout) -> None:
    for dependency in (False, True):
        err = final_error(last, reached_any=True, service="auth", dependency=dependency, tries=2)
        assert err is last


def test_every_instance_out_before_any_try() -> None:
    err = NoHealthyInstance("service 'auth' has no healthy instance")
    assert unavailable(err, dependency=False) is err
    down = unavailable(err, dependency=True)
    assert isinstance(down, DependencyUnavailable) and down.detail == err.detail
    assert down.headers == ((b"retry-after", b"1"),)


# -- the tries of one request ---------------------------------------------------------------
A, B = Endpoint.parse("http://10.0.0.1:80"), Endpoint.parse("http://10.0.0.2:80")


def test_attempts_cut_each_head_timeout_to_the_deadline_left() -> None:
    limits = ServiceLimits(per_try_timeout_s=2.0, response_timeout_s=3.0, retries=1)
    attempts = Attempts("svc", limits, replayable=True, dependency=False)
    assert attempts.response_head_timeout_s(100.0) == 2.0
    timeout = UpstreamTimeout("slow", bytes_sent=True)
    verdict = attempts.failed(A, timeout, outcome_of(timeout), now=102.0)
    assert verdict is Verdict.RETRY
    attempts.going_again(verdict)
    assert attempts.response_head_timeout_s(102.0) == 1.0  # 3 s over all tries, 2 s gone
    assert attempts.failed(B, timeout, outcome_of(timeout), now=103.0) is Verdict.DEADLINE_PASSED
    assert attempts.tried == [A, B] and attempts.retries_done == 1
    assert attempts.final_error(timeout) is timeout  # it reached an instance: its own error


def test_attempts_without_a_deadline_give_each_try_the_per_try_timeout() -> None:
    attempts = Attempts("svc", ServiceLimits(), replayable=False, dependency=True)
    assert attempts.response_head_timeout_s(0.0) == attempts.response_head_timeout_s(50.0) == 2.0
    refused = UpstreamUnreachable("refused")
    assert outcome_of(refused) is Outcome.CONNECT_FAILURE
    verdict = attempts.failed(A, refused, outcome_of(refused), now=1.0)
    assert verdict is Verdict.NEXT_INSTANCE
    attempts.going_again(verdict)
    assert attempts.retries_done == 0  # a refused connect does not count
    final = attempts.final_error(refused)
    assert isinstance(final, DependencyUnavailable) and "1 tried" in final.detail
    assert repr(attempts) == "<Attempts svc tried=1 retries=0 reached_any=False>"


def test_outcome_of_says_whether_the_instance_was_reached() -> None:
    assert outcome_of(UpstreamTimeout("x")) is Outcome.CONNECT_TIMEOUT
    assert outcome_of(UpstreamTimeout("x", bytes_sent=True)) is Outcome.TIMEOUT
    assert outcome_of(UpstreamProtocolError("x", bytes_sent=True)) is Outcome.RESET
