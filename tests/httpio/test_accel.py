"""Which build a process runs (`httpio.accel`): the compiled modules only when asked for and
fresh, the pure ones otherwise, and a run that demanded the compiled ones really runs them.
Pure but for the subprocesses that check how a process stops."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from httpio import accel
from httpio.settings import HealthSettings, ServerLimits, UpstreamTimeouts


def test_this_run_runs_the_build_it_asked_for() -> None:
    choice = os.environ.get("GATEWAY_ACCEL", "auto")
    for name in accel.MODULES:
        path = importlib.import_module(name).__file__ or ""
        compiled = Path(path).is_relative_to(accel.BUILD_DIR)
        if choice == "mypyc":
            assert compiled and path.endswith(".so"), path
        elif choice == "pure":
            assert not compiled and path.endswith(".py"), path
        else:
            assert compiled is accel.ACTIVE, path
    # STATE names the build for the logs: "mypyc" exactly when the compiled modules run
    assert (accel.STATE == "mypyc") is accel.ACTIVE
    assert accel.ACTIVE or accel.STATE.startswith("pure ("), accel.STATE
    if choice != "auto":
        assert accel.ACTIVE is (choice == "mypyc")


def test_decide_follows_the_choice_and_the_build() -> None:
    assert accel.decide("auto", None) == (True, "mypyc")
    assert accel.decide("mypyc", None) == (True, "mypyc")
    assert accel.decide("pure", None) == (False, "pure (GATEWAY_ACCEL=pure)")
    assert accel.decide("auto", "not built (make accel)") == (
        False,
        "pure (not built (make accel))",
    )
    with pytest.raises(SystemExit, match="GATEWAY_ACCEL=mypyc, but the compiled modules are stale"):
        accel.decide("mypyc", "stale")
    with pytest.raises(SystemExit, match="GATEWAY_ACCEL must be auto, pure or mypyc, not 'on'"):
        accel.decide("on", None)


def test_a_build_from_other_sources_is_not_used(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    assert accel.build_problem(manifest) == "not built (make accel)"
    manifest.write_text("{")
    assert (accel.build_problem(manifest) or "").startswith("unreadable manifest")
    manifest.write_text(json.dumps({"digest": "0" * 64}))
    assert accel.build_problem(manifest) == "built from other sources (make accel rebuilds it)"
    manifest.write_text(json.dumps({"digest": accel.digest()}))
    assert accel.build_problem(manifest) is None


def test_the_digest_covers_every_source_a_build_reads() -> None:
    made = accel.digest()
    assert made == accel.digest()  # stable
    covered = {p for package in accel.SOURCE_PACKAGES for p in (accel.ROOT / package).rglob("*.py")}
    for name in accel.MODULES:
        assert accel.source_of(name) in covered
    assert accel.ROOT / "httpio" / "settings.py" in covered


def test_unknown_gateway_accel_stops_the_process() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import httpio.server"],
        env={**os.environ, "GATEWAY_ACCEL": "fast"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "GATEWAY_ACCEL must be auto, pure or mypyc, not 'fast'" in result.stderr


def test_the_settings_keep_their_struct_config_in_either_build() -> None:
    # mypyc would drop these keywords: the settings live in a module that is never compiled
    for settings in (ServerLimits, UpstreamTimeouts, HealthSettings):
        config = settings.__struct_config__
        assert config.frozen and config.forbid_unknown_fields, settings
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(b'{"max_head_byte": 1}', type=ServerLimits)
    with pytest.raises(AttributeError):
        ServerLimits().max_head_bytes = 1  # type: ignore[misc]
    assert "httpio.settings" not in accel.MODULES and "httpio.body" not in accel.MODULES
