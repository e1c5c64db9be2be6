"""Proxy-side token checks: find the token, decide locally, remember verdicts. No I/O.

Every request to a protected service passes here, so the common case must cost no network
call: a token seen before is answered from the `VerdictCache`. A token seen for the first time
is checked locally first (structure, HS256 signature with the shared key ring, expiry, role),
so garbage and forgeries are refused without bothering the auth server; only a well-signed,
unseen token needs one introspection call, which tells us whether it was revoked.

Revocation reaches every proxy within a few seconds because each polls the auth servers'
revocation feed every second (`proxy.auth_client`) and calls `VerdictCache.revoke`. A cache
that has not heard from the feed for ``max_revocation_lag_s`` stops answering, so a proxy
cut off from the auth servers falls back to introspection (which then fails with 503): it
never keeps honouring a token it may no longer know to be revoked (fail closed).

Token forms accepted, newest first: ``Authorization: Bearer <t>`` (RFC 6750 2.1),
``AuthToken: <t>``, and ``AuthToken: {"token": ...}``, the whole JSON sign-in response the
original's clients echoed back. Error mapping follows RFC 6750 3.1: no token -> 401 with a bare
challenge; unreadable -> 400 invalid_request; refused -> 401 invalid_token; wrong role -> 403
insufficient_scope.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

import msgspec

from authsvc.tokens import (
    Claims,
    InvalidToken,
    KeyRing,
    MalformedToken,
    TokenError,
    verify_token,
)
from httpio.errors import ClientError, Forbidden, Unauthorized

Headers = list[tuple[bytes, bytes]]

IDENTITY_HEADERS = (b"x-user", b"x-user-role")
_STRIPPED = frozenset(IDENTITY_HEADERS)


# -- policy and verdicts ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """What one service asks of its callers. ``allowed_roles`` empty means any signed-in user;
    paths under ``public_prefixes`` (e.g. ``/signin`` on the auth service) need no token."""

    public: bool = False
    allowed_roles: frozenset[str] = frozenset()
    public_prefixes: tuple[str, ...] = ()

    def is_public(self, path: str) -> bool:
        return self.public or any(path.startswith(prefix) for prefix in self.public_prefixes)


@dataclass(frozen=True, slots=True)
class Allowed:
    """Serve the request; ``claims`` is None on a public path (no identity to pass on)."""

    claims: Claims | None


@dataclass(frozen=True, slots=True)
class NeedsIntrospection:
    """Signature, expiry and role check out locally; ask the auth server about revocation."""

    token: str
    claims: Claims


Verdict = Allowed | NeedsIntrospection


class TokenRevoked(InvalidToken):
    reason = "revoked"


# -- extraction -------------------------------------------------------------------------------
class _SigninBody(msgspec.Struct):
    token: str


_decode_signin = msgspec.json.Decoder(_SigninBody).decode


def extract_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The bearer token a request carries, or None if it carries none.

    Raises `ClientError` (400 invalid_request) for a header we cannot read, or for two
    different tokens at once (RFC 6750 2: clients MUST NOT use more than one method).
    """
    found: set[str] = set()
    for name, value in headers:
        if name == b"authorization":
            scheme, _, rest = value.strip().partition(b" ")
            if scheme.lower() != b"bearer":
                continue  # Basic and friends are not ours: as if absent
            found.add(_ascii_token(rest.strip()))
        elif name == b"authtoken":
            value = value.strip()
            if value.startswith(b"{"):
                try:
                    found.add(_ascii_token(_decode_signin(value).token.encode("utf-8")))
                except msgspec.DecodeError:
                    raise _invalid_request("AuthToken JSON has no string token field") from None
            else:
                found.add(_ascii_token(value))
    if len(found) > 1:
        raise _invalid_request("more than one token in the request")
    return found.pop() if found else None


def _ascii_token(raw: bytes) -> str:
    if not raw or not raw.isascii() or b" " in raw:
        raise _invalid_request("token is empty or not a single ASCII word")
    return raw.decode("ascii")


