"""``make bench-hop`` / ``python -m bench.hop``: the speed of one proxy hop (issue 14), ours
against nginx, HAProxy and Caddy in front of the same fast backend, in one alternating run.

The backend is a Debian nginx answering a small JSON body itself (`bench.anchors`), so the
hop, not the backend, is what is measured. In front of it, each on one core: nginx (one
process, upstream keep-alive), HAProxy (``nbthread 1``, ``http-reuse always``), Caddy
(``GOMAXPROCS=1``, `bench.caddy`), and our proxy, one process: a public service with the
cache off (``proxy``), a token-checked service of the same process (``proxy-token``: the
token is signed by an auth server started here, for a user signed up through the proxy),
and a second process with the cache on and every request hitting (``proxy-cache``, with a
redis-server of its own). ``relay`` is a reference, not a product: the ~30-line trio relay
of `bench.relay`, the floor of what trio costs; ``backend`` is the backend without a hop.

Each target is checked before it is measured: the answer through it must be the backend's
JSON body (with this run's nonce) and carry the backend's header, ``proxy-token`` must
refuse a request without a token (401), and ``proxy-cache`` must answer ``X-Cache: HIT``.
Then, after a short warm-up of each, every round runs each load against every target in
turn (targets alternate, so drift on a shared machine touches them alike): ``wrk -t1 -c50``
(keep-alive), ``ab -c20`` (a connection per request, HTTP/1.0) and ``ab -c20 -k``, each for
``--duration`` seconds. The table shows each figure's best and spread and the ratios
(`COMPARISONS`); the JSON record (every command and raw output, the host's load average
before and after) goes to ``bench/results/hop-<time>.json`` and a PNG chart next to it
(skipped with a note when matplotlib, the ``bench`` extra, is missing).

Everything is started here, on free ports of 127.0.0.1, with its config, logs, pid files and
temp paths in one private temporary directory, and stopped by its PID (SIGTERM, then
SIGKILL) on the way out, on an error or Ctrl-C too.

A target is a name, a label and a function that starts what it needs in the `Lab` and
returns where to aim. Another scenario is a line in `TARGETS` (plus its pair in
`COMPARISONS`), e.g. for issue 14's ``--workers`` item::

    ours("proxy-2w", "our proxy, 2 workers", proxy_args=("--workers", "2")),
    caddy("caddy-2", gomaxprocs=2),
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import anchors, hop_report, run
from bench.caddy import CaddyUnavailable, free_port, running_caddy
from bench.parse import BenchOutputError, parse_ab, parse_wrk
from bench.policies import Child, Children
from httpio.protocol import H11_NAME

BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 5.0
PATH = "/hop"
AB_SOCKET_TIMEOUT_S = 10
AB_MAX_REQUESTS = 500_000  # -t stops ab first; ab keeps per-request stats, ~50 bytes each
WRK_TIMEOUT = "10s"
PROCESS_SLACK_S = 60  # a load tool still running this long after its duration is hung
BENCH_USER, BENCH_PASSWORD = "hop-bench", "hop-bench-password"


# -- loads -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Load:
    name: str
    tool: str  # "wrk" or "ab"
    concurrency: int
    keepalive: bool


LOADS: dict[str, Load] = {
    load.name: load
    for load in (
        Load("wrk", "wrk", 50, keepalive=True),
        Load("ab", "ab", 20, keepalive=False),
        Load("ab-k", "ab", 20, keepalive=True),
    )
}


def load_command(
    load: Load, url: str, headers: Sequence[tuple[str, str]], duration_s: int
) -> list[str]:
    """The command line of one timed run. Both tools are bounded by time (ab by ``-t``, with
    ``-n`` only as a ceiling), so a slow target and a fast one get the same duration."""
    header_args = [arg for name, value in headers for arg in ("-H", f"{name}: {value}")]
    if duration_s < 1:
        raise ValueError("both tools count time in whole seconds")
    seconds = str(duration_s)
    if load.tool == "wrk":
        return [
            "wrk", "-t1", "-c", str(load.concurrency), "-d", f"{seconds}s",
            "--timeout", WRK_TIMEOUT, "--latency", *header_args, url,
        ]  # fmt: skip
    command = ["ab", "-s", str(AB_SOCKET_TIMEOUT_S), "-c", str(load.concurrency)]
    command += ["-t", seconds, "-n", str(AB_MAX_REQUESTS)]  # -n after -t: -t resets it
    if load.keepalive:
        command.append("-k")
    return [*command, *header_args, url]


def run_load(load: Load, command: list[str], duration_s: int) -> tuple[Any, str]:
    completed = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=duration_s + PROCESS_SLACK_S,
        check=False,
    )
    output = completed.stdout + completed.stderr
    parse = parse_wrk if load.tool == "wrk" else parse_ab
    try:
        return parse(output), output
    except BenchOutputError as exc:
        raise BenchOutputError(f"{' '.join(run.redact(command))}: {exc}") from None


# -- what a target must answer -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    headers: dict[str, str]  # names lower-cased
    body: bytes


def answer_problems(reply: Reply, expected_body: bytes, *, cache_hit: bool = False) -> list[str]:
    """What is wrong with an answer that should have come from the backend through a hop."""
    problems = []
    if reply.status != 200:
        problems.append(f"status {reply.status}")
    if reply.body != expected_body:
        problems.append(f"body {reply.body[:120]!r} is not the backend's {expected_body!r}")
    header = anchors.BACKEND_HEADER.lower()
    if reply.headers.get(header) != anchors.BACKEND_HEADER_VALUE:
        problems.append(f"no {anchors.BACKEND_HEADER}: {anchors.BACKEND_HEADER_VALUE} header")
    if cache_hit and not reply.headers.get("x-cache", "").upper().startswith("HIT"):
        problems.append(f"X-Cache is {reply.headers.get('x-cache')!r}, not HIT")
    return problems


def fetch(url: str, headers: Sequence[tuple[str, str]] = ()) -> Reply:
    parts = url.removeprefix("http://")
    hostport, _, path = parts.partition("/")
    host, _, port = hostport.partition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=HTTP_TIMEOUT_S)
    try:
        conn.request("GET", "/" + path, headers=dict(headers))
        resp = conn.getresponse()
        body = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)
    finally:
        conn.close()


# -- the lab: every process of the run ---------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Target:
    name: str
    label: str
    url: str
    headers: tuple[tuple[str, str], ...] = ()
    pid: int | None = None  # the one process doing the hop (for a profiler)
    reference: bool = False
    token_required: bool = False
    cache_hit: bool = False


@dataclass
class Lab:
    """The processes of one run, started on demand and shared between targets (the public
    and the token-checked service are one proxy process). Stopped by `close`."""

    workdir: Path
    nonce: str
    stack: ExitStack
    children: Children = field(init=False)
    backend_port: int = 0
    _proxies: dict[tuple[bool, tuple[str, ...]], Child] = field(default_factory=dict)
    _auth_port: int = 0
    _redis_port: int = 0
    _token: str | None = None
    auth_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def __post_init__(self) -> None:
        self.children = Children(self.workdir)
        self.stack.callback(self.children.stop_all)

    @property
    def expected_body(self) -> bytes:
        return anchors.expected_body(self.nonce)

    def spawn(self, name: str, args: list[str], port: int) -> Child:
        return self.children.spawn(name, port, args)

    def wait_until_answers(self, child: Child | None, url: str, what: str) -> None:
        """Until ``url`` answers anything at all (HTTP), with a deadline."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if child is not None and child.process.poll() is not None:
                raise RuntimeError(
                    f"{what} exited with status {child.process.returncode}"
                    f" (log: {self.workdir / child.name}.log)"
                )
            try:
                fetch(url)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what} did not answer at {url}") from None
                time.sleep(0.05)

    # -- the backend and the anchors --------------------------------------------------------
    def start_backend(self) -> None:
        port = free_port()
        config = self.workdir / "backend.conf"
        config.write_text(anchors.nginx_backend_config(self.workdir, port, self.expected_body))
        binary = anchors.find_program("nginx")
        child = self.spawn("backend", anchors.nginx_command(binary, self.workdir, config), port)
        self.wait_until_answers(child, f"http://127.0.0.1:{port}{PATH}", "the backend nginx")
        self.backend_port = port

    def nginx(self) -> Child:
        port = free_port()
        config = self.workdir / "front.conf"
        config.write_text(anchors.nginx_proxy_config(self.workdir, port, self.backend_port))
        binary = anchors.find_program("nginx")
        return self.spawn("nginx", anchors.nginx_command(binary, self.workdir, config), port)

    def haproxy(self) -> Child:
        port = free_port()
        config = self.workdir / "haproxy.cfg"
        config.write_text(anchors.haproxy_config(port, self.backend_port))
        binary = anchors.find_program("haproxy")
        return self.spawn("haproxy", anchors.haproxy_command(binary, config), port)

    def caddy(self, gomaxprocs: int) -> int:
        return self.stack.enter_context(
            running_caddy(f"127.0.0.1:{self.backend_port}", gomaxprocs=gomaxprocs)
        )

    def relay(self) -> Child:
        port = free_port()
        args = [sys.executable, "-m", "bench.relay", str(port), str(self.backend_port)]
        return self.spawn("relay", args, port)

    # -- ours ---------------------------------------------------------------------------------
    def redis_port(self) -> int:
        if not self._redis_port:
            port = free_port()
            binary = shutil.which("redis-server")
            if binary is None:
                raise anchors.AnchorUnavailable("redis-server is not installed")
            args = [
                binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.workdir),
                "--save", "", "--appendonly", "no", "--daemonize", "no",
            ]  # fmt: skip
            child = self.spawn("redis", args, port)
            wait_listening(child, port)
            self._redis_port = port
        return self._redis_port

    def auth_port(self) -> int:
        if not self._auth_port:
            port = free_port()
            config = self.workdir / "auth-config.json"
            config.write_text(run_config(self.auth_key))
            db = self.workdir / "auth.sqlite3"
            args = [str(BIN / "authsvc"), str(port), "--config", str(config), "--db", str(db)]
            child = self.spawn("authsvc", args, port)
            self.wait_until_answers(child, f"http://127.0.0.1:{port}/health", "the auth server")
            self._auth_port = port
        return self._auth_port

    def proxy(self, *, cache: bool, args: tuple[str, ...] = ()) -> Child:
        key = (cache, args)
        if key not in self._proxies:
            port = free_port()
            name = f"proxy{'-cache' if cache else ''}{'-'.join(('', *args))}"
            directory = self.workdir / name
            directory.mkdir()
            redis = self.redis_port() if cache else 0
            files = write_proxy_files(
                directory,
                backend=f"http://127.0.0.1:{self.backend_port}",
                auth=f"http://127.0.0.1:{self.auth_port()}",
                auth_key=self.auth_key,
                redis_port=redis,
            )
            command = [str(BIN / "proxy"), str(port), *map(str, files), *args]
            child = self.spawn(name, command, port)
            self.wait_until_answers(child, f"http://127.0.0.1:{port}/health", name)
            self._proxies[key] = child
        return self._proxies[key]

    def token(self, proxy: Child) -> str:
        if self._token is None:
            self._token = run.acquire_token(proxy.url, BENCH_USER, BENCH_PASSWORD)
        return self._token


