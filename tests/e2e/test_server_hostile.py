"""Hostile bytes against real processes (issue 8): a demo backend and a proxy in front of
it, each started here on free ports of 127.0.0.1. Each attack is sent as exact bytes on a
raw socket; each test then checks the answer, that the connection was closed where it
must be, what the backend saw (its ``/stats`` counters and ``/echo``), and that the
process is alive and still serving.

The proxy runs with small body limits (``Server`` in its config.json) so that a trickled
upload breaks them within about a second, and names its ELB at a TEST-NET address: the
test's connections from 127.0.0.1 are then plain clients, served as connections an ELB
hands off are, not ones that may open with a PROXY header.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.harness import request
from tests.httpio.test_server import RawClient, Reply, assert_error, connect
from tests.support.polling import wait_for
from tests.support.ports import free_ports

BIN = Path(sys.executable).parent
IDLE_CONNECTIONS = 400


@dataclass
class Pair:
    backend: int
    proxy: int
    processes: list[subprocess.Popen[bytes]]

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.processes)

    def stats(self) -> dict[str, Any]:
        return request(f"http://127.0.0.1:{self.backend}", "/stats").json()  # type: ignore[no-any-return]

    def in_flight(self) -> dict[str, int]:
        admin = request(f"http://127.0.0.1:{self.proxy}", "/admin/backends").json()
        return admin["limits"]["web"]["in_flight"]  # type: ignore[no-any-return]


def _up(port: int) -> bool:
    try:
        return request(f"http://127.0.0.1:{port}", "/health", timeout=1).status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("hostile")
    backend, proxy = free_ports(2)
    (base / "msa.yaml").write_text(
        f"""service:
  - name: web
    public: true
    instance: ["http://127.0.0.1:{backend}"]
"""
    )
    (base / "rs.yaml").write_text(
        """cur_region_code: ko_KR
regions:
  - region_code: ko_KR
    available_zone: ["http://192.0.2.1:9000"]
