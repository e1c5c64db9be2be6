"""``elb PORT topology.yaml``: the tier-1 load balancer of one region.

It spreads client *connections* (not requests) over its region's proxies, least
connections first, using the same policy and health code as the proxies
(`httpio.balance.ServicePool`). For each proxy it prefers, in order:

1. hand-off: a proxy on this host with a hand-off socket gets the accepted socket itself
   (`httpio.handoff`); per connection the ELB does one ``accept`` and one ``sendmsg`` and
   no task, and the proxy sees the real client address;
2. relay: otherwise the ELB connects to the proxy, writes a PROXY v2 header carrying the
   client address (`httpio.proxyproto`) and copies bytes both ways.

A dead proxy stops getting connections within a second: a hand-off link that closes marks
it down at once; a refused relay connect marks it down and the client is given to another
proxy; active ``GET /health`` checks every ``CHECK_INTERVAL_S`` take it down or back.

The topology file is either a fleet topology (the region whose ``elb_port`` is PORT) or the
original's ``r_*.yaml`` proxy list.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path

import msgspec
import structlog
import trio

from httpio.balance import Endpoint, ServicePool
from httpio.errors import unavailable_response
from httpio.handoff import HandoffLink, handoff_path
from httpio.health import HealthSettings, Outcome
from httpio.proxyproto import build_v2
from httpio.run import configure_logging
from httpio.upstream import UpstreamPool, UpstreamTimeouts
from proxy.health_checker import probe
from topology.load import ConfigError, load_fleet, load_proxy_list

log = structlog.get_logger()

CHECK_INTERVAL_S = 0.5
CONNECT_TIMEOUT_S = 1.0
RELAY_CHUNK = 65536
# The ELB must react within a second: one failed check or connect takes a proxy out, one
# passed check brings it back; all may be out at once (then the ELB refuses with 503).
ELB_HEALTH = HealthSettings(
    interval_s=CHECK_INTERVAL_S,
    timeout_s=CHECK_INTERVAL_S,
    rise=1,
    fall=1,
    consecutive_failures=1,
    base_ejection_s=CHECK_INTERVAL_S,
    max_ejection_s=5.0,
    max_ejection_percent=100,
    panic=False,
)
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})


class _Topology(msgspec.Struct):
    regions: object = None


def load_targets(path: Path, port: int) -> tuple[str, list[str]]:
    """The region code and proxy URLs this ELB serves."""
    try:
        probe_doc = msgspec.yaml.decode(path.read_bytes(), type=_Topology)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        probe_doc = _Topology()
    if probe_doc.regions is not None:
        fleet = load_fleet(path)
        for region in fleet.regions:
            if region.elb_port == port:
                return region.code, [f"http://{fleet.host}:{p}" for p in region.proxy_ports]
        raise ConfigError(path, "$.regions", f"no region has elb_port {port}")
    proxies = load_proxy_list(path)
    return proxies.region_code, list(proxies.available_zone)


class Target:
    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        local = endpoint.host in _LOOPBACK
        self.handoff_path = handoff_path(endpoint.port) if local else None
        self.link: HandoffLink | None = None

    def __repr__(self) -> str:
        return f"<Target {self.endpoint.url} link={self.link is not None}>"


class Elb:
    def __init__(self, region: str, urls: list[str], *, name: str) -> None:
        self.name = name
        self.region = region
        self.pool = ServicePool(
            f"proxies:{region}",
            [Endpoint.parse(u) for u in urls],
            policy="least_conn",
            health=ELB_HEALTH,
            clock=time.monotonic,
        )
        self.targets = {e.url: Target(e) for e in self.pool.endpoints}
        self.checker = UpstreamPool(UpstreamTimeouts(connect_timeout_s=CHECK_INTERVAL_S))
        self.accepted = 0
        self.handed_off = 0
        self.relayed = 0
        self.refused = 0

    def __repr__(self) -> str:
        return f"<Elb {self.name} accepted={self.accepted} handed_off={self.handed_off} relayed={self.relayed}>"

    def statistics(self) -> dict[str, object]:
        return {
            "accepted": self.accepted,
            "handed_off": self.handed_off,
            "relayed": self.relayed,
            "refused": self.refused,
            "proxies": self.pool.statistics(),
        }

    # -- health and links --------------------------------------------------------------------
    async def watch_health(self, nursery: trio.Nursery) -> None:
        while True:
            deadline = trio.current_time() + CHECK_INTERVAL_S
            async with trio.open_nursery() as checks:
                for target in self.targets.values():
                    checks.start_soon(self._check, target, nursery)
            await trio.sleep_until(deadline)

    async def _check(self, target: Target, nursery: trio.Nursery) -> None:
        passed = await probe(self.checker, target.endpoint, ELB_HEALTH)
        if passed and target.link is None and target.handoff_path is not None:
            link = HandoffLink(target.handoff_path)
            try:
                await link.connect()
            except OSError:
                pass  # no hand-off socket: that proxy gets the TCP relay
            else:
                target.link = link
                nursery.start_soon(self._follow_link, target, link)
        self._record(target, passed)

    def _record(self, target: Target, passed: bool) -> None:
        change = self.pool.record_check(target.endpoint, passed)
        if change is not None:
            log.info(
                "proxy_state", proxy=target.endpoint.url, old=change.old.value, new=change.new.value
            )

    async def _follow_link(self, target: Target, link: HandoffLink) -> None:
        """Count the proxy's reports of closed connections; its EOF means it is gone or
        draining, and it gets nothing more until a health check passes again."""
        state = self.pool.balancer.states[self.pool.endpoints.index(target.endpoint)]
        while True:
            closed = await link.closed_connections()
            if closed < 0:
                break
            state.in_flight = max(0, state.in_flight - closed)
        link.close()
        if target.link is link:
            target.link = None
        state.in_flight = 0
        self._record(target, False)

    # -- connections -------------------------------------------------------------------------
    async def serve(self, listeners: list[trio.SocketListener], nursery: trio.Nursery) -> None:
        async with trio.open_nursery() as accepting:
            for listener in listeners:
                accepting.start_soon(self._accept_loop, listener, nursery)

    async def _accept_loop(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        # Accepting on a plain socket (a duplicate of the listener's descriptor) and waiting
        # through trio only when the backlog is empty: per connection the ELB then makes
        # its accept, sendmsg and close syscalls and little else, with no SocketStream and
        # no scheduler checkpoint. Under ab this is most of what the ELB does.
        raw = socket.socket(fileno=os.dup(listener.socket.fileno()))
        try:
            while True:
                try:
                    client, _ = raw.accept()
                except BlockingIOError:
                    try:
                        await trio.lowlevel.wait_readable(raw)
                    except trio.ClosedResourceError:
                        return
                    continue
                except OSError as exc:
                    if raw.fileno() == -1 or listener.socket.fileno() == -1:
                        return
                    log.warning("accept_failed", error=str(exc))
                    await trio.sleep(0.05)
                    continue
                self.accepted += 1
                await self._dispatch(client, nursery)
        finally:
            raw.close()

    async def _dispatch(
        self,
        client: socket.socket,
        nursery: trio.Nursery,
        tried: list[Endpoint] | None = None,
    ) -> None:
        """Give ``client`` to a proxy: hand it off, or relay to it; a proxy that fails is
        marked down and the next one is tried, so the client never sees a dead proxy."""
        tried = tried or []
        while True:
            try:
                endpoint = self.pool.pick(exclude=tried)
            except Exception:
                endpoint = None
            if endpoint is None or endpoint in tried:
                self.refused += 1
                nursery.start_soon(_refuse, _stream(client))
                return
            target = self.targets[endpoint.url]
            link = target.link
            if link is None:
                self.pool.begin(endpoint)
                nursery.start_soon(self._relay, client, target, nursery, tried)
                return
            try:
                await link.send(client.fileno())
            except OSError:
                link.close()
                target.link = None
                self._record(target, False)
                tried.append(endpoint)
                continue
            self.pool.begin(endpoint)
            self.handed_off += 1
            client.close()
            return

    async def _relay(
        self,
        plain_client: socket.socket,
        target: Target,
        nursery: trio.Nursery,
        tried: list[Endpoint],
    ) -> None:
        endpoint = target.endpoint
        started = time.monotonic()
        try:
            with trio.fail_after(CONNECT_TIMEOUT_S):
                upstream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
        except (OSError, trio.TooSlowError) as exc:
            self.pool.end(endpoint, Outcome.CONNECT_FAILURE, time.monotonic() - started)
            self._record(target, False)
            log.warning("relay_connect_failed", proxy=endpoint.url, error=str(exc))
            await self._dispatch(plain_client, nursery, [*tried, endpoint])
            return
        client = _stream(plain_client)
        client_sock = client.socket
        self.relayed += 1
        try:
            async with upstream:
                src = client_sock.getpeername()
                dst = client_sock.getsockname()
                await upstream.send_all(build_v2((src[0], src[1]), (dst[0], dst[1])))
                async with trio.open_nursery() as pair:
                    pair.start_soon(_copy, client, upstream)
                    pair.start_soon(_copy, upstream, client)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        finally:
            self.pool.end(endpoint, Outcome.SUCCESS, time.monotonic() - started)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(client)


def _stream(client: socket.socket) -> trio.SocketStream:
    client.setblocking(False)
    return trio.SocketStream(trio.socket.from_stdlib_socket(client))


async def _copy(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    try:
        while data := await src.receive_some(RELAY_CHUNK):
            await dst.send_all(data)
        await dst.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await trio.aclose_forcefully(dst)


async def _refuse(stream: trio.SocketStream) -> None:
    answer = unavailable_response("no_healthy_proxy", "no proxy of this region is available")
    try:
        with trio.move_on_after(1.0):
            await stream.send_all(answer)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def run_elb(elb: Elb, port: int) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            listeners = await trio.open_tcp_listeners(port, host="127.0.0.1", backlog=4096)
            nursery.start_soon(elb.watch_health, nursery)
            nursery.start_soon(elb.serve, listeners, nursery)
            log.info(
                "listening",
                port=port,
                region=elb.region,
                proxies=list(elb.targets),
                pid=os.getpid(),
            )
            async for signum in signals:
                log.info("stopping", signal=signal.Signals(signum).name)
                for listener in listeners:
                    await listener.aclose()
                nursery.cancel_scope.cancel()
                break


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="elb", description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("topology", type=Path, help="fleet topology or r_*.yaml")
    args = parser.parse_args(argv)
    try:
        region, urls = load_targets(args.topology, args.port)
    except ConfigError as err:
        print(f"elb: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    name = f"elb-{region}-{args.port}"
    configure_logging(name)
    trio.run(run_elb, Elb(region, urls, name=name), args.port)
