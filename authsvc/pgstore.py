"""The `Store` on PostgreSQL, for a fleet whose auth servers run on several hosts.

The same tables as the SQLite file (`authsvc.migrations`), the same canonical usernames
(`authsvc.names.fold_username`, computed here in Python so both engines fold alike, under a
unique index), the same feeds, and the same answers: tests/authsvc/test_store_contract.py
runs one set of tests against both.

The driver is psycopg 3 (C implementation, ``psycopg[binary]``), called from trio worker
threads, as the SQLite store is: the app already sends every store call through
``trio.to_thread.run_sync`` behind a ``CapacityLimiter`` as large as the pool, so no thread
waits for a connection. The pool is the few lines the SQLite store has (a LIFO queue of
connections opened on demand), not ``psycopg_pool``: measured here on one thread, a
checkout + ``SELECT`` + return cost 0.5-2.3 ms through ``psycopg_pool.ConnectionPool`` (its
condition variables and worker threads) against 0.2-0.3 ms through a queue, on a query of
0.3-0.9 ms over loopback. Writes run in pipeline mode (``conn.pipeline()``): BEGIN, the
INSERT and the lock are sent together, which took a signup's write from ~16 to ~10 ms
(fsync on). Why not an async driver: asyncpg and psycopg's async mode
are asyncio (and anyio) only; trio-asyncio would put a second event loop in every auth
server for a handful of queries per sign-in, each of which costs ~0.1-0.3 ms next to the
~25 ms argon2id hash every sign-in pays anyway. A thread hop costs ~50 us. ``bench/hosts.py``
measures signins and signups per second on both engines in one run.

What PostgreSQL does differently, and what we do about it:

- Reads run on autocommit connections (one round trip, no BEGIN/COMMIT); writes run in
  ``conn.transaction()``. ``synchronous_commit`` is the server's (on by default): a signup
  is on the server's disk when we answer, as with SQLite's ``synchronous=FULL``.
- A sequence number is taken at INSERT but becomes visible at COMMIT, so two writers can
  commit 7 after 8 and a proxy that polled "after 7" would miss 8's neighbour forever. Every
  write to a feed table first takes a transaction-scoped advisory lock of that feed, so
  numbers are assigned and committed one writer at a time, in order (feed writes are
  signouts and operator commands: rare). SQLite gets this for free from its one writer.
- SQLite's ``BEGIN IMMEDIATE`` serialises every read-modify-write of a throttle counter.
  Here a counter update first takes an advisory lock of its key, so two signups from one
  address cannot both read "19 of 20" and both pass.
- Migrations: ``schema_version`` holds the version; a process finding it current writes
  nothing; otherwise the migration runs in one transaction (PostgreSQL DDL is
  transactional) under an advisory lock, and re-reads the version there, so of several auth
  servers starting together one migrates and the others find nothing to do.
- A connection lost (server restarted, network cut) is `StoreUnavailable`, a 503; a read is
  retried once on a fresh connection first, a write is not (it may have committed).
  Serialization failures and deadlocks are retried whole, as SQLITE_BUSY is.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors

from authsvc.names import fold_username
from authsvc.store import (
    DEFAULT_POOL_SIZE,
    MAX_ROWS_PER_PAGE,
    REVOCATION_GRACE_S,
    USER_CHANGE_RETENTION_S,
    CounterUpdate,
    Revocation,
    StoreBusy,
    StoreUnavailable,
    UsernameTaken,
    UserRecord,
)
from authsvc.throttle import Counter

_T = TypeVar("_T")

SCHEMA_VERSION = 1
_WRITE_ATTEMPTS = 5
# How long a call waits for a pooled connection. The app's limiter is as large as the pool, so
# its calls never wait; more threads than connections (operator tools, tests) queue, and on a
# loaded machine a queue of a few 10 ms writes can take seconds: only a stuck pool should fail.
_POOL_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 5
# Advisory lock keys (one namespace, 64-bit): the migration and the two feeds.
_MIGRATION_LOCK = 0x67770001
_FEED_LOCKS = {"revocations": 0x67770002, "user_changes": 0x67770003}

_MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE users (
    id            BIGSERIAL UNIQUE,
    username      TEXT PRIMARY KEY,
    canonical     TEXT UNIQUE,
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL,
    created_at    DOUBLE PRECISION NOT NULL
);
CREATE TABLE revocations (
    seq        BIGSERIAL PRIMARY KEY,
    jti        TEXT NOT NULL UNIQUE,
    exp        BIGINT NOT NULL,
    revoked_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX revocations_by_exp ON revocations (exp);
CREATE TABLE user_changes (
    seq        BIGSERIAL PRIMARY KEY,
    username   TEXT NOT NULL,
    changed_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX user_changes_by_time ON user_changes (changed_at);
CREATE TABLE counters (
    key        TEXT PRIMARY KEY,
    count      BIGINT NOT NULL,
    first_at   DOUBLE PRECISION NOT NULL,
    last_at    DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX counters_by_expiry ON counters (expires_at);
""",
}
_RETRIED = (pg_errors.SerializationFailure, pg_errors.DeadlockDetected)


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for logs and ``/stats``."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class PostgresStore:
    """The PostgreSQL `Store`; every public method blocks."""

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        clock: Callable[[], float] = time.time,
        start_timeout_s: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._clock = clock
        self._lock = threading.Lock()
        self._stats = {"writes": 0, "retries": 0, "unavailable": 0}
        self.migration_report: list[str] = []
        self._pool_size = pool_size
        self._idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self._open = 0  # connections that exist, idle or lent
        self._closed = False
        deadline = time.monotonic() + start_timeout_s
        for attempt in range(1, 1_000_000):  # bounded by the deadline
            try:
                self._migrate()
                break
            except StoreUnavailable:
                # the database host may come up after this one: wait for it, then give up
                if time.monotonic() + 0.2 * attempt > deadline:
                    self.close()
                    raise
                time.sleep(min(0.2 * attempt, 1.0))

    # -- connections -------------------------------------------------------------------------
    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self._dsn, autocommit=True, connect_timeout=_CONNECT_TIMEOUT_S)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A connection of the pool, lent to one thread: at most ``pool_size`` exist, opened
        on demand; one that broke, or was left inside a transaction, is closed, not reused."""
        if self._closed:
            raise StoreUnavailable("store is closed")
        try:
            conn = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = self._open < self._pool_size
                self._open += grow
            if grow:
                try:
                    conn = self._connect()
                except BaseException:
                    with self._lock:
                        self._open -= 1
                    raise
            else:
                try:
                    conn = self._idle.get(timeout=_POOL_TIMEOUT_S)
                except queue.Empty:
                    raise StoreUnavailable("no free connection to the user database") from None
        try:
            yield conn
        finally:
            idle = conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
            if self._closed or conn.broken or conn.closed or not idle:
                self._discard(conn)
            else:
                self._idle.put(conn)

    def _discard(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            self._open -= 1
        with contextlib.suppress(psycopg.Error):
            conn.close()

    def _drop_idle(self) -> None:
        """After a lost connection: the others were very likely lost with it."""
        while True:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                return
            self._discard(conn)

    # -- plumbing ----------------------------------------------------------------------------
    def _count(self, name: str) -> None:
        with self._lock:
            self._stats[name] += 1

    def _read(self, work: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """``work`` on an autocommit connection; retried once if the connection was lost."""
        for attempt in (1, 2):
            try:
                with self._connection() as conn:
                    return work(conn)
            except psycopg.OperationalError as exc:
                self._drop_idle()
                if attempt == 2:
                    self._count("unavailable")
                    raise StoreUnavailable(f"user database: {exc}") from None
                self._count("retries")
        raise AssertionError("unreachable")

    def _write(self, work: Callable[[psycopg.Connection[Any]], _T]) -> _T:
        """``work`` in one transaction, retried whole on a serialization failure."""
        for _ in range(_WRITE_ATTEMPTS):
            try:
                with self._connection() as conn, conn.pipeline(), conn.transaction():
                    result = work(conn)
            except _RETRIED:
                self._count("retries")
                continue
            except psycopg.OperationalError as exc:
                self._drop_idle()
                self._count("unavailable")
                raise StoreUnavailable(f"user database: {exc}") from None
            self._count("writes")
            return result
        raise StoreBusy(f"user database: conflicting writes through {_WRITE_ATTEMPTS} tries")

    def _migrate(self) -> None:
        def current(conn: psycopg.Connection[Any]) -> int:
            exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
            if not (exists and exists[0]):
                return 0
            row = conn.execute("SELECT max(version) FROM schema_version").fetchone()
            return int(row[0]) if row and row[0] is not None else 0

        if self._read(current) >= SCHEMA_VERSION:
            return

        def migrate(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            found = current(conn)
            for step in range(found + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[step].split(";"):
                    if statement.strip():
                        conn.execute(statement.encode())
            if found < SCHEMA_VERSION:
                conn.execute("DELETE FROM schema_version")
                conn.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))

        self._write(migrate)

    # -- users -------------------------------------------------------------------------------
    def create_user(
        self,
        username: str,
        password_hash: str,
        role: str = "user",
        *,
        counters: tuple[CounterUpdate, ...] = (),
    ) -> None:
        canonical = fold_username(username)
        if not canonical:
            raise ValueError("a username must keep a character once normalised")
        now = self._clock()

        def insert(conn: psycopg.Connection[Any]) -> None:
            conn.execute(
                "INSERT INTO users (username, canonical, password_hash, role, created_at)"
                " VALUES (%s, %s, %s, %s, %s)",
                (username, canonical, password_hash, role, now),
            )
            self._apply_counters(conn, counters, now)

        try:
            self._write(insert)
        except pg_errors.UniqueViolation:
            raise UsernameTaken(username) from None

    def get_user(self, username: str) -> UserRecord | None:
        canonical = fold_username(username)
        if not canonical:
            return None
        row = self._read(
            lambda conn: conn.execute(
                "SELECT canonical, password_hash, role, username FROM users WHERE canonical = %s",
                (canonical,),
            ).fetchone()
        )
        return None if row is None else UserRecord(*row)

    def list_users(self) -> list[UserRecord]:
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT coalesce(canonical, ''), password_hash, role, username FROM users"
                " ORDER BY created_at, id"
            ).fetchall()
        )
        return [UserRecord(*row) for row in rows]

    def update_password_hash(self, username: str, password_hash: str) -> None:
        self._write(
            lambda conn: conn.execute(
                "UPDATE users SET password_hash = %s WHERE canonical = %s",
                (password_hash, fold_username(username)),
            )
        )

    def set_role(self, username: str, role: str) -> str | None:
        return self._change_user(username, "UPDATE users SET role = %s WHERE id = %s", role)

    def delete_user(self, username: str) -> str | None:
        return self._change_user(username, "DELETE FROM users WHERE id = %s")

    def _change_user(self, username: str, statement: str, *params: str) -> str | None:
        now = self._clock()

        def change(conn: psycopg.Connection[Any]) -> str | None:
            row = conn.execute(
                "SELECT id, coalesce(canonical, username) FROM users"
                " WHERE canonical = %s OR username = %s ORDER BY canonical IS NULL LIMIT 1"
                " FOR UPDATE",
                (fold_username(username), username),
            ).fetchone()
            if row is None:
                return None
            user_id, name = row
            conn.execute(statement.encode(), (*params, user_id))
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_FEED_LOCKS["user_changes"],))
            conn.execute(
                "INSERT INTO user_changes (username, changed_at) VALUES (%s, %s)", (name, now)
            )
            conn.execute(
                "DELETE FROM user_changes WHERE changed_at < %s", (now - USER_CHANGE_RETENTION_S,)
            )
            return str(name)

        return self._write(change)

    def user_changes_since(self, cursor: int) -> tuple[int, list[str]]:
        cursor, rows = self._feed_page("user_changes", "username", cursor)
        return cursor, [name for _, name in rows]

    def count_users(self) -> int:
        row = self._read(lambda conn: conn.execute("SELECT count(*) FROM users").fetchone())
        return int(row[0]) if row else 0

    # -- throttle counters -------------------------------------------------------------------
    def read_counters(self, keys: tuple[str, ...]) -> dict[str, Counter]:
        now = self._clock()
        rows = self._read(
            lambda conn: conn.execute(
                "SELECT key, count, first_at, last_at FROM counters"
                " WHERE key = ANY(%s) AND expires_at >= %s",
                (list(keys), now),
            ).fetchall()
        )
        return {key: Counter(count, first, last) for key, count, first, last in rows}

    def update_counters(self, updates: tuple[CounterUpdate, ...]) -> dict[str, Counter]:
        now = self._clock()
        return self._write(lambda conn: self._apply_counters(conn, updates, now))

    def delete_counters(self, keys: tuple[str, ...]) -> None:
        self._write(
            lambda conn: conn.execute("DELETE FROM counters WHERE key = ANY(%s)", (list(keys),))
        )

    @staticmethod
    def _apply_counters(
        conn: psycopg.Connection[Any], updates: tuple[CounterUpdate, ...], now: float
    ) -> dict[str, Counter]:
        out: dict[str, Counter] = {}
        for update in sorted(updates, key=lambda u: u.key):  # one lock order: no deadlock
            conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (update.key,))
            row = conn.execute(
                "SELECT count, first_at, last_at FROM counters WHERE key = %s AND expires_at >= %s",
                (update.key, now),
            ).fetchone()
            new = update.apply(None if row is None else Counter(*row))
            conn.execute(
                "INSERT INTO counters (key, count, first_at, last_at, expires_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET"
                " count = excluded.count, first_at = excluded.first_at,"
                " last_at = excluded.last_at, expires_at = excluded.expires_at",
                (update.key, new.count, new.first_at, new.last_at, new.last_at + update.keep_s),
            )
            out[update.key] = new
        if updates:
            conn.execute("DELETE FROM counters WHERE expires_at < %s", (now,))
        return out

    # -- revocations -------------------------------------------------------------------------
    def revoke(self, jti: str, exp: int) -> None:
        now = self._clock()

        def insert(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_FEED_LOCKS["revocations"],))
            conn.execute(
                "INSERT INTO revocations (jti, exp, revoked_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (jti) DO NOTHING",
                (jti, exp, now),
            )
            conn.execute("DELETE FROM revocations WHERE exp < %s", (now - REVOCATION_GRACE_S,))

        self._write(insert)

    def is_revoked(self, jti: str) -> bool:
        row = self._read(
            lambda conn: conn.execute("SELECT 1 FROM revocations WHERE jti = %s", (jti,)).fetchone()
        )
        return row is not None

    def revocations_since(self, cursor: int) -> tuple[int, list[Revocation]]:
        cursor, rows = self._feed_page("revocations", "jti, exp", cursor)
        return cursor, [Revocation(*row) for row in rows]

    def _feed_page(
        self, table: str, columns: str, cursor: int
    ) -> tuple[int, list[tuple[Any, ...]]]:
        """As the SQLite store's: a cursor beyond the newest row (the database was replaced)
        starts over from 0."""

        def read(conn: psycopg.Connection[Any]) -> tuple[int, list[tuple[Any, ...]]]:
            row = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {table}".encode()).fetchone()
            newest = int(row[0]) if row else 0
            start = 0 if cursor > newest else cursor
            rows = conn.execute(
                f"SELECT seq, {columns} FROM {table} WHERE seq > %s ORDER BY seq LIMIT %s".encode(),
                (start, MAX_ROWS_PER_PAGE),
            ).fetchall()
            return (int(rows[-1][0]) if rows else start), rows

        return self._read(read)

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self) -> None:
        self._closed = True
        self._drop_idle()

    def statistics(self) -> dict[str, object]:
        with self._lock:
            return {
                "engine": "postgresql",
                "dsn": redact_dsn(self._dsn),
                "connections": self._open,
                "idle_connections": self._idle.qsize(),
                **self._stats,
            }

    def __repr__(self) -> str:
        s = self.statistics()
        return (
            f"<PostgresStore {s['dsn']!r} connections={s['connections']}"
            f" writes={s['writes']} unavailable={s['unavailable']}>"
        )
