"""The ELB when its proxies are busy: a region must not answer "no proxy" while its proxies
are alive. One backend, two proxies and their ELB, started by the launcher on free ports
(no Redis, no auth server: the service is public).

- Both proxies frozen (SIGSTOP: as busy as a process can be) miss every probe. The ELB may
  take one out, never both; connections it hands to the other wait in the hand-off link
  and are answered once the proxies run again.
- A burst of idle connections (nothing sent; the proxies' head timeout is 1 s) times out
  while clients keep being served.

Waits are on conditions (the ELB's log, the connections' own ends) under deadlines.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from tests.support.polling import wait_until
from tests.support.ports import free_ports
from topology.fleet import Fleet, find_launchers, open_fleet

DEADLINE_S = 30.0
IDLE_CONNECTIONS = 300
NO_PROXY = b'"error":"no_healthy_proxy"'


def write_topology(base: Path, head_timeout_s: float = 10.0) -> Path:
    backend, p0, p1, elb = free_ports(4)
    (base / "msa.yaml").write_text(
        f'service:\n  - name: web\n    public: true\n    instance: ["http://127.0.0.1:{backend}"]\n'
    )
    (base / "config.json").write_text(
        json.dumps(
            {
                "Auth_key": "k" * 40,
                "MSA_healthcheck_interval": 1,
                "Server": {"head_timeout_s": head_timeout_s},
            }
        )
    )
    path = base / "fleet.yaml"
    path.write_text(
        f"regions:\n  - {{code: kr, elb_port: {elb}, proxy_ports: [{p0}, {p1}], msa: msa.yaml}}\n"
        f"backends: {{ports: [{backend}]}}\nredis: {{enabled: false}}\nconfig: config.json\n"
    )
    return path


@asynccontextmanager
async def region(tmp_path: Path, head_timeout_s: float = 10.0) -> AsyncIterator[Fleet]:
    for kind in ("backend", "proxy", "elb"):
        if isinstance(find_launchers()[kind], str):
            pytest.skip(f"{kind} is not installed")
    path = write_topology(tmp_path, head_timeout_s)
    async with open_fleet(path, tmp_path / "run", out=lambda line: None) as fleet:
        yield fleet


def elb_events(fleet: Fleet, event: str) -> list[dict[str, object]]:
    log = fleet.run_dir / "logs" / f"{elb_name(fleet)}.log"
    found = []
    for line in log.read_text().splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == event:
                found.append(record)
    return found


def elb_name(fleet: Fleet) -> str:
    return next(name for name in fleet.ports if name.startswith("elb-"))


def proxies(fleet: Fleet) -> list[int]:
    return [pid for name, pid in fleet.pids.items() if name.startswith("proxy-")]


async def get(port: int, sent: list[int] | None = None) -> tuple[int, bytes]:
    """One request on a fresh connection: (status, whole answer); appends to ``sent`` once
    the request is out."""
    with trio.fail_after(DEADLINE_S):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(
                b"GET /web/index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            if sent is not None:
                sent.append(1)
            answer = b""
            try:
                while data := await stream.receive_some(65536):
                    answer += data
            except trio.BrokenResourceError:  # reset: refused with the request unread
                answer += b"<reset>"
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0
    return status, answer


async def test_frozen_proxies_are_never_all_ejected(tmp_path: Path) -> None:
    async with region(tmp_path) as fleet:
        port = fleet.ports[elb_name(fleet)]
        await wait_until(lambda: len(elb_events(fleet, "handoff_link_up")) == 2, DEADLINE_S)
        assert (await get(port))[0] == 200
        frozen = proxies(fleet)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            # Until the ELB has given its verdict on both (fall 3 at 0.5 s: ~1.5 s).
            def judged() -> bool:
                changes = elb_events(fleet, "proxy_state")
                return len({c["proxy"] for c in changes if c["new"] != "up"}) == 2

            await wait_until(judged, DEADLINE_S)
            answers: list[tuple[int, bytes]] = []
            sent: list[int] = []

            async def client() -> None:
                answers.append(await get(port, sent))

            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(client)
                await wait_until(lambda: len(sent) == 20, DEADLINE_S)  # all in, then thaw
                for pid in frozen:
                    os.kill(pid, signal.SIGCONT)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        assert [a for a in answers if NO_PROXY in a[1]] == []
        assert [status for status, _ in answers] == [200] * 20
        last = elb_events(fleet, "proxy_state")[-1]
        assert last["held"] and not last["panic"]


async def test_a_burst_of_idle_connections_times_out_while_clients_are_served(
    tmp_path: Path,
) -> None:
    async with region(tmp_path, head_timeout_s=1.0) as fleet:
        port = fleet.ports[elb_name(fleet)]
        await wait_until(lambda: len(elb_events(fleet, "handoff_link_up")) == 2, DEADLINE_S)
        idle: list[trio.SocketStream] = []
        ended = 0
        answers: list[tuple[int, bytes]] = []

        async def hold(stream: trio.SocketStream) -> None:
            nonlocal ended
            with trio.fail_after(DEADLINE_S):
                while await stream.receive_some(65536):
                    pass
            ended += 1

        async def clients() -> None:
            while ended < IDLE_CONNECTIONS and len(answers) < 2000:
                answers.append(await get(port))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(clients)
            for _ in range(IDLE_CONNECTIONS):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                idle.append(stream)
                nursery.start_soon(hold, stream)
        for stream in idle:
            await stream.aclose()
        assert ended == IDLE_CONNECTIONS  # the burst did time out ...
        assert answers and [a for a in answers if NO_PROXY in a[1]] == []  # ... quietly
        assert {status for status, _ in answers} == {200}
