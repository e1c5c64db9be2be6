from __future__ import annotations

import msgspec
import pytest

from authsvc.claims import Claims
from authsvc.tokens import KeyRing, issue_token
from httpio.errors import ClientError, Forbidden, Unauthorized
from proxy.auth import (
    Allowed,
    Authorizer,
    AuthPolicy,
    NeedsIntrospection,
    VerdictCache,
)
from proxy.filters.auth import identity_headers
from topology.schema import AuthKey

NOW = 1_700_000_000.0
RING = KeyRing.from_config("proxy-auth-test-key-" * 2)
ANY_USER = AuthPolicy()
ADMINS = AuthPolicy(allowed_roles=frozenset({"admin"}))


def token_for(role: str = "user", ttl_s: int = 3600, ring: KeyRing = RING) -> tuple[str, Claims]:
    return issue_token(ring, sub="alice", role=role, now=NOW, ttl_s=ttl_s)


def challenge(err: Exception) -> bytes:
    assert isinstance(err, ClientError)
    return dict(err.headers)[b"www-authenticate"]


# -- the cache --------------------------------------------------------------------------------
def test_cache_needs_a_fresh_revocation_feed() -> None:
    cache = VerdictCache(max_revocation_lag_s=5)
    token, claims = token_for()
    cache.store(token, claims, NOW)
    assert cache.lookup(token, NOW) is None  # never synced: no fast path
    cache.mark_synced(NOW)
    assert cache.lookup(token, NOW + 5) == claims
    assert cache.lookup(token, NOW + 5.1) is None  # feed silent too long
    assert cache.statistics()["stale_misses"] == 2


def test_cache_expires_at_token_exp_or_max_age() -> None:
    cache = VerdictCache(max_age_s=60, max_revocation_lag_s=1e9)
    cache.mark_synced(NOW)
    short, short_claims = token_for(ttl_s=10)
    long, long_claims = token_for(ttl_s=3600)
    cache.store(short, short_claims, NOW)
    cache.store(long, long_claims, NOW)
    assert cache.lookup(short, NOW + 9) == short_claims
    assert cache.lookup(short, NOW + 10) is None
    assert cache.lookup(long, NOW + 59) == long_claims
    assert cache.lookup(long, NOW + 60) is None
    assert len(cache) == 0 and cache.statistics()["expired"] == 2


def test_cache_is_bounded_lru() -> None:
    cache = VerdictCache(max_entries=2, max_revocation_lag_s=1e9)
    cache.mark_synced(NOW)
    (a, ca), (b, cb), (c, cc) = token_for(), token_for(), token_for()
    cache.store(a, ca, NOW)
    cache.store(b, cb, NOW)
    assert cache.lookup(a, NOW) == ca  # a is now most recent
    cache.store(c, cc, NOW)
    assert cache.lookup(b, NOW) is None
    assert cache.lookup(a, NOW) == ca and cache.lookup(c, NOW) == cc
    assert cache.statistics()["evicted"] == 1
    assert "entries=2/2" in repr(cache)


def test_revocation_evicts_by_jti_and_blocks_late_store() -> None:
    cache = VerdictCache(max_revocation_lag_s=1e9)
    cache.mark_synced(NOW)
    token, claims = token_for()
    other, other_claims = token_for()
    cache.store(token, claims, NOW)
    cache.store(other, other_claims, NOW)
    assert cache.revoke([(claims.jti, claims.exp), ("unknown", claims.exp)], NOW) == 1
    assert cache.lookup(token, NOW) is None
    assert cache.lookup(other, NOW) == other_claims
    # An introspection that started before the revocation cannot re-admit the token.
    assert cache.store(token, claims, NOW) is False
    assert cache.is_revoked(claims.jti)
    cache.prune(claims.exp + 1)
    assert not cache.is_revoked(claims.jti)


def test_revocations_of_expired_tokens_are_not_kept() -> None:
    cache = VerdictCache()
    cache.revoke([("old", int(NOW) - 1)], NOW)
    assert not cache.is_revoked("old")


