"""The processes of one `bench.hop` run: the backend, the anchors, our proxies and what they
need (an auth server, a Redis), started on demand on free ports of 127.0.0.1, with their
files in one private directory, and stopped by PID when the run ends however it ends.

Also what a target must answer: the check that the backend's body, with the run's nonce,
and its header came back through the hop (`answer_problems`, `check_target`).

Our proxies get a config made for the run: a random ``Auth_key`` (never a published one)
shared with the auth server that signs the token, two services in the cache-off process
(``pub``, public; ``tok``, token-checked) and, in the cache-on one, ``cached`` with a TTL
longer than any run, so that every measured request is a hit. YAML being a superset of
JSON, the files are written as JSON.
"""

from __future__ import annotations

import http.client
import json
import secrets
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import hop_anchors, run
from bench.caddy import free_port, running_caddy
from bench.policies import Child, Children

BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 15.0
HTTP_TIMEOUT_S = 5.0
PATH = "/hop"
BENCH_USER, BENCH_PASSWORD = "hop-bench", "hop-bench-password"


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
    header = hop_anchors.BACKEND_HEADER.lower()
    if reply.headers.get(header) != hop_anchors.BACKEND_HEADER_VALUE:
        problems.append(
            f"no {hop_anchors.BACKEND_HEADER}: {hop_anchors.BACKEND_HEADER_VALUE} header"
        )
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
        return hop_anchors.expected_body(self.nonce)

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
        config.write_text(hop_anchors.nginx_backend_config(self.workdir, port, self.expected_body))
        binary = hop_anchors.find_program("nginx")
        child = self.spawn("backend", hop_anchors.nginx_command(binary, self.workdir, config), port)
        self.wait_until_answers(child, f"http://127.0.0.1:{port}{PATH}", "the backend nginx")
        self.backend_port = port

    def nginx(self) -> Child:
        port = free_port()
        config = self.workdir / "front.conf"
        config.write_text(hop_anchors.nginx_proxy_config(self.workdir, port, self.backend_port))
        binary = hop_anchors.find_program("nginx")
        return self.spawn("nginx", hop_anchors.nginx_command(binary, self.workdir, config), port)

    def haproxy(self) -> Child:
        port = free_port()
        config = self.workdir / "haproxy.cfg"
        config.write_text(hop_anchors.haproxy_config(port, self.backend_port))
        binary = hop_anchors.find_program("haproxy")
        return self.spawn("haproxy", hop_anchors.haproxy_command(binary, config), port)

    def caddy(self, gomaxprocs: int) -> int:
        return self.stack.enter_context(
            running_caddy(f"127.0.0.1:{self.backend_port}", gomaxprocs=gomaxprocs)
        )

    def relay(self) -> Child:
        port = free_port()
        args = [sys.executable, "-m", "bench.hop_relay", str(port), str(self.backend_port)]
        return self.spawn("relay", args, port)

    # -- ours ---------------------------------------------------------------------------------
    def redis_port(self) -> int:
        if not self._redis_port:
            port = free_port()
            binary = shutil.which("redis-server")
            if binary is None:
                raise hop_anchors.AnchorUnavailable("redis-server is not installed")
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


@contextmanager
def lab_running() -> Iterator[Lab]:
    """A `Lab` in a private directory; on the way out its processes are stopped, then the
    directory is removed."""
    with tempfile.TemporaryDirectory(prefix="bench-hop-") as workdir, ExitStack() as stack:
        yield Lab(Path(workdir), secrets.token_hex(8), stack)
