"""Proxy-side token checks: find the token, decide locally, remember verdicts. No I/O.

Every request to a protected service passes here, so the common case must cost no network
call: a token seen before is answered from the `VerdictCache`. A token seen for the first time
is checked locally first (structure, HS256 signature with the shared key ring, expiry), so
garbage and forgeries are refused without bothering the auth server; only a well-signed,
unseen token needs one introspection call, which tells us whether it was revoked, whether
its user still exists, and the user's role *now*.

The role that ``roles:`` checks and ``X-User-Role`` use is always the verdict's, never the
token's claim: a role granted or taken away after sign-in applies to tokens already issued.
So a token is not refused on its claimed role before introspection either (the grant may be
newer than the token); the refusal comes from the verdict, then from the cache.

Revocation reaches every proxy within a few seconds because each polls the auth servers'
revocation feed every second (`proxy.auth_client`) and calls `VerdictCache.revoke`; the same
poll names users whose role changed or who were deleted, and `VerdictCache.forget_users`
drops their verdicts so the next request asks again. An introspection that was in flight
while such a change arrived is answered but not cached (``user_epoch``). A cache that has not
heard from the feed for ``max_revocation_lag_s`` stops answering, so a proxy cut off from the
auth servers falls back to introspection (which then fails with 503): it never keeps
honouring a token it may no longer know to be revoked (fail closed).

How a request carries a token (three forms) and what a refused one is answered with are the
published token format's (`authsvc.tokens.extract_token`, `refusal_for`: the auth server's
signout reads tokens the same way). Error mapping follows RFC 6750 3.1: no token -> 401 with
a bare challenge; unreadable -> 400 invalid_request; refused -> 401 invalid_token; wrong role
-> 403 insufficient_scope.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from authsvc.claims import Claims
from authsvc.token_errors import TokenError, TokenRevoked
from authsvc.tokens import (
    KeyRing,
    extract_token,
    refusal_for,
    verify_token,
)
from httpio.errors import Forbidden, Unauthorized

Headers = list[tuple[bytes, bytes]]


# -- policy and verdicts ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """What one service asks of its callers. ``allowed_roles`` empty means any signed-in user;
    paths under ``public_prefixes`` (e.g. ``/signin`` on the auth service) need no token."""

    public: bool = False
    allowed_roles: frozenset[str] = frozenset()
    public_prefixes: tuple[str, ...] = ()

    def is_public(self, path: str) -> bool:
        return self.public or path.startswith(self.public_prefixes)  # () matches nothing


class Allowed:
    """Serve the request; ``claims`` is None on a public path (no identity to pass on). A
    value (equal when its claims are), written out rather than a frozen dataclass: under
    mypyc its constructor is native, a dataclass's stays interpreted (~0.2 us a request)."""

    __slots__ = ("claims",)

    def __init__(self, claims: Claims | None) -> None:
        self.claims = claims

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Allowed) and other.claims == self.claims

    def __hash__(self) -> int:
        return hash(self.claims)

    def __repr__(self) -> str:
        return f"Allowed({self.claims!r})"


PUBLIC = Allowed(None)  # every request on a public path: nothing per request


@dataclass(frozen=True, slots=True)
class NeedsIntrospection:
    """Signature and expiry check out locally; ask the auth server about revocation, the user
    and its role. ``user_epoch`` is the cache's at the decision (see `VerdictCache.store`)."""

    token: str
    claims: Claims
    user_epoch: int = 0


Verdict = Allowed | NeedsIntrospection


def check_role(claims: Claims, policy: AuthPolicy) -> None:
    if policy.allowed_roles and claims.role not in policy.allowed_roles:
        challenge = b'Bearer realm="gateway", error="insufficient_scope"'
        raise Forbidden(
            f"role {claims.role!r} may not use this service",
            headers=((b"www-authenticate", challenge),),
        )


