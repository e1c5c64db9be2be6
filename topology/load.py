"""Reading config files into `topology.schema` objects, or failing with where and why.

A broken file must stop a process at start (and be refused on reload, keeping the old
config) with one line naming the file, the field path and what was expected. msgspec gives
the path for type errors; the checks msgspec cannot express (URLs, unique names, a region
that exists) are done here and report the same way.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import msgspec

from httpio.balance import normalize_policy
from httpio.origin import Origin, origin_url
from httpio.redis_client import parse_redis_address
from topology.placement import check_placement, place
from topology.schema import (
    FleetTopology,
    GatewayConfig,
    MsaFile,
    ProxyList,
    RegionStructure,
    ServiceSpec,
    parse_auth_store,
)

T = TypeVar("T")

# /health and /admin/... are answered by the proxy itself.
RESERVED_SERVICE_NAMES = frozenset({"health", "admin"})


class ConfigError(Exception):
    """A config file we refuse: ``str(err)`` is ``file: $.path: what was expected``."""

    def __init__(self, file: str | Path, where: str, message: str) -> None:
        self.file = str(file)
        self.where = where
        self.message = message
        super().__init__(
            f"{Path(file).name}: {where}: {message}" if where else f"{file}: {message}"
        )


def decode(path: str | Path, kind: type[T]) -> T:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(p, "", f"cannot read: {exc.strerror or exc}") from None
    try:
        if p.suffix == ".json":
            return msgspec.json.decode(raw, type=kind)
        return msgspec.yaml.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).rpartition(" - at ")
        if not message:
            message, where = str(exc), "$"
        raise ConfigError(p, where.strip("`"), message) from None
    except msgspec.DecodeError as exc:
        raise ConfigError(p, "", f"not valid {p.suffix.lstrip('.') or 'YAML'}: {exc}") from None


def check_field(file: str | Path, where: str, rule: Callable[[str], object], value: str) -> None:
    """A ValueError of ``rule(value)`` as a `ConfigError` naming the file and field path."""
    try:
        rule(value)
    except ValueError as exc:
        raise ConfigError(file, where, str(exc)) from None


def check_url(file: str | Path, where: str, url: str) -> None:
    check_field(file, where, Origin, url)


def load_msa(path: str | Path) -> MsaFile:
    msa = decode(path, MsaFile)
    seen: set[str] = set()
    for i, service in enumerate(msa.service):
        where = f"$.service[{i}]"
        if not service.name or "/" in service.name:
            raise ConfigError(path, f"{where}.name", "expected a non-empty name without '/'")
        if service.name in RESERVED_SERVICE_NAMES:
            raise ConfigError(
                path, f"{where}.name", f"{service.name!r} is reserved for the proxy's own endpoints"
            )
        if service.name in seen:
            raise ConfigError(path, f"{where}.name", f"service {service.name!r} is listed twice")
        seen.add(service.name)
        for j, inst in enumerate(service.instances()):
            check_url(path, f"{where}.instance[{j}]", inst.url)
        if service.policy is not None:
            check_policy(path, f"{where}.policy", service.policy)
        check_edge_policies(path, where, service)
    check_routes(path, msa)
    return msa


def check_edge_policies(file: str | Path, where: str, service: ServiceSpec) -> None:
    """What msgspec cannot check of issue 11's fields: CIDRs, limit keys, templates, origins."""
    for name in ("allow_cidrs", "deny_cidrs"):
        for j, cidr in enumerate(getattr(service, name)):
            check_field(file, f"{where}.{name}[{j}]", ipaddress.ip_network, cidr)
    for j, limit in enumerate(service.rate_limit or ()):
        check_field(file, f"{where}.rate_limit[{j}].key", check_rate_limit_key, limit.key)
    for name in ("request_headers", "response_headers"):
        rules = getattr(service, name)
        if rules is None:
            continue
        for kind in ("set", "add"):
            for header, value in getattr(rules, kind).items():
                check_field(file, f"{where}.{name}.{kind}.{header}", check_header_value, value)
    if service.cors is not None:
        for j, origin in enumerate(service.cors.allow_origins):
            check_field(file, f"{where}.cors.allow_origins[{j}]", check_origin, origin)


_RATE_KEY = re.compile(r"^(client_ip|user|service|claim:[A-Za-z0-9_.-]+|header:[A-Za-z0-9-]+)$")
_TEMPLATE_VAR = re.compile(r"\$\{([^}]*)\}")
_HEADER_VARIABLES = ("client_ip", "request_id", "user", "region")
_ORIGIN = re.compile(r"^(\*|[a-z][a-z0-9+.-]*://(\*\.)?[A-Za-z0-9.-]+(:[0-9]+)?|null)$")


def check_rate_limit_key(key: str) -> None:
    for part in key.split("+"):
        if not _RATE_KEY.match(part):
            raise ValueError(
                f"unknown key {part!r}: expected client_ip, user, service, claim:<name> or "
                "header:<name>, joined with '+'"
            )


def check_header_value(value: str) -> None:
    if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in value):
        raise ValueError("a header value may not hold control characters")
    for var in _TEMPLATE_VAR.findall(value):
        if var not in _HEADER_VARIABLES:
            raise ValueError(f"unknown variable ${{{var}}}: expected one of {_HEADER_VARIABLES}")


def check_origin(origin: str) -> None:
    if not _ORIGIN.match(origin):
        raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], '*.' allowed first)")


