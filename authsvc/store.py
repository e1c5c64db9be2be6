"""The auth servers' `Store` (users, throttles, revocations, the user-change feed) and its
SQLite implementation, one file shared by every auth server process on one host.

`Store` is what `authsvc.app` calls; `authsvc.pgstore` implements it on PostgreSQL for a
fleet spread over hosts, and `authsvc.engines` opens whichever ``Auth_store`` names. The
records and errors below are the contract both keep (tests/authsvc/test_store_contract.py
runs the same tests against both).

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

The schema and its migration live in `authsvc.migrations`. Opening a file already at the
current version writes nothing (it used to run the schema in a write transaction at every
start), so a restarted auth server never queues behind the other servers' writes, for up to
the busy timeout, before it listens.

Users are found by their canonical name (`authsvc.names.fold_username`), computed here so
that every caller, the servers and the operator's ``authsvc grant``, agrees on it. A role
change or deletion is written together with a row of ``user_changes`` in one transaction:
the feed a proxy polls can never miss a change that took effect.

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
from typing import Any, Protocol, TypeVar

from authsvc.migrations import SCHEMA_VERSION, migrate, schema_version
from authsvc.names import fold_username
from authsvc.throttle import Counter

_T = TypeVar("_T")

DEFAULT_POOL_SIZE = 4
_BUSY_TIMEOUT_S = 5.0
_WRITE_ATTEMPTS = 5
# Both engines keep these. Revocations of tokens that expired this long ago are deleted:
# every proxy has dropped them.
REVOCATION_GRACE_S = 60
MAX_ROWS_PER_PAGE = 1000  # of the revocation and user-change feeds

# A proxy's cached verdict lives at most 300 s (proxy.auth.VerdictCache.max_age_s): a change
# older than this cannot concern any verdict still cached, so its row may go.
USER_CHANGE_RETENTION_S = 3600


class UsernameTaken(Exception):
    """A signup for a name that exists: the client's choice collides (409)."""


class StoreBusy(Exception):
    """The database stayed locked through every retry: we could not decide (503)."""


class StoreUnavailable(StoreBusy):
    """The database server could not be reached or broke the connection (503)."""


@dataclass(frozen=True, slots=True)
class UserRecord:
    """``username`` is the canonical name (the token's ``sub``); ``display`` as first typed."""

    username: str
    password_hash: str
    role: str
    display: str = ""


@dataclass(frozen=True, slots=True)
class CounterUpdate:
    """Replace the counter at ``key`` by ``apply(current)``; the row may be deleted once
    ``keep_s`` has passed since its latest event."""

    key: str
    apply: Callable[[Counter | None], Counter]
    keep_s: float


@dataclass(frozen=True, slots=True)
class Revocation:
    seq: int
    jti: str
    exp: int


class Store(Protocol):
    """Users, throttle counters, revocations and the user-change feed, shared by every auth
    server of a fleet. Every method blocks (the app runs them in worker threads); every
    write is durable when it returns; `StoreBusy` means "could not decide, try later"."""

    migration_report: list[str]

    def create_user(
        self,
        username: str,
        password_hash: str,
        role: str = "user",
        *,
        counters: tuple[CounterUpdate, ...] = (),
    ) -> None: ...
    def get_user(self, username: str) -> UserRecord | None: ...
    def list_users(self) -> list[UserRecord]: ...
    def update_password_hash(self, username: str, password_hash: str) -> None: ...
    def set_role(self, username: str, role: str) -> str | None: ...
    def delete_user(self, username: str) -> str | None: ...
    def user_changes_since(self, cursor: int) -> tuple[int, list[str]]: ...
    def count_users(self) -> int: ...
    def read_counters(self, keys: tuple[str, ...]) -> dict[str, Counter]: ...
    def update_counters(self, updates: tuple[CounterUpdate, ...]) -> dict[str, Counter]: ...
    def delete_counters(self, keys: tuple[str, ...]) -> None: ...
    def revoke(self, jti: str, exp: int) -> None: ...
    def is_revoked(self, jti: str) -> bool: ...
    def revocations_since(self, cursor: int) -> tuple[int, list[Revocation]]: ...
    def close(self) -> None: ...
    def statistics(self) -> dict[str, object]: ...


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


