import msgspec

from topology.prometheus import prometheus_config, scrape_targets
from topology.schema import FleetAuth, FleetBackends, FleetRegion, FleetTopology


def topology() -> FleetTopology:
    return FleetTopology(
        regions=[FleetRegion("ko_KR", 9000, [6000, 6001], "msa.yaml", elb_metrics_port=9010)],
        backends=FleetBackends(ports=[5000]),
        auth=FleetAuth(ports=[8000]),
    )


def test_every_process_is_a_target_with_its_region():
    targets = scrape_targets(topology())
    assert [(job, target) for job, target, _ in targets] == [
        ("proxy", "127.0.0.1:6000"),
        ("proxy", "127.0.0.1:6001"),
        ("elb", "127.0.0.1:9010"),
        ("authsvc", "127.0.0.1:8000"),
        ("backend", "127.0.0.1:5000"),
    ]
    assert targets[0][2] == {"region": "ko_KR", "process": "proxy-ko_KR-6000"}


def test_the_file_is_prometheus_yaml():
    doc = msgspec.yaml.decode(prometheus_config(topology()))
    assert doc["global"]["scrape_interval"] == "5s"
    jobs = {c["job_name"]: c for c in doc["scrape_configs"]}
    assert set(jobs) == {"proxy", "elb", "authsvc", "backend"}
    assert jobs["proxy"]["static_configs"][1]["targets"] == ["127.0.0.1:6001"]
