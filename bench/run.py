"""``python -m bench.run NAME``: the original project's load tests, run against our fleet.

The scenarios are the loads of the original's ``benchmark/request.sh`` (see `bench.original`):
``signin`` ``ab -c 20 -n 6000`` posting its ``signin_test.txt`` (lilpump's credentials, kept
byte for byte in ``bench/signin_test.txt``); ``regular`` ``-c 20 -n 100000`` on
``/video/test.css``; ``region`` ``-c 20 -n 30000`` on ``/video/index.html`` through the ko_KR
ELB with ``Accept-Language: en_US`` (served by en_US's video); ``concurrent`` ``-c 2000 -n
30000`` on ``/video/test.css``; ``image`` and ``large`` ``-c 20 -n 30000`` on
``/video/test.jpg`` and ``/video/test.pdf``. ``wrk`` (``-c 50 -t 2 -d 10s``) is ours. They aim
at the default fleet: ELB ko_KR on :9000 (services image, video, auth) and en_US on :9001
(sound, video, auth); ``/<service>/<rest>`` reaches service ``<service>`` as ``/<rest>``.

Every run is bounded: ab by ``-n`` and a 10 s socket timeout (``-s 10``), wrk by ``-d`` and
``--timeout``, and both by a process timeout. Before a run, one request checks that the fleet
answers, so a fleet that is down is a clear error instead of an ab abort. Authenticated
scenarios sign up and sign in the script's token user through the ELB (``/auth/signup``,
``/auth/signin``) and send ``Authorization: Bearer <token>`` (``make regular`` and friends go
through `bench.benchmark`, which sends the script's ``AuthToken`` form); ``--token`` skips
that and ``--no-auth`` sends no token at all. ``signin`` signs lilpump up first.

ab speaks HTTP/1.0 without keep-alive unless ``--keepalive`` (as the original did), and it
is blind to truncated bodies and dropped connections (it counts them as complete requests);
wrk speaks keep-alive HTTP/1.1 and reports those as socket read errors. Results are printed
as a table and saved as JSON to ``<out>/<name>-<timestamp>.json`` with the command line
(token redacted) and the raw tool output.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import msgspec

from bench.parse import BenchOutputError, BenchResult, format_table, parse_ab, parse_wrk

DEFAULT_ELB = "http://127.0.0.1:9000"
REGION_HEADER = "Accept-Language"  # the original's clients put the region code there
AB_SOCKET_TIMEOUT_S = 10
WRK_TIMEOUT = "10s"
PROCESS_TIMEOUT_S = 900
PREFLIGHT_TIMEOUT_S = 10.0
BENCH_USER = "XXXtentacion"  # the script's token user
BENCH_PASSWORD = "makeouthill666"
SIGNIN_TEST = Path(__file__).with_name("signin_test.txt")  # the script's signin load body
SIGNIN_USER = ("lilpump", "guccigang")  # who signin_test.txt signs in
WANTED_OPEN_FILES = 65536


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    tool: str  # "ab" or "wrk"
    path: str
    concurrency: int
    requests: int = 0  # ab -n
    duration: str = ""  # wrk -d
    threads: int = 2  # wrk -t
    region: str | None = None
    signin: bool = False  # POST the bench user's credentials as JSON
    authenticated: bool = True


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("signin", "ab", "/auth/signin", 20, 6000, signin=True, authenticated=False),
        Scenario("region", "ab", "/video/index.html", 20, 30000, region="en_US"),
        Scenario("regular", "ab", "/video/test.css", 20, 100000),
        Scenario("concurrent", "ab", "/video/test.css", 2000, 30000),
        Scenario("image", "ab", "/video/test.jpg", 20, 30000),
        Scenario("large", "ab", "/video/test.pdf", 20, 30000),
        Scenario("wrk", "wrk", "/video/index.html", 50, duration="10s"),
    )
}


@dataclass(frozen=True, slots=True)
class Overrides:
    requests: int | None = None
    concurrency: int | None = None
    duration: str | None = None
    keepalive: bool = False


class FleetUnavailable(Exception):
    """The target did not answer the pre-flight request."""


class TokenUnavailable(Exception):
    """Signing up or signing in the bench user failed."""


def signin_body(username: str = BENCH_USER, password: str = BENCH_PASSWORD) -> bytes:
    return json.dumps({"username": username, "password": password}).encode()


def request_headers(scenario: Scenario, token: str | None) -> list[tuple[str, str]]:
    headers = []
    if token and scenario.authenticated:
        headers.append(("Authorization", f"Bearer {token}"))
    if scenario.region:
        headers.append((REGION_HEADER, scenario.region))
    return headers


def build_command(
    scenario: Scenario,
    url: str,
    headers: list[tuple[str, str]],
    overrides: Overrides = Overrides(),
    body_file: str | None = None,
) -> list[str]:
    concurrency = overrides.concurrency or scenario.concurrency
    header_args = [arg for name, value in headers for arg in ("-H", f"{name}: {value}")]
    if scenario.tool == "wrk":
        return [
            "wrk",
            "-c",
            str(concurrency),
            "-t",
            str(min(scenario.threads, concurrency)),
            "-d",
            overrides.duration or scenario.duration,
            "--timeout",
            WRK_TIMEOUT,
            "--latency",
            *header_args,
            url,
        ]
    requests = overrides.requests or scenario.requests
    command = ["ab", "-s", str(AB_SOCKET_TIMEOUT_S), "-c", str(min(concurrency, requests))]
    command += ["-n", str(requests)]
    if overrides.keepalive:
        command.append("-k")
    if body_file is not None:
        command += ["-p", body_file, "-T", "application/json"]
    return [*command, *header_args, url]


def redact(command: list[str]) -> list[str]:
    return [
        "Authorization: Bearer <redacted>" if arg.startswith("Authorization: Bearer ") else arg
        for arg in command
    ]


def _open(request: urllib.request.Request, timeout: float) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no env proxies
    try:
        with opener.open(request, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read()


def preflight(
    url: str, headers: list[tuple[str, str]], scenario: Scenario, body: bytes | None = None
) -> int:
    """One request like the benchmark's; raises FleetUnavailable if nothing answers."""
    request = urllib.request.Request(url, data=body, method="POST" if body else "GET")
    for name, value in headers:
        request.add_header(name, value)
    if body is not None:
        request.add_header("Content-Type", "application/json")
    try:
        status, _ = _open(request, PREFLIGHT_TIMEOUT_S)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise FleetUnavailable(
            f"{scenario.name}: nothing answers at {url} ({reason}); is the fleet running?"
        ) from exc
    if not 200 <= status < 300:
        print(f"warning: {scenario.name}: pre-flight {url} answered {status}", file=sys.stderr)
    return status


