"""``fleet top [TOPOLOGY]``: a live terminal view of a running fleet, refreshed every second.

It reads every process's ``/metrics`` (the targets of `topology.prometheus.scrape_targets`, so a
fleet started by hand is seen as well as one of ``make fleet``, given its topology file) twice a
second apart, and shows rates from the difference: one row per process (role, region, port,
up/down, req/s, p99, 5xx/s, open connections, RSS), one per service (req/s, p99, cache hit
ratio, instances up/total, limited/s), and each proxy's last reload. p99 is read from the
histogram buckets of the last interval (the bucket's upper bound: 1 ms, 2.5 ms, 5 ms...), as
Prometheus's ``histogram_quantile`` would, roughly. Built with ``rich`` (``pip install
'.[top]'``); without it ``--once`` prints the same tables as plain text.
"""

from __future__ import annotations

import argparse
import http.client
import math
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from topology.load import ConfigError, load_fleet
from topology.prometheus import scrape_targets

FETCH_TIMEOUT_S = 0.5
Labels = tuple[tuple[str, str], ...]


@dataclass
class Scrape:
    """One process's samples: ``(name, labels) -> value``; empty when it did not answer."""

    job: str
    target: str
    labels: dict[str, str]
    at: float
    samples: dict[tuple[str, Labels], float] = field(default_factory=dict)
    up: bool = False

    def total(self, name: str, **match: str) -> float:
        return sum(v for (n, ls), v in self.samples.items() if n == name and _matches(ls, match))

    def by(self, name: str, label: str, **match: str) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for (n, ls), v in self.samples.items():
            if n == name and _matches(ls, match):
                out[dict(ls).get(label, "")] += v
        return out


def _matches(labels: Labels, match: dict[str, str]) -> bool:
    d = dict(labels)
    return all(d.get(k) == v for k, v in match.items())


def parse(text: str) -> dict[tuple[str, Labels], float]:
    out: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
    return out


def fetch(target: str) -> str | None:
    host, _, port = target.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=FETCH_TIMEOUT_S)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        body = resp.read()
        return body.decode() if resp.status == 200 else None
    except OSError:
        return None
    finally:
        conn.close()


def scrape_all(targets: Sequence[tuple[str, str, dict[str, str]]]) -> list[Scrape]:
    out = []
    for job, target, labels in targets:
        text = fetch(target)
        scrape = Scrape(job, target, labels, time.monotonic())
        if text is not None:
            scrape.samples, scrape.up = parse(text), True
        out.append(scrape)
    return out


