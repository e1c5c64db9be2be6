"""``authsvc PORT [--config config.json] [--db auth.sqlite3]``: one auth server process.

The default fleet runs four of these on ports 8000-8003 against one database file; the
file may be created by whichever starts first (schema creation is idempotent and runs in a
write transaction). Without ``--config`` the packaged ``topology/config.json`` is used, so
the process signs with the same ``Auth_key`` the proxies verify with.
"""

from __future__ import annotations

import argparse
import importlib.resources
import sys

import structlog
import trio

from authsvc.app import AuthApp, ConfigError, load_auth_settings
from authsvc.store import UserStore
from httpio.messages import Handler
from httpio.run import run_server
from httpio.server import HttpServer

log = structlog.get_logger()


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="authsvc", description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--config", default=None, help="config.json (Auth_key, Auth_keys...)")
    parser.add_argument("--db", default="auth.sqlite3", help="SQLite file shared by the fleet")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    config = args.config or str(importlib.resources.files("topology") / "config.json")
    try:
        settings = load_auth_settings(config)
    except ConfigError as exc:
        print(f"authsvc: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    async def setup(nursery: trio.Nursery, server: HttpServer) -> Handler:
        store = await trio.to_thread.run_sync(UserStore, args.db)
        app = await trio.to_thread.run_sync(AuthApp, settings, store)
        secret_lengths = [len(settings.Auth_key), *(len(k.secret) for k in settings.Auth_keys)]
        if any(0 < n < 32 for n in secret_lengths):
            # RFC 7518 3.2: an HS256 key SHOULD be at least 256 bits.
            log.warning("auth_key_short", hint="use 32+ random bytes in Auth_keys")
        log.info("authsvc_ready", db=args.db, ring=repr(app.ring))
        return app.handle

    run_server(setup, args.port, name=f"authsvc:{args.port}")


if __name__ == "__main__":
    main()
