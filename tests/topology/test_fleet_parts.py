"""``fleet --only PARTS`` (the original's ``make server`` / ``make proxy``: two halves of one
topology in two terminals) and ``backends: {root: DIR}``: the selection and the lock names
(pure), then both halves for real, sharing the fleet's key through ``run/state/``."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import request
from tests.support.polling import wait_for
from tests.support.ports import free_ports
from tests.topology.test_fleet import FLEET, Launcher, require
from topology.fleet import (
    FLEET_PARTS,
    main,
    parse_parts,
    part_name,
    plan_fleet,
    select_parts,
)
from topology.fleet_lock import FleetLock
from topology.load import ConfigError, load_fleet

ROOT = Path(__file__).resolve().parents[2]
LAUNCHERS = {kind: (f"/venv/bin/{kind}",) for kind in ("redis", "backend", "authsvc", "proxy")}
LAUNCHERS["elb"] = ("/venv/bin/elb",)
SERVER_HALF = frozenset({"backends", "auth"})
PROXY_HALF = frozenset({"proxies", "elbs"})


def write_topology(base: Path, *, root: str | None = None) -> tuple[Path, dict[str, int]]:
    backend, auth, proxy, elb, redis = free_ports(5)
    (base / "msa.yaml").write_text(
        f'service:\n  - name: video\n    instance: ["http://127.0.0.1:{backend}"]\n'
        f"    health: {{interval_s: 0.5}}\n"
        f'  - name: auth\n    instance: ["http://127.0.0.1:{auth}"]\n'
    )
    config = json.loads((ROOT / "topology" / "config.json").read_text())  # no key: generated
    config.update({"Argon2id": {"memory_kib": 1024, "time_cost": 1}, "Config_check_interval": 1})
    (base / "config.json").write_text(json.dumps(config))
    backends = f"{{ports: [{backend}]" + (f", root: {root}" if root else "") + "}"
    path = base / "fleet.yaml"
    path.write_text(
        f"regions:\n  - {{code: ko_KR, elb_port: {elb}, proxy_ports: [{proxy}], msa: msa.yaml}}\n"
        f"backends: {backends}\nauth: {{ports: [{auth}]}}\nredis: {{port: {redis}}}\n"
        f"config: config.json\nrun_dir: {base / 'run'}\n"
    )
    return path, {"backend": backend, "auth": auth, "proxy": proxy, "elb": elb, "redis": redis}


# -- the selection (pure) ----------------------------------------------------------------------


def test_parts_are_parsed_and_unknown_ones_named() -> None:
    assert parse_parts("backends,auth") == SERVER_HALF
    assert parse_parts(" proxies , elbs ,") == PROXY_HALF
    with pytest.raises(ValueError, match=r"unknown part\(s\) proxy, servers; choose from redis"):
        parse_parts("proxy,servers,auth")
    with pytest.raises(ValueError, match="none given"):
        parse_parts(" , ")


def test_the_two_halves_split_the_fleet_and_redis_goes_with_the_proxies(tmp_path: Path) -> None:
    path, ports = write_topology(tmp_path)
    groups = plan_fleet(load_fleet(path), path, tmp_path / "run", LAUNCHERS).groups

    def kinds(parts: frozenset[str]) -> list[list[str]]:
        return [[c.kind for c in group] for group in select_parts(groups, parts)]

    assert kinds(SERVER_HALF) == [["backend"], ["authsvc"]]
    assert kinds(PROXY_HALF) == [["redis"], ["proxy"], ["elb"]]
    assert kinds(frozenset({"redis"})) == [["redis"]]
    assert kinds(frozenset(FLEET_PARTS)) == [[c.kind for c in g] for g in groups]
    server = {c.port for g in select_parts(groups, SERVER_HALF) for c in g}
    proxy = {c.port for g in select_parts(groups, PROXY_HALF) for c in g}
    assert server.isdisjoint(proxy) and server | proxy == set(ports.values())


def test_each_half_has_a_lock_of_its_own(tmp_path: Path) -> None:
    assert part_name(None) == part_name(frozenset(FLEET_PARTS)) == ""
    assert part_name(frozenset(FLEET_PARTS) - {"redis"}) == ""  # the whole fleet all the same
    assert part_name(SERVER_HALF) == "backends+auth"
    assert part_name(PROXY_HALF) == "proxies+elbs"
    server, proxy = FleetLock(tmp_path, "backends+auth"), FleetLock(tmp_path, "proxies+elbs")
    assert server.lock_path.name == "fleet-backends+auth.lock"
    assert proxy.state_path.name == "fleet-proxies+elbs.json"
    assert FleetLock(tmp_path).lock_path.name == "fleet.lock"
    try:
        assert server.acquire() and proxy.acquire()
        assert not FleetLock(tmp_path, "backends+auth").acquire()
    finally:
        server.release()
        proxy.release()


def test_an_unknown_part_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--only", "servers"])
    assert exit_info.value.code == 2
    assert "unknown part(s) servers" in capsys.readouterr().err


# -- backends: {root: DIR} ---------------------------------------------------------------------


def test_the_backends_serve_the_topologys_root(tmp_path: Path) -> None:
    (tmp_path / "http_root").mkdir()
    path, _ = write_topology(tmp_path, root="http_root")
    plan = plan_fleet(load_fleet(path), path, tmp_path / "run", LAUNCHERS)
    backend = next(c for c in plan.children if c.kind == "backend")
    assert backend.argv is not None
    at = backend.argv.index("--root")
    assert backend.argv[at + 1] == str((tmp_path / "http_root").resolve())
    path, _ = write_topology(tmp_path)
    default = next(c for c in plan_fleet(load_fleet(path), path, tmp_path, LAUNCHERS).children)
    assert default.argv is not None and "--root" not in default.argv


def test_a_missing_root_is_refused_before_anything_starts(tmp_path: Path) -> None:
    path, _ = write_topology(tmp_path, root="no/such/dir")
    with pytest.raises(ConfigError, match=r"backends\.root: .*no/such/dir is not a directory"):
        plan_fleet(load_fleet(path), path, tmp_path / "run", LAUNCHERS)


# -- both halves for real ----------------------------------------------------------------------


class PartLauncher(Launcher):
    """``fleet TOPOLOGY --only PARTS`` in a process of its own, as ``make server`` and ``make
    proxy`` run it: no ``--run-dir``, so both share the topology's run base and state."""

    def __init__(self, topology: Path, parts: str | None, out: Path) -> None:
        self.out = out
        argv = [str(FLEET), str(topology), *(["--only", parts] if parts else [])]
        with open(out, "wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.children: dict[int, int] = {}


@pytest.fixture
def launched() -> Iterator[list[PartLauncher]]:
    started: list[PartLauncher] = []
    yield started
    for launcher in started:
        launcher.stop()


def test_make_server_then_make_proxy_in_two_terminals(
    tmp_path: Path, launched: list[PartLauncher]
) -> None:
    require("redis", "backend", "authsvc", "proxy", "elb")
    path, ports = write_topology(tmp_path)

    def launch(parts: str | None, name: str) -> PartLauncher:
        launcher = PartLauncher(path, parts, tmp_path / f"{name}.out")
        launched.append(launcher)
        return launcher

    server = launch("backends,auth", "server")
    server.wait_up(2)
    proxy = launch("proxies,elbs", "proxy")
    proxy.wait_up(3)
    # One key for both halves: the auth servers sign with it, the proxies verify with it.
    runs = [p for p in (tmp_path / "run").iterdir() if p.is_dir() and not p.is_symlink()]
    configs = [json.loads((p / "config.json").read_text()) for p in runs if p.name != "state"]
    assert len(configs) == 2 and configs[0]["Auth_keys"] == configs[1]["Auth_keys"]
    elb = f"http://127.0.0.1:{ports['elb']}"
    user = json.dumps({"username": "lilpump", "password": "guccigang"}).encode()
    assert request(elb, "/auth/signup", method="POST", body=user).status == 201
    signin = request(elb, "/auth/signin", method="POST", body=user)
    assert signin.status == 200
    headers = {"AuthToken": signin.body.decode()}  # as the original's clients send it
    wait_for(
        lambda: request(elb, "/video/test.css", headers=headers).status == 200,
        timeout_s=20,
        what="the proxy half serving the server half's file with its token",
    )
    assert request(elb, "/video/test.css").status == 401
    # The same half again is refused by its lock; the whole fleet by the ports in use.
    again = launch("proxies,elbs", "again")
    assert again.process.wait(60) == 2
    assert f"launcher pid {proxy.process.pid}" in again.output()
    whole = launch(None, "whole")
    assert whole.process.wait(60) == 2
    assert "5 port(s) of this topology are in use" in whole.output()
    for half in (proxy, server):
        half.process.send_signal(signal.SIGTERM)
        assert half.process.wait(60) == 0
        assert "fleet: stopped" in half.output()
