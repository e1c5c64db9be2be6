"""Sending and receiving on a connected socket, for the per-request hot path.

`trio.SocketStream` wraps every ``send_all``/``receive_some`` in a conflict detector, a
generator-based context manager translating ``OSError``, and two scheduler checkpoints;
the proxy makes four such calls per request. Here the syscall is tried first on the
descriptor (``os.write``/``os.read`` on a non-blocking socket) and trio is asked to wait
only when the kernel says ``EAGAIN``. ``OSError`` goes through as it is: every caller
treats it like ``BrokenResourceError``.

Skipping the checkpoint when the data is already there is safe for fairness here: each
proxied request yields once while its upstream works (`httpio.upstream`), and the server
loop yields every few requests of a connection whose heads are always already there.
Cancellation is noticed at the next wait, which is where timeouts matter.
"""

from __future__ import annotations

import os

import trio

RECEIVE_SIZE = 65536


def try_send(sock: trio.socket.SocketType, data: bytes) -> int:
    """Write what the kernel takes now, without waiting; the number of bytes sent."""
    try:
        return os.write(sock.fileno(), data)
    except BlockingIOError:
        return 0


async def send_all(sock: trio.socket.SocketType, data: bytes, sent: int = 0) -> None:
    """Send ``data[sent:]``, waiting for the socket to drain as needed."""
    fd = sock.fileno()
    if not sent:
        sent = try_send(sock, data)
    if sent == len(data):
        return
    with memoryview(data) as view:
        while sent < len(view):
            await trio.lowlevel.wait_writable(sock)
            try:
                sent += os.write(fd, view[sent:])
            except BlockingIOError:
                continue


def try_receive(sock: trio.socket.SocketType, size: int = RECEIVE_SIZE) -> bytes | None:
    """What the kernel holds now (b"": the peer closed), or None when nothing has arrived
    yet; the caller decides how, and under which deadline, to wait."""
    try:
        return os.read(sock.fileno(), size)
    except BlockingIOError:
        return None


async def receive(sock: trio.socket.SocketType, size: int = RECEIVE_SIZE) -> bytes:
    fd = sock.fileno()
    while True:
        try:
            return os.read(fd, size)
        except BlockingIOError:
            pass
        # Not inside the except: a wait there keeps the BlockingIOError and its traceback
        # alive for as long as the socket is idle (~0.5 KiB per waiting read).
        await trio.lowlevel.wait_readable(sock)