"""
    )
    server = {
        "head_timeout_s": 1.0,
        "body_rate_grace_s": 1.0,
        "min_body_rate_bytes_per_s": 1000,
        "body_deadline_s": 5.0,
    }
    config = {"Auth_key": "k" * 32, "MSA_healthcheck_interval": 60, "Server": server}
    (base / "config.json").write_text(json.dumps(config))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for args, log in (
            ([str(BIN / "backend"), str(backend)], "backend.log"),
            (
                [str(BIN / "proxy"), str(proxy)]
                + [str(base / f) for f in ("msa.yaml", "rs.yaml", "config.json")],
                "proxy.log",
            ),
        ):
            with open(base / log, "wb") as out:
                processes.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT))
        wait_for(lambda: _up(backend) and _up(proxy), what="backend and proxy up")
        yield Pair(backend, proxy, processes)
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
            p.wait(10)


async def exchange(port: int, data: bytes) -> tuple[Reply, bool]:
    """Send ``data`` on a new connection; the answer, and whether the server closed the
    connection after it (a refusal must; a served request keeps it open)."""
    async with connect(port) as client:
        await client.send(data)
        reply = await client.read_response()
        return reply, await closed_by_server(client)


async def closed_by_server(client: RawClient) -> bool:
    """True when the server closes (EOF, or a reset after its lingering close); False when
    it still waits for our next request after a moment."""
    with trio.move_on_after(1.5):
        try:
            return await client.stream.receive_some(1) == b""
        except trio.BrokenResourceError:
            return True
    return False


def still_serves(pair: Pair) -> None:
    assert pair.alive()
    assert _up(pair.backend) and _up(pair.proxy)


# -- item 1: CONNECT and odd methods end nothing ----------------------------------------------------
ODD = [
    (b"CONNECT /health HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"CONNECT /web/echo HTTP/1.1\r\nHost: x\r\n\r\n", 405),
    (b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n", 405),
    (b"TRACE /web/echo HTTP/1.1\r\nHost: x\r\nCookie: s=1\r\n\r\n", 405),
    (b"FOO /web/echo HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    (b"get /web/echo HTTP/1.1\r\nHost: x\r\n\r\n", 501),
    (b"PROPFIND /web/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 501),
]


@pytest.mark.parametrize("target", ["backend", "proxy"])
async def test_connect_and_odd_methods_are_refused_and_the_process_serves_on(
    pair: Pair, target: str
) -> None:
    port = pair.backend if target == "backend" else pair.proxy
    echoes = pair.stats()["echoes"]
    for _ in range(3):  # the second CONNECT left a region without a proxy
        for data, status in ODD:
            reply, closed = await exchange(port, data)
            assert_error(
                reply, status, "method_not_allowed" if status == 405 else "not_implemented"
            )
            assert closed, data
            assert b"s=1" not in reply.raw
    still_serves(pair)
    assert pair.stats()["echoes"] == echoes  # nothing got through to the backend


# -- item 6: framing ---------------------------------------------------------------------------------
POST = b"POST /web/echo HTTP/1.1\r\nHost: x\r\n"
SMUGGLED = b"GET /web/echo?SMUGGLED HTTP/1.1\r\nHost: x\r\n\r\n"
FRAMING = [
    # (what, bytes, status, requests the backend must see)
    (
        "cl+te",
        POST + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400,
        0,
    ),
    (
        "te+cl",
        POST + b"Transfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n" + SMUGGLED,
        400,
        0,
    ),
    ("te-list", POST + b"Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n" + SMUGGLED, 501, 0),
    ("xchunked", POST + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + SMUGGLED, 501, 0),
    ("te-1.0", b"POST /web/echo HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, 0),
    ("cl-conflict", POST + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!", 400, 0),
    ("space-colon", POST + b"Content-Length : 5\r\n\r\nhello" + SMUGGLED, 400, 0),
    ("nul", POST + b"X-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello", 400, 0),
    ("cl-duplicate", POST + b"Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 200, 1),
    ("obs-fold", POST + b"X-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello", 200, 1),
    ("bare-lf", b"POST /web/echo HTTP/1.1\nHost: x\nContent-Length: 5\n\nhello", 200, 1),
    ("chunked", POST + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 200, 1),
]


@pytest.mark.parametrize(
    ("data", "status", "seen"), [f[1:] for f in FRAMING], ids=[f[0] for f in FRAMING]
)
async def test_framing_through_the_proxy(pair: Pair, data: bytes, status: int, seen: int) -> None:
    before = pair.stats()["echoes"]
    reply, closed = await exchange(pair.proxy, data)
    assert reply.status == status
    if status >= 400:
        assert_error(reply, status, "bad_request" if status == 400 else "not_implemented")
        assert closed  # RFC 9112 6.1: close after refusing an ambiguous length
    else:
        echoed = reply.json()
        assert echoed["body"] == "hello" and echoed["target"] == "/echo"
        framing = [h for h in echoed["headers"] if h[0] in ("content-length", "transfer-encoding")]
        # one framing, ours, whatever the client sent
        assert framing in ([["content-length", "5"]], [["transfer-encoding", "chunked"]])
        assert all(v == "a b" for n, v in echoed["headers"] if n == "x-a")  # obs-fold: one SP
    wait_for(lambda: pair.stats()["echoes"] - before == seen, timeout_s=5, what="the echo count")
    assert pair.stats()["echoes"] - before == seen  # never two requests out of one
    still_serves(pair)


# -- item 10: headers a client must not set -------------------------------------------------------
def test_underscore_names_and_forged_forwarding_headers_do_not_reach_the_backend(
    pair: Pair,
) -> None:
    reply = request(
        f"http://127.0.0.1:{pair.proxy}",
        "/web/echo",
        headers={
            "X_User": "root",
            "X-User_Role": "admin",
            "X-Real-IP": "10.9.9.9",
            "Forwarded": "for=10.9.9.9;by=_admin",
        },
    )
    headers = reply.json()["headers"]
    names = [n for n, _ in headers]
    assert not any("_" in n for n in names), names
    assert [v for n, v in headers if n == "x-real-ip"] == ["127.0.0.1"]
    forwarded = [v for n, v in headers if n == "forwarded"]
    assert len(forwarded) == 1 and forwarded[0].startswith("for=127.0.0.1;proto=http;by=_proxy")
    assert "10.9.9.9" not in json.dumps(headers)


# -- item 8: a trickled body ------------------------------------------------------------------------
async def test_a_trickled_upload_is_408_and_its_in_flight_slot_is_released(pair: Pair) -> None:
    # 100 KB announced (over the 64 KiB the proxy buffers, so it streams while holding an
    # in-flight slot), 50 bytes every 0.1 s: 500 B/s against a 1000 B/s minimum.
    head = b"POST /web/upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    async with connect(pair.proxy) as client:
        await client.send(head)
        reply: Reply | None = None
        with trio.move_on_after(30):  # 300 pieces; the 5 s body deadline is far below
            for _ in range(300):
                with trio.move_on_after(0.1):
                    await trio.lowlevel.wait_readable(client.stream.socket)
                    reply = await client.read_response()
                    break
                await client.send(b"z" * 50)
        assert reply is not None, "no answer while the body trickled"
        assert await closed_by_server(client)
    assert_error(reply, 408, "request_timeout", "bytes/s")
    wait_for(lambda: pair.in_flight()["in_use"] == 0, timeout_s=5, what="the slot released")
    assert pair.in_flight()["peak"] >= 1  # the upload did hold one while it trickled
    still_serves(pair)


# -- item 7: a burst of connections that never speak ---------------------------------------------
async def test_health_is_answered_while_idle_connections_time_out_silently(pair: Pair) -> None:
    async with trio.open_nursery() as nursery:
        idle: list[RawClient] = []
        for _ in range(IDLE_CONNECTIONS):
            idle.append(RawClient(await trio.open_tcp_stream("127.0.0.1", pair.proxy)))
        heard: list[bytes] = []

        async def listen(client: RawClient) -> None:
            heard.append(await client.read_to_eof())

        for client in idle:
            nursery.start_soon(listen, client)
        # /health one request after another while the idle ones wait out the 1 s head
        # timeout (and after: the loop ends when every idle connection was closed).
        answers: list[int] = []
        with trio.fail_after(60):
            while len(heard) < IDLE_CONNECTIONS and len(answers) < 10_000:
                async with connect(pair.proxy) as client:
                    await client.send(
                        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                    )
                    answers.append((await client.read_response()).status)
    for client in idle:
        await client.aclose()
    assert answers and set(answers) == {200}
    assert heard == [b""] * IDLE_CONNECTIONS  # closed without a 408 to write
    still_serves(pair)
