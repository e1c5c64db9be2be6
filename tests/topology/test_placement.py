"""Hosts in a fleet topology: who runs where, what each process binds, what the files name,
which children ``fleet --host`` runs and the systemd units ``fleet units`` writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elb.main import Elb
from topology.fleet import plan_fleet, select_host
from topology.load import ConfigError, load_fleet, load_msa, load_proxy_list
from topology.placement import is_local, place
from topology.units import quote, unit_files

LAUNCHERS = {
    "redis": ("/bin/redis-server",),
    "backend": ("/venv/bin/backend",),
    "authsvc": ("/venv/bin/authsvc",),
    "proxy": ("/venv/bin/proxy",),
    "elb": ("/venv/bin/elb",),
}
MSA = {
    "service": [
        {"name": "img", "instance": ["http://localhost:5000", "http://example.org:5000"]},
        {"name": "auth", "instance": ["http://localhost:8000", "http://127.0.0.1:8001"]},
    ]
}


def write(tmp: Path, topology: dict[str, object], config: dict[str, object] | None = None) -> Path:
    (tmp / "msa.json").write_text(json.dumps(MSA))
    (tmp / "config.json").write_text(json.dumps(config or {"Redis_password": "s3cret"}))
    path = tmp / "topology.yaml"
    path.write_text(json.dumps({"config": "config.json", **topology}))
    return path


def three_hosts(**extra: object) -> dict[str, object]:
    return {
        "hosts": [
            {"name": "a", "address": "10.9.0.1", "ports": [9000]},
            {"name": "b", "address": "10.9.0.2", "ports": [6000, 8000, 5000, 6379]},
            {"name": "c", "address": "10.9.0.3", "ports": [6001, 8001]},
        ],
        "regions": [
            {"code": "kr", "elb_port": 9000, "proxy_ports": [6000, 6001], "msa": "msa.json"}
        ],
        "backends": {"ports": [5000]},
        "auth": {"ports": [8000, 8001]},
        **extra,
    }


def test_a_topology_without_hosts_is_one_host_on_loopback(tmp_path: Path) -> None:
    topology = load_fleet(write(tmp_path, {**three_hosts(), "hosts": []}))
    where = place(topology)
    assert where.host_of(6000) == "" and where.address_of(6000) == "127.0.0.1"
    plan = plan_fleet(topology, tmp_path / "topology.yaml", tmp_path / "run", LAUNCHERS)
    proxy = next(c for c in plan.children if c.kind == "proxy")
    assert proxy.argv is not None and "--host" not in proxy.argv  # argv as before hosts
    assert (plan.run_dir / "msa_kr.yaml") in plan.files
    assert plan.files[plan.run_dir / "msa_kr.yaml"] == (tmp_path / "msa.json").read_bytes()


def test_each_process_binds_its_hosts_address_and_files_name_peers_by_address(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        three_hosts(),
        {"Redis_password": "s3cret", "Auth_store": "postgresql://u@10.9.0.4/g"},
    )
    topology = load_fleet(path)
    plan = plan_fleet(topology, path, tmp_path / "run", LAUNCHERS)
    by_name = {c.name: c for c in plan.children}
    assert by_name["elb-kr-9000"].host == "10.9.0.1"
    assert by_name["proxy-kr-6001"].argv is not None
    assert by_name["proxy-kr-6001"].argv[-2:] == ("--host", "10.9.0.3")
    assert "10.9.0.2" in (by_name["redis"].argv or ())
    run = plan.run_dir
    for name, content in plan.files.items():
        (tmp_path / name.name).write_bytes(content)
    assert load_proxy_list(tmp_path / "r_kr.yaml").available_zone == [
        "http://10.9.0.2:6000",
        "http://10.9.0.3:6001",
    ]
    msa = {
        s.name: [i.url for i in s.instances()] for s in load_msa(tmp_path / "msa_kr.yaml").service
    }
    assert msa["img"] == ["http://10.9.0.2:5000", "http://example.org:5000"]
    assert msa["auth"] == ["http://10.9.0.2:8000", "http://10.9.0.3:8001"]
    config = json.loads(plan.files[run / "config.json"])
    assert config["Redis_address"] == "10.9.0.2:6379"
    assert plan.files[run / "redis.conf"] == b'requirepass "s3cret"\n'


def test_fleet_host_selects_that_hosts_children_in_order(tmp_path: Path) -> None:
    path = write(
        tmp_path, three_hosts(), {"Redis_password": "x", "Auth_store": "postgresql://u@h/g"}
    )
    topology = load_fleet(path)
    plan = plan_fleet(topology, path, tmp_path / "run", LAUNCHERS)
    b = select_host(plan.groups, plan.placement, "b")
    assert [[c.name for c in g] for g in b] == [
        ["redis"],
        ["backend-5000"],
        ["authsvc-8000"],
        ["proxy-kr-6000"],
    ]


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        ({"hosts": [{"name": "a", "address": "10.9.0.1", "ports": [9000, 6000, 6001, 5000, 8000]}]},
         "$.auth.ports[1]", "on no host"),
        ({"hosts": [{"name": "a", "address": "db.example", "ports": []}]}, "$.hosts[0].address",
         "not an IP address"),
        ({"hosts": [{"name": "a", "address": "10.9.0.1", "ports": [1234]}]}, "$.hosts[0].ports[0]",
         "no process"),
    ],
)  # fmt: skip
def test_bad_placements_name_the_field(
    tmp_path: Path, change: dict[str, object], where: str, message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        load_fleet(write(tmp_path, {**three_hosts(), **change}))
    assert err.value.where == where and message in err.value.message


def test_auth_servers_on_two_hosts_need_postgresql(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot share one SQLite file"):
        load_fleet(write(tmp_path, three_hosts()))


def test_redis_on_a_network_address_needs_a_password(tmp_path: Path) -> None:
    path = write(tmp_path, three_hosts(), {"Auth_store": "postgresql://u@h/g"})
    with pytest.raises(ConfigError, match="needs Redis_password"):
        plan_fleet(load_fleet(path), path, tmp_path / "run", LAUNCHERS)


def test_the_elb_hands_off_to_proxies_on_its_own_address_and_relays_to_others() -> None:
    assert is_local("127.0.0.1", "10.9.0.1") and is_local("10.9.0.1", "10.9.0.1")
    assert not is_local("10.9.0.2", "10.9.0.1")
    elb = Elb("kr", ["http://10.9.0.1:6000", "http://10.9.0.2:6001"], name="e", address="10.9.0.1")
    local, remote = elb.targets.values()
    assert local.handoff_address is not None and remote.handoff_address is None


def test_units_one_per_process_in_start_order_with_the_elbs_socket(tmp_path: Path) -> None:
    path = write(
        tmp_path, three_hosts(), {"Redis_password": "x", "Auth_store": "postgresql://u@h/g"}
    )
    plan = plan_fleet(load_fleet(path), path, tmp_path / "run", LAUNCHERS)
    b = unit_files(select_host(plan.groups, plan.placement, "b"), host="b", fleet_id="f1",
                   env_name="GATEWAY_FLEET_ID", source=path)  # fmt: skip
    assert sorted(b) == sorted(
        f"gateway-{n}.service" for n in ("redis", "backend-5000", "authsvc-8000", "proxy-kr-6000")
    )
    proxy = b["gateway-proxy-kr-6000.service"]
    assert "After=network-online.target gateway-redis.service" in proxy
    assert "Environment=GATEWAY_FLEET_ID=f1" in proxy and "Restart=always" in proxy
    # SIGTERM to the parent alone (it stops its workers itself), and time for their drain
    assert "KillMode=mixed" in proxy and "KillMode=control-group" not in proxy
    assert "TimeoutStopSec=20" in proxy and plan.stop_grace_s == 20.0  # a 10 s drain
    a = unit_files(select_host(plan.groups, plan.placement, "a"), host="a", fleet_id="f1",
                   env_name="GATEWAY_FLEET_ID", source=path)  # fmt: skip
    assert "ListenStream=10.9.0.1:9000" in a["gateway-elb-kr-9000.socket"]
    assert "--listen-fd 3" in a["gateway-elb-kr-9000.service"]
    assert quote("a b%$") == '"a b%%$$"' and quote("/x/y") == "/x/y"


def test_a_longer_drain_in_config_json_lengthens_every_stop_timeout(tmp_path: Path) -> None:
    """config.json's ``Server.drain_timeout_s`` is every server's drain: the launcher's
    SIGKILL and systemd's ``TimeoutStopSec`` come after it (and a `proxy --workers` parent's
    grace to its workers), never in the middle."""
    config = {"Redis_password": "x", "Auth_store": "postgresql://u@h/g"}
    path = write(tmp_path, three_hosts(), {**config, "Server": {"drain_timeout_s": 42.5}})
    plan = plan_fleet(load_fleet(path), path, tmp_path / "run", LAUNCHERS)
    assert plan.stop_grace_s == 52.5
    b = unit_files(select_host(plan.groups, plan.placement, "b"), host="b", fleet_id="f1",
                   env_name="GATEWAY_FLEET_ID", source=path,
                   stop_s=plan.stop_grace_s)  # fmt: skip
    assert all("TimeoutStopSec=53\n" in text for n, text in b.items() if n.endswith(".service"))
