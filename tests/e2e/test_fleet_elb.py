"""The ELB under a proxy's death: clients keep being served by the proxies left."""

from __future__ import annotations

import signal
import threading
import time

from tests.e2e.harness import RunningFleet, request


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
    for t in threads:
        t.start()
    while len(statuses) < 200:
        time.sleep(0.01)
    fleet.call(fleet.fleet.kill, victim, signal.SIGKILL)
    killed_at = len(statuses)
    while len(statuses) < killed_at + 300:
        time.sleep(0.01)
    stop.set()
    for t in threads:
        t.join(30)
    failures = len(errors) + sum(1 for s in statuses if s != 200)
    # Only requests in flight on the killed process may fail: at most one per worker.
    assert failures <= workers, (failures, errors[:3])
    after = [request(fleet.kr_elb, "/video/echo", headers=auth).status for _ in range(50)]
    assert after == [200] * 50
    fleet.acall(lambda: fleet.fleet.wait_running(victim, not_pid=old_pid))
