"""``make ws``: WebSocket echo through the fleet against straight to the backend, same run.

Starts a fleet of its own on free ports (Redis, one backend, one auth server, one ELB and one
proxy of region ko_KR; the service ``chat`` with ``websocket: {enabled: true}``), signs in,
then for 1 and ``--connections`` concurrent trio-websocket clients runs a ping-pong echo of
``--size``-byte messages for ``--duration`` seconds, first straight to the backend, then
client -> ELB -> proxy -> backend, and prints messages per second and the p50/p99 round trip
of each. Last, ``--idle`` WebSockets are opened on the proxy (raw handshakes, nothing sent
after; each answers the proxy's pings, as a browser does) and its RSS is read from /proc before
and ``--hold`` seconds after: the memory an idle WebSocket costs.

    python -m bench.ws --duration 5 --connections 100 --idle 10000
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
from trio_websocket import open_websocket_url

from bench.benchmark import free_ports
from bench.idle import rss_mib
from topology.fleet import open_fleet

ROOT = Path(__file__).resolve().parents[1]


def write_topology(base: Path) -> dict[str, int]:
    elb, proxy, redis, auth, backend = free_ports(5)
    (base / "msa_kr.yaml").write_text(
        f"""name: ws-bench
service:
  - name: chat
    instance: ["http://127.0.0.1:{backend}"]
    websocket: {{enabled: true}}
  - name: auth
    instance: ["http://127.0.0.1:{auth}"]
"""
    )
    config = json.loads((ROOT / "topology" / "config.json").read_text())
    config.update({"Redis_address": f"localhost:{redis}", "Scrypt": {"n": 1024, "r": 8, "p": 1}})
    (base / "config.json").write_text(json.dumps(config))
    (base / "fleet.yaml").write_text(
        f"""regions:
  - code: ko_KR
    elb_port: {elb}
    proxy_ports: [{proxy}]
    msa: msa_kr.yaml
backends:
  ports: [{backend}]
auth:
  ports: [{auth}]
redis:
  port: {redis}
config: config.json
"""
    )
    return {"elb": elb, "proxy": proxy, "backend": backend}


def sign_in(elb: int) -> str:
    import http.client

    user = json.dumps({"username": "ws-bench", "password": "ws-bench-pw", "role": "user"})
    for path in ("/auth/signup", "/auth/signin"):
        conn = http.client.HTTPConnection("127.0.0.1", elb, timeout=30)
        conn.request("POST", path, body=user, headers={"content-type": "application/json"})
        reply = conn.getresponse()
        body = reply.read()
        conn.close()
    return str(json.loads(body)["token"])


async def echo_load(
    url: str, token: str, connections: int, size: int, duration_s: float
) -> dict[str, Any]:
    rtts: list[float] = []
    payload = b"x" * size
    headers = [(b"Authorization", f"Bearer {token}".encode())]
    deadline = trio.current_time() + duration_s

    async def one() -> None:
        async with open_websocket_url(url, extra_headers=headers) as ws:
            while trio.current_time() < deadline:
                started = time.perf_counter()
                await ws.send_message(payload)
                await ws.get_message()
                rtts.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(connections):
            nursery.start_soon(one)
    elapsed = time.perf_counter() - started
    rtts.sort()

    def pct(p: float) -> float:
        return round(rtts[min(len(rtts) - 1, int(len(rtts) * p))] * 1000, 3) if rtts else 0.0

    return {"messages_per_s": round(len(rtts) / elapsed), "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


def pong_for(payload: bytes) -> bytes:
    """A client's (masked) pong frame answering a ping carrying ``payload`` (≤ 125 bytes)."""
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x8A, 0x80 | len(payload)]) + mask + masked


