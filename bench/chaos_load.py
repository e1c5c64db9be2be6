"""The steady, bounded load that `make chaos` and `make soak` put through an ELB, and what it
records about every request.

Open loop: a scheduler thread fires requests at fixed times (``rate`` per second, the
request classes interleaved by weight) and hands each to a pool of worker threads that
grows on demand up to ``max_in_flight``. A closed loop (N clients, each waiting for its
answer) would stop sending while the fleet stalls, and so hide the stall it is meant to
measure ("coordinated omission"); here a hung backend keeps receiving its share and every
stalled request is seen. A request's latency is counted from its *scheduled* time, so a
request that waited for a free worker is charged that wait too; ``start_delay_s`` keeps the
generator's own share apart (it stays ~0 unless ``max_in_flight`` requests are stuck).

Each request is one `Record`: when it was due, its class, the status, the error kind (the
JSON ``error`` field of a gateway error, or what went wrong with the connection), the
latency and the ``X-Cache`` label. Keep-alive classes take a connection from a LIFO pool
(few connections stay busy, as a browser's do), new-connection classes open one each time.
A GET that fails on a *reused* keep-alive connection before any byte of an answer is sent
again once on a new connection, as HTTP clients do for idempotent requests (RFC 9110 9.2.2,
RFC 9112 9.3.1); the record then says ``retried`` and keeps the first error's kind, so a
killed process's idle connections show up without being counted as lost requests.

Everything is bounded: the scheduler stops at ``stop`` or after ``max_requests``, each
request has a socket timeout (``timeout_s``), and `stop` waits for the stragglers at most
``drain_s``.
"""

from __future__ import annotations

import http.client
import itertools
import json
import math
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import msgspec

REQUEST_TIMEOUT_S = 40.0  # longer than the proxies' 30 s response timeout: theirs fires first
KEEPALIVE_MAX_IDLE_S = 5.0  # well under the servers' 30 s idle timeout: no routine stale pool
# A stopped backend held 600 requests at once in a 20 s stall at 140 req/s (a fifth of the
# uncached share, plus cached requests coalesced behind an expired entry); 2000 leaves room
# for most of the load stalling. Each one holds a socket: see raise_open_files_limit.
MAX_IN_FLIGHT = 2000
WORKER_STACK_BYTES = 256 * 1024
OK_STATUSES = frozenset({200, 201, 204, 304})


class Record(msgspec.Struct, array_like=True, frozen=True):
    """One request. ``t`` is when it was due, in seconds on the load's clock (monotonic)."""

    t: float
    cls: str
    status: int  # 0: no answer
    kind: str  # "" when it succeeded; else e.g. "502 upstream_unreachable", "conn_refused"
    latency_s: float
    cache: str = ""  # the X-Cache label, if any
    retried: str = ""  # the kind of the first attempt's failure, when it was retried
    start_delay_s: float = 0.0
    signin: bool = False  # a signin, or the first use of its new token

    @property
    def timed(self) -> bool:
        """Whether its latency is the gateway's: a signin's is scrypt's (25 ms of CPU, by
        design, and several times that on busy cores), so latency statistics leave it out."""
        return not self.signin

    @property
    def failed(self) -> bool:
        return bool(self.kind)


@dataclass(frozen=True, slots=True)
class RequestClass:
    """A kind of request in the mix. ``path`` may hold ``{n}``: a counter, for URLs that are
    new every time. ``signin`` posts the bench user's credentials and then uses the new
    token once (class ``<name>+token``), which needs the auth servers both times."""

    name: str
    path: str
    keepalive: bool
    weight: int = 1
    signin: bool = False


def error_kind(status: int, body: bytes) -> str:
    """The failure kind of an answer: '' for a success, else the status with the gateway's
    JSON ``error`` field (``503 no_healthy_instance``), or the status alone."""
    if status in OK_STATUSES:
        return ""
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError):
        error = None
    return f"{status} {error}" if isinstance(error, str) and error else str(status)


