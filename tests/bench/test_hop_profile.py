"""`bench.hop_profile`'s readers and its layer attribution, on stacks shaped like the ones
py-spy 0.4 wrote for a proxy under wrk (``--native --format raw``), on a ``strace -c``
summary and on ``perf report --stdio`` output. No process is started."""

from __future__ import annotations

import pytest

from bench import hop_profile
from bench.hop_profile import Frame, break_down, classify, layer_rows, parse_raw

ROOT = (
    "0x7fca1ee4524a (libc.so.6);<module> (proxy:6);main (proxy/main.py:120);"
    "run (trio/_core/_run.py:2532);unrolled_run (trio/_core/_run.py:2866);"
    "HttpServer.serve_connection (httpio/server.py:355);HttpServer._serve (httpio/server.py:404)"
)
FETCH = (
    ROOT + ";HttpServer._respond (httpio/server.py:535);ProxyApp.handle (proxy/app.py:190);"
    "ProxyApp.serve (proxy/app.py:228);ProxyApp.fetch (proxy/app.py:302)"
)
RAW = "\n".join(
    [
        # the server's write of the answer, through sockio
        ROOT + ";HttpServer._respond (httpio/server.py:553);HttpServer._send (httpio/server.py:637)"
        ";HttpServer._write (httpio/server.py:561);try_send (httpio/sockio.py:27)"
        ";os_write (libpython3.11.so.1.0);write (libc.so.6) 40",
        # trio re-registering a socket before it waits
        ROOT + ";HttpServer._read_head (httpio/server.py:468)"
        ";wait_readable (trio/_core/_generated_io_epoll.py:45)"
        ";EpollIOManager._update_registrations (trio/_core/_io_epoll.py:275)"
        ";select_epoll_modify (selectmodule.c.h:739);epoll_ctl (libc.so.6) 10",
        # compiled h11 parsing the upstream's answer
        FETCH + ";UpstreamPool.request (httpio/upstream.py:285)"
        ";UpstreamPool._exchange (httpio/upstream.py:383)"
        ";CPyDef__connection___Connection___next_event (__native_db1f86c1c7b990abb148.c:7000) 30",
        # our own code: the header rewrite, and a clock read below it
        FETCH + ";upstream_request_headers (proxy/forwarding.py:104) 5",
        FETCH + ";new_request_id (httpio/trace.py:36);clock_gettime (libc.so.6) 3",
        # trio's scheduler between tasks
        "0x7fca1ee4524a (libc.so.6);<module> (proxy:6);main (proxy/main.py:120)"
        ";run (trio/_core/_run.py:2532);unrolled_run (trio/_core/_run.py:2800) 8",
        # the cyclic GC, triggered by an allocation inside h11
        FETCH + ";UpstreamPool._exchange (httpio/upstream.py:357)"
        ";CPyDef__connection___Connection___send (__native_db1f86c1c7b990abb148.c:5630)"
        ";gc_collect_main (libpython3.11.so.1.0) 4",
        "not a stack line",
    ]
)


def test_parse_raw_reads_frames_root_first_and_the_count() -> None:
    stacks = parse_raw(RAW)
    assert len(stacks) == 7
    frames, count = stacks[0]
    assert count == 40
    assert frames[1] == Frame("<module>", "proxy:6")
    assert frames[-1] == Frame("write", "libc.so.6")
    assert frames[-3].python_path == "httpio/sockio.py" and frames[-1].python_path is None


def test_each_sample_lands_in_its_layer_with_the_caller_that_asked() -> None:
    layers = [classify(frames) for frames, _ in parse_raw(RAW)]
    assert layers == [
        ("syscall: send", "HttpServer._write"),  # past sockio's wrapper, to who wrote
        ("syscall: epoll_ctl (trio re-registration)", "HttpServer._read_head"),
        ("h11", "UpstreamPool._exchange"),
        ("ours: header rewriting", "upstream_request_headers"),
        ("ours: request ids", "new_request_id"),
        ("trio: scheduling, cancel scopes, checkpoints", "main"),
        ("interpreter: cyclic garbage collector", "UpstreamPool._exchange"),
    ]


def test_pure_h11_frames_count_as_h11() -> None:
    frames = [Frame("HttpServer._read_head", "httpio/server.py:440")]
    frames.append(Frame("Connection.next_event", "h11/_connection.py:470"))
    assert classify(frames) == ("h11", "HttpServer._read_head")


def test_break_down_and_rows_give_shares_and_microseconds() -> None:
    breakdown = break_down(parse_raw(RAW))
    assert breakdown.samples == 100
    assert list(breakdown.layers)[:2] == ["syscall: send", "h11"]  # largest first
    # 50 syscall samples share the 40 us of system time, 50 others the 160 us of user time
    rows = layer_rows(breakdown, user_us=160.0, system_us=40.0)
    assert rows[0] == ("syscall: send", "40.0%", "32.0", "HttpServer._write 100%")
    assert ("h11", "30.0%", "96.0", "UpstreamPool._exchange 100%") in rows
    assert sum(float(row[2]) for row in rows) == pytest.approx(200.0)
    assert layer_rows(breakdown, None, None)[0][2] == "-"


STRACE = """\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 40.12    0.401200           4    100000           write
 30.00    0.300000           3    100010           epoll_ctl
 29.88    0.298800           2     99990        12 read
------ ----------- ----------- --------- --------- ----------------
100.00    1.000000           3    300000        12 total
"""


def test_strace_summary_gives_calls_per_syscall() -> None:
    assert hop_profile.parse_strace_summary(STRACE) == {
        "write": 100000,
        "epoll_ctl": 100010,
        "read": 99990,
    }


PERF = """\
# Samples: 6K of event 'cpu-clock'
#
# Overhead  Shared Object
# ........  ......................
#
    72.02%  libpython3.11.so.1.0
    17.54%  [kernel.kallsyms]
     7.26%  db1f86c1c7b990abb148__mypyc.cpython-311-x86_64-linux-gnu.so
"""


def test_perf_report_rows_in_order() -> None:
    assert hop_profile.parse_perf_report(PERF) == [
        (72.02, "libpython3.11.so.1.0"),
        (17.54, "[kernel.kallsyms]"),
        (7.26, "db1f86c1c7b990abb148__mypyc.cpython-311-x86_64-linux-gnu.so"),
    ]


@pytest.mark.parametrize(
    ("stat", "expected"),
    [
        ("42 (proxy) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0", (2.5, 0.5)),
        ("42 (my proxy (x)) S 1 2 3 4 5 6 7 8 9 10 100 0 0 0", (1.0, 0.0)),
    ],
)
def test_cpu_seconds_reads_user_and_system_ticks(
    stat: str, expected: tuple[float, float], monkeypatch: pytest.MonkeyPatch, tmp_path
) -> None:
    proc = tmp_path / "proc" / "42"
    proc.mkdir(parents=True)
    (proc / "stat").write_text(stat)
    monkeypatch.setattr(hop_profile, "CLOCK_TICKS", 100)
    monkeypatch.setattr(hop_profile, "PROC", tmp_path / "proc")
    assert hop_profile.cpu_seconds(42) == expected
