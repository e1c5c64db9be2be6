"""Handing accepted client connections from an ELB to a proxy on the same host.

An ELB that relays bytes pays for every byte twice (read, write) plus a task pair per
connection. When the proxy runs on the same host, the ELB can instead pass the accepted
socket itself over a Unix socket (``SCM_RIGHTS``, unix(7)) and forget it: the proxy serves
the client directly, sees the real client address with ``getpeername``, and the ELB's cost
is one ``accept`` and one ``sendmsg`` per connection. Proxies elsewhere still get the TCP
relay with a PROXY v2 header (`httpio.proxyproto`).

The link is a ``SOCK_SEQPACKET`` socket so that messages keep their boundaries: ELB ->
proxy, one byte and one descriptor per message; proxy -> ELB, one ``c`` per handed-off
connection that has closed, which is how the ELB keeps its least-connections counts. A
proxy that starts draining closes its hand-off socket, and the ELB sees EOF at once and
sends it nothing more.

Whose socket is it? A hand-off replaces a TCP connect to ``127.0.0.1:PORT``, so it must
reach exactly the proxy that a connect would: the one listening on PORT in *this* network
namespace, run by *this* user, of *this* fleet. Sockets named by uid and port under
``/tmp`` did not (two fleets in two network namespaces sharing ``/tmp`` handed clients to
each other, and one's exit unlinked the other's socket). So:

- the socket lives in Linux's abstract namespace, which belongs to the network namespace
  (network_namespaces(7)) as TCP ports do, has no file to go stale or be unlinked by
  someone else, and vanishes with its process. Its name carries the uid, the fleet id and
  the port. ``GATEWAY_RUNTIME_DIR`` puts it in a directory instead, which must be ours,
  mode 0700, not a symlink (created so if missing); the file name then also carries the
  network namespace, a live socket is never taken over, and on exit the file is unlinked
  only if it is still the one we bound (same inode);
- the fleet id is ``GATEWAY_FLEET_ID``, a random id the launcher gives every child;
  processes started by hand share ``standalone``, which is safe because their addresses
  are per network namespace and per port, as TCP's are;
- both ends check the other: ``SO_PEERCRED`` must show our own uid (anyone in the network
  namespace can reach an abstract name; the uid is the trust boundary, as a 0700
  directory's owner is), and the first message each way is a hand-shake naming the fleet,
  the network namespace and the port, which must match. The fleet id is an identity, not
  a secret (abstract names are listed in ``/proc/net/unix``).

A proxy that cannot get its address (taken, unsafe directory) logs an error and serves
without hand-offs; its ELB then relays to it. Nothing is lost but the shortcut.

A ``proxy --workers N`` (`proxy.workers`) is N processes on one TCP port; one address could
be bound by only one of them, so worker K takes the address of its port with ``-wK`` at the
end of the name. The hand-shake is the same (a worker is the proxy of that port); the ELB
finds the workers by trying the names in turn (`elb.main`), keeps a link to each, and
spreads its hand-offs over them, fewest open connections first (`httpio.balance.least_loaded`).
"""

from __future__ import annotations

import array
import errno
import os
import re
import socket
import stat
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import structlog
import trio

from httpio.server import HttpServer

log = structlog.get_logger()

MAX_FDS = 16
CLOSED_MARK = b"c"
REPORT_INTERVAL_S = 0.02
HANDSHAKE_TIMEOUT_S = 2.0
FLEET_ENV = "GATEWAY_FLEET_ID"
RUNTIME_DIR_ENV = "GATEWAY_RUNTIME_DIR"
STANDALONE = "standalone"
PROTOCOL = b"pygateway-handoff/1"
_FLEET_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class HandoffRefused(Exception):
    """The other end of a link is not our fleet's proxy (or ELB); the message says why."""


class UnsafeRuntimeDir(Exception):
    """``GATEWAY_RUNTIME_DIR`` is not a directory that only we can use."""