def acquire_token(elb: str, username: str = BENCH_USER, password: str = BENCH_PASSWORD) -> str:
    """Sign the bench user up (an existing user is fine) and in; returns the bearer token."""
    base = elb.rstrip("/")
    signup = json.dumps({"username": username, "password": password, "role": "user"}).encode()
    try:
        status, body = _open(
            urllib.request.Request(
                f"{base}/auth/signup",
                data=signup,
                method="POST",
                headers={"Content-Type": "application/json"},
            ),
            PREFLIGHT_TIMEOUT_S,
        )
        if status not in (200, 201, 409):
            raise TokenUnavailable(f"signup answered {status}: {body[:200]!r}")
        status, body = _open(
            urllib.request.Request(
                f"{base}/auth/signin",
                data=signin_body(username, password),
                method="POST",
                headers={"Content-Type": "application/json"},
            ),
            PREFLIGHT_TIMEOUT_S,
        )
    except (urllib.error.URLError, OSError) as exc:
        raise TokenUnavailable(f"auth via {base} unreachable: {exc}") from exc
    if status != 200:
        raise TokenUnavailable(f"signin answered {status}: {body[:200]!r}")
    try:
        token = json.loads(body)["token"]
    except (ValueError, KeyError, TypeError) as exc:
        raise TokenUnavailable(f"signin answer has no token: {body[:200]!r}") from exc
    if not isinstance(token, str) or not token:
        raise TokenUnavailable("signin answered an empty token")
    return token


