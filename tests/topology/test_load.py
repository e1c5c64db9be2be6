"""The original's config files load unchanged; broken ones fail with file, field path and
expectation; fleet topologies refuse port clashes. No event loop, no sockets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from topology.load import (
    ConfigError,
    load_config,
    load_elb_targets,
    load_fleet,
    load_msa,
    load_proxy_list,
    load_region_structure,
)
from topology.schema import InstanceSpec, WebSocketSettings, parse_auth_store

DATA = Path(__file__).resolve().parent / "data"  # copies of shared/seed-resources
TOPOLOGY = Path(__file__).resolve().parents[2] / "topology"


# -- the original's files ----------------------------------------------------------------------
def test_seed_msa_files_load():
    msa = load_msa(DATA / "msa.yaml")
    assert msa.name == "api-gateway-msa"
    assert [s.name for s in msa.service] == ["image", "video", "auth"]
    assert msa.service[0].instances() == [
        InstanceSpec("http://localhost:5000"),
        InstanceSpec("http://localhost:5001"),
    ]
    assert len(msa.service[1].instances()) == 5
    assert [s.name for s in load_msa(DATA / "msa_kr.yaml").service] == ["image", "video", "auth"]
    assert [s.name for s in load_msa(DATA / "msa_en.yaml").service] == ["sound", "video", "auth"]


def test_seed_region_structures_load():
    kr = load_region_structure(DATA / "rs_kr.yaml")
    assert kr.cur_region_code == "ko_KR"
    assert [(r.region_code, r.available_zone) for r in kr.regions] == [
        ("ko_KR", ["http://localhost:9000"]),
        ("en_US", ["http://localhost:9001"]),
    ]
    assert load_region_structure(DATA / "rs_en.yaml").cur_region_code == "en_US"


def test_seed_proxy_lists_load():
    kr = load_proxy_list(DATA / "r_kr.yaml")
    assert kr.region_code == "ko_KR"
    assert kr.available_zone == ["http://localhost:6000", "http://localhost:6001"]
    assert load_proxy_list(DATA / "r_en.yaml").region_code == "en_US"


def test_seed_config_loads_with_capitalised_keys():
    config = load_config(DATA / "config.json")
    assert config.cache_enabled is True
    assert config.redis_address == "localhost:6379"
    assert config.healthcheck_interval_s == 10
    assert config.config_check_interval_s == 5
    assert config.load_balancer_policy == "random"
    assert config.auth_key == "private_key"


def test_default_fleet_topology_loads():
    fleet = load_fleet(TOPOLOGY / "fleet.yaml")
    assert [(r.code, r.elb_port, r.proxy_ports) for r in fleet.regions] == [
        ("ko_KR", 9000, [6000, 6001]),
        ("en_US", 9001, [6002, 6003]),
    ]
    assert fleet.backends.ports == list(range(5000, 5007))
    assert fleet.auth.ports == [8000, 8001, 8002, 8003]
    assert fleet.redis.port == 6379


# -- broken files ------------------------------------------------------------------------------
def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def refusal(loader, path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        loader(path)
    return str(info.value)


def test_wrong_type_names_file_path_and_expectation(tmp_path):
    path = write(
        tmp_path, "msa.yaml", 'service:\n  - name: "image"\n    instance: ["http://h:1", 5000]\n'
    )
    message = refusal(load_msa, path)
    assert message.startswith("msa.yaml: $.service[0].instance[1]: ")
    assert "Expected" in message


def test_unknown_field_is_an_error(tmp_path):
    path = write(tmp_path, "msa.yaml", 'service:\n  - name: "image"\n    instanse: []\n')
    message = refusal(load_msa, path)
    assert message.startswith("msa.yaml: $.service[0]: ")
    assert "instanse" in message


def test_unknown_config_key_is_an_error(tmp_path):
    raw = json.loads((DATA / "config.json").read_text())
    raw["Cache_or_nott"] = True
    path = write(tmp_path, "config.json", json.dumps(raw))
    message = refusal(load_config, path)
    assert message.startswith("config.json: $: ")
    assert "Cache_or_nott" in message


def test_missing_required_field(tmp_path):
    path = write(tmp_path, "r_kr.yaml", 'region_code: "ko_KR"\n')
    message = refusal(load_proxy_list, path)
    assert message.startswith("r_kr.yaml: $: ")
    assert "available_zone" in message


def test_bad_url_names_its_place(tmp_path):
    path = write(tmp_path, "r_kr.yaml", 'region_code: "ko_KR"\navailable_zone: ["ftp://h:1"]\n')
    message = refusal(load_proxy_list, path)
    assert message.startswith("r_kr.yaml: $.available_zone[0]: ")


def test_current_region_must_exist(tmp_path):
    path = write(
        tmp_path,
        "rs.yaml",
        'cur_region_code: "xx"\nregions:\n  - region_code: "ko_KR"\n    available_zone: []\n',
    )
    assert refusal(load_region_structure, path).startswith("rs.yaml: $.cur_region_code: ")


def test_duplicate_service_is_an_error(tmp_path):
    path = write(tmp_path, "msa.yaml", "service:\n  - name: a\n  - name: a\n")
    assert refusal(load_msa, path).startswith("msa.yaml: $.service[1].name: ")


def test_bad_redis_address(tmp_path):
    path = write(tmp_path, "config.json", '{"Redis_address": "localhost"}')
    assert refusal(load_config, path).startswith("config.json: $.Redis_address: ")


def test_auth_store_and_sentinels(tmp_path):
    config = load_config(write(tmp_path, "config.json", "{}"))
    assert config.auth_store == "sqlite:auth.sqlite3" and config.redis_sentinels == []
    good = '{"Auth_store": "postgresql://u:p@db:5432/gw", "Redis_sentinels": ["10.0.0.4:26379"]}'
    config = load_config(write(tmp_path, "config.json", good))
    assert parse_auth_store(config.auth_store) == ("postgresql", "postgresql://u:p@db:5432/gw")
    assert config.redis_master_name == "mymaster"
    for bad, where in (
        ('{"Auth_store": "mysql://x"}', "$.Auth_store"),
        ('{"Auth_store": "sqlite:"}', "$.Auth_store"),
        ('{"Redis_sentinels": ["nohost"]}', "$.Redis_sentinels[0]"),
        ('{"Redis_sentinels": ["a:1"], "Redis_master_name": ""}', "$.Redis_master_name"),
    ):
        path = write(tmp_path, "config.json", bad)
        assert refusal(load_config, path).startswith(f"config.json: {where}: "), bad


def test_not_yaml_at_all(tmp_path):
    path = write(tmp_path, "msa.yaml", "service: [unclosed\n")
    assert "not valid yaml" in refusal(load_msa, path)


def test_unreadable_file_names_it(tmp_path):
    message = refusal(load_msa, tmp_path / "absent.yaml")
    assert "absent.yaml" in message and "cannot read" in message


# -- fleet topologies --------------------------------------------------------------------------
MSA = 'service:\n  - name: "image"\n    instance: ["http://127.0.0.1:5000"]\n'


def fleet_file(tmp_path: Path, body: str) -> Path:
    write(tmp_path, "msa.yaml", MSA)
    return write(tmp_path, "fleet.yaml", body)


def test_port_clash_is_refused(tmp_path):
    path = fleet_file(
        tmp_path,
        "regions:\n  - {code: kr, elb_port: 9000, proxy_ports: [6000], msa: msa.yaml}\n"
        "backends: {ports: [5000, 6000]}\n",
    )
    message = refusal(load_fleet, path)
    assert message.startswith("fleet.yaml: $.backends.ports[1]: ")
    assert "6000" in message and "proxy of kr" in message


def test_redis_port_clash_is_refused(tmp_path):
    path = fleet_file(
        tmp_path,
        "regions:\n  - {code: kr, elb_port: 6379, proxy_ports: [6000], msa: msa.yaml}\n",
    )
    assert refusal(load_fleet, path).startswith("fleet.yaml: $.redis.port: ")


def test_disabled_redis_frees_its_port(tmp_path):
    path = fleet_file(
        tmp_path,
        "regions:\n  - {code: kr, elb_port: 6379, proxy_ports: [6000], msa: msa.yaml}\n"
        "redis: {enabled: false}\n",
    )
    assert load_fleet(path).redis.enabled is False


def test_unknown_fleet_field(tmp_path):
    path = fleet_file(
        tmp_path,
        "regions:\n  - {code: kr, elb_port: 9000, proxy_ports: [6000], msa: msa.yaml}\n"
        "backend: {ports: [5000]}\n",
    )
    message = refusal(load_fleet, path)
    assert message.startswith("fleet.yaml: $: ") and "backend" in message


def test_broken_region_msa_is_reported_under_its_own_name(tmp_path):
    write(tmp_path, "kr.yaml", "service:\n  - name: a\n    instance: [1]\n")
    path = write(
        tmp_path,
        "fleet.yaml",
        "regions:\n  - {code: kr, elb_port: 9000, proxy_ports: [6000], msa: kr.yaml}\n",
    )
    assert refusal(load_fleet, path).startswith("kr.yaml: $.service[0].instance[0]: ")


def test_port_out_of_range(tmp_path):
    path = fleet_file(
        tmp_path,
        "regions:\n  - {code: kr, elb_port: 70000, proxy_ports: [6000], msa: msa.yaml}\n",
    )
    assert refusal(load_fleet, path).startswith("fleet.yaml: $.regions[0].elb_port: ")


# -- what an ELB serves -----------------------------------------------------------------------
def write_fleet(base: Path) -> Path:
    for name in ("msa_kr.yaml", "msa_en.yaml"):
        shutil.copy(DATA / name, base / name)
    path = base / "fleet.yaml"
    path.write_text(
        """\
