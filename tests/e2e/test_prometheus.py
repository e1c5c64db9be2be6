"""A real Prometheus (Debian's ``prometheus``) scrapes the e2e fleet with the launcher's
``prometheus.yml`` and reads the request counters back through its HTTP API."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import RunningFleet, request
from tests.support.polling import wait_for
from tests.support.ports import free_port
from tests.support.processes import stop_process
from topology.prometheus import SCRAPE_INTERVAL_S

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


@pytest.fixture
def prometheus(fleet: RunningFleet, tmp_path: Path) -> Iterator[str]:
    if not Path(PROMETHEUS).exists():
        pytest.skip("the prometheus binary is absent: apt-get install prometheus")
    port = free_port()
    # the launcher's file as it is, but scraped every second rather than every 5: the
    # counters are read back in about a second instead of up to three intervals
    shipped = (fleet.fleet.run_dir / "prometheus.yml").read_text()
    interval = f"scrape_interval: {SCRAPE_INTERVAL_S}s"
    assert interval in shipped
    config = tmp_path / "prometheus.yml"
    config.write_text(shipped.replace(interval, "scrape_interval: 1s"))
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            try:
                return request(url, "/-/ready", timeout=2).status == 200
            except OSError:
                return False

        wait_for(ready, timeout_s=30, what="prometheus ready")
        yield url
    finally:
        stop_process(process, grace_s=10)
        log.close()


def query(url: str, promql: str) -> list[dict[str, object]]:
    with urllib.request.urlopen(
        f"{url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}), timeout=5
    ) as r:
        doc = json.load(r)
    assert doc["status"] == "success", doc
    return list(doc["data"]["result"])


def test_prometheus_scrapes_every_process_and_reads_the_counters(
    fleet: RunningFleet, token: str, prometheus: str
) -> None:
    for _ in range(10):
        r = request(fleet.kr_elb, "/video/index.html", headers={"authorization": f"Bearer {token}"})
        assert r.status == 200
    promql = 'sum(gateway_requests_total{region="ko_KR",service="video",code="200"})'

    def counted() -> bool:
        result = query(prometheus, promql)
        return bool(result) and float(result[0]["value"][1]) >= 10  # type: ignore[index]

    wait_for(counted, timeout_s=40, what=f"prometheus to read {promql} >= 10")

    def all_up() -> bool:
        up = query(prometheus, "up")
        return len(up) == len(fleet.kr_proxies) + len(fleet.en_proxies) + 2 + 1 + 5 and all(
            r["value"][1] == "1"  # type: ignore[index]
            for r in up
        )

    wait_for(all_up, timeout_s=40, what="every target of prometheus.yml up")
    assert query(prometheus, "process_resident_memory_bytes{job='authsvc'}")
    assert query(prometheus, "elb_proxy_up{job='elb'} == 1")
