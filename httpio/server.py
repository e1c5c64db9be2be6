"""The HTTP/1.1 server loop every process runs: accept, keep-alive, limits, timeouts, drain.

One connection is one task and runs requests one after another (HTTP/1.1 has no
multiplexing, and pipelined requests are answered in order, RFC 9112 9.3.2), so a request
costs no task switch of its own. The handler is an ``async`` function from `Request` to
`Response`; it raises `httpio.errors.GatewayError` subclasses and this module is the one
place they become a status line and a JSON body.

Limits and their statuses (RFC 9110 15.5, RFC 6585 5):
- request head larger than ``max_head_bytes`` -> 431; malformed head -> 400; a method,
  a framing or a transfer coding refused by `httpio.protocol.refuse_request` or by
  `httpio.h1request`
  -> 405, 400 or 501; each of these closes the connection;
- body larger than ``max_body_bytes`` -> 413 (up front when Content-Length says so);
- no complete head within ``head_timeout_s`` of the first byte -> 408;
- a connection that sent nothing at all within ``head_timeout_s`` of accept, and a
  keep-alive connection idle for ``idle_timeout_s``, are closed without a word (RFC 9112
  9.5). nginx does the same with a connection that never spoke (``client timed out`` in
  ``ngx_http_wait_request_handler``): a burst of thousands of silent connects then costs
  a close each, not a 408 and a lingering close each while health probes wait;
- a connection from a trusted proxy whose PROXY header is bad is closed without a word.

The two that end a connection before it carried any request, silent (``no_request``) or with a
bad PROXY header (``bad_proxy_header``), are counted in ``dropped_connections`` by that reason
and shown to ``on_dropped`` (the proxy's access log). An idle keep-alive connection closed, or
a connection that closed before saying anything, is ordinary and neither.
- a body that stalls for ``body_timeout_s`` between two reads, falls below
  ``min_body_rate_bytes_per_s`` once ``body_rate_grace_s`` have passed, or is not complete
  after ``body_deadline_s`` -> 408 and close (see `ServerLimits`);
- more than ``max_connections`` open -> the new one gets a 503 and is closed.

Each of these answers carries a request id, as a proxy's handler gives every answer one: the
head's sane ``X-Request-ID`` when it parsed, a new one else (`httpio.trace.request_id_of`), in
the JSON body, an ``X-Request-ID`` header and what the observer sees (the access log's line).

No exception raised while serving one connection ends the process: `serve_connection` is
the boundary. What it does not expect (a bug, a library's assert, a response body's
``read()``/``aclose()`` failing, an ``ExceptionGroup`` out of a handler's nursery, an
``on_close`` callback) is logged once as ``connection_failed`` with the server's name and
the exception, and that connection is closed. ``trio.Cancelled``, ``KeyboardInterrupt``
and ``SystemExit`` are not ``Exception``s and go through untouched.

Drain (SIGTERM/SIGINT via `run_server`): stop accepting, close idle keep-alive connections,
let requests in flight finish and answer them with ``Connection: close``, and cancel what is
left at ``drain_timeout_s``.

A handler's 101 whose body is an `httpio.switch.SwitchedBody` switches the connection to
another protocol (`httpio.switch`): the body serves it from then on, and it is closed after.
The observer sees such a request once, when the switched connection ends, as Envoy and nginx
log an upgraded connection at its close: status 101, the whole session's duration, and the
bytes the body says it carried (``bytes_in`` from the client, ``bytes_out`` to it). Until then
the server keeps what that line needs (method, target, client, user agent and the note: a
tuple, `_SessionFacts`), only when there is an observer.

Requests are read by `httpio.h1request` (sans-IO, tested against h11, which did it before),
one `RequestReader` per connection for all its requests; responses are written by
`httpio.h1response` (its framing and keep-alive decisions are h11's, tested against it), with
as few ``send_all`` calls as the body allows: a bytes body goes out with its head in one write.
An HTTP/1.0 client that asks for keep-alive keeps its connection when the answer's length is
known (`httpio.protocol.asks_keep_alive`, RFC 9112 9.3). A request that proposed an upgrade
and was answered otherwise ends its connection, as it did when h11 paused there.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
import trio

from httpio import proxyproto, sockio
from httpio.access_log import RequestNote
from httpio.body import RequestBody
from httpio.dates import http_date
from httpio.errors import (
    GatewayError,
    RequestBodyTooLarge,
    RequestTimeout,
    TooManyConnections,
    encode_error,
    unavailable_response,
)
from httpio.h1request import NEED_DATA, RequestHead, RequestReader
from httpio.h1response import (
    NO_BODY,
    BodyFraming,
    MalformedAnswer,
    encode_response,
)
from httpio.listen import accept_loop, send_refusal, wrap_socket
from httpio.messages import Handler, Request, Response, ResponseBody, error_response
from httpio.protocol import (
    SERVED_METHODS,
    Headers,
    asks_keep_alive,
    http10_may_persist,
    reason_for,
    refuse_request,
)
from httpio.settings import ServerLimits
from httpio.switch import Switched, SwitchRefused, request_head, switch_protocols
from httpio.trace import new_request_id, request_id_of

# What the server knows of a request it refuses before any handler: the peer, whether it came
# through an ELB, the parsed head (None: it did not parse), when the head began (trio clock).
_Seen = tuple[tuple[str, int], bool, Any, float]
# A refused request's target is cut to this in the access log (a head may be 16 KiB of junk).
REFUSED_TARGET_BYTES = 1024
_KNOWN_METHODS = frozenset({*SERVED_METHODS, b"CONNECT", b"TRACE"})


_REFUSED_CONNECTION = TooManyConnections("server is at its connection limit")

# Called once per answered request, after its response went out: (request, response, monotonic
# time the handler started, body bytes sent). The access log and the metrics are observers.
# A request refused before any handler ran (a head that did not parse, too large or too slow,
# a refused method, a body declared too large, the connection cap) is shown too, with what is
# known of it and ``request.note.refused`` set (`HttpServer._observe_refusal`).
Observer = Callable[[Request, Response, float, int], None]
# Called when a connection ends before any request: (reason, peer, whether through an ELB,
# monotonic time it was accepted). ``reason`` is one of `DROP_REASONS`.
DropObserver = Callable[[str, tuple[str, int], bool, float], None]
DROP_REASONS = ("no_request", "bad_proxy_header")

log = structlog.get_logger()

LINGER_S = 2.0
LINGER_BYTES = 1 << 20
# A keep-alive connection's next head is read without waiting when it is already there;
# one request in this many yields to the scheduler anyway (the proxy's requests each yield
# while their upstream answers, a static backend's need not).
YIELD_EVERY_REQUESTS = 16


class _Clock:
    """The Date header (RFC 9110 6.6.1), formatted once a second rather than per response."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._value = http_date(now)
        return self._value


