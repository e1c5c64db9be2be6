"""``run/<ts>/prometheus.yml``: every process of a fleet as a Prometheus scrape target.

One job per kind of process (``proxy``, ``elb``, ``authsvc``, ``backend``), each target labelled with
its region where it has one, so ``sum by (region) (rate(gateway_requests_total[1m]))`` needs no
relabelling. Every process serves ``/metrics`` on 127.0.0.1 to direct connections only, which
is where a Prometheus on the fleet's host scrapes from. The ELBs pass connections on without
reading them: theirs is on ``elb_metrics_port`` when the topology gives one.
Scraped every 5 s: the fleet's own health checks run at 0.5 s - 10 s, and a ``fleet top``
refreshing every second reads ``/metrics`` itself rather than through Prometheus.
"""

from __future__ import annotations

from topology.schema import FleetTopology, encode_yaml

SCRAPE_INTERVAL_S = 5


def scrape_targets(topology: FleetTopology) -> list[tuple[str, str, dict[str, str]]]:
    """(job, ``host:port``, labels) of every process that serves ``/metrics``."""
    host = topology.host
    out: list[tuple[str, str, dict[str, str]]] = []
    for region in topology.regions:
        for port in region.proxy_ports:
            name = f"proxy-{region.code}-{port}"
            out.append(("proxy", f"{host}:{port}", {"region": region.code, "process": name}))
        if region.elb_metrics_port is not None:
            name = f"elb-{region.code}-{region.elb_port}"
            labels = {"region": region.code, "process": name}
            out.append(("elb", f"{host}:{region.elb_metrics_port}", labels))
    for port in topology.auth.ports:
        out.append(("authsvc", f"{host}:{port}", {"process": f"authsvc-{port}"}))
    for port in topology.backends.ports:
        out.append(("backend", f"{host}:{port}", {"process": f"backend-{port}"}))
    return out


def prometheus_config(topology: FleetTopology) -> bytes:
    jobs: dict[str, list[dict[str, object]]] = {}
    for job, target, labels in scrape_targets(topology):
        jobs.setdefault(job, []).append({"targets": [target], "labels": labels})
    return encode_yaml(
        {
            "global": {
                "scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
            },
            "scrape_configs": [
                {"job_name": job, "metrics_path": "/metrics", "static_configs": groups}
                for job, groups in jobs.items()
            ],
        }
    )
