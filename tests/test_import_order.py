"""Imports point one way (STYLE.md 14), checked by walking every module of the tree with `ast`.

Lowest first: `httpio` (shared I/O and sans-IO traffic policy; imports none of ours) <-
`topology`'s schemas and loader (every settings struct) <- the servers `authsvc`, `proxy`,
`elb`, `backends` (none imports another, except the published token format the proxies
verify: `authsvc.tokens` with its claims and its errors, `authsvc.claims` and
`authsvc.token_errors`, which import nothing else of `authsvc`) <- the fleet launcher (the rest of
`topology`: it starts processes and imports no server package) <- `bench`, which may import
anything (it runs servers as processes, and times a server's pure parts in place, such as
`bench.hashes` the password hashes). Every import counts,
also one inside a function or under ``TYPE_CHECKING``; tests may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("httpio", "topology", "authsvc", "proxy", "elb", "backends", "bench")
CONFIG = frozenset({"topology.schema", "topology.load", "topology.placement"})
LAUNCHER = frozenset(
    {
        "topology",
        "topology.fleet",
        "topology.fleet_lock",
        "topology.persistent",
        "topology.prometheus",
        "topology.report",
        "topology.top",
        "topology.supervisor",
        "topology.table",
        "topology.units",
    }
)
SERVERS = ("authsvc", "proxy", "elb", "backends")
TOKENS = "authsvc.tokens"  # the group of the token format's modules
TOKEN_MODULES = frozenset({TOKENS, "authsvc.claims", "authsvc.token_errors"})

# group -> the groups it may import from (its own included)
ALLOWED: dict[str, frozenset[str]] = {
    "httpio": frozenset({"httpio"}),
    "config": frozenset({"httpio", "config"}),
    TOKENS: frozenset({"httpio", "config", TOKENS}),
    **{s: frozenset({"httpio", "config", TOKENS, s}) for s in SERVERS},
    "launcher": frozenset({"httpio", "config", "launcher"}),
    "bench": frozenset({"httpio", "config", "launcher", TOKENS, *SERVERS, "bench"}),
}


def group(module: str) -> str:
    """The layer a module of ours belongs to; KeyError for a module nobody placed."""
    top = module.split(".")[0]
    if module in TOKEN_MODULES:
        return TOKENS
    if top == "topology":
        if module in CONFIG:
            return "config"
        if module in LAUNCHER:
            return "launcher"
        raise KeyError(f"{module}: place it in CONFIG or LAUNCHER of tests/test_import_order.py")
    if top in ("httpio", "bench", *SERVERS):
        return top
    raise KeyError(module)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(module: str, source: str, *, is_package: bool = False) -> list[str]:
    """Every module of ours that ``source`` (the text of ``module``) imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            # ``from pkg import mod`` imports pkg.mod when it is a module
            candidates = [f"{name}.{alias.name}" for alias in node.names]
            found += [c for c in candidates if _is_module(c)] or [name]
    return [n for n in found if n.split(".")[0] in PACKAGES]


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def violations(module: str, source: str, *, is_package: bool = False) -> list[str]:
    mine = group(module)
    out = []
    for name in imported(module, source, is_package=is_package):
        try:
            theirs = group(name)
        except KeyError:
            theirs = f"unplaced {name}"
        if theirs not in ALLOWED[mine]:
            out.append(f"{module} ({mine}) imports {name} ({theirs})")
    return out


def production_modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_every_production_module_is_placed_in_a_layer() -> None:
    unplaced = []
    for path in production_modules():
        try:
            group(module_name(path))
        except KeyError as exc:
            unplaced.append(str(exc))
    assert unplaced == []


def test_imports_point_one_way() -> None:
    found = []
    for path in production_modules():
        source = path.read_text()
        found += violations(module_name(path), source, is_package=path.name == "__init__.py")
    assert found == []


@pytest.mark.parametrize(
    ("module", "source", "complaint"),
    [
        ("httpio.server", "from proxy import app", "httpio.server (httpio) imports proxy.app"),
        ("topology.schema", "import authsvc.throttle", "imports authsvc.throttle (authsvc)"),
        ("authsvc.app", "from proxy.auth import x", "imports proxy.auth (proxy)"),
        ("elb.main", "def f():\n    import backends.app", "imports backends.app (backends)"),
        ("topology.fleet", "from proxy.main import main", "imports proxy.main (proxy)"),
        ("authsvc.tokens", "from authsvc.store import UserStore", "imports authsvc.store"),
        ("proxy.cache.layer", "from ..app import ProxyApp", ""),  # relative, same package
        ("proxy.app", "from authsvc.tokens import KeyRing", ""),  # the one exception
    ],
)
def test_the_check_sees_each_kind_of_violation(module: str, source: str, complaint: str) -> None:
    found = violations(module, source)
    if complaint:
        assert len(found) == 1 and complaint in found[0]
    else:
        assert found == []
