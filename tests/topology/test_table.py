"""`topology.table`: the launcher's and the benchmarks' one table formatter."""

from __future__ import annotations

from topology.table import format_rows


def test_numbers_right_names_left_and_no_trailing_spaces() -> None:
    text = format_rows(("name", "req/s"), [("regular", "5450.00"), ("wrk", "21.5")])
    assert text.splitlines() == ["name       req/s", "regular  5450.00", "wrk         21.5"]


def test_every_column_left_for_the_fleet_table() -> None:
    text = format_rows(("NAME", "PORT", "LOG"), [("redis", "6379", "run/x.log")], left=3)
    assert text.splitlines() == ["NAME   PORT  LOG", "redis  6379  run/x.log"]
