"""`bench.parse`: the ab and wrk report parsers, on outputs captured from real runs against
the demo backend (normal, non-2xx, length failures, truncated bodies, refused, timed out),
and the table they print."""

from __future__ import annotations

import msgspec
import pytest

from bench.parse import BenchOutputError, format_table, parse_ab, parse_wrk

# -- outputs captured from ab 2.3 and wrk 4 against `backend` (trailing spaces stripped) ------

AB_OK = """\
This is ApacheBench, Version 2.3 <$Revision$>
Copyright 1996 Adam Twiss, Zeus Technology Ltd, http://www.zeustech.net/
Licensed to The Apache Software Foundation, http://www.apache.org/

Benchmarking 127.0.0.1 (be patient)
Completed 300 requests
Completed 600 requests
Completed 900 requests
Completed 1200 requests
Completed 1500 requests
Completed 1800 requests
Completed 2100 requests
Completed 2400 requests
Completed 2700 requests
Completed 3000 requests
Finished 3000 requests


Server Software:
Server Hostname:        127.0.0.1
Server Port:            18500

Document Path:          /index.html
Document Length:        402 bytes

Concurrency Level:      20
Time taken for tests:   0.550 seconds
Complete requests:      3000
Failed requests:        0
Total transferred:      1983000 bytes
HTML transferred:       1206000 bytes
Requests per second:    5450.00 [#/sec] (mean)
Time per request:       3.670 [ms] (mean)
Time per request:       0.183 [ms] (mean, across all concurrent requests)
Transfer rate:          3518.02 [Kbytes/sec] received

Connection Times (ms)
              min  mean[+/-sd] median   max
Connect:        0    0   0.0      0       1
Processing:     1    4   0.3      4       5
Waiting:        0    3   0.3      3       5
Total:          1    4   0.2      4       5

Percentage of the requests served within a certain time (ms)
  50%      4
  66%      4
  75%      4
  80%      4
  90%      4
  95%      4
  98%      4
  99%      4
 100%      5 (longest request)
"""

AB_NON2XX = """\
This is ApacheBench, Version 2.3 <$Revision$>
Copyright 1996 Adam Twiss, Zeus Technology Ltd, http://www.zeustech.net/
Licensed to The Apache Software Foundation, http://www.apache.org/

Benchmarking 127.0.0.1 (be patient)
Finished 500 requests


Server Software:
Server Hostname:        127.0.0.1
Server Port:            18500

Document Path:          /health?status=503
Document Length:        57 bytes

Concurrency Level:      20
Time taken for tests:   0.083 seconds
Complete requests:      500
Failed requests:        0
Non-2xx responses:      500
Total transferred:      100500 bytes
HTML transferred:       28500 bytes
Requests per second:    6033.26 [#/sec] (mean)
Time per request:       3.315 [ms] (mean)
Time per request:       0.166 [ms] (mean, across all concurrent requests)
Transfer rate:          1184.26 [Kbytes/sec] received

Connection Times (ms)
              min  mean[+/-sd] median   max
Connect:        0    0   0.1      0       1
Processing:     1    3   0.4      3       4
Waiting:        0    3   0.5      3       3
Total:          1    3   0.3      3       4

Percentage of the requests served within a certain time (ms)
  50%      3
  66%      3
  75%      3
  80%      3
  90%      3
  95%      3
  98%      4
  99%      4
 100%      4 (longest request)
"""

AB_LENGTH = """\
This is ApacheBench, Version 2.3 <$Revision$>
Copyright 1996 Adam Twiss, Zeus Technology Ltd, http://www.zeustech.net/
Licensed to The Apache Software Foundation, http://www.apache.org/

Benchmarking 127.0.0.1 (be patient)
Finished 1500 requests


Server Software:
Server Hostname:        127.0.0.1
Server Port:            18500

Document Path:          /echo
Document Length:        341 bytes

Concurrency Level:      5
Time taken for tests:   0.317 seconds
Complete requests:      1500
Failed requests:        1491
   (Connect: 0, Receive: 0, Length: 1491, Exceptions: 0)
Total transferred:      706893 bytes
HTML transferred:       514893 bytes
Requests per second:    4733.86 [#/sec] (mean)
Time per request:       1.056 [ms] (mean)
Time per request:       0.211 [ms] (mean, across all concurrent requests)
Transfer rate:          2178.60 [Kbytes/sec] received

Connection Times (ms)
              min  mean[+/-sd] median   max
Connect:        0    0   0.1      0       1
Processing:     0    1   0.3      1       3
Waiting:        0    1   0.3      1       3
Total:          0    1   0.3      1       3

Percentage of the requests served within a certain time (ms)
  50%      1
  66%      1
  75%      1
  80%      1
  90%      1
  95%      2
  98%      2
  99%      2
 100%      3 (longest request)
"""

AB_REFUSED = """\
This is ApacheBench, Version 2.3 <$Revision$>
Copyright 1996 Adam Twiss, Zeus Technology Ltd, http://www.zeustech.net/
Licensed to The Apache Software Foundation, http://www.apache.org/

Benchmarking 127.0.0.1 (be patient)...apr_socket_recv: Connection refused (111)
"""

AB_TIMEOUT = """\
This is ApacheBench, Version 2.3 <$Revision$>
Copyright 1996 Adam Twiss, Zeus Technology Ltd, http://www.zeustech.net/
Licensed to The Apache Software Foundation, http://www.apache.org/

Benchmarking 127.0.0.1 (be patient)...apr_pollset_poll: The timeout specified has expired (70007)
"""

