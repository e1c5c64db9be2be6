"""What a fault did to the load: one row per fault, computed from the request records alone
(pure functions, no fleet, no clock), and the table and RESULTS.md block that show them.

Windows. For a fault injected at ``t0`` that lasts ``hold`` seconds (0 for a kill or a
reload; 20 s for a stopped backend) and is watched for ``recovery_window`` seconds after
it ends, the *fault window* holds the requests sent in ``[t0, t0 + hold + recovery_window)``
and those sent in the settle period before it that were still in flight at ``t0`` (a
request cut by a SIGKILL is the fault's, even if it left a few milliseconds earlier). The
*baseline* is the rest of the settle period: requests sent in ``[t0 - settle, t0)`` and
finished before ``t0``. Requests are placed by the time they were due (sent), not by when
they finished: a request stalled for 20 s is charged to the second it was sent in. A row
counts the requests of the fault window, the failed ones by kind, those retried on a new
connection, the answers ``X-Cache: BYPASS``, and gives the p99 and the maximum latency over
the whole fault window. Latencies (here, in the baseline and in the recovery rule) are
those of the steady GETs only: a signin's is scrypt's (25 ms of CPU by design, 200 ms on
busy cores) and at two a second they would *be* the p99 of every one-second bin; signins
still count as sent and, when they fail, as failed.

Recovery time, precisely. The fault window is cut into bins of ``bin_s`` (1 s: at ~140
req/s a bin holds ~140 requests, enough for its p99 to mean something) starting at ``t0``;
requests in flight at ``t0`` count in the first bin.
A bin is *bad* when

- it holds more failed requests than twice the baseline failure rate predicts for it
  (with a clean baseline, any failed request makes its bin bad), or
- its p99 latency exceeds ``max(3 x baseline p99, baseline p99 + 100 ms)``. The faults
  under test stall requests for seconds, or for a Redis timeout (200 ms); the margin keeps
  out what a 2-core machine shared with other work does to a Python fleet (bins 100 ms
  slower than the baseline for several seconds were seen with no fault at all, while other
  test suites ran).

The recovery time is the end of the last bad bin, measured from ``t0``: 0 when no bin is
bad; the table says what made that bin bad (``fail``, ``lat``). A recovery set by latency
alone, in a run whose control row (``none``) is itself disturbed, is the machine's noise
more likely than the fault's doing. When a bad bin falls in the last ``hold_s`` seconds of the window the load had not
recovered when the window closed, and the recovery is reported as ``None`` ("> window").
The time the restarted process took to answer (its readiness probe, as the launcher sees
it) is a separate number, measured by the campaign, not derived from the load.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec

from bench.chaos_load import Record
from bench.parse import format_rows

BLOCK_BEGIN = "<!-- {name}:begin (written by bench/{module}.py; edits inside are overwritten) -->"
BLOCK_END = "<!-- {name}:end -->"


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (``q`` in 0..100) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True, slots=True)
class Baseline:
    requests: int
    failure_rate: float
    p99_s: float


def baseline_of(records: Sequence[Record]) -> Baseline:
    if not records:
        return Baseline(0, 0.0, 0.0)
    failed = sum(1 for r in records if r.failed)
    p99 = percentile([r.latency_s for r in records if r.timed], 99) or 0.0
    return Baseline(len(records), failed / len(records), p99)


@dataclass(frozen=True, slots=True)
class RecoveryRule:
    bin_s: float = 1.0
    failure_factor: float = 2.0
    latency_factor: float = 3.0
    latency_margin_s: float = 0.1
    hold_s: float = 3.0

    def latency_limit_s(self, baseline: Baseline) -> float:
        return max(self.latency_factor * baseline.p99_s, baseline.p99_s + self.latency_margin_s)


def in_fault_window(r: Record, t0: float, t_end: float, settle_s: float) -> bool:
    if t0 <= r.t < t_end:
        return True
    return t0 - settle_s <= r.t < t0 and r.t + r.latency_s >= t0


def in_baseline(r: Record, t0: float, settle_s: float) -> bool:
    return t0 - settle_s <= r.t < t0 and r.t + r.latency_s < t0


def bad_bins(
    records: Sequence[Record],
    t0: float,
    t_end: float,
    baseline: Baseline,
    rule: RecoveryRule,
    settle_s: float = 0.0,
) -> list[str]:
    """One verdict per bin of ``[t0, t_end)``: what disturbed it (``"failures"``,
    ``"latency"``, both joined by ``+``), or ``""``. ``records`` outside the fault window
    (see `in_fault_window`) are ignored."""
    n_bins = max(0, math.ceil((t_end - t0) / rule.bin_s - 1e-9))
    latencies: list[list[float]] = [[] for _ in range(n_bins)]
    failures = [0] * n_bins
    counts = [0] * n_bins
    if n_bins == 0:
        return []
    for r in records:
        if not in_fault_window(r, t0, t_end, settle_s):
            continue
        i = min(n_bins - 1, max(0, int((r.t - t0) / rule.bin_s)))
        if r.timed:
            latencies[i].append(r.latency_s)
        failures[i] += r.failed
        counts[i] += 1
    limit = rule.latency_limit_s(baseline)
    verdicts = []
    for lats, failed, count in zip(latencies, failures, counts, strict=True):
        allowed = rule.failure_factor * baseline.failure_rate * count
        p99 = percentile(lats, 99)
        causes = [
            *(["failures"] if failed > allowed else []),
            *(["latency"] if p99 is not None and p99 > limit else []),
        ]
        verdicts.append("+".join(causes))
    return verdicts


@dataclass(frozen=True, slots=True)
class Recovery:
    seconds: float | None  # None: still disturbed when the window closed
    cause: str  # what made the last bad bin bad ("" when none was)


def recovery(
    records: Sequence[Record],
    t0: float,
    t_end: float,
    baseline: Baseline,
    rule: RecoveryRule = RecoveryRule(),
    settle_s: float = 0.0,
) -> Recovery:
    """Seconds from ``t0`` to the end of the last bad bin (0 if none; None if the window
    closed while the load was still disturbed, see the module docstring), and why that
    bin was bad."""
    verdicts = bad_bins(records, t0, t_end, baseline, rule, settle_s)
    if not any(verdicts):
        return Recovery(0.0, "")
    last = max(i for i, bad in enumerate(verdicts) if bad)
    recovered_at = (last + 1) * rule.bin_s
    if t0 + recovered_at > t_end - rule.hold_s:
        return Recovery(None, verdicts[last])
    return Recovery(recovered_at, verdicts[last])


def recovery_time(
    records: Sequence[Record],
    t0: float,
    t_end: float,
    baseline: Baseline,
    rule: RecoveryRule = RecoveryRule(),
    settle_s: float = 0.0,
) -> float | None:
    """`recovery`'s seconds alone."""
    return recovery(records, t0, t_end, baseline, rule, settle_s).seconds


