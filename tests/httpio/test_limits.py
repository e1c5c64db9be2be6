"""Per-service concurrency counters: refuse at once, release always."""

from __future__ import annotations

import msgspec
import pytest

from httpio.errors import Overloaded
from httpio.limits import ConcurrencyLimit, ServiceLimiter
from httpio.settings import DEFAULT_PER_TRY_TIMEOUT_S, ServiceLimits


def test_try_acquire_until_full_then_release() -> None:
    limit = ConcurrencyLimit("max_in_flight", 2)
    assert limit.try_acquire() and limit.try_acquire()
    assert not limit.try_acquire()
    limit.release()
    assert limit.try_acquire()
    assert limit.statistics() == {"in_use": 2, "limit": 2, "peak": 2, "refused": 1}
    assert repr(limit) == "<ConcurrencyLimit max_in_flight 2/2 refused=1>"


def test_release_without_acquire_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match="without a matching"):
        ConcurrencyLimit("max_pending", 1).release()


def test_a_refusal_is_overloaded_with_retry_after() -> None:
    limiter = ServiceLimiter("video", ServiceLimits(max_in_flight=1))
    assert limiter.in_flight.try_acquire()
    assert not limiter.in_flight.try_acquire()
    err = limiter.in_flight.refusal("service 'video'")
    assert err.status == 503 and err.code == "overloaded"
    assert err.headers == ((b"retry-after", b"1"),)
    assert "video" in err.detail and "max_in_flight" in err.detail
    limiter.in_flight.release()
    assert limiter.in_flight.in_use == 0


def test_zero_pending_refuses_every_wait() -> None:
    limiter = ServiceLimiter("image", ServiceLimits(max_pending=0))
    assert not limiter.pending.try_acquire()
    assert isinstance(limiter.pending.refusal(), Overloaded)
    assert "max_pending" in limiter.pending.refusal().detail


def test_resize_keeps_current_counts() -> None:
    limiter = ServiceLimiter("image")
    assert limiter.in_flight.try_acquire() and limiter.in_flight.try_acquire()
    limiter.resize(ServiceLimits(max_in_flight=1))
    assert not limiter.in_flight.try_acquire()
    limiter.in_flight.release()
    limiter.in_flight.release()
    assert limiter.in_flight.try_acquire()
    assert limiter.statistics()["in_flight"] == {"in_use": 1, "limit": 1, "peak": 2, "refused": 1}
    assert repr(limiter).startswith("<ServiceLimiter image <ConcurrencyLimit max_in_flight 1/1")


def test_service_limits_schema() -> None:
    limits = msgspec.convert({"retries": 2, "per_try_timeout_s": 0.5}, ServiceLimits)
    assert limits.max_in_flight == 1024 and limits.max_pending == 1024
    assert limits.connect_timeout_s == 1.0 and limits.response_timeout_s is None
    assert (limits.retries, limits.per_try_timeout_s) == (2, 0.5)
    assert limits.response_head_timeout_s() == 0.5
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.convert({"max_inflight": 3}, ServiceLimits)
    with pytest.raises(msgspec.ValidationError, match=r"\$.max_in_flight"):
        msgspec.convert({"max_in_flight": 0}, ServiceLimits)
    with pytest.raises(msgspec.ValidationError, match=r"\$.retries"):
        msgspec.convert({"retries": -1}, ServiceLimits)


def test_head_timeouts_per_try_and_over_all_tries() -> None:
    # Nothing set: every try has the default per-try timeout, and no overall deadline.
    default = ServiceLimits()
    assert default.response_head_timeout_s() == DEFAULT_PER_TRY_TIMEOUT_S == 2.0
    assert default.response_timeout_s is None
    # A file from before per_try_timeout_s: response_timeout_s alone keeps its old meaning,
    # the head timeout of each try (and now also the deadline over all of them).
    old = msgspec.convert({"response_timeout_s": 60}, ServiceLimits)
    assert old.response_head_timeout_s() == 60.0 and old.response_timeout_s == 60.0
    both = msgspec.convert({"per_try_timeout_s": 1.5, "response_timeout_s": 4}, ServiceLimits)
    assert both.response_head_timeout_s() == 1.5 and both.response_timeout_s == 4.0
    with pytest.raises(msgspec.ValidationError, match=r"\$.per_try_timeout_s"):
        msgspec.convert({"per_try_timeout_s": 0}, ServiceLimits)
