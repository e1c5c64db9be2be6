"""Two fleets on the same port numbers, each in a network namespace of its own, sharing one
``/tmp`` (as two containers, or two test runs under ``unshare -n``, do): each ELB must hand
its clients to its own proxy only, and one proxy stopping must not take the other's
hand-off socket with it.

Each fleet is a backend, a proxy and an ELB started by hand (console scripts, no launcher,
so no fleet id: the default every hand-started process shares) inside a namespace this test
creates with ``ip netns`` and deletes at the end. A client run inside the namespace asks its
ELB for ``/web/echo``; the backend's name in the answer says whose proxy served it (a proxy
reaches only the backend of its own namespace). The ELB's log says which process its
hand-off link reached (``handoff_link_up``, ``peer_pid``). Runs twice: with the default
(abstract) hand-off addresses, and with both fleets pointed at one shared
``GATEWAY_RUNTIME_DIR``. Needs root; skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.polling import wait_for

BIN = Path(sys.executable).parent
BACKEND, PROXY, ELB = 15080, 16080, 19080  # the same numbers in both namespaces
CLIENT = """
import http.client, json, sys
port, path, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
out = []
for _ in range(n):
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        out.append([r.status, json.loads(body).get("name") if r.status == 200 else None])
        c.close()
    except (OSError, ValueError) as exc:
        out.append([0, repr(exc)])
print(json.dumps(out))
"""


def _why_not() -> str:
    if os.geteuid() != 0:
        return "needs root to create network namespaces"
    if shutil.which("ip") is None:
        return "needs iproute2's `ip`"
    return ""


pytestmark = pytest.mark.skipif(bool(_why_not()), reason=_why_not() or "-")


class Namespace:
    """A network namespace of this test, with loopback up, and the processes in it."""

    def __init__(self, name: str, workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.workdir = workdir
        self.env = env
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if made.returncode != 0:  # root, and still not allowed (a container without CAP_SYS_ADMIN)
            pytest.skip(f"cannot create a network namespace: {made.stderr.strip()}")
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)

    def spawn(self, role: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{role}.log", "ab") as log:
            process = subprocess.Popen(
                ["ip", "netns", "exec", self.name, *argv],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        self.processes[role] = process
        return process

    def get(self, port: int, path: str, n: int = 1) -> list[list[object]]:
        """``n`` requests on fresh connections from inside the namespace: [status, name]."""
        done = subprocess.run(
            [
                "ip",
                "netns",
                "exec",
                self.name,
                sys.executable,
                "-c",
                CLIENT,
                str(port),
                path,
                str(n),
            ],
            capture_output=True,
            check=True,
            timeout=60,
        )
        return list(json.loads(done.stdout))

    def up(self, port: int) -> bool:
        return self.get(port, "/health")[0][0] == 200

    def stop(self, role: str) -> None:
        process = self.processes[role]
        process.send_signal(signal.SIGTERM)
        process.wait(20)

    def links(self) -> list[int]:
        """The peer PIDs of every hand-off link the ELB has opened, in order."""
        peers = []
        for line in (self.workdir / "elb.log").read_text().splitlines():
            if line.startswith("{"):
                event = json.loads(line)
                if event.get("event") == "handoff_link_up":
                    peers.append(int(event["peer_pid"]))
        return peers

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait(10)
        subprocess.run(["ip", "netns", "delete", self.name], check=False)


def write_configs(workdir: Path) -> None:
    (workdir / "msa.yaml").write_text(
        f'service:\n  - name: web\n    public: true\n    instance: ["http://127.0.0.1:{BACKEND}"]\n'
    )
    (workdir / "rs.yaml").write_text(
        "cur_region_code: ko_KR\nregions:\n  - region_code: ko_KR\n"
        f'    available_zone: ["http://127.0.0.1:{ELB}"]\n'
    )
    (workdir / "r.yaml").write_text(
        f'region_code: ko_KR\navailable_zone: ["http://127.0.0.1:{PROXY}"]\n'
    )
    (workdir / "config.json").write_text(
        json.dumps({"Auth_key": "k" * 40, "MSA_healthcheck_interval": 1})
    )


@pytest.fixture(params=["abstract", "shared-runtime-dir"])
def fleets(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Namespace]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    shared = Path(tempfile.mkdtemp(prefix="gw-", dir="/tmp"))
    if request.param == "shared-runtime-dir":
        env["GATEWAY_RUNTIME_DIR"] = str(shared / "run")
    tag = secrets.token_hex(4)
    made: dict[str, Namespace] = {}
    try:
        for side in ("a", "b"):
            workdir = tmp_path / side
            workdir.mkdir()
            write_configs(workdir)
            made[side] = Namespace(f"pgw-{tag}-{side}", workdir, env)
        yield made
    finally:
        for namespace in made.values():
            namespace.close()
        shutil.rmtree(shared, ignore_errors=True)


def start_backend_and_proxy(ns: Namespace, side: str) -> None:
    ns.spawn("backend", [str(BIN / "backend"), str(BACKEND), "--name", f"backend-{side}"])
    wait_for(lambda: ns.up(BACKEND), what=f"backend {side} up")
    w = ns.workdir
    ns.spawn(
        "proxy",
        [
            str(BIN / "proxy"),
            str(PROXY),
            str(w / "msa.yaml"),
            str(w / "rs.yaml"),
            str(w / "config.json"),
        ],
    )
    wait_for(lambda: ns.up(PROXY), what=f"proxy {side} up")


def start_elb(ns: Namespace) -> None:
    ns.spawn("elb", [str(BIN / "elb"), str(ELB), str(ns.workdir / "r.yaml")])
    wait_for(lambda: ns.up(ELB), what=f"{ns.name}: ELB up")


def served_by(ns: Namespace, n: int = 20) -> set[object]:
    """Who answered ``n`` requests through the namespace's ELB (or what went wrong)."""
    return {
        name if status == 200 else f"{status}: {name}"
        for status, name in ns.get(ELB, "/web/echo", n)
    }


def test_each_elb_hands_off_to_its_own_proxy_only(fleets: dict[str, Namespace]) -> None:
    a, b = fleets["a"], fleets["b"]
    # Both proxies first, then both ELBs: any ELB that could reach the other namespace's
    # hand-off socket would find it when it connects its link.
    start_backend_and_proxy(a, "a")
    start_backend_and_proxy(b, "b")
    start_elb(a)
    start_elb(b)
    wait_for(lambda: bool(a.links() and b.links()), timeout_s=15, what="hand-off links")
    assert served_by(a) == {"backend-a"}
    assert served_by(b) == {"backend-b"}
    assert a.links() == [a.processes["proxy"].pid]
    assert b.links() == [b.processes["proxy"].pid]

    # One proxy going away leaves the other fleet's hand-off socket where it was: fleet a
    # is still served, and an ELB started afresh finds its own proxy again.
    b.stop("proxy")
    assert served_by(a) == {"backend-a"}
    a.stop("elb")
    start_elb(a)
    wait_for(lambda: len(a.links()) == 2, timeout_s=15, what="the new ELB's hand-off link")
    assert a.links() == [a.processes["proxy"].pid] * 2
    assert served_by(a) == {"backend-a"}
