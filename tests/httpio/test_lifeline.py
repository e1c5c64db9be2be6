"""`httpio.lifeline`: the restart back-off (`Backoff`); children awaited through a pidfd, and
children that die with the process that started them, even when it is SIGKILLed. The
"launcher" here is a small Python process of this test; waits are on the children's state
under a deadline."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from httpio.lifeline import Backoff, start_child
from tests.support.polling import wait_until
from topology.fleet_lock import process_started

REPO = Path(__file__).resolve().parent.parent.parent
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG")

LAUNCHER = """
import sys, trio
from httpio.lifeline import Backoff, start_child

async def main():
    for _ in range(2):
        child = start_child([sys.executable, "-c", "import time; time.sleep(600)"],
                            output=2, env={})
        print(child.pid, flush=True)
    await trio.sleep(600)

trio.run(main)
"""


def gone(pid: int) -> bool:
    return process_started(pid) is None  # exited (or a zombie nobody reaps)


async def test_a_child_is_awaited_and_signalled() -> None:
    quick = start_child([sys.executable, "-c", "raise SystemExit(3)"], output=2, env={})
    slow = start_child([sys.executable, "-c", "import time; time.sleep(600)"], output=2, env={})
    with trio.fail_after(30):
        assert await quick.wait() == 3
        assert quick.returncode == 3
        assert slow.returncode is None
        slow.send_signal(signal.SIGTERM)
        assert await slow.wait() == -signal.SIGTERM
    slow.send_signal(signal.SIGTERM)  # reaped: no one else's process gets it
    assert repr(slow) == f"<ChildProcess {slow.pid} returncode=-15>"


async def test_a_child_is_in_a_session_of_its_own() -> None:
    child = start_child([sys.executable, "-c", "import time; time.sleep(600)"], output=2, env={})
    try:
        assert os.getsid(child.pid) == child.pid != os.getsid(0)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()


@linux_only
async def test_children_die_with_a_sigkilled_launcher() -> None:
    launcher = await trio.lowlevel.open_process(
        [sys.executable, "-c", LAUNCHER],
        stdout=subprocess.PIPE,
        cwd=REPO,
    )
    assert launcher.stdout is not None
    said = b""
    try:
        with trio.fail_after(30):
            while said.count(b"\n") < 2:
                said += await launcher.stdout.receive_some(100)
        children = [int(line) for line in said.split()]
        assert all(not gone(pid) for pid in children)
        launcher.kill()
        await launcher.wait()
        await wait_until(lambda: all(gone(pid) for pid in children), timeout_s=10)
    finally:
        launcher.kill()
        await launcher.stdout.aclose()


# -- backoff -----------------------------------------------------------------------------------
def test_backoff_doubles_up_to_the_cap():
    backoff = Backoff()
    delays = [backoff.next_delay(uptime_s=1.0) for _ in range(9)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_backoff_is_forgiven_after_a_long_uptime():
    backoff = Backoff()
    for _ in range(5):
        backoff.next_delay(uptime_s=9.9)
    assert backoff.peek() == 16.0
    assert backoff.next_delay(uptime_s=10.0) == 0.5
    assert backoff.next_delay(uptime_s=0.1) == 1.0


def test_backoff_survives_many_failures_and_explains_itself():
    backoff = Backoff(initial_s=1, max_s=10, reset_after_s=5)
    for _ in range(2000):
        backoff.next_delay(uptime_s=0)
    assert backoff.peek() == 10
    assert repr(backoff) == "<Backoff failures=2000 next=10s>"
