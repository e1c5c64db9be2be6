"""What `bench.hop` makes of its runs: the best of each figure, its spread, the ratios, the
saved record and the chart. Pure functions over parsed results (`bench.parse.BenchResult`),
so all of it is tested without starting a server.

Why the best and not the mean: on a 2-core machine shared with other work, every
disturbance makes a run slower, none makes it faster, so the best of the rounds is the
closest to what the server can do; the spread, ``(best - worst) / best``, says how much the
machine moved under it. Ratios are taken between bests of the same load in the same run
(targets alternate inside each round), which is what survives the noise.

A run with failures or non-2xx answers is kept and flagged with ``!`` in the table: a fast
run that failed must never pass for a fast run.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from bench.parse import BenchResult, format_rows


class Sample(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One run of one load against one target."""

    target: str
    load: str
    round: int
    command: list[str]
    result: BenchResult
    output: str = ""


@dataclass(frozen=True, slots=True)
class Figure:
    """The runs of one load against one target, summed up."""

    target: str
    load: str
    best: float
    worst: float
    runs: int
    failures: int
    non_2xx: int

    @property
    def spread(self) -> float:
        return 0.0 if self.best <= 0 else (self.best - self.worst) / self.best

    @property
    def clean(self) -> bool:
        return self.failures == 0 and self.non_2xx == 0


@dataclass(frozen=True, slots=True)
class Ratio:
    numerator: str
    denominator: str
    load: str
    value: float


def aggregate(samples: Iterable[Sample]) -> dict[tuple[str, str], Figure]:
    """(target, load) -> its `Figure`, in the order the pairs were first run."""
    grouped: dict[tuple[str, str], list[BenchResult]] = {}
    for sample in samples:
        grouped.setdefault((sample.target, sample.load), []).append(sample.result)
    return {
        (target, load): Figure(
            target=target,
            load=load,
            best=max(r.requests_per_s for r in results),
            worst=min(r.requests_per_s for r in results),
            runs=len(results),
            failures=sum(r.failures for r in results),
            non_2xx=sum(r.non_2xx for r in results),
        )
        for (target, load), results in grouped.items()
    }


def ratios(
    figures: dict[tuple[str, str], Figure],
    comparisons: Iterable[tuple[str, str]],
    loads: Sequence[str],
) -> list[Ratio]:
    """best(numerator) / best(denominator) per load, for each pair both sides of which ran."""
    out = []
    for numerator, denominator in comparisons:
        for load in loads:
            top, bottom = figures.get((numerator, load)), figures.get((denominator, load))
            if top is not None and bottom is not None and bottom.best > 0:
                out.append(Ratio(numerator, denominator, load, top.best / bottom.best))
    return out


def _cell(figure: Figure | None) -> str:
    if figure is None:
        return "-"
    flag = "" if figure.clean else " !"
    return f"{figure.best:,.0f} ±{figure.spread * 100:.0f}%{flag}"


def figures_table(
    figures: dict[tuple[str, str], Figure],
    labels: dict[str, str],
    loads: Sequence[str],
) -> str:
    """One row per target (in ``labels`` order), one column per load: best req/s and spread."""
    rows = [
        (labels[name], *(_cell(figures.get((name, load))) for load in loads))
        for name in labels
        if any((name, load) in figures for load in loads)
    ]
    return format_rows(("target", *(f"{load} req/s" for load in loads)), rows)


def ratios_table(found: Sequence[Ratio], loads: Sequence[str]) -> str:
    pairs = list(dict.fromkeys((r.numerator, r.denominator) for r in found))
    by_key = {(r.numerator, r.denominator, r.load): r.value for r in found}
    rows = [
        (
            f"{top} / {bottom}",
            *(
                f"{by_key[(top, bottom, load)]:.2f}" if (top, bottom, load) in by_key else "-"
                for load in loads
            ),
        )
        for top, bottom in pairs
    ]
    return format_rows(("ratio", *loads), rows)


def failures_note(figures: dict[tuple[str, str], Figure]) -> str:
    bad = [f for f in figures.values() if not f.clean]
    return "\n".join(
        f"! {f.target} {f.load}: {f.failures} failed, {f.non_2xx} non-2xx over {f.runs} runs"
        for f in bad
    )


def record(
    *,
    started: str,
    host: dict[str, Any],
    settings: dict[str, Any],
    targets: Sequence[dict[str, Any]],
    samples: Sequence[Sample],
    figures: dict[tuple[str, str], Figure],
    found: Sequence[Ratio],
) -> dict[str, Any]:
    """The JSON saved for a run: enough to redraw the table and to audit every figure."""
    return {
        "benchmark": "hop",
        "started": started,
        "host": host,
        "settings": settings,
        "targets": list(targets),
        "figures": [
            {
                "target": f.target,
                "load": f.load,
                "best_rps": round(f.best, 2),
                "worst_rps": round(f.worst, 2),
                "spread": round(f.spread, 4),
                "runs": f.runs,
                "failures": f.failures,
                "non_2xx": f.non_2xx,
            }
            for f in figures.values()
        ],
        "ratios": [
            {
                "numerator": r.numerator,
                "denominator": r.denominator,
                "load": r.load,
                "value": round(r.value, 4),
            }
            for r in found
        ],
        "samples": [msgspec.to_builtins(s) for s in samples],
    }


def save(out_dir: Path, stem: str, data: dict[str, Any]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stem}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def draw_chart(
    path: Path,
    figures: dict[tuple[str, str], Figure],
    labels: dict[str, str],
    loads: Sequence[str],
    title: str,
) -> str | None:
    """A grouped bar chart (best req/s, a whisker down to the worst run) saved to ``path``;
    returns why it was skipped, or None when it was drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -e '.[bench]'): no chart"
    names = [n for n in labels if any((n, load) in figures for load in loads)]
    width = 0.8 / max(len(loads), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names) + 2), 4.5))
    for i, load in enumerate(loads):
        xs = [j + (i - (len(loads) - 1) / 2) * width for j in range(len(names))]
        found = [figures.get((n, load)) for n in names]
        best = [f.best if f else 0.0 for f in found]
        down = [f.best - f.worst if f else 0.0 for f in found]
        bars = ax.bar(xs, best, width, label=load, yerr=[down, [0.0] * len(down)], capsize=2)
        ax.bar_label(bars, labels=[f"{b:,.0f}" for b in best], fontsize=6, rotation=90, padding=2)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([labels[n] for n in names], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("requests/s (best; whisker: worst round)")
    ax.margins(y=0.15)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None
