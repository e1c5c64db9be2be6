"""Issue 9 item 6 (signin): with every auth server down, signin is a dependency outage.

The fleet's auth servers are SIGKILLed by the test; the fleet's supervisor restarts them
after a back-off of at least half a second, and the test waits for that in ``finally``.
While they are down, their port refuses connections: no instance of the auth service
accepts one, nothing was sent, so the client is told to come back (503 with
``Retry-After``), with the same ``dependency_unavailable`` a token check gives.
"""

from __future__ import annotations

import signal

from tests.e2e.harness import Reply, RunningFleet, post_json
from tests.support.polling import wait_for


def test_signin_with_every_auth_server_down_is_503_with_retry_after(fleet: RunningFleet) -> None:
    user = {"username": "e2e-outage", "password": "pw-outage", "role": "user"}
    assert post_json(fleet.kr_elb, "/auth/signup", user).status in (201, 409)
    proxy = fleet.kr_proxies[0]
    names = [f"authsvc-{port}" for port in fleet.auth_ports]
    old_pids = {name: fleet.pid(name) for name in names}
    answers: list[Reply] = []

    def refused() -> bool:
        answers.append(post_json(proxy, "/auth/signin", user))
        return answers[-1].status == 503

    try:
        for name in names:
            fleet.call(fleet.fleet.kill, name, signal.SIGKILL)
        wait_for(refused, timeout_s=5.0, what="signin refused while every auth server is down")
    finally:
        for name in names:
            fleet.acall(
                lambda name=name: fleet.fleet.wait_running(
                    name, not_pid=old_pids[name], timeout_s=60.0
                )
            )
    down = answers[-1]
    assert down.json()["error"] == "dependency_unavailable", down
    assert down.headers["retry-after"] == "1"
    assert down.headers["content-type"] == "application/json"
    assert {a.status for a in answers} <= {200, 502, 503}  # 200/502 only while they died
    wait_for(
        lambda: post_json(proxy, "/auth/signin", user).status == 200,
        timeout_s=30.0,
        what="signin answered again once the auth servers are back",
    )
