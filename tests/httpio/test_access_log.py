import json
import os

import trio

from httpio import access_log
from httpio.access_log import AccessLog, RequestNote, redact_target, rfc3339_ms


def test_token_like_query_values_are_redacted():
    assert redact_target("/a?access_token=abc&x=1") == "/a?access_token=REDACTED&x=1"
    assert (
        redact_target("/a?x=1&API_KEY=s3cret;token=t") == "/a?x=1&API_KEY=REDACTED;token=REDACTED"
    )
    assert redact_target("/a?password=p&id_token=j#f") == "/a?password=REDACTED&id_token=REDACTED#f"
    assert redact_target("/a?tokens=1&monkey=2") == "/a?tokens=1&monkey=2"
    assert redact_target("/plain") == "/plain"


def test_time_is_rfc3339_utc_with_milliseconds():
    assert rfc3339_ms(0.1234) == "1970-01-01T00:00:00.123Z"


def test_lines_wait_in_memory_until_a_flush(tmp_path):
    path = tmp_path / "a.log"
    log = AccessLog(path)
    log.write(a_line())
    assert path.read_bytes() == b""  # no system call per request
    log.flush()
    assert json.loads(path.read_text())["path"] == "/x"
    assert log.statistics()["lines_written"] == 1
    log.close()


def test_a_megabyte_waiting_is_written_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(access_log, "FLUSH_BYTES", 1000)
    log = AccessLog(tmp_path / "a.log")
    for _ in range(10):
        log.write(a_line())
    assert log.lines_written >= 1
    log.close()


def test_reopen_follows_a_rotated_file(tmp_path):
    path = tmp_path / "a.log"
    log = AccessLog(path)
    log.write(a_line())
    os.rename(path, tmp_path / "a.log.1")
    log.reopen()  # what SIGHUP does: flush into the old file, then open the path anew
    log.write(a_line())
    log.close()
    assert len((tmp_path / "a.log.1").read_text().splitlines()) == 1
    assert len(path.read_text().splitlines()) == 1


async def test_run_flushes_within_a_second_and_on_the_way_out(tmp_path, autojump_clock):
    path = tmp_path / "a.log"
    log = AccessLog(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(log.run)
        log.write(a_line())
        await trio.sleep(access_log.FLUSH_INTERVAL_S + 0.01)
        assert len(path.read_text().splitlines()) == 1
        log.write(a_line())
        nursery.cancel_scope.cancel()
    assert len(path.read_text().splitlines()) == 2
    log.close()


def test_a_note_nobody_filled_in_logs_dashes():
    note = RequestNote()
    assert (note.service, note.upstream, note.user, note.error, note.retries) == (
        "-",
        "-",
        "-",
        "-",
        0,
    )


def a_line() -> access_log.AccessLine:
    return access_log.AccessLine(
        "t", "id", "-", "127.0.0.1", "GET", "/x", 200, 0, 5, 1.0, None,
        "svc", "r", "-", "-", 0, "-", "-", False, "-", "ua",
    )  # fmt: skip