_clock = _Clock()


# What the observer is shown of an upgraded request when its session ends, held while it lasts
# (10,000 idle WebSockets hold 10,000): method, target, HTTP version, client, via an ELB, its
# user agent, its note; a `Request` is built from it at the end (`HttpServer._observe_session`).
_SessionFacts = tuple[str, str, str, tuple[str, int], bool, bytes | None, RequestNote | None]


class _Upgraded:
    """A switched connection to run, and what the observer is shown when it ends."""

    __slots__ = ("facts", "started", "switched")

    def __init__(self, switched: Switched, facts: _SessionFacts | None, started: float) -> None:
        self.switched = switched
        self.facts = facts  # None: no observer to show it to
        self.started = started


class _Closed(Exception):
    """The peer went away, or the connection must not carry another request."""


def _addr(sockname: Any) -> tuple[str, int]:
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        return (str(sockname[0]), int(sockname[1]))
    return ("unix", 0)


class HttpServer:
    """Serves ``handler`` on any number of listeners and handed-off connections.

    ``trusted_proxies`` lists the peer addresses allowed to open a connection with a PROXY
    protocol v2 header (our ELBs); from anyone else such a header is a malformed request.
    """

    def __init__(
        self,
        handler: Handler,
        limits: ServerLimits | None = None,
        *,
        name: str = "server",
        trusted_proxies: Iterable[str] = (),
        server_header: bytes | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits or ServerLimits()
        self.name = name
        self.trusted_proxies = frozenset(trusted_proxies)
        self.server_header = server_header
        self.draining = False
        self.open_connections = 0
        self.requests_served = 0
        self.refused_connections = 0
        self.failed_connections = 0  # ended by an exception nobody expected (logged)
        self.dropped_connections = dict.fromkeys(DROP_REASONS, 0)  # ended before any request
        self.on_dropped: DropObserver | None = None
        self._idle: set[trio.CancelScope] = set()
        self._all_closed = trio.Event()
        self._all_closed.set()
        self.drain_started = trio.Event()
        self.observer: Observer | None = None
        self._nursery: trio.Nursery | None = None
        self._listeners: list[trio.SocketListener] = []

    def __repr__(self) -> str:
        return (
            f"<HttpServer {self.name} open={self.open_connections} "
            f"served={self.requests_served} draining={self.draining}>"
        )

    def statistics(self) -> dict[str, object]:
        return {
            "open_connections": self.open_connections,
            "requests_served": self.requests_served,
            "refused_connections": self.refused_connections,
            "failed_connections": self.failed_connections,
            "dropped_connections": dict(self.dropped_connections),
            "draining": self.draining,
        }

    # -- listeners ---------------------------------------------------------------------------
    async def serve_listeners(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._listeners.extend(listeners)
            for listener in listeners:
                nursery.start_soon(self._accept_loop, listener)
            task_status.started()

    async def _accept_loop(self, listener: trio.SocketListener) -> None:
        async with listener:
            await accept_loop(listener, self._accepted, server=self.name)

    async def _accepted(self, client: socket.socket) -> None:
        self.start_connection(wrap_socket(client))

    def start_connection(
        self,
        stream: trio.SocketStream,
        *,
        via_elb: bool = False,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        """Serve an already-accepted connection (from a listener or an ELB hand-off)."""
        assert self._nursery is not None, "serve_listeners() is not running"
        self._nursery.start_soon(self.serve_connection, stream, via_elb, on_close)

    async def drain(self) -> None:
        """Stop accepting, close idle connections, and wait for requests in flight."""
        self.draining = True
        self.drain_started.set()
        for listener in self._listeners:
            await listener.aclose()
        for scope in list(self._idle):
            scope.cancel()
        if self._nursery is not None:
            with trio.move_on_after(self.limits.drain_timeout_s):
                await self._all_closed.wait()
            self._nursery.cancel_scope.cancel()

    # -- one connection ----------------------------------------------------------------------
    async def serve_connection(
        self,
        stream: trio.SocketStream,
        via_elb: bool = False,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.open_connections += 1
        self._all_closed = self._all_closed if self.open_connections > 1 else trio.Event()
        try:
            if self.open_connections > self.limits.max_connections or self.draining:
                self.refused_connections += 1
                await self._refuse(stream, via_elb)
                return
            await self._serve(stream, via_elb)
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError):
            pass
        except OSError as broken:
            log.debug("connection_error", server=self.name, error=str(broken))
        except Exception as exc:  # the boundary: this connection ends, the process does not
            self._connection_failed(exc)
        finally:
            self.open_connections -= 1
            if self.open_connections == 0:
                self._all_closed.set()
            try:
                # What a SocketStream's aclose() does, less its checkpoint: no cancel scope
                # (aclose_forcefully's, the shield) and no yield at each connection's end,
                # which were a third of what closing cost under ab (issue 14's profile).
                stream.socket.close()
            except Exception as exc:
                self._connection_failed(exc)
            if on_close is not None:
                try:
                    on_close()
                except Exception as exc:
                    self._connection_failed(exc)

    def _dropped(self, reason: str, peer: tuple[str, int], via_elb: bool, began: float) -> None:
        """Count a connection that ends before any request (``began``: its first wait for
        bytes, trio's clock) and show it to ``on_dropped``."""
        self.dropped_connections[reason] += 1
        if self.on_dropped is not None:
            started = time.monotonic() - max(0.0, trio.current_time() - began)
            try:
                self.on_dropped(reason, peer, via_elb, started)
            except Exception as exc:  # an observer's bug must not end the connection's cleanup
                self._connection_failed(exc)

    def _connection_failed(self, exc: Exception) -> None:
        self.failed_connections += 1
        log.error("connection_failed", server=self.name, error=repr(exc), exc_info=exc)

    async def _refuse(self, stream: trio.SocketStream, via_elb: bool) -> None:
        started = time.monotonic()
        request_id = new_request_id()  # no head was read: a new id
        answer = unavailable_response(
            _REFUSED_CONNECTION.code, _REFUSED_CONNECTION.detail, request_id
        )
        await send_refusal(stream, answer)
        if self.observer is not None:
            try:
                peer = _addr(stream.socket.getpeername())
            except OSError:
                peer = ("-", 0)
            sent = len(answer.partition(b"\r\n\r\n")[2])  # its body's bytes
            refused = (peer, via_elb, None, started)
            self._observe_refusal(_REFUSED_CONNECTION, None, refused, request_id, sent)

    def _observe_refusal(
        self,
        err: GatewayError,
        conn: RequestReader | None,
        seen: _Seen,
        request_id: bytes,
        sent: int,
    ) -> None:
        """Show the observer (metrics, access log) a request refused before any handler ran:
        what is known of it (``seen``, with the head if it parsed, and ``started`` in the
        monotonic clock), the request id its answer carried, its status and error kind. The method
        is one we know or ``-`` and the target is cut short, so garbage makes no new label
        nor a long line; `proxy.metrics` bounds how many such lines a second are written."""
        assert self.observer is not None
        peer, via_elb, event, started = seen
        method, target, headers, version = "-", "-", [], "1.1"
        if event is not None:
            raw = bytes(event.method)
            method = raw.decode("ascii") if raw in _KNOWN_METHODS else "-"
            target = bytes(event.target)[:REFUSED_TARGET_BYTES].decode("latin-1")
            headers = list(event.headers)
            version = bytes(event.http_version).decode("ascii", "replace")
        path, _, query = target.partition("?")
        body = RequestBody(conn, None, self.limits)
        request = Request(method, target, path, query, headers, version, peer, body, via_elb)
        note = request.note = RequestNote()
        note.error = err.code
        note.refused = True
        note.request_id = request_id.decode()
        response = Response(err.status, [*err.headers, (b"x-request-id", request_id)], b"")
        try:
            self.observer(request, response, started, sent)
        except Exception as exc:  # an observer's bug must not end the connection's cleanup
            self._connection_failed(exc)

    async def _serve(self, stream: trio.SocketStream, via_elb: bool) -> None:
        limits = self.limits
        try:
            peer = _addr(stream.socket.getpeername())
        except OSError:
            return
        conn = RequestReader(limits.max_head_bytes)
        if peer[0] in self.trusted_proxies and not via_elb:
            began = trio.current_time()
            try:
                peer, via_elb = await self._read_proxy_header(stream, conn, peer, began)
            except proxyproto.ProxyProtocolError as exc:
                log.warning("bad_proxy_header", server=self.name, error=str(exc))
                self._dropped("bad_proxy_header", peer, via_elb, began)
                return
        first = True
        served = 0
        while True:
            served += 1
            if not served % YIELD_EVERY_REQUESTS:
                # A client whose requests are always already here, to a handler that never
                # waits, would otherwise hold the event loop: every so often, let others run.
                await trio.lowlevel.checkpoint()
            event = await self._read_head(stream, conn, first, peer, via_elb)
            if event is None:
                return
            first = False
            request = self._make_request(event, conn, stream, peer, via_elb)
            keep = await self._respond(stream, conn, request)
            self.requests_served += 1
            if isinstance(keep, _Upgraded):  # the connection is the body's now
                del event, request, conn  # held for as long as it lasts otherwise
                try:  # in this frame: a coroutine of its own was ~0.5 KiB per open session
                    await keep.switched.run()
                finally:
                    self._observe_session(keep)
                return
            if not keep:
                if not request.body.complete_in_buffer():
                    await self._linger(stream)
                return
            if not request.body.done and not await self._discard_body(request.body):
                return
            if conn.upgrade or (conn.closed and not conn.buffered):
                return  # an upgrade proposed and not taken (see the module's header)
            conn.next_request()
            # An idle keep-alive connection should hold no request: at 10,000 idle
            # connections the last request's event and headers were 2 KiB each.
            del event, request

    def _observe_session(self, upgraded: _Upgraded) -> None:
        """A switched connection ended: show the observer its request (status 101)."""
        facts = upgraded.facts
        if facts is not None and self.observer is not None:
            received, sent = upgraded.switched.transferred()
            request = self._session_request(facts)
            request.body.length = received
            try:
                self.observer(request, Response(101, [], b""), upgraded.started, sent)
            except Exception as exc:  # the observer's bug: this connection ends anyway
                self._connection_failed(exc)

    def _session_request(self, facts: _SessionFacts) -> Request:
        """The upgraded request as the observer sees it when its session ends: no headers
        but its user agent, a body that read nothing."""
        method, target, version, client, via_elb, agent, note = facts
        path, _, query = target.partition("?")
        headers = [(b"user-agent", agent)] if agent is not None else []
        body = RequestBody(None, None, self.limits)
        return Request(method, target, path, query, headers, version, client, body, via_elb, note)

    async def _read_proxy_header(
        self, stream: trio.SocketStream, conn: RequestReader, peer: tuple[str, int], began: float
    ) -> tuple[tuple[str, int], bool]:
        buffer = b""
        deadline = began + self.limits.head_timeout_s
        while True:
            parsed = proxyproto.parse_v2(buffer)
            if parsed is not proxyproto.NEED_MORE:
                break
            # Every connection from a trusted address comes through here (on one host the
            # ELBs are on loopback): the raw read, tried first; a cancel scope only around
            # a wait for bytes not there yet.
            data = sockio.try_receive(stream.socket)
            if data is None:
                with trio.CancelScope(deadline=deadline) as waiting:
                    await trio.lowlevel.wait_readable(stream.socket)
                if waiting.cancelled_caught:  # silent, or a header begun and never ended
                    self._dropped(
                        "bad_proxy_header" if buffer else "no_request", peer, False, began
                    )
                    raise _Closed
                continue
            if not data:
                raise _Closed
            buffer += data
        if parsed is None:  # not a PROXY header: plain HTTP from a trusted host
            conn.receive_data(buffer)
            return peer, False
        assert isinstance(parsed, proxyproto.ProxyHeader)
        rest = buffer[parsed.length :]
        if rest:  # b"" would tell the reader that the peer closed
            conn.receive_data(rest)
        return parsed.source or peer, True

    async def _read_head(
        self,
        stream: trio.SocketStream,
        conn: RequestReader,
        first: bool,
        peer: tuple[str, int],
        via_elb: bool,
    ) -> RequestHead | None:
        limits = self.limits
        waiting_idle = not first and not conn.buffered
        deadline = trio.current_time() + (
            limits.idle_timeout_s if waiting_idle else limits.head_timeout_s
        )
        while True:
            try:
                event = conn.next_head()
            except GatewayError as err:
                started = deadline - limits.head_timeout_s
                await self._send_error_and_close(stream, conn, err, (peer, via_elb, None, started))
                return None
            if event is NEED_DATA:
                # Nothing of a request has arrived yet: a drain may close this connection.
                unstarted = waiting_idle or (first and not conn.buffered)
                data = await self._head_bytes(
                    stream, conn, deadline, waiting_idle, unstarted, (peer, via_elb, None, 0.0)
                )
                if data is None:
                    return None
                if not data and not conn.buffered:
                    return None  # clean close between requests
                conn.receive_data(data)
                if waiting_idle and data:
                    waiting_idle = False
                    deadline = trio.current_time() + limits.head_timeout_s
                continue
            if type(event) is RequestHead:
                refusal = refuse_request(
                    event.method,
                    event.http_version,
                    event.target,
                    event.headers,
                    limits.max_head_bytes,
                )
                if refusal is not None:
                    started = deadline - limits.head_timeout_s
                    seen = (peer, via_elb, event, started)
                    await self._send_error_and_close(stream, conn, refusal, seen)
                    return None
                return event
            return None  # CLOSED: nothing more to serve

    async def _head_bytes(
        self,
        stream: trio.SocketStream,
        conn: RequestReader,
        deadline: float,
        waiting_idle: bool,
        unstarted: bool,
        seen: _Seen,
    ) -> bytes | None:
        """The next bytes of a request head (b"": the peer closed), or None when the
        connection ends here: drained or timed out with no byte of a request (closed without
        a word), or timed out mid-head (answered 408 first)."""
        if self.draining and unstarted:
            return None
        if waiting_idle:
            # The answer has just gone out and nothing of the next request was here: a busy
            # keep-alive client's next one is on its way. Let the other connections run once,
            # then look. A wait under a cancel scope was ~15 % of a proxied request's CPU under
            # wrk -c50 (the scope's deadline bookkeeping, an epoll_ctl, trio's I/O wake-up)
            # and a read at once an EAGAIN; a checkpoint is one turn of the run queue.
            await trio.lowlevel.checkpoint()
            if self.draining:
                return None
        # Under load the bytes are usually here by the time we look: read them with no cancel
        # scope and no wait. Only a read that would block waits, under the deadline.
        data = sockio.try_receive(stream.socket)
        if data is not None:
            return data
        scope = trio.CancelScope(deadline=deadline)
        if unstarted:
            self._idle.add(scope)
        try:
            with scope:
                if waiting_idle:
                    # Park on readiness alone: an idle connection then holds a
                    # shallower stack (10,000 idle connections: -1 KiB each).
                    await trio.lowlevel.wait_readable(stream.socket)
                data = await sockio.receive(stream.socket)
        finally:
            if unstarted:
                self._idle.discard(scope)
        if not scope.cancelled_caught:
            return data
        since = deadline - self.limits.head_timeout_s
        if not (unstarted or self.draining):
            timeout = RequestTimeout("request head not received in time")
            await self._send_error_and_close(stream, conn, timeout, (*seen[:3], since))
        elif unstarted and not waiting_idle and not self.draining:
            self._dropped("no_request", seen[0], seen[1], since)  # it never said a thing
        return None

    def _make_request(
        self,
        event: RequestHead,
        conn: RequestReader,
        stream: trio.SocketStream,
        peer: tuple[str, int],
        via_elb: bool,
    ) -> Request:
        target = event.target.decode("latin-1")
        path, _, query = target.partition("?")
        return Request(
            event.method.decode("ascii"),
            target,
            path,
            query,
            event.headers,
            event.http_version.decode("ascii"),
            peer,
            RequestBody(conn, stream, self.limits),
            via_elb,
        )

    async def _respond(
        self, stream: trio.SocketStream, conn: RequestReader, request: Request
    ) -> bool | _Upgraded:
        """Run the handler and send its response. Returns whether the connection may carry
        another request, or the switched connection to run after a 101."""
        limits = self.limits
        response: Response
        started = time.monotonic() if self.observer is not None else 0.0
        handled = False
        # What the client asked of its connection, as the reader found it in the head (a
        # handler may rewrite the headers).
        keep_alive = conn.keep_alive
        persist = request.http_version == "1.0" and asks_keep_alive(request.headers)
        try:
            declared = conn.content_length
            if declared is not None:
                request.body.length = declared
                if declared > limits.max_body_bytes:
                    raise RequestBodyTooLarge(f"request body exceeds {limits.max_body_bytes} bytes")
            handled = True
            response = await self.handler(request)
        except GatewayError as err:
            if request.note is None:  # what the handler did not say: the error's kind
                note = request.note = RequestNote()
                note.error = err.code
                note.refused = not handled
                if not handled:  # the handler would have given it its id: do so here
                    request_id = request_id_of(request.headers)
                    note.request_id = request_id.decode()
                    err.request_id = note.request_id
                    err.headers = (*err.headers, (b"x-request-id", request_id))
            response = error_response(err)
            if request.body.failed or isinstance(err, RequestBodyTooLarge):
                # The body's framing is lost (or it is too large to skip): close after
                # this answer. Refusals of bodiless requests (401, 403) keep the connection.
                response.headers.append((b"connection", b"close"))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise _Closed from None
        except Exception:
            log.exception(
                "handler_failed", server=self.name, method=request.method, target=request.target
            )
            response = error_response(GatewayError("internal error while serving the request"))
        if response.status == 101:  # an upgrade accepted: the connection is the body's now
            switched: Switched | None = None
            try:
                head = request_head(request.method, request.target, request.headers)
                switched = await switch_protocols(
                    stream, conn, 101, response.headers, response.body, head
                )
            except SwitchRefused as exc:
                log.warning(
                    "switch_refused", server=self.name, target=request.target, error=str(exc)
                )
            if switched is None:
                raise _Closed
            facts: _SessionFacts | None = None
            if self.observer is not None:
                facts = (
                    request.method,
                    request.target,
                    request.http_version,
                    request.client,
                    request.via_elb,
                    request.header(b"user-agent"),
                    request.note,
                )
            return _Upgraded(switched, facts, started)
        if self.draining or conn.expects_continue:
            # A client still waiting for 100 Continue may or may not send its body now
            # (RFC 9110 10.1.1): the next bytes cannot be trusted to be a request.
            response.headers.append((b"connection", b"close"))
        sent, keep = await self._send(stream, request, response, keep_alive, persist)
        if self.observer is not None:
            self.observer(request, response, started, sent)
        return keep

    async def _write(self, stream: trio.SocketStream, data: bytes) -> None:
        """One write under ``send_timeout_s``: a client that stops reading is dropped, but a
        long download that keeps moving is never cut."""
        sent = sockio.try_send(stream.socket, data)
        if sent == len(data):
            return  # the usual case: no timeout needed for what the kernel took at once
        with trio.CancelScope(deadline=trio.current_time() + self.limits.send_timeout_s) as scope:
            await sockio.send_all(stream.socket, data, sent)
        if scope.cancelled_caught:
            raise _Closed  # the client stopped reading: nothing more to say to it

    async def _send(
        self,
        stream: trio.SocketStream,
        request: Request,
        response: Response,
        keep_alive: bool,
        persist: bool = False,
    ) -> tuple[int, bool]:
        """Send ``response``; the body bytes that went out, and whether the connection may
        carry another request (``keep_alive``: the request lets it; ``persist``: an HTTP/1.0
        client asked for keep-alive, promised when the answer's end is known)."""
        headers = response.headers
        for name, _ in headers:
            if name == b"date":
                break
        else:
            headers.append((b"date", _clock.date()))
        if self.server_header is not None:
            headers.append((b"server", self.server_header))
        body = response.body
        status = response.status
        no_body = request.method == "HEAD" or status in (204, 304) or status < 200
        sized = isinstance(body, bytes)
        persist = persist and http10_may_persist(request.method, status, headers, sized)
        if not isinstance(body, bytes):
            return await self._send_streamed(
                stream, request, status, headers, body, keep_alive, persist
            )
        if not no_body or request.method == "HEAD":
            if not any(n == b"content-length" for n, _ in headers):
                headers.append((b"content-length", b"%d" % len(body)))
        out, framing = _head(request, status, headers, keep_alive, persist)
        try:
            if body and not no_body:
                out += framing.data(body)
            out += framing.end()
        except MalformedAnswer as exc:  # a Content-Length the body does not have
            log.warning("response_aborted", server=self.name, target=request.target, error=str(exc))
            raise _Closed from exc
        await self._write(stream, out)
        return (0 if no_body else len(body)), framing.keep_alive

    async def _send_streamed(
        self,
        stream: trio.SocketStream,
        request: Request,
        status: int,
        headers: Headers,
        body: ResponseBody,
        keep_alive: bool,
        persist: bool = False,
    ) -> tuple[int, bool]:
        """A streamed body after its head, as few writes as it allows; closed in any case.
        Returns the body bytes sent and whether the connection may carry another request."""
        read_to_end = False
        sent = 0
        try:
            head, framing = _head(request, status, headers, keep_alive, persist)
            if framing.kind == NO_BODY:
                await stream.send_all(head)
                return 0, framing.keep_alive
            chunk = await body.read()
            pending = head
            while chunk:
                sent += len(chunk)
                pending += framing.data(chunk)
                # A body that says it is finished has nothing more to wait for: its last
                # chunk goes out with the end of the message (one write for a small answer).
                if not getattr(body, "finished", False):
                    await self._write(stream, pending)
                    pending = b""
                chunk = await body.read()
            pending += framing.end()
            read_to_end = True
            if pending:
                await self._write(stream, pending)
            return sent, framing.keep_alive
        except GatewayError as err:
            # The head is out: the only honest signal left is a truncated message.
            log.warning(
                "response_aborted", server=self.name, target=request.target, error=err.detail
            )
            raise _Closed from err
        except MalformedAnswer as exc:
            # e.g. the upstream sent fewer bytes than its Content-Length promised
            log.warning("response_aborted", server=self.name, target=request.target, error=str(exc))
            raise _Closed from exc
        finally:
            if read_to_end and getattr(body, "finished", False):
                # Its aclose() does no I/O, so there is nothing to shield: the shielded
                # scope cost more than the rest of a proxied request's trio bookkeeping.
                await body.aclose()
            else:
                with trio.CancelScope(shield=True):
                    await body.aclose()

    async def _linger(self, stream: trio.SocketStream) -> None:
        """Close after an answer sent while the client may still be sending (a refused or
        unread body, an ``Expect: 100-continue`` it gave up waiting on): stop writing, read
        and drop what comes for a moment, then close. Closing with unread bytes makes the
        kernel send RST, which can destroy the answer before the client reads it (nginx's
        lingering_close exists for this)."""
        try:
            stream.socket.shutdown(socket.SHUT_WR)
            budget = LINGER_BYTES
            with trio.move_on_after(LINGER_S):
                while budget > 0 and (data := await sockio.receive(stream.socket)):
                    budget -= len(data)
        except OSError:
            pass

    async def _discard_body(self, body: RequestBody, budget: int = 65536) -> bool:
        """Read and drop what the handler left of the body, so the connection can be reused;
        more than ``budget`` bytes is not worth it and the connection is closed instead."""
        try:
            while budget > 0:
                chunk = await body.read()
                if not chunk:
                    return True
                budget -= len(chunk)
        except GatewayError:
            return False
        return False

    async def _send_error_and_close(
        self,
        stream: trio.SocketStream,
        conn: RequestReader,
        err: GatewayError,
        seen: _Seen | None = None,
    ) -> None:
        """Answer ``err`` to a request refused before any handler ran, and close; the
        observer sees it (``seen``: the peer, whether through an ELB, the head if it parsed,
        and when the head began, in trio's clock). The answer carries a request id, as the
        proxy's answers do: the head's ``X-Request-ID`` when it parsed, else a new one."""
        event = seen[2] if seen is not None else None
        request_id = request_id_of(event.headers) if event is not None else new_request_id()
        body = encode_error(err.status, err.code, err.detail, request_id.decode())
        headers = [
            (b"content-type", b"application/json"),
            *err.headers,
            (b"x-request-id", request_id),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
            (b"date", _clock.date()),
        ]
        to_head = event is not None and bytes(event.method) == b"HEAD"
        try:  # the answer's own ``Connection: close`` ends the connection, written as it is
            head, framing = encode_response(
                err.status,
                reason_for(err.status),
                headers,
                head=to_head,
                http11=event is not None and bytes(event.http_version) >= b"1.1",
                keep_alive=True,
            )
            out = head + (b"" if to_head else framing.data(body)) + framing.end()
        except MalformedAnswer:
            return
        await send_refusal(stream, out)
        if seen is not None and self.observer is not None:
            peer, via_elb, event, began = seen
            started = time.monotonic() - max(0.0, trio.current_time() - began)
            self._observe_refusal(err, conn, (peer, via_elb, event, started), request_id, len(body))
        # The client may still be sending the rest of what we refused (a head too large):
        # without a lingering close the kernel's RST could destroy this answer.
        await self._linger(stream)


def _head(
    request: Request, status: int, headers: Headers, keep_alive: bool, persist: bool
) -> tuple[bytes, BodyFraming]:
    """The response head's bytes and its body's framing (`httpio.h1response`); a head that
    cannot be written ends the connection. ``persist``: an HTTP/1.0 client asked for
    keep-alive, promised where the answer's end is known."""
    try:
        return encode_response(
            status,
            reason_for(status),
            headers,
            head=request.method == "HEAD",
            http11=request.http_version >= "1.1",
            keep_alive=keep_alive,
            persist=persist,
        )
    except MalformedAnswer as exc:
        log.warning("response_refused", status=status, target=request.target, error=str(exc))
        raise _Closed from exc