# -- the decision -----------------------------------------------------------------------------
def authorizer() -> Authorizer:
    cache = VerdictCache(max_revocation_lag_s=5)
    cache.mark_synced(NOW)
    return Authorizer(RING, cache)


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", b"Bearer " + token.encode())]


def test_public_needs_no_token() -> None:
    auth = authorizer()
    assert auth.decide([], "/x", AuthPolicy(public=True), NOW) == Allowed(None)
    policy = AuthPolicy(public_prefixes=("/signin", "/signup"))
    assert auth.decide([], "/signin", policy, NOW) == Allowed(None)
    with pytest.raises(Unauthorized):
        auth.decide([], "/signout", policy, NOW)


def test_missing_token_is_bare_401() -> None:
    with pytest.raises(Unauthorized) as info:
        authorizer().decide([], "/x", ANY_USER, NOW)
    assert challenge(info.value) == b'Bearer realm="gateway"'


def admit(auth: Authorizer, token: str, verdict: Claims, policy: AuthPolicy = ANY_USER) -> Claims:
    """What `AuthClient.settle` does once the auth server answered ``verdict``."""
    pending = NeedsIntrospection(token, verdict, auth.cache.user_epoch)
    return auth.accept_introspection(pending, verdict, policy, NOW)


def test_first_sight_needs_introspection_then_cached() -> None:
    auth = authorizer()
    token, claims = token_for()
    verdict = auth.decide(bearer(token), "/x", ANY_USER, NOW)
    assert isinstance(verdict, NeedsIntrospection)
    assert verdict == NeedsIntrospection(token, claims, 0)
    assert auth.accept_introspection(verdict, claims, ANY_USER, NOW) == claims
    assert auth.decide(bearer(token), "/x", ANY_USER, NOW + 1) == Allowed(claims)
    # The same token in the original's AuthToken JSON form hits the same cache entry.
    signin = b'{"token":"' + token.encode() + b'","username":"alice"}'
    assert auth.decide([(b"authtoken", signin)], "/x", ANY_USER, NOW + 1) == Allowed(claims)


def test_garbage_is_400_and_forgeries_are_401_locally() -> None:
    auth = authorizer()
    with pytest.raises(ClientError) as info:
        auth.decide(bearer("garbage"), "/x", ANY_USER, NOW)
    assert info.value.status == 400
    forged, _ = token_for(ring=KeyRing([AuthKey(RING.signing_kid, "not-the-key")]))
    with pytest.raises(Unauthorized) as info:
        auth.decide(bearer(forged), "/x", ANY_USER, NOW)
    assert b'error="invalid_token"' in challenge(info.value)
    retired, _ = token_for(ring=KeyRing([AuthKey("k-retired", "old")]))
    with pytest.raises(Unauthorized):
        auth.decide(bearer(retired), "/x", ANY_USER, NOW)
    assert auth.statistics()["local_refusals"] == 3


def test_expired_is_401() -> None:
    auth = authorizer()
    token, _ = token_for(ttl_s=10)
    with pytest.raises(Unauthorized) as info:
        auth.decide(bearer(token), "/x", ANY_USER, NOW + 10)
    assert "expired" in info.value.detail


def test_role_not_allowed_is_403_from_the_verdict_then_the_cache() -> None:
    auth = authorizer()
    token, claims = token_for("user")
    # The claimed role is not trusted either way: the verdict decides.
    pending = auth.decide(bearer(token), "/x", ADMINS, NOW)
    assert isinstance(pending, NeedsIntrospection)
    with pytest.raises(Forbidden) as info:
        auth.accept_introspection(pending, claims, ADMINS, NOW)
    assert b'error="insufficient_scope"' in challenge(info.value)
    with pytest.raises(Forbidden):
        auth.decide(bearer(token), "/x", ADMINS, NOW)
    admin_token, admin_claims = token_for("admin")
    admit(auth, admin_token, admin_claims, ADMINS)
    assert auth.decide(bearer(admin_token), "/x", ADMINS, NOW) == Allowed(admin_claims)


