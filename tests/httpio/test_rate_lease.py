"""`httpio.rate_lease`: how big a lease is, spending it, sending back what an expired one left,
remembered refusals, bounded memory. No event loop: the clock is a number."""

from __future__ import annotations

from httpio.rate_lease import LEASE_CAP, LEASE_MAX, TOP_UP_MIN, Leases, lease_cap, lease_size


def test_a_lease_is_a_small_share_of_the_burst_or_none() -> None:
    assert lease_size(burst=10, fleet_proxies=2) == 1  # too small a burst: exact decisions
    assert lease_size(burst=199, fleet_proxies=1) == 1
    assert lease_size(burst=200, fleet_proxies=1) == 2
    assert lease_size(burst=2000, fleet_proxies=4) == 5  # 4 proxies hold 1 % of it at most
    assert lease_size(burst=1_000_000, fleet_proxies=1) == LEASE_MAX


def test_spend_until_empty_or_expired_then_send_the_rest_back() -> None:
    leases = Leases(ttl_s=0.5)
    assert leases.spend("k", 0.0) is None  # nothing held: ask the fleet
    leases.granted("k", 0.0, tokens=3, remaining=90, reset_s=1.0)
    first = leases.spend("k", 0.1)
    assert first is not None and first.allowed and first.remaining == 92
    assert leases.spend("k", 0.2) is not None
    assert leases.unspent("k", 0.3) == 0  # not expired: nothing to send back
    assert leases.spend("k", 0.6) is None  # expired with one token left
    assert leases.unspent("k", 0.6) == 1 and leases.unspent("k", 0.6) == 0
    assert leases.statistics()["spent_locally"] == 2 and leases.refunded == 1


def test_a_refusal_is_remembered_for_its_wait_at_most_the_ttl() -> None:
    leases = Leases(ttl_s=0.5)
    leases.refused("k", 10.0, retry_after_s=0.2, reset_s=5.0)
    refused = leases.spend("k", 10.1)
    assert refused is not None and not refused.allowed
    assert abs(refused.retry_after_s - 0.1) < 1e-9 and abs(refused.reset_s - 4.9) < 1e-9
    assert leases.spend("k", 10.2) is None  # the wait is over: ask again
    leases.refused("k", 20.0, retry_after_s=1000.0, reset_s=1000.0)
    assert leases.spend("k", 20.49) is not None
    assert leases.spend("k", 20.5) is None  # another proxy's returned tokens may free it sooner
    leases.refused("k", 30.0, retry_after_s=1000.0, reset_s=1000.0)
    leases.clear()  # a reload changed the limit
    assert leases.spend("k", 30.1) is None


def test_memory_is_bounded() -> None:
    leases = Leases(ttl_s=0.5, max_keys=100)
    for i in range(1000):
        leases.granted(f"k{i}", float(i), tokens=2, remaining=0, reset_s=1.0)
        assert len(leases) <= 100
    assert leases.spend("k999", 999.1) is not None  # the newest survive


def test_a_lease_spent_fast_grows_to_its_cap_and_one_left_unspent_shrinks() -> None:
    assert lease_cap(burst=1_000_000, fleet_proxies=1) == LEASE_CAP
    assert lease_cap(burst=2000, fleet_proxies=4) == 5 == lease_size(burst=2000, fleet_proxies=4)
    assert lease_cap(burst=199, fleet_proxies=1) == 1
    leases = Leases(ttl_s=0.5)
    assert leases.want("k", 0.0, start=64, cap=300) == 64  # a new key
    now, asked = 0.0, []
    for _ in range(5):  # each lease spent within a quarter of the ttl: twice as many next
        size = leases.want("k", now, start=64, cap=300)
        asked.append(size)
        leases.granted("k", now, size - 1, remaining=10_000, reset_s=1.0, size=size)
        while leases.spend("k", now + 0.01) is not None:
            pass
        now += 0.1
    assert asked == [64, 128, 256, 300, 300]
    size = leases.want("k", now + 0.2, start=64, cap=300)  # spent, but not fast: kept
    assert size == 300
    leases.granted("k", now, 10, remaining=10_000, reset_s=1.0, size=size)
    assert leases.want("k", now + 0.6, start=64, cap=300) == 150  # expired with 10 left
    assert leases.unspent("k", now + 0.6) == 10
    assert leases.want("k", now + 0.6, start=64, cap=300) == 150  # nothing held: kept
    leases.granted("k", now + 1, 5, remaining=10_000, reset_s=1.0, size=150)
    assert leases.want("k", now + 2, start=64, cap=300) == 75
    leases.granted("k", now + 2, 5, remaining=10_000, reset_s=1.0, size=75)
    assert leases.want("k", now + 3, start=64, cap=300) == 64  # never below the start


