"""``python -m bench.soak --minutes N`` (``make soak``): does any process of the fleet grow
under a steady load that keeps the cache busy?

The fleet and the load are those of `bench.chaos` (same shape, same isolation, the same
mix of keep-alive and new connections, cached and uncached paths and signins, through the
first region's ELB), plus two streams of always-new URLs on the cached service, each sent
straight to one proxy of that region so that each proxy's series answers one question:

- ``new-fill`` to the region's first proxy: ``/video/bytes/<B>?fill=<n>&cache-control=
  public, max-age=<T>``, stored for ``T`` = a third of the soak (``public``: the requests
  carry a token, and a shared cache keeps an answer to one only when it says so, RFC 9111 3.5), with ``B`` chosen so that they
  fill the memory tier to its cap (``Cache.memory_max_bytes`` of the shipped config.json)
  after ``T / 3``. The tier reaches its cap early in the warm-up and must evict from then
  on: does RSS level off once it is at its cap? (Redis keeps them for ``T``, about three
  caps' worth, and levels off by the end of the warm-up too.)
- ``new-expiring`` to the second proxy: ``/video/index.html?soak=<n>``, stored with the
  service's default TTL (30 s), small, never reaching the cap: does the tier let them go
  once they expired, or do they pile up (issue 9, item 2: +2.7 MiB/min)?

Every ``--sample-s`` seconds (30) it reads each child's RSS (``VmRSS`` of
``/proc/PID/status``) and open descriptors (the entries of ``/proc/PID/fd``), and each
proxy's own account of its memory tier (``/admin/backends``).

The trend test, per process: the samples are cut in thirds; the first is the warm-up and is
ignored. RSS *trends up* when the mean of the last third exceeds the mean of the middle
third by more than 10 % (issue 9's target: proxy RSS flat within 10 % once the cache is at
its cap). Descriptors *grow* when the median of the last third exceeds the median of the
middle third by more than ``FD_SLACK`` (5): a few connections open at the moment of a
sample are noise, a leak of one descriptor per thousand requests is not (~80 in 10
minutes). A process that was restarted during the soak is reported as such: its series
starts again and its trend says nothing.

Output: the series, a table of verdicts, JSON in ``bench/results/soak-<timestamp>.json``,
and the block ``soak`` of ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import textwrap
import time
import traceback
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from bench.chaos import CACHED, PROSE_WIDTH, SERVICE, load_mix, parse_positive
from bench.chaos_fleet import RUN_BASE, BenchFleet, interrupt_on_sigterm, isolate
from bench.chaos_load import LoadGenerator, Record, RequestClass
from bench.chaos_measure import percentile, replace_block
from bench.parse import format_rows
from bench.policies import save
from bench.run import acquire_token, raise_open_files_limit, signin_body
from topology.load import load_config, load_msa

RESULTS_MD = Path(__file__).resolve().parent / "RESULTS.md"
RSS_THRESHOLD = 0.10
FD_SLACK = 5
DEFAULT_RATE = 100.0  # the normal mix; the new-URL streams come on top
DEFAULT_NEW_RATE = 40.0  # both new-URL streams together
MiB = 1024 * 1024
ADMIN_TIMEOUT_S = 2.0


# -- the trend test (pure) -------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Thirds:
    warmup: list[float]
    middle: list[float]
    last: list[float]


def thirds(series: Sequence[float]) -> Thirds | None:
    """The series cut in thirds, any remainder added to the warm-up; None below 3 samples."""
    n = len(series)
    k = n // 3
    if k == 0:
        return None
    values = list(series)
    return Thirds(values[: n - 2 * k], values[n - 2 * k : n - k], values[n - k :])


class Trend(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    middle: float
    last: float
    change: float  # RSS: last / middle - 1; fds: last - middle
    trending: bool


def rss_trend(series: Sequence[float], threshold: float = RSS_THRESHOLD) -> Trend | None:
    cut = thirds(series)
    if cut is None:
        return None
    middle, last = statistics.fmean(cut.middle), statistics.fmean(cut.last)
    change = last / middle - 1.0 if middle > 0 else 0.0
    return Trend(middle, last, change, last > middle * (1.0 + threshold))


def fd_trend(series: Sequence[float], slack: float = FD_SLACK) -> Trend | None:
    cut = thirds(series)
    if cut is None:
        return None
    middle, last = statistics.median(cut.middle), statistics.median(cut.last)
    return Trend(middle, last, last - middle, last - middle > slack)


# -- sampling --------------------------------------------------------------------------------------
def read_rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def count_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class Sample(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    t: float  # seconds since the load started
    pid: dict[str, int]
    rss: dict[str, int]  # bytes
    fds: dict[str, int]
    tier: dict[str, dict[str, Any]]  # proxy -> its memory tier's statistics


def memory_tier(url: str) -> dict[str, Any]:
    """The memory tier's counters as the proxy reports them ({} if it does not)."""
    try:
        with urllib.request.urlopen(f"{url}/admin/backends", timeout=ADMIN_TIMEOUT_S) as resp:
            view = json.load(resp)
    except (OSError, ValueError):
        return {}
    cache = view.get("cache") or {}
    memory = (cache.get("store") or {}).get("memory") or {}
    return dict(memory) if isinstance(memory, dict) else {}