# -- whose socket: names, directories, identities ---------------------------------------------
def fleet_id() -> str:
    """This process's fleet, from ``GATEWAY_FLEET_ID`` (``standalone`` when unset)."""
    value = os.environ.get(FLEET_ENV) or STANDALONE
    if not _FLEET_ID.fullmatch(value):
        raise ValueError(f"{FLEET_ENV} must be 1-64 of [A-Za-z0-9_.-], not {value!r}")
    return value


def network_namespace() -> int:
    """The inode of our network namespace (0 where ``/proc`` does not say)."""
    try:
        return os.stat("/proc/self/ns/net").st_ino
    except OSError:
        return 0


def private_dir(path: Path) -> Path:
    """``path``, created mode 0700 if missing; `UnsafeRuntimeDir` unless it is a real
    directory (not a symlink) owned by us with no permission for group or others."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise UnsafeRuntimeDir(f"{path}: cannot create: {exc}") from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UnsafeRuntimeDir(f"{path}: not a directory (a symlink or a file)")
    if st.st_uid != os.geteuid():
        raise UnsafeRuntimeDir(f"{path}: owned by uid {st.st_uid}, not by us ({os.geteuid()})")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise UnsafeRuntimeDir(
            f"{path}: mode {stat.S_IMODE(st.st_mode):o} lets others in; it must be 700"
        )
    return path


@dataclass(frozen=True, slots=True)
class Identity:
    """What each end of a link says it is."""

    fleet: str
    netns: int
    port: int

    def encode(self, verb: bytes) -> bytes:
        return b"%s %s fleet=%s netns=%d port=%d" % (
            PROTOCOL,
            verb,
            self.fleet.encode(),
            self.netns,
            self.port,
        )

    @classmethod
    def parse(cls, data: bytes, verb: bytes) -> Identity | None:
        """The identity in a hand-shake message with ``verb``; None if it is not one."""
        words = data.split(b" ")
        if len(words) != 5 or words[0] != PROTOCOL or words[1] != verb:
            return None
        fields = dict(w.partition(b"=")[::2] for w in words[2:])
        try:
            return cls(fields[b"fleet"].decode(), int(fields[b"netns"]), int(fields[b"port"]))
        except (KeyError, ValueError):
            return None


def judge_peer(ours: Identity, theirs: Identity | None, peer_uid: int) -> str:
    """'' when the other end of a link is ours; otherwise why not."""
    if peer_uid != os.geteuid():
        return f"peer runs as uid {peer_uid}, not as us ({os.geteuid()})"
    if theirs is None:
        return "no hand-shake"
    if theirs.fleet != ours.fleet:
        return f"peer is of fleet {theirs.fleet!r}, not {ours.fleet!r}"
    if theirs.netns != ours.netns:
        return f"peer is in network namespace {theirs.netns}, not {ours.netns}"
    if theirs.port != ours.port:
        return f"peer is for port {theirs.port}, not {ours.port}"
    return ""


@dataclass(frozen=True, slots=True)
class HandoffAddress:
    """Where the proxy of TCP ``port`` takes hand-offs: an abstract name, or a file in
    ``directory``."""

    identity: Identity
    directory: Path | None = None
    worker: int | None = None  # worker K of a ``proxy --workers N``; None: a single proxy

    @property
    def name(self) -> str:
        i = self.identity
        suffix = "" if self.worker is None else f"-w{self.worker}"
        return f"{i.fleet}-net{i.netns}-proxy-{i.port}{suffix}"

    def of_worker(self, worker: int | None) -> HandoffAddress:
        """The address of worker ``worker`` of the same proxy (None: the single proxy's)."""
        return HandoffAddress(self.identity, self.directory, worker)

    @property
    def path(self) -> Path | None:
        return None if self.directory is None else self.directory / f"{self.name}.sock"

    @property
    def sockaddr(self) -> str | bytes:
        if self.path is not None:
            return str(self.path)
        return b"\0pygateway-%d-%s" % (os.geteuid(), self.name.encode())

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else f"@pygateway-{os.geteuid()}-{self.name}"


def handoff_address(port: int, worker: int | None = None) -> HandoffAddress | None:
    """The hand-off address of the proxy on ``port`` (of its worker ``worker``) in this
    fleet and network namespace; None where there is none (no abstract namespace and no
    runtime directory). Raises `UnsafeRuntimeDir` and ValueError (a malformed fleet id)."""
    identity = Identity(fleet_id(), network_namespace(), port)
    configured = os.environ.get(RUNTIME_DIR_ENV)
    if configured:
        return HandoffAddress(identity, private_dir(Path(configured)), worker)
    if not sys.platform.startswith("linux"):
        return None
    return HandoffAddress(identity, worker=worker)


def peer_credentials(sock: trio.socket.SocketType) -> tuple[int, int]:
    """(pid, uid) of the process at the other end of a connected Unix socket."""
    pid, uid, _ = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return pid, uid


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


# -- the proxy's end ---------------------------------------------------------------------------
async def _bind(address: HandoffAddress) -> trio.socket.SocketType:
    """A listening socket on ``address``; OSError (EADDRINUSE) if someone else holds it."""
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        path = address.path
        if path is not None and path.exists() and not await _is_stale(path):
            raise OSError(errno.EADDRINUSE, f"{path} is in use by a live process")
        await listener.bind(address.sockaddr)
        listener.listen(64)
    except BaseException:
        listener.close()
        raise
    return listener


async def _is_stale(path: Path) -> bool:
    """A socket file of ours that nobody listens on any more (left by a SIGKILL) is removed
    and True; a live one, or anything that is not our socket, is left alone: False."""
    st = os.lstat(path)
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != os.geteuid():
        return False
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        await probe.connect(str(path))
    except ConnectionRefusedError:
        _unlink_if_same(path, (st.st_dev, st.st_ino))
        return True
    except OSError:
        return False
    finally:
        probe.close()
    return False


def _unlink_if_same(path: Path, inode: tuple[int, int]) -> None:
    """Remove ``path`` only if it is still the file we looked at (or bound)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if (st.st_dev, st.st_ino) == inode:
        os.unlink(path)


async def serve_handoffs(
    server: HttpServer,
    address: HandoffAddress,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept ELB links on ``address`` and serve every connection they hand over, until the
    server starts draining. If the address cannot be had, log it and return at once (the
    proxy then only gets relayed connections)."""
    try:
        listener = await _bind(address)
    except OSError as exc:
        log.error("handoff_unavailable", address=str(address), error=str(exc))
        task_status.started()
        return
    path = address.path
    bound = None
    if path is not None:
        st = os.lstat(path)
        bound = (st.st_dev, st.st_ino)
    log.info("handoff_listening", address=str(address))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_close_on_drain, server, nursery.cancel_scope)
            task_status.started()
            while True:
                link, _ = await listener.accept()
                nursery.start_soon(_serve_link, server, link, address.identity)
    finally:
        listener.close()
        if path is not None and bound is not None:
            _unlink_if_same(path, bound)