class UserStore:
    """The SQLite `Store`: a thread-safe facade over one file; every public method blocks."""

    def __init__(
        self,
        path: str | Path,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        clock: Callable[[], float] = time.time,
        busy_timeout_s: float = _BUSY_TIMEOUT_S,
    ) -> None:
        self._path = str(path)
        self._clock = clock
        self._busy_timeout_s = busy_timeout_s
        self._idle: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
        self._all: list[sqlite3.Connection] = []
        self._pool_size = pool_size
        self._lock = threading.Lock()
        self._busy_retries = 0
        self._writes = 0
        self._closed = False
        # What the migration found that an operator must resolve (look-alike usernames).
        self.migration_report: list[str] = []
        with self._connection() as conn:
            current = schema_version(conn)
        if current != SCHEMA_VERSION:
            self.migration_report = self._write(migrate)

    # -- connections -----------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout_s,
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
    def create_user(
        self,
        username: str,
        password_hash: str,
        role: str = "user",
        *,
        counters: tuple[CounterUpdate, ...] = (),
    ) -> None:
        """Insert a user; raise ``UsernameTaken`` if the name, or a look-alike, exists.
        ``counters`` (the signup throttle) change in the same transaction. Durable on return."""
        canonical = fold_username(username)
        if not canonical:
            raise ValueError("a username must keep a character once normalised")
        now = self._clock()

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO users (username, canonical, password_hash, role, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (username, canonical, password_hash, role, now),
            )
            self._apply_counters(conn, counters, now)

        try:
            self._write(insert)
        except sqlite3.IntegrityError:
            raise UsernameTaken(username) from None

    def get_user(self, username: str) -> UserRecord | None:
        """The user whose canonical name is that of ``username``."""
        canonical = fold_username(username)
        if not canonical:
            return None
        with self._connection() as conn:
            row = conn.execute(
                "SELECT canonical, password_hash, role, username FROM users WHERE canonical = ?",
                (canonical,),
            ).fetchone()
        return None if row is None else UserRecord(*row)

    def list_users(self) -> list[UserRecord]:
        """Every user, shadowed look-alikes (canonical NULL, shown as '') included."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT coalesce(canonical, ''), password_hash, role, username FROM users"
                " ORDER BY created_at, rowid"
            ).fetchall()
        return [UserRecord(*row) for row in rows]

    def update_password_hash(self, username: str, password_hash: str) -> None:
        self._write(
            lambda conn: conn.execute(
                "UPDATE users SET password_hash = ? WHERE canonical = ?",
                (password_hash, fold_username(username)),
            )
        )

    def set_role(self, username: str, role: str) -> str | None:
        """Give the user ``role``; its canonical name, or None if there is no such user. The
        change reaches every proxy through `user_changes_since`."""
        return self._change_user(username, "UPDATE users SET role = ? WHERE rowid = ?", role)

    def delete_user(self, username: str) -> str | None:
        """Delete the user (found by canonical name, or by the exact stored name for a shadowed
        look-alike); its name, or None if there is no such user."""
        return self._change_user(username, "DELETE FROM users WHERE rowid = ?")

    def _change_user(self, username: str, statement: str, *params: str) -> str | None:
        now = self._clock()

        def change(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT rowid, coalesce(canonical, username) FROM users"
                " WHERE canonical = ? OR username = ? ORDER BY canonical IS NULL LIMIT 1",
                (fold_username(username), username),
            ).fetchone()
            if row is None:
                return None
            rowid, name = row
            conn.execute(statement, (*params, rowid))
            conn.execute(
                "INSERT INTO user_changes (username, changed_at) VALUES (?, ?)", (name, now)
            )
            conn.execute(
                "DELETE FROM user_changes WHERE changed_at < ?", (now - USER_CHANGE_RETENTION_S,)
            )
            return str(name)

        return self._write(change)

    def user_changes_since(self, cursor: int) -> tuple[int, list[str]]:
        """Canonical names changed after ``cursor`` (one page) and the cursor to send next."""
        cursor, rows = self._feed_page("user_changes", "username", cursor)
        return cursor, [name for _, name in rows]

    def count_users(self) -> int:
        with self._connection() as conn:
            (count,) = conn.execute("SELECT count(*) FROM users").fetchone()
        return int(count)

    # -- throttle counters -----------------------------------------------------------------
    def read_counters(self, keys: tuple[str, ...]) -> dict[str, Counter]:
        """The live counters among ``keys`` (absent ones are not in the answer)."""
        now = self._clock()
        marks = ",".join("?" * len(keys))
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT key, count, first_at, last_at FROM counters"
                f" WHERE key IN ({marks}) AND expires_at >= ?",
                (*keys, now),
            ).fetchall()
        return {key: Counter(count, first, last) for key, count, first, last in rows}

    def update_counters(self, updates: tuple[CounterUpdate, ...]) -> dict[str, Counter]:
        """Apply ``updates`` in one transaction; the new counters."""
        now = self._clock()
        return self._write(lambda conn: self._apply_counters(conn, updates, now))

    def delete_counters(self, keys: tuple[str, ...]) -> None:
        marks = ",".join("?" * len(keys))
        self._write(lambda conn: conn.execute(f"DELETE FROM counters WHERE key IN ({marks})", keys))

    @staticmethod
    def _apply_counters(
        conn: sqlite3.Connection, updates: tuple[CounterUpdate, ...], now: float
    ) -> dict[str, Counter]:
        out: dict[str, Counter] = {}
        for update in updates:
            row = conn.execute(
                "SELECT count, first_at, last_at FROM counters WHERE key = ? AND expires_at >= ?",
                (update.key, now),
            ).fetchone()
            new = update.apply(None if row is None else Counter(*row))
            conn.execute(
                "INSERT OR REPLACE INTO counters (key, count, first_at, last_at, expires_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (update.key, new.count, new.first_at, new.last_at, new.last_at + update.keep_s),
            )
            out[update.key] = new
        if updates:
            conn.execute("DELETE FROM counters WHERE expires_at < ?", (now,))
        return out

    # -- revocations -----------------------------------------------------------------------
    def revoke(self, jti: str, exp: int) -> None:
        """Record that ``jti`` is revoked until ``exp``; revoking twice is a no-op."""
        now = self._clock()

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO revocations (jti, exp, revoked_at) VALUES (?, ?, ?)",
                (jti, exp, now),
            )
            conn.execute("DELETE FROM revocations WHERE exp < ?", (now - REVOCATION_GRACE_S,))

        self._write(insert)

    def is_revoked(self, jti: str) -> bool:
        with self._connection() as conn:
            row = conn.execute("SELECT 1 FROM revocations WHERE jti = ?", (jti,)).fetchone()
        return row is not None

    def revocations_since(self, cursor: int) -> tuple[int, list[Revocation]]:
        """Revocations after ``cursor`` (oldest first, one page) and the cursor to send next."""
        cursor, rows = self._feed_page("revocations", "jti, exp", cursor)
        return cursor, [Revocation(*row) for row in rows]

    def _feed_page(
        self, table: str, columns: str, cursor: int
    ) -> tuple[int, list[tuple[Any, ...]]]:
        """Rows of a feed table after ``cursor`` (``seq`` first, one page) and the cursor to
        send next. A cursor beyond the newest row means the file was replaced: start over
        from 0 so a proxy never silently skips the new file's rows."""
        with self._connection() as conn:
            (newest,) = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {table}").fetchone()
            if cursor > newest:
                cursor = 0
            rows = conn.execute(
                f"SELECT seq, {columns} FROM {table} WHERE seq > ? ORDER BY seq LIMIT ?",
                (cursor, MAX_ROWS_PER_PAGE),
            ).fetchall()
        return (rows[-1][0] if rows else cursor), rows

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
                "engine": "sqlite",
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
