"""Free TCP ports of 127.0.0.1 for servers a test starts, found by binding port 0.

A port found this way is free when the call returns, not when the server binds it: tests
that start processes on several at once ask for them together (`free_ports`), so that no two
come back equal, and a server that loses the race fails its start loudly rather than
sharing. For "nothing listens there" a test holds the socket bound (`held_port`): a bound,
non-listening port refuses connections for as long as it is held.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]


@contextmanager
def held_port() -> Iterator[int]:
    """A port bound for the block and never listened on: connects to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])
