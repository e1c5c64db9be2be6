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
- Its size starts at `lease_size`: at most a 100th of the burst per proxy the limit names
  (``fleet_proxies``), and at most 64. A key whose whole lease was spent within a quarter of
  ``ttl_s`` asks for twice as many next time, up to `lease_cap` (the same 100th of the burst,
  and at most 1,024); one whose lease expired with tokens left asks for half (never below the
  start). So a hot key (one client, or ``key: service``) costs a round trip every ~0.1 s
  instead of one per 64 requests, and a quiet one holds little. Either way four proxies hold
  at most 4 % of a burst between them, which is the whole of what leasing can move the
  fleet's count by in any window. A limit whose burst is too small for a lease of 2 keeps one
  decision per request (exact).
- A hot key's lease is *topped up* before it runs out: the request that leaves a quarter of
  it (`Leases.top_up_due`, at least `TOP_UP_MIN` tokens asked) also asks for what brings the
  lease back to its size (grown as above), with no refund, while the other requests keep
  spending what is left (`Leases.topped_up` adds the grant and moves the expiry on). So in
  steady traffic no request waits for a round trip, where before every request in flight
  when a lease ran out waited for the next one. A key never holds more than its lease's size
  at once, so the bound below is unchanged. One top-up per lease: one that failed or was
  refused is not retried until the key's lease is renewed the usual way.
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

from httpio.gcra_decision import Decision

LEASE_MAX = 64  # the first lease of a key
LEASE_CAP = 1024  # a key's lease after it grew
LEASE_SHARE = 100  # a lease is at most burst / (LEASE_SHARE * fleet_proxies)
LEASE_TTL_S = 0.5
GROW_WITHIN = 4  # a lease spent within ttl_s / GROW_WITHIN doubles the next one
TOP_UP_AT = 4  # a lease down to 1 / TOP_UP_AT of its size is topped up
TOP_UP_MIN = 8  # a lease smaller than this is not topped up (it is renewed when spent)


def lease_size(burst: int, fleet_proxies: int) -> int:
    """Tokens one proxy takes per round trip at first; 1 means no leasing (a decision per
    request)."""
    return min(LEASE_MAX, lease_cap(burst, fleet_proxies))


