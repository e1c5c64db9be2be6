"""Explicit routes (``routes:`` and ``hosts:`` of a service) and ``route_method``'s 405.

Explicit routes are matched before the original's ``/<service>/<rest>``: a Host match beats
none, then an exact route beats a prefix, then the longest prefix wins. A prefix matches on
segment boundaries: ``/api/v1`` matches ``/api/v1`` and ``/api/v1/x``, never ``/api/v1x``
(a prefix ending in ``/`` matches what starts with it). ``strip_prefix`` sends the rest
(``/api/v1/x`` -> ``/x``), otherwise the path goes as it came; the query rides along.

Matching does not scan routes. Exact routes are one dict lookup per Host candidate; a prefix
route is found by looking up each segment boundary of the path, longest first, in a dict of
prefixes: the cost grows with the path's depth, never with the number of routes
(`bench.routes` measures 10 vs 10,000). Duplicates are refused when the table is built, with
both places named (the loader runs the same build).

``route_method`` (a filter, after ``ip_filter`` and ``cors`` so that a preflight is answered
first) refuses a method the matched route does not list: 405 with ``Allow`` (RFC 9110 15.5.6).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from httpio.errors import MethodNotAllowed
from proxy.filters.chain import Exchange, RequestAnswer
from topology.schema import RouteSpec, ServiceSpec


@dataclass(frozen=True, slots=True)
class Route:
    service: str
    spec: RouteSpec
    where: str  # "service users, routes[1]": for errors and /admin/config
    allow: bytes  # the Allow header of a 405
    # the methods that pass `RouteMethod`: those listed, and HEAD with GET (empty: any)
    passes: frozenset[str]

    @property
    def methods(self) -> tuple[str, ...]:
        return self.spec.methods


HOSTS_MEMO = 1024
HOST_MAX = 259  # a DNS name (253), ":" and a port (a bracketed IPv6 address is shorter)


class DuplicateRoute(ValueError):
    pass


class RouteTable:
    """Exact routes by Host then path; prefix routes by Host then the prefix without its
    trailing ``/`` (so one lookup per segment boundary of the path)."""

    __slots__ = ("_exact", "_hosts", "_prefix", "size")

    def __init__(self, services: Iterable[ServiceSpec]) -> None:
        self._exact: dict[str, dict[str, Route]] = {}
        self._prefix: dict[str, dict[str, Route]] = {}
        self._hosts: dict[bytes, str] = {}
        self.size = 0
        for spec in services:
            for i, r in enumerate(spec.routes):
                where = f"service {spec.name!r} routes[{i}]"
                passes = {*r.methods, "HEAD"} if "GET" in r.methods else set(r.methods)
                route = Route(spec.name, r, where, ", ".join(r.methods).encode(), frozenset(passes))
                exact = r.match == "exact"
                path = r.path if exact else r.path.rstrip("/")
                for host in spec.hosts or ("",):
                    table = (self._exact if exact else self._prefix).setdefault(host.lower(), {})
                    other = table.get(path)
                    if other is not None:
                        raise DuplicateRoute(
                            f"{where} ({r.match} {r.path!r}) duplicates {other.where}"
                        )
                    table[path] = route
                self.size += 1

    def __repr__(self) -> str:
        return f"<RouteTable routes={self.size}>"

    def __bool__(self) -> bool:
        return self.size > 0

    def host(self, value: bytes | None) -> str:
        """`host_of`, remembered for the last Host values seen (at most ``HOSTS_MEMO`` of
        them, emptied when full, and none longer than a host name and port can be, so a
        flood of odd Hosts costs the parse, no memory): a keep-alive client sends the same
        one on every request."""
        if value is None:
            return ""
        host = self._hosts.get(value)
        if host is None:
            host = host_of(value)
            if len(value) <= HOST_MAX:
                if len(self._hosts) >= HOSTS_MEMO:
                    self._hosts.clear()
                self._hosts[value] = host
        return host

    def match(self, host: str, path: str) -> Route | None:
        for h in (host, "") if host else ("",):
            exact = self._exact.get(h)
            if exact is not None:
                found = exact.get(path)
                if found is not None:
                    return found
            prefix = self._prefix.get(h)
            if prefix is None:
                continue
            found = prefix.get(path)
            if found is not None and not found.spec.path.endswith("/"):
                return found  # "/api/v1" itself; "/api/users/" does not match "/api/users"
            end = len(path)
            while end > 0:
                end = path.rfind("/", 0, end)
                if end < 0:
                    break
                found = prefix.get(path[:end])
                if found is not None:
                    return found
        return None


def upstream_target(route: Route, path: str, query: str) -> str:
    target = path
    if route.spec.strip_prefix:
        rest = path[len(route.spec.path) :]
        target = rest if rest.startswith("/") else "/" + rest
    return target + "?" + query if query else target


def host_of(value: bytes | None) -> str:
    """The Host header without its port, lowercase ('' when absent)."""
    if not value:
        return ""
    host = value.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


class RouteMethod:
    """``route_method``: 405 with ``Allow`` for a method the matched route does not list."""

    name = "route_method"

    def __repr__(self) -> str:
        return "<RouteMethod>"

    def on_request(self, ex: Exchange) -> RequestAnswer:
        route = ex.route
        if route is not None and route.passes and ex.request.method not in route.passes:
            raise MethodNotAllowed(
                f"{ex.request.method} is not allowed on {route.spec.path}", allow=route.allow
            )
        return None
