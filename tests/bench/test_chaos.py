"""The pure parts of `make chaos`: windows, baseline, recovery time, rows, the table, the
RESULTS.md block, the request mix and the topology on free ports. No fleet."""

from __future__ import annotations

import argparse
import os

import pytest

from bench.chaos import FAULTS, Injection, Phases, bins_of, load_mix, parse_faults
from bench.chaos_fleet import NETNS_MARK, isolate, remap_urls
from bench.chaos_load import Record, error_kind, interleave
from bench.chaos_measure import (
    Baseline,
    FaultRow,
    Recovery,
    RecoveryRule,
    bad_bins,
    baseline_of,
    format_fault_table,
    in_baseline,
    in_fault_window,
    percentile,
    recovery,
    recovery_time,
    replace_block,
    summarize,
)

RATE = 100  # requests per second in the synthetic loads below


def steady(t_from: float, t_to: float, latency_s: float = 0.005) -> list[Record]:
    n = round((t_to - t_from) * RATE)
    return [Record(t_from + i / RATE, "ka-cached", 200, "", latency_s) for i in range(n)]


def failing(t_from: float, t_to: float, kind: str = "502 upstream_unreachable") -> list[Record]:
    n = round((t_to - t_from) * RATE)
    return [Record(t_from + i / RATE, "new-uncached", 502, kind, 0.002) for i in range(n)]


def replace_span(
    records: list[Record], t_from: float, t_to: float, new: list[Record]
) -> list[Record]:
    return sorted([r for r in records if not t_from <= r.t < t_to] + new, key=lambda r: r.t)


CLEAN = Baseline(requests=1000, failure_rate=0.0, p99_s=0.005)


# -- percentile and baseline ---------------------------------------------------------------------
def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile(values, 50) == 50.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 99) is None


def test_baseline_counts_failures_and_p99():
    records = steady(0, 9.9) + failing(9.9, 10)
    base = baseline_of(records)
    assert base.requests == 1000
    assert base.failure_rate == pytest.approx(0.01)
    assert base.p99_s == 0.005


def test_a_request_in_flight_at_the_fault_belongs_to_the_fault_not_the_baseline():
    cut = Record(9.99, "signin", 0, "conn_reset", 0.05)  # sent before t0=10, ended after
    done = Record(9.90, "ka-cached", 200, "", 0.005)
    assert in_fault_window(cut, 10.0, 20.0, settle_s=5.0)
    assert not in_baseline(cut, 10.0, settle_s=5.0)
    assert in_baseline(done, 10.0, settle_s=5.0)
    assert not in_fault_window(done, 10.0, 20.0, settle_s=5.0)
    old = Record(1.0, "ka-uncached", 200, "", 30.0)  # stalled since before the settle period
    assert not in_fault_window(old, 10.0, 20.0, settle_s=5.0)


# -- recovery time -------------------------------------------------------------------------------
def test_no_disturbance_is_zero_recovery():
    records = steady(0, 40)
    assert recovery_time(records, 10.0, 40.0, CLEAN) == 0.0


def test_failures_end_recovery_at_the_end_of_their_last_bin():
    records = replace_span(steady(0, 40), 10.0, 12.3, failing(10.0, 12.3))
    # failures until 12.3 s: the bin [12, 13) is the last bad one
    assert recovery_time(records, 10.0, 40.0, CLEAN) == 3.0


def test_one_failure_is_enough_when_the_baseline_was_clean():
    records = [*steady(0, 40), Record(17.5, "signin", 503, "503 auth_unavailable", 0.01)]
    assert recovery_time(records, 10.0, 40.0, CLEAN) == 8.0


def test_failures_at_the_baseline_rate_are_not_a_disturbance():
    noisy = Baseline(requests=1000, failure_rate=0.02, p99_s=0.005)
    records = steady(0, 40)
    records.append(Record(20.5, "new-cached", 0, "conn_reset", 0.001))  # 1 in ~100 per bin
    assert recovery_time(records, 10.0, 40.0, noisy) == 0.0


