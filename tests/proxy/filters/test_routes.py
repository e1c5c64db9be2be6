"""`proxy.filters.routes`: longest prefix, exact over prefix, Host over none, segment
boundaries, strip_prefix, duplicates, and 405 with ``Allow``."""

from __future__ import annotations

import pytest

from httpio.errors import MethodNotAllowed
from proxy.filters.routes import (
    HOSTS_MEMO,
    DuplicateRoute,
    RouteMethod,
    RouteTable,
    host_of,
    upstream_target,
)
from tests.proxy.filters.edge import exchange
from topology.schema import RouteSpec, ServiceSpec


def svc(name: str, *routes: RouteSpec, hosts: tuple[str, ...] = ()) -> ServiceSpec:
    return ServiceSpec(name=name, routes=routes, hosts=hosts)


TABLE = RouteTable(
    [
        svc("users", RouteSpec("/api/users/", methods=("GET", "POST"))),
        svc("data", RouteSpec("/api/v1/data", match="exact", strip_prefix=True)),
        svc("api", RouteSpec("/api")),
        svc("deep", RouteSpec("/api/users/admin/")),
        svc("hosted", RouteSpec("/api/"), hosts=("api.example.com",)),
    ]
)


def matched(path: str, host: str = "") -> str | None:
    found = TABLE.match(host, path)
    return found.service if found else None


def test_longest_prefix_wins_on_segment_boundaries() -> None:
    assert matched("/api/users/7") == "users"
    assert matched("/api/users/admin/x") == "deep"
    assert matched("/api/other") == "api"
    assert matched("/api") == "api"
    assert matched("/apix") is None
    assert matched("/other") is None


def test_exact_beats_prefix_and_host_beats_none() -> None:
    assert matched("/api/v1/data") == "data"
    assert matched("/api/v1/data/x") == "api"
    assert matched("/api/users/7", host="api.example.com") == "hosted"
    assert matched("/api/users/7", host="other.example.com") == "users"


def test_strip_prefix_forwards_the_rest_otherwise_the_path_as_it_came() -> None:
    data = TABLE.match("", "/api/v1/data")
    users = TABLE.match("", "/api/users/7")
    assert data is not None and users is not None
    assert upstream_target(data, "/api/v1/data", "q=1") == "/?q=1"
    assert upstream_target(users, "/api/users/7", "") == "/api/users/7"


def test_duplicates_are_refused_naming_both() -> None:
    with pytest.raises(
        DuplicateRoute,
        match=r"'b' routes\[0\].*duplicates service 'a' routes\[0\]",
    ):
        RouteTable([svc("a", RouteSpec("/x/")), svc("b", RouteSpec("/x/"))])


def test_host_of_drops_the_port_and_case() -> None:
    assert host_of(b"API.example.com:9000") == "api.example.com"
    assert host_of(b"[::1]:80") == "[::1]"
    assert host_of(None) == ""


def test_the_table_remembers_few_hosts() -> None:
    table = RouteTable([])
    assert table.host(b"API.example.com:9000") == "api.example.com"
    assert table.host(b"API.example.com:9000") == "api.example.com"  # remembered
    assert table.host(None) == "" and table.host(b"") == ""
    for i in range(HOSTS_MEMO + 10):  # a flood of distinct Hosts costs the parse, no memory
        assert table.host(b"h%d:80" % i) == f"h{i}"
    assert len(table._hosts) <= HOSTS_MEMO
    table = RouteTable([])
    assert table.host(b"A" * 300) == "a" * 300 and not table._hosts  # parsed, not kept


def test_a_method_not_listed_is_405_with_allow() -> None:
    ex = exchange("DELETE", "/api/users/7")
    ex.route = TABLE.match("", "/api/users/7")
    with pytest.raises(MethodNotAllowed) as err:
        RouteMethod().on_request(ex)
    assert dict(err.value.headers)[b"allow"] == b"GET, POST"
    for method, path in (("POST", "/api/users/7"), ("HEAD", "/api/users/7"), ("PUT", "/api/x")):
        ex = exchange(method, path)  # listed; HEAD with GET; a route listing none takes any
        ex.route = TABLE.match("", path)
        assert RouteMethod().on_request(ex) is None
    head_only = RouteTable([svc("h", RouteSpec("/h/", methods=("HEAD",)))])
    ex = exchange("GET", "/h/x")  # HEAD listed does not let GET in
    ex.route = head_only.match("", "/h/x")
    with pytest.raises(MethodNotAllowed):
        RouteMethod().on_request(ex)


def test_matching_does_not_scan_routes() -> None:
    big = RouteTable([svc(f"s{i}", RouteSpec(f"/r{i}/")) for i in range(10_000)])
    assert big.size == 10_000
    found = big.match("", "/r9999/a/b")
    assert found is not None and found.service == "s9999"
