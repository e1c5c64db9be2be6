"""A region spread over four simulated hosts (`tests.support.netns`), one launcher per host.

Host a runs the region's ELB; hosts b and c two proxies, two auth servers and a backend
each (``fleet --host NAME``, each launcher in its own network namespace); host d the
engines: PostgreSQL (the users), a Redis primary and replica and three Sentinels (the
cache). The test process is a client on the bridge. Checks, in one fleet (it takes a
while to start): requests through a reach proxies on both b and c over the relay (PROXY
v2) and the backends see the test's own address; a signup on an auth server of b signs in
on one of c; SIGKILL of the Redis primary under load fails no request and the cache hits
again after the Sentinel failover; c's link cut is routed around by the ELB within 2 s.

Needs root; skipped otherwise, and skipped when PostgreSQL's binaries are missing.
"""

from __future__ import annotations

import http.client
import json
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.support.netns import Host, Lab, simulated_hosts, unavailable
from tests.support.pgproc import PostgresProcess, PostgresUnavailable, postgres_bin_dir
from tests.support.redisproc import redis_server_binary
from tests.support.sentinelproc import SentinelProcess, command

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "-")

ROOT = Path(__file__).resolve().parents[2]
ELB, PROXIES_B, PROXIES_C = 9000, [6000, 6001], [6002, 6003]
AUTH_B, AUTH_C, BACKEND_B, BACKEND_C = [8000, 8001], [8002, 8003], 5000, 5001
PG, PRIMARY, REPLICA, SENTINELS = 5432, 6379, 6380, [26379, 26380, 26381]
MASTER = "gateway"
START_TIMEOUT_S = 90.0
ROUTE_AROUND_S = 2.0


