"""Access logs: one JSON line per request (or per ELB connection), written off the hot path.

`RequestNote` is the small record a request carries while a process answers it: whoever
knows a field sets it (the route resolution the service and route, the forward the upstream
and its retries, the auth filter the user, a rate limit ``rate_limited``), and the server loop
turns it into a line after the response is sent. It holds only what the server cannot see for
itself; a field nobody set is logged as its default. Issue 11's filters set ``route`` and
``rate_limited`` on ``ex.note``; nothing else needs to change for their fields to appear.

`AccessLog` keeps encoded lines in memory and writes them in one ``write(2)`` at least every
second (`AccessLog.run`), when a megabyte is waiting, and at drain (`AccessLog.close`); a
request costs an encode and a list append, never a system call. SIGHUP reopens the file
(logrotate's ``postrotate``: move the file, send SIGHUP, the next flush goes to a new file).

A request's query may carry secrets (``?access_token=``, OAuth's RFC 6750 2.3): values of
parameters with a token-like name are replaced by ``REDACTED`` before a path is logged, and the
user is the token's subject, never the token.
"""

from __future__ import annotations

import os
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import msgspec
import structlog
import trio

log = structlog.get_logger()

FLUSH_INTERVAL_S = 1.0
FLUSH_BYTES = 1 << 20

_SECRET_PARAM = re.compile(
    r"(?i)(?:^|[?&;])((?:access_|id_|refresh_|auth|session)?token|api_?key|key|password|passwd|"
    r"secret|client_secret|signature|sig|code|jwt|auth|authorization)=([^&;#]*)"
)


def redact_target(target: str) -> str:
    """``target`` with the values of token-like query parameters replaced by ``REDACTED``."""
    if "?" not in target or "=" not in target:
        return target
    path, _, query = target.partition("?")
    redacted = _SECRET_PARAM.sub(_redact_match, "?" + query)
    return path + redacted


def _redact_match(m: re.Match[str]) -> str:
    whole = m.group(0)
    return whole[: m.start(2) - m.start(0)] + "REDACTED"


_second_cache: list[object] = [-1, ""]


def rfc3339_ms(t: float) -> str:
    """``2026-12-02T12:00:00.123Z``: RFC 3339 in UTC with milliseconds. The text of the
    second is made once per second (strftime was the line's most expensive step)."""
    second = int(t)
    if _second_cache[0] != second:
        _second_cache[0] = second
        _second_cache[1] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{_second_cache[1]}.{int((t - second) * 1000):03d}Z"


class RequestNote:
    """What the application learnt about a request, for its access-log line and metrics.

    ``service``/``region``: where it was routed (``-``: nowhere); ``route``: the route that
    matched (issue 11); ``upstream``: the instance (or other region's ELB) of the last try;
    ``retries``: tries after the first; ``upstream_ms``: from the first try to the response
    head; ``user``: the token's subject; ``rate_limited``: a rate limit refused or delayed it;
    ``error``: the JSON error kind we answered; ``trace_id``: W3C trace id (`httpio.trace`);
    ``request_id``: the X-Request-ID this hop used; ``failed_tries``: (instance, outcome) of
    each try that got no answer, in order (``gateway_upstream_attempts_total`` counts them
    against their instance; ``upstream`` is the instance of the try after the last of them);
    ``refused``: the server loop refused it before any handler ran (`httpio.server`)."""

    __slots__ = (
        "error",
        "failed_tries",
        "rate_limited",
        "refused",
        "region",
        "request_id",
        "retries",
        "route",
        "service",
        "trace_id",
        "upstream",
        "upstream_ms",
        "user",
    )

    def __init__(self) -> None:
        self.service = "-"
        self.region = "-"
        self.route = "-"
        self.upstream = "-"
        self.retries = 0
        self.upstream_ms: float | None = None
        self.user = "-"
        self.rate_limited = False
        self.error = "-"
        self.trace_id = "-"
        self.request_id = "-"
        self.failed_tries: tuple[tuple[str, str], ...] = ()
        self.refused = False

    def __repr__(self) -> str:
        return f"<RequestNote {self.service} upstream={self.upstream} error={self.error}>"


class AccessLine(msgspec.Struct, frozen=True, omit_defaults=False):
    """One request as its access-log line has it (the field order is the line's)."""

    time: str
    request_id: str
    trace_id: str
    client_ip: str
    method: str
    path: str
    status: int
    bytes_in: int
    bytes_out: int
    duration_ms: float
    upstream_ms: float | None
    service: str
    region: str
    route: str
    upstream: str
    retries: int
    cache: str
    user: str
    rate_limited: bool
    error: str
    user_agent: str


_encode = msgspec.json.Encoder().encode


class AccessLog:
    """Buffered JSON lines to ``path`` (``"-"``: standard output). ``write`` is all a request
    costs; `run` flushes every second, `close` at drain, `reopen` after logrotate."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self.lines_written = 0
        self.flushes = 0
        self.write_errors = 0
        self._file: IO[bytes] | None = None
        self._open()

    def __repr__(self) -> str:
        return f"<AccessLog {self.path} pending={len(self._pending)} written={self.lines_written}>"

    def statistics(self) -> dict[str, object]:
        return {
            "path": self.path,
            "pending": len(self._pending),
            "lines_written": self.lines_written,
            "flushes": self.flushes,
            "write_errors": self.write_errors,
        }

    def _open(self) -> None:
        if self.path == "-":
            self._file = sys.stdout.buffer
            return
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self._file = os.fdopen(fd, "ab", buffering=0)

    def write(self, line: msgspec.Struct) -> None:
        data = _encode(line) + b"\n"
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self._pending or self._file is None:
            return
        data = b"".join(self._pending)
        count = len(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        try:
            self._file.write(data)
            if self.path == "-":
                self._file.flush()
        except OSError as exc:
            self.write_errors += 1
            log.error("access_log_write_failed", path=self.path, error=str(exc))
            return
        self.lines_written += count
        self.flushes += 1

    def reopen(self) -> None:
        """Flush to the old file, then open ``path`` anew (it may have been moved away)."""
        self.flush()
        if self.path != "-" and self._file is not None:
            self._file.close()
        self._open()

    def close(self) -> None:
        self.flush()
        if self.path != "-" and self._file is not None:
            self._file.close()
        self._file = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Flush every `FLUSH_INTERVAL_S` and reopen on SIGHUP, until cancelled; what is left
        is flushed on the way out (cancellation at drain included)."""
        import signal

        try:
            with trio.open_signal_receiver(signal.SIGHUP) as hups:
                task_status.started()
                while True:
                    with trio.move_on_after(FLUSH_INTERVAL_S):
                        async for _ in hups:
                            self.reopen()
                            log.info("access_log_reopened", path=self.path)
                    self.flush()
        finally:
            self.flush()


class Tee:
    """Every line to each of ``sinks`` (the JSON file and the SQLite database)."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks

    def write(self, line: msgspec.Struct) -> None:
        for sink in self.sinks:
            sink.write(line)


def open_access_log(spec: str | None) -> AccessLog | None:
    """``--access-log PATH|-|off`` (None: off)."""
    if spec is None or spec == "off":
        return None
    return AccessLog(spec)


def now_rfc3339() -> str:
    return rfc3339_ms(time.time())
