"""``python -m httpio.accel_build``: compile `httpio.accel.MODULES` with mypyc into
``build/accel/`` (a no-op when that build is fresh); ``check`` lists what in them mypyc would
change the meaning of; ``state`` says which build this process runs. `httpio.accel` says how
a process picks a build and why these rules."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path

from httpio import accel
from httpio.accel import BUILD_DIR, GROUP, MODULES, ROOT, build_problem, digest, source_of


def check_sources() -> list[str]:
    """What in a compiled module would mean something else once compiled (`httpio.accel`)."""
    return [problem for module in MODULES for problem in problems_in(source_of(module))]


def problems_in(path: Path) -> list[str]:
    text = path.read_text()
    tree = ast.parse(text, str(path))
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
            problems.extend(_class_problems(path, node))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            problems.extend(_rebound_handler_names(path, node))
    for n, line in enumerate(text.splitlines(), 1):
        if "# type: ignore" in line:
            problems.append(f"{path}:{n}: '# type: ignore' hides a type that compiled code checks")
    return problems


def _class_problems(path: Path, node: ast.ClassDef) -> list[str]:
    problems = []
    where = f"{path}:{node.lineno}"
    kwargs = [k.arg for k in node.keywords if k.arg != "metaclass"]
    if kwargs:
        problems.append(
            f"{where}: class {node.name} has keywords {kwargs}, which mypyc drops; "
            "define it in a module that is not compiled"
        )
    for d in node.decorator_list:
        name = d.id if isinstance(d, ast.Name) else getattr(d, "attr", "")
        if name == "runtime_checkable":
            problems.append(
                f"{where}: @runtime_checkable {node.name} fails compiled; keep the Protocol "
                "in a module that is not compiled"
            )
    bases = [ast.unparse(b) for b in node.bases]
    # An Enum's members and a Protocol's are what they are compiled too.
    if bases and not any(b.endswith("Enum") or b == "Protocol" for b in bases):
        for statement in node.body:
            targets = statement.targets if isinstance(statement, ast.Assign) else []
            for target in targets:
                if isinstance(target, ast.Name) and not target.id.startswith("__"):
                    problems.append(
                        f"{path}:{statement.lineno}: {node.name}.{target.id}, a class-level "
                        f"value in a class with a base ({', '.join(bases)}), is lost compiled; "
                        "define the class in a module that is not compiled"
                    )
    return problems


def _rebound_handler_names(path: Path, function: ast.AST) -> list[str]:
    """``except A as e`` then ``except B as e`` in one function: compiled, ``e`` is typed as
    the first binding's type, and the second handler raises TypeError instead of running
    (seen: a reset upstream answered 500, "MalformedResponse object expected")."""
    first: dict[str, tuple[str, int]] = {}
    problems = []
    handlers = [n for n in ast.walk(function) if isinstance(n, ast.ExceptHandler)]
    for node in sorted(handlers, key=lambda n: n.lineno):
        if node.name:
            caught = ast.unparse(node.type) if node.type is not None else "BaseException"
            seen = first.setdefault(node.name, (caught, node.lineno))
            if seen[0] != caught:
                problems.append(
                    f"{path}:{node.lineno}: 'except {caught} as {node.name}' reuses the name "
                    f"of 'except {seen[0]}' (line {seen[1]}); name each binding apart"
                )
    return problems


def build() -> None:
    """Compile `MODULES` into a fresh directory, then swap it in: a process starting
    meanwhile sees the old build or the new one, never half of one."""
    import fcntl
    import shutil
    import tempfile

    problems = check_sources()
    if problems:
        raise SystemExit("cannot compile:\n" + "\n".join(problems))
    BUILD_DIR.parent.mkdir(parents=True, exist_ok=True)
    with open(BUILD_DIR.parent / "accel.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two builds of one tree take turns
        if build_problem() is None:
            return
        made = digest()
        work = Path(tempfile.mkdtemp(prefix="accel-", dir=BUILD_DIR.parent))
        try:
            _compile(work)
            (work / "lib" / "manifest.json").write_text(
                json.dumps({"digest": made, "modules": list(MODULES)}, indent=1)
            )
            old = BUILD_DIR.parent / f"{work.name}-old"
            if BUILD_DIR.exists():
                BUILD_DIR.rename(old)
            (work / "lib").rename(BUILD_DIR)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _compile(work: Path) -> None:
    from mypyc.build import mypycify
    from setuptools import Distribution

    here = Path.cwd()
    os.chdir(ROOT)  # mypy finds the packages, and pyproject.toml's settings, from here
    try:
        extensions = mypycify(
            [str(source_of(m).relative_to(ROOT)) for m in MODULES],
            opt_level="3",
            group_name=GROUP,
            target_dir=str(work / "c"),
            multi_file=True,  # C files gcc can compile side by side
        )
        dist = Distribution({"name": "gateway-accel", "ext_modules": extensions})
        command = dist.get_command_obj("build_ext")
        command.build_lib = str(work / "lib")
        command.build_temp = str(work / "obj")
        command.parallel = os.cpu_count() or 1
        dist.run_command("build_ext")
    finally:
        os.chdir(here)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m httpio.accel_build", description=__doc__)
    parser.add_argument("command", nargs="?", default="build", choices=["build", "check", "state"])
    args = parser.parse_args()
    if args.command == "build":
        build()
        print(f"compiled modules in {BUILD_DIR}: {build_problem() or 'fresh'}")
    elif args.command == "check":
        problems = check_sources()
        print("\n".join(problems) or "every compiled module can be compiled as it means")
        raise SystemExit(1 if problems else 0)
    else:
        print(accel.STATE)


if __name__ == "__main__":
    main()
