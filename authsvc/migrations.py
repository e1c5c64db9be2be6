"""The auth database's schema, its version, and the one migration from the original layout.

``PRAGMA user_version`` holds the schema version. A process that opens a file already at
`SCHEMA_VERSION` only reads that pragma: it takes no write lock, so an auth server restarted
while the others are writing is listening as soon as its imports are done (see
`authsvc.store`). Otherwise the migration runs inside the caller's ``BEGIN IMMEDIATE`` and
re-reads the version there, so when four servers start on one old file, one migrates and
three find nothing to do.

Version 1 (every file written before usernames were normalised) had ``users`` keyed by the
name as typed. Version 2 adds:

- ``users.canonical``: `authsvc.names.fold_username` of the name, under a unique index, so
  look-alikes (``Alice``, fullwidth ``alice``, ``alice\\u200b``) are one user. Existing rows whose
  folded names clash keep the oldest (by ``created_at``) as the owner of the name; the later
  ones get NULL (they can no longer sign in) and are reported, so an operator can delete or
  rename them (``authsvc delete-user``). A name that folds to nothing is reported the same way.
- ``user_changes``: a feed of usernames whose role changed or who were deleted, polled by
  proxies with the revocation feed so a cached verdict follows the user's current state.
- ``counters``: the fleet-wide sign-in and signup throttles (`authsvc.throttle`).
"""

from __future__ import annotations

import sqlite3

from authsvc.names import fold_username

SCHEMA_VERSION = 2

_TABLES = """
CREATE TABLE IF NOT EXISTS users (
    username      TEXT PRIMARY KEY,
    canonical     TEXT,
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
CREATE TABLE IF NOT EXISTS user_changes (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    username   TEXT NOT NULL,
    changed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS user_changes_by_time ON user_changes (changed_at);
CREATE TABLE IF NOT EXISTS counters (
    key        TEXT PRIMARY KEY,
    count      INTEGER NOT NULL,
    first_at   REAL NOT NULL,
    last_at    REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS counters_by_expiry ON counters (expires_at);
"""
_CANONICAL_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS users_by_canonical ON users (canonical)"


def schema_version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _fill_canonical(conn: sqlite3.Connection) -> list[str]:
    """Give every existing user its canonical name; the clashes and failures, described."""
    report: list[str] = []
    owners: dict[str, str] = {}
    rows = conn.execute(
        "SELECT username FROM users WHERE canonical IS NULL ORDER BY created_at, rowid"
    ).fetchall()
    for (username,) in rows:
        canonical = fold_username(username)
        if not canonical:
            report.append(f"user {username!r}: the name is empty once normalised; cannot sign in")
            continue
        owner = owners.get(canonical)
        if owner is None:
            taken = conn.execute(
                "SELECT username FROM users WHERE canonical = ?", (canonical,)
            ).fetchone()
            owner = taken[0] if taken else None
        if owner is not None:
            report.append(
                f"user {username!r} looks like the older user {owner!r} (both {canonical!r});"
                " it can no longer sign in: delete or rename it"
            )
            continue
        owners[canonical] = username
        conn.execute("UPDATE users SET canonical = ? WHERE username = ?", (canonical, username))
    return report


def migrate(conn: sqlite3.Connection) -> list[str]:
    """Bring the file to `SCHEMA_VERSION` inside the caller's write transaction; returns what
    an operator must know (clashing usernames), [] when there is nothing to say."""
    if schema_version(conn) >= SCHEMA_VERSION:
        return []
    for statement in _TABLES.split(";"):
        if statement.strip():
            conn.execute(statement)
    if "canonical" not in _columns(conn, "users"):
        conn.execute("ALTER TABLE users ADD COLUMN canonical TEXT")
    report = _fill_canonical(conn)
    conn.execute(_CANONICAL_INDEX)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return report
