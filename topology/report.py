"""``fleet report [RUN_DIR]``: what a run's proxies answered, from their JSON access logs.

For go-lab's users, who kept every request in SQLite and asked it questions: requests per
service and status class, p50/p90/p99 per service, the top paths, the cache hit ratio and the
rate-limited and error counts. The summary (`summarise`) is a pure function of the lines; the
percentiles are nearest-rank over every line (a run's logs fit in memory: a million lines are
~60 MB of floats and strings at most). A line that is not JSON (a torn last line of a killed
proxy) is counted and skipped.
"""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TOP_PATHS = 10


@dataclass
class ServiceSummary:
    requests: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    durations_ms: list[float] = field(default_factory=list)
    hits: int = 0
    cache_lookups: int = 0


@dataclass
class Report:
    lines: int = 0
    unreadable: int = 0
    services: dict[str, ServiceSummary] = field(default_factory=dict)
    paths: Counter[str] = field(default_factory=Counter)
    rate_limited: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def hit_ratio(self) -> float | None:
        lookups = sum(s.cache_lookups for s in self.services.values())
        return sum(s.hits for s in self.services.values()) / lookups if lookups else None


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` of the values at or below it."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def summarise(raw_lines: Iterable[str | dict[str, object]]) -> Report:
    """From JSON lines, or rows of the SQLite sink as dicts."""
    report = Report()
    for raw in raw_lines:
        if isinstance(raw, str) and not raw.strip():
            continue
        try:
            doc: Any = json.loads(raw) if isinstance(raw, str) else raw
            service = str(doc["service"])
            status = int(doc["status"])
            duration = float(doc["duration_ms"])
        except (ValueError, KeyError, TypeError):
            report.unreadable += 1
            continue
        report.lines += 1
        summary = report.services.setdefault(service, ServiceSummary())
        summary.requests += 1
        summary.classes[f"{status // 100}xx"] += 1
        summary.durations_ms.append(duration)
        cache = doc.get("cache", "-")
        if cache != "-":
            summary.cache_lookups += 1
            summary.hits += cache == "HIT"
        report.paths[str(doc.get("path", "?")).partition("?")[0]] += 1
        report.rate_limited += bool(doc.get("rate_limited"))
        error = doc.get("error", "-")
        if error != "-":
            report.errors[str(error)] += 1
    return report


def format_report(report: Report) -> str:
    out = [f"{report.lines} requests ({report.unreadable} unreadable lines)", ""]
    out.append(
        f"{'service':<16}{'requests':>9}{'2xx':>8}{'3xx':>7}{'4xx':>7}{'5xx':>7}"
        f"{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'hit %':>7}"
    )
    for name, s in sorted(report.services.items(), key=lambda kv: -kv[1].requests):
        d = sorted(s.durations_ms)
        hit = f"{100 * s.hits / s.cache_lookups:.0f}" if s.cache_lookups else "-"
        out.append(
            f"{name:<16}{s.requests:>9}{s.classes['2xx']:>8}{s.classes['3xx']:>7}"
            f"{s.classes['4xx']:>7}{s.classes['5xx']:>7}{percentile(d, 0.5):>9.2f}"
            f"{percentile(d, 0.9):>9.2f}{percentile(d, 0.99):>9.2f}{hit:>7}"
        )
    ratio = report.hit_ratio()
    out += ["", f"cache hit ratio: {'-' if ratio is None else f'{100 * ratio:.1f} %'}"]
    out.append(f"rate limited: {report.rate_limited}")
    errors = ", ".join(f"{k} {v}" for k, v in report.errors.most_common()) or "none"
    out.append(f"errors: {sum(report.errors.values())} ({errors})")
    out += ["", "top paths:"]
    out += [f"  {n:>8}  {p}" for p, n in report.paths.most_common(TOP_PATHS)]
    return "\n".join(out)


def access_logs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "logs").glob("access-*.log*"))


def read_lines(paths: Iterable[Path]) -> Iterable[str]:
    for path in paths:
        with path.open(encoding="utf-8", errors="replace") as f:
            yield from f


def read_database(path: Path) -> Iterable[dict[str, object]]:
    """The rows of the SQLite sink (``Access_log: {sqlite: PATH}``), read-only."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        for row in db.execute("SELECT * FROM access"):
            yield dict(row)
    finally:
        db.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="fleet report", description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_dir", nargs="?", default="run/latest", help="a run directory or the SQLite sink's file"
    )
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    if run_dir.is_file():  # the SQLite sink's database
        print(format_report(summarise(read_database(run_dir))))
        return
    logs = access_logs(run_dir)
    if not logs:
        print(f"fleet report: no access-*.log under {run_dir / 'logs'}", file=sys.stderr)
        raise SystemExit(2)
    print(format_report(summarise(read_lines(logs))))
