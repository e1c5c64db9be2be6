"""For the few tests that monkeypatch a module's function to inject a fault: compiled
(`httpio.accel`), a compiled caller calls the function directly and never sees the patch, so
such a test runs in the pure build only (`make test` runs both)."""

from __future__ import annotations

import pytest

from httpio import accel


def patches(*modules: str) -> pytest.MarkDecorator:
    compiled = [m for m in modules if accel.ACTIVE and m in accel.MODULES]
    return pytest.mark.skipif(
        bool(compiled), reason=f"patches {', '.join(compiled)}, compiled in this build"
    )
