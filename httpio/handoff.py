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
"""

from __future__ import annotations

import array
import contextlib
import os
import socket
from pathlib import Path

import structlog
import trio

from httpio.server import HttpServer

log = structlog.get_logger()

MAX_FDS = 16
CLOSED_MARK = b"c"
REPORT_INTERVAL_S = 0.02


def runtime_dir() -> Path:
    configured = os.environ.get("GATEWAY_RUNTIME_DIR")
    path = Path(configured) if configured else Path(f"/tmp/pygateway-{os.getuid()}")
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def handoff_path(port: int) -> Path:
    """Where the proxy listening on TCP ``port`` accepts hand-offs (same host only)."""
    return runtime_dir() / f"proxy-{port}.sock"


def _fds_from(ancdata: list[tuple[int, int, bytes]]) -> list[int]:
    fds: list[int] = []
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(data[: len(data) - (len(data) % arr.itemsize)])
            fds.extend(arr)
    return fds


async def serve_handoffs(
    server: HttpServer,
    path: Path,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept ELB links on ``path`` and serve every connection they hand over, until the
    server starts draining."""
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    _remove(path)
    await listener.bind(str(path))
    listener.listen(64)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_close_on_drain, server, nursery.cancel_scope)
            task_status.started()
            while True:
                link, _ = await listener.accept()
                nursery.start_soon(_serve_link, server, link)
    finally:
        listener.close()
        _remove(path)


def _remove(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _close_on_drain(server: HttpServer, scope: trio.CancelScope) -> None:
    await server.drain_started.wait()
    scope.cancel()


async def _serve_link(server: HttpServer, link: trio.socket.SocketType) -> None:
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


class HandoffLink:
    """The ELB's end of one link to one proxy."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock: trio.socket.SocketType | None = None
        # A plain duplicate for sending: sendmsg is tried directly and trio is asked to
        # wait only when the link's buffer is full.
        self._plain: socket.socket | None = None

    def __repr__(self) -> str:
        return f"<HandoffLink {self.path} connected={self.sock is not None}>"

    async def connect(self) -> None:
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            await sock.connect(str(self.path))
        except OSError:
            sock.close()
            raise
        self.sock = sock
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
