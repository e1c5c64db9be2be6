"""Which instance of a service gets the next request: load-balancing policies, sans-IO.

The original had one global policy (round robin, ip hash, a "url hash" that really hashed
ip+path, or random) and mapped a hash to an instance with a plain modulo, so adding one
instance moved almost every key. Here:

- ``round_robin`` rotates through the instances in config order, ignoring weights (the
  original's meaning); a cursor over the full list keeps the rotation fair when some instances
  are skipped (unhealthy, already tried by a retry).
- ``weighted_round_robin`` is nginx's smooth WRR (``current += weight``, take the max, subtract
  the total): exact over every cycle of ``sum(weights)`` picks and interleaved, not bursty.
- ``random`` draws in proportion to the weights from an injected ``random.Random``.
- ``ip_hash`` / ``url_hash`` use weighted rendezvous hashing (HRW; Thaler & Ravishankar 1998,
  weights as in Schindelhauer & Schomaker 2005): each key goes to the instance with the highest
  ``weight / -ln(hash(key, instance))``. Removing an instance moves only its own keys; adding one
  of n moves ~1/n of them; no ring to rebuild. ``url_hash`` hashes the request target (path and
  query) only, ``ip_hash`` the client address only. The price is O(n): about 250 ns per
  instance per pick (2 us for 5 instances), against a few microseconds for a ring lookup,
  which is noise next to proxying a request and buys exact weights and minimal remapping.
- ``least_conn`` takes the fewest in-flight requests per unit of weight, ties by smooth WRR
  (nginx's ``least_conn``).
- ``p2c`` draws two instances and keeps the cheaper by ``(in_flight + 1) * latency_ewma /
  weight`` (Mitzenmacher's power of two choices; Finagle/Linkerd's cost). An instance with no
  sample yet costs ``UNMEASURED_LATENCY_S``; a failure counts as at least twice the current EWMA
  so a fast-failing instance does not look attractive.

The latency EWMA uses a fixed ``EWMA_ALPHA`` (0.3: the last ~5 responses dominate), not a time
decay, so it needs no clock.

``ServicePool`` is what the proxy (and the ELB, for its proxies) holds per service: a Balancer
plus the ``httpio.health`` state machine. It offers the balancer only usable instances not yet
tried by this request; if a retry has tried them all it may repeat one; if none is usable it
enters panic mode and spreads over all of them (Envoy's panic threshold, at 0%: better a
request to a maybe-sick instance than a certain 503), unless ``HealthSettings.panic`` is off.

A retry is picked differently (`ServicePool.pick_retry`), because the balancer's next choice
is the worst one when instances fail together: with round robin and two adjacent instances
killed, the cursor sends the retry of a request that failed on the first straight to the
second. A retry goes only to an instance not tried by this request and fit for it
(``HealthTracker.fit_for_retry``: healthy, nothing failed there in the last
``recently_failed_s``), and among those to the one that most recently answered, the only
evidence at hand that an instance is alive now rather than when it last failed. When none is
fit, any usable instance not yet tried will do; when none is left, there is no retry.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_left
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from httpio.errors import NoHealthyInstance
from httpio.health import HealthTracker, Outcome, Transition
from httpio.limits import RETRY_AFTER
from httpio.origin import origin_url, parse_origin
from httpio.settings import HealthSettings

EWMA_ALPHA = 0.3
UNMEASURED_LATENCY_S = 0.010
_MASK64 = (1 << 64) - 1
_TWO53 = float(1 << 53)

CANONICAL_POLICIES = (
    "round_robin",
    "weighted_round_robin",
    "random",
    "ip_hash",
    "url_hash",
    "least_conn",
    "p2c",
)
_ALIASES = {
    "rr": "round_robin",
    "roundrobin": "round_robin",
    "wrr": "weighted_round_robin",
    "weighted_roundrobin": "weighted_round_robin",
    "weightedroundrobin": "weighted_round_robin",
    "iphash": "ip_hash",
    "ip": "ip_hash",
    "urlhash": "url_hash",
    "url": "url_hash",
    "leastconn": "least_conn",
    "least_connections": "least_conn",
    "least_request": "least_conn",
    "power_of_two_choices": "p2c",
    "weighted_random": "random",
}


def normalize_policy(name: str) -> str:
    """Map a configured policy name ("Round-Robin", "iphash", ...) to its canonical name."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    if key not in CANONICAL_POLICIES:
        raise ValueError(
            f"unknown load-balancing policy {name!r}; valid: {', '.join(CANONICAL_POLICIES)}"
            f" (aliases: {', '.join(sorted(_ALIASES))})"
        )
    return key


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str  # the origin the upstream pool dials: "http://localhost:5000"
    host: str
    port: int
    weight: int = 1

    @classmethod
    def parse(cls, url: str, weight: int = 1) -> Endpoint:
        """An instance at ``url`` (`httpio.origin.parse_origin`'s rule; no DNS), named by its
        canonical ``http://host:port``."""
        if weight < 1:
            raise ValueError(f"instance weight must be >= 1, not {weight} ({url})")
        host, port, _ = parse_origin(url)
        return cls(origin_url(host, port), host, port, weight)


