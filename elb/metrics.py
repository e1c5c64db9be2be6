"""The ELB's Prometheus series and its connection log.

The ELB reads no HTTP on its traffic port (it hands sockets over or copies bytes), so its
``/metrics`` has a port of its own (``elb --metrics-port``, 127.0.0.1, local connections only).
``elb_connections_total{proxy,mode}`` counts what each accepted connection became (``handoff``,
``relay``, ``refused`` with proxy ``-``); ``elb_active_connections{proxy}`` and
``elb_proxy_up{proxy}`` are read from the balancer and the health state at scrape time.

The connection log (``elb --access-log PATH|-``; off by default) has one JSON line per
connection when the ELB is done with it: at hand-off (the proxy owns it from then on: duration
is the ELB's part only, bytes 0) or when a relay closes (bytes both ways).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import msgspec
from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from elb.main import Elb

CONNECTIONS = Counter(
    "elb_connections", "Accepted connections by the proxy given them and how", ["proxy", "mode"]
)


class ConnectionLine(msgspec.Struct, frozen=True):
    time: str
    client: str
    proxy: str
    mode: str  # handoff | relay | refused
    duration_ms: float
    bytes_in: int
    bytes_out: int


class ElbCollector(Collector):
    def __init__(self, elb: Callable[[], Elb | None]) -> None:
        self._elb = elb

    def collect(self) -> Iterator[GaugeMetricFamily]:
        elb = self._elb()
        if elb is None:
            return
        active = GaugeMetricFamily(
            "elb_active_connections", "Connections a proxy holds from this ELB", labels=["proxy"]
        )
        up = GaugeMetricFamily(
            "elb_proxy_up", "1 while a proxy takes connections", labels=["proxy"]
        )
        usable = set(elb.health.usable)
        for target in elb.targets.values():
            active.add_metric([target.url], float(target.state.in_flight))
            up.add_metric([target.url], 1.0 if target.url in usable else 0.0)
        yield active
        yield up


_current: list[Elb] = []


def watch(elb: Elb) -> None:
    """Expose ``elb``'s state at scrape time (one ELB per process)."""
    _current[:] = [elb]


REGISTRY.register(ElbCollector(lambda: _current[0] if _current else None))