def exception_kind(exc: BaseException) -> str:
    """What went wrong with the connection, in a word."""
    if isinstance(exc, ConnectionRefusedError):
        return "conn_refused"
    if isinstance(exc, http.client.RemoteDisconnected):
        return "closed_no_answer"
    if isinstance(exc, ConnectionResetError):
        return "conn_reset"
    if isinstance(exc, BrokenPipeError):
        return "broken_pipe"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "timeout"
    if isinstance(exc, http.client.IncompleteRead):
        return "incomplete_body"
    if isinstance(exc, http.client.HTTPException):
        return "bad_answer"
    return type(exc).__name__


def interleave(classes: Sequence[RequestClass]) -> Iterator[RequestClass]:
    """Endless smooth weighted round robin (nginx's): weights 3:1 give A A B A, A A B A..."""
    if not classes or any(c.weight < 1 for c in classes):
        raise ValueError("every request class needs a weight >= 1")
    current = [0] * len(classes)
    total = sum(c.weight for c in classes)
    while True:
        for i, c in enumerate(classes):
            current[i] += c.weight
        best = max(range(len(classes)), key=current.__getitem__)
        current[best] -= total
        yield classes[best]


class _KeepalivePool:
    """Idle keep-alive connections, most recently used first."""

    def __init__(self, host: str, port: int, timeout_s: float) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self._idle: list[tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()

    def new(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)

    def take(self) -> http.client.HTTPConnection | None:
        now = time.monotonic()
        stale = []
        found = None
        with self._lock:
            while self._idle:
                conn, since = self._idle.pop()
                if now - since <= KEEPALIVE_MAX_IDLE_S:
                    found = conn
                    break
                stale.append(conn)
        for conn in stale:
            conn.close()
        return found

    def give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append((conn, time.monotonic()))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn, _ in idle:
            conn.close()


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    kind: str
    cache: str
    body: bytes


class _BeforeAnswer(Exception):
    """A reused connection broke before any byte of the answer: safe to send again."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _exchange(
    conn: http.client.HTTPConnection,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str],
    reused: bool,
) -> tuple[_Answer, bool]:
    """One request on ``conn``; the answer and whether the connection may be reused."""
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
        if reused:
            raise _BeforeAnswer(exc) from exc
        raise
    data = resp.read()
    answer = _Answer(
        resp.status, error_kind(resp.status, data), resp.getheader("x-cache") or "", data
    )
    return answer, not resp.will_close


class LoadGenerator:
    """See the module docstring. ``start``, then ``stop``; `records` at any time."""

    def __init__(
        self,
        host: str,
        port: int,
        classes: Sequence[RequestClass],
        *,
        rate: float,
        token: str,
        signin_body: bytes,
        max_in_flight: int = MAX_IN_FLIGHT,
        timeout_s: float = REQUEST_TIMEOUT_S,
        max_requests: int = 10_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.host, self.port = host, port
        self.classes = list(classes)
        self.rate = rate
        self.token = token
        self.signin_body = signin_body
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.max_requests = max_requests
        self.clock = clock
        self._pool = _KeepalivePool(host, port, timeout_s)
        self._queue: queue.Queue[tuple[float, RequestClass, int] | None] = queue.Queue()
        self._records: list[Record] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._scheduler: threading.Thread | None = None
        self._workers: list[threading.Thread] = []
        self._outstanding = 0  # requests queued or running
        self._counter = itertools.count()
        self.scheduled = 0
        self.saturated = 0  # requests that found every worker busy and max_in_flight reached

    def __repr__(self) -> str:
        return (
            f"<LoadGenerator {self.rate:g}/s scheduled={self.scheduled}"
            f" workers={len(self._workers)} records={len(self._records)}>"
        )

    def statistics(self) -> dict[str, object]:
        return {
            "rate": self.rate,
            "scheduled": self.scheduled,
            "recorded": len(self._records),
            "workers": len(self._workers),
            "saturated": self.saturated,
        }

    # -- running -----------------------------------------------------------------------------
    def start(self) -> None:
        self._scheduler = threading.Thread(target=self._schedule, name="load-scheduler")
        self._scheduler.start()

    def stop(self, drain_s: float = REQUEST_TIMEOUT_S + 5.0) -> None:
        """Stop scheduling, let requests in flight finish (at most ``drain_s``), close."""
        self._stopping.set()
        if self._scheduler is not None:
            self._scheduler.join(drain_s)
        with self._lock:
            workers = list(self._workers)
        for _ in workers:
            self._queue.put(None)
        deadline = time.monotonic() + drain_s
        for w in workers:
            w.join(max(0.0, deadline - time.monotonic()))
        self._pool.close()

    def records(self, since: float = -math.inf, until: float = math.inf) -> list[Record]:
        with self._lock:
            return [r for r in self._records if since <= r.t < until]

    def _schedule(self) -> None:
        mix = interleave(self.classes)
        start = self.clock()
        interval = 1.0 / self.rate
        for i in range(self.max_requests):
            due = start + i * interval
            while not self._stopping.is_set():
                wait = due - self.clock()
                if wait <= 0:
                    break
                self._stopping.wait(min(wait, 0.5))
            if self._stopping.is_set():
                return
            self._dispatch(due, next(mix))

    def _dispatch(self, due: float, cls: RequestClass) -> None:
        worker = None
        with self._lock:
            self.scheduled += 1
            self._outstanding += 1
            if self._outstanding > len(self._workers):
                if len(self._workers) < self.max_in_flight:
                    worker = threading.Thread(
                        target=self._work, name=f"load-{len(self._workers)}", daemon=True
                    )
                    self._workers.append(worker)
                else:
                    self.saturated += 1
        self._queue.put((due, cls, next(self._counter)))
        if worker is not None:
            old = threading.stack_size(WORKER_STACK_BYTES)
            try:
                worker.start()
            finally:
                threading.stack_size(old)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            due, cls, n = item
            records = self._perform(due, cls, n)
            with self._lock:
                self._records.extend(records)
                self._outstanding -= 1

    # -- one request ---------------------------------------------------------------------------
    def _perform(self, due: float, cls: RequestClass, n: int) -> list[Record]:
        started = self.clock()
        if cls.signin:
            headers = {"Content-Type": "application/json"}
            first, answer = self._one(
                cls, "POST", cls.path, self.signin_body, headers, due, started
            )
            records = [first]
            if not first.failed:
                try:
                    token = json.loads(answer.body)["token"] if answer else ""
                except (ValueError, KeyError, TypeError):
                    token = ""
                now = self.clock()
                follow = RequestClass(
                    f"{cls.name}+token", "/video/index.html", keepalive=False, signin=True
                )
                auth = {"Authorization": f"Bearer {token}"}
                second, _ = self._one(follow, "GET", follow.path, None, auth, now, now)
                records.append(second)
            return records
        path = cls.path.format(n=n)
        headers = {"Authorization": f"Bearer {self.token}"}
        record, _ = self._one(cls, "GET", path, None, headers, due, started)
        return [record]

    def _one(
        self,
        cls: RequestClass,
        method: str,
        path: str,
        body: bytes | None,
        headers: dict[str, str],
        due: float,
        started: float,
    ) -> tuple[Record, _Answer | None]:
        retried = ""
        conn = self._pool.take() if cls.keepalive else None
        reused = conn is not None
        for _ in range(2):
            if conn is None:
                conn = self._pool.new()
            try:
                answer, reusable = _exchange(conn, method, path, body, headers, reused)
            except _BeforeAnswer as exc:
                conn.close()
                conn, reused = None, False
                if method != "GET":
                    return self._failed(cls, due, started, exception_kind(exc.cause)), None
                retried = exception_kind(exc.cause)
                continue
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                return self._failed(cls, due, started, exception_kind(exc), retried), None
            if cls.keepalive and reusable:
                self._pool.give_back(conn)
            else:
                conn.close()
            latency = self.clock() - due
            record = Record(
                due,
                cls.name,
                answer.status,
                answer.kind,
                latency,
                answer.cache,
                retried,
                started - due,
                cls.signin,
            )
            return record, answer
        raise AssertionError("unreachable: the second attempt never raises _BeforeAnswer")

    def _failed(
        self, cls: RequestClass, due: float, started: float, kind: str, retried: str = ""
    ) -> Record:
        return Record(
            due, cls.name, 0, kind, self.clock() - due, "", retried, started - due, cls.signin
        )