def _hash64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8).digest(), "big")


class InstanceState:
    """What the balancer knows about one endpoint; the proxy calls begin()/end() around each
    request it sends there (the ServicePool does this for you)."""

    __slots__ = (
        "current_weight",
        "endpoint",
        "ewma_s",
        "failures",
        "in_flight",
        "index",
        "node_hash",
        "requests",
    )

    def __init__(self, endpoint: Endpoint, index: int = 0) -> None:
        self.endpoint = endpoint
        self.index = index  # position in the balancer's list (round-robin cursor order)
        self.node_hash = _hash64(endpoint.url)
        self.in_flight = 0
        self.ewma_s: float | None = None
        self.requests = 0
        self.failures = 0
        self.current_weight = 0  # smooth WRR

    def begin(self) -> None:
        self.in_flight += 1

    def ended(self, count: int) -> None:
        """``count`` requests or connections ended with no latency to learn from (an ELB's
        proxy reports its closed connections in batches)."""
        self.in_flight = max(0, self.in_flight - count)

    def forget_in_flight(self) -> None:
        """Nothing is in flight there any more (a proxy that went away took its connections)."""
        self.in_flight = 0

    def end(self, latency_s: float | None, ok: bool) -> None:
        """`latency_s=None` (cancelled) frees the slot without a sample."""
        self.in_flight = max(0, self.in_flight - 1)
        if latency_s is None:
            return
        self.requests += 1
        if not ok:
            self.failures += 1
            if self.ewma_s is not None:
                latency_s = max(latency_s, 2 * self.ewma_s)
        if self.ewma_s is None:
            self.ewma_s = latency_s
        else:
            self.ewma_s += EWMA_ALPHA * (latency_s - self.ewma_s)

    def cost(self) -> float:
        latency = UNMEASURED_LATENCY_S if self.ewma_s is None else self.ewma_s
        return (self.in_flight + 1) * latency / self.endpoint.weight

    def __repr__(self) -> str:
        ewma = "-" if self.ewma_s is None else f"{self.ewma_s * 1000:.1f}ms"
        return (
            f"<InstanceState {self.endpoint.url} w={self.endpoint.weight}"
            f" in_flight={self.in_flight} ewma={ewma}>"
        )


Picker = Callable[["Balancer", Sequence[InstanceState], str, str], InstanceState]


def _smooth_wrr(candidates: Sequence[InstanceState]) -> InstanceState:
    total = 0
    best = candidates[0]
    for s in candidates:
        s.current_weight += s.endpoint.weight
        total += s.endpoint.weight
        if s.current_weight > best.current_weight:
            best = s
    best.current_weight -= total
    return best