def p99_of(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The upper bound (seconds) of the bucket holding the 99th percentile of what was
    observed between two scrapes of a histogram's cumulative buckets (``le`` -> count)."""
    deltas = sorted((le, after.get(le, 0.0) - before.get(le, 0.0)) for le in after)
    if not deltas or deltas[-1][1] <= 0:
        return None
    total = deltas[-1][1]
    for le, count in deltas:
        if count >= 0.99 * total:
            return le
    return None


def buckets(scrape: Scrape, name: str, **match: str) -> dict[float, float]:
    out: dict[float, float] = defaultdict(float)
    for (n, ls), v in scrape.samples.items():
        if n == name + "_bucket" and _matches(ls, match):
            out[float(dict(ls)["le"])] += v
    return out


@dataclass
class View:
    processes: list[list[str]]
    services: list[list[str]]
    reloads: list[list[str]]


PROCESS_COLUMNS = (
    "process",
    "role",
    "region",
    "port",
    "state",
    "req/s",
    "p99 ms",
    "5xx/s",
    "conns",
    "RSS MiB",
)
SERVICE_COLUMNS = ("service", "req/s", "p99 ms", "hit %", "up/total", "limited/s")
RELOAD_COLUMNS = ("proxy", "last reload", "reloads ok/failed")


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return ">10000" if math.isinf(seconds) else f"{seconds * 1000:g}"


def build_view(before: list[Scrape], after: list[Scrape], now: float) -> View:
    processes, reloads = [], []
    service_rates: dict[str, float] = defaultdict(float)
    service_before: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    service_after: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    hits: dict[str, float] = defaultdict(float)
    lookups: dict[str, float] = defaultdict(float)
    limited: dict[str, float] = defaultdict(float)
    up: dict[str, dict[str, float]] = defaultdict(dict)
    for b, a in zip(before, after, strict=True):
        dt = max(a.at - b.at, 1e-6)
        name = a.labels.get("process", a.target)
        if "worker" in a.labels:  # one of proxy_workers N, scraped on its own port
            name += f"/w{a.labels['worker']}"
        port = a.target.rpartition(":")[2]
        region = a.labels.get("region", "-")
        if not a.up:
            processes.append([name, a.job, region, port, "down", "-", "-", "-", "-", "-"])
            continue
        counter = {"proxy": "gateway_requests_total", "elb": "elb_connections_total"}.get(
            a.job, "http_server_requests_total"
        )
        histogram = (
            "gateway_request_duration_seconds"
            if a.job == "proxy"
            else "http_server_request_duration_seconds"
        )
        rate = (a.total(counter) - b.total(counter)) / dt if b.up else 0.0
        errors = sum(v for c, v in a.by(counter, "code").items() if c.startswith("5"))
        errors_before = sum(v for c, v in b.by(counter, "code").items() if c.startswith("5"))
        p99 = p99_of(buckets(b, histogram), buckets(a, histogram)) if b.up else None
        rss = a.total("process_resident_memory_bytes") / (1 << 20)
        processes.append(
            [
                name,
                a.job,
                region,
                port,
                "up",
                f"{rate:.1f}",
                _ms(p99),
                f"{(errors - errors_before) / dt:.1f}" if b.up else "-",
                f"{a.total('elb_active_connections' if a.job == 'elb' else 'gateway_open_connections'):.0f}",
                f"{rss:.1f}",
            ]
        )
        if a.job != "proxy":
            continue
        for service, v in a.by("gateway_requests_total", "service").items():
            service_rates[service] += (
                v - b.by("gateway_requests_total", "service").get(service, 0.0)
            ) / dt
        for service in a.by("gateway_requests_total", "service"):
            for le, v in buckets(a, "gateway_request_duration_seconds", service=service).items():
                service_after[service][le] += v
            for le, v in buckets(b, "gateway_request_duration_seconds", service=service).items():
                service_before[service][le] += v
        for (n, ls), v in a.samples.items():
            d = dict(ls)
            if n == "gateway_cache_requests_total":
                lookups[d["service"]] += v
                hits[d["service"]] += v if d["result"] == "HIT" else 0.0
            elif n == "gateway_ratelimit_decisions_total" and d.get("decision") == "deny":
                limited[d["service"]] += (v - b.samples.get((n, ls), 0.0)) / dt
            elif n == "gateway_instance_up":
                up[d["service"]][d["instance"]] = max(up[d["service"]].get(d["instance"], 0.0), v)
        last = a.total("gateway_config_last_reload_success_timestamp_seconds")
        ok = a.total("gateway_config_reloads_total", result="success")
        failed = a.total("gateway_config_reloads_total", result="failure")
        ago = f"{max(0.0, now - last):.0f} s ago" if last else "-"
        reloads.append([name, ago, f"{ok:.0f}/{failed:.0f}"])
    services = []
    for service in sorted(service_rates):
        instances = up.get(service, {})
        hit = f"{100 * hits[service] / lookups[service]:.0f}" if lookups.get(service) else "-"
        services.append(
            [
                service,
                f"{service_rates[service]:.1f}",
                _ms(p99_of(service_before[service], service_after[service])),
                hit,
                f"{sum(1 for v in instances.values() if v >= 1)}/{len(instances)}"
                if instances
                else "-",
                f"{limited.get(service, 0.0):.1f}",
            ]
        )
    return View(processes, services, reloads)


def plain(view: View) -> str:
    out = []
    for title, columns, rows in (
        ("processes", PROCESS_COLUMNS, view.processes),
        ("services", SERVICE_COLUMNS, view.services),
        ("reloads", RELOAD_COLUMNS, view.reloads),
    ):
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        out.append(title)
        for row in (list(columns), *rows):
            out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)))
        out.append("")
    return "\n".join(out)


def rich_tables(view: View) -> Any:
    from rich.console import Group
    from rich.table import Table

    tables = []
    for title, columns, rows in (
        ("processes", PROCESS_COLUMNS, view.processes),
        ("services", SERVICE_COLUMNS, view.services),
        ("last reload per proxy", RELOAD_COLUMNS, view.reloads),
    ):
        table = Table(title=title, title_justify="left")
        for c in columns:
            table.add_column(
                c,
                justify="left"
                if c in ("process", "service", "proxy", "role", "region", "state")
                else "right",
            )
        for row in rows:
            style = "red" if "down" in row else None
            table.add_row(*row, style=style)
        tables.append(table)
    return Group(*tables)


def frames(targets: Sequence[tuple[str, str, dict[str, str]]], interval_s: float) -> Iterable[View]:
    before = scrape_all(targets)
    while True:
        time.sleep(interval_s)
        after = scrape_all(targets)
        yield build_view(before, after, time.time())
        before = after


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="fleet top", description=__doc__.splitlines()[0])
    parser.add_argument("topology", nargs="?", default="topology/fleet.yaml")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    parser.add_argument(
        "--width", type=int, default=None, help="console width (default: the terminal's)"
    )
    args = parser.parse_args(argv)
    try:
        targets = scrape_targets(load_fleet(Path(args.topology)))
    except ConfigError as exc:
        print(f"fleet top: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    views = frames(targets, args.interval)
    try:
        from rich.console import Console
        from rich.live import Live
    except ImportError:
        if not args.once:
            print(
                "fleet top: rich is not installed (pip install '.[top]'); plain frames",
                file=sys.stderr,
            )
        for view in views:
            print(plain(view), flush=True)
            if args.once:
                return
        return
    console = Console(width=args.width)
    if args.once:
        console.print(rich_tables(next(iter(views))))
        return
    with Live(console=console, refresh_per_second=2, screen=False) as live:
        try:
            for view in views:
                live.update(rich_tables(view))
        except KeyboardInterrupt:
            return
