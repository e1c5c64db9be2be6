"""`bench.hop`: the load commands, the targets and comparisons, the command line, and two
real runs: the anchors start and pass the backend's answer through and are stopped by PID
when the run fails, and SIGTERM stops everything the harness started."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest

from bench import hop, hop_lab

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


def test_caddy_target_pins_the_cores_it_is_given() -> None:
    assert hop.TARGETS["caddy"].label == "Caddy (GOMAXPROCS=1)"
    assert hop.caddy("caddy-2", gomaxprocs=2).label == "Caddy (GOMAXPROCS=2)"


# -- the loads ---------------------------------------------------------------------------------
def test_wrk_is_one_thread_fifty_connections_for_the_duration() -> None:
    command = hop.load_command(hop.LOADS["wrk"], "http://127.0.0.1:1/x", [("A", "b")], 5)
    assert command[:6] == ["wrk", "-t1", "-c", "50", "-d", "5s"]
    assert command[-3:] == ["-H", "A: b", "http://127.0.0.1:1/x"]


def test_ab_is_bounded_by_time_with_n_after_t() -> None:
    plain = hop.load_command(hop.LOADS["ab"], "http://127.0.0.1:1/x", [], 4)
    keep = hop.load_command(hop.LOADS["ab-k"], "http://127.0.0.1:1/x", [], 4)
    for command in (plain, keep):
        assert command[command.index("-c") + 1] == "20"
        assert command[command.index("-t") + 1] == "4"
        assert command.index("-n") > command.index("-t")  # ab's -t resets -n to 50,000
    assert "-k" not in plain and "-k" in keep


def test_loads_refuse_a_fraction_of_a_second() -> None:
    with pytest.raises(ValueError, match="whole seconds"):
        hop.load_command(hop.LOADS["wrk"], "http://127.0.0.1:1/x", [], 0)


def test_parse_args_refuses_unknown_targets_and_loads() -> None:
    with pytest.raises(SystemExit):
        hop.parse_args(["--targets", "nginx,envoy"])
    with pytest.raises(SystemExit):
        hop.parse_args(["--loads", "h2load"])
    args = hop.parse_args(["--targets", "nginx,proxy", "--rounds", "3"])
    assert args.targets == ["nginx", "proxy"] and args.rounds == 3


def test_every_comparison_names_known_targets() -> None:
    for numerator, denominator in hop.COMPARISONS:
        assert numerator in hop.TARGETS and denominator in hop.TARGETS


# -- a real run: the anchors start, proxy, and stop ----------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(
    NGINX is None or HAPROXY is None,
    reason="nginx and haproxy are needed (bash scripts/system-deps.sh installs them)",
)
def test_anchors_pass_the_backends_answer_through_and_are_stopped_on_error() -> None:
    names = ["backend", "nginx", "haproxy", "relay", "proxy"]
    pids: list[int] = []

    class Planned(Exception):
        pass

    with pytest.raises(Planned), hop_lab.lab_running() as lab:
        targets = hop.start_targets(lab, names)  # raises unless each passes the answer through
        assert [t.name for t in targets] == names
        pids = [c.process.pid for c in lab.children.started]
        assert len(pids) == 6  # backend, nginx, haproxy, relay, the auth server, our proxy
        assert all(_alive(pid) for pid in pids)
        through = hop_lab.fetch(targets[1].url)
        assert through.body == lab.expected_body
        raise Planned
    for pid in pids:
        assert not _alive(pid), f"pid {pid} still runs"


def _read_until_holding(harness: subprocess.Popen[bytes], timeout_s: float) -> list[int]:
    """The PIDs the harness says it started, read until it says it holds (or the deadline)."""
    assert harness.stdout is not None
    fd = harness.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout_s
    while b"holding" not in seen and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            break
        seen += chunk
    lines = seen.decode().splitlines()
    if not any(line.startswith("holding") for line in lines):
        raise AssertionError(f"the harness did not hold within {timeout_s}s: {lines}")
    return [int(line.split()[-1]) for line in lines if line.startswith("process ")]


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (bash scripts/system-deps.sh)")
def test_sigterm_stops_everything_the_harness_started() -> None:
    harness = subprocess.Popen(
        [sys.executable, "-m", "bench.hop", "--hold", "--targets", "nginx"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    pids: list[int] = []
    try:
        pids = _read_until_holding(harness, 30.0)
        assert len(pids) == 2  # the backend and the front nginx
        assert all(_alive(pid) for pid in pids)
        harness.terminate()
        assert harness.wait(timeout=15) == 128 + signal.SIGTERM
        left = [pid for pid in pids if _alive(pid)]
        assert left == []
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
        for pid in pids:  # whatever the harness failed to stop, so no test leaves it behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        assert harness.stdout is not None
        harness.stdout.close()
