"""The auth server's HTTP handler: signup, signin, signout, introspection, revocation feed.

Several of these processes share one SQLite file (`authsvc.store`); they share nothing else,
so any of them can answer any request and a proxy may ask whichever one is up.

Two kinds of blocking work leave the event loop for worker threads, each behind its own
``trio.CapacityLimiter``:

- scrypt (~24 ms and 16 MiB each with the defaults): at most ``hash_concurrency`` at once,
  one per core by default, because more only adds memory and queueing inside the kernel.
  Past ``max_waiting_hashes`` queued callers we answer 503 at once rather than let a burst of
  sign-ins pile up seconds of latency (and memory) behind the limiter.
- SQLite: as many threads as the store has connections, so no thread ever waits on the pool.

Sign-in takes the same time for "no such user" and "wrong password": both run one scrypt
(against a dummy hash when the user does not exist) and get the same 401 body, so neither
timing nor wording tells an attacker which usernames exist.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import msgspec
import trio

from authsvc import passwords
from authsvc.passwords import ScryptParams
from authsvc.store import StoreBusy, UsernameTaken, UserStore
from authsvc.tokens import (
    INTERNAL_HEADER,
    AuthKey,
    KeyRing,
    TokenError,
    TokenExpired,
    issue_token,
    verify_token,
)
from httpio.errors import (
    ClientError,
    DependencyUnavailable,
    Forbidden,
    Overloaded,
    RequestBodyTooLarge,
    RouteNotFound,
    Unauthorized,
)
from httpio.messages import Request, Response, json_response
from proxy.auth import extract_token, refusal_for

# A signup body is a few hundred bytes; refusing more up front keeps a flood cheap.
MAX_BODY_BYTES = 16384
TOKEN_ISSUER = "authsvc"


# -- config -----------------------------------------------------------------------------------
class AuthSettings(msgspec.Struct, frozen=True):
    """The fields of config.json the auth server reads. Not ``forbid_unknown_fields``: the
    file is shared with the proxies and holds their options too."""

    Auth_key: str = ""
    Auth_keys: tuple[AuthKey, ...] = ()
    Token_ttl_s: Annotated[int, msgspec.Meta(ge=1, le=86400 * 30)] = 3600
    Scrypt: ScryptParams = ScryptParams()

    def key_ring(self) -> KeyRing:
        return KeyRing.from_config(self.Auth_key, self.Auth_keys)


_INTERNAL_PATHS = frozenset({"/introspect", "/revocations"})


class ConfigError(Exception):
    """The config file is unreadable or wrong: the operator is to blame."""


def load_auth_settings(path: str | Path) -> AuthSettings:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    try:
        settings = msgspec.json.decode(raw, type=AuthSettings)
        settings.key_ring()
    except (msgspec.DecodeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return settings


# -- request and response bodies --------------------------------------------------------------
Username = Annotated[str, msgspec.Meta(pattern=r"^[^\x00-\x20\x7f]{1,64}$")]
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
Role = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]


class SignupRequest(msgspec.Struct, frozen=True):
    username: Username
    password: Password
    role: Role = "user"


class SigninRequest(msgspec.Struct, frozen=True):
    username: str
    password: str


class IntrospectRequest(msgspec.Struct, frozen=True):
    token: str


class UsernameConflict(ClientError):
    status = 409
    code = "username_taken"


class MethodNotAllowed(ClientError):
    status = 405
    code = "method_not_allowed"


_WRONG_CREDENTIALS = "wrong username or password"


async def _read_json(request: Request, kind: type[Any]) -> Any:
    parts: list[bytes] = []
    size = 0
    while chunk := await request.body.read():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise RequestBodyTooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes")
        parts.append(chunk)
    try:
        return msgspec.json.decode(b"".join(parts), type=kind)
    except msgspec.DecodeError as exc:
        raise ClientError(f"bad request body: {exc}") from None


# -- the app ----------------------------------------------------------------------------------
class AuthApp:
    def __init__(
        self,
        settings: AuthSettings,
        store: UserStore,
        *,
        clock: Callable[[], float] = time.time,
        hash_concurrency: int | None = None,
        max_waiting_hashes: int = 64,
        db_concurrency: int = 4,
    ) -> None:
        self.settings = settings
        self.ring = settings.key_ring()
        self.store = store
        self.clock = clock
        self._hash_limiter = trio.CapacityLimiter(hash_concurrency or os.cpu_count() or 1)
        self._db_limiter = trio.CapacityLimiter(db_concurrency)
        self._max_waiting_hashes = max_waiting_hashes
        self._dummy_hash = passwords.make_dummy_hash(settings.Scrypt)
        self.counters = {
            "signups": 0,
            "signins": 0,
            "signin_failures": 0,
            "signouts": 0,
            "introspections": 0,
            "hash_overloads": 0,
        }
        self._routes: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {
            ("POST", "/signup"): self.signup,
            ("POST", "/signin"): self.signin,
            ("POST", "/signout"): self.signout,
            ("POST", "/introspect"): self.introspect,
            ("GET", "/revocations"): self.revocations,
            ("GET", "/health"): self.health,
            ("GET", "/stats"): self.stats,
        }

    def __repr__(self) -> str:
        return f"<AuthApp {self.ring!r} {self.store!r} counters={self.counters}>"

    def statistics(self) -> dict[str, object]:
        return {
            **self.counters,
            "hashes_running": self._hash_limiter.borrowed_tokens,
            "hashes_waiting": self._hash_limiter.statistics().tasks_waiting,
            "store": self.store.statistics(),
        }

    async def handle(self, request: Request) -> Response:
        if request.path in _INTERNAL_PATHS and not self.ring.is_internal(
            request.header(INTERNAL_HEADER)
        ):
            # Token validity and the revocation list are for the fleet's proxies only: a
            # client reaching /auth/introspect through a proxy must not get an oracle.
            raise Forbidden(f"{request.path} is for the gateway's proxies only")
        route = self._routes.get((request.method, request.path))
        if route is None:
            allowed = [m for m, p in self._routes if p == request.path]
            if allowed:
                raise MethodNotAllowed(
                    f"{request.method} not allowed on {request.path}",
                    headers=((b"allow", ", ".join(allowed).encode()),),
                )
            raise RouteNotFound(f"no such endpoint {request.path}")
        return await route(request)

    # -- blocking work, off the loop ---------------------------------------------------------
    async def _hash(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._hash_limiter.statistics().tasks_waiting >= self._max_waiting_hashes:
            self.counters["hash_overloads"] += 1
            raise Overloaded("too many password checks queued", headers=((b"retry-after", b"1"),))
        return await trio.to_thread.run_sync(fn, *args, limiter=self._hash_limiter)

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._db_limiter)
        except StoreBusy as exc:
            raise DependencyUnavailable(f"user store busy: {exc}") from None

    # -- endpoints ---------------------------------------------------------------------------
    async def signup(self, request: Request) -> Response:
        body: SignupRequest = await _read_json(request, SignupRequest)
        stored = await self._hash(passwords.hash_password, body.password, self.settings.Scrypt)
        try:
            await self._db(self.store.create_user, body.username, stored, body.role)
        except UsernameTaken:
            raise UsernameConflict(f"username {body.username!r} is taken") from None
        self.counters["signups"] += 1
        return json_response(201, {"username": body.username, "role": body.role})

    async def signin(self, request: Request) -> Response:
        body: SigninRequest = await _read_json(request, SigninRequest)
        user = await self._db(self.store.get_user, body.username)
        stored = user.password_hash if user is not None else self._dummy_hash
        ok = await self._hash(passwords.verify_password, body.password, stored)
        if user is None or not ok:
            self.counters["signin_failures"] += 1
            raise Unauthorized(_WRONG_CREDENTIALS, error="")
        if passwords.needs_rehash(stored, self.settings.Scrypt):
            upgraded = await self._hash(
                passwords.hash_password, body.password, self.settings.Scrypt
            )
            await self._db(self.store.update_password_hash, user.username, upgraded)
        ttl = self.settings.Token_ttl_s
        token, _ = issue_token(
            self.ring,
            sub=user.username,
            role=user.role,
            now=self.clock(),
            ttl_s=ttl,
            issuer=TOKEN_ISSUER,
        )
        self.counters["signins"] += 1
        return json_response(
            200,
            {
                "token": token,
                "token_type": "Bearer",
                "expires_in": ttl,
                "username": user.username,
                "role": user.role,
            },
            headers=[(b"cache-control", b"no-store")],  # RFC 6749 5.1
        )

    async def signout(self, request: Request) -> Response:
        token = extract_token(request.headers)
        if token is None:
            raise Unauthorized("a bearer token is required", error="")
        try:
            claims = verify_token(self.ring, token, now=self.clock())
        except TokenExpired:
            return json_response(200, {"revoked": False, "reason": "expired"})
        except TokenError as exc:
            raise refusal_for(exc) from None
        await self._db(self.store.revoke, claims.jti, claims.exp)
        self.counters["signouts"] += 1
        return json_response(200, {"revoked": True, "jti": claims.jti})

    async def introspect(self, request: Request) -> Response:
        """RFC 7662 in spirit: 200 with ``active`` either way; a bad token is not a bad call."""
        body: IntrospectRequest = await _read_json(request, IntrospectRequest)
        self.counters["introspections"] += 1
        try:
            claims = verify_token(self.ring, body.token, now=self.clock())
        except TokenError as exc:
            return json_response(200, {"active": False, "reason": exc.reason})
        if await self._db(self.store.is_revoked, claims.jti):
            return json_response(200, {"active": False, "reason": "revoked"})
        return json_response(
            200,
            {
                "active": True,
                "sub": claims.sub,
                "role": claims.role,
                "iat": claims.iat,
                "exp": claims.exp,
                "jti": claims.jti,
            },
        )

    async def revocations(self, request: Request) -> Response:
        since_values = parse_qs(request.query).get("since", ["0"])
        try:
            since = int(since_values[0])
            if since < 0:
                raise ValueError
        except ValueError:
            raise ClientError("since must be a non-negative integer cursor") from None
        cursor, revoked = await self._db(self.store.revocations_since, since)
        return json_response(
            200,
            {"cursor": cursor, "revoked": [{"jti": r.jti, "exp": r.exp} for r in revoked]},
        )

    async def health(self, request: Request) -> Response:
        return json_response(200, {"status": "ok"})

    async def stats(self, request: Request) -> Response:
        return json_response(200, self.statistics())
