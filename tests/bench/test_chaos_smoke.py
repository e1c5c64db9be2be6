"""One very short real run of `make chaos` and of `make soak` (a fleet of 18 processes,
~30-60 s each), so opt-in: ``CHAOS_SMOKE=1 .venv/bin/python -m pytest
tests/bench/test_chaos_smoke.py``. The default suite covers the pure parts instead."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("CHAOS_SMOKE") != "1", reason="a real fleet run: set CHAOS_SMOKE=1"
)
RUN_TIMEOUT_S = 300


def run_module(module: str, args: list[str], out: Path) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", module, *args, "--out", str(out), "--no-results-md"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = out.glob("*.json")
    result: dict[str, object] = json.loads(path.read_text())
    return result


def test_a_short_campaign_gives_one_row_per_fault(tmp_path):
    result = run_module(
        "bench.chaos", ["--faults", "none,reload-break", "--duration-scale", "0.15"], tmp_path
    )
    rows = result["rows"]
    assert isinstance(rows, list)
    assert [r["fault"] for r in rows] == ["none", "reload-break"]
    assert all(r["sent"] > 0 for r in rows)
    assert rows[1]["back_s"] is not None  # every proxy logged that it refused the file


def test_a_short_soak_samples_every_process(tmp_path):
    result = run_module("bench.soak", ["--minutes", "0.25", "--sample-s", "5"], tmp_path)
    samples = result["samples"]
    assert isinstance(samples, list) and len(samples) == 4
    names = set(samples[0]["rss"])
    assert "redis" in names and any(n.startswith("proxy-") for n in names)
    assert len(result["verdicts"]) == len(samples[0]["pid"])  # type: ignore[arg-type]
