"""`bench.hop` and its parts: the anchors' configs (checked by nginx -t and haproxy -c where
installed), the load commands, the proxies' files (loaded by the proxy's own loader), the
answer check, the aggregation (best, spread, ratios), the JSON record and the chart; and one
smoke run that starts the anchors, checks each passes the backend's answer through, and sees
every process stopped by its PID even when the run fails."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import msgspec
import pytest
import trio

from bench import anchors, hop, hop_report, relay
from bench.parse import BenchResult
from proxy.state import ProxyPaths, load_proxy_config

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


# -- the anchors' configs ----------------------------------------------------------------------
def test_backend_config_answers_json_itself_on_loopback(tmp_path: Path) -> None:
    body = anchors.expected_body("n0nce")
    text = anchors.nginx_backend_config(tmp_path, 18001, body)
    assert "listen 127.0.0.1:18001;" in text
    assert "access_log off;" in text
    assert f"keepalive_requests {anchors.KEEPALIVE_REQUESTS};" in text
    assert f"return 200 '{body.decode()}';" in text
    assert "add_header X-Hop-Backend nginx always;" in text
    assert "master_process off;" in text and "daemon off;" in text
    assert json.loads(body) == {"backend": "nginx", "run": "n0nce"}


def test_nginx_configs_keep_every_path_in_the_private_directory(tmp_path: Path) -> None:
    for text in (
        anchors.nginx_backend_config(tmp_path, 18001, b"{}"),
        anchors.nginx_proxy_config(tmp_path, 18002, 18001),
    ):
        paths = [
            line.split()[1].rstrip(";")
            for line in text.splitlines()
            if line.strip().startswith(("pid ", "error_log ")) or "_temp_path " in line
        ]
        assert len(paths) == 7  # pid, error log, five temp paths
        assert all(p.startswith(str(tmp_path) + "/") for p in paths)


def test_backend_config_refuses_a_body_nginx_would_interpret(tmp_path: Path) -> None:
    for body in (b"{'a': 1}", b'{"a": "$host"}', b'{"a": "\\\\"}'):
        with pytest.raises(ValueError, match="nginx interprets"):
            anchors.nginx_backend_config(tmp_path, 18001, body)


def test_front_nginx_keeps_upstream_connections_alive(tmp_path: Path) -> None:
    text = anchors.nginx_proxy_config(tmp_path, 18002, 18001)
    assert "listen 127.0.0.1:18002;" in text
    assert "server 127.0.0.1:18001;" in text
    assert f"keepalive {anchors.UPSTREAM_KEEPALIVE};" in text
    assert "proxy_http_version 1.1;" in text
    assert 'proxy_set_header Connection "";' in text


def test_haproxy_config_is_one_thread_with_shared_server_connections() -> None:
    text = anchors.haproxy_config(18003, 18001)
    assert "nbthread 1" in text and "http-reuse always" in text
    assert "bind 127.0.0.1:18003" in text
    assert "server backend 127.0.0.1:18001" in text


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (bash scripts/system-deps.sh)")
def test_nginx_accepts_both_configs(tmp_path: Path) -> None:
    assert NGINX is not None
    for name, text in (
        ("backend.conf", anchors.nginx_backend_config(tmp_path, 18001, b'{"a":1}')),
        ("front.conf", anchors.nginx_proxy_config(tmp_path, 18002, 18001)),
    ):
        config = tmp_path / name
        config.write_text(text)
        command = [*anchors.nginx_command(NGINX, tmp_path, config), "-t"]
        checked = subprocess.run(command, capture_output=True, text=True, timeout=10)
        assert checked.returncode == 0, checked.stderr


@pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (bash scripts/system-deps.sh)"
)
def test_haproxy_accepts_its_config(tmp_path: Path) -> None:
    assert HAPROXY is not None
    config = tmp_path / "haproxy.cfg"
    config.write_text(anchors.haproxy_config(18003, 18001))
    checked = subprocess.run(
        [HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, timeout=10
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_caddy_target_pins_the_cores_it_is_given() -> None:
    assert hop.TARGETS["caddy"].label == "Caddy (GOMAXPROCS=1)"
    assert hop.caddy("caddy-2", gomaxprocs=2).label == "Caddy (GOMAXPROCS=2)"


# -- the loads ---------------------------------------------------------------------------------
def test_wrk_is_one_thread_fifty_connections_for_the_duration() -> None:
    command = hop.load_command(hop.LOADS["wrk"], "http://127.0.0.1:1/x", [("A", "b")], 5)
    assert command[:6] == ["wrk", "-t1", "-c", "50", "-d", "5s"]
    assert command[-3:] == ["-H", "A: b", "http://127.0.0.1:1/x"]


def test_ab_is_bounded_by_time_with_n_after_t() -> None:
    plain = hop.load_command(hop.LOADS["ab"], "http://127.0.0.1:1/x", [], 4)
    keep = hop.load_command(hop.LOADS["ab-k"], "http://127.0.0.1:1/x", [], 4)
    for command in (plain, keep):
        assert command[command.index("-c") + 1] == "20"
        assert command[command.index("-t") + 1] == "4"
        assert command.index("-n") > command.index("-t")  # ab's -t resets -n to 50,000
    assert "-k" not in plain and "-k" in keep


def test_loads_refuse_a_fraction_of_a_second() -> None:
    with pytest.raises(ValueError, match="whole seconds"):
        hop.load_command(hop.LOADS["wrk"], "http://127.0.0.1:1/x", [], 0)


def test_parse_args_refuses_unknown_targets_and_loads() -> None:
    with pytest.raises(SystemExit):
        hop.parse_args(["--targets", "nginx,envoy"])
    with pytest.raises(SystemExit):
        hop.parse_args(["--loads", "h2load"])
    args = hop.parse_args(["--targets", "nginx,proxy", "--rounds", "3"])
    assert args.targets == ["nginx", "proxy"] and args.rounds == 3


def test_every_comparison_names_known_targets() -> None:
    for numerator, denominator in hop.COMPARISONS:
        assert numerator in hop.TARGETS and denominator in hop.TARGETS


# -- our proxies' files ------------------------------------------------------------------------
@pytest.mark.parametrize("redis_port", [0, 6390])
def test_proxy_files_load_with_the_proxys_own_loader(tmp_path: Path, redis_port: int) -> None:
    files = hop.write_proxy_files(
        tmp_path,
        backend="http://127.0.0.1:18001",
        auth="http://127.0.0.1:18009",
        auth_key="k" * 43,
        redis_port=redis_port,
    )
    config = load_proxy_config(ProxyPaths(*files))
    assert config.gateway.auth_key == "k" * 43
    assert config.gateway.cache_enabled is bool(redis_port)
    services = config.services
    assert [i.url for i in services["auth"].instances()] == ["http://127.0.0.1:18009"]
    if redis_port:
        assert config.gateway.redis_address == f"127.0.0.1:{redis_port}"
        assert services[hop.CACHED].public and services[hop.CACHED].cache.enabled
        assert set(services) == {"auth", hop.CACHED}
    else:
        assert services[hop.PUBLIC].public and not services[hop.PUBLIC].cache.enabled
        assert not services[hop.TOKEN].public
        assert set(services) == {"auth", hop.PUBLIC, hop.TOKEN}


def test_each_lab_has_its_own_auth_key(tmp_path: Path) -> None:
    from contextlib import ExitStack

    with ExitStack() as stack:
        one, two = hop.Lab(tmp_path, "a", stack), hop.Lab(tmp_path, "b", stack)
    assert len(one.auth_key) >= 32 and one.auth_key != two.auth_key


# -- the check of an answer --------------------------------------------------------------------
BODY = anchors.expected_body("abc")
GOOD = hop.Reply(200, {"x-hop-backend": "nginx", "x-cache": "HIT"}, BODY)


def test_an_answer_from_the_backend_through_a_hop_passes() -> None:
    assert hop.answer_problems(GOOD, BODY) == []
    assert hop.answer_problems(GOOD, BODY, cache_hit=True) == []


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (hop.Reply(502, GOOD.headers, BODY), "status 502"),
        (hop.Reply(200, GOOD.headers, anchors.expected_body("other run")), "body"),
        (hop.Reply(200, {"x-cache": "HIT"}, BODY), "X-Hop-Backend"),
    ],
)
def test_an_answer_not_from_this_backend_fails(reply: hop.Reply, problem: str) -> None:
    problems = hop.answer_problems(reply, BODY)
    assert len(problems) == 1 and problem in problems[0]


def test_a_cache_target_must_hit() -> None:
    miss = hop.Reply(200, {"x-hop-backend": "nginx", "x-cache": "MISS"}, BODY)
    assert hop.answer_problems(miss, BODY) == []
    assert "not HIT" in hop.answer_problems(miss, BODY, cache_hit=True)[0]


# -- aggregation, tables, record, chart --------------------------------------------------------
def result(rps: float, failures: int = 0, non_2xx: int = 0) -> BenchResult:
    return BenchResult(
        tool="wrk",
        requests=int(rps * 5),
        duration_s=5.0,
        requests_per_s=rps,
        failures=failures,
        non_2xx=non_2xx,
        mean_ms=1.0,
        p50_ms=1.0,
        p99_ms=2.0,
        longest_ms=3.0,
        transfer_kib_s=None,
    )


SAMPLES = [
    hop_report.Sample("caddy", "wrk", 0, ["wrk"], result(10_000)),
    hop_report.Sample("proxy", "wrk", 0, ["wrk"], result(4_000)),
    hop_report.Sample("caddy", "wrk", 1, ["wrk"], result(8_000)),
    hop_report.Sample("proxy", "wrk", 1, ["wrk"], result(5_000, failures=2)),
    hop_report.Sample("caddy", "ab", 0, ["ab"], result(6_000)),
]


def test_aggregate_keeps_the_best_the_worst_and_the_failures() -> None:
    figures = hop_report.aggregate(SAMPLES)
    assert list(figures) == [("caddy", "wrk"), ("proxy", "wrk"), ("caddy", "ab")]
    caddy = figures[("caddy", "wrk")]
    assert (caddy.best, caddy.worst, caddy.runs) == (10_000, 8_000, 2)
    assert caddy.spread == pytest.approx(0.2)
    assert caddy.clean
    proxy = figures[("proxy", "wrk")]
    assert proxy.best == 5_000 and proxy.failures == 2 and not proxy.clean


def test_ratios_are_of_bests_and_skip_pairs_that_did_not_run() -> None:
    figures = hop_report.aggregate(SAMPLES)
    found = hop_report.ratios(figures, [("proxy", "caddy"), ("relay", "caddy")], ["wrk", "ab"])
    assert [(r.numerator, r.denominator, r.load) for r in found] == [("proxy", "caddy", "wrk")]
    assert found[0].value == pytest.approx(0.5)


def test_tables_flag_a_figure_with_failures() -> None:
    figures = hop_report.aggregate(SAMPLES)
    labels = {"caddy": "Caddy", "proxy": "ours", "relay": "never ran"}
    table = hop_report.figures_table(figures, labels, ["wrk", "ab"])
    lines = table.splitlines()
    assert lines[0].split() == ["target", "wrk", "req/s", "ab", "req/s"]
    assert "10,000 ±20%" in lines[1] and "6,000 ±0%" in lines[1]
    assert "5,000 ±20% !" in lines[2] and lines[2].rstrip().endswith("-")
    assert len(lines) == 3  # a target with no figure has no row
    assert "proxy wrk: 2 failed" in hop_report.failures_note(figures)
    ratios = hop_report.ratios(figures, [("proxy", "caddy")], ["wrk", "ab"])
    assert hop_report.ratios_table(ratios, ["wrk", "ab"]).splitlines()[1].split() == [
        "proxy",
        "/",
        "caddy",
        "0.50",
        "-",
    ]


def test_the_record_is_json_with_every_figure_ratio_and_sample(tmp_path: Path) -> None:
    figures = hop_report.aggregate(SAMPLES)
    found = hop_report.ratios(figures, [("proxy", "caddy")], ["wrk"])
    data = hop_report.record(
        started="20260101T000000",
        host={"cpus": 2, "loadavg_before": [1.0, 1.0, 1.0]},
        settings={"rounds": 2},
        targets=[{"name": "caddy"}, {"name": "proxy"}],
        samples=SAMPLES,
        figures=figures,
        found=found,
    )
    path = hop_report.save(tmp_path / "results", "hop-x", data)
    loaded = json.loads(path.read_text())
    assert set(loaded) == {
        "benchmark", "started", "host", "settings", "targets", "figures", "ratios", "samples",
    }  # fmt: skip
    assert loaded["figures"][1] == {
        "target": "proxy", "load": "wrk", "best_rps": 5000.0, "worst_rps": 4000.0,
        "spread": 0.2, "runs": 2, "failures": 2, "non_2xx": 0,
    }  # fmt: skip
    assert loaded["ratios"] == [
        {"numerator": "proxy", "denominator": "caddy", "load": "wrk", "value": 0.5}
    ]
    again = [msgspec.convert(s, hop_report.Sample) for s in loaded["samples"]]
    assert again == SAMPLES


def test_the_chart_is_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="the bench extra is not installed")
    figures = hop_report.aggregate(SAMPLES)
    path = tmp_path / "hop.png"
    assert hop_report.draw_chart(path, figures, {"caddy": "C", "proxy": "P"}, ["wrk"], "t") is None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_chart_is_skipped_with_a_note_without_matplotlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    figures = hop_report.aggregate(SAMPLES)
    note = hop_report.draw_chart(tmp_path / "hop.png", figures, {"caddy": "C"}, ["wrk"], "t")
    assert note is not None and "matplotlib is not installed" in note
    assert not (tmp_path / "hop.png").exists()


# -- a real run: the anchors start, proxy, and stop ----------------------------------------------
def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.skipif(
    NGINX is None or HAPROXY is None,
    reason="nginx and haproxy are needed (bash scripts/system-deps.sh installs them)",
)
def test_anchors_pass_the_backends_answer_through_and_are_stopped_on_error() -> None:
    names = ["backend", "nginx", "haproxy", "relay", "proxy"]
    pids: list[int] = []

    class Planned(Exception):
        pass

    with pytest.raises(Planned), hop.lab_running() as lab:
        targets = hop.start_targets(lab, names)  # raises unless each passes the answer through
        assert [t.name for t in targets] == names
        pids = [c.process.pid for c in lab.children.started]
        assert len(pids) == 6  # backend, nginx, haproxy, relay, the auth server, our proxy
        assert all(_alive(pid) for pid in pids)
        through = hop.fetch(targets[1].url)
        assert through.body == lab.expected_body
        raise Planned
    for pid in pids:
        assert not _alive(pid), f"pid {pid} still runs"


# -- the reference relay -----------------------------------------------------------------------
async def _serve_once_then_close(stream: trio.SocketStream) -> None:
    """A backend that answers one request per connection and then closes it without saying
    so: to the relay, every idle connection it keeps is stale."""
    async with stream:
        data = b""
        while b"\r\n\r\n" not in data:
            data += await stream.receive_some(4096)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")


async def _ask(client: trio.SocketStream, buffer: bytearray) -> bytes | None:
    await client.send_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\n")
    head = await relay.read_head(client, buffer)
    if head is None:
        return None
    while len(buffer) < relay.content_length(head):
        buffer += await client.receive_some(4096)
    body = bytes(buffer)
    buffer.clear()
    return body


async def test_relay_retries_once_on_a_connection_the_backend_closed(
    nursery: trio.Nursery,
) -> None:
    backends = await nursery.start(
        partial(trio.serve_tcp, _serve_once_then_close, 0, host="127.0.0.1")
    )
    backend_port = backends[0].socket.getsockname()[1]
    idle: list[relay.Upstream] = []

    async def handle(client: trio.SocketStream) -> None:
        async with client:
            await relay.relay(client, backend_port, idle)

    relays = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
    client = await trio.open_tcp_stream("127.0.0.1", relays[0].socket.getsockname()[1])
    async with client:
        buffer = bytearray()
        with trio.fail_after(5):
            assert await _ask(client, buffer) == b"ok"
            assert await _ask(client, buffer) == b"ok"  # its idle upstream was closed
    for stream, _ in idle:
        await stream.aclose()


def _read_until_holding(harness: subprocess.Popen[bytes], timeout_s: float) -> list[int]:
    """The PIDs the harness says it started, read until it says it holds (or the deadline)."""
    assert harness.stdout is not None
    fd = harness.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout_s
    while b"holding" not in seen and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            break
        seen += chunk
    lines = seen.decode().splitlines()
    if not any(line.startswith("holding") for line in lines):
        raise AssertionError(f"the harness did not hold within {timeout_s}s: {lines}")
    return [int(line.split()[-1]) for line in lines if line.startswith("process ")]


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (bash scripts/system-deps.sh)")
def test_sigterm_stops_everything_the_harness_started() -> None:
    harness = subprocess.Popen(
        [sys.executable, "-m", "bench.hop", "--hold", "--targets", "nginx"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    pids: list[int] = []
    try:
        pids = _read_until_holding(harness, 30.0)
        assert len(pids) == 2  # the backend and the front nginx
        assert all(_alive(pid) for pid in pids)
        harness.terminate()
        assert harness.wait(timeout=15) == 128 + signal.SIGTERM
        left = [pid for pid in pids if _alive(pid)]
        assert left == []
    finally:
        if harness.poll() is None:
            harness.kill()
            harness.wait()
        for pid in pids:  # whatever the harness failed to stop, so no test leaves it behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        assert harness.stdout is not None
        harness.stdout.close()
