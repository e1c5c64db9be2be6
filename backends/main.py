"""``backend PORT [--root DIR] [--name NAME] [--host HOST] [--delay-ms MS] [--test-faults]``

One demo backend. The static set is built (or read from ``--root``) before the server starts listening, so the
first request never pays for it and a bad ``--root`` fails the start, not a request.
``--delay-ms`` makes every answer but ``/health`` that much slower: the slow instance of the
load-balancing benchmarks (`bench.policies`), still healthy in the eyes of the health checks.
``--test-faults`` lets clients ask for misbehaviour in the query string (``?drop=1``,
``?status=503``, ``?delay=3`` ...; see `backends.app`): for the gateway's tests only, never in
a fleet that serves anyone.
"""

from __future__ import annotations

import argparse

from backends.app import MAX_DELAY_S, BackendApp
from backends.static_files import StaticSite
from httpio.run import run_server, serving


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="backend", description="demo backend for the gateway")
    parser.add_argument("port", type=int)
    parser.add_argument("--root", help="serve the files under DIR instead of the built-in set")
    parser.add_argument("--name", help="name reported by /health and /echo (default backend-PORT)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--delay-ms",
        type=float,
        default=0.0,
        metavar="MS",
        help="delay every answer except /health by MS milliseconds (default 0)",
    )
    parser.add_argument(
        "--test-faults",
        action="store_true",
        help="obey ?drop=1, ?status=N, ?delay=S, ?close=1 ... (tests only; default off)",
    )
    args = parser.parse_args(argv)
    if not 0.0 <= args.delay_ms <= MAX_DELAY_S * 1000:
        parser.error(f"--delay-ms must be within 0..{MAX_DELAY_S * 1000:g}")
    return args


def build_app(args: argparse.Namespace) -> BackendApp:
    try:
        site = StaticSite.from_directory(args.root) if args.root else StaticSite.builtin()
    except OSError as exc:
        raise SystemExit(f"backend: {exc}") from exc
    return BackendApp(
        site,
        name=args.name or f"backend-{args.port}",
        port=args.port,
        delay_s=args.delay_ms / 1000,
        test_faults=args.test_faults,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    app = build_app(args)
    run_server(serving(app), args.port, name=app.name, host=args.host)


if __name__ == "__main__":
    main()