def _invalid_request(detail: str) -> ClientError:
    challenge = b'Bearer realm="gateway", error="invalid_request"'
    return ClientError(detail, headers=((b"www-authenticate", challenge),))


def refusal_for(exc: TokenError) -> ClientError:
    """The response error for a token check that failed."""
    if isinstance(exc, MalformedToken):
        return _invalid_request(f"malformed token: {exc}")
    return Unauthorized(f"token refused: {exc.reason}", error="invalid_token")


def check_role(claims: Claims, policy: AuthPolicy) -> None:
    if policy.allowed_roles and claims.role not in policy.allowed_roles:
        challenge = b'Bearer realm="gateway", error="insufficient_scope"'
        raise Forbidden(
            f"role {claims.role!r} may not use this service",
            headers=((b"www-authenticate", challenge),),
        )


def rewrite_identity_headers(headers: Headers, claims: Claims | None) -> Headers:
    """Headers for the backend: whatever identity the client claimed is dropped, and the
    verified one (if any) is added. Backends trust ``X-User`` only because we do this."""
    out = [(name, value) for name, value in headers if name not in _STRIPPED]
    if claims is not None:
        out.append((b"x-user", claims.sub.encode("utf-8")))
        out.append((b"x-user-role", claims.role.encode("utf-8")))
    return out


# -- the cache --------------------------------------------------------------------------------
class VerdictCache:
    """Verified claims by token, kept until min(exp, stored + max_age_s), LRU-bounded.

    Also remembers revoked jtis until their tokens expire, so a revocation that arrives while an
    introspection is in flight still wins (``store`` refuses a revoked jti).
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
        self._revoked: dict[str, int] = {}
        self._synced_at: float | None = None
        self._hits = self._misses = self._stale_misses = 0
        self._expired = self._evicted = self._revoked_evictions = 0

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
            self._drop(token, claims.jti)
            self._expired += 1
            self._misses += 1
            return None
        self._entries.move_to_end(token)
        self._hits += 1
        return claims

    def store(self, token: str, claims: Claims, now: float) -> bool:
        """Remember ``claims`` for ``token``; False (and nothing stored) if it is revoked."""
        if claims.jti in self._revoked:
            return False
        self._entries[token] = (claims, min(float(claims.exp), now + self.max_age_s))
        self._entries.move_to_end(token)
        self._by_jti[claims.jti] = token
        while len(self._entries) > self.max_entries:
            old_token, (old_claims, _) = self._entries.popitem(last=False)
            self._drop(old_token, old_claims.jti)
            self._evicted += 1
        return True

    def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked

    def revoke(self, revocations: Iterable[tuple[str, int]], now: float) -> int:
        """Apply (jti, exp) pairs from the feed; returns how many cached verdicts were dropped.
        Revocations of tokens already expired are not kept (they verify as expired anyway)."""
        dropped = 0
        for jti, exp in revocations:
            if exp > now:
                self._revoked[jti] = exp
            token = self._by_jti.pop(jti, None)
            if token is not None and self._entries.pop(token, None) is not None:
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
                self._drop(token, claims.jti)
                self._expired += 1

    def _drop(self, token: str, jti: str) -> None:
        self._entries.pop(token, None)
        if self._by_jti.get(jti) == token:
            del self._by_jti[jti]

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
            return Allowed(None)
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
        check_role(claims, policy)
        return NeedsIntrospection(token, claims)

    def accept_introspection(
        self, token: str, claims: Claims, policy: AuthPolicy, now: float
    ) -> Claims:
        """The auth server said the token is active: remember it and re-check the role."""
        self.cache.store(token, claims, now)
        if self.cache.is_revoked(claims.jti):
            raise refusal_for(TokenRevoked("token was revoked"))
        check_role(claims, policy)
        return claims

    def statistics(self) -> dict[str, object]:
        return {"local_refusals": self._local_refusals, "cache": self.cache.statistics()}

    def __repr__(self) -> str:
        return f"<Authorizer {self.ring!r} {self.cache!r} local_refusals={self._local_refusals}>"
