"""`proxy.main.AccessSwitch`: what ``Access_log`` in config.json switches, across reloads."""

from __future__ import annotations

from pathlib import Path

import msgspec

from httpio.access_log import AccessLog, Tee
from httpio.messages import Request, Response
from httpio.server import HttpServer
from httpio.upstream import UpstreamPool
from proxy.app import ProxyApp
from proxy.main import AccessSwitch
from proxy.metrics import ProxyObserver
from proxy.state import ProxyConfig
from topology.schema import GatewayConfig, MsaFile, RegionSpec, RegionStructure


def config(access_log: object) -> ProxyConfig:
    gateway = msgspec.convert({"Access_log": access_log}, GatewayConfig)
    return ProxyConfig(
        msa=MsaFile(service=[]),
        rs=RegionStructure(
            cur_region_code="ko_KR",
            regions=[RegionSpec(region_code="ko_KR", available_zone=["http://127.0.0.1:9"])],
        ),
        gateway=gateway,
        region="ko_KR",
        services={},
        regions={"ko_KR": ["http://127.0.0.1:9"]},
    )


async def handler(request: Request) -> Response:
    raise AssertionError("not called")


def switch_for(*, metrics: bool, file: AccessLog | None) -> tuple[AccessSwitch, HttpServer]:
    app = ProxyApp(config(False), UpstreamPool(), name="proxy-switch-test")
    server = HttpServer(handler)
    observer = ProxyObserver(app, None, metrics=metrics)
    sinks = [file] if file is not None else []
    stdout = AccessLog("-")
    return AccessSwitch(server, observer, list(sinks), stdout, has_file=file is not None), server


def test_true_is_the_json_log_on_standard_output_and_follows_reloads() -> None:
    switch, server = switch_for(metrics=True, file=None)
    switch.follow(config(False))
    assert switch.observer.access_log is None and server.observer is switch.observer
    switch.follow(config(True))
    assert switch.observer.access_log is switch.stdout
    switch.follow(config(False))  # a reload that switches it off
    assert switch.observer.access_log is None


def test_a_file_named_on_the_command_line_takes_every_line_whatever_the_config(
    tmp_path: Path,
) -> None:
    file = AccessLog(tmp_path / "access.log")
    try:
        switch, _ = switch_for(metrics=True, file=file)
        for value in (False, True):
            switch.follow(config(value))
            assert switch.observer.access_log is file  # never twice, never to stdout too
        switch.follow(config({"sqlite": "a.sqlite3"}))
        assert switch.observer.access_log is file
        assert not isinstance(switch.observer.access_log, Tee)
    finally:
        file.close()


def test_with_metrics_off_and_nothing_to_log_there_is_no_observer() -> None:
    switch, server = switch_for(metrics=False, file=None)
    switch.follow(config(False))
    assert server.observer is None
    switch.follow(config(True))
    assert server.observer is switch.observer
