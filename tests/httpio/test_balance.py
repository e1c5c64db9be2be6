"""Load-balancing policies and the service pool, called directly with seeded randomness."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

from httpio.balance import (
    CANONICAL_POLICIES,
    Balancer,
    Endpoint,
    InstanceState,
    ServicePool,
    least_loaded,
    normalize_policy,
)
from httpio.errors import NoHealthyInstance
from httpio.health import Outcome, State
from httpio.settings import HealthSettings
from tests.support.clock import FakeClock

SEED_CONFIG = Path("/work/shared/seed-resources/config.json")


def endpoints(n: int, weights: list[int] | None = None) -> list[Endpoint]:
    weights = weights or [1] * n
    return [Endpoint.parse(f"http://localhost:{5000 + i}", weights[i]) for i in range(n)]


def ports(picks: list[Endpoint | None]) -> list[int]:
    return [p.port - 5000 for p in picks if p is not None]


# -- names --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "canonical"),
    [
        ("random", "random"),
        ("round-robin", "round_robin"),
        ("RoundRobin", "round_robin"),
        ("round robin", "round_robin"),
        ("ip-hash", "ip_hash"),
        ("iphash", "ip_hash"),
        ("url-hash", "url_hash"),
        ("urlhash", "url_hash"),
        ("least-conn", "least_conn"),
        ("P2C", "p2c"),
        ("weighted-round-robin", "weighted_round_robin"),
    ],
)
def test_policy_aliases(name: str, canonical: str) -> None:
    assert normalize_policy(name) == canonical


def test_seed_config_policy_keeps_its_meaning() -> None:
    if not SEED_CONFIG.exists():
        pytest.skip("seed resources not present")
    policy = json.loads(SEED_CONFIG.read_text())["Load_balancer_policy"]
    assert Balancer(policy, endpoints(2)).policy == "random"


def test_unknown_policy_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown load-balancing policy 'fastest'") as info:
        normalize_policy("fastest")
    assert all(name in str(info.value) for name in CANONICAL_POLICIES)


def test_endpoint_parse() -> None:
    assert Endpoint.parse("http://localhost:5000") == Endpoint(
        "http://localhost:5000", "localhost", 5000
    )
    assert Endpoint.parse("http://example.com/", 3) == Endpoint(
        "http://example.com:80", "example.com", 80, 3
    )
    assert Endpoint.parse("http://[::1]:81").url == "http://[::1]:81"
    for bad in ("localhost:5000", "ftp://x:1", "http://"):
        with pytest.raises(ValueError, match="http://host:port"):
            Endpoint.parse(bad)
    with pytest.raises(ValueError, match="weight"):
        Endpoint.parse("http://a:1", 0)


# -- rotation policies --------------------------------------------------------------------------
def test_round_robin_rotates_and_ignores_weights() -> None:
    b = Balancer("round_robin", endpoints(3, [5, 1, 1]))
    assert ports([b.pick() for _ in range(7)]) == [0, 1, 2, 0, 1, 2, 0]


def test_round_robin_stays_fair_when_an_instance_is_skipped() -> None:
    b = Balancer("round_robin", endpoints(4))
    without_1 = [s for s in b.states if s.endpoint.port != 5001]
    picks = [b.pick(without_1 if i % 2 else None) for i in range(8)]
    assert ports(picks) == [0, 2, 3, 0, 1, 2, 3, 0]


def test_smooth_wrr_is_exact_and_interleaved() -> None:
    b = Balancer("weighted_round_robin", endpoints(3, [5, 1, 1]))
    assert ports([b.pick() for _ in range(7)]) == [0, 0, 1, 0, 2, 0, 0]  # nginx's sequence
    counts = Counter(ports([b.pick() for _ in range(7 * 100)]))
    assert counts == {0: 500, 1: 100, 2: 100}


def test_weighted_random_within_5_percent() -> None:
    b = Balancer("random", endpoints(3, [1, 2, 7]), rng=random.Random(42))
    counts = Counter(ports([b.pick() for _ in range(20_000)]))
    for index, share in ((0, 0.1), (1, 0.2), (2, 0.7)):
        assert counts[index] / 20_000 == pytest.approx(share, rel=0.05)


def test_unweighted_random_is_uniform() -> None:
    b = Balancer("random", endpoints(4), rng=random.Random(7))
    counts = Counter(ports([b.pick() for _ in range(20_000)]))
    assert all(c / 20_000 == pytest.approx(0.25, rel=0.05) for c in counts.values())


# -- hashing ------------------------------------------------------------------------------------
def assign(b: Balancer, keys: list[str], policy: str) -> dict[str, int]:
    if policy == "ip_hash":
        return {k: b.pick(client_ip=k).port for k in keys}  # type: ignore[union-attr]
    return {k: b.pick(url=k).port for k in keys}  # type: ignore[union-attr]


@pytest.mark.parametrize("policy", ["ip_hash", "url_hash"])
def test_hash_spreads_evenly(policy: str) -> None:
    keys = [f"10.0.{i // 256}.{i % 256}" for i in range(10_000)]
    counts = Counter(assign(Balancer(policy, endpoints(10)), keys, policy).values())
    assert len(counts) == 10
    assert all(c / 10_000 == pytest.approx(0.1, rel=0.15) for c in counts.values())


@pytest.mark.parametrize("policy", ["ip_hash", "url_hash"])
def test_adding_one_instance_remaps_about_one_nth(policy: str) -> None:
    keys = [f"/img/{i}?size=large" for i in range(10_000)]
    b = Balancer(policy, endpoints(9))
    before = assign(b, keys, policy)
    b.swap_endpoints(endpoints(10))
    after = assign(b, keys, policy)
    moved = [k for k in keys if before[k] != after[k]]
    n = 10
    assert 0.5 / n * len(keys) <= len(moved) <= 1.5 / n * len(keys)
    assert {after[k] for k in moved} == {5009}  # keys only move to the newcomer


def test_removing_one_instance_remaps_only_its_keys() -> None:
    keys = [f"/video/{i}" for i in range(10_000)]
    b = Balancer("url_hash", endpoints(10))
    before = assign(b, keys, "url_hash")
    b.swap_endpoints([e for e in endpoints(10) if e.port != 5003])
    after = assign(b, keys, "url_hash")
    assert {k for k in keys if before[k] != after[k]} == {k for k in keys if before[k] == 5003}


def test_unhealthy_candidate_moves_only_its_keys() -> None:
    keys = [f"192.168.0.{i}" for i in range(256)]
    b = Balancer("ip_hash", endpoints(5))
    before = assign(b, keys, "ip_hash")
    without_2 = [s for s in b.states if s.endpoint.port != 5002]
    after = {k: b.pick(without_2, client_ip=k).port for k in keys}  # type: ignore[union-attr]
    assert {k for k in keys if before[k] != after[k]} == {k for k in keys if before[k] == 5002}


def test_url_hash_ignores_client_ip_and_ip_hash_ignores_url() -> None:
    b = Balancer("url_hash", endpoints(10))
    assert len({b.pick(client_ip=f"10.0.0.{i}", url="/same") for i in range(50)}) == 1
    b = Balancer("ip_hash", endpoints(10))
    assert len({b.pick(client_ip="10.0.0.1", url=f"/p/{i}") for i in range(50)}) == 1


def test_weighted_rendezvous_honours_weights() -> None:
    b = Balancer("ip_hash", endpoints(2, [3, 1]))
    counts = Counter(assign(b, [f"k{i}" for i in range(10_000)], "ip_hash").values())
    assert counts[5000] / 10_000 == pytest.approx(0.75, abs=0.03)


# -- load-aware policies ------------------------------------------------------------------------
def test_least_conn_favours_the_idle_instance() -> None:
    b = Balancer("least_conn", endpoints(3))
    b.states[0].in_flight = 4
    b.states[2].in_flight = 1
    assert ports([b.pick()]) == [1]
    b.states[1].in_flight = 1
    assert sorted(ports([b.pick(), b.pick()])) == [1, 2]  # tie: rotate


def test_least_conn_counts_per_unit_of_weight() -> None:
    b = Balancer("least_conn", endpoints(2, [4, 1]))
    b.states[0].in_flight = 3  # 0.75 per weight unit < 1
    b.states[1].in_flight = 1
    assert ports([b.pick()]) == [0]


def test_p2c_never_picks_the_busy_instance_when_an_idle_one_is_drawn() -> None:
    b = Balancer("p2c", endpoints(3), rng=random.Random(1))
    b.states[0].in_flight = 10
    assert 0 not in ports([b.pick() for _ in range(1000)])


def test_p2c_prefers_lower_latency() -> None:
    b = Balancer("p2c", endpoints(2), rng=random.Random(1))
    b.states[0].ewma_s, b.states[1].ewma_s = 0.100, 0.010
    assert set(ports([b.pick() for _ in range(100)])) == {1}


def test_instance_state_ewma_and_failure_penalty() -> None:
    s = InstanceState(Endpoint.parse("http://a:1"))
    s.begin()
    s.end(0.1, ok=True)
    assert s.ewma_s == pytest.approx(0.1) and s.in_flight == 0
    s.begin()
    s.end(0.2, ok=True)
    assert s.ewma_s == pytest.approx(0.1 + 0.3 * 0.1)
    s.begin()
    s.end(0.001, ok=False)  # a fast failure counts as twice the EWMA
    assert s.ewma_s == pytest.approx(0.13 + 0.3 * 0.13) and s.failures == 1
    s.begin()
    s.end(None, ok=False)  # cancelled: frees the slot, no sample
    assert s.requests == 3 and s.in_flight == 0
    assert repr(s) == "<InstanceState http://a:1 w=1 in_flight=0 ewma=169.0ms>"


def test_swap_keeps_state_of_unchanged_endpoints() -> None:
    b = Balancer("least_conn", endpoints(3))
    b.states[1].in_flight = 2
    b.swap_endpoints([*endpoints(3, [1, 5, 1])[1:], Endpoint.parse("http://localhost:6000")])
    assert [s.endpoint.port for s in b.states] == [5001, 5002, 6000]
    assert b.states[0].in_flight == 2 and b.states[0].endpoint.weight == 5
    assert b.weighted


def test_duplicate_urls_merge_their_weights() -> None:
    b = Balancer("weighted_round_robin", [*endpoints(2), Endpoint.parse("http://localhost:5000")])
    assert [(s.endpoint.port, s.endpoint.weight) for s in b.states] == [(5000, 2), (5001, 1)]


def test_empty_candidates_pick_nothing() -> None:
    b = Balancer("p2c", [])
    assert b.pick() is None
    assert repr(b) == "<Balancer p2c instances=0 picks=0>"


# -- the service pool ---------------------------------------------------------------------------
def pool(
    n: int = 3, policy: str = "round_robin", **health: object
) -> tuple[ServicePool, FakeClock]:
    clock = FakeClock()
    settings = HealthSettings(**health)  # type: ignore[arg-type]
    return ServicePool("image", endpoints(n), policy=policy, health=settings, clock=clock), clock


def test_pool_excludes_instances_already_tried() -> None:
    p, _ = pool(3)
    first = p.pick()
    second = p.pick(exclude=[first])
    third = p.pick(exclude=[first, second])
    assert len({first, second, third}) == 3
    assert p.pick(exclude=[first, second, third]) in {first, second, third}  # all tried: repeat


def test_pool_skips_ejected_and_retries_a_healthy_one_over_an_ejected_one() -> None:
    p, _ = pool(2, consecutive_failures=1)
    bad, good = p.endpoints
    p.begin(bad)
    p.end(bad, Outcome.CONNECT_FAILURE, 0.001)
    assert p.health.state(bad.url) is State.EJECTED
    assert {p.pick() for _ in range(5)} == {good}
    assert p.pick(exclude=[good]) == good


def test_pool_probing_gets_one_trial_then_recovers() -> None:
    p, clock = pool(2, consecutive_failures=1)
    bad, good = p.endpoints
    p.end(bad, Outcome.SERVER_ERROR, 0.01)
    clock.now += 10.0
    assert p.pick() == bad  # round robin reaches the probing instance
    p.begin(bad)
    assert {p.pick() for _ in range(4)} == {good}  # trial in flight: nobody else goes there
    assert p.end(bad, Outcome.SUCCESS, 0.01) is not None
    assert p.health.state(bad.url) is State.HEALTHY


def test_pool_panic_mode_spreads_over_all() -> None:
    p, _ = pool(2, fall=1)
    for ep in p.endpoints:
        p.record_check(ep, False)
    assert {p.pick() for _ in range(4)} == set(p.endpoints)
    assert p.panics == 4


def test_pool_without_panic_raises_no_healthy_instance() -> None:
    p, _ = pool(2, fall=1, panic=False)
    for ep in p.endpoints:
        p.record_check(ep, False)
    with pytest.raises(NoHealthyInstance, match="image") as info:
        p.pick()
    assert info.value.status == 503
    empty = ServicePool("empty", [], clock=FakeClock())
    with pytest.raises(NoHealthyInstance):
        empty.pick()


def test_pool_swap_keeps_health_and_forgets_removed() -> None:
    p, _ = pool(3, fall=1)
    a, b, c = p.endpoints
    p.record_check(b, False)
    p.begin(c)
    p.swap_endpoints([b, c, Endpoint.parse("http://localhost:7000")])
    assert p.health.state(b.url) is State.EJECTED
    assert sorted(p.health.keys()) == sorted(e.url for e in p.endpoints)
    assert p.end(a, Outcome.SUCCESS, 0.01) is None  # in flight across the reload: ignored
    p.end(c, Outcome.SUCCESS, 0.01)
    assert p.balancer.states[1].in_flight == 0 and p.balancer.states[1].requests == 1


def test_pool_statistics_and_repr() -> None:
    p, _ = pool(2, policy="least-conn", consecutive_failures=1)
    first = p.endpoints[0]
    p.begin(first)
    p.end(first, Outcome.RESET, 0.05)
    p.begin(p.endpoints[1])
    stats = p.statistics()
    assert stats["policy"] == "least_conn"
    inst = stats["instances"]
    assert isinstance(inst, list)
    assert inst[0]["state"] == "ejected" and inst[0]["ejections"] == 1
    assert inst[0]["latency_ewma_s"] == 0.05 and inst[1]["in_flight"] == 1
    assert repr(p) == (
        "<ServicePool image least_conn <HealthTracker healthy=1 ejected=1> in_flight=1 panics=0>"
    )


def test_pool_policy_can_change_at_runtime() -> None:
    p, _ = pool(3)
    p.set_policy("ip-hash")
    assert len({p.pick(client_ip="1.2.3.4") for _ in range(10)}) == 1


# -- where a retry goes -------------------------------------------------------------------------
def serve_ok(p: ServicePool, clock: FakeClock, ep: Endpoint) -> None:
    clock.now += 0.001
    p.begin(ep)
    p.end(ep, Outcome.SUCCESS, 0.001)


def test_retry_skips_tried_ejected_suspect_and_recently_failed() -> None:
    p, clock = pool(5, recently_failed_s=5.0)
    e = p.endpoints
    for ep in e:
        serve_ok(p, clock, ep)
    for _ in range(3):  # e1: ejected
        p.end(e[1], Outcome.CONNECT_FAILURE, 0.001)
    p.end(e[2], Outcome.TIMEOUT, 2.0)  # e2: suspect
    p.end(e[3], Outcome.RESET, 0.01)  # e3: failed 1 s ago, healthy again since
    serve_ok(p, clock, e[3])
    clock.now += 1.0
    assert [p.health.state(x.url) for x in e[1:4]] == [State.EJECTED, State.SUSPECT, State.HEALTHY]
    assert {p.pick_retry([e[0]]) for _ in range(5)} == {e[4]}
    # Nothing fit for a retry left: any usable instance not yet tried will do...
    assert {p.pick_retry([e[0], e[4]]) for _ in range(6)} == {e[2], e[3]}
    # ...and when every usable one was tried, there is no retry at all.
    assert p.pick_retry([e[0], e[2], e[3], e[4]]) is None
    clock.now += 5.0  # e3's failure is old news now
    assert p.pick_retry([e[0], e[4]]) == e[3]


def test_retry_goes_to_the_instance_that_answered_last() -> None:
    p, clock = pool(4)
    a, b, c, d = p.endpoints
    for ep in (d, b, c):
        serve_ok(p, clock, ep)
    assert p.pick_retry([a]) == c
    serve_ok(p, clock, b)
    assert p.pick_retry([a]) == b and p.pick_retry([a, b]) == c
    fresh, _ = pool(3)  # nobody answered yet: the policy chooses among the fit ones
    first = fresh.endpoints[0]
    assert {fresh.pick_retry([first]) for _ in range(4)} == set(fresh.endpoints[1:])


def test_two_adjacent_dead_instances_cost_round_robin_no_request() -> None:
    """Issue 9 item 4: round robin, one retry, instances 1 and 2 of 5 dead. The balancer's
    next pick after instance 1 is instance 2; a retry must not follow it there."""
    p, clock = pool(5)
    e = p.endpoints
    dead = {e[1], e[2]}
    for ep in e:  # traffic before the kill
        serve_ok(p, clock, ep)
    failed = 0
    for _ in range(50):
        first = p.pick()
        tried = [first]
        if first in dead:
            p.begin(first)
            p.end(first, Outcome.CONNECT_FAILURE, 0.0001)
            retry = p.pick_retry(tried)
            assert retry is not None
            tried.append(retry)
        if tried[-1] in dead:
            failed += 1
            p.end(tried[-1], Outcome.CONNECT_FAILURE, 0.0001)
        else:
            serve_ok(p, clock, tried[-1])
    assert failed == 0
    assert [p.health.state(x.url) for x in e] == [
        State.HEALTHY,
        State.EJECTED,
        State.EJECTED,
        State.HEALTHY,
        State.HEALTHY,
    ]


def test_no_healthy_instance_says_when_to_come_back() -> None:
    p, _ = pool(1, fall=1, panic=False)
    p.record_check(p.endpoints[0], False)
    with pytest.raises(NoHealthyInstance) as info:
        p.pick()
    assert info.value.headers == ((b"retry-after", b"1"),)


def test_pool_takes_new_health_settings_and_keeps_states() -> None:
    p, _ = pool(2, consecutive_gateway_failures=3)
    bad = p.endpoints[0]
    p.end(bad, Outcome.TIMEOUT, 2.0)
    p.set_health(HealthSettings(consecutive_gateway_failures=2))
    assert p.health.state(bad.url) is State.SUSPECT
    p.end(bad, Outcome.TIMEOUT, 2.0)
    assert p.health.state(bad.url) is State.EJECTED


# -- least_loaded: the ELB's spread over one proxy's workers ----------------------------------
def test_least_loaded_takes_the_smallest_count() -> None:
    assert least_loaded([3, 1, 2], turn=0) == 1
    assert least_loaded([3, 1, 2], turn=2) == 1


def test_least_loaded_rotates_through_ties_with_the_turn() -> None:
    assert [least_loaded([0, 0, 0], turn) for turn in range(6)] == [0, 1, 2, 0, 1, 2]
    assert [least_loaded([1, 0, 0], turn) for turn in range(3)] == [1, 1, 2]


def test_least_loaded_of_one() -> None:
    assert least_loaded([7], turn=5) == 0