def test_slow_requests_are_bad_only_above_the_latency_limit():
    rule = RecoveryRule()
    assert rule.latency_limit_s(CLEAN) == pytest.approx(0.105)  # p99 + 100 ms beats 3 x p99
    assert rule.latency_limit_s(Baseline(1000, 0.0, 0.2)) == pytest.approx(0.6)
    slowish = replace_span(steady(0, 40), 15.0, 16.0, steady(15.0, 16.0, latency_s=0.1))
    assert recovery_time(slowish, 10.0, 40.0, CLEAN) == 0.0
    stalled = replace_span(steady(0, 40), 15.0, 16.0, steady(15.0, 16.0, latency_s=2.0))
    assert recovery(stalled, 10.0, 40.0, CLEAN) == Recovery(6.0, "latency")


def test_a_stall_is_charged_to_the_second_it_was_sent_in():
    # requests sent in [10, 11) waited 20 s: the disturbance is when they were sent
    records = replace_span(steady(0, 40), 10.0, 11.0, steady(10.0, 11.0, latency_s=20.0))
    verdicts = bad_bins(records, 10.0, 40.0, CLEAN, RecoveryRule())
    assert verdicts[0] and not any(verdicts[1:])
    assert recovery_time(records, 10.0, 40.0, CLEAN) == 1.0


def test_a_few_slow_requests_in_a_bin_do_not_move_its_p99():
    records = steady(0, 40)
    records += [Record(20.5, "signin", 200, "", 0.5)]  # 1 of 101 in its bin
    assert recovery_time(records, 10.0, 40.0, CLEAN) == 0.0


def test_still_disturbed_at_the_end_of_the_window_is_not_recovered():
    records = replace_span(steady(0, 40), 38.0, 40.0, failing(38.0, 40.0))
    assert recovery(records, 10.0, 40.0, CLEAN) == Recovery(None, "failures")


def test_requests_in_flight_at_the_fault_count_in_the_first_bin():
    records = [*steady(0, 40), Record(9.98, "signin", 0, "conn_reset", 0.05)]
    assert recovery_time(records, 10.0, 40.0, CLEAN, settle_s=5.0) == 1.0
    assert recovery_time(records, 10.0, 40.0, CLEAN, settle_s=0.0) == 0.0


# -- rows and the table --------------------------------------------------------------------------
def test_summarize_counts_the_fault_window_only():
    records = steady(0, 40)
    records = replace_span(records, 10.0, 10.5, failing(10.0, 10.5, "conn_refused"))
    records.append(Record(5.0, "ka-cached", 502, "502 upstream_unreachable", 0.001))  # before
    records.append(Record(12.0, "ka-uncached", 200, "", 0.004, "BYPASS"))
    records.append(Record(13.0, "ka-uncached", 200, "", 0.004, "", retried="conn_reset"))
    row = summarize(
        "elb-kill", "ELB SIGKILL", records, t0=10.0, t_end=40.0, settle_s=10.0, back_s=0.714
    )
    assert row.sent == 3002
    assert row.failed == 50
    assert row.failed_by_kind == {"conn_refused": 50}
    assert row.bypass == 1 and row.retried == 1
    assert row.back_s == 0.71
    assert row.recovery_s == 1.0 and row.recovery_cause == "failures"
    assert row.baseline_p99_ms == 5.0
    assert row.max_ms == 5.0 and row.window_s == 30.0


def test_the_table_has_one_row_per_fault_and_says_not_recovered():
    rows = [
        FaultRow("none", "control", 4200, 0, {}, 0, 0, 5.1, 6.2, 40.0, None, 0.0, 45.0),
        FaultRow(
            "backend-stop",
            "backend SIGSTOP 20 s",
            7000,
            3,
            {"504 upstream_timeout": 2, "conn_reset": 1},
            0,
            0,
            5.0,
            19990.0,
            20010.5,
            None,
            None,
            50.0,
        ),
        FaultRow(
            "redis-stop",
            "Redis",
            5600,
            0,
            {},
            0,
            700,
            12.0,
            15.0,
            208.0,
            None,
            1.0,
            40.0,
            load1=1.2,
            recovery_cause="latency",
        ),
    ]
    table = format_fault_table(rows).splitlines()
    assert len(table) == 4
    assert table[0].rstrip().endswith("recovery s  load")
    assert table[0].split()[:3] == ["fault", "sent", "failed"]
    assert table[1].startswith("none ")
    assert "504 upstream_timeout: 2, conn_reset: 1" in table[2]
    assert table[2].rstrip().endswith(">50     -")
    assert table[1].rstrip().endswith(" 0     -")
    assert table[3].rstrip().endswith("1 lat   1.2")
    assert len({len(line) for line in table}) == 1  # fixed width


