"""`bench.run`: the command lines the scenarios build, the token dance, the preflight, and
one real short ab run against the demo backend."""

from __future__ import annotations

import shutil
from pathlib import Path

import msgspec
import pytest
import trio

from backends.app import BackendApp
from backends.static_files import StaticSite
from bench import run
from httpio.errors import Unauthorized
from httpio.messages import Request, Response, json_response
from httpio.run import serve_tcp
from tests.support.ports import held_port

# -- scenarios and commands ---------------------------------------------------------------------


def test_scenarios_are_the_original_scripts_loads() -> None:
    """benchmark/request.sh: concurrency 20 (2000), 30000 requests (100000 regular, 6000 signin)."""
    s = run.SCENARIOS
    assert list(s)[:6] == ["signin", "region", "regular", "concurrent", "image", "large"]
    assert (s["regular"].concurrency, s["regular"].requests) == (20, 100000)
    assert s["regular"].path == s["concurrent"].path == "/video/test.css"
    assert (s["concurrent"].concurrency, s["concurrent"].requests) == (2000, 30000)
    assert (s["signin"].concurrency, s["signin"].requests) == (20, 6000)
    assert s["signin"].path == "/auth/signin"
    assert (
        run.SIGNIN_TEST.read_bytes() == b'{\n"username" : "lilpump",\n"password" : "guccigang"\n}\n'
    )
    assert s["region"].region == "en_US" and s["region"].path == "/video/index.html"
    assert s["image"].path == "/video/test.jpg" and s["large"].path == "/video/test.pdf"
    assert all(s[n].requests == 30000 for n in ("region", "image", "large"))
    assert (s["wrk"].tool, s["wrk"].concurrency, s["wrk"].duration) == ("wrk", 50, "10s")


def test_ab_command_is_bounded_and_carries_headers() -> None:
    scenario = run.SCENARIOS["region"]
    headers = run.request_headers(scenario, "tok")
    assert headers == [("Authorization", "Bearer tok"), ("Accept-Language", "en_US")]
    url = "http://127.0.0.1:9000/video/index.html"
    cmd = run.build_command(scenario, url, headers)
    assert cmd == [
        "ab",
        "-s",
        "10",
        "-c",
        "20",
        "-n",
        "30000",
        "-H",
        "Authorization: Bearer tok",
        "-H",
        "Accept-Language: en_US",
        url,
    ]
    assert "Authorization: Bearer <redacted>" in run.redact(cmd)
    small = run.build_command(scenario, url, [], run.Overrides(requests=5, keepalive=True))
    assert small[:8] == ["ab", "-s", "10", "-c", "5", "-n", "5", "-k"]


def test_signin_posts_json_without_a_token() -> None:
    scenario = run.SCENARIOS["signin"]
    assert run.request_headers(scenario, "tok") == []
    cmd = run.build_command(scenario, "http://e/auth/signin", [], body_file="/tmp/b.json")
    assert cmd[-5:] == ["-p", "/tmp/b.json", "-T", "application/json", "http://e/auth/signin"]
    assert msgspec.json.decode(run.signin_body("u", "p")) == {"username": "u", "password": "p"}


def test_wrk_command_is_bounded() -> None:
    cmd = run.build_command(run.SCENARIOS["wrk"], "http://e/x", [], run.Overrides(duration="2s"))
    assert cmd == [
        "wrk",
        "-c",
        "50",
        "-t",
        "2",
        "-d",
        "2s",
        "--timeout",
        "10s",
        "--latency",
        "http://e/x",
    ]


# -- against real sockets -----------------------------------------------------------------------


def test_preflight_names_the_unreachable_fleet() -> None:
    with held_port() as port, pytest.raises(run.FleetUnavailable, match=f"127.0.0.1:{port}"):
        run.preflight(f"http://127.0.0.1:{port}/video/index.html", [], run.SCENARIOS["regular"])


async def fake_auth(request: Request) -> Response:
    body = msgspec.json.decode(await request.body.read_all())
    if request.path == "/auth/signup":
        return json_response(409 if body["username"] == "exists" else 201, {})
    if request.path == "/auth/signin" and body["password"] == "right":
        return json_response(200, {"token": "t-" + body["username"], "token_type": "Bearer"})
    raise Unauthorized("bad credentials")


async def test_acquire_token_signs_up_then_in(nursery: trio.Nursery) -> None:
    port = await nursery.start(serve_tcp, fake_auth, 0)
    elb = f"http://127.0.0.1:{port}"
    token = await trio.to_thread.run_sync(run.acquire_token, elb, "bench", "right")
    assert token == "t-bench"
    assert await trio.to_thread.run_sync(run.acquire_token, elb, "exists", "right") == "t-exists"
    with pytest.raises(run.TokenUnavailable, match="401"):
        await trio.to_thread.run_sync(run.acquire_token, elb, "bench", "wrong")


@pytest.mark.skipif(shutil.which("ab") is None, reason="ab (apache2-utils) is not installed")
async def test_a_short_real_ab_run(nursery: trio.Nursery, tmp_path: Path) -> None:
    app = BackendApp(StaticSite.builtin(), name="bench-test")
    port = await nursery.start(serve_tcp, app, 0)
    url = f"http://127.0.0.1:{port}/image.png"
    scenario = run.SCENARIOS["image"]
    overrides = run.Overrides(requests=50, concurrency=5)
    outcome = await trio.to_thread.run_sync(run.run_scenario, scenario, url, [], overrides)
    assert outcome.result.requests == 50 and outcome.result.failures == 0
    assert app.static_hits == 50
    path = run.save_record(tmp_path, "image", url, outcome)
    saved = msgspec.json.decode(path.read_bytes())
    assert saved["result"]["requests"] == 50 and "Complete requests" in saved["output"]
