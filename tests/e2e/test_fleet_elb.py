"""The ELB under a proxy's death: clients keep being served by the proxies left."""

from __future__ import annotations

import signal
import threading
import time

from tests.e2e.harness import RunningFleet, request
from tests.support.polling import wait_for


def test_proxy_killed_under_load_elb_routes_around_it(fleet: RunningFleet, token: str) -> None:
    auth = {"authorization": f"Bearer {token}"}
    port = fleet.kr_proxies[1].rsplit(":", 1)[1]
    victim = f"proxy-ko_KR-{port}"
    old_pid = fleet.pid(victim)
    statuses: list[int] = []
    errors: list[str] = []
    stop = threading.Event()
    workers = 6

    def load() -> None:
        deadline = time.monotonic() + 30
        for _ in range(2000):  # bounded in count and in time
            if stop.is_set() or time.monotonic() > deadline:
                return
            try:
                statuses.append(
                    request(fleet.kr_elb, "/video/echo", headers=auth, timeout=10).status
                )
            except OSError as exc:
                errors.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(workers)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: len(statuses) >= 200, what="200 requests answered before the kill")
        fleet.call(fleet.fleet.kill, victim, signal.SIGKILL)
        done_at = len(statuses) + len(errors)
        wait_for(
            lambda: len(statuses) + len(errors) >= done_at + 300,
            what="300 more requests after the kill",
        )
        stop.set()
        for t in threads:
            t.join(30)
        # Connections already handed to the process when it died die with it (as with any
        # server killed -9): those requests see a reset. Every request that got an answer
        # got a 200, and the ELB stops handing connections to the dead proxy at once.
        assert all(s == 200 for s in statuses)
        assert all("Reset" in e or "Aborted" in e or "RemoteDisconnected" in e for e in errors), (
            errors[:3]
        )
        assert len(errors) < 0.05 * len(statuses), (len(errors), len(statuses))
        after = [request(fleet.kr_elb, "/video/echo", headers=auth).status for _ in range(50)]
        assert after == [200] * 50
    finally:
        stop.set()
        fleet.acall(lambda: fleet.fleet.wait_running(victim, not_pid=old_pid))
