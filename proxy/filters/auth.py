"""The token check of a service's chain, and the client proof on the auth service's.

Decisions are sans-IO: `proxy.auth.Authorizer.decide` answers from the request's headers, the
service's `AuthPolicy` and the time, and only a well-signed token never seen before needs the
auth server (`proxy.auth_client.AuthClient.settle`); so `TokenCheck.on_request` returns
nothing to await on the common path, and an awaitable only for that introspection. What the
filter decides goes upstream as ``X-User``/``X-User-Role`` (`identity_headers`), always the
verdict's role, never the token's claim; the forward filter drops any a client sent.

The policy of each service is made when the chain is built (`policy_for`), so a reload that
changes ``public``, ``public_paths`` or ``roles`` builds new chains with new policies.

Requests to the auth service itself need no token (signup, signin): instead `VouchClient`
adds ``X-Gateway-Client``, the client address this proxy saw with the fleet key's MAC, which
the auth server's sign-in throttles key on. For a request another region's proxy forwarded (its
hop mark verified), the client is the last ``X-Forwarded-For`` entry, the one that proxy
appended; otherwise it is our peer (`client_address`).
"""

from __future__ import annotations

from authsvc.claims import Claims
from authsvc.tokens import CLIENT_HEADER
from httpio.protocol import Headers
from proxy.auth import Allowed, Authorizer, AuthPolicy, NeedsIntrospection
from proxy.auth_client import AuthClient
from proxy.filters.chain import Exchange, RequestAnswer
from topology.schema import ServiceSpec


def policy_for(spec: ServiceSpec) -> AuthPolicy:
    return AuthPolicy(
        public=spec.public,
        allowed_roles=frozenset(spec.roles or ()),
        public_prefixes=tuple(spec.public_paths),
    )


def identity_headers(claims: Claims) -> Headers:
    """What the backend is told about the caller: the verified user and its current role."""
    return [(b"x-user", claims.sub.encode()), (b"x-user-role", claims.role.encode())]


def client_address(ex: Exchange) -> str:
    """The client a request to the auth service is on behalf of (see the module header)."""
    request = ex.request
    if ex.from_hop:
        forwarded = b",".join(v for n, v in request.headers if n == b"x-forwarded-for")
        last = forwarded.rsplit(b",", 1)[-1].strip()
        if last:
            return last.decode("ascii", "replace")
    return request.client[0]


class TokenCheck:
    """``auth``: a valid token, and a role the service allows, before anything is served."""

    name = "auth"

    def __init__(self, client: AuthClient, policy: AuthPolicy) -> None:
        self._client = client
        self.policy = policy

    def __repr__(self) -> str:
        return f"<TokenCheck {self.policy}>"

    def on_request(self, ex: Exchange) -> RequestAnswer:
        verdict = self._client.decide(ex.request, self.policy)
        if type(verdict) is Allowed:
            if verdict.claims is not None:
                ex.claims = verdict.claims
                ex.identity = identity_headers(verdict.claims)
            return None
        assert isinstance(verdict, NeedsIntrospection)
        return self._settle(ex, verdict)

    async def _settle(self, ex: Exchange, pending: NeedsIntrospection) -> None:
        ex.claims = claims = await self._client.settle(pending, self.policy)
        ex.identity = identity_headers(claims)


class VouchClient:
    """``vouch_client``: the auth service is told which client a request is on behalf of."""

    name = "vouch_client"

    def __init__(self, authorizer: Authorizer) -> None:
        self._authorizer = authorizer  # its ring follows reloads

    def __repr__(self) -> str:
        return f"<VouchClient {self._authorizer.ring!r}>"

    def on_request(self, ex: Exchange) -> RequestAnswer:
        proof = self._authorizer.ring.client_proof(client_address(ex))
        ex.identity = [(CLIENT_HEADER, proof)]
        return None