def lease_cap(burst: int, fleet_proxies: int) -> int:
    """The most a key's lease grows to (1: no leasing)."""
    size = min(LEASE_CAP, burst // (LEASE_SHARE * max(1, fleet_proxies)))
    return size if size >= 2 else 1


@dataclass(slots=True)
class Lease:
    """Of one key: ``tokens`` left to spend until ``expires``; refused until
    ``refused_until``; the fleet's ``remaining`` and its bucket full again at ``full_at``
    (both as of the last answer, for the RateLimit fields); ``size`` asked for at
    ``granted_at`` (0: none asked yet); ``topping``: a top-up was asked for this lease."""

    tokens: int
    expires: float
    refused_until: float
    remaining: int
    full_at: float
    size: int = 0
    granted_at: float = 0.0
    topping: bool = False


class Leases:
    """The leases of one fleet-wide limit in this process (see the module header)."""

    __slots__ = ("_leases", "max_keys", "refunded", "refusals", "spent", "top_ups", "ttl_s")

    def __init__(self, *, ttl_s: float = LEASE_TTL_S, max_keys: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_keys = max_keys
        self._leases: dict[str, Lease] = {}
        self.spent = 0  # decisions made here from a lease, without a round trip
        self.refusals = 0  # refusals made here from a remembered refusal
        self.refunded = 0  # tokens sent back
        self.top_ups = 0  # leases topped up before they ran out

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
            "top_ups": self.top_ups,
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
        reset = lease.full_at - now
        if now < lease.refused_until:
            self.refusals += 1
            return Decision(False, 0, lease.refused_until - now, reset if reset > 0.0 else 0.0)
        if lease.tokens > 0 and now < lease.expires:
            lease.tokens -= 1
            self.spent += 1
            # a conditional, not max(): this is every leased decision
            return Decision(
                True, lease.remaining + lease.tokens, 0.0, reset if reset > 0.0 else 0.0
            )
        return None

    def want(self, key: str, now: float, start: int, cap: int) -> int:
        """How many tokens to ask for, about to ask (nothing to spend here): ``start`` for a
        new key, twice the last lease when it was all spent within ``ttl_s /
        GROW_WITHIN``, half of it when it expired with tokens left (call before
        `unspent`, which takes them out)."""
        lease = self._leases.get(key)
        if lease is None or lease.size == 0:
            return start
        if lease.tokens == 0:
            if now - lease.granted_at < self.ttl_s / GROW_WITHIN:
                lease.size = min(cap, lease.size * 2)
        elif now >= lease.expires:
            lease.size = max(start, lease.size // 2)
        return lease.size

    def top_up_due(self, key: str, now: float, cap: int) -> int:
        """How many tokens to ask for now to top ``key``'s lease up before it runs out (0:
        none due). Called after a spend; the first call that finds a quarter or less left
        marks the lease, so one request per lease asks."""
        lease = self._leases.get(key)
        if lease is None or lease.topping or lease.tokens * TOP_UP_AT > lease.size:
            return 0
        if lease.size < TOP_UP_MIN or now >= lease.expires:
            return 0
        size = lease.size
        if now - lease.granted_at < self.ttl_s / GROW_WITHIN:
            size = min(cap, size * 2)
        lease.topping = True
        lease.size = size
        return size - lease.tokens

    def topped_up(self, key: str, now: float, tokens: int, remaining: int, reset_s: float) -> None:
        """The fleet granted ``tokens`` of a top-up: they join what the lease still holds (up
        to its size), which now expires ``ttl_s`` from now. A key whose lease went meanwhile
        (a reload, a sweep) holds them as a new lease."""
        lease = self._leases.get(key)
        if lease is None:
            self.granted(key, now, tokens, remaining, reset_s, tokens)
            return
        # A lease renewed the usual way while this was in flight holds its own grant: past
        # its size the rest is dropped (fewer admitted, never more held than the bound).
        lease.tokens = min(lease.size, lease.tokens + tokens)
        lease.expires = now + self.ttl_s
        lease.remaining, lease.full_at = remaining, now + reset_s
        lease.granted_at = now
        lease.topping = False
        self.top_ups += 1

    def unspent(self, key: str, now: float) -> int:
        """The tokens of ``key``'s expired lease, taken out to be sent back (0 if none)."""
        lease = self._leases.get(key)
        if lease is None or lease.tokens == 0 or now < lease.expires:
            return 0
        tokens, lease.tokens = lease.tokens, 0
        self.refunded += tokens
        return tokens

    def granted(
        self, key: str, now: float, tokens: int, remaining: int, reset_s: float, size: int = 0
    ) -> None:
        """The fleet granted ``tokens`` of the ``size`` asked for (the caller spent one
        of them already)."""
        lease = self._leases.get(key)
        if lease is None:
            if len(self._leases) >= self.max_keys:
                self._sweep(now)
            self._leases[key] = Lease(
                tokens, now + self.ttl_s, 0.0, remaining, now + reset_s, size, now
            )
            return
        lease.tokens, lease.expires, lease.refused_until = tokens, now + self.ttl_s, 0.0
        lease.remaining, lease.full_at = remaining, now + reset_s
        lease.size, lease.granted_at = size, now
        lease.topping = False

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
        lease.topping = False

    def _sweep(self, now: float) -> None:
        leases = self._leases
        for k in [k for k, v in leases.items() if v.expires <= now and v.refused_until <= now]:
            del leases[k]
        if len(leases) >= self.max_keys:
            for k in list(leases)[: len(leases) // 2]:
                del leases[k]
