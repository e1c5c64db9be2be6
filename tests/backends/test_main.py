"""`backends.main`: the command line and the app it builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.main import build_app, parse_args

# -- command line -------------------------------------------------------------------------------


def test_build_app_from_arguments(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_bytes(b"root")
    app = build_app(parse_args(["5002", "--root", str(tmp_path), "--name", "video-1"]))
    assert app.name == "video-1" and app.port == 5002
    assert app.site.paths() == ["/index.html"]
    default = build_app(parse_args(["5003"]))
    assert default.name == "backend-5003" and "/large.pdf" in default.site
    with pytest.raises(SystemExit):
        build_app(parse_args(["5004", "--root", str(tmp_path / "missing")]))


def test_fault_switches_are_off_unless_asked_for() -> None:
    assert not build_app(parse_args(["5000"])).test_faults
    assert build_app(parse_args(["5000", "--test-faults"])).test_faults


def test_delay_ms_option_is_parsed_and_bounded() -> None:
    from backends.main import build_app, parse_args

    assert build_app(parse_args(["5000", "--delay-ms", "20"])).delay_s == 0.02
    with pytest.raises(SystemExit):
        parse_args(["5000", "--delay-ms", "-1"])
