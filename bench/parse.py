"""Turn the text that ApacheBench (`ab`) and `wrk` print into one comparable record.

The original project's benchmarks were `ab` runs whose output was read by eye; we keep the
same tools (so numbers stay comparable with the original's README) and parse their reports
instead. Both formats are stable across the Debian builds we use (ab 2.3, wrk 4.x), but the
parsers only rely on labelled lines, never on line positions, and refuse an output that lacks
the summary (ab prints none when it aborts, e.g. on ``apr_socket_recv: Connection reset``), so
a broken run is never reported as a fast one.

Units: every latency is in milliseconds. ab prints whole milliseconds in its percentile table;
wrk prints a unit per value (``us``, ``ms``, ``s``, ``m``). wrk has no "failed requests": its
socket errors (connect, read, write, timeout) are the closest equivalent and are summed.
"""

from __future__ import annotations

import re

import msgspec

from topology.table import format_rows as format_rows  # the benchmarks print tables with it


class BenchOutputError(Exception):
    """The tool's output holds no summary: the run failed, the text says why."""


class BenchResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    tool: str  # "ab" or "wrk"
    requests: int
    duration_s: float
    requests_per_s: float
    failures: int
    non_2xx: int
    mean_ms: float
    p50_ms: float | None
    p99_ms: float | None
    longest_ms: float | None
    transfer_kib_s: float | None
    bytes_received: int | None = None
    percentiles_ms: dict[str, float] = {}
    failure_detail: dict[str, int] = {}


# field -> (the label ab prints, its pattern)
_AB_FIELDS = {
    "requests": ("Complete requests", re.compile(r"^Complete requests:\s+(\d+)", re.M)),
    "failures": ("Failed requests", re.compile(r"^Failed requests:\s+(\d+)", re.M)),
    "duration_s": (
        "Time taken for tests",
        re.compile(r"^Time taken for tests:\s+([\d.]+) seconds", re.M),
    ),
    "requests_per_s": (
        "Requests per second",
        re.compile(r"^Requests per second:\s+([\d.]+)", re.M),
    ),
    "mean_ms": (
        "Time per request",
        re.compile(r"^Time per request:\s+([\d.]+) \[ms\] \(mean\)", re.M),
    ),
}
_AB_NON_2XX = re.compile(r"^Non-2xx responses:\s+(\d+)", re.M)
_AB_RECEIVED = re.compile(r"^Total transferred:\s+(\d+) bytes", re.M)
_AB_TRANSFER = re.compile(r"^Transfer rate:\s+([\d.]+) \[Kbytes/sec\]", re.M)
_AB_PERCENTILE = re.compile(r"^\s*(\d+)%\s+(\d+)", re.M)
_AB_FAILURE_DETAIL = re.compile(
    r"^\s*\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", re.M
)


def _missing(text: str, what: str) -> BenchOutputError:
    tail = "\n".join(text.strip().splitlines()[-5:])
    return BenchOutputError(f"no {what!r} in the output; it ends with:\n{tail}")


def _require(pattern: re.Pattern[str], text: str, what: str) -> str:
    match = pattern.search(text)
    if match is None:
        raise _missing(text, what)
    return match.group(1)


def parse_ab(text: str) -> BenchResult:
    values = {key: _require(pattern, text, label) for key, (label, pattern) in _AB_FIELDS.items()}
    non_2xx = _AB_NON_2XX.search(text)
    transfer = _AB_TRANSFER.search(text)
    received = _AB_RECEIVED.search(text)
    percentiles = {m.group(1): float(m.group(2)) for m in _AB_PERCENTILE.finditer(text)}
    detail = _AB_FAILURE_DETAIL.search(text)
    failure_detail = (
        dict(
            zip(
                ("connect", "receive", "length", "exceptions"),
                map(int, detail.groups()),
                strict=True,
            )
        )
        if detail
        else {}
    )
    return BenchResult(
        tool="ab",
        requests=int(values["requests"]),
        duration_s=float(values["duration_s"]),
        requests_per_s=float(values["requests_per_s"]),
        failures=int(values["failures"]),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        mean_ms=float(values["mean_ms"]),
        p50_ms=percentiles.get("50"),
        p99_ms=percentiles.get("99"),
        longest_ms=percentiles.get("100"),
        transfer_kib_s=float(transfer.group(1)) if transfer else None,
        bytes_received=int(received.group(1)) if received else None,
        percentiles_ms=percentiles,
        failure_detail=failure_detail,
    )