def take_sample(fleet: BenchFleet, t: float) -> Sample:
    pids = fleet.pids()
    rss = {n: v for n, pid in pids.items() if (v := read_rss_bytes(pid)) is not None}
    fds = {n: v for n, pid in pids.items() if (v := count_fds(pid)) is not None}
    tier = {n: memory_tier(fleet.url(n)) for n in fleet.names("proxy")}
    return Sample(round(t, 1), pids, rss, fds, tier)


# -- the verdicts ------------------------------------------------------------------------------
class ProcessVerdict(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    pids: list[int]
    rss_mib: list[float]
    fds: list[int]
    rss: Trend | None
    fd: Trend | None

    @property
    def restarted(self) -> bool:
        return len(set(self.pids)) > 1


def verdicts(samples: Sequence[Sample]) -> list[ProcessVerdict]:
    names = list(dict.fromkeys(n for s in samples for n in s.pid))
    out = []
    for name in names:
        pids = [s.pid[name] for s in samples if name in s.pid]
        rss = [round(s.rss[name] / MiB, 1) for s in samples if name in s.rss]
        fds = [s.fds[name] for s in samples if name in s.fds]
        out.append(
            ProcessVerdict(
                name,
                list(dict.fromkeys(pids)),
                rss,
                fds,
                rss_trend(rss),
                fd_trend([float(x) for x in fds]),
            )
        )
    return out


def _word(trend: Trend | None, restarted: bool, what: str) -> str:
    if restarted:
        return "RESTARTED"
    if trend is None:
        return "too short"
    return what if trend.trending else "flat"


def format_verdicts(rows: Sequence[ProcessVerdict], roles: dict[str, str] | None = None) -> str:
    header = (
        "process",
        "RSS MiB first",
        "middle",
        "last",
        "change",
        "RSS",
        "fds middle",
        "last",
        "fds",
    )
    lines = []
    for v in rows:
        r, f = v.rss, v.fd
        role = (roles or {}).get(v.name)
        lines.append(
            (
                f"{v.name} ({role})" if role else v.name,
                f"{v.rss_mib[0]:.1f}" if v.rss_mib else "-",
                "-" if r is None else f"{r.middle:.1f}",
                "-" if r is None else f"{r.last:.1f}",
                "-" if r is None else f"{r.change * 100:+.1f} %",
                _word(r, v.restarted, "TRENDS UP"),
                "-" if f is None else f"{f.middle:g}",
                "-" if f is None else f"{f.last:g}",
                _word(f, v.restarted, "GROWS"),
            )
        )
    return format_rows(header, lines)


def format_series(rows: Sequence[ProcessVerdict], samples: Sequence[Sample]) -> str:
    times = " ".join(f"{s.t:g}" for s in samples)
    out = [f"sampled at (s): {times}"]
    for v in rows:
        out.append(f"{v.name} RSS MiB: {' '.join(f'{x:g}' for x in v.rss_mib)}")
        out.append(f"{v.name} fds: {' '.join(str(x) for x in v.fds)}")
    for proxy in dict.fromkeys(n for s in samples for n in s.tier):
        entries = [str(s.tier.get(proxy, {}).get("entries", "-")) for s in samples]
        mib = [
            f"{s.tier[proxy]['bytes'] / MiB:.1f}" if "bytes" in s.tier.get(proxy, {}) else "-"
            for s in samples
        ]
        out.append(f"{proxy} tier entries: {' '.join(entries)}")
        out.append(f"{proxy} tier MiB (its own count): {' '.join(mib)}")
    return "\n".join(out)


def load_summary(records: Sequence[Record]) -> dict[str, Any]:
    kinds = Counter(r.kind for r in records if r.failed)
    timed = [r.latency_s for r in records if r.timed]  # as in bench.chaos_measure
    p99 = percentile(timed, 99)
    return {
        "sent": len(records),
        "failed": sum(kinds.values()),
        "failed_by_kind": dict(kinds.most_common()),
        "retried": sum(1 for r in records if r.retried),
        "x_cache": dict(Counter(r.cache for r in records if r.cache).most_common()),
        "by_class": dict(Counter(r.cls for r in records).most_common()),
        "p99_ms": None if p99 is None else round(p99 * 1000, 2),
        "max_ms": round(max(timed) * 1000, 2) if timed else None,
    }


# -- the run -----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class FillPlan:
    body_bytes: int
    ttl_s: int


def plan_fill(
    minutes: float, fill_rate: float, cap_bytes: int, proxies: int, max_object_bytes: int
) -> FillPlan:
    """Body size and lifetime of the ``new-fill`` URLs (see the module docstring)."""
    ttl = max(30, round(minutes * 60 / 3))
    per_proxy_rate = fill_rate / max(1, proxies)
    wanted = cap_bytes / (per_proxy_rate * ttl / 3) if per_proxy_rate > 0 else 0
    body = int(min(max(wanted, 1024), max_object_bytes // 2))
    return FillPlan(body, ttl)


@dataclass(frozen=True, slots=True)
class Stream:
    """One generator of the soak: what it sends, and to which child (None: the ELB)."""

    name: str
    target: str | None
    classes: list[RequestClass]


def soak_streams(
    rate: float, new_rate: float, fill: FillPlan, proxies: Sequence[str]
) -> list[Stream]:
    """The chaos mix through the ELB, the fill to the first proxy, the expiring URLs to
    the second (the first too, when the region has only one)."""
    half = max(1, round(new_rate / 2))
    fill_path = (
        f"/{SERVICE}/bytes/{fill.body_bytes}?fill={{n}}"
        f"&cache-control=public%2C%20max-age%3D{fill.ttl_s}"
    )
    return [
        Stream("mix", None, load_mix(rate)),
        Stream("fill", proxies[0], [RequestClass("new-fill", fill_path, True, weight=half)]),
        Stream(
            "expiring",
            proxies[1 % len(proxies)],
            [RequestClass("new-expiring", f"{CACHED}?soak={{n}}", True, weight=half)],
        ),
    ]


def results_block(
    rows: Sequence[ProcessVerdict],
    summary: dict[str, Any],
    command: str,
    isolation: str,
    minutes: float,
    fill: FillPlan,
    roles: dict[str, str],
    json_path: Path,
) -> str:
    up = [v.name for v in rows if v.rss is not None and v.rss.trending and not v.restarted]
    grows = [v.name for v in rows if v.fd is not None and v.fd.trending and not v.restarted]
    restarted = [v.name for v in rows if v.restarted]
    kinds = ", ".join(f"{k}: {n}" for k, n in summary["failed_by_kind"].items()) or "none"
    intro = (
        f"{time.strftime('%Y-%m-%d %H:%M %Z')}, `{command}` ({minutes:g} minutes); {isolation}."
        " Load: the chaos mix through the ELB, plus always-new cached URLs straight to one"
        f" proxy each: {fill.body_bytes:,}-byte bodies kept {fill.ttl_s} s, to fill the"
        f" memory tier of {_role(roles, 'fill')}, and small ones with the default TTL, to"
        f" expire, on {_role(roles, 'expiring')}."
        f" {summary['sent']:,} requests, {summary['failed']} failed ({kinds}), p99 of the"
        f" GETs {summary['p99_ms']} ms, X-Cache {summary['x_cache']}. Trend test in the"
        f" header of `bench/soak.py`; series in `{json_path}`."
    )
    return "\n".join(
        [
            "## Soak (`make soak`)",
            "",
            textwrap.fill(intro, width=PROSE_WIDTH, break_on_hyphens=False),
            "",
            "```",
            format_verdicts(rows, roles),
            "```",
            "",
            f"RSS trending up: {', '.join(up) or 'none'}; fds growing: {', '.join(grows) or 'none'}"
            + (f"; restarted: {', '.join(restarted)}" if restarted else "")
            + ".",
        ]
    )


def _role(roles: dict[str, str], role: str) -> str:
    return ", ".join(f"`{name}`" for name, r in roles.items() if role in r.split("+")) or "-"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description="RSS and fds of every process under load"
    )
    parser.add_argument("--minutes", type=parse_positive, default=10.0)
    parser.add_argument("--sample-s", type=parse_positive, default=30.0)
    parser.add_argument("--rate", type=parse_positive, default=DEFAULT_RATE)
    parser.add_argument("--new-rate", type=parse_positive, default=DEFAULT_NEW_RATE)
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--no-results-md", action="store_true")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    isolation = isolate("bench.soak", argv)
    interrupt_on_sigterm()
    raise_open_files_limit()
    print(f"soak: {isolation}", flush=True)
    samples: list[Sample] = []
    interrupted = ""
    out = lambda line: print(line, flush=True)  # noqa: E731
    # test_faults: the fill stream asks the backend for its Cache-Control (``cache-control=``)
    with BenchFleet(RUN_BASE / "soak", out=out, test_faults=True) as fleet:
        assert fleet.layout is not None and fleet.run_dir is not None
        print(fleet.call(fleet.fleet.table), flush=True)
        region = fleet.layout.topology.regions[0]
        config = load_config(fleet.run_dir / "config.json")
        msa = {s.name: s for s in load_msa(fleet.run_dir / f"msa_{region.code}.yaml").service}
        fill = plan_fill(
            args.minutes,
            args.new_rate / 2,
            config.cache.memory_max_bytes,
            1,
            min(config.cache.memory_max_object_bytes, msa[SERVICE].cache.max_body_bytes),
        )
        host, port = fleet.layout.elb()
        token = acquire_token(f"http://{host}:{port}")
        streams = soak_streams(args.rate, args.new_rate, fill, fleet.names("proxy", region.code))
        roles: dict[str, str] = {}
        for s in streams:
            if s.target is not None:
                roles[s.target] = f"{roles[s.target]}+{s.name}" if s.target in roles else s.name
        for stream in streams:
            print(f"soak: {stream.name} -> {stream.target or 'the ELB'}", flush=True)
        print(f"soak: new-fill bodies of {fill.body_bytes} bytes kept {fill.ttl_s} s", flush=True)
        loads = [
            LoadGenerator(
                host if s.target is None else "127.0.0.1",
                port if s.target is None else fleet.port(s.target),
                s.classes,
                rate=float(sum(c.weight for c in s.classes)),
                token=token,
                signin_body=signin_body(),
            )
            for s in streams
        ]
        n_samples = math.floor(args.minutes * 60 / args.sample_s) + 1
        for load in loads:
            load.start()
        start = time.monotonic()
        try:
            for i in range(n_samples):
                due = start + i * args.sample_s
                while (left := due - time.monotonic()) > 0:
                    time.sleep(min(left, 1.0))
                sample = take_sample(fleet, time.monotonic() - start)
                samples.append(sample)
                proxies = ", ".join(
                    f"{n} {sample.rss.get(n, 0) / MiB:.1f} MiB" for n in fleet.names("proxy")
                )
                print(f"soak: sample {i + 1}/{n_samples} at {sample.t:g} s: {proxies}", flush=True)
        except KeyboardInterrupt as exc:
            interrupted = str(exc) or "interrupted"
            print(f"soak: {interrupted}: stopping; the samples so far follow", flush=True)
        except Exception as exc:
            traceback.print_exc()
            interrupted = f"error: {exc!r}"
        finally:
            for load in loads:
                load.stop()
        records = sorted((r for load in loads for r in load.records()), key=lambda r: r.t)
        run_dir = str(fleet.run_dir)
        generator = {s.name: load.statistics() for s, load in zip(streams, loads, strict=True)}
    rows = verdicts(samples)
    summary = load_summary(records)
    print(format_series(rows, samples))
    print(format_verdicts(rows, roles))
    print(f"soak: requests {summary}")
    path = save(
        args.out,
        "soak",
        {
            "tool": "soak",
            "command": " ".join(["python -m bench.soak", *argv]),
            "isolation": isolation,
            "minutes": args.minutes,
            "sample_s": args.sample_s,
            "fill": {"body_bytes": fill.body_bytes, "ttl_s": fill.ttl_s},
            "roles": roles,
            "run_dir": run_dir,
            "generator": generator,
            "interrupted": interrupted,
            "requests": summary,
            "verdicts": [msgspec.to_builtins(v) for v in rows],
            "samples": [msgspec.to_builtins(s) for s in samples],
        },
    )
    print(f"soak: saved {path}")
    if not args.no_results_md and not interrupted and samples:
        command = f"python -m bench.soak {' '.join(argv)}".strip()
        block = results_block(rows, summary, command, isolation, args.minutes, fill, roles, path)
        document = RESULTS_MD.read_text() if RESULTS_MD.exists() else ""
        RESULTS_MD.write_text(replace_block(document, "soak", "soak", block))
        print(f"soak: updated the soak block of {RESULTS_MD}")
    if interrupted:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
