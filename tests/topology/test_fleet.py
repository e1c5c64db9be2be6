"""The launcher's plan (run files in the original's formats, children in dependency order),
the run directory, the table and the command line; then one real fleet started and stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import trio

from tests.support.polling import wait_for
from tests.support.ports import free_ports
from topology import fleet as fleet_module
from topology.fleet import (
    FleetStartError,
    TableRow,
    find_launchers,
    format_table,
    main,
    make_run_dir,
    open_fleet,
    plan_fleet,
    write_run_files,
)
from topology.fleet_lock import parse_start_time, process_started
from topology.load import (
    ConfigError,
    load_config,
    load_fleet,
    load_msa,
    load_proxy_list,
    load_region_structure,
)
from topology.supervisor import probe_once

DATA = Path(__file__).resolve().parent / "data"

LAUNCHERS = {
    "redis": ("/bin/redis-server",),
    "backend": ("/venv/bin/backend",),
    "authsvc": ("/venv/bin/authsvc",),
    "proxy": ("/venv/bin/python", "-m", "proxy.main"),
    "elb": "module elb.main is not there yet",
}

TOPOLOGY = """\
regions:
  - {code: ko_KR, elb_port: 19000, proxy_ports: [16000, 16001], msa: msa_kr.yaml}
  - {code: en_US, elb_port: 19001, proxy_ports: [16002], msa: msa_en.yaml}
