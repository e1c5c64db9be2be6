"""The access log's optional SQLite sink, for go-lab's users (``Access_log: {sqlite: PATH}``).

Lines are kept in memory by `SqliteAccessLog.write` (a list append: a request never waits
for SQLite) and inserted in batches, one transaction each, from a worker thread
(`trio.to_thread.run_sync`) at least every second and once more on the way out. The database
is in WAL mode, so ``fleet report`` or an operator's ``sqlite3`` can read it while proxies
write; several proxies of a fleet may share one file (SQLite serialises their batches; the
busy timeout covers a batch of a neighbour). The columns are the JSON line's fields.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import msgspec
import structlog
import trio

from httpio.access_log import FLUSH_INTERVAL_S, AccessLine

log = structlog.get_logger()

COLUMNS = tuple(AccessLine.__struct_fields__)
_TYPES = {"status": "INTEGER", "bytes_in": "INTEGER", "bytes_out": "INTEGER", "retries": "INTEGER",
          "rate_limited": "INTEGER", "duration_ms": "REAL", "upstream_ms": "REAL"}  # fmt: skip
BUSY_TIMEOUT_S = 5.0


def open_database(path: str | Path) -> sqlite3.Connection:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    columns = ", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in COLUMNS)
    db.execute(f"CREATE TABLE IF NOT EXISTS access ({columns})")
    db.execute("CREATE INDEX IF NOT EXISTS access_service_time ON access (service, time)")
    db.commit()
    return db


class SqliteAccessLog:
    """Batches of `AccessLine` into table ``access`` of ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = open_database(path)
        self._lock = threading.Lock()  # one batch at a time (the flush task and close)
        self._pending: list[AccessLine] = []
        self.rows_written = 0
        self.batches = 0
        self.write_errors = 0
        self._insert = (
            f"INSERT INTO access ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
        )

    def __repr__(self) -> str:
        return (
            f"<SqliteAccessLog {self.path} pending={len(self._pending)} rows={self.rows_written}>"
        )

    def statistics(self) -> dict[str, object]:
        return {
            "path": self.path,
            "pending": len(self._pending),
            "rows_written": self.rows_written,
            "batches": self.batches,
            "write_errors": self.write_errors,
        }

    def write(self, line: msgspec.Struct) -> None:
        assert isinstance(line, AccessLine)
        self._pending.append(line)

    def _take(self) -> list[AccessLine]:
        batch, self._pending = self._pending, []
        return batch

    def insert(self, batch: list[AccessLine]) -> None:
        """One transaction for ``batch`` (runs in a worker thread)."""
        if not batch:
            return
        rows = [msgspec.structs.astuple(line) for line in batch]
        with self._lock:
            try:
                with self._db:
                    self._db.executemany(self._insert, rows)
            except sqlite3.Error as exc:
                self.write_errors += 1
                log.error("access_sqlite_failed", path=self.path, error=str(exc), rows=len(rows))
                return
            self.rows_written += len(rows)
            self.batches += 1

    def flush(self) -> None:
        self.insert(self._take())

    def close(self) -> None:
        self.flush()
        self._db.close()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                await trio.sleep(FLUSH_INTERVAL_S)
                await trio.to_thread.run_sync(self.insert, self._take())
        finally:
            self.flush()  # at drain (cancelled): what is left, in this thread
