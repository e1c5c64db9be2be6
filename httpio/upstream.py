"""Keep-alive HTTP/1.1 client connections to upstreams, pooled per origin.

Layering after httpcore: `UpstreamPool` hands out `_Connection`s, each a
`httpio.h1client.ResponseReader` (the client half of HTTP/1.1, sans-IO) over a trio stream. Decisions (which connection, whether it may go back to the pool)
are taken synchronously; the I/O happens after, and closing is shielded from cancellation.

Rules that keep a pool honest:
- A connection goes back to the pool only when its answer was read to the end and left it
  fit for another request (``ResponseReader.reusable``). A cancelled, failed or half-read exchange closes the connection instead.
- A pooled connection may have been closed by the upstream while idle. Before reuse we poll
  its socket for readability (an idle HTTP/1.1 connection has nothing to say, so readable
  means EOF or garbage) and drop it. If it still dies before the first response byte, an
  idempotent request with a replayable body is sent once more (RFC 9110 9.2.2); nothing
  else is ever retried here. That request's first try skips the poll on a connection that
  rested less than ``RECENT_REST_S``: no upstream's keep-alive timer is that short (nginx
  75 s, Node and uvicorn 5 s, gunicorn 2 s), a dead one costs it only the resend, and the
  poll(2) was 4.5 % of a proxied request's CPU (bench/RESULTS.md, session 6). Every other
  request, and every second try, polls.
- Each timeout has one name and one place: ``connect_timeout_s`` around the TCP connect,
  ``response_head_timeout_s`` from the end of the request to the response head,
  ``body_timeout_s`` between body chunks, ``idle_timeout_s`` for a connection resting in the
  pool (kept below the backends' own keep-alive timeout so that we, not they, close first).
"""

from __future__ import annotations

import select
from collections.abc import Iterable
from typing import Protocol

import trio

from httpio import h1client, sockio
from httpio.errors import (
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
)
from httpio.h1client import END, NEED_DATA, MalformedResponse, ResponseHead
from httpio.limits import ConcurrencyLimit
from httpio.origin import Origin
from httpio.protocol import Headers
from httpio.settings import UpstreamTimeouts

RECEIVE_SIZE = 65536
RECENT_REST_S = 0.05  # see the module header: a first try of a replayable request trusts it
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class BodySource(Protocol):
    """A request body streamed upstream. It may also have ``length`` (int or None): the
    number of bytes it will yield, sent as Content-Length."""

    async def read(self) -> bytes: ...


class _Connection:
    __slots__ = ("_poll", "origin", "reader", "request_sent", "rested_at", "reused", "stream")

    def __init__(self, stream: trio.SocketStream, origin: Origin) -> None:
        self.stream = stream
        self.reader = h1client.ResponseReader()
        self.origin = origin
        self.rested_at = 0.0
        self.reused = False
        self.request_sent = False  # some byte of the current request went out
        # Registered once: each check is then one poll(2) call (select.select built three
        # lists per call and was 4 % of a proxy's CPU under load).
        self._poll = select.poll()
        self._poll.register(stream.socket.fileno(), select.POLLIN)

    def looks_alive(self) -> bool:
        """An idle HTTP/1.1 connection has nothing to say: readable means EOF or junk."""
        try:
            return not self._poll.poll(0)
        except OSError:
            return False


