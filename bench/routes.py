"""Routing cost with 10 and with 10,000 explicit routes (issue 11: within 2x).

`proxy.filters.routes.RouteTable.match` for a hit on a prefix route three segments deep, an
exact hit, and a miss (which then falls to ``/<service>/<rest>``), timed with `timeit`,
alternating the two tables for ``--rounds`` rounds and keeping each one's best (the least
disturbed by the machine's other work). Prints the ratio 10,000 / 10 for each path.
"""

from __future__ import annotations

import argparse
import os
import timeit
from functools import partial

from proxy.filters.routes import RouteTable
from topology.schema import RouteSpec, ServiceSpec


def table(n: int) -> RouteTable:
    services = [
        ServiceSpec(
            name=f"s{i}",
            routes=(RouteSpec(f"/api/v{i % 7}/r{i}/"), RouteSpec(f"/x/{i}", match="exact")),
        )
        for i in range(n // 2)
    ]
    return RouteTable(services)


PATHS = {"prefix hit": "/api/v3/r3/a/b/c", "exact hit": "/x/4", "miss": "/image/a/b/c.png"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.routes")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--number", type=int, default=200_000)
    args = parser.parse_args(argv)
    tables = {10: table(10), 10_000: table(10_000)}
    best: dict[tuple[int, str], float] = {}
    for _ in range(args.rounds):
        for n, t in tables.items():
            for label, path in PATHS.items():
                s = timeit.timeit(partial(t.match, "", path), number=args.number)
                per = s / args.number * 1e9
                best[(n, label)] = min(best.get((n, label), per), per)
    for label in PATHS:
        small, big = best[(10, label)], best[(10_000, label)]
        print(
            f"{label:11} 10 routes {small:6.0f} ns   10,000 routes {big:6.0f} ns   ratio {big / small:.2f}"
        )
    la = os.getloadavg()
    print(f"load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
