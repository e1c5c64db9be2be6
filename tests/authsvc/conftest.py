"""The auth app served for real on 127.0.0.1:0 and talked to through httpio.upstream, as a
proxy talks to it; shared by the app's test modules."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from authsvc.app import AuthApp
from authsvc.store import UserStore
from authsvc.tokens import CLIENT_HEADER, INTERNAL_HEADER
from httpio.run import serve_tcp
from httpio.upstream import UpstreamPool
from tests.support.clock import FakeClock
from tests.support.pgproc import (
    PostgresProcess,
    PostgresUnavailable,
    postgres_bin_dir,
    running_postgres,
)
from topology.schema import GatewayConfig, ScryptParams

SECRET = "test-secret-" * 4
# Cheap scrypt keeps these suites fast; argon2id, the default, has its own tests.
SETTINGS = GatewayConfig(
    auth_key=SECRET, token_ttl_s=600, password_hash="scrypt", scrypt=ScryptParams(n=16)
)


class Server:
    def __init__(self, app: AuthApp, origin: str, pool: UpstreamPool) -> None:
        self.app = app
        self.origin = origin
        self.pool = pool

    async def call(
        self,
        method: str,
        target: str,
        body: object = None,
        headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> tuple[int, dict[bytes, bytes], Any]:
        raw = (
            b"" if body is None else body if isinstance(body, bytes) else json.dumps(body).encode()
        )
        if target.startswith(("/introspect", "/revocations")) and not headers:
            headers = [(INTERNAL_HEADER, self.app.ring.internal_proof())]  # as a proxy does
        resp = await self.pool.request(self.origin, method, target, list(headers), raw)
        data = await resp.read_all()
        return resp.status, dict(resp.headers), (json.loads(data) if data else None)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_700_000_000.0)


async def serve(
    nursery: trio.Nursery,
    db: Path,
    clock: FakeClock,
    pool: UpstreamPool,
    settings: GatewayConfig = SETTINGS,
    **options: Any,
) -> Server:
    """One more auth server on ``db``: several of them on one file are a fleet's."""
    store = UserStore(db, clock=clock)
    app = AuthApp(settings, store, clock=clock, **options)
    port = await nursery.start(serve_tcp, app.handle, 0)
    return Server(app, f"http://127.0.0.1:{port}", pool)


@pytest.fixture
async def pool() -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool()
    yield pool
    await pool.aclose()


@pytest.fixture
async def server(
    nursery: trio.Nursery, tmp_path: Path, clock: FakeClock, pool: UpstreamPool
) -> AsyncIterator[Server]:
    server = await serve(nursery, tmp_path / "auth.db", clock, pool)
    yield server
    server.app.store.close()


def vouched(server: Server, address: str) -> list[tuple[bytes, bytes]]:
    """The header a proxy adds for a client at ``address``."""
    return [(CLIENT_HEADER, server.app.ring.client_proof(address))]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresProcess]:
    """One PostgreSQL server for the session (tests take a database each:
    `PostgresProcess.create_database`); skipped, saying why, where none can run."""
    try:
        postgres_bin_dir()
        with running_postgres() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