_WRK_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_WRK_SIZE_UNITS_KIB = {"B": 1 / 1024, "KB": 1.0, "MB": 1024.0, "GB": 1024.0**2, "TB": 1024.0**3}
_WRK_LATENCY = re.compile(
    r"^\s*Latency\s+([\d.]+)(us|ms|s|m|h)\s+([\d.]+)(us|ms|s|m|h)\s+([\d.]+)(us|ms|s|m|h)", re.M
)
_WRK_DISTRIBUTION = re.compile(r"^\s*(\d+)%\s+([\d.]+)(us|ms|s|m|h)\s*$", re.M)
_WRK_TOTAL = re.compile(
    r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m|h), ([\d.]+)([KMGT]?B) read", re.M
)
_WRK_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.M)
_WRK_TRANSFER = re.compile(r"^Transfer/sec:\s+([\d.]+)([KMGT]?B)", re.M)
_WRK_SOCKET_ERRORS = re.compile(
    r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", re.M
)
_WRK_NON_2XX = re.compile(r"^\s*Non-2xx or 3xx responses:\s+(\d+)", re.M)


def _wrk_ms(number: str, unit: str) -> float:
    return float(number) * _WRK_TIME_UNITS_MS[unit]


def parse_wrk(text: str) -> BenchResult:
    total = _WRK_TOTAL.search(text)
    if total is None:
        raise _missing(text, "requests in")
    latency = _WRK_LATENCY.search(text)
    if latency is None:
        raise _missing(text, "Latency")
    rps = float(_require(_WRK_RPS, text, "Requests/sec"))
    percentiles = {
        m.group(1): round(_wrk_ms(m.group(2), m.group(3)), 3)
        for m in _WRK_DISTRIBUTION.finditer(text)
    }
    errors = _WRK_SOCKET_ERRORS.search(text)
    failure_detail = (
        dict(zip(("connect", "read", "write", "timeout"), map(int, errors.groups()), strict=True))
        if errors
        else {}
    )
    non_2xx = _WRK_NON_2XX.search(text)
    transfer = _WRK_TRANSFER.search(text)
    return BenchResult(
        tool="wrk",
        requests=int(total.group(1)),
        duration_s=_wrk_ms(total.group(2), total.group(3)) / 1000.0,
        requests_per_s=rps,
        failures=sum(failure_detail.values()),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        mean_ms=round(_wrk_ms(latency.group(1), latency.group(2)), 3),
        p50_ms=percentiles.get("50"),
        p99_ms=percentiles.get("99"),
        longest_ms=round(_wrk_ms(latency.group(5), latency.group(6)), 3),
        transfer_kib_s=(
            round(float(transfer.group(1)) * _WRK_SIZE_UNITS_KIB[transfer.group(2)], 2)
            if transfer
            else None
        ),
        bytes_received=round(float(total.group(4)) * _WRK_SIZE_UNITS_KIB[total.group(5)] * 1024),
        percentiles_ms=percentiles,
        failure_detail=failure_detail,
    )


TABLE_COLUMNS = ("name", "req/s", "failures", "non-2xx", "mean ms", "p99 ms", "longest ms")


def _cell(value: float | int | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return str(value)
    return f"{value:.2f}"


def format_table(rows: list[tuple[str, BenchResult]]) -> str:
    """A fixed-width table, one row per (name, result)."""
    return format_rows(
        TABLE_COLUMNS,
        [
            (
                name,
                _cell(r.requests_per_s),
                _cell(r.failures),
                _cell(r.non_2xx),
                _cell(r.mean_ms),
                _cell(r.p99_ms),
                _cell(r.longest_ms),
            )
            for name, r in rows
        ],
    )