backends: {ports: [15000, 15001]}
auth: {ports: [18000]}
redis: {port: 16379}
config: config.json
"""


@pytest.fixture
def topology_path(tmp_path: Path) -> Path:
    for name in ("msa_kr.yaml", "msa_en.yaml", "config.json"):
        (tmp_path / name).write_bytes((DATA / name).read_bytes())
    path = tmp_path / "fleet.yaml"
    path.write_text(TOPOLOGY)
    return path


def plan_for(topology_path: Path, run: Path, launchers=LAUNCHERS):
    return plan_fleet(load_fleet(topology_path), topology_path, run, launchers)


# -- the plan ----------------------------------------------------------------------------------
def test_run_files_are_the_originals_formats_with_topology_ports(topology_path, tmp_path):
    run = tmp_path / "run"
    plan = plan_for(topology_path, run)
    write_run_files(plan)
    assert sorted(p.name for p in run.iterdir()) == [
        "config.json",
        "logs",
        "msa_en_US.yaml",
        "msa_ko_KR.yaml",
        "prometheus.yml",  # every process as a scrape target (topology.prometheus)
        "r_en_US.yaml",
        "r_ko_KR.yaml",
        "rs_en_US.yaml",
        "rs_ko_KR.yaml",
    ]
    assert (run / "msa_ko_KR.yaml").read_bytes() == (DATA / "msa_kr.yaml").read_bytes()
    assert [s.name for s in load_msa(run / "msa_en_US.yaml").service] == ["sound", "video", "auth"]

    rs = load_region_structure(run / "rs_en_US.yaml")
    assert rs.cur_region_code == "en_US"
    assert [(r.region_code, r.available_zone) for r in rs.regions] == [
        ("ko_KR", ["http://127.0.0.1:19000"]),
        ("en_US", ["http://127.0.0.1:19001"]),
    ]
    assert load_region_structure(run / "rs_ko_KR.yaml").cur_region_code == "ko_KR"

    kr = load_proxy_list(run / "r_ko_KR.yaml")
    assert (kr.region_code, kr.available_zone) == (
        "ko_KR",
        ["http://127.0.0.1:16000", "http://127.0.0.1:16001"],
    )
    assert load_proxy_list(run / "r_en_US.yaml").available_zone == ["http://127.0.0.1:16002"]


def test_config_points_at_the_fleets_redis_with_original_keys(topology_path, tmp_path):
    plan = plan_for(topology_path, tmp_path / "run")
    write_run_files(plan)
    path = tmp_path / "run" / "config.json"
    raw = json.loads(path.read_text())
    assert raw["Redis_address"] == "127.0.0.1:16379"
    assert raw["Auth_key"] == "private_key"
    assert raw["Load_balancer_policy"] == "random"  # the rest is the topology's config
    config = load_config(path)
    assert config.redis_address == "127.0.0.1:16379"


def test_without_redis_or_config(tmp_path):
    (tmp_path / "msa.yaml").write_bytes((DATA / "msa.yaml").read_bytes())
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "regions:\n  - {code: kr, elb_port: 19000, proxy_ports: [16000], msa: msa.yaml}\n"
        "redis: {enabled: false}\n"
    )
    plan = plan_for(path, tmp_path / "run")
    assert [c.name for c in plan.children] == ["proxy-kr-16000", "elb-kr-19000"]
    config = json.loads(plan.files[tmp_path / "run" / "config.json"])
    assert config["Redis_address"] == "localhost:6379"  # the default, untouched


def test_auth_servers_on_postgresql_get_no_file_of_the_fleet(tmp_path):
    (tmp_path / "msa.yaml").write_bytes((DATA / "msa.yaml").read_bytes())
    (tmp_path / "config.json").write_text('{"Auth_store": "postgresql://gw:pw@10.0.0.9/gw"}')
    path = tmp_path / "fleet.yaml"
    path.write_text(
        "regions:\n  - {code: kr, elb_port: 19000, proxy_ports: [16000], msa: msa.yaml}\n"
        "auth: {ports: [18000]}\nredis: {enabled: false}\nconfig: config.json\n"
    )
    run = (tmp_path / "run").resolve()
    plan = plan_for(path, run)
    (auth,) = [c for c in plan.children if c.name == "authsvc-18000"]
    assert auth.argv == ("/venv/bin/authsvc", "18000", "--config", str(run / "config.json"))


def test_children_in_dependency_order_with_their_arguments(topology_path, tmp_path):
    run = (tmp_path / "run").resolve()
    plan = plan_for(topology_path, run)
    assert [[c.name for c in group] for group in plan.groups] == [
        ["redis"],
        ["backend-15000", "backend-15001"],
        ["authsvc-18000"],
        ["proxy-ko_KR-16000", "proxy-ko_KR-16001", "proxy-en_US-16002"],
        ["elb-ko_KR-19000", "elb-en_US-19001"],
    ]
    by_name = {c.name: c for c in plan.children}
    redis = by_name["redis"]
    assert redis.probe == "redis" and redis.port == 16379
    assert redis.argv == (
        "/bin/redis-server",
        *("--port", "16379", "--bind", "127.0.0.1", "--save", ""),
        *("--appendonly", "no", "--dir", str(run)),
    )
    assert by_name["backend-15001"].argv == (
        "/venv/bin/backend",
        "15001",
        "--name",
        "backend-15001",
    )
    assert by_name["authsvc-18000"].argv == (
        "/venv/bin/authsvc",
        "18000",
        *("--config", str(run / "config.json"), "--db", str(run / "auth.sqlite3")),
    )
    proxy = by_name["proxy-en_US-16002"]
    assert proxy.region == "en_US"
    assert proxy.argv == (
        *("/venv/bin/python", "-m", "proxy.main", "16002"),
        str(run / "msa_en_US.yaml"),
        str(run / "rs_en_US.yaml"),
        str(run / "config.json"),
        *("--access-log", str(run / "logs" / "access-proxy-en_US-16002.log")),
    )
    assert proxy.log == run / "logs" / "proxy-en_US-16002.log"
    elb = by_name["elb-ko_KR-19000"]
    assert elb.argv is None and elb.missing == "module elb.main is not there yet"


def test_a_regions_proxies_run_the_workers_its_topology_asks_for(tmp_path):
    (tmp_path / "msa.yaml").write_bytes((DATA / "msa.yaml").read_bytes())
    path = tmp_path / "fleet.yaml"
    region = "{code: kr, elb_port: 19000, proxy_ports: [16000], msa: msa.yaml%s}"
    path.write_text(f"regions:\n  - {region % ''}\nredis: {{enabled: false}}\n")
    (single,) = [c for c in plan_for(path, tmp_path / "run").children if c.kind == "proxy"]
    assert single.argv is not None and "--workers" not in single.argv  # 1: as before
    path.write_text(f"regions:\n  - {region % ', proxy_workers: 2'}\nredis: {{enabled: false}}\n")
    (two,) = [c for c in plan_for(path, tmp_path / "run").children if c.kind == "proxy"]
    assert two.argv is not None and two.argv[-2:] == ("--workers", "2")
    path.write_text(f"regions:\n  - {region % ', proxy_workers: 0'}\nredis: {{enabled: false}}\n")
    with pytest.raises(ConfigError, match="proxy_workers"):
        load_fleet(path)
    metrics = ", proxy_workers: 2, worker_metrics_ports: [7100, 7101]"
    path.write_text(f"regions:\n  - {region % metrics}\nredis: {{enabled: false}}\n")
    (two,) = [c for c in plan_for(path, tmp_path / "run").children if c.kind == "proxy"]
    assert two.argv is not None
    assert two.argv[-4:] == ("--workers", "2", "--worker-metrics-ports", "7100,7101")
    for wrong in (
        ", proxy_workers: 2, worker_metrics_ports: [7100]",
        ", worker_metrics_ports: [7100]",
    ):
        path.write_text(f"regions:\n  - {region % wrong}\nredis: {{enabled: false}}\n")
        with pytest.raises(ConfigError, match="worker_metrics_ports"):
            load_fleet(path)
    taken = ", proxy_workers: 2, worker_metrics_ports: [7100, 19000]"  # the ELB's port
    path.write_text(f"regions:\n  - {region % taken}\nredis: {{enabled: false}}\n")
    with pytest.raises(ConfigError, match="already used"):
        load_fleet(path)


def test_backends_obey_fault_switches_only_when_the_topology_says_so(topology_path, tmp_path):
    def backend_argv() -> object:
        plan = plan_for(topology_path, tmp_path / "run")
        return next(c.argv for c in plan.children if c.name == "backend-15000")

    assert backend_argv() == ("/venv/bin/backend", "15000", "--name", "backend-15000")
    text = topology_path.read_text()
    topology_path.write_text(
        text.replace(
            "backends: {ports: [15000, 15001]}",
            "backends: {ports: [15000, 15001], test_faults: true}",
        )
    )
    assert backend_argv() == (
        *("/venv/bin/backend", "15000", "--name", "backend-15000"),
        "--test-faults",
    )


def test_the_shipped_fleet_has_no_test_switch_on():
    shipped = load_fleet(fleet_module.DEFAULT_TOPOLOGY)
    assert not shipped.backends.test_faults


def test_launchers_come_from_this_virtualenv():
    found = find_launchers()
    assert set(found) == {"redis", "backend", "authsvc", "proxy", "elb"}
    backend = found["backend"]
    if not isinstance(backend, str):
        assert Path(backend[0]).name in ("backend", Path(sys.executable).name)


# -- run directory and table -------------------------------------------------------------------
def test_run_dir_gets_a_timestamp_and_a_latest_link(tmp_path):
    now = datetime(2024, 5, 6, 7, 8, 9)
    first = make_run_dir(tmp_path / "run", now)
    assert first == tmp_path / "run" / "20240506-070809"
    second = make_run_dir(tmp_path / "run", now)
    assert second == tmp_path / "run" / "20240506-070809-2"
    latest = tmp_path / "run" / "latest"
    assert latest.is_symlink() and os.readlink(latest) == "20240506-070809-2"
    assert latest.resolve() == second.resolve()


def test_table_is_aligned():
    rows = [
        TableRow("redis", "redis", "", 6379, 101, "running", "run/x/logs/redis.log"),
        TableRow("elb-ko_KR-9000", "elb", "ko_KR", 9000, None, "missing", "run/x/logs/elb.log"),
    ]
    assert format_table(rows).splitlines() == [
        "NAME            KIND   REGION  PORT  PID  STATUS   LOG",
        "redis           redis  -       6379  101  running  run/x/logs/redis.log",
        "elb-ko_KR-9000  elb    ko_KR   9000  -    missing  run/x/logs/elb.log",
    ]


# -- command line ------------------------------------------------------------------------------
def test_broken_topology_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "fleet.yaml"
    path.write_text("regions: []\nbackend: {}\n")
    with pytest.raises(SystemExit) as info:
        main([str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("fleet: fleet.yaml: $: ") and "backend" in err


def test_missing_redis_says_how_to_install_it(topology_path, monkeypatch, capsys):
    monkeypatch.setattr(fleet_module, "find_launchers", lambda: {**LAUNCHERS, "redis": "nope"})
    monkeypatch.setattr(trio, "run", lambda *a: pytest.fail("must not start"))
    with pytest.raises(SystemExit) as info:
        main([str(topology_path)])
    assert info.value.code == 2
    assert capsys.readouterr().err == "fleet: nope\n"
    assert "apt-get install redis-server" in fleet_module.REDIS_INSTALL_HINT


# -- one real fleet ----------------------------------------------------------------------------
def tiny_topology(tmp_path: Path) -> Path:
    backend, auth, proxy, elb, redis = free_ports(5)
    (tmp_path / "msa.yaml").write_text(
        f'service:\n  - name: image\n    instance: ["http://127.0.0.1:{backend}"]\n'
        f'  - name: auth\n    instance: ["http://127.0.0.1:{auth}"]\n'
    )
    (tmp_path / "config.json").write_bytes((DATA / "config.json").read_bytes())
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"regions:\n  - {{code: kr, elb_port: {elb}, proxy_ports: [{proxy}], msa: msa.yaml}}\n"
        f"backends: {{ports: [{backend}]}}\nauth: {{ports: [{auth}]}}\n"
        f"redis: {{port: {redis}}}\nconfig: config.json\n"
    )
    return path


def require(*kinds: str) -> None:
    found = find_launchers()
    for kind in kinds:
        if isinstance(found[kind], str):
            pytest.skip(f"{kind}: {found[kind]}")


async def test_a_real_fleet_starts_restarts_and_stops(tmp_path):
    require("redis", "backend")
    lines: list[str] = []
    path = tiny_topology(tmp_path)
    topology = load_fleet(path)
    backend_port = topology.backends.ports[0]
    async with open_fleet(path, tmp_path / "run", strict=False, out=lines.append) as fleet:
        name = f"backend-{backend_port}"
        assert fleet.ports[name] == backend_port
        assert fleet.url(name) == f"http://127.0.0.1:{backend_port}"
        assert {"redis", name} <= set(fleet.pids)
        backend = next(c for c in fleet.plan.children if c.name == name)
        assert await probe_once(backend)
        pid = fleet.pids[name]
        fleet.kill(name)
        assert await fleet.wait_running(name, not_pid=pid) != pid
        assert name in fleet.table()
        running = [c.process for c in fleet.supervisor.children if c.pid is not None]
    assert running and all(p is not None and p.returncode is not None for p in running)
    assert not await probe_once(backend)
    assert (tmp_path / "run" / "logs" / f"{name}.log").exists()


async def test_the_whole_tiny_fleet_comes_up_strictly(tmp_path):
    require("redis", "backend", "authsvc", "proxy", "elb")
    path = tiny_topology(tmp_path)
    async with open_fleet(path, tmp_path / "run", out=lambda line: None) as fleet:
        assert len(fleet.pids) == 5
        assert all(c.state.value == "running" for c in fleet.supervisor.children)
    assert fleet.pids == {}


async def test_every_child_gets_the_fleets_own_id(tmp_path):
    require("backend")
    path = tiny_topology(tmp_path)
    launchers = {**find_launchers(), "redis": "-", "authsvc": "-", "proxy": "-", "elb": "-"}
    ids = []
    for run in ("run1", "run2"):
        async with open_fleet(path, tmp_path / run, strict=False, launchers=launchers) as fleet:
            assert len(fleet.fleet_id) == 16
            for pid in fleet.pids.values():
                environ = (await trio.Path(f"/proc/{pid}/environ").read_bytes()).split(b"\0")
                assert f"GATEWAY_FLEET_ID={fleet.fleet_id}".encode() in environ
            ids.append(fleet.fleet_id)
    assert ids[0] != ids[1]


async def test_strict_fleet_refuses_to_run_half_built(tmp_path):
    require("backend")
    path = tiny_topology(tmp_path)
    launchers = {**find_launchers(), "elb": "not built yet", "redis": "no redis here"}
    with pytest.raises(FleetStartError) as info:
        async with open_fleet(path, tmp_path / "run", out=lambda line: None, launchers=launchers):
            pytest.fail("must not get here")
    assert "redis: no redis here" in str(info.value)
    assert "not built yet" in str(info.value)


async def test_errors_in_the_body_come_out_unwrapped(tmp_path):
    require("backend")
    path = tiny_topology(tmp_path)
    launchers = {**find_launchers(), "redis": "-", "authsvc": "-", "proxy": "-", "elb": "-"}
    with pytest.raises(KeyError):
        async with open_fleet(path, tmp_path / "run", strict=False, launchers=launchers) as fleet:
            assert fleet.pids
            raise KeyError("mine")
    with trio.CancelScope() as scope:  # cancellation inside the body stops the fleet too
        async with open_fleet(path, tmp_path / "run2", strict=False, launchers=launchers) as f:
            assert f.pids
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught and f.pids == {}


# -- the launcher as a process -----------------------------------------------------------------
FLEET = Path(sys.executable).parent / "fleet"


def small_topology(tmp_path: Path) -> tuple[Path, dict[str, int]]:
    """A backend, a proxy and an ELB on free ports; no Redis, no auth server."""
    backend, proxy, elb = free_ports(3)
    (tmp_path / "msa.yaml").write_text(
        f'service:\n  - name: web\n    public: true\n    instance: ["http://127.0.0.1:{backend}"]\n'
    )
    (tmp_path / "config.json").write_text(json.dumps({"Auth_key": "k" * 40}))
    path = tmp_path / "fleet.yaml"
    path.write_text(
        f"regions:\n  - {{code: kr, elb_port: {elb}, proxy_ports: [{proxy}], msa: msa.yaml}}\n"
        f"backends: {{ports: [{backend}]}}\nredis: {{enabled: false}}\nconfig: config.json\n"
    )
    return path, {"backend": backend, "proxy": proxy, "elb": elb}


def children_of(pid: int) -> dict[int, int]:
    """PID -> start time of each live child of ``pid``, from /proc."""
    found = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(f"/proc/{entry.name}/stat").read_text()
            except OSError:
                continue
            started = parse_start_time(stat)
            if started is not None and int(stat.rsplit(")", 1)[-1].split()[1]) == pid:
                found[int(entry.name)] = started
    return found


def alive(pid: int, started: int) -> bool:
    return process_started(pid) == started


class Launcher:
    """``fleet TOPOLOGY --run-dir RUN`` as a process of its own, its output in a file."""

    def __init__(self, topology: Path, run: Path, out: Path) -> None:
        self.out = out
        with open(out, "wb") as log:
            self.process = subprocess.Popen(
                [str(FLEET), str(topology), "--run-dir", str(run)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.children: dict[int, int] = {}

    def output(self) -> str:
        return self.out.read_text()

    def wait_up(self, n: int) -> dict[int, int]:
        wait_for(lambda: "fleet: up" in self.output(), timeout_s=60, what="the fleet up")
        self.children = children_of(self.process.pid)
        assert len(self.children) == n, self.output()
        return self.children

    def stop(self) -> None:
        """Whatever happens to the test: the launcher and any child it left, by PID."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(30)
        for pid, started in self.children.items():
            if alive(pid, started):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def launchers() -> Iterator[list[Launcher]]:
    started: list[Launcher] = []
    yield started
    for launcher in started:
        launcher.stop()