def check_routes(file: str | Path, msa: MsaFile) -> None:
    """Two routes on one path (and Host) are an error naming both; so is a route whose first
    segment is another service's name, which would silently take ``/<service>/`` from it."""
    names = {s.name for s in msa.service}
    seen: dict[tuple[str, str, str], str] = {}
    for i, service in enumerate(msa.service):
        for j, r in enumerate(service.routes):
            where = f"$.service[{i}].routes[{j}]"
            first = r.path[1:].partition("/")[0]
            if first in names and first != service.name:
                raise ConfigError(
                    file,
                    f"{where}.path",
                    f"{r.path!r} overlaps service {first!r}'s /{first}/ paths",
                )
            for host in service.hosts or ("",):
                key = (host.lower(), r.match, r.path)
                if key in seen:
                    raise ConfigError(
                        file, f"{where}.path", f"{r.match} route {r.path!r} duplicates {seen[key]}"
                    )
                seen[key] = where


def check_policy(file: str | Path, where: str, policy: str) -> None:
    check_field(file, where, normalize_policy, policy)


def load_region_structure(path: str | Path) -> RegionStructure:
    rs = decode(path, RegionStructure)
    codes = [r.region_code for r in rs.regions]
    if rs.cur_region_code not in codes:
        raise ConfigError(
            path, "$.cur_region_code", f"{rs.cur_region_code!r} is not one of the regions {codes}"
        )
    for i, region in enumerate(rs.regions):
        for j, url in enumerate(region.available_zone):
            check_url(path, f"$.regions[{i}].available_zone[{j}]", url)
    return rs


def load_proxy_list(path: str | Path) -> ProxyList:
    pl = decode(path, ProxyList)
    for j, url in enumerate(pl.available_zone):
        check_url(path, f"$.available_zone[{j}]", url)
    return pl


def load_config(path: str | Path) -> GatewayConfig:
    config = decode(path, GatewayConfig)
    check_policy(path, "$.Load_balancer_policy", config.load_balancer_policy)
    check_field(path, "$.Redis_address", parse_redis_address, config.redis_address)
    for i, sentinel in enumerate(config.redis_sentinels):
        check_field(path, f"$.Redis_sentinels[{i}]", parse_redis_address, sentinel)
    if config.redis_sentinels and not config.redis_master_name:
        raise ConfigError(path, "$.Redis_master_name", "Redis_sentinels need a master name")
    check_field(path, "$.Auth_store", parse_auth_store, config.auth_store)
    return config


def load_fleet(path: str | Path) -> FleetTopology:
    fleet = decode(path, FleetTopology)
    base = Path(path).parent
    ports: dict[int, tuple[str, str]] = {}

    def claim(port: int, what: str, where: str) -> None:
        if port in ports:
            raise ConfigError(
                path, where, f"port {port} of {what} is already used by {ports[port][0]}"
            )
        ports[port] = (what, where)

    for i, region in enumerate(fleet.regions):
        claim(region.elb_port, f"the ELB of {region.code}", f"$.regions[{i}].elb_port")
        for j, p in enumerate(region.proxy_ports):
            claim(p, f"a proxy of {region.code}", f"$.regions[{i}].proxy_ports[{j}]")
        metrics = region.worker_metrics_ports
        wanted = len(region.proxy_ports) * region.proxy_workers
        if metrics and (region.proxy_workers == 1 or len(metrics) != wanted):
            raise ConfigError(
                path,
                f"$.regions[{i}].worker_metrics_ports",
                f"needs proxy_workers > 1 and one port per worker of each proxy ({wanted})",
            )
        for j, p in enumerate(metrics):
            where = f"$.regions[{i}].worker_metrics_ports[{j}]"
            claim(p, f"a proxy worker's metrics of {region.code}", where)
        load_msa(base / region.msa)
    for j, p in enumerate(fleet.backends.ports):
        claim(p, "a backend", f"$.backends.ports[{j}]")
    for j, p in enumerate(fleet.auth.ports):
        claim(p, "an auth server", f"$.auth.ports[{j}]")
    if fleet.redis.enabled:
        claim(fleet.redis.port, "redis", "$.redis.port")
    for where, message in check_placement(fleet, ports):
        raise ConfigError(path, where, message)
    config = load_config(base / fleet.config) if fleet.config is not None else GatewayConfig()
    auth_hosts = sorted({place(fleet).host_of(p) for p in fleet.auth.ports})
    if len(auth_hosts) > 1 and config.auth_store.startswith("sqlite:"):
        raise ConfigError(
            path,
            "$.auth.ports",
            f"auth servers on hosts {', '.join(auth_hosts)} cannot share one SQLite file:"
            " set Auth_store in config.json to postgresql://...",
        )
    return fleet


class _Topology(msgspec.Struct):
    regions: object = None


def load_elb_targets(path: str | Path, port: int) -> tuple[str, list[str]]:
    """The region code and proxy URLs the ELB on ``port`` serves: from a fleet topology (the
    region whose ``elb_port`` it is) or from the original's ``r_*.yaml`` proxy list, told
    apart by a top-level ``regions``."""
    try:
        probe_doc = msgspec.yaml.decode(Path(path).read_bytes(), type=_Topology)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        probe_doc = _Topology()
    if probe_doc.regions is not None:
        fleet = load_fleet(path)
        for region in fleet.regions:
            if region.elb_port == port:
                where = place(fleet)
                return region.code, [origin_url(where.address_of(p), p) for p in region.proxy_ports]
        raise ConfigError(path, "$.regions", f"no region has elb_port {port}")
    proxies = load_proxy_list(path)
    return proxies.region_code, list(proxies.available_zone)
