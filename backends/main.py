"""``backend PORT [--root DIR] [--name NAME] [--host HOST]``: run one demo backend.

The static set is built (or read from ``--root``) before the server starts listening, so the
first request never pays for it and a bad ``--root`` fails the start, not a request.
"""

from __future__ import annotations

import argparse

from backends.app import BackendApp
from backends.static_files import StaticSite
from httpio.server import run_server


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="backend", description="demo backend for the gateway")
    parser.add_argument("port", type=int)
    parser.add_argument("--root", help="serve the files under DIR instead of the built-in set")
    parser.add_argument("--name", help="name reported by /health and /echo (default backend-PORT)")
    parser.add_argument("--host", default="127.0.0.1")
    return parser.parse_args(argv)


def build_app(args: argparse.Namespace) -> BackendApp:
    try:
        site = StaticSite.from_directory(args.root) if args.root else StaticSite.builtin()
    except OSError as exc:
        raise SystemExit(f"backend: {exc}") from exc
    return BackendApp(site, name=args.name or f"backend-{args.port}", port=args.port)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    app = build_app(args)
    run_server(app, args.port, name=app.name, host=args.host)


if __name__ == "__main__":
    main()