def _pick_round_robin(b: Balancer, c: Sequence[InstanceState], ip: str, url: str) -> InstanceState:
    i = bisect_left(c, b.cursor, key=_index_of)  # candidates come in list order
    chosen = c[i] if i < len(c) else c[0]
    b.cursor = chosen.index + 1
    return chosen


def _index_of(s: InstanceState) -> int:
    return s.index


def _pick_wrr(b: Balancer, c: Sequence[InstanceState], ip: str, url: str) -> InstanceState:
    return _smooth_wrr(c)


def _pick_random(b: Balancer, c: Sequence[InstanceState], ip: str, url: str) -> InstanceState:
    if not b.weighted:
        return c[b.rng.randrange(len(c))]
    point = b.rng.random() * sum(s.endpoint.weight for s in c)
    for s in c:
        point -= s.endpoint.weight
        if point < 0:
            return s
    return c[-1]


def _rendezvous(b: Balancer, c: Sequence[InstanceState], key: str) -> InstanceState:
    # fmix64(key_hash ^ node_hash), inlined: this loop is the whole cost of the hash policies.
    # The unweighted score is the hash itself, an int: -1/ln(u) grows with u, so the largest
    # hash wins and no log is needed (and no float, which would tie hashes past 2**53).
    k = _hash64(key)
    best = c[0]
    best_score = -1.0
    best_hash = -1
    for s in c:
        x = k ^ s.node_hash
        x = ((x ^ (x >> 33)) * 0xFF51AFD7ED558CCD) & _MASK64
        x = ((x ^ (x >> 33)) * 0xC4CEB9FE1A85EC53) & _MASK64
        x ^= x >> 33
        if b.weighted:
            score = s.endpoint.weight / -math.log(((x >> 11) + 0.5) / _TWO53)
            if score > best_score:
                best, best_score = s, score
        elif x > best_hash:
            best, best_hash = s, x
    return best


def _pick_ip_hash(b: Balancer, c: Sequence[InstanceState], ip: str, url: str) -> InstanceState:
    return _rendezvous(b, c, ip)


def _pick_url_hash(b: Balancer, c: Sequence[InstanceState], ip: str, url: str) -> InstanceState:
    return _rendezvous(b, c, url)


def _pick_least_conn(b: Balancer, c: Sequence[InstanceState], ip: str, url: str) -> InstanceState:
    low = min(s.in_flight / s.endpoint.weight for s in c)
    tied = [s for s in c if s.in_flight / s.endpoint.weight == low]
    return tied[0] if len(tied) == 1 else _smooth_wrr(tied)


def _pick_p2c(b: Balancer, c: Sequence[InstanceState], ip: str, url: str) -> InstanceState:
    n = len(c)
    if n == 1:
        return c[0]
    i = b.rng.randrange(n)
    j = b.rng.randrange(n - 1)
    if j >= i:
        j += 1
    first, second = c[i], c[j]
    return second if second.cost() < first.cost() else first


_PICKERS: dict[str, Picker] = {
    "round_robin": _pick_round_robin,
    "weighted_round_robin": _pick_wrr,
    "random": _pick_random,
    "ip_hash": _pick_ip_hash,
    "url_hash": _pick_url_hash,
    "least_conn": _pick_least_conn,
    "p2c": _pick_p2c,
}