def wait_listening(child: Child, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        if child.process.poll() is not None:
            raise RuntimeError(f"{child.name} exited with status {child.process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{child.name} did not listen on :{port}") from None
            time.sleep(0.05)


def run_config(auth_key: str, redis_port: int = 0) -> str:
    """config.json of this run's proxies and auth server: a key made for the run (never a
    published one), the cache on only with a Redis to use."""
    config: dict[str, Any] = {"Auth_key": auth_key, "Cache_or_not": bool(redis_port)}
    if redis_port:
        config["Redis_address"] = f"127.0.0.1:{redis_port}"
    return json.dumps(config, indent=2) + "\n"


# Services of the proxies: YAML is a superset of JSON, so the files are written as JSON.
PUBLIC, TOKEN, CACHED = "pub", "tok", "cached"
CACHE_TTL_S = 3600  # longer than any run: every measured request is a hit


def proxy_services(backend: str, auth: str, *, cache: bool) -> dict[str, Any]:
    instance = [backend]
    services: list[dict[str, Any]] = [{"name": "auth", "instance": [auth]}]
    if cache:
        services.append(
            {
                "name": CACHED,
                "public": True,
                "instance": instance,
                "cache": {"enabled": True, "default_ttl_s": CACHE_TTL_S},
            }
        )
    else:
        services.append({"name": PUBLIC, "public": True, "instance": instance})
        services.append({"name": TOKEN, "instance": instance})
    return {"service": services}


def write_proxy_files(
    directory: Path, *, backend: str, auth: str, auth_key: str, redis_port: int
) -> list[Path]:
    msa, rs, config = directory / "msa.yaml", directory / "rs.yaml", directory / "config.json"
    msa.write_text(json.dumps(proxy_services(backend, auth, cache=bool(redis_port)), indent=2))
    # The region's ELB is never dialled: every request here is for the local region.
    rs.write_text(
        json.dumps(
            {
                "cur_region_code": "hop",
                "regions": [{"region_code": "hop", "available_zone": ["http://127.0.0.1:9"]}],
            }
        )
    )
    config.write_text(run_config(auth_key, redis_port))
    return [msa, rs, config]


# -- the targets -------------------------------------------------------------------------------
Starter = Callable[[Lab], Target]


@dataclass(frozen=True, slots=True)
class TargetSpec:
    name: str
    label: str
    start: Starter


def _hop(lab: Lab, child: Child, name: str, what: str) -> Target:
    url = f"{child.url}{PATH}"
    lab.wait_until_answers(child, url, what)
    return Target(name, what, url, pid=child.process.pid)


def backend(name: str = "backend") -> TargetSpec:
    label = "backend nginx, no hop"

    def start(lab: Lab) -> Target:
        return Target(name, label, f"http://127.0.0.1:{lab.backend_port}{PATH}", reference=True)

    return TargetSpec(name, label, start)


def nginx(name: str = "nginx") -> TargetSpec:
    label = "nginx (1 worker)"
    return TargetSpec(name, label, lambda lab: _hop(lab, lab.nginx(), name, label))


def haproxy(name: str = "haproxy") -> TargetSpec:
    label = "HAProxy (nbthread 1)"
    return TargetSpec(name, label, lambda lab: _hop(lab, lab.haproxy(), name, label))


def caddy(name: str = "caddy", *, gomaxprocs: int = 1) -> TargetSpec:
    label = f"Caddy (GOMAXPROCS={gomaxprocs})"

    def start(lab: Lab) -> Target:
        port = lab.caddy(gomaxprocs)
        return Target(name, label, f"http://127.0.0.1:{port}{PATH}")

    return TargetSpec(name, label, start)


def relay(name: str = "relay") -> TargetSpec:
    label = "REFERENCE: 30-line trio relay"

    def start(lab: Lab) -> Target:
        target = _hop(lab, lab.relay(), name, label)
        return Target(name, label, target.url, pid=target.pid, reference=True)

    return TargetSpec(name, label, start)


def ours(
    name: str,
    label: str,
    *,
    token: bool = False,
    cache: bool = False,
    proxy_args: tuple[str, ...] = (),
) -> TargetSpec:
    service = CACHED if cache else TOKEN if token else PUBLIC

    def start(lab: Lab) -> Target:
        child = lab.proxy(cache=cache, args=proxy_args)
        headers = (("Authorization", f"Bearer {lab.token(child)}"),) if token else ()
        return Target(
            name,
            label,
            f"{child.url}/{service}{PATH}",
            headers,
            pid=child.process.pid,
            token_required=token,
            cache_hit=cache,
        )

    return TargetSpec(name, label, start)


TARGETS: dict[str, TargetSpec] = {
    spec.name: spec
    for spec in (
        backend(),
        nginx(),
        haproxy(),
        caddy(),
        ours("proxy", "our proxy (public, cache off)"),
        ours("proxy-token", "our proxy (token check)", token=True),
        ours("proxy-cache", "our proxy (cache hit)", cache=True),
        relay(),
    )
}
DEFAULT_TARGETS = tuple(TARGETS)

# (numerator, denominator): issue 14's targets read off these.
COMPARISONS: tuple[tuple[str, str], ...] = (
    ("proxy", "caddy"),
    ("proxy-token", "proxy"),
    ("proxy-cache", "proxy"),
    ("relay", "caddy"),
    ("proxy", "relay"),
    ("caddy", "nginx"),
)


def check_target(target: Target, expected_body: bytes) -> None:
    """Raise unless ``target`` answers the backend's body and header through its hop."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        reply = fetch(target.url, target.headers)
        problems = answer_problems(reply, expected_body, cache_hit=target.cache_hit)
        if not problems:
            break
        if time.monotonic() > deadline:  # a cache needs a miss first; nothing else waits
            raise RuntimeError(f"{target.name} at {target.url}: " + "; ".join(problems))
        time.sleep(0.05)
    if target.token_required:
        bare = fetch(target.url)
        if bare.status != 401:
            raise RuntimeError(f"{target.name}: without a token it answered {bare.status}")


# -- the run -----------------------------------------------------------------------------------
@contextmanager
def lab_running() -> Iterator[Lab]:
    """A `Lab` in a private directory; on the way out its processes are stopped, then the
    directory is removed."""
    with tempfile.TemporaryDirectory(prefix="bench-hop-") as workdir, ExitStack() as stack:
        yield Lab(Path(workdir), secrets.token_hex(8), stack)


def host_facts() -> dict[str, Any]:
    def version(command: list[str]) -> str:
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "missing"
        lines = (out.stdout + out.stderr).strip().splitlines()
        return lines[0] if lines else "?"

    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "h11": H11_NAME,
        "nginx": version([anchors.find_program("nginx"), "-v"]),
        "haproxy": version([anchors.find_program("haproxy"), "-v"]),
        "caddy": version(["caddy", "version"]),
        "wrk": version(["wrk", "-v"]),
        "ab": version(["ab", "-V"]),
    }


def start_targets(lab: Lab, names: Sequence[str]) -> list[Target]:
    lab.start_backend()
    targets = []
    for name in names:
        target = TARGETS[name].start(lab)
        check_target(target, lab.expected_body)
        print(f"checked {name}: {target.url} answers the backend's body", file=sys.stderr)
        targets.append(target)
    return targets


def measure(
    targets: Sequence[Target],
    loads: Sequence[Load],
    *,
    rounds: int,
    duration_s: int,
    warmup_s: int,
) -> list[hop_report.Sample]:
    for target in targets if warmup_s else ():
        for load in loads:
            run_load(load, load_command(load, target.url, target.headers, warmup_s), warmup_s)
    samples = []
    for round_no in range(rounds):
        for load in loads:
            for target in targets:
                command = load_command(load, target.url, target.headers, duration_s)
                result, output = run_load(load, command, duration_s)
                samples.append(
                    hop_report.Sample(
                        target.name, load.name, round_no, run.redact(command), result, output
                    )
                )
                print(
                    f"round {round_no + 1}/{rounds} {load.name:5} {target.name:12}"
                    f" {result.requests_per_s:10,.0f} req/s  failures={result.failures}"
                    f" non-2xx={result.non_2xx}",
                    file=sys.stderr,
                    flush=True,
                )
    return samples


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.hop", description=__doc__.split("\n")[0])
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated")
    parser.add_argument("--loads", default=",".join(LOADS), help="comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    # whole seconds: neither wrk -d nor ab -t takes a fraction
    parser.add_argument("--duration", type=int, default=5, help="seconds per run")
    parser.add_argument("--warmup", type=int, default=1, help="seconds per target and load")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--no-chart", action="store_true")
    parser.add_argument(
        "--hold", action="store_true", help="start and check the targets, then wait for Ctrl-C"
    )
    args = parser.parse_args(argv)
    args.targets = [t for t in args.targets.split(",") if t]
    args.loads = [name for name in args.loads.split(",") if name]
    for name in args.targets:
        if name not in TARGETS:
            parser.error(f"unknown target {name!r} (known: {', '.join(TARGETS)})")
    for name in args.loads:
        if name not in LOADS:
            parser.error(f"unknown load {name!r} (known: {', '.join(LOADS)})")
    if args.rounds < 1 or args.duration < 1 or args.warmup < 0:
        parser.error("--rounds and --duration must be >= 1, --warmup >= 0")
    return args


def exit_on_termination() -> None:
    """SIGTERM and SIGHUP end this process through its ``finally`` blocks, as Ctrl-C does, so
    what it started is stopped (their default action would leave the children running)."""

    def leave(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, leave)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run.raise_open_files_limit()
    exit_on_termination()
    loads = [LOADS[name] for name in args.loads]
    started = time.strftime("%Y%m%dT%H%M%S", time.localtime())
    try:
        with lab_running() as lab:
            targets = start_targets(lab, args.targets)
            if args.hold:
                for target in targets:
                    print(f"target {target.name} {target.url} pid {target.pid}")
                for child in lab.children.started:
                    print(f"process {child.name} pid {child.process.pid}")
                print("holding; Ctrl-C stops everything", flush=True)
                while True:
                    time.sleep(3600)
            load_before = os.getloadavg()
            samples = measure(
                targets,
                loads,
                rounds=args.rounds,
                duration_s=args.duration,
                warmup_s=args.warmup,
            )
            load_after = os.getloadavg()
    except KeyboardInterrupt:
        print("interrupted: everything started was stopped", file=sys.stderr)
        return 130
    except (
        anchors.AnchorUnavailable,
        CaddyUnavailable,
        run.TokenUnavailable,
        BenchOutputError,
        RuntimeError,
        OSError,
        subprocess.TimeoutExpired,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    labels = {t.name: t.label for t in targets}
    figures = hop_report.aggregate(samples)
    found = hop_report.ratios(figures, COMPARISONS, args.loads)
    host = {
        **host_facts(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
    }
    data = hop_report.record(
        started=started,
        host=host,
        settings={
            "rounds": args.rounds,
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "loads": {load.name: load_command(load, "URL", [], args.duration) for load in loads},
        },
        targets=[
            {"name": t.name, "label": t.label, "url": t.url, "reference": t.reference}
            for t in targets
        ],
        samples=samples,
        figures=figures,
        found=found,
    )
    path = hop_report.save(args.out, f"hop-{started}", data)
    print(hop_report.figures_table(figures, labels, args.loads))
    print()
    print(hop_report.ratios_table(found, args.loads))
    note = hop_report.failures_note(figures)
    if note:
        print(note)
    print(
        f"\nload average (1, 5, 15 min) before {host['loadavg_before']}, after"
        f" {host['loadavg_after']}; {host['cpus']} CPUs; h11: {H11_NAME}"
    )
    print(f"record: {path}")
    if not args.no_chart:
        chart = path.with_suffix(".png")
        title = f"one proxy hop, {started}, load avg {host['loadavg_before'][0]}"
        skipped = hop_report.draw_chart(chart, figures, labels, args.loads, title)
        print(skipped or f"chart: {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