regions:
  - {code: ko_KR, elb_port: 19000, proxy_ports: [16000, 16001], msa: msa_kr.yaml}
  - {code: en_US, elb_port: 19001, proxy_ports: [16002], msa: msa_en.yaml}
backends: {ports: [15000]}
redis: {enabled: false}
"""
    )
    return path


def test_load_targets_from_a_fleet_topology_by_elb_port(tmp_path: Path) -> None:
    fleet = write_fleet(tmp_path)
    assert load_elb_targets(fleet, 19000) == (
        "ko_KR",
        ["http://127.0.0.1:16000", "http://127.0.0.1:16001"],
    )
    assert load_elb_targets(fleet, 19001) == ("en_US", ["http://127.0.0.1:16002"])


def test_load_targets_from_a_fleet_topology_with_no_region_on_the_port(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_elb_targets(write_fleet(tmp_path), 19002)
    assert info.value.where == "$.regions"
    assert "19002" in str(info.value)


def test_load_targets_from_the_default_fleet() -> None:
    assert load_elb_targets(TOPOLOGY / "fleet.yaml", 9001) == (
        "en_US",
        ["http://127.0.0.1:6002", "http://127.0.0.1:6003"],
    )


def test_load_targets_from_the_originals_proxy_list() -> None:
    # the port does not matter for an r_*.yaml: the file names one region
    assert load_elb_targets(DATA / "r_kr.yaml", 9000) == (
        "ko_KR",
        ["http://localhost:6000", "http://localhost:6001"],
    )
    assert load_elb_targets(DATA / "r_en.yaml", 1234)[0] == "en_US"


@pytest.mark.parametrize(
    "text",
    [
        "region_code: ko_KR\navailable_zone: [5]\n",
        "region_code: ko_KR\navailable_zone: ['ftp://x:1']\n",
        "available_zone: []\n",
        "regions: [{code: ko_KR}]\n",
    ],
)
def test_load_targets_refuses_a_broken_file(tmp_path: Path, text: str) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError):
        load_elb_targets(path, 9000)


# -- issue 11's fields ------------------------------------------------------------------------
EDGE_MSA = """service:
  - name: users
    instance: ["http://localhost:5000", {url: "http://localhost:5001", weight: 2}]
    routes:
      - {path: "/api/users/", methods: [GET, POST]}
      - {path: "/api/v1/data", match: exact, strip_prefix: true}
    hosts: ["api.example.com"]
    rate_limit:
      - {key: client_ip, rate_per_s: 50, burst: 100}
      - {key: user, rate_per_s: 5, burst: 10, scope: local}
      - {key: "header:X-Api-Key", rate_per_s: 100, burst: 100}
      - {key: "client_ip+header:X-Api-Key", rate_per_s: 1000, burst: 2000, headers: legacy}
    cors: {allow_origins: ["https://app.example.com", "https://*.example.com"],
           allow_methods: [GET, POST], allow_headers: [Authorization, Content-Type],
           expose_headers: [X-Request-ID], allow_credentials: true, max_age_s: 600}
    request_headers: {set: {X-Client: "${client_ip}"}, remove: [Cookie]}
    response_headers: {add: {X-Served-By: "${region}"}}
    allow_cidrs: ["10.0.0.0/8", "::1/128"]
    deny_cidrs: ["10.1.0.0/16"]
    max_body_bytes: 1048576