def until(condition: Callable[[], object], what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result = condition()
        except OSError:
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def get(
    address: str, port: int, path: str, timeout_s: float = 5.0
) -> tuple[int, dict[str, str], bytes]:
    """One request on a connection of its own (the ELB balances connections)."""
    conn = http.client.HTTPConnection(address, port, timeout=timeout_s)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def echoed(body: bytes) -> dict[str, str]:
    """The request headers a backend's /echo saw, by lowercase name."""
    return {str(k).lower(): str(v) for k, v in json.loads(body)["headers"]}


def post(address: str, port: int, path: str, doc: object) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(address, port, timeout=10)
    try:
        conn.request("POST", path, json.dumps(doc), {"content-type": "application/json"})
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


# -- host d: the engines --------------------------------------------------------------------
def start_postgres(d: Host, lab: Lab, work: Path) -> PostgresProcess:
    pg = PostgresProcess(work / "pg", PG, d.address, str(lab.subnet))
    pg.init()  # files only: done from here, the server runs in d as the postgres user
    bindir = postgres_bin_dir()
    argv = [
        str(bindir / "postgres"), "-D", str(pg.data), "-p", str(PG),
        "-c", f"listen_addresses={d.address}",
        "-c", f"unix_socket_directories={pg.directory}",
        "-c", "fsync=off",
    ]  # fmt: skip
    d.spawn("postgres", argv, work / "pg" / "postgres.log", user="postgres")
    until(pg._answers, "PostgreSQL on host d", 60)
    pg.create_database("gateway_hosts")
    return pg


def start_redis(d: Host, work: Path) -> None:
    binary = redis_server_binary()
    for port, extra in ((PRIMARY, []), (REPLICA, ["--replicaof", d.address, str(PRIMARY)])):
        directory = work / f"redis-{port}"
        directory.mkdir(parents=True)
        argv = [binary, "--port", str(port), "--bind", d.address, "--protected-mode", "no"]
        argv += ["--repl-diskless-sync-delay", "0"]  # the replica's first sync at once, not in 5 s
        argv += ["--save", "", "--appendonly", "no", "--dir", str(directory), *extra]
        d.spawn(f"redis-{port}", argv, directory / "redis.log")
    until(
        lambda: b"master_link_status:up" in command(d.address, REPLICA, "INFO", "replication"),
        "the replica's sync",
    )
    sentinels = [SentinelProcess(port, work / f"sentinel-{port}", d.address) for port in SENTINELS]
    for sentinel in sentinels:
        conf = sentinel.write_config(
            MASTER, d.address, PRIMARY, replicas=[(d.address, REPLICA)], peers=sentinels
        )
        d.spawn(
            f"sentinel-{sentinel.port}",
            [binary, str(conf), "--sentinel"],
            sentinel.directory / "log",
        )

    def sentinels_ready() -> bool:
        for port in SENTINELS:
            reply = command(d.address, port, "SENTINEL", "master", MASTER)
            flat = [bytes(x).decode() for x in reply]
            info = dict(zip(flat[0::2], flat[1::2], strict=False))
            if int(info.get("num-other-sentinels", 0)) < 2 or int(info.get("num-slaves", 0)) < 1:
                return False
        return True

    until(sentinels_ready, "three sentinels that know each other and the replica", 60)


def primary_port(d: Host) -> int:
    reply = command(d.address, SENTINELS[0], "SENTINEL", "get-master-addr-by-name", MASTER)
    return int(reply[1])


# -- hosts a, b, c: the fleet ---------------------------------------------------------------
def write_topology(lab: Lab, work: Path, dsn: str) -> Path:
    a, b, c, d = (lab[n] for n in "abcd")
    msa = {
        "service": [
            {"name": "echo", "public": True, "instance": [f"http://localhost:{BACKEND_B}",
             f"http://localhost:{BACKEND_C}"]},
            {"name": "img", "public": True, "cache": {"enabled": True, "default_ttl_s": 300},
             "instance": [f"http://localhost:{BACKEND_B}", f"http://localhost:{BACKEND_C}"]},
            {"name": "auth", "instance": [f"http://localhost:{p}" for p in AUTH_B + AUTH_C]},
        ]
    }  # fmt: skip
    config = {
        "Auth_key": secrets.token_hex(32),
        "Cache_or_not": True,
        "Auth_store": dsn,
        "Redis_sentinels": [f"{d.address}:{p}" for p in SENTINELS],
        "Redis_master_name": MASTER,
        "Cache": {"memory_max_bytes": 0},  # every hit from Redis: the failover shows
    }
    topology = {
        "hosts": [
            {"name": "a", "address": a.address, "ports": [ELB]},
            {"name": "b", "address": b.address, "ports": [*PROXIES_B, *AUTH_B, BACKEND_B]},
            {"name": "c", "address": c.address, "ports": [*PROXIES_C, *AUTH_C, BACKEND_C]},
        ],
        "regions": [
            {"code": "kr", "elb_port": ELB, "proxy_ports": PROXIES_B + PROXIES_C, "msa": "msa.json"}
        ],
        "backends": {"ports": [BACKEND_B, BACKEND_C]},
        "auth": {"ports": AUTH_B + AUTH_C},
        "redis": {"enabled": False},
        "config": "config.json",
        "run_dir": str(work / "run"),
    }
    (work / "msa.json").write_text(json.dumps(msa))
    (work / "config.json").write_text(json.dumps(config))
    path = work / "topology.yaml"
    path.write_text(json.dumps(topology))  # JSON is YAML
    return path


def launched(log: Path) -> bool:
    return b"fleet: up" in log.read_bytes()


def start_launchers(lab: Lab, topology: Path, work: Path) -> None:
    """b and c side by side, then a: the ELB's host last, so its proxies are up by then."""
    for group in (("b", "c"), ("a",)):
        logs = []
        for name in group:
            argv = [sys.executable, "-m", "topology.fleet", "--host", name]
            argv += ["--run-dir", str(work / "run" / name), str(topology)]
            logs.append((name, work / f"fleet-{name}.log"))
            lab[name].spawn(f"fleet-{name}", argv, logs[-1][1], cwd=ROOT)
        for name, log in logs:
            until(partial(launched, log), f"host {name}'s fleet", START_TIMEOUT_S)


@pytest.fixture(scope="module")
def region() -> Iterator[tuple[Lab, Path]]:
    try:
        postgres_bin_dir()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run PostgreSQL as its user")
    with tempfile.TemporaryDirectory(prefix="test-hosts-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # the postgres user reaches its cluster inside
        with simulated_hosts(["a", "b", "c", "d"]) as lab:
            pg = start_postgres(lab["d"], lab, work)
            start_redis(lab["d"], work)
            dsn = pg.dsn.rsplit("/", 1)[0] + "/gateway_hosts"
            start_launchers(lab, write_topology(lab, work, dsn), work)
            yield lab, work


def elb_address(lab: Lab) -> str:
    return lab["a"].address


def test_requests_through_a_reach_b_and_c_over_the_relay_with_the_client_address(
    region: tuple[Lab, Path],
) -> None:
    lab, work = region
    seen: set[str] = set()
    addresses: set[str] = set()

    def both() -> bool:
        status, _, body = get(elb_address(lab), ELB, "/echo/echo")
        assert status == 200, body
        headers = echoed(body)
        seen.add(headers["via"])
        addresses.add(headers["x-real-ip"])
        return any("6000" in v or "6001" in v for v in seen) and any(
            "6002" in v or "6003" in v for v in seen
        )

    until(both, "answers through proxies on both b and c", 30)
    assert addresses == {lab.client_address}
    elb_log = (work / "run" / "a" / "logs" / f"elb-kr-{ELB}.log").read_text()
    assert "handoff_link_up" not in elb_log  # every proxy is remote: relayed


def test_a_signup_on_b_signs_in_on_c(region: tuple[Lab, Path]) -> None:
    lab, _ = region
    user = {"username": f"u{secrets.token_hex(4)}", "password": "correct horse battery"}
    status, _ = post(lab["b"].address, AUTH_B[0], "/signup", user)
    assert status in (200, 201)
    status, doc = post(lab["c"].address, AUTH_C[1], "/signin", user)
    assert status == 200 and doc["token"]


def test_killing_the_redis_primary_under_load_fails_no_request(region: tuple[Lab, Path]) -> None:
    lab, _ = region
    d = lab["d"]
    until(lambda: get(elb_address(lab), ELB, "/img/test.jpg")[1].get("x-cache") == "HIT", "a hit")
    statuses: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set() and len(statuses) < 100_000:
            try:
                status, headers, _ = get(elb_address(lab), ELB, "/img/test.jpg")
                statuses.append((status, headers.get("x-cache", "")))
            except OSError as exc:
                statuses.append((0, repr(exc)))

    worker = threading.Thread(target=load)
    worker.start()
    try:
        until(lambda: len(statuses) > 20, "load before the kill")
        old = primary_port(d)
        victim = next(p for p in d.processes if p.name == f"redis-{old}")
        victim.kill()
        until(lambda: primary_port(d) != old, "a Sentinel failover", 30)
        after = len(statuses)
        until(lambda: any(x == "HIT" for _, x in statuses[after:]), "hits after the failover", 30)
    finally:
        stop.set()
        worker.join(30)
    failed = [s for s in statuses if s[0] != 200]
    assert not failed, failed[:5]


def test_a_proxy_hosts_link_cut_is_routed_around_within_2_s(region: tuple[Lab, Path]) -> None:
    lab, work = region
    c = lab["c"]
    elb_log = work / "run" / "a" / "logs" / f"elb-kr-{ELB}.log"
    c.link_down()
    cut = datetime.now().astimezone()
    try:

        def out() -> list[float]:
            times: dict[str, float] = {}
            for line in elb_log.read_text().splitlines():
                event = json.loads(line) if line.startswith("{") else {}
                url = str(event.get("proxy", ""))
                if event.get("event") == "proxy_state" and event.get("new") != "up":
                    when = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
                    if when >= cut and c.address in url:
                        times.setdefault(url, (when - cut).total_seconds())
            return list(times.values()) if len(times) == 2 else []

        delays = until(out, "the ELB to take both proxies of c out", 10)
        assert max(delays) <= ROUTE_AROUND_S, delays
        for _ in range(10):  # and the region still answers, from b
            status, _, body = get(elb_address(lab), ELB, "/echo/echo/after-cut", timeout_s=3)
            assert status == 200
            via = echoed(body)["via"]
            assert all(str(p) not in via for p in PROXIES_C), via
    finally:
        c.link_up()
