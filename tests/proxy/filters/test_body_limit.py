"""`proxy.filters.body_limit`: a declared length over the limit is a 413 before any read."""

from __future__ import annotations

import pytest

from httpio.errors import RequestBodyTooLarge
from proxy.filters.body_limit import BodyLimit
from tests.proxy.filters.edge import exchange


def test_over_the_limit_is_413_and_at_it_goes_on() -> None:
    f = BodyLimit(10)
    assert f.on_request(exchange("POST", headers=[(b"content-length", b"10")])) is None
    assert f.on_request(exchange("GET")) is None
    with pytest.raises(RequestBodyTooLarge):
        f.on_request(exchange("POST", headers=[(b"content-length", b"11")]))
