"""Simulated hosts for the multi-host tests: network namespaces joined by one bridge.

Each "host" is a network namespace with its own loopback and one veth whose other end is
a port of a bridge in the test's own (root) namespace; the bridge has an address on the
same private subnet, so the test process reaches every host directly, as a client on the
network would, and its address is what the fleet must report as the client's. Cutting a
host off is ``ip link set <its bridge port> down``: frames to it are dropped, nothing
answers, as when a machine's cable is pulled.

Everything is named with a random id of this run (``gwt<id>-<host>`` namespaces,
``gwb<id>`` bridge, ``gw<id><n>h``/``b`` veths: interface names are at most 15 bytes), and
the subnet is a random ``10.x.y.0/24`` that no address of this machine is on, so two runs at
once never share a name or a subnet. `simulated_hosts` removes what it created in its
``finally``: deleting a namespace deletes its veth and the veth's peer; the bridge goes
last. Processes are started with ``ip netns exec`` in their own session and stopped by
PID (SIGTERM, SIGKILL after a grace period).

Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and iproute2: `unavailable` says why not, for
a skip.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

STOP_GRACE_S = 10.0
_IP = shutil.which("ip") or "/usr/sbin/ip"


def unavailable() -> str:
    """Why this machine cannot run simulated hosts ('' if it can)."""
    if os.geteuid() != 0:
        return "simulated hosts need root (network namespaces, a bridge, veth pairs)"
    if not Path(_IP).exists():
        return "simulated hosts need iproute2's `ip` (apt-get install iproute2)"
    return ""


def run_ip(*args: str) -> str:
    result = subprocess.run(
        [_IP, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _free_subnet() -> ipaddress.IPv4Network:
    """A random 10.x.y.0/24 that no address or route of this machine is on."""
    used = run_ip("-o", "-4", "addr") + run_ip("-4", "route")
    taken = [
        ipaddress.ip_network(word, strict=False)
        for word in used.split()
        if "/" in word and word[0].isdigit()
    ]
    for _ in range(64):
        net = ipaddress.IPv4Network(
            f"10.{secrets.randbelow(200) + 50}.{secrets.randbelow(256)}.0/24"
        )
        if not any(net.overlaps(t) for t in taken):
            return net
    raise RuntimeError("no free 10.x.y.0/24 subnet found")


@dataclass
class Process:
    """A process started in a namespace; ``stop`` signals its whole session by PID."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            os.killpg(self.popen.pid, sig)

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        stop_processes([self], grace_s)

    def log_tail(self, size: int = 2000) -> str:
        try:
            return self.log.read_text(errors="replace")[-size:]
        except OSError:
            return ""


@dataclass
class Host:
    """One simulated machine: its namespace, address and the bridge port it hangs on."""

    name: str
    netns: str
    address: str
    bridge_port: str
    processes: list[Process] = field(default_factory=list)

    def argv(self, argv: Sequence[str], user: str | None = None) -> list[str]:
        """``argv`` run inside this host (as ``user``, dropping root, when given)."""
        drop = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups"] if user else []
        return [_IP, "netns", "exec", self.netns, *drop, *argv]

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        *,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        cwd: Path | None = None,
    ) -> Process:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            popen = subprocess.Popen(
                self.argv(argv, user),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def run(self, *argv: str) -> str:
        """A short command inside this host; its output (RuntimeError when it fails)."""
        result = subprocess.run(
            self.argv(argv), capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{self.name}: {' '.join(argv)}: {result.stderr.strip()}")
        return result.stdout

    def link_down(self) -> None:
        """Pull the cable: the bridge stops forwarding to this host."""
        run_ip("link", "set", self.bridge_port, "down")

    def link_up(self) -> None:
        run_ip("link", "set", self.bridge_port, "up")

    def stop_all(self) -> None:
        stop_processes(list(reversed(self.processes)))


def stop_processes(processes: Sequence[Process], grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to every one's session first, then one shared grace period, then SIGKILL to
    the stragglers: stopping four hosts' fleets one after the other cost their drains summed."""
    signalled = []
    for process in processes:
        if process.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGTERM)
            signalled.append(process)
    deadline = time.monotonic() + grace_s
    for process in signalled:
        try:
            process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGKILL)
            process.popen.wait()


@dataclass
class Lab:
    """The simulated network: ``hosts`` by name, the bridge and the test's own address."""

    run_id: str
    bridge: str
    subnet: ipaddress.IPv4Network
    client_address: str  # the bridge's address: where the test's own connections come from
    hosts: dict[str, Host]

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]


@contextmanager
def simulated_hosts(names: Sequence[str]) -> Iterator[Lab]:
    """Hosts ``names`` (addresses .1, .2, ... of a fresh subnet; the test at .254), each
    with its loopback up; every process started through them is stopped, then every
    namespace, veth and the bridge removed, on the way out."""
    run_id = secrets.token_hex(3)
    subnet = _free_subnet()
    addresses = list(subnet.hosts())
    bridge = f"gwb{run_id}"
    client = str(addresses[-1])
    hosts: dict[str, Host] = {}
    made_bridge = False
    try:
        run_ip("link", "add", bridge, "type", "bridge")
        made_bridge = True
        run_ip("addr", "add", f"{client}/{subnet.prefixlen}", "dev", bridge)
        run_ip("link", "set", bridge, "up")
        for i, name in enumerate(names):
            netns = f"gwt{run_id}-{name}"
            inside, outside = f"gw{run_id}{i}h", f"gw{run_id}{i}b"
            run_ip("netns", "add", netns)
            host = Host(name, netns, str(addresses[i]), outside)
            hosts[name] = host
            run_ip("link", "add", inside, "type", "veth", "peer", "name", outside)
            run_ip("link", "set", inside, "netns", netns)
            run_ip("link", "set", outside, "master", bridge)
            run_ip("link", "set", outside, "up")
            host.run(_IP, "addr", "add", f"{host.address}/{subnet.prefixlen}", "dev", inside)
            host.run(_IP, "link", "set", inside, "up")
            host.run(_IP, "link", "set", "lo", "up")
        yield Lab(run_id, bridge, subnet, client, hosts)
    finally:
        try:
            stop_processes(
                [p for h in reversed(list(hosts.values())) for p in reversed(h.processes)]
            )
        finally:
            for host in reversed(list(hosts.values())):
                subprocess.run([_IP, "netns", "del", host.netns], check=False, capture_output=True)
        if made_bridge:
            subprocess.run([_IP, "link", "del", bridge], check=False, capture_output=True)
