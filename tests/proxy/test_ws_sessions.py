"""`proxy.ws_sessions.stale`: which open WebSockets a reload ends. No event loop."""

from __future__ import annotations

from typing import Any

from proxy.ws_sessions import OpenSocket, drain_delay, stale
from tests.proxy.test_app import make_config, service
from topology.schema import WebSocketSettings

ON = WebSocketSettings(enabled=True)


def socket(service_name: str | None, instance: str, region: str | None = None) -> OpenSocket:
    relay: Any = None
    return OpenSocket(relay, instance=instance, drain_s=1.0, service=service_name, region=region)


def test_an_untouched_service_keeps_its_sockets() -> None:
    config = make_config(service("chat", "http://127.0.0.1:5000", websocket=ON))
    assert stale([socket("chat", "http://127.0.0.1:5000")], config) == []


def test_a_removed_service_instance_or_switch_ends_them() -> None:
    kept = socket("chat", "http://127.0.0.1:5000")
    moved = socket("chat", "http://127.0.0.1:5001")
    gone = socket("old", "http://127.0.0.1:5000")
    config = make_config(service("chat", "http://127.0.0.1:5000", websocket=ON))
    assert stale([kept, moved, gone], config) == [moved, gone]
    off = make_config(service("chat", "http://127.0.0.1:5000"))
    assert stale([kept], off) == [kept]


def test_a_region_relay_ends_when_its_elb_goes() -> None:
    relayed = socket(None, "http://127.0.0.1:9001", region="en_US")
    with_elb = make_config(
        elbs={"ko_KR": ["http://127.0.0.1:9"], "en_US": ["http://127.0.0.1:9001"]}
    )
    without = make_config(elbs={"ko_KR": ["http://127.0.0.1:9"]})
    assert stale([relayed], with_elb) == []
    assert stale([relayed], without) == [relayed]


def test_drain_delay_stays_under_the_servers_drain_timeout() -> None:
    assert drain_delay(5.0, 10.0) == 5.0
    assert drain_delay(30.0, 10.0) == 9.0
    assert drain_delay(5.0, 0.5) == 0.0
