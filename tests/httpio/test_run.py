"""`httpio.run`: the open files limit every process raises at start."""

from __future__ import annotations

import resource
import subprocess
import sys

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
