"""Fixed-width text tables, as the launcher prints its children and the benchmarks their runs.

One formatter for both (they had a copy each): columns two spaces apart, each as wide as its
widest cell; the first ``left`` columns left-aligned (names, paths), the rest right-aligned
(numbers), and no line ends in spaces. Pure.
"""

from __future__ import annotations

from collections.abc import Sequence


def format_rows(header: Sequence[str], lines: Sequence[Sequence[str]], *, left: int = 1) -> str:
    table = [tuple(header), *map(tuple, lines)]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in table
    )
