"""``make benchmark`` (`bench.benchmark`) for real, on free ports and with short loads
(``-n``): its own fleet up, the script's checks and loads, our table and JSON, and the fleet
stopped afterwards, also when it is interrupted half way."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.polling import wait_for
from topology.load import load_fleet

ROOT = Path(__file__).resolve().parents[2]


def processes_under(directory: Path | str) -> list[int]:
    """PIDs whose command line names ``directory`` (every child of a fleet there does)."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            if str(directory).encode() in cmdline:
                found.append(int(entry.name))
    return found


@pytest.fixture
def launched(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(30)
    for pid in processes_under(tmp_path / "run"):  # whatever it left, by PID
        os.kill(pid, signal.SIGKILL)


def start(tmp_path: Path, launched: list[subprocess.Popen[bytes]], n: int) -> Path:
    if shutil.which("ab") is None or shutil.which("redis-server") is None:
        pytest.fail("ab and redis-server are needed: run `make install`")
    out = tmp_path / "benchmark.out"
    argv = [sys.executable, "-m", "bench.benchmark", "--free-ports", "-n", str(n)]
    argv += ["--out", str(tmp_path / "results"), "--run-base", str(tmp_path / "run")]
    with open(out, "wb") as log:
        launched.append(subprocess.Popen(argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT))
    return out


def test_a_short_benchmark_runs_the_whole_script_and_stops_its_fleet(
    tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    out = start(tmp_path, launched, 40)
    assert launched[0].wait(600) == 0, out.read_text()[-3000:]
    said = out.read_text()
    for title in ("Signup beforehand", "Regional request test", "Large request test"):
        assert f"====== {title} ======" in said
    assert "checks: 29, 23 as the original, 6 better, 0 worse" in said
    assert said.count("Complete requests:      40") == 6
    assert said.count("Failed requests:        0") == 6
    summary = json.loads(next((tmp_path / "results").glob("benchmark-*.json")).read_text())
    assert len(summary["checks"]) == 29 and list(summary["loads"]) == [
        "signin",
        "region",
        "regular",
        "concurrent",
        "image",
        "large",
    ]
    assert all(
        load["requests"] == 40 and load["non_2xx"] == 0 for load in summary["loads"].values()
    )
    saved = [json.loads(Path(p).read_text()) for p in summary["saved"]]
    assert all("AuthToken: <redacted>" in s["command"] for s in saved if s["name"] != "signin")
    assert processes_under(tmp_path / "run") == []


def test_an_interrupted_benchmark_stops_its_fleet_and_its_ab(
    tmp_path: Path, launched: list[subprocess.Popen[bytes]]
) -> None:
    """Interrupted in its first load (3,000 sign-ins: a minute of ab at the least), as a
    Ctrl-C in its terminal would."""
    out = start(tmp_path, launched, 3000)
    wait_for(lambda: " * Load : " in out.read_text(), timeout_s=240, what="the first load")
    topology = load_fleet(next((tmp_path / "run").glob("benchmark-*/topology/fleet.yaml")))
    elb = f"127.0.0.1:{topology.regions[0].elb_port}/auth/signin"
    wait_for(lambda: bool(processes_under(elb)), timeout_s=30, what="ab running")
    assert processes_under(tmp_path / "run")  # the fleet is up
    launched[0].send_signal(signal.SIGINT)
    assert launched[0].wait(120) == 130, out.read_text()[-3000:]
    assert "benchmark: SIGINT: stopping the fleet" in out.read_text()
    assert processes_under(tmp_path / "run") == []
    wait_for(lambda: processes_under(elb) == [], timeout_s=10, what="ab killed")
