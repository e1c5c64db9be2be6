"""``authsvc PORT --config config.json [--db auth.sqlite3 | --store SETTING]``: one auth server
process; and the operator's commands on its database: ``authsvc grant``, ``authsvc delete-user``,
``authsvc users``.

The store is config.json's ``Auth_store`` (``sqlite:PATH``, the default, or
``postgresql://...``; `authsvc.engines`), unless ``--store`` names another or ``--db PATH``
a SQLite file (what `fleet` passes: the file in its state directory).

The default fleet runs four servers on ports 8000-8003 against one database file; the file
may be created by whichever starts first (schema creation is idempotent and runs in a write
transaction). Without ``--config`` the packaged ``topology/config.json`` is read, which holds
no key: `fleet` writes the config.json of its run directory with the fleet's generated key,
and that is the file to pass (``run/latest/config.json``).

A key shorter than 32 bytes or one published with the original project is logged as an error
at every start and listed under ``warnings`` in every ``/health`` answer; the server runs.

The operator's commands open the same store (a SQLite file in WAL mode, so they work while the
servers run; or the PostgreSQL database)
and take effect on every proxy within its revocation poll (about a second): roles are only
ever granted here, never chosen at signup.
"""

from __future__ import annotations

import argparse
import importlib.resources
import os
import re
import sys

import structlog
import trio

from authsvc.app import ROLE_PATTERN, AuthApp, load_auth_config
from authsvc.arenas import cap_malloc_arenas
from authsvc.engines import describe_store, open_store
from authsvc.store import StoreBusy
from httpio.messages import Handler
from httpio.run import run_server
from httpio.server import HttpServer
from topology.load import ConfigError
from topology.schema import parse_auth_store

log = structlog.get_logger()

COMMANDS = ("grant", "delete-user", "users")


def _parse_server_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="authsvc", description=__doc__.splitlines()[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--config", default=None, help="config.json (Auth_key, Auth_keys...)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", default=None, help="SQLite file shared by the fleet")
    where.add_argument("--store", default=None, help="sqlite:PATH or postgresql://...")
    return parser.parse_args(argv)


def store_setting(args: argparse.Namespace, configured: str) -> str:
    """``--store``, else ``--db`` as ``sqlite:PATH``, else config.json's ``Auth_store``."""
    if args.store:
        return str(args.store)
    if args.db:
        return f"sqlite:{args.db}"
    return configured


def _parse_command(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="authsvc", description="operator commands")
    commands = parser.add_subparsers(dest="command", required=True)
    grant = commands.add_parser("grant", help="give USER the role ROLE (e.g. admin)")
    grant.add_argument("username")
    grant.add_argument("role")
    delete = commands.add_parser("delete-user", help="delete USER; their tokens stop working")
    delete.add_argument("username")
    commands.add_parser("users", help="list users and roles")
    for sub in commands.choices.values():
        where = sub.add_mutually_exclusive_group(required=True)
        where.add_argument("--db", help="the fleet's SQLite file")
        where.add_argument("--store", help="sqlite:PATH or postgresql://... (Auth_store)")
    return parser.parse_args(argv)


def run_command(argv: list[str]) -> int:
    """One operator command; the exit status (0 done, 1 no such user, 2 usage)."""
    args = _parse_command(argv)
    if args.command == "grant" and not re.fullmatch(ROLE_PATTERN, args.role):
        print(f"authsvc: role {args.role!r} must match {ROLE_PATTERN}", file=sys.stderr)
        return 2
    setting = store_setting(args, "")
    try:
        parse_auth_store(setting)
    except ValueError as exc:
        print(f"authsvc: {exc}", file=sys.stderr)
        return 2
    try:
        store = open_store(setting)
    except (StoreBusy, OSError) as exc:
        print(f"authsvc: {describe_store(setting)}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "users":
            for user in store.list_users():
                name = user.username or f"(shadowed) {user.display!r}"
                print(f"{name}\t{user.role}")
            return 0
        if args.command == "grant":
            done = store.set_role(args.username, args.role)
            what = f"{done}: role {args.role}"
        else:
            done = store.delete_user(args.username)
            what = f"{done}: deleted"
        if done is None:
            where = describe_store(setting)
            print(f"authsvc: no user {args.username!r} in {where}", file=sys.stderr)
            return 1
        print(what)
        return 0
    finally:
        store.close()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in COMMANDS:
        raise SystemExit(run_command(argv))
    args = _parse_server_args(argv)
    config = args.config or str(importlib.resources.files("topology") / "config.json")
    try:
        settings = load_auth_config(config)
    except ConfigError as exc:
        print(f"authsvc: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    # as many arenas as hashing slots (AuthApp's default): RSS levels off (authsvc.arenas)
    arenas_capped = cap_malloc_arenas(os.cpu_count() or 1)
    setting = store_setting(args, settings.auth_store)
    try:
        where = describe_store(setting)
    except ValueError as exc:
        print(f"authsvc: --store: {exc}", file=sys.stderr)
        raise SystemExit(2) from None

    async def setup(nursery: trio.Nursery, server: HttpServer) -> Handler:
        store = await trio.to_thread.run_sync(open_store, setting)
        for problem in store.migration_report:
            log.warning("username_clash", db=where, problem=problem)
        app = AuthApp(settings, store)
        for warning in app.warnings:
            log.error("auth_key_weak", warning=warning)
        log.info("authsvc_ready", db=where, ring=repr(app.ring), arenas_capped=arenas_capped)
        return app.handle

    run_server(
        setup, args.port, name=f"authsvc:{args.port}", limits=settings.server, host=args.host
    )


if __name__ == "__main__":
    main()
