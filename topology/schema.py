"""The schema of every config file, as frozen msgspec Structs.

Four kinds of file come from the original Go gateway and load unchanged:

- the service map (``msa*.yaml``): ``name`` and ``service[]`` of ``name`` + ``instance[]``;
- the region structure a proxy reads (``rs_*.yaml``): ``cur_region_code`` and every
  region's ELBs in ``regions[].available_zone``;
- the proxy list an ELB reads (``r_*.yaml``): ``region_code`` and ``available_zone``;
- ``config.json``, whose capitalised keys are kept on the wire and renamed here.

Extensions are optional fields with defaults, so an original file means what it meant; an
unknown field is an error (``forbid_unknown_fields``), because a misspelt option silently
ignored is worse than a refusal. Every Struct is frozen: a reload builds new objects and
swaps one reference, so a request never sees half a config.

`topology.load` turns a file into these with errors of the form
``msa.yaml: $.service[2].instance[0]: Expected `str`, got `int```.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct, field

from authsvc.passwords import ScryptParams
from authsvc.throttle import AuthLimits
from authsvc.tokens import AuthKey
from httpio.health import HealthSettings
from httpio.limits import ServiceLimits
from httpio.server import ServerLimits
from httpio.upstream import UpstreamTimeouts
from proxy.cache.policy import CacheSettings, ServiceCacheSettings

Port = Annotated[int, Meta(ge=0, le=65535)]
PositiveInt = Annotated[int, Meta(ge=1)]
Seconds = Annotated[float, Meta(gt=0)]


# -- msa*.yaml ---------------------------------------------------------------------------------
class InstanceSpec(Struct, frozen=True, forbid_unknown_fields=True):
    """An instance written with options; a bare URL string means weight 1."""

    url: str
    weight: Annotated[int, Meta(ge=1, le=1000)] = 1


class ServiceSpec(Struct, frozen=True, forbid_unknown_fields=True):
    name: str
    instance: list[str | InstanceSpec] = field(default_factory=list)
    # extensions --------------------------------------------------------------------------
    policy: str | None = None  # overrides config.json's Load_balancer_policy
    public: bool = False  # no token needed for any path
    public_paths: list[str] = field(default_factory=list)  # path prefixes needing no token
    roles: list[str] | None = None  # roles allowed; None: any authenticated caller
    health: HealthSettings = field(default_factory=HealthSettings)
    limits: ServiceLimits = field(default_factory=ServiceLimits)
    cache: ServiceCacheSettings = field(default_factory=ServiceCacheSettings)

    def instances(self) -> list[InstanceSpec]:
        return [i if isinstance(i, InstanceSpec) else InstanceSpec(url=i) for i in self.instance]


class MsaFile(Struct, frozen=True, forbid_unknown_fields=True):
    service: list[ServiceSpec]
    name: str = ""


# -- rs_*.yaml and r_*.yaml --------------------------------------------------------------------
class RegionSpec(Struct, frozen=True, forbid_unknown_fields=True):
    region_code: str
    available_zone: list[str]


class RegionStructure(Struct, frozen=True, forbid_unknown_fields=True):
    """What a proxy reads: its own region and every region's ELBs."""

    cur_region_code: str
    regions: list[RegionSpec]


class ProxyList(Struct, frozen=True, forbid_unknown_fields=True):
    """What an ELB reads in the original's format: its region and its proxies."""

    region_code: str
    available_zone: list[str]


# -- config.json -------------------------------------------------------------------------------
class GatewayConfig(Struct, frozen=True, forbid_unknown_fields=True):
    cache_enabled: bool = field(default=False, name="Cache_or_not")
    redis_address: str = field(default="localhost:6379", name="Redis_address")
    redis_password: str = field(default="", name="Redis_password")
    redis_db: Annotated[int, Meta(ge=0)] = field(default=0, name="Redis_db")
    healthcheck_interval_s: Seconds = field(default=10.0, name="MSA_healthcheck_interval")
    config_check_interval_s: Seconds = field(default=5.0, name="Config_check_interval")
    load_balancer_policy: str = field(default="round_robin", name="Load_balancer_policy")
    print_region_structure: bool = field(default=False, name="RS_print_or_not")
    print_service_map: bool = field(default=False, name="MSA_print_or_not")
    auth_key: str = field(default="", name="Auth_key")
    # extensions --------------------------------------------------------------------------
    auth_service: str = field(default="auth", name="Auth_service")
    auth_keys: list[AuthKey] = field(default_factory=list, name="Auth_keys")  # oldest first
    token_ttl_s: Annotated[int, Meta(ge=1, le=86400 * 30)] = field(default=3600, name="Token_ttl_s")
    scrypt: ScryptParams = field(default_factory=ScryptParams, name="Scrypt")
    auth_limits: AuthLimits = field(default_factory=AuthLimits, name="Auth_limits")
    server: ServerLimits = field(default_factory=ServerLimits, name="Server")
    upstream: UpstreamTimeouts = field(default_factory=UpstreamTimeouts, name="Upstream")
    access_log: bool = field(default=False, name="Access_log")
    cache: CacheSettings = field(default_factory=CacheSettings, name="Cache")


# -- the fleet topology (topology/fleet.yaml) --------------------------------------------------
class FleetRegion(Struct, frozen=True, forbid_unknown_fields=True):
    code: str
    elb_port: Port
    proxy_ports: list[Port]
    msa: str  # path of the region's service map, relative to the topology file


class FleetRedis(Struct, frozen=True, forbid_unknown_fields=True):
    port: Port = 6379
    enabled: bool = True


class FleetAuth(Struct, frozen=True, forbid_unknown_fields=True):
    ports: list[Port] = field(default_factory=list)
    db: str = "auth.sqlite3"  # relative to the fleet's state directory (topology.persistent)


class FleetBackends(Struct, frozen=True, forbid_unknown_fields=True):
    ports: list[Port] = field(default_factory=list)
    # the demo backends obey ?drop=1, ?status=N ... (backend --test-faults): tests only
    test_faults: bool = False


class FleetTopology(Struct, frozen=True, forbid_unknown_fields=True):
    regions: list[FleetRegion]
    backends: FleetBackends = field(default_factory=FleetBackends)
    auth: FleetAuth = field(default_factory=FleetAuth)
    redis: FleetRedis = field(default_factory=FleetRedis)
    config: str | None = None  # config.json for every proxy, relative to this file
    run_dir: str = "run"
    host: Literal["127.0.0.1"] = "127.0.0.1"


def encode_json(obj: object) -> bytes:
    return msgspec.json.format(msgspec.json.encode(obj), indent=2)


def encode_yaml(obj: object) -> bytes:
    return msgspec.yaml.encode(obj)
