"""The WebSockets a proxy holds open, and which of them a reload or a shutdown ends.

A WebSocket outlives the chain that opened it: a reload swaps chains, but a relay keeps its two
connections. So the proxy keeps a registry, and after each reload asks `stale` (pure: the open
sockets and the new config in, the sockets to end out) which ones lost their service, their
instance, or the region's ELB they go through; those, and all of them on SIGTERM, get their
service's ``drain_s`` to finish and then a 1001 to both sides. A reload that does not touch a
service leaves its sockets alone (Caddy closes them all on any config change).

``drain_s`` is held under the server's ``drain_timeout_s`` (less a second for the close
handshake), or the server would cut the connections before the 1001 goes out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from httpio.balance import Endpoint
from httpio.websocket import GOING_AWAY
from httpio.ws_relay import Readiness, Relay, RelayClock
from proxy.state import ProxyConfig

CLOSE_MARGIN_S = 1.0


@dataclass(eq=False, slots=True)
class OpenSocket:
    """One relayed WebSocket: to ``instance`` of ``service``, or through ``region``'s ELB
    ``instance`` (``service`` None)."""

    relay: Relay
    instance: str
    drain_s: float
    service: str | None = None
    region: str | None = None


def stale(sockets: Iterable[OpenSocket], config: ProxyConfig) -> list[OpenSocket]:
    """The sockets whose service, instance or region's ELB ``config`` no longer has."""
    out = []
    for s in sockets:
        if s.service is not None:
            spec = config.services.get(s.service)
            if spec is None or not spec.websocket.enabled:
                out.append(s)
            elif s.instance not in {Endpoint.parse(i.url).url for i in spec.instances()}:
                out.append(s)
        elif s.region is not None:
            urls = config.regions.get(s.region)
            if not urls or s.instance not in {Endpoint.parse(u).url for u in urls}:
                out.append(s)
    return out


def drain_delay(drain_s: float, server_drain_timeout_s: float) -> float:
    return max(0.0, min(drain_s, server_drain_timeout_s - CLOSE_MARGIN_S))


@dataclass(slots=True)
class OpenSockets:
    """The registry; ``statistics()`` for the admin endpoint."""

    sockets: set[OpenSocket] = field(default_factory=set)
    drained: int = 0
    clock: RelayClock = field(default_factory=RelayClock)  # the relays' timers, one task
    readiness: Readiness = field(default_factory=Readiness)  # idle legs' sockets, one task

    def __repr__(self) -> str:
        return f"<OpenSockets open={len(self.sockets)} drained={self.drained}>"

    def __len__(self) -> int:
        return len(self.sockets)

    def statistics(self) -> dict[str, object]:
        return {
            "open": len(self.sockets),
            "drained": self.drained,
            "idle_legs": self.readiness.statistics()["waiting"],
        }

    def add(self, socket: OpenSocket) -> None:
        self.sockets.add(socket)

    def discard(self, socket: OpenSocket) -> None:
        self.sockets.discard(socket)

    def drain(self, sockets: Iterable[OpenSocket], server_drain_timeout_s: float, why: str) -> int:
        count = 0
        for s in list(sockets):
            s.relay.close_after(drain_delay(s.drain_s, server_drain_timeout_s), GOING_AWAY, why)
            count += 1
        self.drained += count
        return count

    def reloaded(self, config: ProxyConfig) -> None:
        """After a reload: drain what lost its service, instance or ELB."""
        self.drain(
            stale(self.sockets, config),
            config.gateway.server.drain_timeout_s,
            "service reconfigured",
        )

    def shutting_down(self, server_drain_timeout_s: float) -> int:
        return self.drain(self.sockets, server_drain_timeout_s, "gateway shutting down")