def test_bins_are_whole_seconds_around_the_fault():
    records = replace_span(steady(0, 40), 10.0, 10.5, failing(10.0, 10.5))
    injection = Injection("elb-kill", t0=10.0, t_end=13.0, settle_s=2.5)
    bins = bins_of(injection, records)
    assert [b[0] for b in bins] == [-2, -1, 0, 1, 2]
    assert bins[2][1:3] == [100, 50]
    assert bins[0][1:3] == [100, 0]


# -- RESULTS.md ------------------------------------------------------------------------------------
def test_the_block_is_appended_once_then_replaced_in_place():
    doc = "# Measured results\n\nsome text\n"
    once = replace_block(doc, "chaos", "chaos", "first table")
    assert once.startswith(doc.rstrip())
    assert once.count("<!-- chaos:begin") == 1 and "first table" in once
    after = once + "\n## Later section\n"
    twice = replace_block(after, "chaos", "chaos", "second table")
    assert "first table" not in twice and "second table" in twice
    assert twice.count("<!-- chaos:begin") == 1
    assert twice.index("second table") < twice.index("## Later section")
    both = replace_block(twice, "soak", "soak", "soak table")
    assert "second table" in both and "soak table" in both


# -- the mix, the faults, the options ------------------------------------------------------------
def test_interleave_follows_the_weights_smoothly():
    mix = load_mix(140)
    first = [c.name for c, _ in zip(interleave(mix), range(142), strict=False)]
    assert first.count("signin") == 2
    assert {first.count(n) for n in ("ka-cached", "ka-uncached", "new-cached")} == {35}
    assert "signin" not in first[:10]  # spread, not bunched at the start


def test_error_kind_names_the_gateway_error():
    assert error_kind(200, b"") == ""
    assert error_kind(304, b"") == ""
    body = b'{"status": 503, "error": "no_healthy_instance", "detail": "x"}'
    assert error_kind(503, body) == "503 no_healthy_instance"
    assert error_kind(502, b"<html>bad gateway</html>") == "502"
    assert error_kind(500, b"[1, 2]") == "500"


def test_parse_faults_keeps_the_order_and_refuses_unknown_names():
    assert parse_faults("elb-kill, none") == ["elb-kill", "none"]
    with pytest.raises(argparse.ArgumentTypeError, match="proxy-kil"):
        parse_faults("proxy-kil")
    assert next(iter(FAULTS)) == "none"


def test_duration_scale_shortens_every_phase():
    short = Phases().scaled(0.5)
    assert short.settle_s == 7.5 and short.backend_stop_s == 10.0 and short.window_s == 15.0


def test_remap_urls_changes_only_mapped_local_ports():
    text = 'instance:\n  - "http://localhost:5000"\n  - {url: "http://127.0.0.1:5001"}\n'
    text += '  - "http://example.test:5000"\n  - "http://localhost:7777"\n'
    out = remap_urls(text, {5000: 41000, 5001: 41001})
    assert '"http://localhost:41000"' in out and '"http://127.0.0.1:41001"' in out
    assert "example.test:5000" in out and "localhost:7777" in out


def test_without_root_the_fleet_stays_on_the_host_and_says_so(monkeypatch):
    monkeypatch.delenv(NETNS_MARK, raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)

    def no_exec(*args: object) -> None:
        raise AssertionError("must not re-exec without root")

    monkeypatch.setattr(os, "execvp", no_exec)
    note = isolate("bench.chaos", [])
    assert "not root" in note and "127.0.0.1" in note


def test_signins_count_as_requests_but_not_in_latencies():
    records = steady(0, 40)
    records += [Record(t + 0.5, "signin", 200, "", 0.9, signin=True) for t in range(40)]
    records += [Record(t + 0.6, "signin+token", 200, "", 0.9, signin=True) for t in range(40)]
    row = summarize("none", "control", records, t0=10.0, t_end=40.0, settle_s=10.0, back_s=None)
    assert row.sent == 3062  # 3000 GETs, 30 + 30 signins, 2 still in flight at t0
    assert row.baseline_p99_ms == 5.0 and row.p99_ms == 5.0 and row.max_ms == 5.0
    assert row.recovery_s == 0.0
    failed = [*records, Record(20.5, "signin", 502, "502 upstream_unreachable", 0.01, signin=True)]
    assert recovery_time(failed, 10.0, 40.0, CLEAN) == 11.0
