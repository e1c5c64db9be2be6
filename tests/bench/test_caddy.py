"""`bench.caddy`: the config it writes, and one real hop through Caddy that stops with it."""

from __future__ import annotations

import shutil
import socket
import urllib.request

import msgspec
import pytest
import trio

from backends.app import BackendApp
from backends.static_files import StaticSite
from bench import run
from bench.caddy import caddy_config, running_caddy
from httpio.run import serve_tcp


def test_caddy_config_is_plain_http_on_loopback() -> None:
    config = caddy_config(9100, "127.0.0.1:5002")
    assert config["admin"] == {"disabled": True}
    server = config["apps"]["http"]["servers"]["bench"]  # type: ignore[index]
    assert server["listen"] == ["127.0.0.1:9100"]
    assert server["automatic_https"] == {"disable": True}


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed")
async def test_caddy_proxies_one_hop_and_stops(nursery: trio.Nursery) -> None:
    app = BackendApp(StaticSite.builtin(), name="behind-caddy")
    port = await nursery.start(serve_tcp, app, 0)

    def through_caddy() -> tuple[int, bytes, int]:
        with running_caddy(f"127.0.0.1:{port}") as caddy_port:
            request = urllib.request.Request(f"http://127.0.0.1:{caddy_port}/health")
            status, body = run._open(request, 10.0)
        return status, body, caddy_port

    status, body, caddy_port = await trio.to_thread.run_sync(through_caddy)
    assert status == 200 and msgspec.json.decode(body)["name"] == "behind-caddy"
    with pytest.raises(OSError):  # stopped: nothing listens there any more
        socket.create_connection(("127.0.0.1", caddy_port), timeout=1).close()