def test_a_sigkilled_launcher_takes_its_children_along(
    tmp_path: Path, launchers: list[Launcher]
) -> None:
    require("backend", "proxy", "elb")
    topology, _ = small_topology(tmp_path)
    first = Launcher(topology, tmp_path / "run", tmp_path / "first.out")
    launchers.append(first)
    children = first.wait_up(3)
    first.process.kill()
    first.process.wait(30)
    wait_for(
        lambda: not any(alive(pid, t) for pid, t in children.items()),
        timeout_s=10,
        what="every child of the killed launcher gone",
    )
    # ... so that the next launcher finds its ports free and its run directory unlocked
    second = Launcher(topology, tmp_path / "run", tmp_path / "second.out")
    launchers.append(second)
    second.wait_up(3)
    second.process.send_signal(signal.SIGTERM)
    assert second.process.wait(60) == 0
    assert "fleet: stopped" in second.output()


def test_a_second_launcher_names_the_first_and_stops(
    tmp_path: Path, launchers: list[Launcher]
) -> None:
    require("backend", "proxy", "elb")
    topology, ports = small_topology(tmp_path)
    first = Launcher(topology, tmp_path / "run", tmp_path / "first.out")
    launchers.append(first)
    children = first.wait_up(3)
    # the same run directory: the lock says who is there
    again = Launcher(topology, tmp_path / "run", tmp_path / "again.out")
    launchers.append(again)
    assert again.process.wait(60) == 2
    said = again.output()
    assert f"already running from {tmp_path / 'run'}: launcher pid {first.process.pid}" in said
    for pid in children:
        assert f"pid {pid} " in said
    for port in ports.values():
        assert f"port {port}" in said
    # another run directory, the same ports: each taken port named with its holder
    elsewhere = Launcher(topology, tmp_path / "other", tmp_path / "elsewhere.out")
    launchers.append(elsewhere)
    assert elsewhere.process.wait(60) == 2
    said = elsewhere.output()
    assert "3 port(s) of this topology are in use" in said
    for port in ports.values():
        assert any(str(port) in line and "held by pid" in line for line in said.splitlines())
    assert not (tmp_path / "other" / "logs").exists()  # nothing was started
    assert children_of(first.process.pid) == children  # the first fleet is untouched
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(60) == 0
