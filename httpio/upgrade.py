"""The upstream side of a protocol upgrade: open a connection, send the handshake, read the answer.

An upgraded connection is never pooled (after a 101 it speaks another protocol until it
closes), so each handshake opens its own TCP connection rather than take one from
`httpio.upstream.UpstreamPool`. h11 does the HTTP part: a request carrying ``Upgrade`` proposes
the switch, a 101 accepts it, and ``trailing_data`` holds what the upstream sent after its head
(the first frames may come in the same segment). Any other answer is an ordinary response: read
whole (up to ``max_body_bytes``; an error page, a 401) and the connection closed.

Timeouts have the names they have in `httpio.upstream`: ``connect_timeout_s`` around the TCP
connect, ``response_head_timeout_s`` from the handshake sent to the answer's head (its body, if
any, within the same deadline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import trio

from httpio import sockio
from httpio.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnreachable
from httpio.origin import Origin
from httpio.protocol import Headers, h11


@dataclass(slots=True)
class UpgradeAnswer:
    """The upstream's answer to a handshake. ``stream`` (with ``trailing``, bytes already read
    past the head) is the switched connection when ``status`` is 101, None otherwise; the
    caller then owns it and must close it."""

    status: int
    headers: Headers
    body: bytes = b""
    stream: trio.SocketStream | None = None
    trailing: bytes = b""


async def open_upgrade(
    origin: Origin,
    target: str,
    headers: Headers,
    *,
    connect_timeout_s: float,
    response_head_timeout_s: float,
    max_body_bytes: int = 65536,
) -> UpgradeAnswer:
    """Send the handshake ``GET target`` with ``headers`` (which carry ``Connection: upgrade``
    and ``Upgrade``; ``Host`` is added when missing). Raises `UpstreamUnreachable`,
    `UpstreamTimeout` or `UpstreamProtocolError` as a proxied request would."""
    if not any(n == b"host" for n, _ in headers):
        headers = [(b"host", origin.host_header), *headers]
    try:
        with trio.fail_after(connect_timeout_s):
            stream = await trio.open_tcp_stream(origin.host, origin.port)
    except trio.TooSlowError:
        raise UpstreamTimeout(
            f"{origin.url}: connect timed out after {connect_timeout_s}s"
        ) from None
    except OSError as exc:
        raise UpstreamUnreachable(f"{origin.url}: connect failed: {exc.strerror or exc}") from None
    try:
        with trio.fail_after(response_head_timeout_s):
            answer = await _handshake(stream, origin, target, headers, max_body_bytes)
    except trio.TooSlowError:
        await _close(stream)
        raise UpstreamTimeout(
            f"{origin.url}: no answer to the upgrade in time", bytes_sent=True
        ) from None
    except h11.RemoteProtocolError as exc:
        await _close(stream)
        raise UpstreamProtocolError(f"{origin.url}: {exc}", bytes_sent=True) from None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        await _close(stream)
        raise UpstreamUnreachable(
            f"{origin.url}: reset during the upgrade", bytes_sent=True
        ) from exc
    except BaseException:
        await _close(stream)
        raise
    if answer.stream is None:
        await _close(stream)
    return answer


async def _handshake(
    stream: trio.SocketStream, origin: Origin, target: str, headers: Headers, max_body_bytes: int
) -> UpgradeAnswer:
    conn = h11.Connection(h11.CLIENT)
    out = conn.send(h11.Request(method="GET", target=target, headers=headers))
    await stream.send_all(out + conn.send(h11.EndOfMessage()))
    answer: UpgradeAnswer | None = None
    body: list[bytes] = []
    size = 0
    while True:
        event: Any = conn.next_event()
        if event is h11.NEED_DATA:
            data = await sockio.receive(stream.socket)
            if not data and answer is None:
                raise UpstreamUnreachable(f"{origin.url}: closed before answering the upgrade")
            conn.receive_data(data)
            continue
        kind = type(event)
        if kind is h11.InformationalResponse:
            if event.status_code == 101:
                trailing, _ = conn.trailing_data
                return UpgradeAnswer(101, list(event.headers), stream=stream, trailing=trailing)
            continue  # 100 Continue and the like: not the answer
        if kind is h11.Response:
            answer = UpgradeAnswer(event.status_code, list(event.headers))
        elif kind is h11.Data:
            size += len(event.data)
            if size > max_body_bytes:
                raise UpstreamProtocolError(
                    f"{origin.url}: refusal body exceeds {max_body_bytes} bytes", bytes_sent=True
                )
            body.append(bytes(event.data))
        elif kind is h11.EndOfMessage and answer is not None:
            answer.body = b"".join(body)
            return answer
        else:
            raise UpstreamProtocolError(
                f"{origin.url}: unexpected {kind.__name__}", bytes_sent=True
            )


async def _close(stream: trio.SocketStream) -> None:
    with trio.CancelScope(shield=True):
        await trio.aclose_forcefully(stream)
