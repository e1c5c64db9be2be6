"""The auth database's migration from the original layout (names as typed) to version 2."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from authsvc.migrations import SCHEMA_VERSION, schema_version
from authsvc.store import UsernameTaken, UserStore

V1_SCHEMA = """
CREATE TABLE users (
    username TEXT PRIMARY KEY, password_hash TEXT NOT NULL, role TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE revocations (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, jti TEXT NOT NULL UNIQUE, exp INTEGER NOT NULL,
    revoked_at REAL NOT NULL
);
"""


def version_1_file(path: Path, users: list[tuple[str, float]]) -> None:
    conn = sqlite3.connect(path)
    conn.executescript(V1_SCHEMA)
    conn.executemany(
        "INSERT INTO users VALUES (?, ?, 'user', ?)", [(u, f"h-{u}", t) for u, t in users]
    )
    conn.execute("INSERT INTO revocations (jti, exp, revoked_at) VALUES ('j1', 9999999999, 1)")
    conn.commit()
    conn.close()


def test_old_file_gets_canonical_names_and_look_alikes_are_reported(tmp_path: Path) -> None:
    path = tmp_path / "auth.db"
    version_1_file(
        path,
        [
            ("Alice", 2.0),
            ("alice", 1.0),  # the oldest of the three owns the name
            ("alice\u200b", 3.0),
            ("\uff42\uff4f\uff42", 4.0),  # fullwidth bob, alone: keeps working as bob
            ("\u200b", 5.0),  # nothing left once normalised
            ("\u2603snow", 6.0),  # no longer valid at signup, still a user
        ],
    )
    store = UserStore(path)
    report = store.migration_report
    assert len(report) == 3
    assert any("'Alice'" in line and "'alice'" in line for line in report)
    assert any("'alice\\u200b'" in line for line in report)
    assert any("empty once normalised" in line for line in report)
    alice = store.get_user("ALICE")
    assert alice is not None and (alice.username, alice.password_hash) == ("alice", "h-alice")
    bob = store.get_user("Bob")
    assert bob is not None and (bob.username, bob.display) == ("bob", "\uff42\uff4f\uff42")
    assert store.get_user("\u2603SNOW") is not None
    assert store.is_revoked("j1")
    # The unique index now holds: a look-alike of a migrated user cannot sign up.
    with pytest.raises(UsernameTaken):
        store.create_user("BOB", "h", "user")
    listed = {u.display: u.username for u in store.list_users()}
    assert listed["Alice"] == "" and listed["alice"] == "alice"
    store.close()
    # A second start finds nothing to migrate or report.
    again = UserStore(path)
    assert again.migration_report == [] and again.statistics()["writes"] == 0
    with again._connection() as conn:
        assert schema_version(conn) == SCHEMA_VERSION
    again.close()


def test_new_file_is_created_at_the_current_version(tmp_path: Path) -> None:
    store = UserStore(tmp_path / "auth.db")
    assert store.migration_report == []
    with store._connection() as conn:
        assert schema_version(conn) == SCHEMA_VERSION
    store.close()