WRK_OK = """\
Running 3s test @ http://127.0.0.1:18500/index.html
  2 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     3.58ms    1.65ms  48.46ms   88.81%
    Req/Sec     7.16k   275.03     7.53k    70.00%
  Latency Distribution
     50%    3.47ms
     75%    3.73ms
     90%    4.71ms
     99%    6.46ms
  42752 requests in 3.00s, 26.18MB read
Requests/sec:  14243.14
Transfer/sec:      8.72MB
"""

WRK_NON2XX = """\
Running 2s test @ http://127.0.0.1:18500/health?status=503
  2 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   711.04us  455.01us  10.22ms   97.34%
    Req/Sec     7.39k   380.52     8.11k    85.71%
  Latency Distribution
     50%  653.00us
     75%  745.00us
     90%    0.89ms
     99%    2.18ms
  30845 requests in 2.10s, 5.38MB read
  Non-2xx or 3xx responses: 30845
Requests/sec:  14685.75
Transfer/sec:      2.56MB
"""

WRK_CLOSE = """\
Running 2s test @ http://127.0.0.1:18500/image.png?close=mid
  2 threads and 10 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     0.00us    0.00us   0.00us    -nan%
    Req/Sec     0.00      0.00     0.00      -nan%
  Latency Distribution
     50%    0.00us
     75%    0.00us
     90%    0.00us
     99%    0.00us
  0 requests in 2.00s, 163.56MB read
  Socket errors: connect 0, read 8434, write 0, timeout 0
Requests/sec:      0.00
Transfer/sec:     81.71MB
"""

WRK_REFUSED = """\
unable to connect to 127.0.0.1:18599 Connection refused
"""


# -- ab -----------------------------------------------------------------------------------------


def test_ab_ok() -> None:
    r = parse_ab(AB_OK)
    assert r.tool == "ab"
    assert r.requests == 3000
    assert r.failures == 0 and r.non_2xx == 0
    assert r.requests_per_s == 5450.00
    assert r.mean_ms == 3.670  # the first "Time per request", not the across-all one
    assert r.duration_s == 0.550
    assert r.p50_ms == 4.0 and r.p99_ms == 4.0 and r.longest_ms == 5.0
    assert r.transfer_kib_s == 3518.02
    assert r.bytes_received == 1983000
    assert list(r.percentiles_ms) == ["50", "66", "75", "80", "90", "95", "98", "99", "100"]
    assert r.failure_detail == {}


def test_ab_non_2xx() -> None:
    r = parse_ab(AB_NON2XX)
    assert (r.requests, r.failures, r.non_2xx) == (500, 0, 500)


def test_ab_length_failures_carry_their_breakdown() -> None:
    r = parse_ab(AB_LENGTH)
    assert r.failures == 1491
    assert r.failure_detail == {"connect": 0, "receive": 0, "length": 1491, "exceptions": 0}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (AB_REFUSED, "Connection refused"),
        (AB_TIMEOUT, "timeout specified has expired"),
        ("", ""),
    ],
)
def test_ab_aborted_runs_are_errors(text: str, reason: str) -> None:
    with pytest.raises(BenchOutputError, match="Complete requests") as info:
        parse_ab(text)
    assert reason in str(info.value)


# -- wrk ----------------------------------------------------------------------------------------


def test_wrk_ok() -> None:
    r = parse_wrk(WRK_OK)
    assert r.tool == "wrk"
    assert r.requests == 42752
    assert r.duration_s == 3.0
    assert r.requests_per_s == 14243.14
    assert (r.failures, r.non_2xx) == (0, 0)
    assert r.mean_ms == 3.58
    assert r.p50_ms == 3.47 and r.p99_ms == 6.46
    assert r.longest_ms == 48.46
    assert r.transfer_kib_s == round(8.72 * 1024, 2)
    assert r.bytes_received == round(26.18 * 1024 * 1024)


def test_wrk_units_are_converted_to_milliseconds() -> None:
    r = parse_wrk(WRK_NON2XX)
    assert r.mean_ms == 0.711  # 711.04us
    assert r.percentiles_ms == {"50": 0.653, "75": 0.745, "90": 0.89, "99": 2.18}
    assert r.non_2xx == 30845
    slow = WRK_OK.replace("48.46ms", "1.50s").replace("99%    6.46ms", "99%    1.20m")
    r = parse_wrk(slow)
    assert r.longest_ms == 1500.0 and r.p99_ms == 72_000.0


def test_wrk_socket_errors_are_failures() -> None:
    r = parse_wrk(WRK_CLOSE)
    assert r.requests == 0
    assert r.failures == 8434
    assert r.failure_detail == {"connect": 0, "read": 8434, "write": 0, "timeout": 0}


def test_wrk_refused_is_an_error() -> None:
    with pytest.raises(BenchOutputError, match="Connection refused"):
        parse_wrk(WRK_REFUSED)


def test_result_is_json_ready_and_the_table_lines_up() -> None:
    rows = [("regular", parse_ab(AB_OK)), ("wrk", parse_wrk(WRK_CLOSE))]
    assert msgspec.json.decode(msgspec.json.encode(rows[0][1]))["requests"] == 3000
    lines = format_table(rows).splitlines()
    assert lines[0].split() == [
        "name",
        "req/s",
        "failures",
        "non-2xx",
        "mean",
        "ms",
        "p99",
        "ms",
        "longest",
        "ms",
    ]
    assert lines[1].split() == ["regular", "5450.00", "0", "0", "3.67", "4.00", "5.00"]
    assert lines[2].split()[2] == "8434"
    assert len({len(line) for line in lines}) == 1
