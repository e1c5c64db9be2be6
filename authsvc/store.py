"""Users and revoked token ids in one SQLite file shared by every auth server process.

The original kept users in PostgreSQL. The fleet runs four auth servers on one host, so a
single SQLite file (stdlib, no daemon) is enough if it is used with care:

- ``journal_mode=WAL``: readers (sign-in, introspection) never block on the one writer, and
  the mode is persistent in the file so every process agrees.
- Writes run in ``BEGIN IMMEDIATE`` transactions: the write lock is taken up front, so two
  processes never both read then both fail to upgrade (the deadlock a deferred transaction can
  hit, which SQLite reports as SQLITE_BUSY at once, ignoring the busy timeout).
- ``busy_timeout`` (5 s) makes SQLite itself wait for the lock; if that still fails we retry
  the whole transaction a few times before reporting ``StoreBusy`` (503, never a lost write).
- ``synchronous=FULL``: each commit is fsynced before we answer, so an acknowledged signup
  survives a killed process *and* a power cut. NORMAL would survive a killed process too (the
  WAL is already in the OS page cache) but not a power cut; the fsync costs a few ms next to
  the ~24 ms scrypt every signup pays anyway, so we take the stronger promise.

Revocations get an ``INTEGER PRIMARY KEY AUTOINCREMENT`` sequence that doubles as the cursor
proxies poll with. SQLite has one writer at a time and a row's sequence number is assigned
inside the write transaction, so numbers become visible in order, with no gap that fills later
(unlike a PostgreSQL sequence): "everything after cursor N" never misses a row.

The store is synchronous; the app calls it through ``trio.to_thread.run_sync`` with a
``CapacityLimiter`` sized like the connection pool here, so a worker thread never waits for a
connection. sqlite3 connections must not be used by two threads at once, so each call borrows
one from the small pool below and returns it.
"""

from __future__ import annotations

import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")

DEFAULT_POOL_SIZE = 4
_BUSY_TIMEOUT_S = 5.0
_WRITE_ATTEMPTS = 5
# Revocations of tokens that expired this long ago are deleted: every proxy has dropped them.
_REVOCATION_GRACE_S = 60
_MAX_REVOCATIONS_PER_PAGE = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    username      TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_at    REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    jti        TEXT NOT NULL UNIQUE,
    exp        INTEGER NOT NULL,
    revoked_at REAL NOT NULL
);
"""


class UsernameTaken(Exception):
    """A signup for a name that exists: the client's choice collides (409)."""


class StoreBusy(Exception):
    """The database stayed locked through every retry: we could not decide (503)."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    username: str
    password_hash: str
    role: str


@dataclass(frozen=True, slots=True)
class Revocation:
    seq: int
    jti: str
    exp: int


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


class UserStore:
    """Thread-safe facade over one SQLite file; every public method blocks."""

    def __init__(
        self,
        path: str | Path,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._path = str(path)
        self._clock = clock
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._all: list[sqlite3.Connection] = []
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._busy_retries = 0
        self._writes = 0
        self._closed = False
        self._write(self._create_schema)

    @staticmethod
    def _create_schema(conn: sqlite3.Connection) -> None:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)

    # -- connections -----------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path,
            timeout=_BUSY_TIMEOUT_S,
            isolation_level=None,  # we issue BEGIN ourselves
            check_same_thread=False,  # the pool hands it to one thread at a time
        )
        try:
            # Switching to WAL needs a lock too: several processes start together.
            for attempt in range(_WRITE_ATTEMPTS):
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    if not _is_busy(exc) or attempt == _WRITE_ATTEMPTS - 1:
                        raise
                    time.sleep(0.05 * (attempt + 1))
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise StoreBusy("store is closed")
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = len(self._all) < self._pool_size
                if grow:
                    conn = self._open()
                    self._all.append(conn)
            if not grow:
                conn = self._idle.get()
        try:
            yield conn
        finally:
            self._idle.put(conn)

    def _write(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` in an IMMEDIATE transaction, retrying it whole on SQLITE_BUSY."""
        with self._connection() as conn:
            for attempt in range(_WRITE_ATTEMPTS):
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    result = work(conn)
                    conn.execute("COMMIT")
                except sqlite3.OperationalError as exc:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    if not _is_busy(exc):
                        raise
                    with self._lock:
                        self._busy_retries += 1
                    time.sleep(0.01 * (attempt + 1))
                    continue
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                with self._lock:
                    self._writes += 1
                return result
        raise StoreBusy(f"database {self._path} stayed locked through {_WRITE_ATTEMPTS} tries")

    # -- users -----------------------------------------------------------------------------
    def create_user(self, username: str, password_hash: str, role: str) -> None:
        """Insert a user; raise ``UsernameTaken`` if the name exists. Durable on return."""

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO users (username, password_hash, role, created_at) VALUES (?, ?, ?, ?)",
                (username, password_hash, role, self._clock()),
            )

        try:
            self._write(insert)
        except sqlite3.IntegrityError:
            raise UsernameTaken(username) from None

    def get_user(self, username: str) -> UserRecord | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT username, password_hash, role FROM users WHERE username = ?",
                (username,),
            ).fetchone()
        return None if row is None else UserRecord(*row)

    def update_password_hash(self, username: str, password_hash: str) -> None:
        self._write(
            lambda conn: conn.execute(
                "UPDATE users SET password_hash = ? WHERE username = ?",
                (password_hash, username),
            )
        )

    def count_users(self) -> int:
        with self._connection() as conn:
            (count,) = conn.execute("SELECT count(*) FROM users").fetchone()
        return int(count)

    # -- revocations -----------------------------------------------------------------------
    def revoke(self, jti: str, exp: int) -> None:
        """Record that ``jti`` is revoked until ``exp``; revoking twice is a no-op."""
        now = self._clock()

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO revocations (jti, exp, revoked_at) VALUES (?, ?, ?)",
                (jti, exp, now),
            )
            conn.execute("DELETE FROM revocations WHERE exp < ?", (now - _REVOCATION_GRACE_S,))

        self._write(insert)

    def is_revoked(self, jti: str) -> bool:
        with self._connection() as conn:
            row = conn.execute("SELECT 1 FROM revocations WHERE jti = ?", (jti,)).fetchone()
        return row is not None

    def revocations_since(self, cursor: int) -> tuple[int, list[Revocation]]:
        """Revocations after ``cursor`` (oldest first, one page) and the cursor to send next.

        A cursor beyond the newest row means the file was replaced: start over from 0 so a
        proxy never silently skips the new file's revocations.
        """
        with self._connection() as conn:
            (newest,) = conn.execute("SELECT coalesce(max(seq), 0) FROM revocations").fetchone()
            if cursor > newest:
                cursor = 0
            rows = conn.execute(
                "SELECT seq, jti, exp FROM revocations WHERE seq > ? ORDER BY seq LIMIT ?",
                (cursor, _MAX_REVOCATIONS_PER_PAGE),
            ).fetchall()
        revoked = [Revocation(*row) for row in rows]
        return (revoked[-1].seq if revoked else cursor), revoked

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._all = self._all, []
        for conn in conns:
            conn.close()

    def statistics(self) -> dict[str, object]:
        with self._lock:
            return {
                "path": self._path,
                "connections": len(self._all),
                "idle_connections": self._idle.qsize(),
                "writes": self._writes,
                "busy_retries": self._busy_retries,
            }

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<UserStore {self._path!r} connections={stats['connections']}"
            f" writes={stats['writes']} busy_retries={stats['busy_retries']}>"
        )