"""


def test_the_issues_example_loads(tmp_path):
    msa = load_msa(write(tmp_path, "msa.yaml", EDGE_MSA))
    users = msa.service[0]
    assert users.routes[1].strip_prefix and users.rate_limit is not None
    assert users.rate_limit[1].scope == "local" and users.rate_limit[0].scope == "fleet"


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ('"10.1.0.0/16"', '"10.1.0.0/33"', "$.service[0].deny_cidrs[0]"),
        ("key: user,", "key: usr,", "$.service[0].rate_limit[1].key"),
        ('"${client_ip}"', '"${password}"', "$.service[0].request_headers.set.X-Client"),
        ('"https://app.example.com",', '"app.example.com",', "$.service[0].cors.allow_origins[0]"),
        ("methods: [GET, POST]}", "methods: [GET, BREW]}", "$.service[0].routes[0].methods[1]"),
        ("remove: [Cookie]", "remove: [Bad_Name]", "$.service[0].request_headers.remove[0]"),
        (
            '"/api/v1/data", match: exact',
            '"/api/users/", match: prefix',
            "$.service[0].routes[1].path",
        ),
    ],
)
def test_bad_edge_fields_name_the_field(tmp_path, old, new, where):
    assert old in EDGE_MSA
    message = refusal(load_msa, write(tmp_path, "msa.yaml", EDGE_MSA.replace(old, new)))
    assert message.startswith(f"msa.yaml: {where}: "), message


def test_a_route_into_another_services_paths_is_refused(tmp_path):
    text = (
        EDGE_MSA
        + '  - name: image\n    instance: ["http://h:1"]\n    routes: [{path: "/users/x"}]\n'
    )
    message = refusal(load_msa, write(tmp_path, "msa.yaml", text))
    assert message.startswith("msa.yaml: $.service[1].routes[0].path: ")
    assert "service 'users'" in message


def test_the_articles_rate_limit_form_is_a_fixed_window_default(tmp_path):
    config = load_config(
        write(tmp_path, "config.json", '{"rateLimitWindow": 60, "rateLimitCount": 100}')
    )
    default = config.default_rate_limit()
    assert default is not None and (default.requests, default.window_s) == (100, 60)
    config = load_config(
        write(tmp_path, "c.json", '{"Rate_limit": {"requests": 5, "window_s": 1}}')
    )
    assert config.default_rate_limit() is not None
    assert load_config(write(tmp_path, "d.json", "{}")).default_rate_limit() is None


@pytest.mark.parametrize("msa", ["msa_kr.yaml", "msa_en.yaml"])
def test_the_shipped_fleet_relays_websockets_for_video_only_behind_its_token_check(
    msa: str,
) -> None:
    shipped = load_msa(Path(__file__).resolve().parents[2] / "topology" / msa)
    relaying = {s.name: s for s in shipped.service if s.websocket and s.websocket.enabled}
    assert list(relaying) == ["video"]
    video = relaying["video"]
    assert not video.public and not video.public_paths  # the handshake needs a token
    assert video.websocket == WebSocketSettings(enabled=True)  # the schema's limits