async def _close_on_drain(server: HttpServer, scope: trio.CancelScope) -> None:
    await server.drain_started.wait()
    scope.cancel()


async def _accept_hello(link: trio.socket.SocketType, ours: Identity) -> bool:
    """Check the ELB at the other end of a new link; answer ok or why not."""
    pid, uid = peer_credentials(link)
    theirs = None
    with trio.move_on_after(HANDSHAKE_TIMEOUT_S):
        try:
            theirs = Identity.parse(await link.recv(512), b"hello")
        except OSError:
            return False
    reason = judge_peer(ours, theirs, uid)
    try:
        if reason:
            log.warning("handoff_link_refused", peer_pid=pid, peer_uid=uid, reason=reason)
            await link.send(b"%s refused %s" % (PROTOCOL, reason.encode()))
            return False
        await link.send(ours.encode(b"ok"))
    except OSError:
        return False
    return True


async def _serve_link(server: HttpServer, link: trio.socket.SocketType, identity: Identity) -> None:
    closed = 0
    wake = trio.Event()

    def on_close() -> None:
        nonlocal closed
        closed += 1
        wake.set()

    async def report_closes() -> None:
        nonlocal closed, wake
        while True:
            await wake.wait()
            # One report per REPORT_INTERVAL_S at most: a send per closed connection cost
            # the proxy 6 % of its CPU under ab; least-connections needs no finer counts.
            await trio.sleep(REPORT_INTERVAL_S)
            wake = trio.Event()
            count, closed = closed, 0
            try:
                await link.send(CLOSED_MARK * count)
            except OSError:
                return

    with link:
        if not await _accept_hello(link, identity):
            return
        async with trio.open_nursery() as nursery:
            nursery.start_soon(report_closes)
            while True:
                try:
                    msg, ancdata, _, _ = await link.recvmsg(
                        MAX_FDS, socket.CMSG_SPACE(MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC
                    )
                except OSError:
                    break
                fds = _fds_from(ancdata)
                if not msg and not fds:
                    break  # the ELB went away; connections already handed over go on
                for fd in fds:
                    sock = trio.socket.from_stdlib_socket(socket.socket(fileno=fd))
                    server.start_connection(
                        trio.SocketStream(sock), via_elb=True, on_close=on_close
                    )
            nursery.cancel_scope.cancel()


# -- the ELB's end -----------------------------------------------------------------------------
class HandoffLink:
    """The ELB's end of one link to one proxy."""

    def __init__(self, address: HandoffAddress) -> None:
        self.address = address
        self.sock: trio.socket.SocketType | None = None
        self.peer_pid = 0
        self.in_flight = 0  # handed over and not yet reported closed (kept by the ELB)
        # A plain duplicate for sending: sendmsg is tried directly and trio is asked to
        # wait only when the link's buffer is full.
        self._plain: socket.socket | None = None

    def __repr__(self) -> str:
        return (
            f"<HandoffLink {self.address} connected={self.sock is not None}"
            f" in_flight={self.in_flight}>"
        )

    async def connect(self) -> None:
        """Connect and shake hands; OSError if nobody listens, `HandoffRefused` if the
        listener is not our fleet's proxy for this port (or refuses us), TooSlowError if
        it does not answer in time."""
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            await sock.connect(self.address.sockaddr)
            pid, uid = peer_credentials(sock)
            ours = self.address.identity
            if uid != os.geteuid():
                raise HandoffRefused(judge_peer(ours, None, uid))
            await sock.send(ours.encode(b"hello"))
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                answer = await sock.recv(512)
            refused = PROTOCOL + b" refused "
            if answer.startswith(refused):
                text = answer.removeprefix(refused).decode("ascii", "replace")
                raise HandoffRefused(f"the proxy refused us: {text}")
            reason = judge_peer(ours, Identity.parse(answer, b"ok"), uid)
            if reason:
                raise HandoffRefused(reason)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self.peer_pid = pid
        self._plain = socket.socket(
            socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=os.dup(sock.fileno())
        )

    async def send(self, client_fd: int) -> None:
        """Pass the connection ``client_fd`` over; OSError if the proxy's end is gone."""
        assert self.sock is not None and self._plain is not None
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [client_fd]).tobytes())]
        while True:
            try:
                self._plain.sendmsg([b"x"], rights)
                return
            except BlockingIOError:
                await trio.lowlevel.wait_writable(self.sock)

    async def closed_connections(self) -> int:
        """Wait for the proxy's next report; the number of handed-off connections that
        closed, or -1 when the link is gone."""
        assert self.sock is not None
        try:
            data = await self.sock.recv(4096)
        except (OSError, trio.ClosedResourceError):
            # ClosedResourceError: the dispatcher closed this link after a failed send while
            # we were waiting on it; either way the link is gone.
            return -1
        return len(data) if data else -1

    def close(self) -> None:
        if self._plain is not None:
            self._plain.close()
            self._plain = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None
