"""``run/<ts>/prometheus.yml``: every process of a fleet as a Prometheus scrape target.

One job per kind of process (``proxy``, ``elb``, ``authsvc``, ``backend``), each target labelled with
its region where it has one, so ``sum by (region) (rate(gateway_requests_total[1m]))`` needs no
relabelling. Each process is listed at the address it binds (`topology.placement`: its host's
address in a topology with ``hosts``, else the topology's ``host``); it answers ``/metrics``
to direct connections from its own host only, so a topology over several hosts wants a
Prometheus on each host (scraping its own targets) or a federation of them. The ELBs pass
connections on without reading them: theirs is on ``elb_metrics_port`` when the topology
gives one, at the ELB's address. A proxy of ``proxy_workers: N`` with ``worker_metrics_ports``
is N targets, one per worker's own port, labelled ``worker`` (a scrape of its shared port
would see whichever worker the kernel picked, and summing it with the others would count that
one twice): ``sum by (process)`` is the proxy's.
Scraped every 5 s: the fleet's own health checks run at 0.5 s - 10 s, and a ``fleet top``
refreshing every second reads ``/metrics`` itself rather than through Prometheus.
"""

from __future__ import annotations

from topology.placement import place
from topology.schema import FleetTopology, encode_yaml

SCRAPE_INTERVAL_S = 5


def scrape_targets(topology: FleetTopology) -> list[tuple[str, str, dict[str, str]]]:
    """(job, ``host:port``, labels) of every process that serves ``/metrics``."""
    placement = place(topology)

    def at(port: int, of: int | None = None) -> str:
        address = placement.address_of(port if of is None else of)
        return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"

    def labelled(port: int, **labels: str) -> dict[str, str]:
        host = placement.host_of(port)
        return {**labels, "host": host} if host else labels

    out: list[tuple[str, str, dict[str, str]]] = []
    for region in topology.regions:
        for port in region.proxy_ports:
            name = f"proxy-{region.code}-{port}"
            labels = labelled(port, region=region.code, process=name)
            metrics = region.metrics_ports_of(port)
            if not metrics:
                out.append(("proxy", at(port), labels))
            for k, worker_port in enumerate(metrics):  # each worker, not the shared port
                out.append(("proxy", at(worker_port, of=port), {**labels, "worker": str(k)}))
        if region.elb_metrics_port is not None:
            name = f"elb-{region.code}-{region.elb_port}"
            labels = labelled(region.elb_port, region=region.code, process=name)
            out.append(("elb", at(region.elb_metrics_port, of=region.elb_port), labels))
    for port in topology.auth.ports:
        out.append(("authsvc", at(port), labelled(port, process=f"authsvc-{port}")))
    for port in topology.backends.ports:
        out.append(("backend", at(port), labelled(port, process=f"backend-{port}")))
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