class Balancer:
    """One per service (and one in the ELB for its proxies). Holds an InstanceState per
    endpoint; `pick` chooses among `candidates` (a subset of `states`, in list order) or all."""

    def __init__(
        self, policy: str, endpoints: Sequence[Endpoint], *, rng: random.Random | None = None
    ) -> None:
        self.rng = rng if rng is not None else random.Random()
        self.cursor = 0
        self.states: list[InstanceState] = []
        self.weighted = False
        self._picks = 0
        self.set_policy(policy)
        self.swap_endpoints(endpoints)

    def set_policy(self, policy: str) -> None:
        self.policy = normalize_policy(policy)
        self._picker = _PICKERS[self.policy]

    def swap_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Config reload: endpoints whose URL stays keep their state (in-flight, EWMA).
        A URL listed twice counts once with the weights added up."""
        merged: dict[str, Endpoint] = {}
        for ep in endpoints:
            if ep.url in merged:
                ep = Endpoint(ep.url, ep.host, ep.port, merged[ep.url].weight + ep.weight)
            merged[ep.url] = ep
        old = {s.endpoint.url: s for s in self.states}
        states = []
        for index, ep in enumerate(merged.values()):
            state = old.get(ep.url)
            if state is None:
                state = InstanceState(ep, index)
            else:
                state.endpoint, state.index = ep, index
            states.append(state)
        self.states = states
        self.weighted = len({s.endpoint.weight for s in states}) > 1

    def pick(
        self,
        candidates: Sequence[InstanceState] | None = None,
        *,
        client_ip: str = "",
        url: str = "",
    ) -> Endpoint | None:
        chosen = self.pick_state(candidates, client_ip=client_ip, url=url)
        return None if chosen is None else chosen.endpoint

    def pick_state(
        self,
        candidates: Sequence[InstanceState] | None = None,
        *,
        client_ip: str = "",
        url: str = "",
    ) -> InstanceState | None:
        c = self.states if candidates is None else candidates
        if not c:
            return None
        self._picks += 1
        return self._picker(self, c, client_ip, url)

    def instance_rows(self) -> list[dict[str, object]]:
        return [
            {
                "url": s.endpoint.url,
                "weight": s.endpoint.weight,
                "in_flight": s.in_flight,
                "requests": s.requests,
                "failures": s.failures,
                "latency_ewma_s": s.ewma_s,
            }
            for s in self.states
        ]

    def statistics(self) -> dict[str, object]:
        return {
            "policy": self.policy,
            "picks": self._picks,
            "instances": self.instance_rows(),
        }

    def __repr__(self) -> str:
        return f"<Balancer {self.policy} instances={len(self.states)} picks={self._picks}>"


class ServicePool:
    """Endpoints of one service, their health, and the policy that picks among them.

    The proxy, around each attempt::

        ep = pool.pick(client_ip=ip, url=req.target, exclude=tried)   # may raise NoHealthyInstance
        pool.begin(ep)
        try: ...send..., outcome = Outcome.SUCCESS / SERVER_ERROR / ...
        finally: pool.end(ep, outcome, latency_s)

    ``clock`` is a monotonic clock in seconds (``time.monotonic`` or ``trio.current_time``).
    """

    def __init__(
        self,
        name: str,
        endpoints: Sequence[Endpoint],
        *,
        policy: str = "round_robin",
        health: HealthSettings | None = None,
        clock: Callable[[], float],
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.balancer = Balancer(policy, endpoints, rng=rng)
        self.health = HealthTracker(health or HealthSettings(), clock)
        for s in self.balancer.states:
            self.health.add(s.endpoint.url)
        self._by_url = {s.endpoint.url: s for s in self.balancer.states}
        self.panics = 0

    @property
    def endpoints(self) -> list[Endpoint]:
        return [s.endpoint for s in self.balancer.states]

    def pick(
        self, *, client_ip: str = "", url: str = "", exclude: Collection[Endpoint] = ()
    ) -> Endpoint:
        self.health.poll()
        states = self.balancer.states
        usable = [s for s in states if self.health.usable(s.endpoint.url)]
        if not usable:
            if not states or not self.health.settings.panic:
                raise NoHealthyInstance(
                    f"service {self.name!r} has no healthy instance", headers=RETRY_AFTER
                )
            self.panics += 1
            usable = states
        candidates = usable
        if exclude:
            tried = {e.url for e in exclude}
            candidates = [s for s in usable if s.endpoint.url not in tried] or usable
        chosen = self.balancer.pick_state(candidates, client_ip=client_ip, url=url)
        assert chosen is not None  # candidates is never empty here
        return chosen.endpoint

    def pick_retry(
        self, tried: Collection[Endpoint], *, client_ip: str = "", url: str = ""
    ) -> Endpoint | None:
        """Where a retry of a request that failed on every instance in `tried` goes, or None
        when no other instance is usable (see the module header)."""
        health = self.health
        health.poll()
        now = health.clock()
        tried_urls = {e.url for e in tried}
        fit: list[InstanceState] = []
        usable: list[InstanceState] = []
        for s in self.balancer.states:
            key = s.endpoint.url
            if key in tried_urls:
                continue
            if health.fit_for_retry(key, now):
                fit.append(s)
            elif health.usable(key):
                usable.append(s)
        if fit:
            latest: InstanceState | None = None
            latest_at = 0.0
            for s in fit:
                at = health.last_success_at(s.endpoint.url)
                if at is not None and (latest is None or at > latest_at):
                    latest, latest_at = s, at
            if latest is not None:
                return latest.endpoint
            usable = fit
        chosen = self.balancer.pick_state(usable, client_ip=client_ip, url=url)
        return None if chosen is None else chosen.endpoint

    def begin(self, endpoint: Endpoint) -> None:
        state = self._by_url.get(endpoint.url)
        if state is not None:
            state.begin()
            self.health.start_trial(endpoint.url)

    def end(self, endpoint: Endpoint, outcome: Outcome, latency_s: float) -> Transition | None:
        """Free the slot, feed the EWMA and the passive health check; returns a state change
        worth logging, if any. Unknown endpoints (removed by a reload meanwhile) are ignored."""
        state = self._by_url.get(endpoint.url)
        if state is None:
            return None
        cancelled = outcome is Outcome.CANCELLED
        state.end(None if cancelled else latency_s, ok=outcome is Outcome.SUCCESS)
        return self.health.record_outcome(endpoint.url, outcome)

    def record_check(self, endpoint: Endpoint, passed: bool) -> Transition | None:
        if endpoint.url not in self._by_url:
            return None
        return self.health.record_check(endpoint.url, passed)

    def swap_endpoints(self, endpoints: Sequence[Endpoint]) -> None:
        """Config reload: unchanged URLs keep their in-flight count, EWMA and health."""
        self.balancer.swap_endpoints(endpoints)
        self._by_url = {s.endpoint.url: s for s in self.balancer.states}
        for url in [u for u in self.health.keys() if u not in self._by_url]:
            self.health.remove(url)
        for url in self._by_url:
            self.health.add(url)

    def set_policy(self, policy: str) -> None:
        self.balancer.set_policy(policy)

    def set_health(self, settings: HealthSettings) -> None:
        """Config reload: new thresholds apply from the next event; states are kept."""
        self.health.settings = settings

    def statistics(self) -> dict[str, object]:
        health = self.health.statistics()
        return {
            "service": self.name,
            "policy": self.balancer.policy,
            "panics": self.panics,
            "instances": [
                {**row, **health[str(row["url"])]} for row in self.balancer.instance_rows()
            ],
        }

    def __repr__(self) -> str:
        in_flight = sum(s.in_flight for s in self.balancer.states)
        return (
            f"<ServicePool {self.name} {self.balancer.policy} {self.health!r}"
            f" in_flight={in_flight} panics={self.panics}>"
        )


def least_loaded(loads: Sequence[int], turn: int) -> int:
    """The index of the smallest of ``loads`` (a non-empty list); among equals, the first at
    or after ``turn`` (mod the length), so a caller that advances ``turn`` each pick rotates
    through ties instead of piling onto index 0. The ELB spreads its hand-offs over the
    workers of one proxy so (`httpio.handoff`): their counts lag by a report interval, and
    with every count equal (idle, or all reports pending) the rotation is what spreads."""
    n = len(loads)
    best = turn % n
    for step in range(1, n):
        i = (turn + step) % n
        if loads[i] < loads[best]:
            best = i
    return best
