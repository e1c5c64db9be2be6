"""The servers `bench.hop` measures our proxy against, and the backend they all sit in front of.

The backend is a Debian nginx that answers every path with a small JSON body of its own
(``return 200``: no file, no upstream), so it is not what limits the hop being measured; its
access log is off and ``keepalive_requests`` is high enough (one million) that no load here
ever makes it close a keep-alive connection. The body carries a nonce made for the run and
the answer an ``X-Hop-Backend`` header, so a check through each anchor proves the bytes came
from this backend and passed through the hop (`expected_body`, `BACKEND_HEADER`).

In front of it, each on one core, as each of our gateway processes is one trio thread:

- nginx: one process (``master_process off``: the worker's event loop runs in the process we
  started, so stopping that PID stops everything it runs), upstream ``keepalive``;
- HAProxy: ``nbthread 1``, ``http-reuse always``, in the foreground (``-db``);
- Caddy: `bench.caddy` starts it with ``GOMAXPROCS`` as asked.

Every config is rendered here as text (pure functions, tested without starting anything),
listens on 127.0.0.1 only, and keeps its pid file, logs and temp paths in a private
directory: nothing is written under /var or /run, and nothing is keyed by a port alone.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

BACKEND_HEADER = "X-Hop-Backend"
BACKEND_HEADER_VALUE = "nginx"
# One million: at 40,000 req/s over 50 connections a 10 s run is 8,000 per connection.
KEEPALIVE_REQUESTS = 1_000_000
WORKER_CONNECTIONS = 4096
UPSTREAM_KEEPALIVE = 64  # idle upstream connections a front nginx keeps: > wrk's 50


class AnchorUnavailable(Exception):
    """An anchor's program is not installed (the message says how to install it)."""


def find_program(name: str) -> str:
    """Debian puts nginx and haproxy in /usr/sbin, which a non-root PATH may lack."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if found is None:
        raise AnchorUnavailable(f"{name} is not installed (bash scripts/system-deps.sh)")
    return found


def expected_body(nonce: str) -> bytes:
    """The JSON the backend answers with; ``nonce`` ties it to one run."""
    return json.dumps({"backend": "nginx", "run": nonce}, separators=(",", ":")).encode()


def _nginx_common(prefix: Path, name: str) -> str:
    """Process-level settings shared by both nginx roles: one process in the foreground,
    its pid file, error log and every temp path inside ``prefix``."""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix / name}-{kind}-temp;"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        "daemon off;\n"
        "master_process off;\n"
        "worker_processes 1;\n"
        f"pid {prefix / name}.pid;\n"
        f"error_log {prefix / name}-error.log warn;\n"
        f"events {{ worker_connections {WORKER_CONNECTIONS}; }}\n"
        "http {\n"
        "    access_log off;\n"
        f"{temp}\n"
        f"    keepalive_requests {KEEPALIVE_REQUESTS};\n"
        "    keepalive_timeout 75s;\n"
    )


def nginx_backend_config(prefix: Path, port: int, body: bytes) -> str:
    """The backend: every path answers 200 with ``body`` (JSON) and `BACKEND_HEADER`."""
    text = body.decode("ascii")
    if any(c in text for c in "'\\$"):  # nginx would read these inside the quoted string
        raise ValueError(f"body {text!r} holds a character nginx interprets")
    return _nginx_common(prefix, "backend") + (
        "    server {\n"
        f"        listen 127.0.0.1:{port};\n"
        "        location / {\n"
        "            default_type application/json;\n"
        f"            add_header {BACKEND_HEADER} {BACKEND_HEADER_VALUE} always;\n"
        f"            return 200 '{text}';\n"
        "        }\n"
        "    }\n"
        "}\n"
    )


def nginx_proxy_config(prefix: Path, port: int, upstream_port: int) -> str:
    """nginx as the hop: HTTP/1.1 to the backend over a pool of kept-alive connections."""
    return _nginx_common(prefix, "front") + (
        "    upstream backend {\n"
        f"        server 127.0.0.1:{upstream_port};\n"
        f"        keepalive {UPSTREAM_KEEPALIVE};\n"
        f"        keepalive_requests {KEEPALIVE_REQUESTS};\n"
        "    }\n"
        "    server {\n"
        f"        listen 127.0.0.1:{port};\n"
        "        location / {\n"
        "            proxy_pass http://backend;\n"
        "            proxy_http_version 1.1;\n"
        '            proxy_set_header Connection "";\n'
        "        }\n"
        "    }\n"
        "}\n"
    )


def nginx_command(binary: str, prefix: Path, config: Path) -> list[str]:
    """``-e`` sends the errors nginx logs before it has read ``config`` to ``prefix`` too
    (without it, it opens /var/log/nginx/error.log first)."""
    return [binary, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "startup-error.log")]


def haproxy_config(port: int, upstream_port: int) -> str:
    """HAProxy as the hop: one thread, server-side connections shared by every client
    (``http-reuse always``: the backend is ours and answers every request alike)."""
    return (
        "global\n"
        "    nbthread 1\n"
        "    maxconn 4096\n"
        "defaults\n"
        "    mode http\n"
        "    option http-keep-alive\n"
        "    http-reuse always\n"
        "    timeout connect 5s\n"
        "    timeout client 30s\n"
        "    timeout server 30s\n"
        "    timeout http-keep-alive 30s\n"
        "frontend hop\n"
        f"    bind 127.0.0.1:{port}\n"
        "    default_backend nginx\n"
        "backend nginx\n"
        f"    server backend 127.0.0.1:{upstream_port}\n"
    )


def haproxy_command(binary: str, config: Path) -> list[str]:
    """``-db``: stay in the foreground, one process, no master."""
    return [binary, "-db", "-f", str(config)]
