"""Fixtures of the end-to-end tests; the machinery lives in `tests.e2e.harness`."""

from tests.e2e.harness import fleet, token

__all__ = ["fleet", "token"]
