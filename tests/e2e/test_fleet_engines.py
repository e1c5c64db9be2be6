"""The fleet on its engines for many hosts, as real processes: Redis behind Sentinel (a SIGKILL
of the primary under load through the proxies fails no request, and hits resume on the
promoted replica), and users in a real PostgreSQL (a signup on one auth server signs in on
the other).

`write_engine_topology` writes the fleet files for a given Sentinel group and ``Auth_store``,
so other end-to-end tests (the multi-host one of issue 16) can start the same fleet.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.harness import ROOT, post_json, request
from tests.support.pgproc import PostgresProcess, PostgresUnavailable, running_postgres
from tests.support.polling import wait_until
from tests.support.ports import free_ports
from tests.support.sentinelproc import SentinelGroup, running_sentinels
from topology.fleet import open_fleet


def write_engine_topology(
    base: Path, *, sentinels: list[str], master_name: str, auth_store: str | None = None
) -> dict[str, Any]:
    """One region (ELB, two proxies, a backend, two auth servers) on free ports, its cache in
    the Redis the sentinels name, its users in ``auth_store`` (the fleet's SQLite file when
    None). No Redis of the fleet's own."""
    elb, p0, p1, backend, a0, a1 = free_ports(6)
    (base / "msa.yaml").write_text(
        f"""name: engines
service:
  - name: image
    instance: ["http://127.0.0.1:{backend}"]
    public: true
    cache: {{enabled: true, default_ttl_s: 60}}
  - name: auth
    instance: ["http://127.0.0.1:{a0}", "http://127.0.0.1:{a1}"]
"""
    )
    config = json.loads((ROOT / "topology" / "config.json").read_text())
    config.update(
        {
            "Cache_or_not": True,
            "Redis_sentinels": sentinels,
            "Redis_master_name": master_name,
            "MSA_healthcheck_interval": 1,
            "Config_check_interval": 1,
            "Argon2id": {"memory_kib": 1024, "time_cost": 1},
            # a breaker that closes soon after the failover, so hits resume in the test's time
            "Cache": {"breaker_open_s": 0.5},
        }
    )
    if auth_store is not None:
        config["Auth_store"] = auth_store
    (base / "config.json").write_text(json.dumps(config))
    (base / "fleet.yaml").write_text(
        f"""regions:
  - code: ko_KR
    elb_port: {elb}
    proxy_ports: [{p0}, {p1}]
    msa: msa.yaml
backends:
  ports: [{backend}]
auth:
  ports: [{a0}, {a1}]
redis:
  enabled: false
config: config.json
"""
    )
    return {
        "elb": f"http://127.0.0.1:{elb}",
        "proxies": [f"http://127.0.0.1:{p0}", f"http://127.0.0.1:{p1}"],
        "auth": [f"http://127.0.0.1:{a0}", f"http://127.0.0.1:{a1}"],
    }


@pytest.fixture
def group() -> Iterator[SentinelGroup]:
    with running_sentinels() as group:
        yield group


@pytest.fixture
def postgres() -> Iterator[PostgresProcess]:
    try:
        with running_postgres() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))


def hits_across(layout: dict[str, Any]) -> bool:
    """A fresh URL stored through one proxy is a HIT on the other: it went through Redis.
    (Both are asked with the ELB's Host, which is part of the cache key.)"""
    path = f"/image/image.png?v={uuid.uuid4().hex}"
    host = {"host": layout["elb"].removeprefix("http://")}
    first = request(layout["proxies"][0], path, headers=host, timeout=10)
    second = request(layout["proxies"][1], path, headers=host, timeout=10)
    return first.headers.get("x-cache") == "MISS" and second.headers.get("x-cache") == "HIT"


async def test_sigkill_of_the_redis_primary_under_load_fails_no_request(
    tmp_path: Path, group: SentinelGroup
) -> None:
    layout = write_engine_topology(
        tmp_path, sentinels=group.sentinel_addresses, master_name=group.master_name
    )
    statuses: list[int] = []
    async with open_fleet(tmp_path / "fleet.yaml", tmp_path / "run", out=lambda line: None):
        await wait_until(lambda: trio.to_thread.run_sync(hits_across, layout), 30, 0.1)
        stop = trio.Event()

        async def load() -> None:
            for i in range(100_000):
                if stop.is_set():
                    return
                path = f"/image/image.png?load={i % 50}"
                reply = await trio.to_thread.run_sync(request, layout["elb"], path)
                statuses.append(reply.status)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(load)
            nursery.start_soon(load)
            await wait_until(lambda: len(statuses) >= 20, 30)
            old = group.primary.port
            group.primary.kill()
            new = await trio.to_thread.run_sync(group.wait_for_failover, old)
            assert new == group.replica.port
            await wait_until(lambda: trio.to_thread.run_sync(hits_across, layout), 30, 0.1)
            stop.set()
    assert len(statuses) > 40 and set(statuses) == {200}, statuses


async def test_users_in_postgres_sign_up_on_one_server_and_in_on_another(
    tmp_path: Path, group: SentinelGroup, postgres: PostgresProcess
) -> None:
    layout = write_engine_topology(
        tmp_path,
        sentinels=group.sentinel_addresses,
        master_name=group.master_name,
        auth_store=postgres.dsn,
    )
    user = {"username": "pg-alice", "password": "correct horse battery"}
    async with open_fleet(tmp_path / "fleet.yaml", tmp_path / "run", out=lambda line: None):
        first, second = layout["auth"]
        signed_up = await trio.to_thread.run_sync(post_json, first, "/signup", user)
        assert signed_up.status == 201, signed_up
        signed_in = await trio.to_thread.run_sync(post_json, second, "/signin", user)
        assert signed_in.status == 200 and signed_in.json()["username"] == "pg-alice"
        again = await trio.to_thread.run_sync(post_json, second, "/signup", user)
        assert again.status == 409
        token = signed_in.json()["token"]
        reply = await trio.to_thread.run_sync(
            lambda: request(
                layout["elb"], "/image/image.png", headers={"authorization": f"Bearer {token}"}
            )
        )
        assert reply.status == 200
    assert not (tmp_path / "run" / "auth.sqlite3").exists()
