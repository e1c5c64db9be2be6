from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from authsvc.store import CounterUpdate, UsernameTaken, UserStore
from authsvc.throttle import Counter

ROOT = Path(__file__).resolve().parents[2]


def test_create_and_get(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "auth.db")
    store.create_user("alice", "$scrypt$hash", "admin")
    user = store.get_user("alice")
    assert user is not None and (user.username, user.password_hash, user.role) == (
        "alice",
        "$scrypt$hash",
        "admin",
    )
    assert store.get_user("bob") is None
    with pytest.raises(UsernameTaken):
        store.create_user("alice", "other", "user")
    store.update_password_hash("alice", "$scrypt$new")
    assert store.get_user("alice").password_hash == "$scrypt$new"  # type: ignore[union-attr]
    assert "writes=" in repr(store) and store.statistics()["connections"] == 1
    store.close()


def test_wal_mode_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    UserStore(path).create_user("alice", "h", "user")
    reopened = UserStore(path)
    assert reopened.get_user("alice") is not None
    with reopened._connection() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_revocation_cursor(tmp_path: Path) -> None:
    now = [1000.0]
    store = UserStore(tmp_path / "auth.db", clock=lambda: now[0])
    assert store.revocations_since(0) == (0, [])
    store.revoke("j1", 2000)
    store.revoke("j2", 2000)
    store.revoke("j1", 2000)  # twice is a no-op
    cursor, revoked = store.revocations_since(0)
    assert [r.jti for r in revoked] == ["j1", "j2"] and cursor == revoked[-1].seq
    assert store.revocations_since(cursor) == (cursor, [])
    store.revoke("j3", 2000)
    cursor2, revoked = store.revocations_since(cursor)
    assert [r.jti for r in revoked] == ["j3"] and cursor2 > cursor
    assert store.is_revoked("j2") and not store.is_revoked("nope")
    # A cursor from a replaced database file starts the caller over.
    assert [r.jti for r in store.revocations_since(cursor2 + 100)[1]] == ["j1", "j2", "j3"]
    # Long-expired revocations are pruned on the next write.
    now[0] = 5000.0
    store.revoke("j4", 9000)
    assert [r.jti for r in store.revocations_since(0)[1]] == ["j4"]


def test_threads_share_a_small_pool(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "auth.db", pool_size=2)
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for i in range(25):
                store.create_user(f"t{k}-{i}", "h", "user")
                assert store.get_user(f"t{k}-{i}") is not None
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.count_users() == 200
    assert store.statistics()["connections"] in (1, 2)


def _signup_worker(path: str, worker: int, count: int, start: Any) -> None:
    store = UserStore(path)
    start.wait()
    for i in range(count):
        store.create_user(f"w{worker}-{i}", "h", "user")
        try:
            store.create_user("contended", "h", f"w{worker}")
        except UsernameTaken:
            pass
    store.close()


def test_four_processes_lose_no_signup(tmp_path: Path) -> None:
    path = str(tmp_path / "auth.db")
    UserStore(path).close()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    procs = [ctx.Process(target=_signup_worker, args=(path, k, 50, start)) for k in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    store = UserStore(path)
    assert store.count_users() == 4 * 50 + 1
    for k in range(4):
        for i in range(50):
            assert store.get_user(f"w{k}-{i}") is not None


def test_killed_process_loses_no_acknowledged_signup(tmp_path: Path) -> None:
    path = str(tmp_path / "auth.db")
    child = textwrap.dedent(
        f"""
        import sys
        from authsvc.store import UserStore
        store = UserStore({path!r})
        i = 0
        while True:
            store.create_user(f"u{{i}}", "h", "user")
            sys.stdout.write(f"u{{i}}\\n")
            sys.stdout.flush()
            i += 1
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout is not None
    acknowledged = [proc.stdout.readline().strip() for _ in range(30)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    acknowledged += [line.strip() for line in proc.stdout if line.strip()]
    proc.stdout.close()
    store = UserStore(path)
    assert acknowledged and all(store.get_user(name) for name in acknowledged)


# -- start-up, look-alikes, operator changes, throttle counters ------------------------------
def test_opening_a_current_file_takes_no_write_lock(tmp_path: Path) -> None:
    """A restarted auth server must not queue behind the others' writes before it listens
    (issue 9 item 6): with the write lock held elsewhere, opening still succeeds at once."""
    path = tmp_path / "auth.db"
    UserStore(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        store = UserStore(path, busy_timeout_s=0.01)
        assert store.get_user("nobody") is None and store.statistics()["writes"] == 0
        store.close()
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_look_alike_usernames_are_one_user(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "auth.db")
    store.create_user("Alice", "h", "user")
    for twin in ("alice", "ALICE", "\uff41\uff4c\uff49\uff43\uff45", "alice\u200b"):
        with pytest.raises(UsernameTaken):
            store.create_user(twin, "h2", "user")
        user = store.get_user(twin)
        assert user is not None and (user.username, user.display) == ("alice", "Alice")
    with pytest.raises(ValueError):
        store.create_user("\u200b", "h", "user")
    assert store.get_user("\u200b") is None and store.count_users() == 1


def test_role_changes_and_deletions_feed_the_proxies(tmp_path: Path) -> None:
    now = [1000.0]
    store = UserStore(tmp_path / "auth.db", clock=lambda: now[0])
    store.create_user("alice", "h")
    store.create_user("bob", "h")
    assert store.get_user("alice").role == "user"  # type: ignore[union-attr]
    assert store.user_changes_since(0) == (0, [])
    assert store.set_role("ALICE", "admin") == "alice"
    assert store.get_user("alice").role == "admin"  # type: ignore[union-attr]
    assert store.delete_user("bob") == "bob" and store.get_user("bob") is None
    assert store.set_role("nobody", "admin") is None and store.delete_user("nobody") is None
    cursor, changed = store.user_changes_since(0)
    assert changed == ["alice", "bob"]
    assert store.user_changes_since(cursor) == (cursor, [])
    assert store.user_changes_since(cursor + 50)[1] == ["alice", "bob"]  # replaced file
    now[0] += 3601  # old changes concern no cached verdict any more
    store.set_role("alice", "user")
    assert store.user_changes_since(0)[1] == ["alice"]


def test_throttle_counters_update_in_one_transaction_and_expire(tmp_path: Path) -> None:
    now = [1000.0]
    store = UserStore(tmp_path / "auth.db", clock=lambda: now[0])
    bump = CounterUpdate("k", lambda c: Counter((c.count if c else 0) + 1, 1.0, now[0]), 10.0)
    other = CounterUpdate("j", lambda c: Counter(7, 2.0, now[0]), 5.0)
    assert store.read_counters(("k", "j")) == {}
    store.update_counters((bump, other))
    assert store.update_counters((bump,)) == {"k": Counter(2, 1.0, 1000.0)}
    assert store.read_counters(("k", "j", "x")) == {
        "k": Counter(2, 1.0, 1000.0),
        "j": Counter(7, 2.0, 1000.0),
    }
    now[0] = 1006.0
    assert store.read_counters(("k", "j")) == {"k": Counter(2, 1.0, 1000.0)}
    store.delete_counters(("k",))
    assert store.read_counters(("k",)) == {}

    def refuse(counter: Counter | None) -> Counter:
        raise RuntimeError("limit reached")

    store.update_counters((bump,))
    with pytest.raises(RuntimeError):
        store.create_user("carol", "h", counters=(CounterUpdate("k", refuse, 10.0),))
    assert store.get_user("carol") is None  # the user and the counter commit together
