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

import hashlib
from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct, field

from httpio.settings import HealthSettings, ServerLimits, ServiceLimits, UpstreamTimeouts

Port = Annotated[int, Meta(ge=0, le=65535)]
PositiveInt = Annotated[int, Meta(ge=1)]
Seconds = Annotated[float, Meta(gt=0)]


# -- sections one server reads -----------------------------------------------------------------
# They live here, not in their consumer, so that the loader can check a whole file and no
# consumer imports another's package for a field type (the proxies read config.json too).
MiB = 1_048_576
# RFC 7518 3.2: an HS256 key must be at least as long as the hash output (256 bits).
MIN_KEY_BYTES = 32
# Refuse absurd costs coming from a config file or a tampered row: N up to 2**20 (1 GiB at
# r=8) is already far beyond an interactive login.
SCRYPT_MAX_LOG2_N = 20
# A cache namespace: ``:``-separated words of letters, digits and ``_.-`` (`proxy.cache.keys`
# says why keys of two namespaces then never meet).
NAMESPACE_PATTERN = r"^[A-Za-z][A-Za-z0-9_.\-]*(:[A-Za-z][A-Za-z0-9_.\-]*)*$"
_TOKEN = r"^[!#$%&'*+.^_`|~0-9a-z-]+$"  # RFC 9110 5.6.2, lowercase


