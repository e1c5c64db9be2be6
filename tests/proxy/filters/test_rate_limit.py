"""`proxy.filters.rate_limit`: keys (missing ones limited too), 429 headers, local scope."""

from __future__ import annotations

import pytest

from authsvc.claims import Claims
from httpio.errors import RateLimited
from httpio.gcra_decision import Decision
from proxy.filters.rate_limit import (
    FieldsRateLimit,
    RateLimit,
    RateLimitState,
    key_of,
    needs_identity,
    quota_fields,
    refusal_headers,
)
from tests.proxy.filters.edge import exchange
from topology.schema import RateLimitSpec


def test_keys_and_the_missing_bucket() -> None:
    ex = exchange(headers=[(b"x-api-key", b"k1")], client="192.0.2.1")
    assert key_of("client_ip", ex) == "9:192.0.2.1"
    assert key_of("client_ip+header:X-Api-Key", ex) == "9:192.0.2.1|2:k1"
    assert key_of("header:X-Other", ex) == "1:-"
    assert key_of("user", ex) == "1:-"
    assert key_of("service", ex) == key_of("service", exchange(client="198.51.100.1"))
    ex.claims = Claims(sub="alice", role="admin", iat=0, exp=1, jti="j")
    assert key_of("user+claim:role", ex) == "5:alice|5:admin"
    assert key_of("claim:tenant", ex) == "1:-"  # a token without the claim: "missing"
    ex.claims = Claims(sub="bob", role="user", iat=0, exp=1, jti="j", extra=(("tenant", "acme"),))
    assert key_of("claim:tenant", ex) == "4:acme"  # a claim the token carries beyond ours
    assert key_of("claim:exp", ex) == "1:1"


def test_allowed_answers_carry_the_quota_left() -> None:
    from httpio.messages import Response

    state = RateLimitState()
    spec = RateLimitSpec(key="client_ip", rate_per_s=1, burst=10, scope="local")
    legacy = RateLimitSpec(key="service", rate_per_s=1, burst=5, scope="local", headers="legacy")
    quiet = RateLimitSpec(key="user", rate_per_s=1, burst=5, scope="local", headers="none")
    user = RateLimitSpec(key="header:X-User", rate_per_s=2, burst=20, scope="local")
    f, e, g, h = (RateLimit("svc", s, state) for s in (spec, user, legacy, quiet))
    ex = exchange()
    for limit in (f, e, g, h):  # request order; the answer comes back in reverse
        assert limit.on_request(ex) is None
    response = Response(200, [(b"content-type", b"text/plain")], b"ok")
    out = quota_fields(ex, response)  # what the chain's first limit writes for them all
    assert response.headers == [(b"content-type", b"text/plain")]  # a new Response
    assert [v for n, v in out.headers if n == b"ratelimit-policy"] == [
        b'"service";q=5;w=5',  # legacy: lines of its own
        b'"header:X-User";q=20;w=10, "client_ip";q=10;w=10',  # draft: one list
    ]
    assert [v for n, v in out.headers if n == b"ratelimit"] == [
        b'"service";r=4;t=1',
        b'"header:X-User";r=19;t=1, "client_ip";r=9;t=1',
    ]
    assert dict(out.headers)[b"x-ratelimit-remaining"] == b"4"
    assert not ex.rate_limits
    bare = exchange()  # no limit decided: nothing added
    assert quota_fields(bare, response) is response
    first = FieldsRateLimit("svc", spec, state)  # the first of a chain writes them
    fielded = exchange()
    assert first.on_request(fielded) is None and e.on_request(fielded) is None
    assert dict(first.on_response(fielded, response).headers)[b"ratelimit"] == (
        b'"header:X-User";r=18;t=1, "client_ip";r=8;t=2'
    )
    assert not hasattr(f, "on_response")  # the others only decide