def test_a_lease_down_to_a_quarter_is_topped_up_once_and_keeps_its_size() -> None:
    leases = Leases(ttl_s=0.5)
    leases.granted("k", 0.0, tokens=63, remaining=1000, reset_s=1.0, size=64)
    for _ in range(46):  # 17 left: more than a quarter of 64
        assert leases.spend("k", 0.3) is not None
        assert leases.top_up_due("k", 0.3, cap=1024) == 0
    assert leases.spend("k", 0.3) is not None  # 16 left
    assert leases.top_up_due("k", 0.3, cap=1024) == 48  # back to 64, not grown: spent slowly
    assert leases.top_up_due("k", 0.3, cap=1024) == 0  # asked once per lease
    assert leases.spend("k", 0.31) is not None  # the rest is still spent meanwhile
    leases.topped_up("k", 0.4, tokens=48, remaining=900, reset_s=1.0)
    held = leases.spend("k", 0.85)  # the top-up moved the expiry on (0.4 + 0.5)
    assert held is not None and held.remaining == 900 + 15 + 48 - 1
    assert leases.statistics()["top_ups"] == 1
    assert leases.top_up_due("k", 0.85, cap=1024) == 0  # 62 left of 64: none due


def test_a_lease_spent_fast_is_topped_up_to_twice_its_size_within_the_cap() -> None:
    leases = Leases(ttl_s=0.5)
    leases.granted("k", 0.0, tokens=600, remaining=10_000, reset_s=1.0, size=800)
    for _ in range(400):
        assert leases.spend("k", 0.01) is not None
    assert leases.top_up_due("k", 0.01, cap=1000) == 1000 - 200  # grown, capped


def test_no_top_up_for_small_expired_or_refused_leases_and_one_that_failed_waits() -> None:
    leases = Leases(ttl_s=0.5)
    leases.granted("small", 0.0, tokens=1, remaining=10, reset_s=1.0, size=TOP_UP_MIN - 1)
    assert leases.top_up_due("small", 0.1, cap=1024) == 0  # renewed when spent instead
    leases.granted("old", 0.0, tokens=2, remaining=10, reset_s=1.0, size=64)
    assert leases.top_up_due("old", 0.6, cap=1024) == 0  # expired: the usual renewal
    leases.refused("no", 0.0, retry_after_s=0.2, reset_s=1.0)
    assert leases.top_up_due("no", 0.1, cap=1024) == 0
    assert leases.top_up_due("absent", 0.1, cap=1024) == 0
    leases.granted("k", 0.0, tokens=4, remaining=10, reset_s=1.0, size=64)
    assert leases.top_up_due("k", 0.1, cap=1024) > 0  # asked, and it failed (no topped_up)
    assert leases.top_up_due("k", 0.2, cap=1024) == 0  # not again for this lease
    leases.granted("k", 0.3, tokens=4, remaining=10, reset_s=1.0, size=64)  # renewed
    assert leases.top_up_due("k", 0.3, cap=1024) > 0


def test_a_top_up_for_a_key_that_lost_its_lease_is_a_lease_of_its_own() -> None:
    leases = Leases(ttl_s=0.5)
    leases.topped_up("k", 1.0, tokens=5, remaining=50, reset_s=1.0)
    held = leases.spend("k", 1.1)
    assert held is not None and held.allowed and held.remaining == 54


def test_a_top_up_landing_after_a_renewal_never_holds_more_than_the_lease_size() -> None:
    leases = Leases(ttl_s=0.5)
    leases.granted("k", 0.0, tokens=16, remaining=1000, reset_s=1.0, size=64)
    want = leases.top_up_due("k", 0.2, cap=64)
    assert want == 48
    leases.granted("k", 0.3, tokens=63, remaining=900, reset_s=1.0, size=64)  # ran out, renewed
    leases.topped_up("k", 0.31, tokens=want, remaining=850, reset_s=1.0)
    spent = 0
    while leases.spend("k", 0.4) is not None:
        spent += 1
    assert spent == 64
