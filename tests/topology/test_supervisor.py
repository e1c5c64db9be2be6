"""Supervision: backoff arithmetic (pure), readiness probes against in-process servers, and
real child processes (tiny Python one-liners) started, restarted and stopped. Nothing waits
on a clock: tests wait on the supervisor's state with a deadline."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest
import trio

from httpio.lifeline import Backoff
from httpio.messages import Request, Response, json_response
from httpio.run import serve_tcp
from tests.support.polling import wait_until
from tests.support.ports import free_port
from topology.supervisor import (
    ChildSpec,
    State,
    Supervisor,
    describe_exit,
    probe_once,
    read_log_tail,
)


def test_describe_exit():
    assert describe_exit(0) == "status 0"
    assert describe_exit(3) == "status 3"
    assert describe_exit(-signal.SIGKILL) == "signal SIGKILL"


def test_read_log_tail(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert read_log_tail(log, lines=2) == "line 98\nline 99"
    assert read_log_tail(tmp_path / "absent.log") == ""


# -- probes ------------------------------------------------------------------------------------
def spec(port: int, probe: str = "http", argv=None, log: Path | None = None) -> ChildSpec:
    return ChildSpec("x", "test", port, argv, log or Path("/dev/null"), probe)  # type: ignore[arg-type]


async def test_http_probe_wants_200_from_health(nursery):
    healthy = True

    async def handler(request: Request) -> Response:
        ok = request.path == "/health" and healthy
        return json_response(200 if ok else 503, {"ok": ok})

    port = await nursery.start(serve_tcp, handler, 0)
    assert await probe_once(spec(port))
    healthy = False
    assert not await probe_once(spec(port))


async def test_probes_fail_on_a_closed_port():
    port = free_port()
    for probe in ("http", "redis", "tcp"):
        assert not await probe_once(spec(port, probe))


async def test_redis_probe_wants_pong(nursery):
    async def fake_redis(stream: trio.SocketStream) -> None:
        async with stream:
            if await stream.receive_some(100) == b"PING\r\n":
                await stream.send_all(b"+PONG\r\n")

    listeners = await nursery.start(trio.serve_tcp, fake_redis, 0)
    port = listeners[0].socket.getsockname()[1]
    assert await probe_once(spec(port, "redis"))
    assert not await probe_once(spec(port, "http"))  # "+PONG" is no status line


# -- real children -----------------------------------------------------------------------------
LISTEN = (
    "import signal, socket, sys, time\n"
    "if sys.argv[2] == 'ignore-term': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
    "print('listening', flush=True)\n"
    "time.sleep(3600)\n"
)


def listener(tmp_path: Path, name: str, mode: str = "normal") -> ChildSpec:
    port = free_port()
    argv = (sys.executable, "-c", LISTEN, str(port), mode)
    return ChildSpec(name, "test", port, argv, tmp_path / f"{name}.log", "tcp")


def fast_backoff() -> Backoff:
    return Backoff(initial_s=0.01, max_s=0.05)


async def test_children_start_restart_and_stop(tmp_path):
    lines: list[str] = []
    first, second = listener(tmp_path, "first"), listener(tmp_path, "second")
    sup = Supervisor([[first], [second]], out=lines.append, backoff=fast_backoff)
    async with trio.open_nursery() as nursery:
        await sup.start(nursery)
        assert sup.problems() == []
        assert [c.state for c in sup.children] == [State.RUNNING, State.RUNNING]
        assert "running=2" in repr(sup)
        pid = sup.child("first").pid
        assert pid is not None
        sup.send_signal("first", signal.SIGKILL)
        new_pid = await sup.wait_running("first", not_pid=pid, timeout_s=10)
        assert new_pid != pid
        assert sup.statistics()["first"] == {"state": "running", "pid": new_pid, "restarts": 1}
        assert any("first: exited with signal SIGKILL" in line for line in lines)
        processes = [c.process for c in sup.children]
        await sup.stop()
    assert [c.state for c in sup.children] == [State.STOPPED, State.STOPPED]
    assert all(p is not None and p.returncode is not None for p in processes)
    log = (tmp_path / "first.log").read_text().splitlines()
    assert sum(line.startswith("--- fleet: starting") for line in log) == 2
    assert log.count("listening") == 2


async def test_a_child_that_dies_at_start_is_reported_with_its_log(tmp_path):
    lines: list[str] = []
    argv = (sys.executable, "-c", "import sys; print('no config here'); sys.exit(3)")
    broken = ChildSpec("broken", "test", free_port(), argv, tmp_path / "broken.log", "tcp")
    healthy = listener(tmp_path, "healthy")
    missing = ChildSpec("missing", "test", 1, None, tmp_path / "m.log", missing="not built")
    sup = Supervisor([[broken, missing], [healthy]], out=lines.append)
    async with trio.open_nursery() as nursery:
        await sup.start(nursery)
        assert {c.spec.name: c.state for c in sup.children} == {
            "broken": State.FAILED,
            "missing": State.MISSING,
            "healthy": State.RUNNING,
        }
        assert sup.child("broken").error == "exited with status 3 before it was ready"
        assert sup.child("missing").error == "not built"
        await sup.stop()
    text = "\n".join(lines)
    assert "broken: FAILED: exited with status 3" in text
    assert "    no config here" in text
    assert "missing: not started: not built" in text


async def test_a_child_that_never_gets_ready_is_stopped(tmp_path):
    lines: list[str] = []
    argv = (sys.executable, "-c", "import time; time.sleep(3600)")
    silent = ChildSpec("silent", "test", free_port(), argv, tmp_path / "s.log", "tcp")
    sup = Supervisor([[silent]], out=lines.append, ready_timeout_s=0.3)
    async with trio.open_nursery() as nursery:
        await sup.start(nursery)
        child = sup.child("silent")
        assert child.state is State.FAILED and child.pid is None
        assert child.error.startswith("not ready after 0.3s")
        await sup.stop()


async def test_sigkill_after_the_grace_period(tmp_path):
    lines: list[str] = []
    stubborn = listener(tmp_path, "stubborn", mode="ignore-term")
    sup = Supervisor([[stubborn]], out=lines.append, grace_s=0.2)
    async with trio.open_nursery() as nursery:
        await sup.start(nursery)
        process = sup.child("stubborn").process
        await sup.stop()
    assert process is not None and process.returncode == -signal.SIGKILL
    assert any("SIGKILL" in line for line in lines)


async def test_wait_running_gives_up_at_its_deadline(tmp_path):
    sup = Supervisor([[spec(1, argv=None)]], out=lambda line: None)
    async with trio.open_nursery() as nursery:
        await sup.start(nursery)
        with pytest.raises(trio.TooSlowError):
            await sup.wait_running("x", timeout_s=0.05)
        await sup.stop()


SERVE_INHERITED = (
    "import os, socket, sys\n"
    "s = socket.socket(fileno=int(sys.argv[sys.argv.index('--listen-fd') + 1]))\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.sendall(b'%d' % os.getpid())\n"
    "    c.close()\n"
)


async def test_a_listening_child_keeps_its_socket_across_restarts(tmp_path):
    """While it is down (a crash, then the backoff), connections wait in the backlog of the
    socket the supervisor holds, and its next incarnation answers them."""
    port = free_port()
    argv = (sys.executable, "-c", SERVE_INHERITED)
    server = ChildSpec("srv", "test", port, argv, tmp_path / "srv.log", "tcp", listen=True)
    sup = Supervisor([[server]], out=lambda line: None, backoff=lambda: Backoff(0.3, 0.3))
    async with trio.open_nursery() as nursery:
        await sup.start(nursery)
        child = sup.child("srv")
        first = child.pid
        assert first is not None and child.standby is not None
        sup.send_signal("srv", signal.SIGKILL)
        await wait_until(lambda: child.state is State.BACKOFF)
        assert child.pid is None  # nothing runs on the port now ...
        stream = await trio.open_tcp_stream("127.0.0.1", port)  # ... and yet it connects
        async with stream:
            with trio.fail_after(10):
                answer = await stream.receive_some(100)
        assert int(answer) == child.pid != first
        await sup.stop()
    assert child.standby is None
    with pytest.raises(OSError):
        await trio.open_tcp_stream("127.0.0.1", port)
