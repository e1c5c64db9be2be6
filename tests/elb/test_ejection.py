"""`elb.ejection`: the ELB's rules for which proxies take connections, fed evidence by hand.
No event loop, no sockets, no clock: the rules count evidence, not time."""

from __future__ import annotations

import msgspec
import pytest

from elb.ejection import TRANSITIONS, Change, Evidence, ProxyHealth, Verdict
from elb.main import ELB_HEALTH
from httpio.settings import HealthSettings

PASS, MISS, GONE = Evidence.PROBE_PASSED, Evidence.PROBE_FAILED, Evidence.GONE
A, B, C, D = "http://127.0.0.1:6000", "http://127.0.0.1:6001", "http://h:6002", "http://h:6003"


def feed(health: ProxyHealth, key: str, *evidence: Evidence) -> list[Change]:
    return [c for e in evidence if (c := health.observe(key, e)) is not None]


def usable(health: ProxyHealth) -> tuple[str, ...]:
    return health.usable


def region(*keys: str, **settings: object) -> ProxyHealth:
    chosen: HealthSettings = msgspec.structs.replace(ELB_HEALTH, **settings)
    return ProxyHealth(chosen, keys)


def test_the_elb_settings_are_fall_3_rise_2_half_the_region_and_panic() -> None:
    assert (ELB_HEALTH.fall, ELB_HEALTH.rise) == (3, 2)
    assert ELB_HEALTH.max_ejection_percent == 50
    assert ELB_HEALTH.panic
    assert ELB_HEALTH.interval_s == 0.5  # out within ~1.5 s of the first miss


def test_one_or_two_missed_probes_change_nothing() -> None:
    health = region(A, B)
    assert feed(health, A, MISS, MISS) == []
    assert usable(health) == (A, B)
    assert feed(health, A, PASS, MISS, MISS) == []  # a pass restarts the count
    assert health.verdict(A) is Verdict.UP


def test_fall_misses_take_a_proxy_out_and_rise_passes_bring_it_back() -> None:
    health = region(A, B)
    assert feed(health, A, MISS, MISS, MISS) == [Change(A, Verdict.UP, Verdict.FAILING, MISS)]
    assert usable(health) == (B,)
    assert feed(health, A, PASS) == []
    assert feed(health, A, MISS, PASS) == []  # passes must come in a row
    assert usable(health) == (B,)
    assert feed(health, A, PASS) == [Change(A, Verdict.FAILING, Verdict.UP, PASS)]
    assert usable(health) == (A, B)


def test_hard_evidence_takes_a_proxy_out_at_once() -> None:
    health = region(A, B)
    assert feed(health, A, GONE) == [Change(A, Verdict.UP, Verdict.DOWN, GONE)]
    assert usable(health) == (B,)
    assert feed(health, A, PASS) == []
    assert feed(health, A, PASS) == [Change(A, Verdict.DOWN, Verdict.UP, PASS)]


def test_probe_evidence_never_takes_the_whole_region_out() -> None:
    """The idle-connection burst: both proxies busy, both miss their probes."""
    health = region(A, B)
    feed(health, A, MISS, MISS, MISS)
    feed(health, B, MISS, MISS, MISS)
    assert health.verdict(B) is Verdict.FAILING
    assert usable(health) == (B,)  # A failed first and went; B is held in
    assert health.held == (B,)
    assert not health.panicking
    feed(health, A, PASS, PASS)  # A is back: B may go now
    assert usable(health) == (A,)
    assert not health.held


def test_at_most_the_configured_share_goes_on_probes_but_always_one() -> None:
    health = region(A, B, C, D)  # 50 % of 4: two may go
    for key in (C, A, D):
        feed(health, key, MISS, MISS, MISS)
    assert set(usable(health)) == {B, D}
    assert health.held == (D,)
    lone = region(A)  # 50 % of 1 rounds down to none, but one may always go
    feed(lone, A, MISS, MISS, MISS)
    assert lone.verdict(A) is Verdict.FAILING


def test_a_dead_proxy_counts_against_the_share_but_is_never_held() -> None:
    health = region(A, B)
    feed(health, A, MISS, MISS, MISS)
    assert usable(health) == (B,)
    feed(health, B, GONE)  # B died: the sick-but-alive A is better than nothing
    assert usable(health) == (A,)
    assert health.held == (A,)
    assert not health.panicking


def test_panic_when_nothing_is_usable_sends_to_every_proxy() -> None:
    health = region(A, B)
    feed(health, A, GONE)
    feed(health, B, GONE)
    assert health.panicking and health.panics == 1
    assert usable(health) == (A, B)
    feed(health, A, MISS)  # no new verdict: the panic goes on, counted once
    assert health.panics == 1
    feed(health, A, PASS, PASS)
    assert not health.panicking and usable(health) == (A,)
    lone = region(A)
    feed(lone, A, MISS, MISS, MISS)
    assert usable(lone) == (A,) and lone.panicking


def test_without_panic_an_empty_region_has_nothing_usable() -> None:
    health = region(A, B, panic=False)
    feed(health, A, GONE)
    feed(health, B, GONE)
    assert usable(health) == () and not health.panicking


def test_a_failing_proxy_that_dies_is_down() -> None:
    health = region(A, B)
    feed(health, A, MISS, MISS, MISS)
    assert feed(health, A, GONE) == [Change(A, Verdict.FAILING, Verdict.DOWN, GONE)]
    assert feed(health, A, MISS, MISS, MISS) == []  # down stays down until it passes


def test_unknown_keys_are_ignored() -> None:
    health = region(A)
    assert health.observe("http://elsewhere:1", GONE) is None
    assert usable(health) == (A,)


@pytest.mark.parametrize("verdict", list(Verdict))
def test_hard_evidence_is_never_ignored(verdict: Verdict) -> None:
    rule = TRANSITIONS.get((verdict, GONE))
    assert verdict is Verdict.DOWN or (rule is not None and rule[1] is Verdict.DOWN)


def test_statistics_and_repr_explain_the_region() -> None:
    health = region(A, B)
    feed(health, A, MISS, MISS, MISS)
    feed(health, B, MISS, MISS, MISS)
    stats = health.statistics()
    assert stats["usable"] == [B] and stats["held"] == [B]
    assert stats["proxies"] == {
        A: {"verdict": "failing", "passes": 0, "misses": 3, "falls": 1},
        B: {"verdict": "failing", "passes": 0, "misses": 3, "falls": 1},
    }
    assert repr(health) == "<ProxyHealth failing=2 usable=1>"
