"""`httpio.run`: the open files limit every process raises at start, the log's lines."""

from __future__ import annotations

import json
import resource
import subprocess
import sys

import pytest
import structlog

from httpio.run import configure_logging

PROBE = """
import resource
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
from httpio.run import raise_open_files_limit
print(*raise_open_files_limit(), hard)
"""


def test_the_soft_open_files_limit_is_raised_to_the_hard_one() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    soft, hard, was_hard = (int(x) for x in out)
    assert hard == was_hard
    if was_hard == resource.RLIM_INFINITY:
        assert soft > 256
    else:
        assert soft == hard


class Writes:
    """A stdout that keeps each write() apart, as an unbuffered one hands them to the OS."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return len(text)

    def flush(self) -> None:
        pass


def test_each_log_line_is_one_write_with_its_newline(monkeypatch: pytest.MonkeyPatch) -> None:
    """With PYTHONUNBUFFERED each write is a write(2): the workers of ``proxy --workers N``
    share one stdout, so a line and its newline written apart could be split by another
    worker's line."""
    out = Writes()
    monkeypatch.setattr(sys, "stdout", out)
    try:
        configure_logging("probe")
        log = structlog.get_logger()
        log.info("first", n=1)
        log.warning("second", text="a\nb")
    finally:
        structlog.reset_defaults()
    assert len(out.calls) == 2
    for call in out.calls:
        assert call.endswith("\n") and call.count("\n") == 1
        assert json.loads(call)["process"] == "probe"