# -- the cache --------------------------------------------------------------------------------
class VerdictCache:
    """Verified claims by token, kept until min(exp, stored + max_age_s), LRU-bounded.

    Also remembers revoked jtis until their tokens expire, so a revocation that arrives while an
    introspection is in flight still wins (``store`` refuses a revoked jti). Verdicts are also
    indexed by user (``sub``) so that a change to a user drops all of theirs at once;
    ``user_epoch`` counts those changes.
    """

    def __init__(
        self,
        *,
        max_entries: int = 100_000,
        max_age_s: float = 300.0,
        max_revocation_lag_s: float = 5.0,
    ) -> None:
        self.max_entries = max_entries
        self.max_age_s = max_age_s
        self.max_revocation_lag_s = max_revocation_lag_s
        self._entries: OrderedDict[str, tuple[Claims, float]] = OrderedDict()
        self._by_jti: dict[str, str] = {}
        self._by_sub: dict[str, set[str]] = {}
        self._revoked: dict[str, int] = {}
        self.user_epoch = 0
        self._synced_at: float | None = None
        self._hits = self._misses = self._stale_misses = 0
        self._expired = self._evicted = self._revoked_evictions = self._user_evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def mark_synced(self, now: float) -> None:
        """The revocation feed was read successfully at ``now``."""
        self._synced_at = now

    def is_fresh(self, now: float) -> bool:
        return self._synced_at is not None and now - self._synced_at <= self.max_revocation_lag_s

    def lookup(self, token: str, now: float) -> Claims | None:
        if not self.is_fresh(now):
            self._stale_misses += 1
            return None
        entry = self._entries.get(token)
        if entry is None:
            self._misses += 1
            return None
        claims, until = entry
        if now >= until:
            self._drop(token, claims)
            self._expired += 1
            self._misses += 1
            return None
        self._entries.move_to_end(token)
        self._hits += 1
        return claims

    def store(
        self, token: str, claims: Claims, now: float, *, user_epoch: int | None = None
    ) -> bool:
        """Remember ``claims`` for ``token``; False (and nothing stored) if it is revoked, or
        if a user changed since ``user_epoch`` (the verdict may predate the change)."""
        if claims.jti in self._revoked:
            return False
        if user_epoch is not None and user_epoch != self.user_epoch:
            return False
        old = self._entries.get(token)
        if old is not None:
            self._drop(token, old[0])
        self._entries[token] = (claims, min(float(claims.exp), now + self.max_age_s))
        self._by_jti[claims.jti] = token
        self._by_sub.setdefault(claims.sub, set()).add(token)
        while len(self._entries) > self.max_entries:
            old_token, (old_claims, _) = next(iter(self._entries.items()))
            self._drop(old_token, old_claims)
            self._evicted += 1
        return True

    def forget_users(self, usernames: Iterable[str]) -> int:
        """Users whose role changed or who were deleted: drop their verdicts so the next
        request is introspected; returns how many were dropped."""
        dropped = 0
        for sub in usernames:
            self.user_epoch += 1
            for token in self._by_sub.pop(sub, ()):
                entry = self._entries.pop(token, None)
                if entry is not None:
                    dropped += 1
                    if self._by_jti.get(entry[0].jti) == token:
                        del self._by_jti[entry[0].jti]
        self._user_evictions += dropped
        return dropped

    def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked

    def revoke(self, revocations: Iterable[tuple[str, int]], now: float) -> int:
        """Apply (jti, exp) pairs from the feed; returns how many cached verdicts were dropped.
        Revocations of tokens already expired are not kept (they verify as expired anyway)."""
        dropped = 0
        for jti, exp in revocations:
            if exp > now:
                self._revoked[jti] = exp
            token = self._by_jti.get(jti)
            entry = self._entries.get(token) if token is not None else None
            if token is not None and entry is not None:
                self._drop(token, entry[0])
                dropped += 1
        self._revoked_evictions += dropped
        if len(self._revoked) > self.max_entries:
            self.prune(now)
        return dropped

    def prune(self, now: float) -> None:
        """Forget revocations and verdicts of tokens that have expired."""
        self._revoked = {jti: exp for jti, exp in self._revoked.items() if exp > now}
        for token, (claims, until) in list(self._entries.items()):
            if now >= until:
                self._drop(token, claims)
                self._expired += 1

    def _drop(self, token: str, claims: Claims) -> None:
        self._entries.pop(token, None)
        if self._by_jti.get(claims.jti) == token:
            del self._by_jti[claims.jti]
        tokens = self._by_sub.get(claims.sub)
        if tokens is not None:
            tokens.discard(token)
            if not tokens:
                del self._by_sub[claims.sub]

    def statistics(self) -> dict[str, object]:
        return {
            "entries": len(self._entries),
            "revoked_jtis": len(self._revoked),
            "hits": self._hits,
            "misses": self._misses,
            "stale_misses": self._stale_misses,
            "expired": self._expired,
            "evicted": self._evicted,
            "revoked_evictions": self._revoked_evictions,
            "user_evictions": self._user_evictions,
            "user_epoch": self.user_epoch,
            "synced_at": self._synced_at,
        }

    def __repr__(self) -> str:
        return (
            f"<VerdictCache entries={len(self._entries)}/{self.max_entries}"
            f" revoked={len(self._revoked)} hits={self._hits} misses={self._misses}"
            f" synced_at={self._synced_at}>"
        )


# -- the decision -----------------------------------------------------------------------------
class Authorizer:
    """Decides a request from its headers, a policy and the time; never does I/O."""

    def __init__(self, ring: KeyRing, cache: VerdictCache, *, leeway_s: int = 0) -> None:
        self.ring = ring
        self.cache = cache
        self.leeway_s = leeway_s
        self._local_refusals = 0

    def decide(self, headers: Headers, path: str, policy: AuthPolicy, now: float) -> Verdict:
        """`Allowed`, `NeedsIntrospection`, or raise the `ClientError` to answer with."""
        if policy.is_public(path):
            return PUBLIC
        token = extract_token(headers)
        if token is None:
            # RFC 6750 3.1: a request with no credentials gets a challenge but no error code.
            raise Unauthorized("a bearer token is required", error="")
        claims = self.cache.lookup(token, now)
        if claims is not None:
            check_role(claims, policy)
            return Allowed(claims)
        try:
            claims = verify_token(self.ring, token, now=now, leeway_s=self.leeway_s)
            if self.cache.is_revoked(claims.jti):
                raise TokenRevoked("token was revoked")
        except TokenError as exc:
            self._local_refusals += 1
            raise refusal_for(exc) from None
        return NeedsIntrospection(token, claims, self.cache.user_epoch)

    def accept_introspection(
        self, pending: NeedsIntrospection, verdict: Claims, policy: AuthPolicy, now: float
    ) -> Claims:
        """The auth server said the token is active, as ``verdict`` (its user and current
        role): remember it and check the role against it. The token's other claims
        (``extra``, read from the token verified here) go with the verdict."""
        if pending.claims.extra and not verdict.extra:
            verdict = msgspec.structs.replace(verdict, extra=pending.claims.extra)
        self.cache.store(pending.token, verdict, now, user_epoch=pending.user_epoch)
        if self.cache.is_revoked(verdict.jti):
            raise refusal_for(TokenRevoked("token was revoked"))
        check_role(verdict, policy)
        return verdict

    def statistics(self) -> dict[str, object]:
        return {"local_refusals": self._local_refusals, "cache": self.cache.statistics()}

    def __repr__(self) -> str:
        return f"<Authorizer {self.ring!r} {self.cache!r} local_refusals={self._local_refusals}>"
