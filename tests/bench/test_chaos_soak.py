"""The pure parts of `make soak`: the trend tests, the verdict table, the fill plan, and
reading /proc (of this very process)."""

from __future__ import annotations

import os

import pytest

from bench.chaos_load import Record
from bench.soak import (
    MiB,
    Sample,
    count_fds,
    fd_trend,
    format_verdicts,
    load_summary,
    plan_fill,
    read_rss_bytes,
    rss_trend,
    soak_streams,
    thirds,
    verdicts,
)


def test_thirds_put_the_remainder_in_the_warmup():
    cut = thirds([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
    assert cut is not None
    assert cut.warmup == [1, 2, 3, 4, 5]
    assert cut.middle == [6, 7, 8]
    assert cut.last == [9, 10, 11]
    assert thirds([1, 2]) is None


def test_growth_during_the_warmup_is_not_a_trend():
    # a cache filling to its cap in the first third, then flat
    series = [35, 60, 85, 100, 101, 100, 101, 102, 101, 100, 101, 101, 102, 101, 100]
    trend = rss_trend(series)
    assert trend is not None and not trend.trending
    assert trend.change == pytest.approx(0.0, abs=0.01)


def test_steady_growth_is_a_trend():
    series = [36 + 2.7 * minute for minute in range(21)]  # issue 9: 2.7 MiB/min
    trend = rss_trend(series)
    assert trend is not None and trend.trending
    assert trend.change > 0.10


def test_the_rss_threshold_is_ten_percent_of_the_middle_mean():
    assert not rss_trend([50, 50, 50, 100, 100, 100, 110, 110, 110]).trending  # type: ignore[union-attr]
    assert rss_trend([50, 50, 50, 100, 100, 100, 111, 111, 111]).trending  # type: ignore[union-attr]
    assert not rss_trend([100, 100, 100, 100, 100, 100, 80, 80, 80]).trending  # type: ignore[union-attr]


def test_fd_growth_beyond_the_slack_is_growth():
    assert not fd_trend([25, 28, 30, 29, 31, 30, 33, 29, 31]).trending  # type: ignore[union-attr]
    leak = [25 + 4 * i for i in range(21)]  # 4 fds per sample
    assert fd_trend(leak).trending  # type: ignore[union-attr]
    assert fd_trend([10, 10]) is None


def sample(t: float, pid: int, rss_mib: float, fds: int, name: str = "proxy-ko_KR-1") -> Sample:
    return Sample(t, {name: pid}, {name: int(rss_mib * MiB)}, {name: fds}, {})


def test_verdicts_and_their_table():
    samples = [sample(30 * i, 100, 36 + 3 * i, 25) for i in range(9)]
    (v,) = verdicts(samples)
    assert v.name == "proxy-ko_KR-1" and not v.restarted
    assert v.rss is not None and v.rss.trending
    assert v.fd is not None and not v.fd.trending
    table = format_verdicts([v]).splitlines()
    assert len(table) == 2 and "TRENDS UP" in table[1] and table[1].rstrip().endswith("flat")


def test_a_restarted_process_says_so_instead_of_a_trend():
    samples = [sample(30 * i, 100 if i < 5 else 200, 36, 25) for i in range(9)]
    (v,) = verdicts(samples)
    assert v.restarted and v.pids == [100, 200]
    assert "RESTARTED" in format_verdicts([v])


def test_the_fill_reaches_the_cap_in_a_third_of_its_lifetime():
    plan = plan_fill(10, fill_rate=20, cap_bytes=64 * MiB, proxies=2, max_object_bytes=MiB)
    assert plan.ttl_s == 200
    per_proxy_per_s = 20 / 2 * plan.body_bytes
    assert per_proxy_per_s * plan.ttl_s / 3 == pytest.approx(64 * MiB, rel=0.01)
    short = plan_fill(1, fill_rate=20, cap_bytes=64 * MiB, proxies=2, max_object_bytes=MiB)
    assert short.ttl_s == 30 and short.body_bytes == MiB // 2  # storable, not huge


def test_each_new_url_stream_goes_to_one_proxy():
    plan = plan_fill(10, 20, 64 * MiB, 1, MiB)
    mix, fill, expiring = soak_streams(100, 40, plan, ["proxy-a", "proxy-b"])
    assert mix.target is None and {c.name for c in mix.classes} >= {"ka-cached", "signin"}
    assert fill.target == "proxy-a" and expiring.target == "proxy-b"
    (f,) = fill.classes
    (e,) = expiring.classes
    assert f"/bytes/{plan.body_bytes}?fill=3&" in f.path.format(n=3)
    assert "cache-control=public%2C%20max-age%3D200" in f.path
    assert e.path.format(n=7).endswith("/index.html?soak=7")
    assert f.weight == e.weight == 20
    _, alone_fill, alone_expiring = soak_streams(100, 40, plan, ["proxy-a"])
    assert alone_fill.target == alone_expiring.target == "proxy-a"


def test_the_table_names_each_proxy_role():
    samples = [sample(30 * i, 100, 36, 25) for i in range(6)]
    table = format_verdicts(verdicts(samples), {"proxy-ko_KR-1": "fill"})
    assert "proxy-ko_KR-1 (fill)" in table


def test_proc_readings_of_this_process():
    rss = read_rss_bytes(os.getpid())
    fds = count_fds(os.getpid())
    assert rss is not None and rss > MiB
    assert fds is not None and fds >= 3
    assert read_rss_bytes(2**22 + 12345) is None  # above pid_max: no such process


def test_the_request_summary_times_the_gets_and_counts_everything():
    records = [Record(i / 10, "ka-cached", 200, "", 0.004, "HIT") for i in range(100)]
    records.append(Record(3.0, "signin", 200, "", 0.25, signin=True))
    records.append(Record(4.0, "ka-uncached", 502, "502 upstream_unreachable", 0.002, "MISS"))
    summary = load_summary(records)
    assert summary["sent"] == 102 and summary["failed"] == 1
    assert summary["failed_by_kind"] == {"502 upstream_unreachable": 1}
    assert summary["p99_ms"] == 4.0 and summary["max_ms"] == 4.0
    assert summary["x_cache"] == {"HIT": 100, "MISS": 1}
