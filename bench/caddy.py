"""Caddy as a yardstick: one reverse-proxy hop of a mature Go server, pinned to one core.

The question this answers is "what does one proxy hop cost us, compared with a well-tuned
server doing the same hop?". Caddy runs with ``GOMAXPROCS=1`` because each of our gateway
processes is one trio thread: comparing one core with one core is the fair fight.

We do not use ``caddy reverse-proxy --from ...``: for any address with a host part it switches
on automatic HTTPS, listens on :80 for redirects, and installs its local root CA into the
system trust stores. A JSON config with ``automatic_https.disable``, the admin API off,
HTTP/1.1 only, listening on 127.0.0.1, and its data and config dirs in a temporary directory
does one hop and touches nothing else.

Usage: ``python -m bench.caddy --backend http://127.0.0.1:5002 --proxy-url URL --token T``
runs the wrk scenario against the backend directly, through Caddy, and (with ``--proxy-url``)
through our proxy, and prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from bench import run
from bench.parse import format_table

READY_TIMEOUT_S = 10.0


class CaddyUnavailable(Exception):
    """caddy is not installed or did not start listening."""


def caddy_config(port: int, upstream: str) -> dict[str, object]:
    """A Caddy JSON config that proxies 127.0.0.1:``port`` to ``upstream`` (host:port)."""
    return {
        "admin": {"disabled": True},
        "logging": {"logs": {"default": {"level": "ERROR"}}},
        "apps": {
            "http": {
                "servers": {
                    "bench": {
                        "listen": [f"127.0.0.1:{port}"],
                        "protocols": ["h1"],
                        "automatic_https": {"disable": True},
                        "routes": [
                            {
                                "handle": [
                                    {"handler": "reverse_proxy", "upstreams": [{"dial": upstream}]}
                                ]
                            }
                        ],
                    }
                }
            }
        },
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], deadline: float) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CaddyUnavailable(f"caddy exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise CaddyUnavailable(f"caddy did not listen on 127.0.0.1:{port} in {READY_TIMEOUT_S:g}s")


@contextmanager
def running_caddy(upstream: str, port: int = 0, *, gomaxprocs: int = 1) -> Iterator[int]:
    """Run caddy in front of ``upstream`` ("127.0.0.1:5002") on ``gomaxprocs`` cores; yields
    the port it listens on, and stops that one process (by its PID) on exit."""
    binary = shutil.which("caddy")
    if binary is None:
        raise CaddyUnavailable("caddy is not installed (apt-get install -y caddy)")
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="bench-caddy-") as home:
        config = Path(home, "caddy.json")
        config.write_text(json.dumps(caddy_config(port, upstream)))
        env = dict(
            os.environ,
            GOMAXPROCS=str(gomaxprocs),
            HOME=home,
            XDG_DATA_HOME=home,
            XDG_CONFIG_HOME=home,
        )
        proc = subprocess.Popen(
            [binary, "run", "--config", str(config)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            _wait_listening(port, proc, time.monotonic() + READY_TIMEOUT_S)
            yield port
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stderr is not None:
                proc.stderr.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.caddy", description=__doc__)
    parser.add_argument("--backend", required=True, help="backend origin, http://127.0.0.1:5002")
    parser.add_argument("--path", default="/index.html")
    parser.add_argument("--proxy-url", help="the same resource through our proxy, for a third row")
    parser.add_argument("--token", help="bearer token for the proxy row")
    parser.add_argument("--scenario", default="wrk", choices=sorted(run.SCENARIOS))
    parser.add_argument("--duration", default=None, help="wrk duration, e.g. 10s")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args(argv)

    upstream = urlsplit(args.backend).netloc
    scenario = run.SCENARIOS[args.scenario]
    overrides = run.Overrides(duration=args.duration)
    rows = []
    with running_caddy(upstream) as port:
        targets: list[tuple[str, str, list[tuple[str, str]]]] = [
            ("direct", args.backend.rstrip("/") + args.path, []),
            ("caddy", f"http://127.0.0.1:{port}{args.path}", []),
        ]
        if args.proxy_url:
            auth = [("Authorization", f"Bearer {args.token}")] if args.token else []
            targets.append(("proxy", args.proxy_url, auth))
        for label, url, headers in targets:
            run.preflight(url, headers, scenario)
            outcome = run.run_scenario(scenario, url, headers, overrides)
            run.save_record(Path(args.out), f"{args.scenario}-{label}", url, outcome)
            rows.append((f"{args.scenario}/{label}", outcome.result))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
