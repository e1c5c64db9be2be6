"""Sign-in and signup throttles through the real auth app (issue 8 items 9 and 12): per
(username, address) hard, per username gentle, signups per address, concurrent password
checks per address; fleet-wide through the shared database; keyed on the address a proxy
vouches for, never on one a client claims."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio

from authsvc import passwords
from authsvc.app import load_auth_config
from httpio.upstream import UpstreamPool
from tests.authsvc.conftest import SETTINGS, Server, serve, vouched
from tests.support.clock import FakeClock
from tests.support.polling import wait_until
from topology.schema import AuthLimits

ATTACKER, USER_ELSEWHERE = "198.51.100.66", "203.0.113.10"


async def signin(server: Server, address: str, username: str, password: str) -> Any:
    body = {"username": username, "password": password}
    return await server.call("POST", "/signin", body, headers=vouched(server, address))


async def signup(server: Server, address: str, username: str, password: str = "pw") -> Any:
    body = {"username": username, "password": password}
    return await server.call("POST", "/signup", body, headers=vouched(server, address))


async def test_failures_from_one_address_lock_that_address_only(
    server: Server, clock: FakeClock
) -> None:
    assert (await signup(server, USER_ELSEWHERE, "alice", "right"))[0] == 201
    for _ in range(5):
        assert (await signin(server, ATTACKER, "alice", "wrong"))[0] == 401
    status, headers, body = await signin(server, ATTACKER, "alice", "wrong")
    assert (status, body["error"], headers[b"retry-after"]) == (429, "too_many_requests", b"1")
    # Locked means locked: the right password from there is refused too, without a scrypt.
    assert (await signin(server, ATTACKER, "alice", "right"))[0] == 429
    # Look-alike spellings of the name are the same lock.
    assert (await signin(server, ATTACKER, "ALICE\u200b", "wrong"))[0] == 429
    # The real user, elsewhere, signs in.
    assert (await signin(server, USER_ELSEWHERE, "alice", "right"))[0] == 200
    clock.now += 1
    assert (await signin(server, ATTACKER, "alice", "wrong"))[0] == 401
    status, headers, _ = await signin(server, ATTACKER, "alice", "wrong")
    assert (status, headers[b"retry-after"]) == (429, b"2")
    assert server.app.counters["throttled"] == 4
    assert server.app.counters["signin_failures"] == 6


async def test_a_success_clears_the_pair(server: Server, clock: FakeClock) -> None:
    await signup(server, USER_ELSEWHERE, "alice", "right")
    for _ in range(4):
        await signin(server, USER_ELSEWHERE, "alice", "typo")
    assert (await signin(server, USER_ELSEWHERE, "alice", "right"))[0] == 200
    for _ in range(4):
        assert (await signin(server, USER_ELSEWHERE, "alice", "typo"))[0] == 401


async def test_guessing_spread_over_many_addresses_slows_the_username_gently(
    server: Server, clock: FakeClock
) -> None:
    await signup(server, USER_ELSEWHERE, "alice", "right")
    for i in range(20):
        assert (await signin(server, f"198.51.100.{i}", "alice", "wrong"))[0] == 401
    status, headers, _ = await signin(server, "198.51.100.200", "alice", "wrong")
    assert (status, headers[b"retry-after"]) == (429, b"1")
    assert (await signin(server, USER_ELSEWHERE, "alice", "right"))[0] == 429
    clock.now += 1
    assert (await signin(server, USER_ELSEWHERE, "alice", "right"))[0] == 200
    # Made-up usernames each have their own counters: none of this touched bob.
    await signup(server, USER_ELSEWHERE, "bob", "pw")
    assert (await signin(server, ATTACKER, "bob", "pw"))[0] == 200


async def test_throttles_are_fleet_wide(
    nursery: trio.Nursery, tmp_path: Path, clock: FakeClock, pool: UpstreamPool
) -> None:
    """Four auth servers behind round robin must not give four times the guesses."""
    db = tmp_path / "auth.db"
    fleet = [await serve(nursery, db, clock, pool) for _ in range(2)]
    await signup(fleet[0], USER_ELSEWHERE, "alice", "right")
    for i in range(5):
        assert (await signin(fleet[i % 2], ATTACKER, "alice", "wrong"))[0] == 401
    for server in fleet:
        assert (await signin(server, ATTACKER, "alice", "wrong"))[0] == 429


async def test_signups_per_address(
    nursery: trio.Nursery, tmp_path: Path, clock: FakeClock, pool: UpstreamPool
) -> None:
    limits = AuthLimits(signups_per_address=3, signup_window_s=600)
    settings = msgspec.structs.replace(SETTINGS, auth_limits=limits)
    db = tmp_path / "auth.db"
    fleet = [await serve(nursery, db, clock, pool, settings) for _ in range(2)]
    for i in range(3):
        assert (await signup(fleet[i % 2], ATTACKER, f"bot{i}"))[0] == 201
    for server in fleet:
        status, headers, body = await signup(server, ATTACKER, "bot9")
        assert (status, headers[b"retry-after"]) == (429, b"600"), body
    assert (await signup(fleet[0], USER_ELSEWHERE, "carol"))[0] == 201
    clock.now += 600
    assert (await signup(fleet[1], ATTACKER, "bot9"))[0] == 201
    assert fleet[0].app.store.count_users() == 5


async def test_concurrent_signups_cannot_overshoot_the_limit(
    nursery: trio.Nursery, tmp_path: Path, clock: FakeClock, pool: UpstreamPool
) -> None:
    limits = AuthLimits(signups_per_address=2, concurrent_per_address=10)
    settings = msgspec.structs.replace(SETTINGS, auth_limits=limits)
    server = await serve(nursery, tmp_path / "auth.db", clock, pool, settings)
    statuses: list[int] = []

    async def one(i: int) -> None:
        statuses.append((await signup(server, ATTACKER, f"bot{i}"))[0])

    async with trio.open_nursery() as burst:
        for i in range(8):
            burst.start_soon(one, i)
    assert sorted(statuses) == [201, 201] + [429] * 6
    assert server.app.store.count_users() == 2


async def test_the_address_is_the_one_a_proxy_vouches_for(server: Server, clock: FakeClock) -> None:
    """Without the fleet key's MAC, an X-Gateway-Client or X-Forwarded-For is the client's
    say-so: the throttle keys on the TCP peer (127.0.0.1 here) instead."""
    await signup(server, USER_ELSEWHERE, "alice", "right")
    claims = [[(b"x-gateway-client", f"10.9.9.{i};{'0' * 64}".encode())] for i in range(5)] + [
        [(b"x-forwarded-for", f"10.8.8.{i}".encode())] for i in range(5)
    ]
    for headers in claims[:5]:
        body = {"username": "alice", "password": "wrong"}
        assert (await server.call("POST", "/signin", body, headers=headers))[0] == 401
    body = {"username": "alice", "password": "right"}
    assert (await server.call("POST", "/signin", body, headers=claims[7]))[0] == 429
    assert (await signin(server, USER_ELSEWHERE, "alice", "right"))[0] == 200


async def test_one_address_cannot_fill_the_password_queue(
    nursery: trio.Nursery,
    tmp_path: Path,
    clock: FakeClock,
    pool: UpstreamPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    limits = AuthLimits(concurrent_per_address=2)
    settings = msgspec.structs.replace(SETTINGS, auth_limits=limits)
    server = await serve(nursery, tmp_path / "auth.db", clock, pool, settings, hash_concurrency=4)
    await signup(server, USER_ELSEWHERE, "alice", "right")
    release = threading.Event()
    real_verify = passwords.verify_password

    def slow_verify(password: str, stored: str) -> bool:
        release.wait(30)
        return real_verify(password, stored)

    monkeypatch.setattr(passwords, "verify_password", slow_verify)
    results: list[int] = []

    async def attempt(address: str, password: str) -> None:
        results.append((await signin(server, address, "alice", password))[0])

    try:
        async with trio.open_nursery() as flood:
            for _ in range(2):
                flood.start_soon(attempt, ATTACKER, "wrong")
            await wait_until(lambda: server.app.statistics()["hashes_running"] == 2)
            # A third from the same address is refused at once, before reading its body...
            status, headers, _ = await signin(server, ATTACKER, "alice", "wrong")
            assert (status, headers[b"retry-after"]) == (429, b"1")
            # ... while another client's sign-in is admitted beside the two.
            flood.start_soon(attempt, USER_ELSEWHERE, "right")
            await wait_until(lambda: server.app.statistics()["hashes_running"] == 3)
            release.set()
    finally:
        release.set()
    assert sorted(results) == [200, 401, 401]


def test_limits_come_from_config_json(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    key = {"kid": "k", "secret": "s" * 32}
    path.write_text(json.dumps({"Auth_keys": [key], "Auth_limits": {"signups_per_address": 5}}))
    settings = load_auth_config(path)
    assert settings.auth_limits.signups_per_address == 5
    assert settings.auth_limits.per_address.free == 5


async def test_another_clients_sign_in_goes_ahead_of_a_burst(
    nursery: trio.Nursery,
    tmp_path: Path,
    clock: FakeClock,
    pool: UpstreamPool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One scrypt slot, an attacker with five sign-ins queued: the real user's sign-in waits
    for the hash running and at most one more of the attacker's, not for all five."""
    server = await serve(nursery, tmp_path / "auth.db", clock, pool, hash_concurrency=1)
    await signup(server, USER_ELSEWHERE, "alice", "right")
    entered: list[str] = []
    permits = threading.Semaphore(0)
    real_verify = passwords.verify_password

    def gated_verify(password: str, stored: str) -> bool:
        entered.append(password)
        permits.acquire(timeout=30)
        return real_verify(password, stored)

    monkeypatch.setattr(passwords, "verify_password", gated_verify)

    async def attempt(address: str, username: str, password: str) -> None:
        await signin(server, address, username, password)

    try:
        async with trio.open_nursery() as burst:
            burst.start_soon(attempt, ATTACKER, "nobody-0", "guess-0")
            await wait_until(lambda: entered == ["guess-0"])
            for i in range(1, 6):
                burst.start_soon(attempt, ATTACKER, f"nobody-{i}", f"guess-{i}")
            await wait_until(lambda: server.app.statistics()["hashes_waiting"] == 5)
            burst.start_soon(attempt, USER_ELSEWHERE, "alice", "right")
            await wait_until(lambda: server.app.statistics()["hashes_waiting"] == 6)
            for n in range(2, 8):
                permits.release()
                await wait_until(lambda n=n: len(entered) == n)
            permits.release()
    finally:
        for _ in range(8):
            permits.release()
    assert entered.index("right") in (1, 2), entered
    assert sorted(entered) == sorted(["right"] + [f"guess-{i}" for i in range(6)])
