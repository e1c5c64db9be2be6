"""`bench.hop_lab`: our proxies' files (read by the proxy's own loader), the run's own auth
key, and the check that an answer came from this run's backend through the hop."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bench import hop_anchors, hop_lab
from proxy.state import ProxyPaths, load_proxy_config

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")


# -- our proxies' files ------------------------------------------------------------------------
@pytest.mark.parametrize("redis_port", [0, 6390])
def test_proxy_files_load_with_the_proxys_own_loader(tmp_path: Path, redis_port: int) -> None:
    files = hop_lab.write_proxy_files(
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
        assert services[hop_lab.CACHED].public and services[hop_lab.CACHED].cache.enabled
        assert set(services) == {"auth", hop_lab.CACHED}
    else:
        assert services[hop_lab.PUBLIC].public and not services[hop_lab.PUBLIC].cache.enabled
        assert not services[hop_lab.TOKEN].public
        assert set(services) == {"auth", hop_lab.PUBLIC, hop_lab.TOKEN}


def test_each_lab_has_its_own_auth_key(tmp_path: Path) -> None:
    from contextlib import ExitStack

    with ExitStack() as stack:
        one, two = hop_lab.Lab(tmp_path, "a", stack), hop_lab.Lab(tmp_path, "b", stack)
    assert len(one.auth_key) >= 32 and one.auth_key != two.auth_key


# -- the check of an answer --------------------------------------------------------------------
BODY = hop_anchors.expected_body("abc")
GOOD = hop_lab.Reply(200, {"x-hop-backend": "nginx", "x-cache": "HIT"}, BODY)


def test_an_answer_from_the_backend_through_a_hop_passes() -> None:
    assert hop_lab.answer_problems(GOOD, BODY) == []
    assert hop_lab.answer_problems(GOOD, BODY, cache_hit=True) == []


@pytest.mark.parametrize(
    ("reply", "problem"),
    [
        (hop_lab.Reply(502, GOOD.headers, BODY), "status 502"),
        (hop_lab.Reply(200, GOOD.headers, hop_anchors.expected_body("other run")), "body"),
        (hop_lab.Reply(200, {"x-cache": "HIT"}, BODY), "X-Hop-Backend"),
    ],
)
def test_an_answer_not_from_this_backend_fails(reply: hop_lab.Reply, problem: str) -> None:
    problems = hop_lab.answer_problems(reply, BODY)
    assert len(problems) == 1 and problem in problems[0]


def test_a_cache_target_must_hit() -> None:
    miss = hop_lab.Reply(200, {"x-hop-backend": "nginx", "x-cache": "MISS"}, BODY)
    assert hop_lab.answer_problems(miss, BODY) == []
    assert "not HIT" in hop_lab.answer_problems(miss, BODY, cache_hit=True)[0]