def test_the_verdicts_role_wins_over_the_tokens_claim() -> None:
    """A token signed as ``admin`` for a user who is now ``user`` (or the reverse) is
    judged, and passed on in X-User-Role, by the role the auth server answers."""
    auth = authorizer()
    token, claims = token_for("admin")
    demoted = msgspec.structs.replace(claims, role="user")
    with pytest.raises(Forbidden):
        admit(auth, token, demoted, ADMINS)
    assert auth.decide(bearer(token), "/x", ANY_USER, NOW) == Allowed(demoted)
    token, claims = token_for("user")
    promoted = msgspec.structs.replace(claims, role="admin")
    assert admit(auth, token, promoted, ADMINS) == promoted
    assert identity_headers(promoted)[-1] == (b"x-user-role", b"admin")


def test_a_changed_user_loses_every_cached_verdict() -> None:
    auth = authorizer()
    (t1, c1), (t2, c2) = token_for(), token_for()
    other, other_claims = issue_token(RING, sub="bob", role="user", now=NOW, ttl_s=60)
    for token, claims in ((t1, c1), (t2, c2), (other, other_claims)):
        admit(auth, token, claims)
    assert auth.cache.forget_users(["alice", "nobody"]) == 2
    assert isinstance(auth.decide(bearer(t1), "/x", ANY_USER, NOW), NeedsIntrospection)
    assert isinstance(auth.decide(bearer(t2), "/x", ANY_USER, NOW), NeedsIntrospection)
    assert auth.decide(bearer(other), "/x", ANY_USER, NOW) == Allowed(other_claims)
    assert auth.cache.statistics()["user_evictions"] == 2


def test_verdict_from_before_a_user_change_is_used_once_but_not_cached() -> None:
    auth = authorizer()
    token, claims = token_for("admin")
    pending = auth.decide(bearer(token), "/x", ANY_USER, NOW)
    assert isinstance(pending, NeedsIntrospection)
    auth.cache.forget_users(["alice"])  # the feed arrives while the introspection is out
    assert auth.accept_introspection(pending, claims, ANY_USER, NOW) == claims
    assert isinstance(auth.decide(bearer(token), "/x", ANY_USER, NOW), NeedsIntrospection)


def test_cache_indexes_stay_consistent_through_evictions() -> None:
    cache = VerdictCache(max_entries=2, max_revocation_lag_s=1e9)
    cache.mark_synced(NOW)
    tokens = [token_for() for _ in range(3)]
    for token, claims in tokens:
        cache.store(token, claims, NOW)
    cache.store(tokens[2][0], tokens[2][1], NOW)  # stored twice: still one entry
    assert len(cache) == 2
    assert cache.forget_users(["alice"]) == 2 and len(cache) == 0
    assert cache.revoke([(c.jti, c.exp) for _, c in tokens], NOW) == 0


def test_revoked_token_refused_without_introspection() -> None:
    auth = authorizer()
    token, claims = token_for()
    admit(auth, token, claims)
    auth.cache.revoke([(claims.jti, claims.exp)], NOW)
    with pytest.raises(Unauthorized) as info:
        auth.decide(bearer(token), "/x", ANY_USER, NOW)
    assert "revoked" in info.value.detail
    with pytest.raises(Unauthorized):
        admit(auth, token, claims)


def test_the_tokens_other_claims_survive_introspection() -> None:
    """The auth server's verdict carries only our claims; the token's others (``tenant``,
    read from the token verified here) stay with it, for ``claim:<name>`` rate-limit keys."""
    auth = authorizer()
    token, claims = issue_token(
        RING, sub="alice", role="user", now=NOW, ttl_s=60, extra=[("tenant", "acme")]
    )
    pending = auth.decide(bearer(token), "/x", ANY_USER, NOW)
    assert isinstance(pending, NeedsIntrospection) and pending.claims.extra == claims.extra
    verdict = Claims(sub="alice", role="user", iat=claims.iat, exp=claims.exp, jti=claims.jti)
    assert auth.accept_introspection(pending, verdict, ANY_USER, NOW).extra == claims.extra
    cached = auth.decide(bearer(token), "/x", ANY_USER, NOW + 1)
    assert isinstance(cached, Allowed) and cached.claims is not None
    assert cached.claims.extra == (("tenant", "acme"),)