def raise_open_files_limit(wanted: int = WANTED_OPEN_FILES) -> None:
    """ab -c 1000 needs a descriptor per connection; children inherit the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@dataclass(frozen=True, slots=True)
class Run:
    result: BenchResult
    command: list[str]
    output: str


def run_scenario(
    scenario: Scenario,
    url: str,
    headers: list[tuple[str, str]],
    overrides: Overrides = Overrides(),
    body: bytes | None = None,
) -> Run:
    if shutil.which(scenario.tool) is None:
        raise FleetUnavailable(
            f"{scenario.tool} is not installed (apt-get install apache2-utils wrk)"
        )
    with tempfile.NamedTemporaryFile(prefix="bench-body-", suffix=".json") as body_file:
        if body is not None:
            body_file.write(body)
            body_file.flush()
        command = build_command(
            scenario, url, headers, overrides, body_file.name if body is not None else None
        )
        completed = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=PROCESS_TIMEOUT_S,
            check=False,
        )
    output = completed.stdout + completed.stderr
    parse = parse_wrk if scenario.tool == "wrk" else parse_ab
    try:
        result = parse(output)
    except BenchOutputError as exc:
        raise BenchOutputError(
            f"{scenario.name}: {scenario.tool} exited {completed.returncode}: {exc}"
        ) from None
    return Run(result, redact(command), output)


def save_record(out_dir: Path, name: str, url: str, run: Run) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.localtime())
    path = out_dir / f"{name}-{stamp}.json"
    record = {
        "name": name,
        "url": url,
        "started": stamp,
        "command": run.command,
        "result": msgspec.to_builtins(run.result),
        "output": run.output,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="load tests of the gateway fleet (ab, wrk)"
    )
    parser.add_argument("name", choices=[*SCENARIOS, "all"])
    parser.add_argument("--elb", default=DEFAULT_ELB, help=f"ELB origin (default {DEFAULT_ELB})")
    parser.add_argument("--url", help="aim at this URL instead of the scenario's ELB path")
    parser.add_argument("--token", help="bearer token to send (default: sign in a bench user)")
    parser.add_argument("--no-auth", action="store_true", help="send no token")
    parser.add_argument("--out", default="bench/results", help="directory for JSON results")
    parser.add_argument("-n", "--requests", type=int, help="ab: number of requests")
    parser.add_argument("-c", "--concurrency", type=int, help="connections")
    parser.add_argument("-d", "--duration", help="wrk: duration, e.g. 10s")
    parser.add_argument("-k", "--keepalive", action="store_true", help="ab: use keep-alive")
    parser.add_argument("--user", default=BENCH_USER)
    parser.add_argument("--password", default=BENCH_PASSWORD)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = list(SCENARIOS) if args.name == "all" else [args.name]
    overrides = Overrides(args.requests, args.concurrency, args.duration, args.keepalive)
    raise_open_files_limit()
    token: str | None = args.token
    if token is None and not args.no_auth and any(SCENARIOS[n].authenticated for n in names):
        try:
            token = acquire_token(args.elb, args.user, args.password)
        except TokenUnavailable as exc:
            print(f"warning: no token, running without one: {exc}", file=sys.stderr)
    if "signin" in names:
        try:
            acquire_token(args.elb, *SIGNIN_USER)  # signin_test.txt's user must exist
        except TokenUnavailable as exc:
            print(f"warning: {SIGNIN_USER[0]} cannot sign in: {exc}", file=sys.stderr)
    rows: list[tuple[str, BenchResult]] = []
    for name in names:
        scenario = SCENARIOS[name]
        url = args.url or args.elb.rstrip("/") + scenario.path
        headers = request_headers(scenario, token)
        body = SIGNIN_TEST.read_bytes() if scenario.signin else None
        try:
            preflight(url, headers, scenario, body)
            run = run_scenario(scenario, url, headers, overrides, body)
        except (FleetUnavailable, BenchOutputError, subprocess.TimeoutExpired) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        path = save_record(Path(args.out), name, url, run)
        print(f"{name}: {' '.join(run.command)}\n  -> {path}", file=sys.stderr)
        rows.append((name, run.result))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
