import msgspec

from topology.placement import place
from topology.prometheus import prometheus_config, scrape_targets
from topology.schema import FleetAuth, FleetBackends, FleetHost, FleetRegion, FleetTopology


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


def four_hosts() -> FleetTopology:
    """The shape of `tests/e2e/test_fleet_hosts.py`: the ELB on a, proxies, auth servers and
    a backend on b and c, the engines on d."""
    return FleetTopology(
        regions=[
            FleetRegion("ko_KR", 9000, [6000, 6001, 6002, 6003], "msa.yaml", elb_metrics_port=9010)
        ],
        backends=FleetBackends(ports=[5000, 5001]),
        auth=FleetAuth(ports=[8000, 8001]),
        hosts=[
            FleetHost("a", "10.0.0.1", [9000]),
            FleetHost("b", "10.0.0.2", [6000, 6001, 8000, 5000]),
            FleetHost("c", "10.0.0.3", [6002, 6003, 8001, 5001]),
            FleetHost("d", "10.0.0.4", [6379]),
        ],
    )


def test_a_fleet_over_hosts_lists_each_process_where_it_listens():
    """Each at its host's address (what the launcher binds it to), the ELB's /metrics at the
    ELB's; each labelled with its host, so a Prometheus per host keeps its own."""
    fleet = four_hosts()
    placement = place(fleet)
    targets = scrape_targets(fleet)
    assert [(job, target, labels.get("host")) for job, target, labels in targets] == [
        ("proxy", "10.0.0.2:6000", "b"),
        ("proxy", "10.0.0.2:6001", "b"),
        ("proxy", "10.0.0.3:6002", "c"),
        ("proxy", "10.0.0.3:6003", "c"),
        ("elb", "10.0.0.1:9010", "a"),
        ("authsvc", "10.0.0.2:8000", "b"),
        ("authsvc", "10.0.0.3:8001", "c"),
        ("backend", "10.0.0.2:5000", "b"),
        ("backend", "10.0.0.3:5001", "c"),
    ]
    for _, target, labels in targets:  # the placement the launcher binds by
        address, _, port = target.rpartition(":")
        if labels["process"].startswith("elb-"):
            port = "9000"
        assert placement.address_of(int(port)) == address
    assert "host" not in scrape_targets(topology())[0][2]  # one machine: as before


def test_each_worker_of_a_proxy_is_a_target_of_its_own():
    """``proxy_workers: 2`` with ``worker_metrics_ports``: two targets per proxy, each worker's
    own port labelled ``worker``, and not the shared port (a random worker, counted twice)."""
    fleet = FleetTopology(
        regions=[
            FleetRegion(
                "ko_KR",
                9000,
                [6000, 6001],
                "msa.yaml",
                proxy_workers=2,
                worker_metrics_ports=[7100, 7101, 7102, 7103],
            )
        ],
    )
    proxies = [(t, labels) for job, t, labels in scrape_targets(fleet) if job == "proxy"]
    assert proxies == [
        ("127.0.0.1:7100", {"region": "ko_KR", "process": "proxy-ko_KR-6000", "worker": "0"}),
        ("127.0.0.1:7101", {"region": "ko_KR", "process": "proxy-ko_KR-6000", "worker": "1"}),
        ("127.0.0.1:7102", {"region": "ko_KR", "process": "proxy-ko_KR-6001", "worker": "0"}),
        ("127.0.0.1:7103", {"region": "ko_KR", "process": "proxy-ko_KR-6001", "worker": "1"}),
    ]
