"""`proxy.filters.ip_filter`: deny wins, allow lists, IPv6, v4-mapped addresses, garbage."""

from __future__ import annotations

import pytest

from httpio.errors import Forbidden
from proxy.filters.ip_filter import IpFilter, is_allowed, parse_networks
from tests.proxy.filters.edge import exchange


def test_deny_wins_over_allow_and_an_empty_allow_list_allows() -> None:
    allow, deny = parse_networks(["10.0.0.0/8"]), parse_networks(["10.1.0.0/16"])
    assert is_allowed("10.2.3.4", allow, deny)
    assert not is_allowed("10.1.3.4", allow, deny)
    assert not is_allowed("192.168.1.1", allow, deny)
    assert is_allowed("192.168.1.1", (), deny)


def test_ipv6_and_v4_mapped_addresses() -> None:
    deny = parse_networks(["2001:db8::/32", "192.0.2.0/24"])
    assert not is_allowed("2001:db8::1", (), deny)
    assert not is_allowed("::ffff:192.0.2.7", (), deny)
    assert is_allowed("2001:db9::1", (), deny)


def test_an_address_that_does_not_parse_is_refused() -> None:
    assert not is_allowed("not-an-ip", (), ())


def test_the_filter_answers_403() -> None:
    f = IpFilter(["127.0.0.0/8"], [])
    assert f.on_request(exchange(client="127.0.0.1")) is None
    with pytest.raises(Forbidden):
        f.on_request(exchange(client="192.0.2.1"))