class UpstreamResponse:
    """Status and headers of an upstream's answer; the body is read with ``read()`` (a chunk,
    ``b""`` at the end). ``aclose()`` must be called; it returns the connection to the pool
    only if the body was read to the end."""

    __slots__ = (
        "_ahead",
        "_c",
        "_done",
        "_pool",
        "finished",
        "headers",
        "http_version",
        "reason",
        "status",
    )

    def __init__(self, pool: UpstreamPool, c: _Connection, event: ResponseHead) -> None:
        self._pool = pool
        self._c: _Connection | None = c
        self._done = False
        self._ahead: bytes | None = None
        # True once the end of the body is known to be buffered: the next read() returns
        # b"" without I/O, so a server can send the last chunk and the end in one write.
        self.finished = False
        self.status: int = event.status
        self.headers: Headers = event.headers
        self.reason: bytes = event.reason
        self.http_version: bytes = event.http_version

    def __repr__(self) -> str:
        return f"<UpstreamResponse {self.status} done={self._done}>"

    async def read(self) -> bytes:
        c = self._c
        if self._done or c is None:
            return b""
        reader = c.reader
        while True:
            try:
                event, self._ahead = self._ahead or reader.next_body(), None
            except MalformedResponse as malformed:
                await self._discard()
                raise UpstreamProtocolError(
                    f"{c.origin.url}: {malformed}", bytes_sent=True
                ) from malformed
            if event is NEED_DATA:
                try:
                    with trio.fail_after(self._pool.timeouts.body_timeout_s):
                        data = await sockio.receive(c.stream.socket)
                except trio.TooSlowError:
                    await self._discard()
                    raise UpstreamTimeout(
                        f"{c.origin.url}: response body stalled", bytes_sent=True
                    ) from None
                except (trio.BrokenResourceError, OSError) as exc:
                    await self._discard()
                    raise UpstreamUnreachable(
                        f"{c.origin.url}: reset during response body", bytes_sent=True
                    ) from exc
                reader.receive_data(data)
                continue
            if event is END:
                self._done = True
                self.finished = True
                self._c = None
                self._pool.check_in(c)
                return b""
            assert isinstance(event, bytes)
            # Look one event ahead without I/O: a body that is complete in the buffer
            # ends now, so its connection goes back to the pool before the client is
            # even written to.
            try:
                ahead = reader.next_body()
            except MalformedResponse:
                ahead = None  # reported by the next read
            if ahead is END:
                self.finished = self._done = True
                self._c = None
                self._pool.check_in(c)
            elif isinstance(ahead, bytes):
                self._ahead = ahead  # another chunk already buffered: next read's
            return event

    async def read_all(self, limit: int = 1 << 30) -> bytes:
        parts = []
        size = 0
        try:
            while chunk := await self.read():
                size += len(chunk)
                if size > limit:
                    raise UpstreamProtocolError(f"response body exceeds {limit} bytes")
                parts.append(chunk)
        finally:
            await self.aclose()
        return b"".join(parts)

    async def aclose(self) -> None:
        if self._c is not None:
            await self._discard()

    async def _discard(self) -> None:
        c, self._c = self._c, None
        self._done = True
        if c is not None:
            await self._pool.discard(c)


