"""``rate_limit``: a service's ``rate_limit`` entries, each a GCRA (`httpio.gcra`) over a key.

Keys (`key_of`, sans-IO): ``client_ip`` (the real client address, `auth.client_address`),
``user`` (the verified token's ``sub``), ``claim:<name>`` (a claim of the verified token:
ours, or one of the others it carries, `authsvc.tokens.Claims.extra`),
``header:<name>``, ``service`` (one bucket for the whole service), joined with ``+``. A
request without the key's header, claim or user is limited under the explicit ``-`` value of
that part (one shared "missing" bucket), never let through unlimited (a Traefik complaint).
Limits on ``client_ip``, ``header:`` and ``service`` run before auth (a flood without tokens
is refused before any token work); those that name ``user`` or ``claim:`` run after it.

``scope: fleet`` (default) asks Redis (`httpio.rate_store`, one atomic script per decision,
Redis's clock); with a burst of a few hundred or more, the decision leases a few tokens for
the key at once and the next requests spend them here (`httpio.rate_lease`: at most a 100th
of the burst per ``fleet_proxies``, 0.5 s), and a refusal is remembered as long as it holds,
so a busy key costs a round trip per lease, not per request. ``scope: local`` keeps the TATs
in this process. When Redis fails or is slower
than its command timeout (the pool's own deadline bounds each decision), ``on_store_error``
says what happens: ``allow`` (default; counted, logged once per outage), ``deny`` (429), or
``local`` (a per-process bucket at ``rate / fleet_proxies``, burst likewise divided).

A refusal is a 429 with the JSON error body, ``Retry-After`` in whole seconds rounded up
(never 0), and the fields of draft-ietf-httpapi-ratelimit-headers (``RateLimit-Policy:
"<name>";q=<burst>;w=<seconds>`` and ``RateLimit: "<name>";r=<remaining>;t=<seconds>``);
``headers: legacy`` adds ``X-RateLimit-Limit/Remaining/Reset``, ``none`` sends only
``Retry-After``. An allowed request's answer carries the same quota fields (``none``: none),
one ``RateLimit-Policy`` and one ``RateLimit`` line listing every limit that decided (the
draft's fields are Structured Field Lists; one line each costs less to send than one per
limit); a ``legacy`` limit's fields go on lines of their own. The chain's first limit writes
them all, in one pass (`FieldsRateLimit`); the others only decide.

The buckets outlive a config snapshot (`RateLimitState`, kept by the proxy): a reload that
changes a limit resizes the same buckets, so a client's debt is not forgiven by a reload. A
reload that moves config.json's Redis (address, password, db) takes effect at once: the next
snapshot's fleet limits count in the new store (`RateLimitState.follow_redis`; the old pool
is closed, decisions in flight on it finish or fail as a store error). Nothing needs a
restart, so nothing is refused: a store is where counts live, not part of their meaning.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import structlog

from authsvc.tokens import claim_of
from httpio.errors import RateLimited
from httpio.gcra import LocalBuckets, retry_after_header
from httpio.gcra_decision import Decision
from httpio.messages import Response
from httpio.protocol import Headers, header_value
from httpio.rate_lease import lease_size
from httpio.rate_store import FleetBuckets
from httpio.redis_client import RedisError, RedisPool, RedisSettings
from proxy.filters.auth import client_address
from proxy.filters.chain import Exchange, RequestAnswer
from topology.schema import RateLimitSpec

log = structlog.get_logger()
MISSING = "-"


def needs_identity(key: str) -> bool:
    return any(p == "user" or p.startswith("claim:") for p in key.split("+"))


# A key part gives its item of the bucket's name, length-prefixed ("9:192.0.2.1"): "a+b" of
# two parts never collides with a value holding "+" or "|". One part's item is the name.
KeyPart = Callable[[Exchange], str]
_MISSING_ITEM = f"{len(MISSING)}:{MISSING}"


def _client_ip(ex: Exchange) -> str:
    v = client_address(ex)
    return f"{len(v)}:{v}"


def _service(ex: Exchange) -> str:
    return "1:*"


def _user(ex: Exchange) -> str:
    if ex.claims is None:
        return _MISSING_ITEM
    v = ex.claims.sub
    return f"{len(v)}:{v}"


def _header_part(name: bytes) -> KeyPart:
    def header(ex: Exchange) -> str:
        raw = header_value(ex.request.headers, name)
        if raw is None:
            return _MISSING_ITEM
        v = raw.decode("latin-1")
        return f"{len(v)}:{v}"

    return header


def _claim_part(name: str) -> KeyPart:
    def claim(ex: Exchange) -> str:
        v = claim_of(ex.claims, name) if ex.claims is not None else None
        return _MISSING_ITEM if v is None else f"{len(v)}:{v}"

    return claim


def compile_key(key: str) -> Callable[[Exchange], str]:
    """The bucket function of ``key``, built once per filter (see the module header)."""
    parts: list[KeyPart] = []
    for part in key.split("+"):
        if part == "client_ip":
            parts.append(_client_ip)
        elif part == "service":
            parts.append(_service)
        elif part == "user":
            parts.append(_user)
        elif part.startswith("header:"):
            parts.append(_header_part(part[7:].lower().encode()))
        else:
            parts.append(_claim_part(part[6:]))
    if len(parts) == 1:
        return parts[0]  # its item is the name: no frame between the limit and the part
    every = tuple(parts)

    def joined(ex: Exchange) -> str:
        return "|".join([p(ex) for p in every])

    return joined


def key_of(key: str, ex: Exchange) -> str:
    """The bucket of this request under ``key``."""
    return compile_key(key)(ex)


def quota_headers(spec: RateLimitSpec, decision: Decision) -> Headers:
    """The draft's ``RateLimit-Policy`` and ``RateLimit`` (and, for ``headers: legacy``,
    ``X-RateLimit-*``) of one decision, allowed or refused; none for ``headers: none``."""
    if spec.headers == "none":
        return []
    name = spec.key.replace('"', "")
    reset = reset_seconds(decision.reset_s)
    headers: Headers = [
        (b"ratelimit-policy", policy_of(spec)),
        (b"ratelimit", f'"{name}";r={decision.remaining};t={reset}'.encode()),
    ]
    if spec.headers == "legacy":
        headers.append((b"x-ratelimit-limit", str(spec.burst).encode()))
        headers.append((b"x-ratelimit-remaining", str(decision.remaining).encode()))
        headers.append((b"x-ratelimit-reset", str(reset).encode()))
    return headers


def policy_of(spec: RateLimitSpec) -> bytes:
    """The draft's ``RateLimit-Policy`` item of a limit: ``"<key>";q=<burst>;w=<seconds>``."""
    window = max(1, math.ceil(spec.burst / spec.rate_per_s))
    return f'"{spec.key.replace(chr(34), "")}";q={spec.burst};w={window}'.encode()


