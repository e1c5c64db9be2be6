"""Which machine runs each process of a fleet topology, and the address it binds.

A topology without ``hosts`` is one machine: every process binds ``127.0.0.1``, as before
hosts existed. With ``hosts``, each host lists the ports of the processes it runs (ports
stay unique across the topology, so a process is still named by its port, in logs, in the
launcher's table and in the original's file formats) and every process is on exactly one
host. An ELB, a proxy, an auth server, a backend or Redis then binds its host's address,
and every address written into the files the processes read (the region structure's ELBs,
the ELB's proxy list, the service maps' instances, ``Redis_address``) is the address of the
host that runs the peer, so that a process on one machine reaches its peers on the others.

Two processes are local to each other (an ELB may hand a client's socket to a proxy,
`httpio.handoff`) exactly when they are on the same host: same host, same network
namespace. `is_local` says so from the addresses, since that is what the ELB reads.

Sans-IO: `check_placement` returns the problems (field path, message), `topology.load`
raises the first as a `ConfigError`.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from topology.schema import FleetHost, FleetTopology

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


@dataclass(frozen=True, slots=True)
class Placement:
    """Port -> host of one topology (a topology without hosts: every port on ``""``)."""

    hosts: tuple[FleetHost, ...]
    by_port: Mapping[int, FleetHost]
    default_address: str

    def host_of(self, port: int) -> str:
        """The name of the host running the process on ``port`` ("" without hosts)."""
        host = self.by_port.get(port)
        return host.name if host is not None else ""

    def address_of(self, port: int) -> str:
        host = self.by_port.get(port)
        return host.address if host is not None else self.default_address

    def address_of_host(self, name: str) -> str:
        for host in self.hosts:
            if host.name == name:
                return host.address
        raise KeyError(name)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]


def place(topology: FleetTopology) -> Placement:
    by_port = {port: host for host in topology.hosts for port in host.ports}
    return Placement(tuple(topology.hosts), by_port, topology.host)


def is_local(peer_host: str, own_address: str | None) -> bool:
    """Whether a peer named by ``peer_host`` in a URL runs on our host: a loopback name, or
    the address we bind ourselves (each host has its own address in a topology)."""
    return peer_host in LOOPBACK_NAMES or (own_address is not None and peer_host == own_address)


def _address_problem(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return f"{address!r} is not an IP address (a host name would be resolved anew by each peer)"
    if ip.is_unspecified or ip.is_multicast:
        return f"{address} cannot be a host's own address"
    return ""


def check_placement(
    topology: FleetTopology, ports: Mapping[int, tuple[str, str]]
) -> list[tuple[str, str]]:
    """Problems (field path, message) with the hosts of ``topology``; ``ports`` are all the
    topology's ports, each with what runs there and the field that names it."""
    problems: list[tuple[str, str]] = []
    names: set[str] = set()
    addresses: set[str] = set()
    on_host: dict[int, str] = {}
    for i, host in enumerate(topology.hosts):
        where = f"$.hosts[{i}]"
        if host.name in names:
            problems.append((f"{where}.name", f"host {host.name!r} is listed twice"))
        names.add(host.name)
        problem = _address_problem(host.address)
        if problem:
            problems.append((f"{where}.address", problem))
        elif host.address in addresses:
            problems.append((f"{where}.address", f"{host.address} is another host's address"))
        addresses.add(host.address)
        for j, port in enumerate(host.ports):
            if port not in ports:
                problems.append(
                    (f"{where}.ports[{j}]", f"port {port} is no process of the topology")
                )
            elif port in on_host:
                problems.append(
                    (f"{where}.ports[{j}]", f"port {port} is on host {on_host[port]!r} already")
                )
            else:
                on_host[port] = host.name
    if topology.hosts:
        for port, (what, where) in ports.items():
            if port not in on_host:
                problems.append((where, f"{what} (port {port}) is on no host of $.hosts"))
    return problems