class UpstreamPool:
    def __init__(self, timeouts: UpstreamTimeouts | None = None) -> None:
        self.timeouts = timeouts or UpstreamTimeouts()
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._origins: dict[str, Origin] = {}
        self._addresses: dict[str, str] = {}
        self.opened = 0
        self.reused = 0
        self.retried = 0
        self.closed = 0
        self.in_use = 0

    def __repr__(self) -> str:
        idle = sum(len(v) for v in self._idle.values())
        return f"<UpstreamPool in_use={self.in_use} idle={idle} opened={self.opened}>"

    def statistics(self) -> dict[str, object]:
        return {
            "in_use": self.in_use,
            "idle": {f"{h}:{p}": len(v) for (h, p), v in self._idle.items()},
            "opened": self.opened,
            "reused": self.reused,
            "retried": self.retried,
            "closed": self.closed,
        }

    def origin(self, url: str) -> Origin:
        found = self._origins.get(url)
        if found is None:
            found = self._origins[url] = Origin(url)
        return found

    async def request(
        self,
        origin: str | Origin,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | BodySource = b"",
        *,
        connect_timeout_s: float | None = None,
        response_head_timeout_s: float | None = None,
        connect_slots: ConcurrencyLimit | None = None,
    ) -> UpstreamResponse:
        """Send one request; return once the response head is in. ``headers`` must not hold
        hop-by-hop headers; ``Host`` is added when missing. Raises `UpstreamUnreachable`
        (502), `UpstreamTimeout` (504) or `UpstreamProtocolError` (502); their
        ``bytes_sent`` says whether any of the request may have reached the upstream."""
        o = origin if isinstance(origin, Origin) else self.origin(origin)
        if not any(n == b"host" for n, _ in headers):
            headers = [(b"host", o.host_header), *headers]
        if isinstance(body, bytes):
            if (body or method in ("POST", "PUT", "PATCH")) and not any(
                n == b"content-length" for n, _ in headers
            ):
                headers = [*headers, (b"content-length", b"%d" % len(body))]
        elif not any(n in (b"content-length", b"transfer-encoding") for n, _ in headers):
            # A streamed body is framed by the length it declares (``length``: the server's
            # `RequestBody` holds a client to its Content-Length), else chunked; without
            # framing the upstream could not tell where it ends.
            length = getattr(body, "length", None)
            headers = [
                *headers,
                (b"content-length", b"%d" % length)
                if length is not None
                else (b"transfer-encoding", b"chunked"),
            ]
        replayable = isinstance(body, bytes) and method in IDEMPOTENT
        for attempt in (1, 2):
            c = await self._acquire(
                o, connect_timeout_s, connect_slots, trust_recent=replayable and attempt == 1
            )
            outcome = await self._exchange(
                c, method, target, headers, body, response_head_timeout_s
            )
            if type(outcome) is UpstreamResponse:
                return outcome
            assert isinstance(outcome, UpstreamUnreachable)
            if not (replayable and attempt == 1):
                raise outcome
            self.retried += 1  # the reused connection had died: once more on a fresh one
        raise AssertionError("unreachable")

    async def _acquire(
        self,
        o: Origin,
        connect_timeout_s: float | None,
        connect_slots: ConcurrencyLimit | None,
        *,
        trust_recent: bool,
    ) -> _Connection:
        """An idle pooled connection, or a new one; ``connect_slots`` bounds the connects in
        progress at once (a service's ``max_pending``): past it `Overloaded` (503 with
        Retry-After) rather than one more connect piling onto a stalled upstream.
        ``trust_recent``: see `_take_idle`."""
        c, stale = self._take_idle(o, trust_recent)
        for dead in stale:
            await self._close(dead, counted=False)
        if c is not None:
            c.reused = True
            self.reused += 1
            self.in_use += 1
            return c
        address = await self._resolve(o.host)
        timeout = (
            self.timeouts.connect_timeout_s if connect_timeout_s is None else connect_timeout_s
        )
        if connect_slots is not None and not connect_slots.try_acquire():
            raise connect_slots.refusal(o.url)
        try:
            with trio.fail_after(timeout):
                stream = await trio.open_tcp_stream(address, o.port)
        except trio.TooSlowError:
            raise UpstreamTimeout(f"{o.url}: connect timed out after {timeout}s") from None
        except OSError as exc:
            raise UpstreamUnreachable(f"{o.url}: connect failed: {exc.strerror or exc}") from None
        finally:
            if connect_slots is not None:
                connect_slots.release()
        self.opened += 1
        self.in_use += 1
        return _Connection(stream, o)

    def _take_idle(
        self, o: Origin, trust_recent: bool
    ) -> tuple[_Connection | None, list[_Connection]]:
        """Decide, with no I/O: the most recently rested connection to ``o`` still fit for
        reuse (None: open one), and the stale ones found on the way, which the caller closes
        (shielded), as httpcore's pool returns what to close instead of closing it. With
        ``trust_recent`` (the first try of a request that may be sent twice), a connection
        that rested less than ``RECENT_REST_S`` is taken without its poll (module header)."""
        idle = self._idle.get(o.key)
        stale: list[_Connection] = []
        now = trio.current_time()
        while idle:
            c = idle.pop()
            rested = now - c.rested_at
            if rested < self.timeouts.idle_timeout_s and (
                (trust_recent and rested < RECENT_REST_S) or c.looks_alive()
            ):
                return c, stale
            stale.append(c)
        return None, stale

    async def _resolve(self, host: str) -> str:
        address = self._addresses.get(host)
        if address is None:
            try:
                infos = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_STREAM)
            except OSError as exc:
                raise UpstreamUnreachable(f"cannot resolve {host}: {exc}") from None
            address = self._addresses[host] = str(infos[0][4][0])
        return address

    async def _exchange(
        self,
        c: _Connection,
        method: str,
        target: str,
        headers: Headers,
        body: bytes | BodySource,
        response_head_timeout_s: float | None,
    ) -> UpstreamResponse | UpstreamUnreachable:
        """Send one request on ``c`` and read the response head. Returns the response, or,
        when ``c`` was a reused connection that died before a byte of an answer, the error to
        raise unless the request goes again on a fresh connection. Any other failure closes
        ``c`` and raises."""
        url = c.origin.url
        c.request_sent = False
        timeout = (
            self.timeouts.response_head_timeout_s
            if response_head_timeout_s is None
            else response_head_timeout_s
        )
        try:
            head = h1client.encode_request(method, target, headers)
            c.reader.start(method, _asks_close(headers))
            if isinstance(body, bytes):
                await sockio.send_all(c.stream.socket, head + body if body else head)
            else:
                await self._send_streamed(c, head, headers, body)
            c.request_sent = True
            # Let the other connections run while the upstream works, then look for its
            # answer before asking trio to wait for it: under load it is usually there by
            # then, and a wait costs two epoll_ctl and trio's I/O bookkeeping (issue 14's
            # profile). This checkpoint is also the one every proxied request yields at.
            await trio.lowlevel.checkpoint()
            event = await self._next_head_event(c, trio.current_time() + timeout)
            if event is not None:
                return UpstreamResponse(self, c, event)
        except MalformedResponse as malformed:
            await self._close(c)
            raise UpstreamProtocolError(f"{url}: {malformed}", bytes_sent=True) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await self._close(c)
            reset = UpstreamUnreachable(f"{url}: connection reset", bytes_sent=c.request_sent)
            if c.reused:
                return reset
            raise reset from exc
        except BaseException:  # the body source failed (a slow client), a cancellation...
            await self._close(c)
            raise
        await self._close(c)
        return UpstreamUnreachable(f"{url}: closed a reused connection", bytes_sent=True)

    async def _send_streamed(
        self, c: _Connection, head: bytes, headers: Headers, body: BodySource
    ) -> None:
        """The head, then the body chunk by chunk as its source yields it: chunked, or held
        to the Content-Length the head declares (a source that yields more or fewer bytes
        is a bug the upstream must not see as a complete request)."""
        length = None
        for name, value in headers:
            if name == b"content-length":
                length = int(value)
        await c.stream.send_all(head)
        c.request_sent = True
        if length is None:
            while chunk := await body.read():
                await c.stream.send_all(h1client.encode_chunk(chunk))
            await c.stream.send_all(h1client.LAST_CHUNK)
            return
        sent = 0
        while chunk := await body.read():
            sent += len(chunk)
            if sent > length:
                raise h1client.MalformedRequest(f"request body longer than its {length} bytes")
            await c.stream.send_all(chunk)
        if sent != length:
            raise h1client.MalformedRequest(f"request body ended at {sent} of {length} bytes")

    @staticmethod
    async def _next_head_event(c: _Connection, deadline: float) -> ResponseHead | None:
        """The final response's head; None when a reused connection closed before sending
        a byte (it had died while idle). Informational responses are skipped: not ours to
        relay. Each read is tried first; only a wait for bytes not there yet runs under the
        deadline (`UpstreamTimeout` past it), so the usual answer costs no cancel scope."""
        reader = c.reader
        sock = c.stream.socket
        got_bytes = False
        while True:
            event = reader.next_head()
            if event is not NEED_DATA:
                assert isinstance(event, ResponseHead)
                return event
            data = sockio.try_receive(sock)
            if data is None:
                # A bare CancelScope rather than fail_after: fail_after's generator-based
                # context manager cost ~2 % of the proxy's CPU when it sat on every request.
                with trio.CancelScope(deadline=deadline) as waiting:
                    await trio.lowlevel.wait_readable(sock)
                if waiting.cancelled_caught:
                    raise UpstreamTimeout(
                        f"{c.origin.url}: no response head in time", bytes_sent=True
                    )
                continue
            if not data and not got_bytes and c.reused:
                return None
            got_bytes = got_bytes or bool(data)
            reader.receive_data(data)

    def check_in(self, c: _Connection) -> None:
        """An exchange on ``c`` is over (its response read to the end): pooled again when the
        answer left the connection fit for another request, else closed. Called by the
        `UpstreamResponse` it gave out."""
        self.in_use -= 1
        if c.reader.reusable:
            idle = self._idle.setdefault(c.origin.key, [])
            if len(idle) < self.timeouts.max_idle_per_origin:
                c.rested_at = trio.current_time()
                idle.append(c)
                return
        self.closed += 1
        c.stream.socket.close()

    async def discard(self, c: _Connection) -> None:
        """Close ``c``, in use until now (a response cut short or abandoned), shielded."""
        await self._close(c)

    async def _close(self, c: _Connection, *, counted: bool = True) -> None:
        if counted:
            self.in_use -= 1
        self.closed += 1
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(c.stream)

    async def aclose(self) -> None:
        for idle in self._idle.values():
            for c in idle:
                await self._close(c, counted=False)
        self._idle.clear()

    def drop_origins(self, keep: Iterable[str]) -> None:
        """Forget cached origins no longer configured (after a config reload)."""
        keep_set = set(keep)
        for url in [u for u in self._origins if u not in keep_set]:
            del self._origins[url]


def _asks_close(headers: Headers) -> bool:
    """Whether a request's own fields say ``Connection: close`` (then its answer is the
    connection's last)."""
    return b"close" in h1client.connection_tokens(headers)
