"""`bench.hop_ab`: what it refuses before it starts anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import hop_ab


def test_a_tree_that_is_not_a_checkout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        hop_ab.main([str(tmp_path)])
    assert exit_.value.code == 2


def test_this_checkout_is_one() -> None:
    assert (Path(hop_ab.__file__).parent.parent / "httpio" / "server.py").exists()


def test_a_tree_with_args_that_is_not_a_checkout_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        hop_ab.main([".", f"{tmp_path}::--metrics off"])
    assert exit_.value.code == 2
