"""A real fleet for the end-to-end tests: Redis, backends, an auth server, two regions of
proxies behind their ELBs, all as real processes on free ports of 127.0.0.1.

One fleet serves the whole session (starting a dozen Python processes takes seconds). It
runs in `topology.fleet.open_fleet` on a trio loop in a background thread, so tests are
plain functions making plain HTTP requests, and can still reach the `Fleet` handle to
kill or await a child (`RunningFleet.call`).
"""

from __future__ import annotations

import http.client
import json
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.support.ports import free_ports
from topology.fleet import Fleet, open_fleet

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def outcome(reply: Reply) -> tuple[int, str]:
    """The status, and the ``error`` of the JSON body every error answer has ("" when the
    answer is no error of ours: a success, a backend's own status)."""
    try:
        doc = reply.json()
    except ValueError:
        return reply.status, ""
    error = doc.get("error", "") if isinstance(doc, dict) else ""
    return reply.status, error if isinstance(error, str) else ""


def request(
    url: str,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 30.0,
) -> Reply:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


@dataclass
class RunningFleet:
    fleet: Fleet
    token: trio.lowlevel.TrioToken
    ports: dict[str, int]
    kr_elb: str
    en_elb: str
    kr_proxies: list[str]
    en_proxies: list[str]
    backends: list[int]
    redis_port: int
    auth_ports: list[int]

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def acall(self, afn: Callable[..., Any], *args: Any) -> Any:
        return trio.from_thread.run(afn, *args, trio_token=self.token)

    def pid(self, name: str) -> int:
        return int(self.call(lambda: self.fleet.pids[name]))


def write_fleet_yaml(
    base: Path,
    *,
    elbs: tuple[int, int],
    proxies: tuple[list[int], list[int]],
    backends: list[int],
    auth: int,
    redis: int,
    elb_metrics: tuple[int, int] | None = None,
    test_faults: bool = False,
) -> None:
    """``base/fleet.yaml`` for the two regions of the e2e fleets: ko_KR and en_US, each with
    its ELB, its proxies and ``msa_<kr|en>.yaml`` beside it; the backends, one auth server
    and a Redis on the given ports."""
    regions = []
    for i, (code, msa) in enumerate((("ko_KR", "msa_kr.yaml"), ("en_US", "msa_en.yaml"))):
        metrics = f"    elb_metrics_port: {elb_metrics[i]}\n" if elb_metrics else ""
        regions.append(
            f"  - code: {code}\n    elb_port: {elbs[i]}\n{metrics}"
            f"    proxy_ports: {proxies[i]}\n    msa: {msa}\n"
        )
    faults = "  test_faults: true\n" if test_faults else ""
    (base / "fleet.yaml").write_text(
        "regions:\n" + "".join(regions) + f"backends:\n  ports: {backends}\n{faults}"
        f"auth:\n  ports: [{auth}]\nredis:\n  port: {redis}\nconfig: config.json\n"
    )


