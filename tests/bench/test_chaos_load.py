"""The load generator of `make chaos` against a real HTTP server on a free port: what it
records for answers, gateway errors, refused connections, signins, and keep-alive
connections the server closed while they sat in the pool."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.chaos_fleet import free_ports
from bench.chaos_load import LoadGenerator, Record, RequestClass

DEADLINE_S = 15.0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, str]] = []

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, close_after: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Cache", "HIT")
        self.end_headers()
        self.wfile.write(body)
        # close_after: keep-alive as far as the client can tell, then gone
        self.close_connection = close_after

    def do_GET(self) -> None:
        Handler.seen.append(("GET", self.path, self.headers.get("Authorization", "")))
        if self.path == "/ok":
            self._answer(200, b"ok")
        elif self.path == "/stale":
            self._answer(200, b"ok", close_after=True)
        elif self.path == "/down":
            self._answer(503, b'{"status": 503, "error": "no_healthy_instance", "detail": ""}')
        else:
            self._answer(200, b"page")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        Handler.seen.append(("POST", self.path, body.decode()))
        self._answer(200, json.dumps({"token": "fresh-token"}).encode())


@pytest.fixture
def server() -> Iterator[int]:
    Handler.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(httpd.server_address[1])
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def run_until(gen: LoadGenerator, count: int) -> list[Record]:
    gen.start()
    try:
        deadline = time.monotonic() + DEADLINE_S
        while len(gen.records()) < count and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        gen.stop(drain_s=5.0)
    records = gen.records()
    assert len(records) >= count, gen
    return records


def generator(port: int, classes: list[RequestClass], **kw: object) -> LoadGenerator:
    return LoadGenerator(
        "127.0.0.1",
        port,
        classes,
        rate=50,
        token="bench-token",
        signin_body=b'{"username": "u", "password": "p"}',
        timeout_s=5.0,
        **kw,  # type: ignore[arg-type]
    )


def test_answers_and_gateway_errors_are_recorded_with_their_kind(server):
    gen = generator(
        server,
        [RequestClass("ok", "/ok", keepalive=True), RequestClass("down", "/down", False)],
    )
    records = run_until(gen, 10)
    ok = [r for r in records if r.cls == "ok"]
    down = [r for r in records if r.cls == "down"]
    assert ok and all(r.status == 200 and not r.failed and r.cache == "HIT" for r in ok)
    assert down and all(r.kind == "503 no_healthy_instance" for r in down)
    assert all(r.latency_s >= 0 and r.start_delay_s >= 0 for r in records)
    assert all(auth == "Bearer bench-token" for m, _, auth in Handler.seen if m == "GET")


def test_due_times_follow_the_rate_whatever_the_answers(server):
    records = run_until(generator(server, [RequestClass("ok", "/ok", keepalive=True)]), 10)
    due = sorted(r.t for r in records)
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(due)}
    assert gaps == {0.02}  # 1 / 50 req/s: the schedule, not the answers, sets the times


def test_a_pooled_connection_the_server_closed_is_retried_once_and_marked(server):
    records = run_until(generator(server, [RequestClass("stale", "/stale", keepalive=True)]), 6)
    assert all(not r.failed and r.status == 200 for r in records)
    assert any(r.retried for r in records)
    assert {r.retried for r in records} <= {"", "closed_no_answer", "conn_reset", "broken_pipe"}


def test_a_refused_connection_is_a_failure_of_its_own_kind():
    (port,) = free_ports(1)
    records = run_until(generator(port, [RequestClass("new", "/ok", keepalive=False)]), 3)
    assert {r.kind for r in records} == {"conn_refused"}
    assert all(r.status == 0 for r in records)


def test_a_signin_is_followed_by_one_request_with_its_new_token(server):
    gen = generator(server, [RequestClass("signin", "/auth/signin", False, signin=True)])
    records = run_until(gen, 4)
    classes = {r.cls for r in records}
    assert classes == {"signin", "signin+token"}
    posts = [s for s in Handler.seen if s[0] == "POST"]
    assert posts and all(p[1] == "/auth/signin" and '"username"' in p[2] for p in posts)
    gets = [s for s in Handler.seen if s[0] == "GET"]
    assert gets and all(auth == "Bearer fresh-token" for _, _, auth in gets)


def test_new_urls_get_a_counter(server):
    run_until(generator(server, [RequestClass("new", "/page?n={n}", keepalive=True)]), 5)
    paths = [p for m, p, _ in Handler.seen if m == "GET"]
    assert len(set(paths)) == len(paths) >= 5
