"""``elb PORT TOPOLOGY [--listen-fd FD] [--host ADDRESS]``: one region's tier-1 load balancer.

It spreads client *connections* (not requests) over its region's proxies, least
connections first (`httpio.balance.Balancer`). For each proxy it prefers, in order:

1. hand-off: a proxy on this host with a hand-off socket of this fleet gets the accepted
   socket itself (`httpio.handoff`); per connection the ELB does one ``accept`` and one
   ``sendmsg`` and no task, and the proxy sees the real client address. "On this host"
   is read from the topology: a proxy URL on loopback or on the address the ELB listens on
   (``--host``, its host's address in a topology with hosts, `topology.placement`). A
   ``proxy --workers N`` has one hand-off address per worker: the ELB keeps a link to each
   it finds (names ``-w0``, ``-w1`` ... tried in turn, up to ``MAX_WORKERS``) and gives
   each connection to the worker with the fewest open ones (`httpio.balance.least_loaded`);
2. relay: otherwise the ELB connects to the proxy from that address, writes a PROXY v2
   header carrying the client address (`httpio.proxyproto`) and copies bytes both ways.

Which proxies take connections is `elb.ejection`'s decision: a hand-off link that closes or
a refused relay connect takes a proxy out at once; missed ``GET /health`` probes (every
``CHECK_INTERVAL_S``) take it out after ``fall`` in a row, but never more than half of the
region on probe evidence alone, and with nothing usable the ELB tries every proxy rather
than refuse (panic).

``--listen-fd`` takes the listening socket from the launcher instead of opening one. The
launcher keeps that socket open across the ELB's restarts (as HAProxy and Envoy hand
listeners to their successors, and as systemd's socket activation does), so connections
that arrive while no ELB runs wait in the kernel's backlog for the next one instead of
being refused.

On SIGTERM the ELB stops accepting and lets the connections it relays finish, for up to
``DRAIN_TIMEOUT_S``; handed-off connections belong to their proxies and are not affected.
The proxy list is read once at start (no reload).

The topology file is either a fleet topology (the region whose ``elb_port`` is PORT) or the
original's ``r_*.yaml`` proxy list.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from functools import partial
from pathlib import Path
from typing import NoReturn

import structlog
import trio

from elb.ejection import Change, Evidence, ProxyHealth
from elb.metrics import CONNECTIONS, ConnectionLine, watch
from httpio.access_log import AccessLog, now_rfc3339, open_access_log
from httpio.balance import Balancer, Endpoint, InstanceState, least_loaded
from httpio.errors import RouteNotFound, unavailable_response
from httpio.handoff import (
    HandoffAddress,
    HandoffLink,
    HandoffRefused,
    UnsafeRuntimeDir,
    handoff_address,
)
from httpio.health_check import probe_round, run_on_schedule
from httpio.listen import accept_loop, open_listeners, send_refusal, wrap_socket
from httpio.messages import Request, Response
from httpio.metrics import metrics_response
from httpio.proxyproto import build_v2
from httpio.run import configure_logging, run_until_signalled, serve_tcp
from httpio.settings import HealthSettings, UpstreamTimeouts
from httpio.upstream import UpstreamPool
from topology.load import ConfigError, load_elb_targets
from topology.placement import LOOPBACK_NAMES, is_local

log = structlog.get_logger()

CHECK_INTERVAL_S = 0.5
CONNECT_TIMEOUT_S = 1.0
DRAIN_TIMEOUT_S = 10.0
RELAY_CHUNK = 65536
# Worker names tried per proxy: the topology's bound on ``proxy_workers`` (topology.schema,
# proxy.workers). One probe round tries the names it has no link to, up to one past the
# highest linked, so a worker being restarted is found again on the next round and a proxy
# without workers costs one more refused connect per round (microseconds).
MAX_WORKERS = 64
# A proxy that stops answering is out after 3 missed probes (~1.5 s) and back after 2
# passed ones (HAProxy's fall/rise defaults); probe evidence alone takes out at most half of
# the region, and with nothing usable every proxy is tried. Only the fields `elb.ejection`
# reads (rise, fall, max_ejection_percent, panic) and the probe's path and timeout matter.
ELB_HEALTH = HealthSettings(
    interval_s=CHECK_INTERVAL_S,
    timeout_s=CHECK_INTERVAL_S,
    rise=2,
    fall=3,
    max_ejection_percent=50,
    panic=True,
)


def _handoff_address(endpoint: Endpoint, address: str) -> HandoffAddress | None:
    """The hand-off socket of a proxy on our host (`topology.placement.is_local`: the host
    that binds our own address; the same host is the same network namespace), else None."""
    if not is_local(endpoint.host, address):
        return None
    try:
        return handoff_address(endpoint.port)
    except (UnsafeRuntimeDir, ValueError) as exc:
        log.error("handoff_disabled", proxy=endpoint.url, error=str(exc))
        return None


class Target:
    """One proxy: its balancer state and, when it is on this host, its hand-off link."""

    def __init__(self, state: InstanceState, address: str) -> None:
        self.state = state
        self.endpoint = state.endpoint
        self.url = state.endpoint.url
        self.handoff_address = _handoff_address(state.endpoint, address)
        # one link to a single proxy, or one per worker of a ``proxy --workers N``
        self.links: dict[int | None, HandoffLink] = {}
        self.workers_seen = 0  # the highest worker index linked so far, plus one
        self.linking = False  # links are being opened
        self.refusal = ""  # why the last hand-off hand-shake failed, logged once
        self._turn = 0

    def __repr__(self) -> str:
        return f"<Target {self.url} links={len(self.links)}>"

    @property
    def link(self) -> HandoffLink | None:
        """A link to this proxy (any of its workers'), None while it gets relays."""
        return next(iter(self.links.values()), None)

    def pick_link(self) -> HandoffLink | None:
        """The link the next connection goes over: the least loaded worker's (None: relay)."""
        links = self.links
        if len(links) <= 1:
            return self.link
        ordered = list(links.values())
        self._turn += 1
        return ordered[least_loaded([k.in_flight for k in ordered], self._turn)]

    def wants_links(self) -> bool:
        """Whether a probe round should look for links: not when linked to a single proxy."""
        return None not in self.links

    def drop(self, link: HandoffLink) -> bool:
        """Forget ``link`` and what was in flight on it; True if it was the last one."""
        for key, held in list(self.links.items()):
            if held is link:
                del self.links[key]
                self.state.ended(link.in_flight)
        if not self.links:
            self.state.forget_in_flight()
        return not self.links

    def statistics(self) -> list[dict[str, object]]:
        return [
            {"worker": key, "peer_pid": link.peer_pid, "in_flight": link.in_flight}
            for key, link in self.links.items()
        ]


class Elb:
    def __init__(
        self, region: str, urls: list[str], *, name: str, address: str = "127.0.0.1"
    ) -> None:
        self.name = name
        self.region = region
        self.address = address  # what we listen on
        # A relay leaves from our address, the one a remote proxy trusts PROXY headers from
        # (a host with several addresses would otherwise pick one by its routes).
        self._source = None if address in LOOPBACK_NAMES else address
        self.balancer = Balancer("least_conn", [Endpoint.parse(u) for u in urls])
        self.health = ProxyHealth(ELB_HEALTH, [s.endpoint.url for s in self.balancer.states])
        self._by_index = [Target(s, address) for s in self.balancer.states]
        self.targets = {t.url: t for t in self._by_index}
        self._candidates: list[InstanceState] = list(self.balancer.states)
        self.checker = UpstreamPool(UpstreamTimeouts(connect_timeout_s=CHECK_INTERVAL_S))
        self.accepted = 0
        self.handed_off = 0
        self.relayed = 0
        self.refused = 0
        self.relays_open = 0
        self._relays_idle = trio.Event()
        self._accepting = trio.CancelScope()
        self.connection_log: AccessLog | None = None  # one line per connection (elb.metrics)

    def __repr__(self) -> str:
        return (
            f"<Elb {self.name} accepted={self.accepted} handed_off={self.handed_off}"
            f" relayed={self.relayed} {self.health!r}>"
        )

    def statistics(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "handed_off": self.handed_off,
            "relayed": self.relayed,
            "refused": self.refused,
            "relays_open": self.relays_open,
            "proxies": self.balancer.instance_rows(),
            "links": {t.url: t.statistics() for t in self._by_index if t.links},
            "health": self.health.statistics(),
        }

    # -- health and links --------------------------------------------------------------------
    def observe(self, target: Target, evidence: Evidence) -> Change | None:
        change = self.health.observe(target.url, evidence)
        if change is not None:
            self._candidates = [self.targets[url].state for url in self.health.usable]
            log.info(
                "proxy_state",
                proxy=target.url,
                old=change.old.value,
                new=change.new.value,
                cause=change.evidence.value,
                usable=len(self.health.usable),
                held=list(self.health.held),
                panic=self.health.panicking,
            )
        return change

    async def watch_health(self, nursery: trio.Nursery) -> NoReturn:
        """Probe every proxy each ``CHECK_INTERVAL_S``, all at once; links open in ``nursery``."""
        every_proxy = trio.CapacityLimiter(max(1, len(self.targets)))

        def checked(url: str, passed: bool) -> None:
            self._checked(self.targets[url], passed, nursery)

        async def one_round() -> float:
            await probe_round(self.checker, list(self.targets), ELB_HEALTH, checked, every_proxy)
            return CHECK_INTERVAL_S

        await run_on_schedule(one_round)

    def _checked(self, target: Target, passed: bool, nursery: trio.Nursery) -> None:
        address = target.handoff_address
        if passed and address is not None and not target.linking and target.wants_links():
            # in the background: a hand-shake that stalls must not delay the next probes
            target.linking = True
            nursery.start_soon(self._open_links, target, address, nursery)
        self.observe(target, Evidence.PROBE_PASSED if passed else Evidence.PROBE_FAILED)

    async def _open_links(
        self, target: Target, address: HandoffAddress, nursery: trio.Nursery
    ) -> None:
        """Link to the single proxy's address, or else to each worker's that has no link
        yet, up to one past the highest index linked (`MAX_WORKERS`): a worker being
        restarted is linked again on a later round."""
        try:
            if not target.links:
                found = await self._open_link(target, address.of_worker(None), nursery)
                if found is not False:
                    return  # linked to a single proxy, or refused
            worker = 0
            while worker < min(MAX_WORKERS, target.workers_seen + 1):
                if worker not in target.links:
                    found = await self._open_link(target, address.of_worker(worker), nursery)
                    if found is None:
                        return
                worker += 1
        finally:
            target.linking = False

    async def _open_link(
        self, target: Target, address: HandoffAddress, nursery: trio.Nursery
    ) -> bool | None:
        """True: linked; False: nobody listens there; None: refused (logged once)."""
        link = HandoffLink(address)
        try:
            await link.connect()
        except (OSError, trio.TooSlowError):
            return False  # no hand-off socket there (without any: the TCP relay)
        except HandoffRefused as exc:
            if str(exc) != target.refusal:
                log.warning(
                    "handoff_refused", proxy=target.url, address=str(address), error=str(exc)
                )
                target.refusal = str(exc)
            return None
        worker = address.worker
        target.links[worker] = link
        target.refusal = ""
        if worker is not None:
            target.workers_seen = max(target.workers_seen, worker + 1)
        log.info("handoff_link_up", proxy=target.url, address=str(address), peer_pid=link.peer_pid)
        nursery.start_soon(self._follow_link, target, link)
        return True

    async def _follow_link(self, target: Target, link: HandoffLink) -> None:
        """Count the proxy's reports of closed connections; its EOF means it is gone or
        draining, and it gets nothing more until its probes pass again."""
        state = target.state
        while True:
            closed = await link.closed_connections()
            if closed < 0:
                break
            state.ended(closed)
            link.in_flight = max(0, link.in_flight - closed)
        link.close()
        if link in target.links.values():
            log.info("handoff_link_down", proxy=target.url, peer_pid=link.peer_pid)
            if target.drop(link):
                self.observe(target, Evidence.GONE)

    # -- connections -------------------------------------------------------------------------
    async def serve(self, listeners: list[trio.SocketListener], nursery: trio.Nursery) -> None:
        with self._accepting:
            async with trio.open_nursery() as accepting:
                for listener in listeners:
                    accepting.start_soon(self._accept_loop, listener, nursery)

    def stop_accepting(self) -> None:
        self._accepting.cancel()

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        async def accepted(client: socket.socket) -> None:
            self.accepted += 1
            await self._dispatch(client, nursery)

        await accept_loop(listener, accepted, server=self.name)

    async def _dispatch(
        self,
        client: socket.socket,
        nursery: trio.Nursery,
        tried: tuple[Target, ...] = (),
    ) -> None:
        """Give ``client`` to a proxy: hand it off, or relay to it; a proxy that fails is
        marked down and the next one is tried, so the client never sees a dead proxy."""
        while True:
            candidates = self._candidates
            if tried:
                candidates = [s for s in candidates if all(s is not t.state for t in tried)]
            state = self.balancer.pick_state(candidates) if candidates else None
            if state is None:
                self.refused += 1
                CONNECTIONS.labels("-", "refused").inc()
                self._log_connection(client, "-", "refused", time.monotonic(), 0, 0)
                nursery.start_soon(_refuse, wrap_socket(client))
                return
            target = self._by_index[state.index]
            link = target.pick_link()
            if link is None:
                state.begin()
                nursery.start_soon(self._relay, client, target, nursery, tried)
                return
            try:
                await link.send(client.fileno())
            except OSError:
                link.close()
                if target.drop(link):
                    self.observe(target, Evidence.GONE)
                    tried = (*tried, target)
                continue
            state.begin()
            link.in_flight += 1
            self.handed_off += 1
            CONNECTIONS.labels(target.url, "handoff").inc()
            if self.connection_log is not None:
                self._log_connection(client, target.url, "handoff", time.monotonic(), 0, 0)
            client.close()
            return

    async def _relay(
        self,
        plain_client: socket.socket,
        target: Target,
        nursery: trio.Nursery,
        tried: tuple[Target, ...],
    ) -> None:
        state = target.state
        started = time.monotonic()
        self.relays_open += 1
        try:
            try:
                with trio.fail_after(CONNECT_TIMEOUT_S):
                    upstream = await trio.open_tcp_stream(
                        target.endpoint.host, target.endpoint.port, local_address=self._source
                    )
            except (OSError, trio.TooSlowError) as exc:
                state.end(time.monotonic() - started, ok=False)
                # Refused or reset: nothing listens there (hard evidence). Too slow: the
                # proxy may only be busy, which counts as a missed probe.
                slow = isinstance(exc, trio.TooSlowError)
                self.observe(target, Evidence.PROBE_FAILED if slow else Evidence.GONE)
                log.warning("relay_connect_failed", proxy=target.url, error=repr(exc))
                await self._dispatch(plain_client, nursery, (*tried, target))
                return
            client = wrap_socket(plain_client)
            client_sock = client.socket
            self.relayed += 1
            CONNECTIONS.labels(target.url, "relay").inc()
            counts = [0, 0]  # bytes from the client, bytes to it
            try:
                async with upstream:
                    src = client_sock.getpeername()
                    dst = client_sock.getsockname()
                    await upstream.send_all(build_v2((src[0], src[1]), (dst[0], dst[1])))
                    async with trio.open_nursery() as pair:
                        pair.start_soon(_copy, client, upstream, counts, 0)
                        pair.start_soon(_copy, upstream, client, counts, 1)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                state.end(time.monotonic() - started, ok=True)
                if self.connection_log is not None:
                    self._log_connection(plain_client, target.url, "relay", started, *counts)
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(client)
        finally:
            self.relays_open -= 1
            if self.relays_open == 0:
                self._relays_idle.set()
                self._relays_idle = trio.Event()

    def _log_connection(
        self, client: socket.socket, proxy: str, mode: str, started: float, got: int, sent: int
    ) -> None:
        if self.connection_log is None:
            return
        try:
            peer = client.getpeername()
            address = f"{peer[0]}:{peer[1]}"
        except OSError:
            address = "-"
        self.connection_log.write(
            ConnectionLine(
                now_rfc3339(),
                address,
                proxy,
                mode,
                round((time.monotonic() - started) * 1000, 3),
                got,
                sent,
            )
        )

    async def wait_relays_done(self) -> None:
        if self.relays_open:
            await self._relays_idle.wait()

    def close_links(self) -> None:
        for target in self._by_index:
            for link in target.links.values():
                link.close()
            target.links.clear()


async def _copy(
    src: trio.SocketStream, dst: trio.SocketStream, counts: list[int], slot: int
) -> None:
    try:
        while data := await src.receive_some(RELAY_CHUNK):
            counts[slot] += len(data)
            await dst.send_all(data)
        await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await trio.aclose_forcefully(dst)


async def _refuse(stream: trio.SocketStream) -> None:
    answer = unavailable_response("no_healthy_proxy", "no proxy of this region is available")
    try:
        await send_refusal(stream, answer)
    finally:
        await trio.aclose_forcefully(stream)


def inherited_socket(fd: int, port: int) -> socket.socket:
    """The listening TCP socket the launcher passed as ``fd``; ValueError if ``fd`` is not a
    socket listening on ``port``."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"--listen-fd {fd}: not a socket ({exc})") from None
    listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    bound = sock.getsockname()
    if sock.type != socket.SOCK_STREAM or not listening or bound[1] != port:
        sock.detach()
        raise ValueError(f"--listen-fd {fd}: not a TCP socket listening on port {port}")
    sock.set_inheritable(False)
    return sock


async def metrics_handler(request: Request) -> Response:
    if request.path == "/metrics":
        return metrics_response(request)
    raise RouteNotFound(f"no endpoint {request.path!r}")


async def run_elb(
    elb: Elb,
    port: int,
    inherited: socket.socket | None = None,
    metrics_port: int | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT, then stop accepting and let relays finish (up to
    ``DRAIN_TIMEOUT_S``); handed-off connections are their proxies' already."""
    listeners: list[trio.SocketListener] = []

    async def start(nursery: trio.Nursery) -> None:
        if inherited is not None:
            listeners.append(trio.SocketListener(trio.socket.from_stdlib_socket(inherited)))
        else:
            listeners.extend(await open_listeners(port, elb.address))
        nursery.start_soon(elb.watch_health, nursery)
        nursery.start_soon(elb.serve, listeners, nursery)
        watch(elb)
        if metrics_port is not None:
            # on the ELB's own address: the one its host's Prometheus finds it at
            # (`topology.prometheus`), 127.0.0.1 unless the topology places it on a host
            serve = partial(serve_tcp, metrics_handler, metrics_port, host=elb.address)
            await nursery.start(partial(serve, name=elb.name))
        if elb.connection_log is not None:
            await nursery.start(elb.connection_log.run)
        log.info(
            "listening",
            port=port,
            region=elb.region,
            proxies=list(elb.targets),
            inherited=inherited is not None,
            pid=os.getpid(),
        )

    async def drain() -> None:
        log.info("stopping", relays=elb.relays_open)
        elb.stop_accepting()
        for listener in listeners:
            await listener.aclose()
        with trio.move_on_after(DRAIN_TIMEOUT_S):
            await elb.wait_relays_done()
        elb.close_links()

    await run_until_signalled(elb.name, start, drain)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="elb", description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("topology", type=Path, help="fleet topology or r_*.yaml")
    parser.add_argument(
        "--listen-fd",
        type=int,
        metavar="FD",
        help="serve on this inherited listening socket instead of opening one",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="listen here; proxies at this address or on loopback are local (hand-off)",
    )
    parser.add_argument(
        "--metrics-port", type=int, metavar="PORT", help="serve /metrics on PORT of --host"
    )
    parser.add_argument(
        "--access-log", default="off", metavar="PATH|-|off", help="one JSON line per connection"
    )
    args = parser.parse_args(argv)
    try:
        region, urls = load_elb_targets(args.topology, args.port)
    except ConfigError as err:
        print(f"elb: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    inherited = None
    if args.listen_fd is not None:
        try:
            inherited = inherited_socket(args.listen_fd, args.port)
        except ValueError as err:
            print(f"elb: {err}", file=sys.stderr)
            raise SystemExit(2) from None
    name = f"elb-{region}-{args.port}"
    configure_logging(name)
    elb = Elb(region, urls, name=name, address=args.host)
    elb.connection_log = open_access_log(args.access_log)
    trio.run(run_elb, elb, args.port, inherited, args.metrics_port)
