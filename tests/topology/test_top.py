"""`topology.top.build_view` from two scrapes, no network: what a second of traffic shows."""

from __future__ import annotations

from topology.top import Scrape, build_view, parse

BEFORE = """
gateway_requests_total{region="ko_KR",service="video",method="GET",code="200"} 100
gateway_requests_total{region="ko_KR",service="video",method="GET",code="429"} 10
gateway_ratelimit_decisions_total{service="video",key="client_ip",decision="allow"} 100
gateway_ratelimit_decisions_total{service="video",key="client_ip",decision="deny"} 10
gateway_instance_up{service="video",instance="http://127.0.0.1:5002"} 1
"""
AFTER = """
gateway_requests_total{region="ko_KR",service="video",method="GET",code="200"} 150
gateway_requests_total{region="ko_KR",service="video",method="GET",code="429"} 30
gateway_ratelimit_decisions_total{service="video",key="client_ip",decision="allow"} 150
gateway_ratelimit_decisions_total{service="video",key="client_ip",decision="deny"} 30
gateway_instance_up{service="video",instance="http://127.0.0.1:5002"} 1
"""


def scrape(text: str, at: float) -> Scrape:
    labels = {"region": "ko_KR", "process": "proxy-ko_KR-6000"}
    return Scrape("proxy", "127.0.0.1:6000", labels, at, parse(text), up=True)


def test_the_service_row_counts_the_rate_limit_filters_refusals() -> None:
    """Issue 11's filters count ``decision="deny"``: 20 refusals in 2 s are 10 limited/s."""
    view = build_view([scrape(BEFORE, 10.0)], [scrape(AFTER, 12.0)], now=12.0)
    (row,) = view.services
    assert row[0] == "video" and row[1] == "35.0"  # (50 + 20) requests / 2 s
    assert row[4] == "1/1" and row[5] == "10.0"