class IdleSockets:
    """Idle WebSockets as a browser keeps them: nothing sent, but the proxy's pings answered
    (a socket that does not answer is dead to the proxy after ``ping_interval_s``, and closed:
    the first 10,000-socket run measured that, not idle sockets)."""

    def __init__(self) -> None:
        self.streams: list[trio.SocketStream] = []
        self.failures: list[str] = []
        self.closed = 0  # by the proxy, while idle

    async def keep(self, stream: trio.SocketStream, buffer: bytes) -> None:
        """Answer pings until the proxy closes (any frame but a ping ends it)."""
        while True:
            while len(buffer) >= 2:
                opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
                if length > 125 or len(buffer) < 2 + length:
                    break
                payload, buffer = buffer[2 : 2 + length], buffer[2 + length :]
                if opcode != 0x9:
                    self.closed += 1
                    return
                await stream.send_all(pong_for(payload))
            data = await stream.receive_some(4096)
            if not data:
                self.closed += 1
                return
            buffer += data

    async def open(
        self, nursery: trio.Nursery, port: int, path: str, token: str, n: int, progress: bool
    ) -> None:
        """``n`` handshakes, 20 at a time; each socket that got a 101 is kept answering."""
        request_head = (
            f"GET {path} HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {token}\r\n"
        )
        limiter = trio.CapacityLimiter(20)
        started = time.perf_counter()

        async def one() -> None:
            async with limiter:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                key = base64.b64encode(os.urandom(16)).decode()
                await stream.send_all(f"{request_head}Sec-WebSocket-Key: {key}\r\n\r\n".encode())
                head = b""
                while b"\r\n\r\n" not in head:
                    data = await stream.receive_some(4096)
                    if not data:
                        break
                    head += data
                head, _, rest = head.partition(b"\r\n\r\n")
                if head.startswith(b"HTTP/1.1 101"):
                    self.streams.append(stream)
                    nursery.start_soon(self.keep, stream, rest)
                    if progress and not len(self.streams) % 1000:
                        took = time.perf_counter() - started
                        print(f"idle: {len(self.streams)} open after {took:.1f} s", flush=True)
                else:
                    self.failures.append(rest.decode("latin-1")[:200])
                    await trio.aclose_forcefully(stream)

        async with trio.open_nursery() as handshakes:
            for _ in range(n):
                handshakes.start_soon(one)


async def run(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="ws-bench-"))
    try:
        ports = write_topology(base)
        async with open_fleet(base / "fleet.yaml", base / "run", out=lambda line: None) as fleet:
            token = await trio.to_thread.run_sync(sign_in, ports["elb"])
            targets = {
                "backend": f"ws://127.0.0.1:{ports['backend']}/ws/echo",
                "fleet (ELB -> proxy)": f"ws://127.0.0.1:{ports['elb']}/chat/ws/echo",
            }
            print(f"load average at start: {os.getloadavg()}")
            print(f"{'target':24} {'conns':>5} {'msg/s':>8} {'p50 ms':>8} {'p99 ms':>8}")
            for connections in (1, args.connections):
                for name, url in targets.items():
                    row = await echo_load(url, token, connections, args.size, args.duration)
                    print(
                        f"{name:24} {connections:5d} {row['messages_per_s']:8d}"
                        f" {row['p50_ms']:8.3f} {row['p99_ms']:8.3f}",
                        flush=True,
                    )
            if args.idle:
                pid = fleet.pids[f"proxy-ko_KR-{ports['proxy']}"]
                before = rss_mib(pid)
                opening = time.perf_counter()
                idle = IdleSockets()
                async with trio.open_nursery() as nursery:
                    await idle.open(
                        nursery, ports["proxy"], "/chat/ws/echo", token, args.idle, True
                    )
                    took = time.perf_counter() - opening
                    await trio.sleep(args.hold)  # past a ping or two: still open, answered
                    after = rss_mib(pid)
                    opened = len(idle.streams)
                    still = opened - idle.closed
                    print(f"idle: {opened} handshakes in {took:.1f} s", flush=True)
                    print(
                        f"idle: {still} WebSockets open on one proxy ({idle.closed} closed by it) "
                        f"{args.hold:g} s later: RSS {before:.1f} -> {after:.1f} MiB "
                        f"({(after - before) * 1024 / max(1, still):.1f} KiB each)"
                    )
                    if idle.failures:
                        print(
                            f"idle: {len(idle.failures)} handshakes refused, "
                            f"first: {idle.failures[0]}"
                        )
                    nursery.cancel_scope.cancel()
                for stream in idle.streams:
                    await trio.aclose_forcefully(stream)
            print(f"load average at end: {os.getloadavg()}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="bench.ws", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--idle", type=int, default=10000)
    parser.add_argument(
        "--hold", type=float, default=35.0, help="seconds the idle sockets stay open (pings: 30 s)"
    )
    trio.run(run, parser.parse_args())


if __name__ == "__main__":
    main()