def test_the_first_limit_of_a_chain_writes_the_same_fields_from_its_template() -> None:
    """Given the chain's other limits, the first fills one template when they all noted
    (the bytes `quota_fields` writes), and takes `quota_fields` for any other set."""
    from httpio.messages import Response

    response = Response(200, [(b"content-type", b"text/plain")], b"ok")
    ip = RateLimitSpec(key="client_ip", rate_per_s=1, burst=10, scope="local")
    odd = RateLimitSpec(key='header:X-%d"Key', rate_per_s=2, burst=20, scope="local")
    quiet = RateLimitSpec(key="service", rate_per_s=1, burst=5, scope="local", headers="none")
    legacy = RateLimitSpec(key="user", rate_per_s=1, burst=5, scope="local", headers="legacy")

    def chain(*others: RateLimitSpec) -> list[RateLimit]:
        state = RateLimitState()
        rest = [RateLimit("svc", s, state) for s in others]
        return [FieldsRateLimit("svc", ip, state, rest), *rest]

    def answer(limits: list[RateLimit], skip: int = -1) -> list[tuple[bytes, bytes]]:
        ex = exchange()
        for i, limit in enumerate(limits):
            if i != skip:  # a limit that let the request through unnoted (a store outage)
                assert limit.on_request(ex) is None
        noted = list(ex.rate_limits or [])
        out = limits[0].on_response(ex, response)  # type: ignore[attr-defined]
        assert ex.rate_limits is None and response.headers == [(b"content-type", b"text/plain")]
        ex.rate_limits = noted
        assert out.headers == quota_fields(ex, response).headers  # the same bytes
        return list(out.headers[1:])

    fielded = chain(quiet, odd)
    assert answer(fielded) == [
        (b"ratelimit-policy", b'"header:X-%dKey";q=20;w=10, "client_ip";q=10;w=10'),
        (b"ratelimit", b'"header:X-%dKey";r=19;t=1, "client_ip";r=9;t=1'),
    ]
    assert answer(fielded, skip=2) == [
        (b"ratelimit-policy", b'"client_ip";q=10;w=10'),
        (b"ratelimit", b'"client_ip";r=8;t=2'),
    ]
    assert [n for n, _ in answer(chain(odd, legacy))] == [
        b"ratelimit-policy",
        b"ratelimit",
        b"x-ratelimit-limit",
        b"x-ratelimit-remaining",
        b"x-ratelimit-reset",
        b"ratelimit-policy",
        b"ratelimit",
    ]
    assert answer(chain(quiet, odd), skip=0)[1] == (b"ratelimit", b'"header:X-%dKey";r=19;t=1')
    assert answer([FieldsRateLimit("svc", quiet, RateLimitState())]) == []


def test_identity_keys_run_after_auth() -> None:
    assert needs_identity("user") and needs_identity("client_ip+claim:tenant")
    assert not needs_identity("client_ip+header:X-Api-Key")


def test_refusal_headers_draft_legacy_none() -> None:
    spec = RateLimitSpec(key="client_ip", rate_per_s=10, burst=100)
    d = Decision(False, 0, 0.05, 9.96)
    h = dict(refusal_headers(spec, d))
    assert h[b"retry-after"] == b"1"
    assert h[b"ratelimit-policy"] == b'"client_ip";q=100;w=10'
    assert h[b"ratelimit"] == b'"client_ip";r=0;t=10'
    assert b"x-ratelimit-limit" not in h
    legacy = dict(
        refusal_headers(spec.__class__(key="user", rate_per_s=1, burst=2, headers="legacy"), d)
    )
    assert legacy[b"x-ratelimit-limit"] == b"2" and legacy[b"x-ratelimit-remaining"] == b"0"
    none = refusal_headers(RateLimitSpec(key="user", rate_per_s=1, burst=2, headers="none"), d)
    assert [n for n, _ in none] == [b"retry-after"]


def test_a_local_limit_refuses_with_429_and_keeps_its_buckets_across_snapshots() -> None:
    state = RateLimitState()
    spec = RateLimitSpec(key="client_ip", rate_per_s=0.001, burst=2, scope="local")
    f = RateLimit("svc", spec, state)
    assert f.on_request(exchange()) is None
    assert f.on_request(exchange()) is None
    with pytest.raises(RateLimited) as err:
        f.on_request(exchange())
    assert err.value.status == 429 and dict(err.value.headers)[b"retry-after"] == b"1000"
    again = RateLimit("svc", spec, state)  # a reload builds a new filter on the same buckets
    with pytest.raises(RateLimited):
        again.on_request(exchange())
    assert f.on_request(exchange(client="192.0.2.9")) is None


