"""Which `Store` an ``Auth_store`` setting names, and opening it.

``sqlite:PATH`` (the default, ``sqlite:auth.sqlite3``) is one file shared by the auth servers
of one host (`authsvc.store`); ``postgresql://user:password@host:port/db`` (or
``postgres://``) is a server every host's auth servers reach by address (`authsvc.pgstore`).
The split is here, not in the app, so the app and the operator's commands see only `Store`.
The syntax is checked when config.json is loaded (`topology.schema.parse_auth_store`).
"""

from __future__ import annotations

from pathlib import Path

from authsvc.store import DEFAULT_POOL_SIZE, Store, UserStore
from topology.schema import parse_auth_store


def open_store(setting: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> Store:
    """The store ``setting`` names, migrated to the current schema (blocks)."""
    engine, where = parse_auth_store(setting)
    if engine == "sqlite":
        return UserStore(Path(where), pool_size=pool_size)
    from authsvc.pgstore import PostgresStore  # psycopg loads only where it is used

    return PostgresStore(where, pool_size=pool_size)


def describe_store(setting: str) -> str:
    """``setting`` fit for a log line: a PostgreSQL password is masked."""
    engine, where = parse_auth_store(setting)
    if engine == "sqlite":
        return setting
    from authsvc.pgstore import redact_dsn

    return redact_dsn(where)