def item_template(spec: RateLimitSpec) -> bytes:
    """The draft's ``RateLimit`` item of a limit as a %-template of (remaining, reset):
    ``"<key>";r=%d;t=%d`` (a ``%`` of the key doubled)."""
    name = spec.key.replace('"', "").replace("%", "%%")
    return f'"{name}";r=%d;t=%d'.encode()


def reset_seconds(reset_s: float) -> int:
    """The ``t`` of a RateLimit item: whole seconds until the bucket is full, rounded up,
    at least 1."""
    seconds = math.ceil(reset_s - 1e-9)
    return seconds if seconds > 1 else 1


def refusal_headers(spec: RateLimitSpec, decision: Decision) -> Headers:
    headers: Headers = [(b"retry-after", str(retry_after_header(decision.retry_after_s)).encode())]
    headers.extend(quota_headers(spec, decision))
    return headers


@dataclass
class RateLimitState:
    """What outlives snapshots: the local buckets of each (service, limit), the fleet's
    store, and the outage flag that keeps an ``allow`` outage to one log line."""

    redis: RedisPool | None = None
    namespace: str = "gw:rl"
    local: dict[tuple[str, str, str], LocalBuckets] = field(default_factory=dict)
    fleet: dict[tuple[str, str], FleetBuckets] = field(default_factory=dict)
    store_errors: int = 0
    in_outage: bool = False
    # (service, key) -> [allowed, denied]: gateway_ratelimit_decisions_total, across snapshots
    decisions: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def decision_counts(self, service: str, key: str) -> list[int]:
        counts = self.decisions.get((service, key))
        if counts is None:
            counts = self.decisions[service, key] = [0, 0]
        return counts

    def buckets(self, service: str, spec: RateLimitSpec, kind: str) -> LocalBuckets:
        rate, burst = spec.rate_per_s, spec.burst
        if kind == "fallback":  # this proxy's share of the fleet's limit, burst included
            rate, burst = rate / spec.fleet_proxies, max(1, burst // spec.fleet_proxies)
        slot = (service, spec.key, kind)
        found = self.local.get(slot)
        if found is None:
            found = self.local[slot] = LocalBuckets(rate, burst, clock=time.monotonic)
        else:
            found.resize(rate, burst)
        return found

    def follow_redis(self, settings: RedisSettings) -> RedisPool | None:
        """A reload with config.json's Redis settings: when they changed, the limits count
        in a pool on the new store from the next snapshot on (the buckets of the old one
        are not carried over: the new store starts full). Returns the old pool, to close;
        None when nothing changed."""
        if self.redis is None or settings == self.redis.settings:
            return None
        old, self.redis = self.redis, RedisPool(settings)
        self.in_outage = False
        log.info("rate_limit_store_moved", old=old.settings.where(), new=settings.where())
        return old

    def fleet_buckets(self, service: str, spec: RateLimitSpec) -> FleetBuckets:
        """The same buckets (and leases) across snapshots, resized when the limit changed
        and following the store when a reload moved it (`follow_redis`)."""
        assert self.redis is not None
        slot = (service, spec.key)
        found = self.fleet.get(slot)
        if found is None or found.pool is not self.redis:
            prefix = f"{self.namespace}:{service}:{spec.key}:"
            found = self.fleet[slot] = FleetBuckets(
                self.redis, prefix, spec.rate_per_s, spec.burst, fleet_proxies=spec.fleet_proxies
            )
        elif (found.interval_s, found.burst, found.lease) != (
            1.0 / spec.rate_per_s,
            spec.burst,
            lease_size(spec.burst, spec.fleet_proxies),
        ):
            found.resize(spec.rate_per_s, spec.burst, spec.fleet_proxies)
        return found

    def statistics(self) -> dict[str, object]:
        return {
            "store_errors": self.store_errors,
            "in_outage": self.in_outage,
            "local": {"/".join(k): b.statistics() for k, b in self.local.items()},
            "fleet": {"/".join(k): b.statistics() for k, b in self.fleet.items()},
        }


class RateLimit:
    """One ``rate_limit`` entry of one service."""

    __slots__ = (
        "_counts",
        "_fallback",
        "_fleet",
        "_item",
        "_key",
        "_local",
        "_policy",
        "_state",
        "name",
        "service",
        "spec",
    )

    def __init__(self, service: str, spec: RateLimitSpec, state: RateLimitState) -> None:
        self.service = service
        self.spec = spec
        self.name = f"rate_limit[{spec.key}]"
        self._state = state
        self._key = compile_key(spec.key)
        # the allowed answers' fields, what is constant in them made once (see quota_headers)
        self._policy = policy_of(spec) if spec.headers != "none" else None
        # this limit's item of the RateLimit field, a %-template: (remaining, reset)
        self._item = item_template(spec)
        # /metrics: plain counts (allowed, denied) that outlive the snapshot, read at scrape
        # time (`proxy.metrics.ProxyCollector`): prometheus-client's inc() takes a lock
        self._counts = state.decision_counts(service, spec.key)
        self._local: LocalBuckets | None = None
        self._fleet: FleetBuckets | None = None
        self._fallback: LocalBuckets | None = None
        if spec.scope == "local" or state.redis is None:
            self._local = state.buckets(service, spec, "local")
        else:
            self._fleet = state.fleet_buckets(service, spec)
            if spec.on_store_error == "local":
                self._fallback = state.buckets(service, spec, "fallback")

    def __repr__(self) -> str:
        return f"<RateLimit {self.service} {self.spec.key} {self.spec.rate_per_s}/s burst={self.spec.burst} {self.spec.scope}>"

    def settings(self) -> dict[str, object]:
        return {
            "key": self.spec.key,
            "rate_per_s": self.spec.rate_per_s,
            "burst": self.spec.burst,
            "scope": "local" if self._local is not None else "fleet",
            "lease": self._fleet.lease if self._fleet is not None else None,
            "on_store_error": self.spec.on_store_error,
            "headers": self.spec.headers,
        }

    def on_request(self, ex: Exchange) -> RequestAnswer:
        key = self._key(ex)
        if self._local is not None:
            decision = self._local.take(key)
        else:
            assert self._fleet is not None
            fleet = self._fleet
            held = fleet.spend(key)  # a leased token or a remembered refusal: no coroutine
            if held is None:
                return self._ask_fleet(key, ex)
            self._check(held, ex)
            want = fleet.top_up_due(key)  # a hot key's lease asked for before it runs out
            if want:
                return fleet.top_up(key, want)
            return None
        self._check(decision, ex)
        return None

    def _check(self, decision: Decision, ex: Exchange) -> None:
        if not decision.allowed:
            self._refuse(decision, ex)
        self._counts[0] += 1
        if self._policy is not None:
            if ex.rate_limits is None:
                ex.rate_limits = [(self, decision)]
            else:
                ex.rate_limits.append((self, decision))

    def _refuse(self, decision: Decision, ex: Exchange) -> NoReturn:
        self._counts[1] += 1
        ex.note.rate_limited = True  # the access log's field
        raise RateLimited(
            f"rate limit of {self.spec.rate_per_s:g}/s (burst {self.spec.burst}) on {self.spec.key}",
            headers=tuple(refusal_headers(self.spec, decision)),
        )

    def _ask_fleet(self, key: str, ex: Exchange) -> Awaitable[None]:
        return self._fleet_decision(key, ex)

    async def _fleet_decision(self, key: str, ex: Exchange) -> None:
        assert self._fleet is not None
        state = self._state
        try:
            decision = await self._fleet.take(key)
        except RedisError as err:
            state.store_errors += 1
            if not state.in_outage:
                state.in_outage = True
                log.warning(
                    "rate_limit_store_unavailable",
                    error=str(err),
                    on_store_error=self.spec.on_store_error,
                )
            if self.spec.on_store_error == "deny":
                self._counts[1] += 1
                ex.note.rate_limited = True
                raise RateLimited(
                    "the rate limit store is unavailable", headers=((b"retry-after", b"1"),)
                ) from None
            if self._fallback is not None:
                self._check(self._fallback.take(key), ex)
            return
        if state.in_outage:
            state.in_outage = False
            log.info("rate_limit_store_back", errors=state.store_errors)
        self._check(decision, ex)


class FieldsRateLimit(RateLimit):
    """The first rate limit of a chain (request order), which also writes the quota fields of
    every limit that allowed the request on its answer (`quota_fields`): one new `Response`
    for all of them, where a hook per limit made one each and merged their lines.

    Given the chain's other limits (``others``, in request order) when every one that
    notes (``headers`` not ``none``) is a ``draft`` one, what is constant in the two lines
    is made here once: the whole ``RateLimit-Policy`` header, and the ``RateLimit`` line as
    one %-template. An answer that every one of them allowed fills that template (about
    half what building each item and joining them costs, `bench.edge_filters`); any other
    set of decisions (a limit the store's outage let through unnoted, a ``legacy`` one)
    takes `quota_fields`, which writes the same bytes."""

    __slots__ = ("_plan", "_policy_field", "_template")

    def __init__(
        self,
        service: str,
        spec: RateLimitSpec,
        state: RateLimitState,
        others: Sequence[RateLimit] = (),
    ) -> None:
        super().__init__(service, spec, state)
        noting = [limit for limit in (self, *others) if limit.spec.headers != "none"]
        self._plan: tuple[RateLimit, ...] | None = None
        self._policy_field: tuple[bytes, bytes] = (b"ratelimit-policy", b"")
        self._template = b""
        if noting and all(limit.spec.headers == "draft" for limit in noting):
            self._plan = tuple(noting)
            # the last limit's items first, as `quota_fields` writes them
            policies = [limit._policy for limit in reversed(noting)]
            self._policy_field = (b"ratelimit-policy", b", ".join(p for p in policies if p))
            self._template = b", ".join(limit._item for limit in reversed(noting))

    def on_response(self, ex: Exchange, response: Response) -> Response:
        noted = ex.rate_limits
        if not noted:
            return response
        plan = self._plan
        if plan is not None and len(noted) == len(plan):
            args: list[int] = []
            at = len(plan)
            for limit, decision in reversed(noted):
                at -= 1
                if limit is not plan[at]:
                    break
                args += (decision.remaining, reset_seconds(decision.reset_s))
            else:
                ex.rate_limits = None
                fields = (self._policy_field, (b"ratelimit", self._template % tuple(args)))
                return Response(response.status, [*response.headers, *fields], response.body)
        return quota_fields(ex, response)


def quota_fields(ex: Exchange, response: Response) -> Response:
    """The quota left, on an allowed request's answer: the decisions the limits noted, in one
    ``RateLimit-Policy`` and one ``RateLimit`` line (the draft's fields are Structured Field
    Lists, the last limit's items first: ``"b";q=2, "a";q=1``), a ``legacy`` limit's on lines
    of their own before them. A new `Response`: the cache must not store one client's quota."""
    noted = ex.rate_limits
    if not noted:
        return response  # none decided (or the store failed and ``allow`` let it pass)
    ex.rate_limits = None
    headers = list(response.headers)
    policies: list[bytes] = []
    remaining: list[bytes] = []
    for limit, decision in reversed(noted):
        assert isinstance(limit, RateLimit)
        if limit.spec.headers == "legacy":
            headers.extend(quota_headers(limit.spec, decision))
            continue
        assert limit._policy is not None
        policies.append(limit._policy)
        remaining.append(limit._item % (decision.remaining, reset_seconds(decision.reset_s)))
    if policies:
        headers.append((b"ratelimit-policy", b", ".join(policies)))
        headers.append((b"ratelimit", b", ".join(remaining)))
    return Response(response.status, headers, response.body)
