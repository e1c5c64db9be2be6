"""`bench.hop_anchors`: the backend nginx, the front nginx and HAProxy configs, as text and
as nginx -t and haproxy -c read them (where installed). Nothing is started."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from bench import hop_anchors

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


# -- the anchors' configs ----------------------------------------------------------------------
def test_backend_config_answers_json_itself_on_loopback(tmp_path: Path) -> None:
    body = hop_anchors.expected_body("n0nce")
    text = hop_anchors.nginx_backend_config(tmp_path, 18001, body)
    assert "listen 127.0.0.1:18001;" in text
    assert "access_log off;" in text
    assert f"keepalive_requests {hop_anchors.KEEPALIVE_REQUESTS};" in text
    assert f"return 200 '{body.decode()}';" in text
    assert "add_header X-Hop-Backend nginx always;" in text
    assert "master_process off;" in text and "daemon off;" in text
    assert json.loads(body) == {"backend": "nginx", "run": "n0nce"}


def test_nginx_configs_keep_every_path_in_the_private_directory(tmp_path: Path) -> None:
    for text in (
        hop_anchors.nginx_backend_config(tmp_path, 18001, b"{}"),
        hop_anchors.nginx_proxy_config(tmp_path, 18002, 18001),
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
            hop_anchors.nginx_backend_config(tmp_path, 18001, body)


def test_front_nginx_keeps_upstream_connections_alive(tmp_path: Path) -> None:
    text = hop_anchors.nginx_proxy_config(tmp_path, 18002, 18001)
    assert "listen 127.0.0.1:18002;" in text
    assert "server 127.0.0.1:18001;" in text
    assert f"keepalive {hop_anchors.UPSTREAM_KEEPALIVE};" in text
    assert "proxy_http_version 1.1;" in text
    assert 'proxy_set_header Connection "";' in text


def test_haproxy_config_is_one_thread_with_shared_server_connections() -> None:
    text = hop_anchors.haproxy_config(18003, 18001)
    assert "nbthread 1" in text and "http-reuse always" in text
    assert "bind 127.0.0.1:18003" in text
    assert "server backend 127.0.0.1:18001" in text


@pytest.mark.skipif(NGINX is None, reason="nginx is not installed (bash scripts/system-deps.sh)")
def test_nginx_accepts_both_configs(tmp_path: Path) -> None:
    assert NGINX is not None
    for name, text in (
        ("backend.conf", hop_anchors.nginx_backend_config(tmp_path, 18001, b'{"a":1}')),
        ("front.conf", hop_anchors.nginx_proxy_config(tmp_path, 18002, 18001)),
    ):
        config = tmp_path / name
        config.write_text(text)
        command = [*hop_anchors.nginx_command(NGINX, tmp_path, config), "-t"]
        checked = subprocess.run(command, capture_output=True, text=True, timeout=10)
        assert checked.returncode == 0, checked.stderr


@pytest.mark.skipif(
    HAPROXY is None, reason="haproxy is not installed (bash scripts/system-deps.sh)"
)
def test_haproxy_accepts_its_config(tmp_path: Path) -> None:
    assert HAPROXY is not None
    config = tmp_path / "haproxy.cfg"
    config.write_text(hop_anchors.haproxy_config(18003, 18001))
    checked = subprocess.run(
        [HAPROXY, "-c", "-f", str(config)], capture_output=True, text=True, timeout=10
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
