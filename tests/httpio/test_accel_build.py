"""What `httpio.accel_build.check_sources` refuses in a compiled module: each shape that
mypyc compiles into something that means another thing (seen, each of them, while
compiling the request path). No compiler runs here; `make accel` is the build."""

from __future__ import annotations

from pathlib import Path

from httpio import accel_build

SHAPES = {
    "struct keywords": (
        "import msgspec\n"
        "class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):\n"
        "    a: int = 1\n",
        "class Limits has keywords ['frozen', 'forbid_unknown_fields']",
    ),
    "class-level value on a Python base": (
        "from httpio.errors import GatewayError\nclass Full(GatewayError):\n    status = 503\n",
        "Full.status, a class-level value in a class with a base (GatewayError)",
    ),
    "class-level value on an exception": (
        "class Refused(Exception):\n    reason = 'revoked'\n",
        "Refused.reason, a class-level value in a class with a base (Exception)",
    ),
    "runtime_checkable": (
        "from typing import Protocol, runtime_checkable\n"
        "@runtime_checkable\n"
        "class Hook(Protocol):\n"
        "    def on(self) -> None: ...\n",
        "@runtime_checkable Hook fails compiled",
    ),
    "type ignore": (
        "x: int = None  # type: ignore[assignment]\n",
        "'# type: ignore' hides a type that compiled code checks",
    ),
    "rebound handler name": (
        "def f() -> None:\n"
        "    try:\n"
        "        pass\n"
        "    except ValueError as exc:\n"
        "        print(exc)\n"
        "    except OSError as exc:\n"
        "        print(exc)\n",
        "'except OSError as exc' reuses the name of 'except ValueError' (line 4)",
    ),
}


def test_each_shape_mypyc_changes_is_refused(tmp_path: Path) -> None:
    for name, (source, problem) in SHAPES.items():
        path = tmp_path / f"{name.replace(' ', '_')}.py"
        path.write_text(source)
        problems = accel_build.problems_in(path)
        assert len(problems) == 1 and problem in problems[0], (name, problems)


def test_what_compiles_as_it_means_passes(tmp_path: Path) -> None:
    path = tmp_path / "fine.py"
    path.write_text(
        "import enum\n"
        "class State(enum.Enum, metaclass=enum.EnumMeta):\n"
        "    UP = 1\n"
        "def f() -> None:\n"
        "    try:\n"
        "        pass\n"
        "    except ValueError as bad:\n"
        "        print(bad)\n"
        "    except OSError as broken:\n"
        "        print(broken)\n"
        "def g() -> None:\n"
        "    try:\n"
        "        pass\n"
        "    except OSError as exc:\n"
        "        print(exc)\n"
    )
    assert accel_build.problems_in(path) == []


def test_every_compiled_module_passes() -> None:
    assert accel_build.check_sources() == []
