"""Leases of a fleet-wide limit's tokens: what one proxy took from Redis and spends alone.

A fleet-wide GCRA (`httpio.rate_store`) asked once per request costs a Redis round trip per
request: on a quiet machine that halved the proxy's throughput (``make bench-edge``, 0.57).
So a proxy takes a small share of a key's tokens in one decision (a *lease*: the script moves
the key's TAT on by that many intervals, atomically, as it would for that many requests) and
spends them here without I/O. Tokens are only ever spent after Redis granted them, so a lease
never lets more through than the fleet's own schedule allowed; what it can do is spend them
a little later (at most ``ttl_s``) or leave some unspent:

- A lease lives ``ttl_s`` (0.5 s). The next request for that key after it expired sends its
  unspent tokens back (the script moves the TAT back, never before now) and takes a new one,
  in the same round trip. A key that gets no more requests here keeps its unspent tokens out
  of the fleet's count: fewer admitted, never more.
- Its size (`lease_size`) is at most a 100th of the burst per proxy the limit names
  (``fleet_proxies``), and at most 64: four proxies hold at most 4 % of a burst between them,
  which is the whole of what leasing can move the fleet's count by in any window. A limit
  whose burst is too small for a lease of 2 keeps one decision per request (exact).
- A refusal says, in the fleet's clock, when the next request could pass: until then this
  proxy refuses that key without asking (a flood of refused requests costs Redis nothing).
  It is capped at ``ttl_s`` too, as another proxy's returned tokens may free the key sooner.

This module decides; `httpio.rate_store.FleetBuckets` does the I/O, one leader per key at a
time (concurrent requests for one key wait for its answer and share the lease). Memory is
bounded as `httpio.gcra.LocalBuckets` bounds its own: past ``max_keys``, expired entries go,
then the oldest half (their unspent tokens are lost to the fleet's count: fewer admitted).
"""

from __future__ import annotations

from dataclasses import dataclass

from httpio.gcra import Decision

LEASE_MAX = 64
LEASE_SHARE = 100  # a lease is at most burst / (LEASE_SHARE * fleet_proxies)
LEASE_TTL_S = 0.5


def lease_size(burst: int, fleet_proxies: int) -> int:
    """Tokens one proxy takes per round trip; 1 means no leasing (a decision per request)."""
    size = min(LEASE_MAX, burst // (LEASE_SHARE * max(1, fleet_proxies)))
    return size if size >= 2 else 1


@dataclass(slots=True)
class Lease:
    """Of one key: ``tokens`` left to spend until ``expires``; refused until
    ``refused_until``; the fleet's ``remaining`` and its bucket full again at ``full_at``
    (both as of the last answer, for the RateLimit fields)."""

    tokens: int
    expires: float
    refused_until: float
    remaining: int
    full_at: float


class Leases:
    """The leases of one fleet-wide limit in this process (see the module header)."""

    __slots__ = ("_leases", "max_keys", "refunded", "refusals", "spent", "ttl_s")

    def __init__(self, *, ttl_s: float = LEASE_TTL_S, max_keys: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._leases: dict[str, Lease] = {}
        self.spent = 0  # decisions made here from a lease, without a round trip
        self.refusals = 0  # refusals made here from a remembered refusal
        self.refunded = 0  # tokens sent back

    def __len__(self) -> int:
        return len(self._leases)

    def __repr__(self) -> str:
        return f"<Leases keys={len(self._leases)} spent={self.spent} refusals={self.refusals}>"

    def statistics(self) -> dict[str, object]:
        return {
            "keys": len(self._leases),
            "spent_locally": self.spent,
            "refused_locally": self.refusals,
            "refunded": self.refunded,
        }

    def clear(self) -> None:
        """The limit changed (a reload): remembered refusals and leases no longer hold. The
        unspent tokens stay out of the fleet's count until their keys expire in Redis."""
        self._leases.clear()

    def spend(self, key: str, now: float) -> Decision | None:
        """A decision from what this proxy holds, or None: ask the fleet."""
        lease = self._leases.get(key)
        if lease is None:
            return None
        if now < lease.refused_until:
            self.refusals += 1
            return Decision(False, 0, lease.refused_until - now, max(0.0, lease.full_at - now))
        if lease.tokens > 0 and now < lease.expires:
            lease.tokens -= 1
            self.spent += 1
            return Decision(
                True, lease.remaining + lease.tokens, 0.0, max(0.0, lease.full_at - now)
            )
        return None

    def unspent(self, key: str, now: float) -> int:
        """The tokens of ``key``'s expired lease, taken out to be sent back (0 if none)."""
        lease = self._leases.get(key)
        if lease is None or lease.tokens == 0 or now < lease.expires:
            return 0
        tokens, lease.tokens = lease.tokens, 0
        self.refunded += tokens
        return tokens

    def granted(self, key: str, now: float, tokens: int, remaining: int, reset_s: float) -> None:
        """The fleet granted ``tokens`` (the caller spends the first with `spend`)."""
        lease = self._leases.get(key)
        if lease is None:
            if len(self._leases) >= self.max_keys:
                self._sweep(now)
            self._leases[key] = Lease(tokens, now + self.ttl_s, 0.0, remaining, now + reset_s)
            return
        lease.tokens, lease.expires, lease.refused_until = tokens, now + self.ttl_s, 0.0
        lease.remaining, lease.full_at = remaining, now + reset_s

    def refused(self, key: str, now: float, retry_after_s: float, reset_s: float) -> None:
        until = now + min(retry_after_s, self.ttl_s)
        lease = self._leases.get(key)
        if lease is None:
            if len(self._leases) >= self.max_keys:
                self._sweep(now)
            self._leases[key] = Lease(0, 0.0, until, 0, now + reset_s)
            return
        lease.tokens, lease.refused_until, lease.remaining = 0, until, 0
        lease.full_at = now + reset_s

    def _sweep(self, now: float) -> None:
        leases = self._leases
        for k in [k for k, v in leases.items() if v.expires <= now and v.refused_until <= now]:
            del leases[k]
        if len(leases) >= self.max_keys:
            for k in list(leases)[: len(leases) // 2]:
                del leases[k]