def write_topology(base: Path) -> dict[str, Any]:
    ports = free_ports(16)
    kr_elb, en_elb, p0, p1, p2, redis, auth = ports[:7]
    backends = ports[7:12]
    spare = ports[12:14]
    kr_metrics, en_metrics = ports[14:16]
    b = [f"http://127.0.0.1:{p}" for p in backends]
    (base / "msa_kr.yaml").write_text(
        f"""name: e2e-kr
service:
  - name: video
    instance: ["{b[0]}", "{b[1]}"]
  - name: image
    instance: ["{b[2]}"]
    cache: {{enabled: true, default_ttl_s: 30}}
  - name: staff
    instance: ["{b[3]}"]
    roles: [admin]
  - name: open
    instance: ["{b[3]}"]
    public: true
  - name: auth
    instance: ["http://127.0.0.1:{auth}"]
"""
    )
    (base / "msa_en.yaml").write_text(
        f"""name: e2e-en
service:
  - name: sound
    instance: ["{b[4]}"]
  - name: auth
    instance: ["http://127.0.0.1:{auth}"]
"""
    )
    # The shipped config.json (no key: the launcher generates the fleet's), made quicker.
    config = json.loads((ROOT / "topology" / "config.json").read_text())
    config.update(
        {
            "Cache_or_not": True,
            "Redis_address": f"localhost:{redis}",
            "MSA_healthcheck_interval": 1,
            "Config_check_interval": 1,
            "Load_balancer_policy": "round_robin",
            "Scrypt": {"n": 1024, "r": 8, "p": 1},
            "Argon2id": {"memory_kib": 1024, "time_cost": 1},
        }
    )
    (base / "config.json").write_text(json.dumps(config))
    write_fleet_yaml(
        base,
        elbs=(kr_elb, en_elb),
        proxies=([p0, p1], [p2]),
        backends=backends,
        auth=auth,
        redis=redis,
        elb_metrics=(kr_metrics, en_metrics),
        test_faults=True,
    )
    return {
        "kr_elb": f"http://127.0.0.1:{kr_elb}",
        "en_elb": f"http://127.0.0.1:{en_elb}",
        "kr_proxies": [f"http://127.0.0.1:{p0}", f"http://127.0.0.1:{p1}"],
        "en_proxies": [f"http://127.0.0.1:{p2}"],
        "backends": backends,
        "redis_port": redis,
        "auth_ports": [auth],
        "spare": spare,
        "elb_metrics": [kr_metrics, en_metrics],
    }


@contextmanager
def fleet_in_a_thread(
    base: Path, layout: dict[str, Any], name: str = "fleet"
) -> Iterator[RunningFleet]:
    """``open_fleet`` on ``base/fleet.yaml`` (written by `write_topology`, whose ``layout``
    this is) in a trio loop of a thread of its own, for blocking tests; stopped on the way out."""
    box: dict[str, Any] = {}
    ready = threading.Event()

    async def run() -> None:
        stop = trio.Event()
        box["stop"] = stop
        async with open_fleet(base / "fleet.yaml", base / "run", out=lambda line: None) as fleet:
            box["fleet"] = fleet
            box["token"] = trio.lowlevel.current_trio_token()
            ready.set()
            await stop.wait()

    def runner() -> None:
        try:
            trio.run(run)
        except BaseException as exc:
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=runner, name=name, daemon=True)
    thread.start()
    ready.wait(120)
    if "fleet" not in box:
        raise RuntimeError(f"the fleet did not start: {box.get('error')!r}")
    running = RunningFleet(
        box["fleet"],
        box["token"],
        box["fleet"].ports,
        layout["kr_elb"],
        layout["en_elb"],
        layout["kr_proxies"],
        layout["en_proxies"],
        layout["backends"],
        layout["redis_port"],
        layout["auth_ports"],
    )
    try:
        yield running
    finally:
        if "error" not in box:
            trio.from_thread.run_sync(box["stop"].set, trio_token=box["token"])
        thread.join(60)


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningFleet]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed: run `make install` (scripts/system-deps.sh)")
    base = tmp_path_factory.mktemp("fleet")
    with fleet_in_a_thread(base, write_topology(base)) as running:
        yield running


@pytest.fixture(scope="session")
def token(fleet: RunningFleet) -> str:
    """A signed-in user of the fleet (role ``user``)."""
    return sign_in(fleet, "e2e-user", "correct horse", "user")


def post_json(url: str, path: str, obj: object) -> Reply:
    body = json.dumps(obj).encode()
    return request(
        url, path, method="POST", body=body, headers={"content-type": "application/json"}
    )


def sign_in(fleet: RunningFleet, username: str, password: str, role: str) -> str:
    """Sign up (or find the user already there), then sign in; the token."""
    user = {"username": username, "password": password, "role": role}
    r = post_json(fleet.kr_elb, "/auth/signup", user)
    assert r.status in (201, 409), r
    r = post_json(fleet.kr_elb, "/auth/signin", user)
    assert r.status == 200, r
    return str(r.json()["token"])