class AuthKey(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One of ``Auth_keys`` (`authsvc.tokens.KeyRing` signs with the newest)."""

    kid: str
    secret: str


def derive_kid(secret: str) -> str:
    """The kid of the legacy single ``Auth_key``: stable across processes, reveals nothing."""
    return "k-" + hashlib.sha256(secret.encode("utf-8")).hexdigest()[:8]


Algorithm = Literal["argon2id", "scrypt"]
# The same guard as scrypt's for argon2id: at most 1 GiB and 16 passes.
ARGON2_MAX_KIB = 1 << 20
ARGON2_MAX_T = 16


class ScryptParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``Scrypt`` in config.json; the default is OWASP's minimum (128 MiB per hash;
    `authsvc.passwords` says what it costs)."""

    n: int = 1 << 17
    r: int = 8
    p: int = 1
    dklen: int = 32

    def __post_init__(self) -> None:
        if self.n < 2 or self.n & (self.n - 1) or self.n > 1 << SCRYPT_MAX_LOG2_N:
            raise ValueError(f"scrypt n must be a power of two in [2, 2**{SCRYPT_MAX_LOG2_N}]")
        if not (1 <= self.r <= 64 and 1 <= self.p <= 16 and 16 <= self.dklen <= 64):
            raise ValueError("scrypt parameters out of range (1<=r<=64, 1<=p<=16, 16<=dklen<=64)")

    @property
    def maxmem(self) -> int:
        # OpenSSL needs 128*r*(N+2) for V plus 128*r*p for B; leave 1 MiB of slack.
        return 128 * self.r * (self.n + 2 + self.p) + (1 << 20)


class Argon2Params(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``Argon2id`` in config.json; the default is OWASP's minimum (m=19 MiB, t=2, p=1)."""

    memory_kib: int = 19456  # 19 MiB
    time_cost: int = 2
    parallelism: int = 1
    hash_len: int = 32

    def __post_init__(self) -> None:
        if not (8 * self.parallelism <= self.memory_kib <= ARGON2_MAX_KIB):
            raise ValueError(f"argon2 memory_kib must be in [8*parallelism, {ARGON2_MAX_KIB}]")
        if not (1 <= self.time_cost <= ARGON2_MAX_T and 1 <= self.parallelism <= 16):
            raise ValueError(f"argon2 out of range (1<=time_cost<={ARGON2_MAX_T}, 1<=p<=16)")
        if not 16 <= self.hash_len <= 64:
            raise ValueError("argon2 hash_len must be in [16, 64]")


class FailureRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    free: Annotated[int, Meta(ge=1)]
    max_s: Seconds
    base_s: Seconds = 1.0
    forget_after_s: Seconds = 3600.0

    def lockout_s(self, failures: int) -> float:
        """How long ``failures`` consecutive failures lock out further attempts."""
        if failures < self.free:
            return 0.0
        return min(self.max_s, self.base_s * 2.0 ** min(failures - self.free, 64))


class AuthLimits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``Auth_limits`` in config.json; the defaults are those `authsvc.throttle` explains."""

    per_address: FailureRule = FailureRule(free=5, max_s=900.0)
    per_user: FailureRule = FailureRule(free=20, max_s=30.0, forget_after_s=900.0)
    signups_per_address: Annotated[int, Meta(ge=1)] = 20
    signup_window_s: Seconds = 3600.0
    concurrent_per_address: Annotated[int, Meta(ge=1)] = 16


class ServiceCacheSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``cache:`` of one service in msa.yaml."""

    enabled: bool = False
    default_ttl_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    max_body_bytes: Annotated[int, msgspec.Meta(ge=0)] = 2 * MiB
    cache_errors: bool = False
    # Request headers the origin's answers depend on without it saying Vary (lowercase).
    key_headers: tuple[Annotated[str, msgspec.Meta(pattern=_TOKEN)], ...] = ()


class WebSocketSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """``websocket:`` of one service in msa.yaml (issue 13, `httpio.ws_relay`). Off unless
    a service opts in: an upgrade to a service without it is answered 404, never relayed.
    ``idle_timeout_s``: no frame either way for that long closes with 1001; pings every
    ``ping_interval_s`` (Envoy's and nginx's common 30 s, under the 60 s of many NATs) find
    dead peers; ``max_message_bytes`` (1 MiB) closes with 1009; ``max_lifetime_s`` 0 means
    none; ``drain_s``: what open sockets get on SIGTERM or when a reload drops their service
    or instance, before a 1001 (kept under the server's ``drain_timeout_s``). 0 switches a
    timer off. ``handshake_timeout_s``: from the handshake sent to an instance to its answer's
    head (the connect is the service's ``limits.connect_timeout_s``); an instance that cannot
    be reached, or does not answer in time, gets the handshake's one retry on another."""

    enabled: bool = False
    handshake_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 10.0
    idle_timeout_s: Annotated[float, msgspec.Meta(ge=0)] = 300.0
    max_message_bytes: Annotated[int, msgspec.Meta(ge=1)] = 1 << 20
    max_lifetime_s: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    ping_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 30.0
    drain_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0


class CacheSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The cache section of config.json, shared by all services of a proxy.

    ``memory_max_bytes`` bounds the per-process tier (in bytes the process really spends,
    see `proxy.cache.memory`); ``memory_max_object_bytes`` keeps a few large bodies from
    flushing many small ones. Redis timeouts fit a loaded machine rather than a fast Redis
    (the reasons and what others use are in `httpio.redis_client`); after ``breaker_failures``
    failures one after another (calls that failed side by side count once, see
    `httpio.breaker`) Redis is skipped for ``breaker_open_s``. A request waiting for
    another's identical fetch gives up after ``coalesce_timeout_s`` and fetches itself.
    """

    memory_max_bytes: Annotated[int, msgspec.Meta(ge=0)] = 64 * MiB
    memory_max_object_bytes: Annotated[int, msgspec.Meta(ge=0)] = 1 * MiB
    redis_connect_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 1.0
    redis_command_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 0.5
    breaker_failures: Annotated[int, msgspec.Meta(ge=1)] = 3
    breaker_open_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    coalesce_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    namespace: Annotated[str, msgspec.Meta(pattern=NAMESPACE_PATTERN)] = "gw:v2"


AuthEngine = Literal["sqlite", "postgresql"]
DEFAULT_AUTH_STORE = "sqlite:auth.sqlite3"


def parse_auth_store(setting: str) -> tuple[AuthEngine, str]:
    """``Auth_store``: ``sqlite:PATH`` -> ("sqlite", PATH); ``postgresql://...`` (or
    ``postgres://``) -> ("postgresql", the DSN); ValueError for anything else."""
    if setting.startswith("sqlite:"):
        path = setting.removeprefix("sqlite:")
        if not path:
            raise ValueError("sqlite: needs a file path, e.g. sqlite:auth.sqlite3")
        return "sqlite", path
    if setting.startswith(("postgresql://", "postgres://")):
        return "postgresql", setting
    raise ValueError(f"Auth_store must be sqlite:PATH or postgresql://..., not {setting!r}")


# -- edge policies of a service (issue 11; the filters are in proxy/filters/) -----------------
HTTP_METHOD = r"^(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS)$"
_HEADER_NAME = r"^[!#$%&'*+.^`|~0-9A-Za-z-]+$"  # RFC 9110 5.1 token, no "_" (we drop those)
HeaderName = Annotated[str, Meta(pattern=_HEADER_NAME)]
Method = Annotated[str, Meta(pattern=HTTP_METHOD)]


class RouteSpec(Struct, frozen=True, forbid_unknown_fields=True):
    """One of a service's ``routes``: a path prefix (default) or an exact path."""

    path: Annotated[str, Meta(pattern=r"^/")]
    match: Literal["prefix", "exact"] = "prefix"
    methods: tuple[Method, ...] = ()  # empty: every method the server serves
    strip_prefix: bool = False


class RateLimitSpec(Struct, frozen=True, forbid_unknown_fields=True):
    """One of a service's ``rate_limit`` (`proxy.ratelimit` says what each field does)."""

    key: str  # client_ip | user | service | claim:<name> | header:<name>, joined with "+"
    rate_per_s: Annotated[float, Meta(gt=0)]
    burst: Annotated[int, Meta(ge=1)]
    scope: Literal["fleet", "local"] = "fleet"
    on_store_error: Literal["allow", "deny", "local"] = "allow"
    headers: Literal["draft", "legacy", "none"] = "draft"
    # proxies sharing a fleet limit: with Redis down, ``local`` lets each pass rate/this;
    # it also bounds a lease to burst / (100 * this) tokens (`httpio.rate_lease`)
    fleet_proxies: PositiveInt = 1


class CorsSpec(Struct, frozen=True, forbid_unknown_fields=True):
    """A service's ``cors``; an origin entry may hold one ``*`` for a subdomain label run."""

    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[Method, ...] = ("GET", "HEAD", "POST")
    allow_headers: tuple[HeaderName, ...] = ()
    expose_headers: tuple[HeaderName, ...] = ()
    allow_credentials: bool = False
    max_age_s: Annotated[int, Meta(ge=0, le=86400)] = 600


class HeaderRules(Struct, frozen=True, forbid_unknown_fields=True):
    """``request_headers`` / ``response_headers``: values may use ``${client_ip}``,
    ``${request_id}``, ``${user}``, ``${region}``."""

    set: dict[HeaderName, str] = field(default_factory=dict)
    add: dict[HeaderName, str] = field(default_factory=dict)
    remove: tuple[HeaderName, ...] = ()


class RateLimitDefault(Struct, frozen=True, forbid_unknown_fields=True):
    """``Rate_limit`` in config.json: every service's limit per client IP unless it sets its
    own ``rate_limit`` (the Go article's "N requests per window per IP")."""

    requests: Annotated[int, Meta(ge=1)]
    window_s: Annotated[float, Meta(gt=0)]
    burst: Annotated[int, Meta(ge=1)] | None = None  # default: ``requests``
    scope: Literal["fleet", "local"] = "fleet"
    on_store_error: Literal["allow", "deny", "local"] = "allow"


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
    websocket: WebSocketSettings = field(default_factory=WebSocketSettings)
    # edge policies (issue 11): all off unless written ------------------------------------
    routes: tuple[RouteSpec, ...] = ()
    hosts: tuple[str, ...] = ()  # routes match only these Host values (no port); () any
    rate_limit: tuple[RateLimitSpec, ...] | None = None  # None: config.json's Rate_limit
    cors: CorsSpec | None = None
    request_headers: HeaderRules | None = None
    response_headers: HeaderRules | None = None
    allow_cidrs: tuple[str, ...] = ()  # () allows every address
    deny_cidrs: tuple[str, ...] = ()
    max_body_bytes: Annotated[int, Meta(ge=0)] | None = None

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
class AccessLogSettings(Struct, frozen=True, forbid_unknown_fields=True):
    """``Access_log: {sqlite: PATH}``: every proxy also inserts its access-log lines into the
    SQLite database at PATH (relative to config.json), batched from a worker thread, WAL."""

    sqlite: str


class TraceSettings(Struct, frozen=True, forbid_unknown_fields=True):
    """W3C trace context (`httpio.trace`): continue a client's ``traceparent`` (true), or
    start a new trace for every request, as an edge fleet facing the internet may want."""

    trust_incoming: bool = True


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
    password_hash: Algorithm = field(default="argon2id", name="Password_hash")
    argon2id: Argon2Params = field(default_factory=Argon2Params, name="Argon2id")
    scrypt: ScryptParams = field(default_factory=ScryptParams, name="Scrypt")
    auth_limits: AuthLimits = field(default_factory=AuthLimits, name="Auth_limits")
    server: ServerLimits = field(default_factory=ServerLimits, name="Server")
    upstream: UpstreamTimeouts = field(default_factory=UpstreamTimeouts, name="Upstream")
    # true: the JSON access log on standard output unless --access-log names a file (it was
    # structlog "access" lines before issue 12); {sqlite: PATH}: the SQLite sink as well
    access_log: bool | AccessLogSettings = field(default=False, name="Access_log")
    trace: TraceSettings = field(default_factory=TraceSettings, name="Trace")
    cache: CacheSettings = field(default_factory=CacheSettings, name="Cache")
    # where the auth servers keep users (`authsvc.engines`); a relative sqlite path is the
    # auth server's --db (the fleet's state directory)
    auth_store: str = field(default=DEFAULT_AUTH_STORE, name="Auth_store")
    # Redis through Sentinel (`httpio.sentinel`): when set, Redis_address is not dialled
    redis_sentinels: list[str] = field(default_factory=list, name="Redis_sentinels")
    redis_master_name: str = field(default="mymaster", name="Redis_master_name")
    rate_limit: RateLimitDefault | None = field(default=None, name="Rate_limit")
    # the Go article's form: ``rateLimitCount`` requests per ``rateLimitWindow`` seconds
    rate_limit_window_s: Seconds | None = field(default=None, name="rateLimitWindow")
    rate_limit_count: PositiveInt | None = field(default=None, name="rateLimitCount")

    def default_rate_limit(self) -> RateLimitDefault | None:
        """``Rate_limit``, or the article's pair translated to it: N requests per window is a
        rate of N/window with a burst of N (N at once, then N per window sustained)."""
        if self.rate_limit is not None:
            return self.rate_limit
        if self.rate_limit_count is not None and self.rate_limit_window_s is not None:
            return RateLimitDefault(
                requests=self.rate_limit_count, window_s=self.rate_limit_window_s
            )
        return None


# -- the fleet topology (topology/fleet.yaml) --------------------------------------------------
HostName = Annotated[str, Meta(pattern=r"^[a-z][a-z0-9-]{0,31}$")]


class FleetHost(Struct, frozen=True, forbid_unknown_fields=True):
    """A machine of the fleet and the processes it runs, by port (`topology.placement`).
    They bind ``address``, an IP address rather than a name: it is what peers connect to
    and what a proxy trusts a PROXY header from."""

    name: HostName
    address: str
    ports: list[Port] = field(default_factory=list)


class FleetRegion(Struct, frozen=True, forbid_unknown_fields=True):
    code: str
    elb_port: Port
    proxy_ports: list[Port]
    msa: str  # path of the region's service map, relative to the topology file
    elb_metrics_port: Port | None = None  # the ELB's /metrics on 127.0.0.1 (none: not served)
    # processes per proxy (``proxy --workers N``, `proxy.workers`): each of the region's
    # proxies serves its port with this many; 1 is one process, as before
    proxy_workers: Annotated[int, Meta(ge=1, le=64)] = 1
    # with proxy_workers N > 1: each worker's own /metrics port (`proxy.main`), N per proxy in
    # the order of proxy_ports (proxy_ports[0]'s workers 0..N-1 first); none: not served, and a
    # scrape of a proxy's port sees one worker only
    worker_metrics_ports: list[Port] = field(default_factory=list)

    def metrics_ports_of(self, port: int) -> list[int]:
        """The metrics ports of the workers of the proxy on ``port`` (none: not served)."""
        if not self.worker_metrics_ports:
            return []
        at = self.proxy_ports.index(port) * self.proxy_workers
        return list(self.worker_metrics_ports[at : at + self.proxy_workers])


class FleetRedis(Struct, frozen=True, forbid_unknown_fields=True):
    port: Port = 6379
    enabled: bool = True


class FleetAuth(Struct, frozen=True, forbid_unknown_fields=True):
    ports: list[Port] = field(default_factory=list)
    db: str = "auth.sqlite3"  # relative to the fleet's state directory (topology.persistent)


class FleetBackends(Struct, frozen=True, forbid_unknown_fields=True):
    ports: list[Port] = field(default_factory=list)
    # serve the files under this directory (relative to the topology file; e.g. the
    # original's http_root) instead of the built-in set (generated + backends/static/)
    root: str | None = None
    # the demo backends obey ?drop=1, ?status=N ... (backend --test-faults): tests only
    test_faults: bool = False


class FleetTopology(Struct, frozen=True, forbid_unknown_fields=True):
    regions: list[FleetRegion]
    backends: FleetBackends = field(default_factory=FleetBackends)
    auth: FleetAuth = field(default_factory=FleetAuth)
    redis: FleetRedis = field(default_factory=FleetRedis)
    config: str | None = None  # config.json for every proxy, relative to this file
    run_dir: str = "run"
    host: Literal["127.0.0.1"] = "127.0.0.1"  # the address of a topology without hosts
    # the machines and what each runs; none: everything on ``host``, one launcher
    hosts: list[FleetHost] = field(default_factory=list)


def encode_json(obj: object) -> bytes:
    return msgspec.json.format(msgspec.json.encode(obj), indent=2)


def encode_yaml(obj: object) -> bytes:
    return msgspec.yaml.encode(obj)