async def store_down(on_store_error: str) -> list[bool]:
    """Five requests through a fleet limit (burst 4, 2 proxies) whose Redis refuses connections."""
    from httpio.redis_client import RedisPool, RedisSettings
    from tests.support.ports import held_port

    outcomes = []
    with held_port() as port:
        pool = RedisPool(RedisSettings(port=port, connect_timeout_s=0.2, command_timeout_s=0.3))
        spec = RateLimitSpec(
            key="client_ip",
            rate_per_s=0.001,
            burst=4,
            on_store_error=on_store_error,  # type: ignore[arg-type]
            fleet_proxies=2,
        )
        state = RateLimitState(redis=pool)
        f = RateLimit("svc", spec, state)
        for _ in range(5):
            answer = f.on_request(exchange())
            assert answer is not None and not isinstance(answer, type(None))
            try:
                await answer  # type: ignore[misc]
                outcomes.append(True)
            except RateLimited:
                outcomes.append(False)
        assert state.store_errors == 5
        await pool.aclose()
    return outcomes


async def test_store_errors_allow_deny_or_fall_back_to_a_local_bucket() -> None:
    assert await store_down("allow") == [True] * 5
    assert await store_down("deny") == [False] * 5
    assert await store_down("local") == [True, True, False, False, False]


def test_decisions_are_noted_for_the_access_log_and_counted_for_metrics() -> None:
    spec = RateLimitSpec(key="client_ip", rate_per_s=0.001, burst=1, scope="local")
    state = RateLimitState()
    f = RateLimit("noted", spec, state)
    allowed, refused = exchange(), exchange()
    assert f.on_request(allowed) is None
    with pytest.raises(RateLimited):
        f.on_request(refused)
    assert not allowed.note.rate_limited and refused.note.rate_limited
    assert state.decisions == {("noted", "client_ip"): [1, 1]}  # allowed, denied
    again = RateLimit("noted", spec, state)  # a reload's filter counts on the same numbers
    with pytest.raises(RateLimited):
        again.on_request(exchange())
    assert state.decisions[("noted", "client_ip")] == [1, 2]


async def test_a_reload_that_moves_redis_counts_in_the_new_store() -> None:
    """Another database of the same redis-server stands for another address: after
    `follow_redis`, a rebuilt filter counts there (full again); unchanged settings keep the
    pool (nothing to close)."""
    from httpio.redis_client import RedisPool, RedisSettings
    from tests.support.redisproc import running_redis

    with running_redis() as redis:
        first = RedisPool(RedisSettings(port=redis.port, command_timeout_s=5.0))
        moved = RedisSettings(port=redis.port, db=1, command_timeout_s=5.0)
        same = RedisSettings(port=redis.port, command_timeout_s=5.0)
        state = RateLimitState(redis=first)
        spec = RateLimitSpec(key="service", rate_per_s=0.001, burst=1)

        async def allowed(f: RateLimit) -> bool:
            answer = f.on_request(exchange())
            try:
                await answer  # type: ignore[misc]
            except RateLimited:
                return False
            return True

        assert await allowed(RateLimit("svc", spec, state))
        assert not await allowed(RateLimit("svc", spec, state))
        assert state.follow_redis(same) is None and state.redis is first
        assert state.follow_redis(moved) is first and state.redis.settings == moved
        assert await allowed(RateLimit("svc", spec, state))  # counted in db 1, from full
        assert not await allowed(RateLimit("svc", spec, state))
        assert await state.redis.execute("KEYS", "gw:rl:svc:*") != []
        for pool in (first, state.redis):
            await pool.aclose()


async def test_a_hot_fleet_key_asks_redis_only_to_top_its_lease_up() -> None:
    """1,000 requests of one client through a fleet limit: a request waits for Redis only
    when the key has nothing to spend (the first) or when it left the lease at a quarter
    (it tops it up); each is allowed and noted for the quota fields like any other."""
    from httpio.redis_client import RedisPool, RedisSettings
    from tests.support.redisproc import running_redis

    with running_redis() as redis:
        pool = RedisPool(RedisSettings(port=redis.port, command_timeout_s=5.0))
        state = RateLimitState(redis=pool)
        spec = RateLimitSpec(key="client_ip", rate_per_s=1.0, burst=100_000)
        f = RateLimit("svc", spec, state)
        awaited = 0
        for _ in range(1000):
            ex = exchange()
            answer = f.on_request(ex)
            if answer is not None:
                awaited += 1
                assert await answer is None  # type: ignore[misc]
            assert ex.rate_limits is not None and ex.rate_limits[0][1].allowed
        fleet = state.fleet[("svc", "client_ip")]
        assert fleet.leases.top_ups >= 1 and awaited == fleet.round_trips, fleet.statistics()
        assert fleet.round_trips < 20
        await pool.aclose()
