"""The original's qualitative checks (`bench.original`: its benchmark/request.sh, each request
made as the script made it) against the default fleet shape: every status line is the
original's or a documented better one, and each answer carries what it should."""

from __future__ import annotations

import json

import pytest

from backends.static_files import generate_builtin_assets
from bench.original import Endpoints, Outcome, run_checks, sign_in_body
from tests.e2e.harness import RunningFleet

# A loopback address of its own, so that the script's five signups and three wrong passwords
# count against no other test's client (the auth servers throttle per address).
SOURCE = "127.0.0.21"


@pytest.fixture(scope="module")
def outcomes(fleet: RunningFleet) -> dict[str, list[Outcome]]:
    endpoints = Endpoints(fleet.kr_elb, fleet.en_elb, fleet.kr_proxies[0])
    lines: list[str] = []
    return {
        section: run_checks(section, endpoints, lines.append, source=SOURCE)
        for section in ("signup", "signin", "regional", "regular")
    }


def test_no_status_line_is_worse_than_the_originals(outcomes: dict[str, list[Outcome]]) -> None:
    every = [o for section in outcomes.values() for o in section]
    assert len(every) == 29
    assert [o.line() for o in every if o.verdict == "WORSE"] == []
    better = [(o.check.section, o.answer.status) for o in every if o.verdict == "better"]
    assert better == [("signup", 201)] * 5 + [("regular", 401)]


def test_signups_and_signins(outcomes: dict[str, list[Outcome]]) -> None:
    for outcome in outcomes["signup"]:
        assert outcome.answer.status == 201
        assert json.loads(outcome.answer.body)["role"] == "user"  # the asked-for role ignored
    right, wrong = outcomes["signin"][:5], outcomes["signin"][5:]
    for outcome in right:
        answer = json.loads(outcome.answer.body)
        assert outcome.answer.status == 200 and answer["token_type"] == "Bearer"
        assert answer["username"] == dict(outcome.check.fields)["username"].casefold()
    for outcome in wrong:
        assert outcome.answer.status == 401
        assert json.loads(outcome.answer.body)["status"] == 401


def test_the_right_requests_get_the_originals_files(outcomes: dict[str, list[Outcome]]) -> None:
    files = generate_builtin_assets()
    for outcome in outcomes["regional"] + outcomes["regular"]:
        if outcome.answer.status == 200:
            name = outcome.check.path.rsplit("/", 1)[1]
            assert outcome.answer.body == files[name], outcome.check.label


def test_the_wrong_ones_get_our_error_body(outcomes: dict[str, list[Outcome]]) -> None:
    errors = [o for o in outcomes["regional"] + outcomes["regular"] if o.answer.status >= 400]
    assert [o.answer.status for o in errors] == [404, 404, 404, 404, 404, 400, 401]
    for outcome in errors:
        body = json.loads(outcome.answer.body)
        # the proxy's own errors carry its request id (issue 12); a backend's 404 passes as is
        assert (
            {"status", "error", "detail"}
            <= set(body)
            <= {"status", "error", "detail", "request_id"}
        )
        assert body["status"] == outcome.answer.status
    assert json.loads(errors[0].answer.body)["detail"] == "unknown region 'de_EU'"


def test_the_authtoken_is_the_whole_signin_body(fleet: RunningFleet) -> None:
    endpoints = Endpoints(fleet.kr_elb, fleet.en_elb, fleet.kr_proxies[0])
    for where in ("kr", "en", "proxy"):
        body = json.loads(sign_in_body(endpoints, where, source=SOURCE))
        assert {"token", "token_type", "expires_in", "username"} <= set(body)
