"""`topology.fleet_lock`: the parsers of ``/proc`` (pure), the lock, and the report of what
stands in a new fleet's way: another launcher, orphans of an earlier one, taken ports. Real
processes are small children of this test, stopped by PID."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from topology.fleet_lock import (
    FleetLock,
    FleetState,
    ProcessRecord,
    is_alive,
    listening_inodes,
    obstacles,
    parse_start_time,
    port_holders,
    port_in_use,
    record_of,
)

STAT = "4242 (py (thon)) S 1 4242 4242 0 -1 4194560 100 0 0 0 3 1 0 0 20 0 1 0 987654 1000 {rest}"
TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2328 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1111 1
   1: 0100007F:2328 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 2222 1
   2: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3333 1
"""


def test_start_time_comes_after_the_command_name_whatever_it_holds() -> None:
    assert parse_start_time(STAT.format(rest="0 0")) == 987654
    assert parse_start_time(STAT.replace(" S ", " Z ").format(rest="")) is None  # a zombie
    assert parse_start_time("garbage") is None


def test_listening_inodes_of_a_port() -> None:
    assert listening_inodes(TCP, 9000) == {1111}  # not the established connection on it
    assert listening_inodes(TCP, 8080) == {3333}
    assert listening_inodes(TCP, 1) == set()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) as child:
        try:
            yield child
        finally:
            child.kill()


def test_a_process_is_ours_only_with_the_start_time_we_recorded(
    sleeper: subprocess.Popen[bytes],
) -> None:
    record = record_of("backend-1", sleeper.pid, 5000)
    assert record.started > 0 and is_alive(record)
    assert not is_alive(ProcessRecord("backend-1", sleeper.pid, 5000, record.started + 1))
    sleeper.kill()
    sleeper.wait()
    assert not is_alive(record)


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def test_a_taken_port_and_who_holds_it(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    assert port_in_use("127.0.0.1", port)
    assert os.getpid() in port_holders(port)
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        spare = free.getsockname()[1]
    assert not port_in_use("127.0.0.1", spare)
    assert port_holders(spare) == []


def test_the_lock_is_one_launchers_at_a_time(tmp_path: Path) -> None:
    first, second = FleetLock(tmp_path / "run"), FleetLock(tmp_path / "run")
    assert first.acquire()
    assert not second.acquire()
    first.release()
    assert second.acquire()
    second.release()


def test_the_state_file_round_trips(tmp_path: Path) -> None:
    lock = FleetLock(tmp_path)
    assert lock.read_state() is None
    state = FleetState(
        ProcessRecord("fleet", 1, 0, 2), "f00d", "run/x", [ProcessRecord("a", 3, 4, 5)]
    )
    lock.write_state(state)
    assert lock.read_state() == state
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fleet.json"]


def test_nothing_in_the_way(tmp_path: Path) -> None:
    lock = FleetLock(tmp_path)
    assert obstacles(lock, {}, "127.0.0.1") == []
    assert not FleetLock(tmp_path).acquire()  # and the lock is now ours
    lock.release()


def test_another_launcher_is_named_with_its_children(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    running = FleetLock(tmp_path)
    assert running.acquire()
    child = record_of("proxy-kr-6000", sleeper.pid, 6000)
    running.write_state(FleetState(record_of("fleet", os.getpid()), "f", "run/1", [child]))
    lines = obstacles(FleetLock(tmp_path), {}, "127.0.0.1")
    assert lines[0].startswith(f"fleet: a fleet is already running from {tmp_path}")
    assert f"launcher pid {os.getpid()}" in lines[0]
    assert any("proxy-kr-6000" in line and f"pid {sleeper.pid}" in line for line in lines)
    assert "6000" in lines[1]
    assert lines[-1].endswith(f"kill {os.getpid()})")


def test_orphans_of_a_dead_launcher_are_named(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    gone = ProcessRecord("fleet", 999_999_999, 0, 1)
    orphan = record_of("elb-kr-9000", sleeper.pid, 9000)
    reused = ProcessRecord("backend-5000", os.getpid(), 5000, 1)  # a PID now someone else's
    FleetLock(tmp_path).write_state(FleetState(gone, "f", "run/1", [orphan, reused]))
    lines = obstacles(FleetLock(tmp_path), {}, "127.0.0.1")
    assert "without their launcher (pid 999999999, gone)" in lines[0]
    assert len(lines) == 3 and "elb-kr-9000" in lines[1] and "backend-5000" not in "".join(lines)
    assert lines[-1] == f"fleet: stop them first: kill {sleeper.pid}"


def test_taken_ports_are_named_with_their_holders(tmp_path: Path, listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    lines = obstacles(FleetLock(tmp_path), {"elb-kr-9000": port, "x": 1}, "127.0.0.1")
    assert lines[0] == "fleet: 1 port(s) of this topology are in use:"
    assert f"{port}" in lines[1] and "(elb-kr-9000)" in lines[1]
    assert f"pid {os.getpid()}" in lines[1]
