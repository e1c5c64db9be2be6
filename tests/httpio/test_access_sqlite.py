import sqlite3

import trio

from httpio.access_log import AccessLine
from httpio.access_sqlite import SqliteAccessLog
from tests.support.polling import wait_until


def a_line(status: int = 200) -> AccessLine:
    return AccessLine(
        "t", "id", "-", "127.0.0.1", "GET", "/x", status, 0, 5, 1.5, None,
        "svc", "r", "-", "-", 0, "HIT", "-", False, "-", "ua",
    )  # fmt: skip


def test_batches_are_inserted_in_wal_mode(tmp_path):
    sink = SqliteAccessLog(tmp_path / "access.sqlite3")
    for status in (200, 404):
        sink.write(a_line(status))
    assert sink.statistics()["pending"] == 2
    sink.flush()
    db = sqlite3.connect(tmp_path / "access.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("SELECT status, cache, duration_ms FROM access").fetchall() == [
        (200, "HIT", 1.5),
        (404, "HIT", 1.5),
    ]
    db.close()
    sink.close()


async def test_run_inserts_from_a_worker_thread_and_on_the_way_out(tmp_path):
    sink = SqliteAccessLog(tmp_path / "a.sqlite3")
    async with trio.open_nursery() as nursery:
        await nursery.start(sink.run)
        sink.write(a_line())
        await wait_until(lambda: sink.rows_written == 1)
        sink.write(a_line())
        nursery.cancel_scope.cancel()
    assert sink.rows_written == 2
    sink.close()
