"""`authsvc.arenas`: with the arenas capped, argon2id checks spread over many worker threads
stop adding a memory cost's worth of RSS per thread. Run in a child process, so the cap and
the RSS are its own; the pattern is the one measured in the module header."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from authsvc.arenas import cap_malloc_arenas

CHILD = textwrap.dedent(
    """
    import time, sys, trio
    from authsvc.arenas import cap_malloc_arenas
    from authsvc.passwords import hash_password, verify_password
    from topology.schema import Argon2Params

    assert cap_malloc_arenas(2)
    stored = hash_password("pw", Argon2Params())

    def rss_mib():
        return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

    async def main():
        hashing = trio.CapacityLimiter(2)
        seen = [rss_mib()]
        for _ in range(6):
            async with trio.open_nursery() as nursery:
                for _ in range(40):
                    nursery.start_soon(
                        lambda: trio.to_thread.run_sync(
                            verify_password, "pw", stored, limiter=hashing
                        )
                    )
                    nursery.start_soon(lambda: trio.to_thread.run_sync(time.sleep, 0.01))
            seen.append(rss_mib())
        print(" ".join(f"{m:.1f}" for m in seen))

    trio.run(main)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_capped_arenas_keep_rss_level_across_many_hashing_threads() -> None:
    out = subprocess.run(
        [sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    base, *rounds = (float(m) for m in out.split())
    # One argon2id block is 19 MiB. Capped at 2 arenas, each holds at most the 2 blocks of
    # the 2 hashing slots: 4 blocks (seen: +77 MiB). Uncapped, each round kept one or more:
    # +191 MiB after six rounds (see the header).
    assert max(rounds) - base <= 5 * 19, out


def test_a_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        cap_malloc_arenas(0)
