"""``python -m bench.hop_ab TREE TREE...``: CPU per proxied request of our proxy from two (or
more) source trees, side by side in front of one nginx, alternating.

The lever behind a small change (a few us of a ~120 us request) is lost in `bench.hop`'s
throughput spread on a shared 2-core machine. CPU time per request moves far less with the
machine's load than requests per second do, and running the trees in the same minutes,
in turns (ABBA...), puts any drift on both. Each tree is a checkout (a ``git worktree add
--detach /tmp/base <rev>`` for the base) whose proxy runs with that tree first on
``PYTHONPATH``; the venv is this one. For each round and tree: one ``--load`` run (`bench.hop`'s
wrk -c50 keep-alive by default) of ``--seconds``, its requests, and the process's user and
system time over it from ``/proc/PID/stat`` (`bench.hop_profile.measure_cpu`). Prints each
run and the medians; everything started is stopped by PID when it ends.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

from bench import hop, hop_profile
from bench.caddy import free_port
from bench.hop_lab import (
    BIN,
    PATH,
    Lab,
    Target,
    check_target,
    lab_running,
    write_proxy_files,
)


def start_proxy(lab: Lab, tree: Path, index: int, args: list[str]) -> Target:
    """Our proxy from ``tree``, public service, cache off, as `bench.hop`'s ``proxy``, with
    ``args`` after its files."""
    port = free_port()
    name = f"proxy-tree{index}"
    directory = lab.workdir / name
    directory.mkdir()
    files = write_proxy_files(
        directory,
        backend=f"http://127.0.0.1:{lab.backend_port}",
        auth=f"http://127.0.0.1:{lab.auth_port()}",
        auth_key=lab.auth_key,
        redis_port=0,
    )
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(tree)  # the child's imports come from this tree
    try:
        child = lab.spawn(name, [str(BIN / "proxy"), str(port), *map(str, files), *args], port)
    finally:
        if before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = before
    lab.wait_until_answers(child, f"http://127.0.0.1:{port}/health", name)
    url = f"{child.url}/pub{PATH}"
    name = " ".join([str(tree), *args])
    return Target(name, name, url, pid=child.process.pid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hop_ab", description=__doc__)
    parser.add_argument(
        "trees",
        nargs="+",
        help="source trees to compare; TREE::ARGS runs that one with the proxy's ARGS"
        " (e.g. '.::--metrics off')",
    )
    parser.add_argument("--load", default="wrk", choices=sorted(hop.LOADS))
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=5)
    args = parser.parse_args(argv)
    runs_of: list[tuple[Path, list[str]]] = []
    for spec in args.trees:
        tree, _, extra = spec.partition("::")
        if not (Path(tree) / "httpio" / "server.py").exists():
            parser.error(f"{tree} is not a checkout of this project")
        runs_of.append((Path(tree).resolve(), extra.split()))
    hop.exit_on_termination()
    load = hop.LOADS[args.load]
    with lab_running() as lab:
        lab.start_backend()
        targets = [start_proxy(lab, tree, i, extra) for i, (tree, extra) in enumerate(runs_of)]
        for target in targets:
            check_target(target, lab.expected_body)
            subprocess.run(hop_profile.drive(target, load, 3), capture_output=True)  # warm up
        runs: dict[str, list[float]] = {target.name: [] for target in targets}
        for round_no in range(args.rounds):
            for target in targets if round_no % 2 == 0 else targets[::-1]:
                cpu = hop_profile.measure_cpu(target, load, args.seconds)
                us = cpu["user_us_per_request"] + cpu["system_us_per_request"]
                runs[target.name].append(us)
                print(
                    f"round {round_no + 1}/{args.rounds} {target.name}:"
                    f" {cpu['requests_per_s']:,.0f} req/s at {cpu['cpu_share']:.0%} of a core,"
                    f" {us:.1f} us CPU per request ({cpu['user_us_per_request']:.1f} user)",
                    flush=True,
                )
    for name, values in runs.items():
        shown = ", ".join(f"{v:.1f}" for v in values)
        print(f"{name}: median {statistics.median(values):.1f} us per request ({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
