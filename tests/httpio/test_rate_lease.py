"""`httpio.rate_lease`: how big a lease is, spending it, sending back what an expired one left,
remembered refusals, bounded memory. No event loop: the clock is a number."""

from __future__ import annotations

from httpio.rate_lease import LEASE_CAP, LEASE_MAX, Leases, lease_cap, lease_size


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
