"""`bench.original` and the pure parts of `bench.benchmark`: the original script's checks as
data, the bytes httpie and curl would have sent, the lines it kept of ab's report, the
verdicts, and the fleet addresses and free-port copies the benchmark runs on."""

from __future__ import annotations

import json
import resource
from pathlib import Path

import pytest

from bench import benchmark, original
from bench.original import (
    CHECKS,
    SECTIONS,
    Answer,
    Check,
    Endpoints,
    checks_of,
    curl_request,
    essential_lines,
    httpie_request,
    verdict,
)
from bench.run import SCENARIOS
from tests.bench.test_parse import AB_OK
from topology.fleet import DEFAULT_TOPOLOGY, plan_fleet
from topology.load import load_fleet, load_msa

ENDPOINTS = Endpoints("http://127.0.0.1:9000", "http://127.0.0.1:9001", "http://127.0.0.1:6000")


def test_every_check_of_the_script_is_there_in_its_order() -> None:
    counts = {section: len(checks_of(section)) for section in SECTIONS}
    assert counts == {
        "signup": 5,
        "signin": 8,
        "regional": 8,
        "regular": 8,
        "concurrent": 0,
        "image": 0,
        "large": 0,
    }
    assert len(CHECKS) == 29
    assert list(SECTIONS) == list(benchmark.ORDER)
    loads = [load for _, _, load in SECTIONS.values() if load]
    assert loads == ["signin", "region", "regular", "concurrent", "image", "large"]
    assert all(load in SCENARIOS for load in loads)
    labels = [c.label for c in checks_of("regular")]
    assert labels[-1] == "Request without auth token header : "
    assert checks_of("regular")[-1].token_from is None and not checks_of("regular")[-1].token_text


def test_the_only_departures_from_the_original_are_the_documented_ones() -> None:
    departures = [(c.section, c.label, c.also_accepted) for c in CHECKS if c.also_accepted]
    assert departures == [("signup", "", (201,))] * 5 + [
        ("regular", "Request without auth token header : ", (401,))
    ]


def test_httpie_sends_a_json_object_of_its_key_value_arguments() -> None:
    raw = httpie_request(
        "http://127.0.0.1:9001", "/auth/signup", (("username", "alpha"), ("password", "beta"))
    )
    head, body = raw.split(b"\r\n\r\n")
    assert json.loads(body) == {"username": "alpha", "password": "beta"}
    assert body == b'{"username": "alpha", "password": "beta"}'  # httpie's separators
    lines = head.split(b"\r\n")
    assert lines[0] == b"POST /auth/signup HTTP/1.1"
    assert b"Host: localhost:9001" in lines and b"Content-Type: application/json" in lines
    assert f"Content-Length: {len(body)}".encode() in lines


def test_curl_writes_the_authtoken_header_as_given() -> None:
    token = '{"token":"a.b.c","token_type":"Bearer"}'
    raw = curl_request("http://127.0.0.1:9000", "/sound/test.css", token, "en_US")
    assert raw == (
        b"GET /sound/test.css HTTP/1.1\r\nHost: localhost:9000\r\nUser-Agent: curl/7.47.0\r\n"
        b'Accept: */*\r\nAuthToken:{"token":"a.b.c","token_type":"Bearer"}\r\n'
        b"Accept-Language: en_US\r\n\r\n"
    )
    assert b"AuthToken" not in curl_request("http://127.0.0.1:9000", "/video/test.hs", None, None)


def test_the_script_kept_five_lines_of_abs_report() -> None:
    stdout = AB_OK.replace("Completed", "").replace("Finished 3000 requests", "")  # ab -q
    lines = essential_lines(stdout)
    assert [line.split(":")[0].strip() for line in lines[:5]] == [
        "Complete requests",
        "Failed requests",
        "Time per request",
        "Time per request",
        "Transfer rate",
    ]
    assert lines[-1].endswith("(longest request)") and len(lines) == 6


def test_verdicts() -> None:
    check = Check("regular", "x : ", "kr", "/video/test.hs", "HTTP/1.1 400 Bad Request")
    tolerant = Check(
        "regular", "x : ", "kr", "/v", "HTTP/1.1 400 Bad Request", also_accepted=(401,)
    )
    assert verdict(check, Answer(11, 400, "Bad Request", b"")) == "same"
    assert verdict(check, Answer(11, 401, "Unauthorized", b"")) == "WORSE"
    assert verdict(tolerant, Answer(11, 401, "Unauthorized", b"")) == "better"
    assert verdict(tolerant, Answer(11, 500, "Internal Server Error", b"")) == "WORSE"
    assert Answer(10, 200, "OK", b"").status_line == "HTTP/1.0 200 OK"
    outcome = original.Outcome(tolerant, Answer(11, 401, "Unauthorized", b""))
    assert outcome.line().endswith("| original: HTTP/1.1 400 Bad Request (better)")


def test_the_default_topology_has_the_scripts_addresses() -> None:
    assert benchmark.endpoints_of(load_fleet(DEFAULT_TOPOLOGY)) == ENDPOINTS
    assert ENDPOINTS.origin("proxy") == "http://127.0.0.1:6000"


def test_a_free_port_copy_moves_every_port_and_instance(tmp_path: Path) -> None:
    path = benchmark.free_port_topology(DEFAULT_TOPOLOGY, tmp_path)
    before = load_fleet(DEFAULT_TOPOLOGY)
    after = load_fleet(path)
    old_ports = {c.port for c in plan_fleet(before, DEFAULT_TOPOLOGY, tmp_path, {}).children}
    new_ports = {c.port for c in plan_fleet(after, path, tmp_path, {}).children}
    assert len(new_ports) == len(old_ports) == 18 and old_ports.isdisjoint(new_ports)
    for old, new in zip(before.regions, after.regions, strict=True):
        assert old.code == new.code
        urls = [i.url for s in load_msa(path.parent / new.msa).service for i in s.instances()]
        ports = {int(u.rsplit(":", 1)[1]) for u in urls}
        assert ports <= new_ports
        services = [s.name for s in load_msa(path.parent / new.msa).service]
        assert services == [s.name for s in load_msa(DEFAULT_TOPOLOGY.parent / old.msa).service]
    assert (tmp_path / "config.json").read_bytes() == (
        DEFAULT_TOPOLOGY.parent / "config.json"
    ).read_bytes()


def test_the_open_file_limit_is_left_alone_when_high_enough() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert benchmark.raise_open_files(min(soft, 64)).endswith(
        "not needed, the limit is already " + str(soft)
    )
    assert resource.getrlimit(resource.RLIMIT_NOFILE) == (soft, hard)


def test_a_refused_hard_limit_is_said_and_the_soft_one_raised_as_far_as_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = {"now": (1024, 4096)}

    def setrlimit(_: int, value: tuple[int, int]) -> None:
        if value[1] > limits["now"][1]:
            raise ValueError("not allowed to raise maximum limit")
        limits["now"] = value

    monkeypatch.setattr(resource, "getrlimit", lambda _: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    said = benchmark.raise_open_files(9000)
    assert "the machine refuses (not allowed to raise maximum limit)" in said
    assert limits["now"] == (4096, 4096)
    limits["now"] = (1024, 65536)
    assert benchmark.raise_open_files(9000) == "ulimit -n 9000: raised from 1024"
    assert limits["now"] == (9000, 65536)
