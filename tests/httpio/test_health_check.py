"""`httpio.health_check`: probes, rounds, and the fixed schedule.

The scheduling tests use a fake upstream on trio's autojump clock, so intervals and probe
timeouts cost no wall time and every round starts at an exact, predictable instant. One test
probes real servers (a listening one and a refused port) through the real upstream pool.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from httpio.balance import Endpoint, ServicePool
from httpio.errors import UpstreamTimeout, UpstreamUnreachable
from httpio.health import State
from httpio.health_check import USER_AGENT, check_round, probe_health, run_health_checks
from httpio.messages import Request, Response, json_response
from httpio.run import serve_tcp
from httpio.settings import HealthSettings
from httpio.upstream import UpstreamPool
from tests.support.ports import held_port

A = "http://10.0.0.1:5000"
B = "http://10.0.0.2:5000"
SETTINGS = HealthSettings(path="/healthz", interval_s=1.0, timeout_s=0.5, rise=2, fall=3)


class FakeResponse:
    def __init__(self, status: int) -> None:
        self.status = status
        self.closed = False

    async def read(self) -> bytes:
        return b""

    async def aclose(self) -> None:
        self.closed = True


class FakeUpstream:
    """Answers each probe by the instance's current mode: an HTTP status, an exception to
    raise, or "hang" (never answers). Records when and where each probe went."""

    def __init__(self, modes: dict[str, int | Exception | str], *, delay_s: float = 0.0) -> None:
        self.modes = modes
        self.delay_s = delay_s
        self.probes: list[tuple[float, str, str, str]] = []
        self.responses: list[FakeResponse] = []
        self.headers: list[list[tuple[bytes, bytes]]] = []
        self.in_flight = 0
        self.peak_in_flight = 0

    async def request(
        self,
        *,
        origin: str,
        method: str,
        target: str,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> FakeResponse:
        self.probes.append((trio.current_time(), origin, method, target))
        self.headers.append(headers)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await trio.sleep(self.delay_s)
            mode = self.modes[origin]
            if mode == "hang":
                await trio.sleep_forever()
            if isinstance(mode, Exception):
                raise mode
            assert isinstance(mode, int)
            response = FakeResponse(mode)
            self.responses.append(response)
            return response
        finally:
            self.in_flight -= 1

    def round_starts(self) -> list[float]:
        return sorted({t for t, *_ in self.probes})


def make_pool(*urls: str, settings: HealthSettings = SETTINGS) -> ServicePool:
    return ServicePool(
        "svc", [Endpoint.parse(u) for u in urls], health=settings, clock=trio.current_time
    )


def state_of(pool: ServicePool, url: str) -> State:
    return pool.health.state(url)


# -- one probe --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "passed"),
    [
        (200, True),
        (204, True),
        (301, True),
        (399, True),
        (404, False),
        (500, False),
        (503, False),
        (UpstreamUnreachable("refused"), False),
        (UpstreamTimeout("slow"), False),
        (OSError("odd"), False),
        ("hang", False),
    ],
)
async def test_probe_verdicts(
    autojump_clock: trio.testing.MockClock, mode: int | Exception | str, passed: bool
) -> None:
    upstream = FakeUpstream({A: mode})
    start = trio.current_time()
    assert await probe_health(upstream, A, SETTINGS.path, SETTINGS.timeout_s) is passed
    assert upstream.probes == [(start, A, "GET", "/healthz")]
    if mode == "hang":
        assert trio.current_time() == start + SETTINGS.timeout_s
    for response in upstream.responses:
        assert response.closed  # the pool gets its connection back or closes it


async def test_probe_says_who_it_is() -> None:
    upstream = FakeUpstream({A: 200})
    await probe_health(upstream, A, SETTINGS.path, SETTINGS.timeout_s)
    assert upstream.headers == [[(b"user-agent", USER_AGENT)]]


# -- rounds -----------------------------------------------------------------------------------
async def test_check_round_probes_every_instance_concurrently(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = FakeUpstream({A: 200, B: 500}, delay_s=0.3)
    pool = make_pool(A, B)
    start = trio.current_time()
    results = await check_round(pool, SETTINGS, upstream, trio.CapacityLimiter(10))
    assert results == {A: True, B: False}
    assert trio.current_time() == start + 0.3  # concurrently, not one after the other
    assert state_of(pool, A) is State.HEALTHY
    assert state_of(pool, B) is State.SUSPECT


async def test_check_round_respects_the_concurrency_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    urls = [f"http://10.0.0.{i}:80" for i in range(1, 8)]
    upstream = FakeUpstream(dict.fromkeys(urls, 200), delay_s=0.1)
    pool = make_pool(*urls)
    start = trio.current_time()
    await check_round(pool, SETTINGS, upstream, trio.CapacityLimiter(3))
    assert upstream.peak_in_flight == 3
    assert trio.current_time() == pytest.approx(start + 0.3)  # ceil(7 / 3) waves


async def test_instance_goes_down_after_fall_failures_and_back_after_rise_passes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = FakeUpstream({A: UpstreamUnreachable("refused"), B: 200})
    pool = make_pool(A, B)
    seen: list[State] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(run_health_checks, pool, upstream)
        start = trio.current_time()
        for k in range(3):  # rounds at +0, +1, +2 fail
            await trio.sleep_until(start + k + 0.5)
            seen.append(state_of(pool, A))
        upstream.modes[A] = 200
        for k in range(3, 6):  # rounds at +3, +4, +5 pass
            await trio.sleep_until(start + k + 0.5)
            seen.append(state_of(pool, A))
        nursery.cancel_scope.cancel()
    H, S, E = State.HEALTHY, State.SUSPECT, State.EJECTED
    assert seen == [S, S, E, E, H, H]
    assert state_of(pool, B) is H


async def test_an_ejected_instance_gets_no_traffic_until_it_rises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = FakeUpstream({A: 503, B: 200})
    pool = make_pool(A, B)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_health_checks, pool, upstream)
        start = trio.current_time()
        await trio.sleep_until(start + 2.5)
        assert {pool.pick().url for _ in range(6)} == {B}
        upstream.modes[A] = 200
        await trio.sleep_until(start + 4.5)
        assert {pool.pick().url for _ in range(6)} == {A, B}
        nursery.cancel_scope.cancel()


async def test_rounds_run_on_a_fixed_schedule_despite_slow_probes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = FakeUpstream({A: 200, B: 200}, delay_s=0.4)
    pool = make_pool(A, B)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_health_checks, pool, upstream)
        start = trio.current_time()
        await trio.sleep_until(start + 4.5)
        nursery.cancel_scope.cancel()
    # not start + k * (1 + 0.4): a slow round does not push the next one later
    assert upstream.round_starts() == [start + k for k in range(5)]
    assert len(upstream.probes) == 10


async def test_an_overrunning_round_skips_missed_slots_instead_of_bursting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = HealthSettings(interval_s=1.0, timeout_s=2.5, rise=1, fall=1)
    upstream = FakeUpstream({A: "hang"})
    pool = make_pool(A, settings=settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_health_checks, pool, upstream)
        start = trio.current_time()
        await trio.sleep_until(start + 6)
        nursery.cancel_scope.cancel()
    assert upstream.round_starts() == [start, start + 2.5, start + 5.0]
    assert state_of(pool, A) is State.EJECTED


async def test_interval_defaults_to_the_config_value(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = HealthSettings(interval_s=None)
    upstream = FakeUpstream({A: 200})
    pool = make_pool(A, settings=settings)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: run_health_checks(
                pool, upstream, default_interval_s=7.0, task_status=task_status
            )
        )
        start = trio.current_time()
        await trio.sleep_until(start + 15)
        nursery.cancel_scope.cancel()
    assert upstream.round_starts() == [start, start + 7, start + 14]
    assert {target for *_, target in upstream.probes} == {"/health"}


async def test_a_config_reload_takes_effect_at_the_next_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = FakeUpstream({A: 200, B: 200})
    pool = make_pool(A)
    async with trio.open_nursery() as nursery:
        await nursery.start(run_health_checks, pool, upstream)
        start = trio.current_time()
        await trio.sleep_until(start + 0.5)
        pool.swap_endpoints([Endpoint.parse(B)])
        await trio.sleep_until(start + 1.5)
        nursery.cancel_scope.cancel()
    assert [(t - start, origin) for t, origin, *_ in upstream.probes] == [(0, A), (1, B)]


async def test_reloaded_health_settings_take_effect_at_the_next_round(
    autojump_clock: trio.testing.MockClock,
) -> None:
    upstream = FakeUpstream({A: 200})
    pool = make_pool(A)  # /healthz every 1 s
    async with trio.open_nursery() as nursery:
        await nursery.start(run_health_checks, pool, upstream)
        start = trio.current_time()
        await trio.sleep_until(start + 0.5)
        pool.set_health(HealthSettings(path="/ready", interval_s=3.0))
        await trio.sleep_until(start + 7.5)
        nursery.cancel_scope.cancel()
    assert [(t - start, target) for t, _, _, target in upstream.probes] == [
        (0, "/healthz"),
        (1, "/ready"),
        (4, "/ready"),
        (7, "/ready"),
    ]


# -- real sockets -----------------------------------------------------------------------------
@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port that refuses connections for the whole test: bound, never listening."""
    with held_port() as port:
        yield port


async def test_check_round_against_real_servers(refused_port: int) -> None:
    seen: list[Request] = []

    async def backend(request: Request) -> Response:
        seen.append(request)
        if request.path == "/health":
            return json_response(200, {"status": "ok"})
        return json_response(404, {})

    upstream = UpstreamPool()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_tcp, backend, 0)
        live, dead = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{refused_port}"
        pool = make_pool(live, dead, settings=HealthSettings(timeout_s=5.0, fall=1))
        with trio.fail_after(10):
            results = await check_round(
                pool, pool.health.settings, upstream, trio.CapacityLimiter(4)
            )
        assert results == {live: True, dead: False}
        assert state_of(pool, live) is State.HEALTHY
        assert state_of(pool, dead) is State.EJECTED
        assert [(r.method, r.target) for r in seen] == [("GET", "/health")]
        assert seen[0].header(b"user-agent") == USER_AGENT
        assert upstream.statistics()["in_use"] == 0  # nothing leaked
        await upstream.aclose()
        nursery.cancel_scope.cancel()
