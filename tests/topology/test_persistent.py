"""The fleet's persistent state: its generated key and where its auth database lives."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from authsvc.tokens import KeyRing
from topology.fleet import prepare_fleet
from topology.persistent import KEY_FILE, StateError, open_persistent_state, with_fleet_key
from topology.schema import GatewayConfig

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS: dict[str, tuple[str, ...] | str] = {
    "redis": "not needed",
    "backend": ("b",),
    "authsvc": ("a",),
    "proxy": ("p",),
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_makes_a_strong_private_key_later_starts_read_it(tmp_path: Path) -> None:
    state = open_persistent_state(tmp_path / "state")
    assert len(state.key) >= 43 and KeyRing.from_config(state.key).weaknesses() == []
    assert mode(state.path) == 0o700 and mode(state.path / KEY_FILE) == 0o600
    assert state.key not in repr(state)
    again = open_persistent_state(tmp_path / "state")
    assert again.key == state.key
    assert open_persistent_state(tmp_path / "other").key != state.key


def test_loose_permissions_are_tightened_short_keys_refused(tmp_path: Path) -> None:
    state = open_persistent_state(tmp_path / "state")
    state.path.chmod(0o755)
    (state.path / KEY_FILE).chmod(0o644)
    assert open_persistent_state(state.path).key == state.key
    assert mode(state.path) == 0o700 and mode(state.path / KEY_FILE) == 0o600
    (state.path / KEY_FILE).write_text("private_key\n")
    with pytest.raises(StateError, match="32"):
        open_persistent_state(state.path)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a file to another user")
def test_state_of_another_user_is_refused(tmp_path: Path) -> None:
    state = open_persistent_state(tmp_path / "state")
    os.chown(state.path / KEY_FILE, 65534, 65534)
    with pytest.raises(StateError, match="uid 65534"):
        open_persistent_state(state.path)
    os.chown(state.path, 65534, 65534)
    with pytest.raises(StateError, match="uid 65534"):
        open_persistent_state(state.path)


def test_the_fleet_key_signs_unless_the_config_names_one(tmp_path: Path) -> None:
    state = open_persistent_state(tmp_path / "state")
    keyed = with_fleet_key(GatewayConfig(), state)
    assert [k.secret for k in keyed.auth_keys] == [state.key]
    own = GatewayConfig(auth_key="private_key")
    assert with_fleet_key(own, state) is own  # the original's files: kept, and loud


def test_shipped_config_has_no_key() -> None:
    raw = json.loads((ROOT / "topology" / "config.json").read_text())
    assert "Auth_key" not in raw and "Auth_keys" not in raw


def test_a_fleet_run_gets_the_key_and_keeps_its_users_beside_it(tmp_path: Path) -> None:
    topology = tmp_path / "fleet.yaml"
    (tmp_path / "msa.yaml").write_text("service:\n  - {name: auth, instance: []}\n")
    (tmp_path / "config.json").write_bytes((ROOT / "topology" / "config.json").read_bytes())
    topology.write_text(
        "regions: [{code: ko_KR, elb_port: 1, proxy_ports: [2], msa: msa.yaml}]\n"
        "auth: {ports: [3]}\nredis: {enabled: false}\nconfig: config.json\n"
    )
    first = prepare_fleet(topology, tmp_path / "run-1", LAUNCHERS, tmp_path / "state")
    second = prepare_fleet(topology, tmp_path / "run-2", LAUNCHERS, tmp_path / "state")
    configs = [json.loads((p.run_dir / "config.json").read_text()) for p in (first, second)]
    assert configs[0]["Auth_keys"] == configs[1]["Auth_keys"]  # a restart keeps tokens valid
    assert configs[0]["Auth_keys"][0]["secret"] == open_persistent_state(tmp_path / "state").key
    assert mode(first.run_dir / "config.json") == 0o600
    for plan in (first, second):
        argv = next(c.argv for c in plan.children if c.kind == "authsvc")
        assert argv is not None and argv[argv.index("--db") + 1] == str(
            tmp_path / "state" / "auth.sqlite3"
        )
    # Without a state directory of its own, a run keeps its state inside the run directory.
    alone = prepare_fleet(topology, tmp_path / "run-3", LAUNCHERS)
    assert (alone.run_dir / "state" / KEY_FILE).is_file()
