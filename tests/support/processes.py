"""Stopping a process a test started, by its PID: one signal, a grace period, then SIGKILL.

Redis, its sentinels and PostgreSQL each stopped their server this way in a copy of their
own; only the signal (PostgreSQL's fast shutdown is SIGINT) and the grace differ."""

from __future__ import annotations

import signal
import subprocess


def stop_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, grace_s: float = 5.0
) -> None:
    """Send ``sig``; SIGKILL if the process has not exited ``grace_s`` later; reap it.
    `Popen.send_signal` signals only a process it has not reaped, so a PID reused since
    is never hit."""
    process.send_signal(sig)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
