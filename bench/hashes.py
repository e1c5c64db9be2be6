"""``python -m bench.hashes``: what a password check costs, argon2id against scrypt, at the
strengths OWASP's Password Storage Cheat Sheet calls equal.

The cheat sheet lists, for each algorithm, settings that "provide an equal level of defense"
(a trade of memory against passes): argon2id m=46 MiB t=1, m=19 MiB t=2 (its headline
minimum), m=12 MiB t=3, m=9 MiB t=4, m=7 MiB t=5, all p=1; scrypt N=2**17 r=8 p=1 (its
minimum), N=2**16 p=2, N=2**15 p=3, N=2**14 p=5, N=2**13 p=10. Each is measured as the auth
server spends it: ``verify_password`` in worker threads (``trio.to_thread``) behind a
``CapacityLimiter`` of one slot per core, ``--checks`` of them, so the rate is what every core
of one auth server delivers, and ms/check is what one check holds a core. ``N=2**14 p=1``,
our default before, is measured too, for the "before" column: it is below the minimum.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Sequence

import trio

from authsvc.passwords import HashParams, hash_password, verify_password
from bench.parse import format_rows
from topology.schema import Argon2Params, ScryptParams

OWASP_EQUAL: tuple[tuple[str, HashParams], ...] = (
    ("argon2id m=46MiB t=1", Argon2Params(memory_kib=47104, time_cost=1)),
    ("argon2id m=19MiB t=2", Argon2Params(memory_kib=19456, time_cost=2)),
    ("argon2id m=12MiB t=3", Argon2Params(memory_kib=12288, time_cost=3)),
    ("argon2id m=9MiB t=4", Argon2Params(memory_kib=9216, time_cost=4)),
    ("argon2id m=7MiB t=5", Argon2Params(memory_kib=7168, time_cost=5)),
    ("scrypt N=2^17 p=1", ScryptParams(n=1 << 17, p=1)),
    ("scrypt N=2^16 p=2", ScryptParams(n=1 << 16, p=2)),
    ("scrypt N=2^15 p=3", ScryptParams(n=1 << 15, p=3)),
    ("scrypt N=2^14 p=5", ScryptParams(n=1 << 14, p=5)),
    ("scrypt N=2^13 p=10", ScryptParams(n=1 << 13, p=10)),
)
BELOW_MINIMUM = (("scrypt N=2^14 p=1 (before)", ScryptParams(n=1 << 14, p=1)),)


def memory_mib(params: HashParams) -> float:
    if isinstance(params, Argon2Params):
        return params.memory_kib / 1024
    return 128 * params.r * params.n / (1 << 20)


async def measure(params: HashParams, checks: int, slots: int) -> tuple[float, float]:
    """(checks per second over every slot, ms of one slot per check)."""
    stored = hash_password("makeouthill666", params)
    limiter = trio.CapacityLimiter(slots)
    latencies: list[float] = []

    async def one() -> None:
        started = time.perf_counter()
        ok = await trio.to_thread.run_sync(
            verify_password, "makeouthill666", stored, limiter=limiter
        )
        assert ok
        latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(checks):
            nursery.start_soon(one)
    elapsed = time.perf_counter() - began
    return checks / elapsed, elapsed * slots / checks * 1000


async def run(
    configs: Sequence[tuple[str, HashParams]], checks: int, slots: int, rounds: int
) -> list[tuple[str, str, str, str]]:
    """Every setting once per round, in turn, so that a machine whose load changes (ours is
    shared) weighs on all of them alike; the median round of each is reported."""
    rates: dict[str, list[float]] = {name: [] for name, _ in configs}
    for _ in range(rounds):
        for name, params in configs:
            rates[name].append((await measure(params, checks, slots))[0])
    rows = []
    for name, params in configs:
        rate = statistics.median(rates[name])
        rows.append(
            (name, f"{memory_mib(params):.0f}", f"{rate:.1f}", f"{slots / rate * 1000:.1f}")
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hashes", description=__doc__)
    parser.add_argument("--checks", type=int, default=20, help="checks per setting and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3; median)")
    parser.add_argument("--slots", type=int, default=os.cpu_count() or 1, help="default: cores")
    args = parser.parse_args(argv)
    configs = (*OWASP_EQUAL, *BELOW_MINIMUM)
    rows = trio.run(run, configs, args.checks, args.slots, args.rounds)
    print(f"{args.checks} checks per setting and round, {args.rounds} rounds, {args.slots} threads")
    print(format_rows(("setting", "MiB", "checks/s", "ms/check"), rows))


if __name__ == "__main__":
    main()
