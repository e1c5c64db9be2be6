"""Listening sockets and the one accept loop every server runs (the HTTP servers and the ELB).

`accept_loop` takes connections off a listener with the plain ``accept(2)`` of a duplicate of
its descriptor, and waits through trio only when the backlog is empty: per connection that is
the syscall and little else, with no `trio.SocketStream` built before the caller wants one and
no scheduler checkpoint (under ``ab`` this is most of what the ELB does). The wait is on the
listener itself, so closing the listener (a drain) ends the loop at once and new connections
are refused, not left in a backlog nobody reads. An ``accept`` that fails for lack of
descriptors (EMFILE, ENFILE) or memory is logged and retried after ``ACCEPT_RETRY_S``, as
nginx and trio's own ``serve_listeners`` back off, instead of spinning on a full table.

`send_refusal` is how a server answers a connection it will not serve (at the connection cap,
draining, no proxy to give it to, a request refused before any handler ran): one write of the
whole answer, given ``REFUSAL_SEND_TIMEOUT_S`` to leave, since a peer that does not read its
refusal must not hold the task that wrote it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable

import structlog
import trio

log = structlog.get_logger()

BACKLOG = 4096
ACCEPT_RETRY_S = 0.1
REFUSAL_SEND_TIMEOUT_S = 1.0


async def open_listeners(
    port: int, host: str = "127.0.0.1", *, reuse_port: bool = False
) -> list[trio.SocketListener]:
    """Listeners on ``port`` (0: any free one) of ``host``; trio sets ``SO_REUSEADDR`` before
    it binds, so a restarted server can listen while old connections sit in TIME_WAIT.
    ``reuse_port``: also ``SO_REUSEPORT`` (socket(7)), so that the workers of one proxy
    (`proxy.workers`) each listen on the same port and the kernel spreads new connections
    over them; only sockets of the same effective uid may share a port so."""
    if not reuse_port:
        return await trio.open_tcp_listeners(port, host=host, backlog=BACKLOG)
    listeners: list[trio.SocketListener] = []
    for family, kind, proto, _, address in await trio.socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    ):
        sock = trio.socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            await sock.bind(address)
            sock.listen(BACKLOG)
        except BaseException:
            sock.close()
            for listener in listeners:
                listener.socket.close()
            raise
        listeners.append(trio.SocketListener(sock))
    return listeners


def listener_port(listeners: list[trio.SocketListener]) -> int:
    return int(listeners[0].socket.getsockname()[1])


def wrap_socket(client: socket.socket) -> trio.SocketStream:
    """An accepted plain socket as a trio stream (non-blocking, ``TCP_NODELAY`` set)."""
    return trio.SocketStream(trio.socket.from_stdlib_socket(client))


async def accept_loop(
    listener: trio.SocketListener,
    handle: Callable[[socket.socket], Awaitable[None]],
    *,
    server: str,
) -> None:
    """Accept until ``listener`` is closed (or the task cancelled), passing each connection to
    ``handle`` as a plain socket, which it then owns."""
    raw = socket.socket(fileno=os.dup(listener.socket.fileno()))
    try:
        while True:
            try:
                client, _ = raw.accept()
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_readable(listener.socket)
                except trio.ClosedResourceError:
                    return
                continue
            except OSError as exc:
                if listener.socket.fileno() == -1:
                    return
                log.warning("accept_failed", server=server, error=str(exc))
                await trio.sleep(ACCEPT_RETRY_S)
                continue
            await handle(client)
    finally:
        raw.close()


async def send_refusal(stream: trio.SocketStream, answer: bytes) -> None:
    """Write ``answer`` (a whole response) within ``REFUSAL_SEND_TIMEOUT_S``; a peer that is
    gone or does not read is given up on. Closing is the caller's."""
    try:
        with trio.move_on_after(REFUSAL_SEND_TIMEOUT_S):
            await stream.send_all(answer)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
