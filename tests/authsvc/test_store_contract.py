"""The `Store` contract: every test here runs against SQLite (`authsvc.store.UserStore`) and
against a real PostgreSQL server (`authsvc.pgstore.PostgresStore`, started by the suite:
`tests.support.pgproc`), so the two engines keep the same schema and behaviour.

`open_store` (the ``engine`` fixture) opens a new store on that test's own database (a file,
or a database created on the session's server) and may be called again to reopen it, as a
restarted auth server does.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from authsvc.engines import open_store
from authsvc.pgstore import PostgresStore
from authsvc.store import CounterUpdate, Store, StoreUnavailable, UsernameTaken, UserStore
from authsvc.throttle import Counter
from tests.support.pgproc import PostgresProcess
from tests.support.polling import wait_for

Opener = Callable[..., Store]
_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[Store] = []
    if request.param == "sqlite":
        path = tmp_path / "auth.db"

        def opener(**options: Any) -> Store:
            store = UserStore(path, **options)
            opened.append(store)
            return store
    else:
        server: PostgresProcess = request.getfixturevalue("postgres")
        dsn = server.create_database(f"contract_{next(_databases)}")

        def opener(**options: Any) -> Store:
            store = PostgresStore(dsn, **options)
            opened.append(store)
            return store

    yield opener
    for store in opened:
        store.close()


def test_create_get_and_taken(engine: Opener) -> None:
    store = engine()
    migrated: Any = store.statistics()["writes"]  # 1: a new database was given its schema
    store.create_user("alice", "$scrypt$hash", "admin")
    user = store.get_user("alice")
    assert user is not None
    assert (user.username, user.password_hash, user.role) == ("alice", "$scrypt$hash", "admin")
    assert store.get_user("bob") is None
    with pytest.raises(UsernameTaken):
        store.create_user("alice", "other", "user")
    store.update_password_hash("alice", "$scrypt$new")
    assert store.get_user("alice").password_hash == "$scrypt$new"  # type: ignore[union-attr]
    stats = store.statistics()
    assert stats["engine"] in ("sqlite", "postgresql") and stats["writes"] == migrated + 2
    assert f"writes={migrated + 2}" in repr(store)


def test_signups_are_durable_across_a_reopen(engine: Opener) -> None:
    first = engine()
    first.create_user("alice", "h", "user")
    first.close()
    again = engine()
    assert again.get_user("alice") is not None and again.count_users() == 1
    assert again.statistics()["writes"] == 0  # the schema was current: nothing written


def test_look_alike_usernames_are_one_user(engine: Opener) -> None:
    store = engine()
    store.create_user("Alice", "h", "user")
    for twin in ("alice", "ALICE", "\uff41\uff4c\uff49\uff43\uff45", "alice\u200b"):
        with pytest.raises(UsernameTaken):
            store.create_user(twin, "h2", "user")
        user = store.get_user(twin)
        assert user is not None and (user.username, user.display) == ("alice", "Alice")
    with pytest.raises(ValueError):
        store.create_user("\u200b", "h", "user")
    assert store.get_user("\u200b") is None and store.count_users() == 1
    assert [u.display for u in store.list_users()] == ["Alice"]


def test_revocation_feed(engine: Opener) -> None:
    now = [1000.0]
    store = engine(clock=lambda: now[0])
    assert store.revocations_since(0) == (0, [])
    store.revoke("j1", 2000)
    store.revoke("j2", 2000)
    store.revoke("j1", 2000)  # twice is a no-op
    cursor, revoked = store.revocations_since(0)
    assert [r.jti for r in revoked] == ["j1", "j2"] and cursor == revoked[-1].seq
    assert store.revocations_since(cursor) == (cursor, [])
    store.revoke("j3", 2000)
    cursor2, revoked = store.revocations_since(cursor)
    assert [r.jti for r in revoked] == ["j3"] and cursor2 > cursor
    assert store.is_revoked("j2") and not store.is_revoked("nope")
    # A cursor from a replaced database starts the caller over.
    assert [r.jti for r in store.revocations_since(cursor2 + 100)[1]] == ["j1", "j2", "j3"]
    now[0] = 5000.0  # long-expired revocations are pruned on the next write
    store.revoke("j4", 9000)
    assert [r.jti for r in store.revocations_since(0)[1]] == ["j4"]


def test_role_changes_and_deletions_feed_the_proxies(engine: Opener) -> None:
    now = [1000.0]
    store = engine(clock=lambda: now[0])
    store.create_user("alice", "h")
    store.create_user("bob", "h")
    assert store.get_user("alice").role == "user"  # type: ignore[union-attr]
    assert store.user_changes_since(0) == (0, [])
    assert store.set_role("ALICE", "admin") == "alice"
    assert store.get_user("alice").role == "admin"  # type: ignore[union-attr]
    assert store.delete_user("bob") == "bob" and store.get_user("bob") is None
    assert store.set_role("nobody", "admin") is None and store.delete_user("nobody") is None
    cursor, changed = store.user_changes_since(0)
    assert changed == ["alice", "bob"]
    assert store.user_changes_since(cursor) == (cursor, [])
    assert store.user_changes_since(cursor + 50)[1] == ["alice", "bob"]
    now[0] += 3601
    store.set_role("alice", "user")
    assert store.user_changes_since(0)[1] == ["alice"]


def test_throttle_counters_update_in_one_transaction_and_expire(engine: Opener) -> None:
    now = [1000.0]
    store = engine(clock=lambda: now[0])
    bump = CounterUpdate("k", lambda c: Counter((c.count if c else 0) + 1, 1.0, now[0]), 10.0)
    other = CounterUpdate("j", lambda c: Counter(7, 2.0, now[0]), 5.0)
    assert store.read_counters(("k", "j")) == {}
    store.update_counters((bump, other))
    assert store.update_counters((bump,)) == {"k": Counter(2, 1.0, 1000.0)}
    assert store.read_counters(("k", "j", "x")) == {
        "k": Counter(2, 1.0, 1000.0),
        "j": Counter(7, 2.0, 1000.0),
    }
    now[0] = 1006.0
    assert store.read_counters(("k", "j")) == {"k": Counter(2, 1.0, 1000.0)}
    store.delete_counters(("k",))
    assert store.read_counters(("k",)) == {}

    def refuse(counter: Counter | None) -> Counter:
        raise RuntimeError("limit reached")

    store.update_counters((bump,))
    with pytest.raises(RuntimeError):
        store.create_user("carol", "h", counters=(CounterUpdate("k", refuse, 10.0),))
    assert store.get_user("carol") is None  # the user and the counter commit together


def _in_threads(count: int, work: Callable[[int], None]) -> None:
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            work(k)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert errors == [], errors


def test_concurrent_signups_lose_none_and_one_name_has_one_owner(engine: Opener) -> None:
    store = engine(pool_size=3)
    owners: list[int] = []

    def sign_up(k: int) -> None:
        for i in range(20):
            store.create_user(f"t{k}-{i}", "h", "user")
            try:
                store.create_user("contended", "h", f"w{k}")
                owners.append(k)
            except UsernameTaken:
                pass

    _in_threads(6, sign_up)
    assert store.count_users() == 6 * 20 + 1 and len(owners) == 1
    connections: Any = store.statistics()["connections"]
    assert connections <= 3


def test_a_counter_checked_inside_the_write_never_overshoots(engine: Opener) -> None:
    """The signup throttle's rule (`authsvc.app`): a limit checked in the transaction holds
    when many signups of one address race."""
    store = engine(pool_size=4)
    limit = 5

    def count(counter: Counter | None) -> Counter:
        seen = counter.count if counter else 0
        if seen >= limit:
            raise OverflowError
        return Counter(seen + 1, 1.0, 1.0)

    accepted: list[str] = []

    def sign_up(k: int) -> None:
        for i in range(4):
            name = f"s{k}-{i}"
            try:
                store.create_user(name, "h", counters=(CounterUpdate("addr", count, 1e12),))
                accepted.append(name)
            except OverflowError:
                pass

    _in_threads(6, sign_up)
    assert len(accepted) == limit and store.count_users() == limit


def test_a_feed_polled_during_concurrent_writes_misses_nothing(engine: Opener) -> None:
    """Cursor polling sees every revocation exactly once even while writers race (a bare
    PostgreSQL sequence would let a later number commit first)."""
    store = engine(pool_size=4)
    done = threading.Event()
    seen: list[str] = []

    def poll() -> None:
        cursor = 0
        for _ in range(100_000):
            finished = done.is_set()
            cursor, rows = store.revocations_since(cursor)
            seen.extend(r.jti for r in rows)
            if finished and not rows:
                return

    def revoke_many(k: int) -> None:
        for i in range(40):
            store.revoke(f"r{k}-{i}", 2**40)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        _in_threads(4, revoke_many)
    finally:
        done.set()
        poller.join(timeout=60)
    assert sorted(seen) == sorted(f"r{k}-{i}" for k in range(4) for i in range(40))


def test_stores_starting_together_on_a_new_database_all_start(engine: Opener) -> None:
    stores: list[Store] = []
    lock = threading.Lock()

    def start(k: int) -> None:
        store = engine()
        with lock:
            stores.append(store)

    _in_threads(4, start)
    stores[0].create_user("alice", "h")
    assert all(s.get_user("alice") is not None for s in stores)


def test_auth_store_setting_opens_the_engine(tmp_path: Path, postgres: PostgresProcess) -> None:
    sqlite = open_store(f"sqlite:{tmp_path / 'a.db'}")
    assert isinstance(sqlite, UserStore)
    sqlite.close()
    pg = open_store(postgres.create_database("by_setting"))
    assert isinstance(pg, PostgresStore)
    assert postgres.password not in repr(pg) and postgres.password not in str(pg.statistics())
    pg.close()


def test_postgres_down_is_unavailable_then_recovers(tmp_path: Path) -> None:
    """A lost server is `StoreUnavailable` (503), never a hang or a crash, and the pool
    reconnects once the server is back. Its own server: this test stops it."""
    from tests.support.pgproc import running_postgres

    with running_postgres() as server:
        store = PostgresStore(server.dsn)
        try:
            store.create_user("alice", "h")
            server.stop()
            with pytest.raises(StoreUnavailable):
                store.get_user("alice")
            with pytest.raises(StoreUnavailable):
                store.create_user("bob", "h")
            server.start()

            def answers() -> bool:
                try:
                    return store.get_user("alice") is not None
                except StoreUnavailable:
                    return False  # the pool reconnects with a backoff of its own

            wait_for(answers, timeout_s=30, what="the pool reconnecting")
            unavailable: Any = store.statistics()["unavailable"]
            assert unavailable >= 2
        finally:
            store.close()
