"""A fleet-wide limit on the real fleet: two proxies of a region, their ELB, a real Redis and
a backend, started by the launcher on free ports. Requests alternate between the proxies
(straight to each, and through the ELB): the burst is counted once for the region, never
once per proxy, and a refusal is a 429 with its headers. Then Redis is stopped (SIGSTOP: it
hangs, the worst case) and each ``on_store_error`` does what it says: ``allow`` lets
requests through, ``deny`` refuses them, ``local`` lets each proxy its share of the burst.

The limit (0.001/s, burst 10) refills one request in 1,000 s, so the count does not depend on
how fast the machine is."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import trio

from tests.support.polling import wait_until
from tests.support.ports import free_ports
from topology.fleet import find_launchers, open_fleet

DEADLINE_S = 30.0
BURST = 10


def write_topology(base: Path, two_regions: bool = False) -> Path:
    backend, p0, p1, elb, redis, elb2 = free_ports(6)
    services = "service:\n"
    for name, on_error in (("web", "allow"), ("deny", "deny"), ("local", "local")):
        services += (
            f"  - name: {name}\n    public: true\n"
            f'    instance: ["http://127.0.0.1:{backend}"]\n'
            f"    rate_limit: [{{key: service, rate_per_s: 0.001, burst: {BURST},"
            f" on_store_error: {on_error}, fleet_proxies: 2}}]\n"
        )
    (base / "msa.yaml").write_text(services)
    (base / "config.json").write_text(
        json.dumps(
            {
                "Auth_key": "k" * 40,
                "MSA_healthcheck_interval": 1,
                "Redis_address": f"127.0.0.1:{redis}",
            }
        )
    )
    path = base / "fleet.yaml"
    regions = f"  - {{code: kr, elb_port: {elb}, proxy_ports: [{p0}, {p1}], msa: msa.yaml}}\n"
    if two_regions:  # one proxy each, the same service map, the same Redis
        regions = (
            f"  - {{code: kr, elb_port: {elb}, proxy_ports: [{p0}], msa: msa.yaml}}\n"
            f"  - {{code: us, elb_port: {elb2}, proxy_ports: [{p1}], msa: msa.yaml}}\n"
        )
    path.write_text(
        f"regions:\n{regions}"
        f"backends: {{ports: [{backend}]}}\nredis: {{port: {redis}}}\nconfig: config.json\n"
    )
    return path


async def get(port: int, service: str = "web") -> tuple[int, dict[bytes, bytes]]:
    with trio.fail_after(DEADLINE_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"GET /%s/index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                % service.encode()
            )
            answer = b""
            while data := await stream.receive_some(65536):
                answer += data
    head = answer.partition(b"\r\n\r\n")[0].split(b"\r\n")
    headers = dict(line.lower().split(b": ", 1) for line in head[1:])
    return int(head[0].split(b" ")[1]), headers


async def test_a_fleet_limit_counts_once_across_the_proxies_and_redis_stopped(
    tmp_path: Path,
) -> None:
    for kind in ("backend", "proxy", "elb", "redis"):
        if isinstance(find_launchers().get(kind), str):
            pytest.skip(f"{kind} is not installed")
    path = write_topology(tmp_path)
    async with open_fleet(path, tmp_path / "run", out=lambda line: None) as fleet:
        ports = sorted(p for name, p in fleet.ports.items() if name.startswith("proxy-"))
        elb = next(p for name, p in fleet.ports.items() if name.startswith("elb-"))
        assert len(ports) == 2
        targets = [ports[0], ports[1], elb] * 10
        answers = [await get(port) for port in targets]
        # Redis hung (SIGSTOP: every decision times out, at the command timeout)
        redis_pid = next(pid for name, pid in fleet.pids.items() if name.startswith("redis"))
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            alternate = [ports[0], ports[1]] * 6
            allow = [(await get(p, "web"))[0] for p in alternate]
            deny = [(await get(p, "deny"))[0] for p in alternate[:4]]
            local = [(await get(p, "local"))[0] for p in alternate]
        finally:
            os.kill(redis_pid, signal.SIGCONT)
    assert allow == [200] * len(alternate)
    assert deny == [429] * 4
    assert local.count(200) == BURST  # each proxy its half of the burst: the fleet's total
    statuses = [s for s, _ in answers]
    assert statuses.count(200) == BURST, statuses
    assert statuses.count(429) == len(targets) - BURST
    refused = next(h for s, h in answers if s == 429)
    assert int(refused[b"retry-after"]) >= 1
    assert refused[b"ratelimit-policy"] == b'"service";q=10;w=10000'
    assert refused[b"ratelimit"].startswith(b'"service";r=0;t=')


async def test_a_reload_that_raises_a_limit_while_traffic_runs_fails_no_request(
    tmp_path: Path,
) -> None:
    """Clients keep sending through the ELB while the service map is rewritten with a burst
    of 100,000: every answer is a 200 or a 429 (never a reset, a 5xx or a hang), and once
    both proxies took the new map, everything is a 200."""
    for kind in ("backend", "proxy", "elb", "redis"):
        if isinstance(find_launchers().get(kind), str):
            pytest.skip(f"{kind} is not installed")
    path = write_topology(tmp_path)
    async with open_fleet(path, tmp_path / "run", out=lambda line: None) as fleet:
        elb = next(p for name, p in fleet.ports.items() if name.startswith("elb-"))
        msa = fleet.run_dir / "msa_kr.yaml"
        statuses: list[int] = []
        stop = trio.Event()

        async def client() -> None:
            for _ in range(2000):  # bounded; the test stops it long before
                if stop.is_set():
                    return
                statuses.append((await get(elb))[0])

        def reloaded() -> bool:
            logs = [
                fleet.run_dir / "logs" / f"{n}.log" for n in fleet.ports if n.startswith("proxy-")
            ]
            return all("config_reloaded" in log.read_text() for log in logs)

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(client)
            await wait_until(lambda: statuses.count(429) >= 5, DEADLINE_S)
            text = msa.read_text().replace(f"burst: {BURST},", "burst: 100000,", 1)
            msa.write_text(text)
            await wait_until(reloaded, DEADLINE_S)
            after = len(statuses)
            await wait_until(lambda: len(statuses) >= after + 20, DEADLINE_S)
            stop.set()
    assert set(statuses) <= {200, 429}
    assert statuses[after + 4 :] == [200] * len(statuses[after + 4 :])


async def test_a_fleet_limit_counts_once_across_regions(tmp_path: Path) -> None:
    for kind in ("backend", "proxy", "elb", "redis"):
        if isinstance(find_launchers().get(kind), str):
            pytest.skip(f"{kind} is not installed")
    path = write_topology(tmp_path, two_regions=True)
    async with open_fleet(path, tmp_path / "run", out=lambda line: None) as fleet:
        elbs = sorted(p for name, p in fleet.ports.items() if name.startswith("elb-"))
        assert len(elbs) == 2
        statuses = [(await get(port))[0] for port in elbs * 12]
    assert statuses.count(200) == BURST, statuses
    assert statuses.count(429) == len(statuses) - BURST