# -- rows ----------------------------------------------------------------------------------------
class FaultRow(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    fault: str
    title: str
    sent: int
    failed: int
    failed_by_kind: dict[str, int]
    retried: int
    bypass: int
    baseline_p99_ms: float
    p99_ms: float | None
    max_ms: float | None
    back_s: float | None  # the restarted process answered / the reload was applied
    recovery_s: float | None  # None: not recovered within the window
    window_s: float
    note: str = ""
    load1: float | None = None
    recovery_cause: str = ""  # what disturbed the last bad bin: failures, latency or both  # the machine's 1-minute load average when the window closed


def summarize(
    fault: str,
    title: str,
    records: Sequence[Record],
    *,
    t0: float,
    t_end: float,
    settle_s: float,
    back_s: float | None,
    rule: RecoveryRule = RecoveryRule(),
    note: str = "",
    load1: float | None = None,
) -> FaultRow:
    """The row of one fault from every record of the run (those outside its windows are
    ignored)."""
    base = baseline_of([r for r in records if in_baseline(r, t0, settle_s)])
    during = [r for r in records if in_fault_window(r, t0, t_end, settle_s)]
    kinds = Counter(r.kind for r in during if r.failed)
    lats = [r.latency_s for r in during if r.timed]
    p99 = percentile(lats, 99)
    recovered = recovery(records, t0, t_end, base, rule, settle_s)
    return FaultRow(
        fault=fault,
        title=title,
        sent=len(during),
        failed=sum(kinds.values()),
        failed_by_kind=dict(kinds.most_common()),
        retried=sum(1 for r in during if r.retried),
        bypass=sum(1 for r in during if r.cache == "BYPASS"),
        baseline_p99_ms=round(base.p99_s * 1000, 2),
        p99_ms=None if p99 is None else round(p99 * 1000, 2),
        max_ms=round(max(lats) * 1000, 2) if lats else None,
        back_s=None if back_s is None else round(back_s, 2),
        recovery_s=recovered.seconds,
        window_s=round(t_end - t0, 2),
        note=note,
        load1=load1,
        recovery_cause=recovered.cause,
    )


# -- the table -----------------------------------------------------------------------------------
TABLE_HEADER = (
    "fault",
    "sent",
    "failed",
    "failed by kind",
    "retried",
    "bypass",
    "base p99 ms",
    "p99 ms",
    "max ms",
    "back s",
    "recovery s",
    "load",
)


_CAUSE = {"failures": "fail", "latency": "lat", "failures+latency": "fail+lat"}


def _recovery_cell(row: FaultRow) -> str:
    seconds = f">{row.window_s:g}" if row.recovery_s is None else f"{row.recovery_s:g}"
    cause = _CAUSE.get(row.recovery_cause, row.recovery_cause)
    return f"{seconds} {cause}" if cause else seconds


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _kinds(kinds: dict[str, int]) -> str:
    return ", ".join(f"{k}: {n}" for k, n in kinds.items()) or "-"


def format_fault_table(rows: Sequence[FaultRow]) -> str:
    return format_rows(
        TABLE_HEADER,
        [
            (
                r.fault,
                str(r.sent),
                str(r.failed),
                _kinds(r.failed_by_kind),
                str(r.retried),
                str(r.bypass),
                _ms(r.baseline_p99_ms),
                _ms(r.p99_ms),
                _ms(r.max_ms),
                "-" if r.back_s is None else f"{r.back_s:.2f}",
                _recovery_cell(r),
                "-" if r.load1 is None else f"{r.load1:.1f}",
            )
            for r in rows
        ],
    )


# -- RESULTS.md ------------------------------------------------------------------------------------
def replace_block(document: str, name: str, module: str, body: str) -> str:
    """``document`` with the block ``name`` set to ``body``: replaced where it is, appended
    (after a blank line) where it is not yet."""
    begin = BLOCK_BEGIN.format(name=name, module=module)
    end = BLOCK_END.format(name=name)
    block = f"{begin}\n{body.strip()}\n{end}\n"
    pattern = re.compile(re.escape(f"<!-- {name}:begin") + r".*?" + re.escape(end) + r"\n?", re.S)
    if pattern.search(document):
        return pattern.sub(lambda _: block, document, count=1)
    return f"{document.rstrip()}\n\n{block}" if document.strip() else block
