"""The ``authsvc`` command line: the operator's commands, and a server started by hand."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from authsvc.engines import open_store
from authsvc.main import main, run_command
from authsvc.store import UserStore
from tests.support.pgproc import PostgresProcess
from tests.support.polling import wait_for
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_grant_delete_and_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "auth.db")
    store = UserStore(db)
    store.create_user("Alice", "h")
    store.close()
    assert run_command(["grant", "--db", db, "ALICE", "admin"]) == 0
    assert capsys.readouterr().out == "alice: role admin\n"
    assert run_command(["users", "--db", db]) == 0
    assert capsys.readouterr().out == "alice\tadmin\n"
    assert run_command(["grant", "--db", db, "nobody", "admin"]) == 1
    assert "no user 'nobody'" in capsys.readouterr().err
    assert run_command(["grant", "--db", db, "alice", "bad role!"]) == 2
    assert run_command(["delete-user", "--db", db, "alice"]) == 0
    assert run_command(["delete-user", "--db", db, "alice"]) == 1
    reopened = UserStore(db)
    assert reopened.get_user("alice") is None
    assert reopened.user_changes_since(0)[1] == ["alice", "alice"]


def test_commands_need_the_database(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["grant", "alice", "admin"])
    assert "--db" in capsys.readouterr().err


def test_server_without_a_key_says_where_one_comes_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["0", "--db", str(tmp_path / "auth.db")])  # the packaged config.json: no key
    assert info.value.code == 2
    assert "fleet" in capsys.readouterr().err


def health(port: int) -> dict[str, object] | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return None
    return json.loads(data.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


@contextmanager
def authsvc_process(config: Path, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """``authsvc PORT --config CONFIG`` started by hand, ready; its port and log. Stopped by
    its PID with SIGTERM."""
    port = free_port()
    log = tmp_path / "authsvc.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "authsvc.main",
                str(port),
                "--config",
                str(config),
                "--db",
                str(tmp_path / "auth.db"),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(
            lambda: proc.poll() is not None or health(port) is not None,
            timeout_s=30,
            what="authsvc answering /health",
        )
        assert proc.poll() is None, log.read_text()
        yield port, log
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_the_originals_config_runs_loudly(tmp_path: Path) -> None:
    """``Auth_key: private_key``: the server starts, logs an error and says so on /health."""
    config = ROOT / "tests" / "topology" / "data" / "config.json"
    with authsvc_process(config, tmp_path) as (port, log):
        answer = health(port)
        assert answer is not None
        warnings = answer["warnings"]
        assert isinstance(warnings, list) and "published" in warnings[0]
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    weak = [line for line in lines if line["event"] == "auth_key_weak"]
    assert weak and weak[0]["level"] == "error"


def test_the_server_limits_of_config_json_apply(tmp_path: Path) -> None:
    """``Server`` in config.json bounds the auth server's listener as it bounds a proxy's."""
    config = tmp_path / "config.json"
    key = {"kid": "k", "secret": "s" * 32}
    config.write_text(json.dumps({"Auth_keys": [key], "Server": {"max_head_bytes": 2048}}))
    with authsvc_process(config, tmp_path) as (port, _):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            filler = b"x-filler: " + b"a" * 3000 + b"\r\n"
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + filler + b"\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert json.loads(body)["error"] == "headers_too_large"


def test_operator_commands_on_postgresql(
    postgres: PostgresProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = postgres.create_database("operator_commands")
    store = open_store(dsn)
    store.create_user("Bob", "h")
    store.close()
    assert run_command(["grant", "--store", dsn, "BOB", "admin"]) == 0
    assert capsys.readouterr().out == "bob: role admin\n"
    assert run_command(["users", "--store", dsn]) == 0
    assert capsys.readouterr().out == "bob\tadmin\n"
    assert run_command(["grant", "--store", dsn, "nobody", "admin"]) == 1
    err = capsys.readouterr().err
    assert "no user 'nobody'" in err and postgres.password not in err
    assert run_command(["users", "--store", "mysql://nope"]) == 2
