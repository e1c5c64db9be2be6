"""Our own hot modules compiled with mypyc: an optional accelerator, as `h11-mypyc` is for h11.

The tree is ``mypy --strict``, so mypyc can compile the request path as it is written: the
same source, run as C, with native calls between the compiled modules and typed attributes
on their classes (issue 14; bench/RESULTS.md, "Hop cost", measures it). ``python -m
httpio.accel_build`` (``make accel``; ``make install`` runs it) writes the extension modules
under ``build/accel/``, apart from the sources, with a manifest: a digest of every source
they were built from and of the Python they are for.

Which build a process runs is decided once, when `httpio` is first imported, and each
package that holds a compiled module puts ``build/accel/<package>`` before its own directory
on its ``__path__`` (`package_path`) only when the build is fresh:

- ``GATEWAY_ACCEL=auto`` (the default): the compiled modules when the manifest matches the
  sources, else the pure ones. A source edited after the build is never run stale; it runs
  pure until the next build.
- ``GATEWAY_ACCEL=pure``: the pure modules, whatever is built (the test suite's second run).
- ``GATEWAY_ACCEL=mypyc``: the compiled ones or the process stops, saying why (the test
  suite's first run, so that it cannot pass pure by mistake).

`STATE` says which, for the logs (`httpio.run`'s ``listening`` line) and the benchmarks.

What mypyc does differently (each seen here first as a failure). The first five are refused
in a compiled module by `httpio.accel_build.check_sources` (``python -m httpio.accel_build
check``), so that a build cannot change what the code means; the last four are for review,
and for the test suite, which runs under both builds:
- it drops a class's keywords when the class has a non-native base, so a ``msgspec.Struct``
  declared ``frozen=True, forbid_unknown_fields=True`` comes out mutable and lax (the
  settings live in `httpio.settings`, which is never compiled);
- ``typing.runtime_checkable`` refuses the class mypyc makes of a Protocol;
- an ``except ... as`` name is typed by its first handler in a function: a second handler
  of another type binding the same name raises ``TypeError``;
- types are checked at run time where a value enters compiled code: a ``# type: ignore``
  that hides a wrong type becomes a ``TypeError`` (none is allowed);
- a class-level value (``status = 503``, ``reason = "revoked"``) in a class with a base is
  lost: the instance reads its base's, or has none (seen on a `GatewayError` subclass and on
  an Exception subclass);
- a dataclass field typed by a class imported only under ``TYPE_CHECKING`` from another
  compiled module reads a NULL type at import, a segfault (`httpio.messages` imports
  `httpio.body.RequestBody` at run time);
- a module bound to a name that is bound again reads as the module first imported
  (`httpio.protocol` binds its ``h11`` once);
- a compiled class cannot be subclassed by a Python class (`httpio.body` is never compiled
  for that reason), nor declare ``__slots__`` on a Python base (`proxy.filters.limited_body`
  stays pure);
- a compiled module's functions cannot be monkeypatched for compiled callers
  (`tests.support.accel.patches`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD_DIR = ROOT / "build" / "accel"
MANIFEST = BUILD_DIR / "manifest.json"
GROUP = "gateway_accel"  # the shared library: build/accel/gateway_accel__mypyc.*.so

# The compiled modules: the request path of a proxied request, by the profile's layers
# (bench/RESULTS.md, "Hop cost"). Each module here must pass `check_sources`.
MODULES: tuple[str, ...] = (
    # HTTP/1 on both sides, the server loop and the upstream pool
    "httpio.h1request",
    "httpio.h1client",
    "httpio.h1response",
    "httpio.protocol",
    "httpio.messages",
    "httpio.server",
    "httpio.upstream",
    "httpio.sockio",
    "httpio.listen",
    "httpio.dates",
    "httpio.origin",
    "httpio.trace",
    "httpio.metrics",
    "httpio.limits",
    "httpio.retry_budget",
    "httpio.conditional",
    "httpio.single_flight",
    # the rate limiter's arithmetic and its fleet leases
    "httpio.gcra",
    "httpio.rate_lease",
    "httpio.rate_store",
    # health and balancing
    "httpio.health",
    "httpio.balance",
    # the proxy's request path: the app, its chains and filters, forwarding, metrics
    "proxy.app",
    "proxy.metrics",
    "proxy.retry",
    "proxy.forwarding",
    "proxy.hop",
    "proxy.filters.chain",
    "proxy.filters.chains",
    "proxy.filters.route",
    "proxy.filters.routes",
    "proxy.filters.forward",
    "proxy.filters.remote",
    "proxy.filters.response_headers",
    "proxy.filters.auth",
    "proxy.filters.cache",
    "proxy.filters.header_rules",
    "proxy.filters.cors",
    "proxy.filters.ip_filter",
    "proxy.filters.body_limit",
    "proxy.filters.rate_limit",
    "proxy.cache.keys",
    "proxy.cache.memory",
    "proxy.cache.policy",
    "proxy.cache.layer",
    "proxy.cache.store",
    # the token check's decision, its client and the tokens themselves
    "proxy.auth",
    "proxy.auth_client",
    "authsvc.tokens",
)
# The packages whose sources a build depends on (mypyc reads the types of what the compiled
# modules import): an edit to any .py file in them makes the build stale.
SOURCE_PACKAGES = ("httpio", "proxy", "elb", "authsvc", "topology")

CHOICES = ("auto", "pure", "mypyc")


def source_of(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def digest() -> str:
    """What a build is made from: every source under `SOURCE_PACKAGES`, the list of modules,
    and this Python (the extension modules are built for its ABI). Every process computes it
    once, at its first import of `httpio`: about 2 ms, reading files only."""
    h = hashlib.sha256()
    h.update(sys.version.encode())
    h.update("\n".join(MODULES).encode())
    for package in SOURCE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(b"\0")
            h.update(path.read_bytes())
            h.update(b"\0")
    return h.hexdigest()


def build_problem(manifest: Path = MANIFEST) -> str | None:
    """Why the compiled modules cannot be used (None: they can)."""
    try:
        made = json.loads(manifest.read_text())
    except FileNotFoundError:
        return "not built (make accel)"
    except (OSError, ValueError) as exc:
        return f"unreadable manifest {manifest}: {exc}"
    if not isinstance(made, dict) or made.get("digest") != digest():
        return "built from other sources (make accel rebuilds it)"
    return None


def decide(choice: str, problem: str | None) -> tuple[bool, str]:
    """Whether to run the compiled modules, and the build's name for the logs, from
    ``GATEWAY_ACCEL`` and what `build_problem` found."""
    if choice not in CHOICES:
        raise SystemExit(f"GATEWAY_ACCEL must be auto, pure or mypyc, not {choice!r}")
    if choice == "pure":
        return False, "pure (GATEWAY_ACCEL=pure)"
    if problem is None:
        return True, "mypyc"
    if choice == "mypyc":
        raise SystemExit(f"GATEWAY_ACCEL=mypyc, but the compiled modules are {problem}")
    return False, f"pure ({problem})"


_choice = os.environ.get("GATEWAY_ACCEL", "auto")
ACTIVE, STATE = decide(_choice, None if _choice == "pure" else build_problem())
if ACTIVE:
    # the group's shared library is a top-level module; last, so that it shadows nothing
    sys.path.append(str(BUILD_DIR))


def package_path(package: str, path: list[str]) -> list[str]:
    """A package's ``__path__``, with its compiled modules first when they are in use."""
    if not ACTIVE:
        return path
    return [str(BUILD_DIR.joinpath(*package.split("."))), *path]
