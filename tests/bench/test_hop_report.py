"""`bench.hop_report`: best, worst, spread and ratios of the runs, the tables (a figure with
failures is flagged), the JSON record and the chart."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import msgspec
import pytest

from bench import hop_report
from bench.parse import BenchResult

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


# -- aggregation, tables, record, chart --------------------------------------------------------
def result(rps: float, failures: int = 0, non_2xx: int = 0) -> BenchResult:
    return BenchResult(
        tool="wrk",
        requests=int(rps * 5),
        duration_s=5.0,
        requests_per_s=rps,
        failures=failures,
        non_2xx=non_2xx,
        mean_ms=1.0,
        p50_ms=1.0,
        p99_ms=2.0,
        longest_ms=3.0,
        transfer_kib_s=None,
    )


SAMPLES = [
    hop_report.Sample("caddy", "wrk", 0, ["wrk"], result(10_000)),
    hop_report.Sample("proxy", "wrk", 0, ["wrk"], result(4_000)),
    hop_report.Sample("caddy", "wrk", 1, ["wrk"], result(8_000)),
    hop_report.Sample("proxy", "wrk", 1, ["wrk"], result(5_000, failures=2)),
    hop_report.Sample("caddy", "ab", 0, ["ab"], result(6_000)),
]


def test_aggregate_keeps_the_best_the_worst_and_the_failures() -> None:
    figures = hop_report.aggregate(SAMPLES)
    assert list(figures) == [("caddy", "wrk"), ("proxy", "wrk"), ("caddy", "ab")]
    caddy = figures[("caddy", "wrk")]
    assert (caddy.best, caddy.worst, caddy.runs) == (10_000, 8_000, 2)
    assert caddy.spread == pytest.approx(0.2)
    assert caddy.clean
    proxy = figures[("proxy", "wrk")]
    assert proxy.best == 5_000 and proxy.failures == 2 and not proxy.clean


def test_ratios_are_of_bests_and_skip_pairs_that_did_not_run() -> None:
    figures = hop_report.aggregate(SAMPLES)
    found = hop_report.ratios(figures, [("proxy", "caddy"), ("relay", "caddy")], ["wrk", "ab"])
    assert [(r.numerator, r.denominator, r.load) for r in found] == [("proxy", "caddy", "wrk")]
    assert found[0].value == pytest.approx(0.5)


def test_tables_flag_a_figure_with_failures() -> None:
    figures = hop_report.aggregate(SAMPLES)
    labels = {"caddy": "Caddy", "proxy": "ours", "relay": "never ran"}
    table = hop_report.figures_table(figures, labels, ["wrk", "ab"])
    lines = table.splitlines()
    assert lines[0].split() == ["target", "wrk", "req/s", "ab", "req/s"]
    assert "10,000 ±20%" in lines[1] and "6,000 ±0%" in lines[1]
    assert "5,000 ±20% !" in lines[2] and lines[2].rstrip().endswith("-")
    assert len(lines) == 3  # a target with no figure has no row
    assert "proxy wrk: 2 failed" in hop_report.failures_note(figures)
    ratios = hop_report.ratios(figures, [("proxy", "caddy")], ["wrk", "ab"])
    assert hop_report.ratios_table(ratios, ["wrk", "ab"]).splitlines()[1].split() == [
        "proxy",
        "/",
        "caddy",
        "0.50",
        "-",
    ]


def test_the_record_is_json_with_every_figure_ratio_and_sample(tmp_path: Path) -> None:
    figures = hop_report.aggregate(SAMPLES)
    found = hop_report.ratios(figures, [("proxy", "caddy")], ["wrk"])
    data = hop_report.record(
        started="20260101T000000",
        host={"cpus": 2, "loadavg_before": [1.0, 1.0, 1.0]},
        settings={"rounds": 2},
        targets=[{"name": "caddy"}, {"name": "proxy"}],
        samples=SAMPLES,
        figures=figures,
        found=found,
    )
    path = hop_report.save(tmp_path / "results", "hop-x", data)
    loaded = json.loads(path.read_text())
    assert set(loaded) == {
        "benchmark", "started", "host", "settings", "targets", "figures", "ratios", "samples",
    }  # fmt: skip
    assert loaded["figures"][1] == {
        "target": "proxy", "load": "wrk", "best_rps": 5000.0, "worst_rps": 4000.0,
        "spread": 0.2, "runs": 2, "failures": 2, "non_2xx": 0,
    }  # fmt: skip
    assert loaded["ratios"] == [
        {"numerator": "proxy", "denominator": "caddy", "load": "wrk", "value": 0.5}
    ]
    again = [msgspec.convert(s, hop_report.Sample) for s in loaded["samples"]]
    assert again == SAMPLES


def test_the_chart_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the bench extra is not installed")
    figures = hop_report.aggregate(SAMPLES)
    path = tmp_path / "hop.png"
    assert hop_report.draw_chart(path, figures, {"caddy": "C", "proxy": "P"}, ["wrk"], "t") is None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_chart_is_skipped_with_a_note_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    figures = hop_report.aggregate(SAMPLES)
    note = hop_report.draw_chart(tmp_path / "hop.png", figures, {"caddy": "C"}, ["wrk"], "t")
    assert note is not None and "matplotlib is not installed" in note
    assert not (tmp_path / "hop.png").exists()
