"""The auth server's HTTP handler: signup, signin, signout, introspection, revocation feed.

Several of these processes share one `authsvc.store.Store` (a SQLite file on one host, or a
PostgreSQL database for a fleet on several: `authsvc.engines`); they share nothing else, so
any of them can answer any request and a proxy may ask whichever one is up.

Two kinds of blocking work leave the event loop for worker threads, each behind its own
``trio.CapacityLimiter``:

- password hashing (argon2id, ~25 ms and 19 MiB each with the defaults; `authsvc.passwords`):
  at most ``hash_concurrency`` at once,
  one per core by default, because more only adds memory and queueing inside the kernel.
  Waiting callers are served round robin by client address (`authsvc.fairness`), so one
  client's burst does not queue in front of everyone else. Past ``max_waiting_hashes``
  queued callers we answer 503 at once rather than let a burst of sign-ins pile up seconds
  of latency (and memory) behind the limiter.
- the store (SQLite or psycopg, both blocking): as many threads as the store has
  connections, so no thread ever waits on the pool.

Sign-in takes the same time for "no such user" and "wrong password": both run one scrypt
(against a dummy hash when the user does not exist) and get the same 401 body, so neither
timing nor wording tells an attacker which usernames exist.

Sign-ins and signups are throttled per client address and username (`authsvc.throttle`).
The client address is the TCP peer's, unless a proxy vouches for another one in
``X-Gateway-Client`` with the fleet key's MAC (`authsvc.tokens.KeyRing.client_proof`):
behind the proxies every peer is a proxy, and ``X-Forwarded-For`` is whatever the client
chose plus what each hop appended, so it is no identity here.

A signup's ``role`` is read and ignored (the original's clients send one): every new user
is a ``user``, and only an operator grants roles (``authsvc grant``). Introspection answers
with the user's role *now* and refuses the token of a user who no longer exists; together
with the ``user_changes`` half of the feed, a grant or deletion reaches every proxy within
its poll interval rather than at the token's expiry.

``/introspect``, ``/revocations`` and ``/stats`` are for the fleet's proxies (their
``X-Gateway-Internal`` proof); ``/stats`` also answers an operator's direct request from this
host. Anyone else gets the 404 of an unknown path, as the proxies' ``/admin/`` does.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

import msgspec
import trio

from authsvc import passwords
from authsvc.fairness import FairQueue
from authsvc.metrics import count_signin
from authsvc.names import BadUsername, canonical_username, fold_username
from authsvc.store import (
    CounterUpdate,
    Revocation,
    Store,
    StoreBusy,
    UsernameTaken,
    UserRecord,
)
from authsvc.throttle import (
    ConcurrencyGate,
    Counter,
    address_key,
    after_failure,
    after_signup,
    locked_for,
    retry_after,
    signup_key,
    signup_wait,
    user_key,
)
from authsvc.token_errors import TokenError, TokenExpired
from authsvc.tokens import (
    CLIENT_HEADER,
    INTERNAL_HEADER,
    extract_token,
    issue_token,
    key_ring_of,
    refusal_for,
    verify_token,
)
from httpio.errors import (
    ClientError,
    DependencyUnavailable,
    GatewayError,
    MethodNotAllowed,
    Overloaded,
    RequestBodyTooLarge,
    RouteNotFound,
    Unauthorized,
)
from httpio.messages import Request, Response, json_response
from httpio.metrics import metrics_response
from topology.load import ConfigError, load_config
from topology.schema import GatewayConfig

# A signup body is a few hundred bytes; refusing more up front keeps a flood cheap.
MAX_BODY_BYTES = 16384
TOKEN_ISSUER = "authsvc"


# -- config -----------------------------------------------------------------------------------
def load_auth_config(path: str | Path) -> GatewayConfig:
    """config.json as every process reads it (`topology.load`), and a key ring that can sign:
    `ConfigError` (file, field path, what is wrong) otherwise."""
    config = load_config(path)
    try:
        key_ring_of(config)
    except ValueError as exc:
        raise ConfigError(path, "$.Auth_keys", str(exc)) from None
    return config


_INTERNAL_PATHS = frozenset({"/introspect", "/revocations", "/stats"})
_LOOPBACK = frozenset({"127.0.0.1", "::1"})
# Headers that only a forwarding hop adds: a request without any came straight from a client.
_FORWARDED_MARKS = (b"via", b"x-forwarded-for", CLIENT_HEADER)


# -- request and response bodies --------------------------------------------------------------
Password = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]
ROLE_PATTERN = r"^[A-Za-z0-9_.-]{1,32}$"
DEFAULT_ROLE = "user"


class SignupRequest(msgspec.Struct, frozen=True):
    username: str
    password: Password
    role: object = None  # the original's clients send one; ignored (see the module header)


class SigninRequest(msgspec.Struct, frozen=True):
    username: str
    password: str


class IntrospectRequest(msgspec.Struct, frozen=True):
    token: str


class UsernameConflict(ClientError):
    status = 409
    code = "username_taken"


class TooManyRequests(ClientError):
    """The client's address or the username is throttled (RFC 6585 4)."""

    status = 429
    code = "too_many_requests"

    def __init__(self, detail: str, wait_s: float) -> None:
        super().__init__(detail, headers=((b"retry-after", b"%d" % retry_after(wait_s)),))


class _SignupLimited(Exception):
    """Raised inside the signup transaction when a concurrent signup used the last slot."""

    def __init__(self, wait_s: float) -> None:
        self.wait_s = wait_s


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
        config: GatewayConfig,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        hash_concurrency: int | None = None,
        max_waiting_hashes: int = 64,
        db_concurrency: int = 4,
    ) -> None:
        self.config = config
        self.ring = key_ring_of(config)
        self.warnings = self.ring.weaknesses()
        self.store = store
        self.clock = clock
        hash_slots = hash_concurrency or os.cpu_count() or 1
        self._hash_queue: FairQueue[trio.Event] = FairQueue(hash_slots)
        self._hash_threads = trio.CapacityLimiter(hash_slots)
        self._db_limiter = trio.CapacityLimiter(db_concurrency)
        self._max_waiting_hashes = max_waiting_hashes
        self._dummy_hash = passwords.make_dummy_hash(passwords.configured_params(self.config))
        self._gate = ConcurrencyGate(config.auth_limits.concurrent_per_address)
        self.counters = {
            "signups": 0,
            "signins": 0,
            "signin_failures": 0,
            "throttled": 0,
            "signouts": 0,
            "introspections": 0,
            "hash_overloads": 0,
            "internal_refusals": 0,
        }
        self._routes: dict[tuple[str, str], Callable[[Request], Awaitable[Response]]] = {
            ("POST", "/signup"): self.signup,
            ("POST", "/signin"): self.signin,
            ("POST", "/signout"): self.signout,
            ("POST", "/introspect"): self.introspect,
            ("GET", "/revocations"): self.revocations,
            ("GET", "/health"): self.health,
            ("GET", "/stats"): self.stats,
            ("GET", "/metrics"): self.metrics,
        }

    def __repr__(self) -> str:
        return (
            f"<AuthApp {self.ring!r} {self.store!r} {self._hash_queue!r} {self._gate!r}"
            f" counters={self.counters}>"
        )

    def statistics(self) -> dict[str, object]:
        return {
            **self.counters,
            "hashes_running": self._hash_threads.borrowed_tokens,
            "hashes_waiting": self._hash_queue.waiting,
            "password_checks_by_address": self._gate.statistics(),
            "store": self.store.statistics(),
        }

    async def handle(self, request: Request) -> Response:
        if request.path in _INTERNAL_PATHS and not self._may_use_internal(request):
            # Token validity, the revocation list and the counters are for the fleet's
            # proxies: a client reaching them through a proxy must not get an oracle.
            self.counters["internal_refusals"] += 1
            raise RouteNotFound(f"no such endpoint {request.path}")
        route = self._routes.get((request.method, request.path))
        if route is None:
            allowed = [m for m, p in self._routes if p == request.path]
            if allowed:
                raise MethodNotAllowed(
                    f"{request.method} not allowed on {request.path}",
                    allow=", ".join(allowed).encode(),
                )
            raise RouteNotFound(f"no such endpoint {request.path}")
        return await route(request)

    def _may_use_internal(self, request: Request) -> bool:
        if self.ring.is_internal(request.header(INTERNAL_HEADER)):
            return True
        # An operator's curl on this host: no hop on the way added its marks.
        return (
            request.path == "/stats"
            and request.client[0] in _LOOPBACK
            and not request.via_elb
            and all(request.header(name) is None for name in _FORWARDED_MARKS)
        )

    def client_address(self, request: Request) -> str:
        """The address a proxy vouches for (the last valid ``X-Gateway-Client``: a proxy
        appends its own after the client's headers), else the TCP peer's."""
        vouched = None
        for name, value in request.headers:
            if name == CLIENT_HEADER:
                vouched = self.ring.vouched_client(value) or vouched
        return vouched or request.client[0]

    # -- blocking work, off the loop ---------------------------------------------------------
    async def _hash(self, address: str, fn: Callable[..., Any], *args: Any) -> Any:
        queue = self._hash_queue
        if queue.waiting >= self._max_waiting_hashes:
            self.counters["hash_overloads"] += 1
            raise Overloaded("too many password checks queued", headers=((b"retry-after", b"1"),))
        turn = trio.Event()
        if not queue.acquire(address, turn):
            try:
                await turn.wait()
            except BaseException:
                if not queue.cancel(address, turn):
                    self._pass_hash_slot()  # granted as we were cancelled: hand it on
                raise
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._hash_threads)
        finally:
            self._pass_hash_slot()

    def _pass_hash_slot(self) -> None:
        waiter = self._hash_queue.release()
        if waiter is not None:
            waiter.set()

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return await trio.to_thread.run_sync(fn, *args, limiter=self._db_limiter)
        except StoreBusy as exc:
            raise DependencyUnavailable(f"user store busy: {exc}") from None

    async def _with_password_work(
        self, request: Request, work: Callable[[Request, str], Awaitable[Response]]
    ) -> Response:
        address = self.client_address(request)
        if not self._gate.try_enter(address):
            self.counters["throttled"] += 1
            raise TooManyRequests("too many sign-ins in progress from your address", 1.0)
        try:
            return await work(request, address)
        finally:
            self._gate.leave(address)

    def _throttled(self, detail: str, wait_s: float) -> TooManyRequests:
        self.counters["throttled"] += 1
        return TooManyRequests(detail, wait_s)

    # -- endpoints ---------------------------------------------------------------------------
    async def signup(self, request: Request) -> Response:
        return await self._with_password_work(request, self._signup)

    async def _signup(self, request: Request, address: str) -> Response:
        body: SignupRequest = await _read_json(request, SignupRequest)
        try:
            username = canonical_username(body.username)
        except BadUsername as exc:
            raise ClientError(str(exc)) from None
        limits = self.config.auth_limits
        key = signup_key(address)
        now = self.clock()
        counter = (await self._db(self.store.read_counters, (key,))).get(key)
        if (wait := signup_wait(counter, limits, now)) > 0:
            raise self._throttled("too many signups from your address", wait)
        stored = await self._hash(
            address,
            passwords.hash_password,
            body.password,
            passwords.configured_params(self.config),
        )

        def count_signup(counter: Counter | None) -> Counter:
            # Checked again inside the write: concurrent signups cannot overshoot the limit.
            if (wait := signup_wait(counter, limits, now)) > 0:
                raise _SignupLimited(wait)
            return after_signup(counter, limits, now)

        update = CounterUpdate(key, count_signup, limits.signup_window_s)
        try:
            await self._db(
                partial(self.store.create_user, counters=(update,)),
                body.username,
                stored,
                DEFAULT_ROLE,
            )
        except UsernameTaken:
            raise UsernameConflict(f"username {username!r} is taken") from None
        except _SignupLimited as exc:
            raise self._throttled("too many signups from your address", exc.wait_s) from None
        self.counters["signups"] += 1
        return json_response(201, {"username": username, "role": DEFAULT_ROLE})

    async def signin(self, request: Request) -> Response:
        try:
            response = await self._with_password_work(request, self._signin)
        except GatewayError as err:
            count_signin(err.code)
            raise
        count_signin("ok" if response.status == 200 else str(response.status))
        return response

    async def metrics(self, request: Request) -> Response:
        return metrics_response(request)

    async def _signin(self, request: Request, address: str) -> Response:
        body: SigninRequest = await _read_json(request, SigninRequest)
        name = fold_username(body.username)
        pair, anywhere = address_key(name, address), user_key(name)
        now = self.clock()

        def look_up() -> tuple[dict[str, Counter], UserRecord | None]:
            counters = self.store.read_counters((pair, anywhere))
            return counters, (self.store.get_user(name) if name else None)

        counters, user = await self._db(look_up)
        limits = self.config.auth_limits
        wait = max(
            locked_for(counters.get(pair), limits.per_address, now),
            locked_for(counters.get(anywhere), limits.per_user, now),
        )
        if wait > 0:
            raise self._throttled("too many failed sign-ins: try again later", wait)
        stored = user.password_hash if user is not None else self._dummy_hash
        ok = await self._hash(address, passwords.verify_password, body.password, stored)
        if user is None or not ok:
            await self._count_failure(pair, anywhere, now)
            raise Unauthorized(_WRONG_CREDENTIALS, error="")
        if pair in counters:
            await self._db(self.store.delete_counters, (pair,))
        if passwords.needs_rehash(stored, passwords.configured_params(self.config)):
            upgraded = await self._hash(
                address,
                passwords.hash_password,
                body.password,
                passwords.configured_params(self.config),
            )
            await self._db(self.store.update_password_hash, user.username, upgraded)
        return self._signed_in(user)

    async def _count_failure(self, pair: str, anywhere: str, now: float) -> None:
        """One more failed sign-in, for the (username, address) pair and for the username."""
        self.counters["signin_failures"] += 1
        limits = self.config.auth_limits
        updates = tuple(
            CounterUpdate(key, partial(after_failure, rule=rule, now=now), rule.forget_after_s)
            for key, rule in ((pair, limits.per_address), (anywhere, limits.per_user))
        )
        await self._db(self.store.update_counters, updates)

    def _signed_in(self, user: UserRecord) -> Response:
        """The token of a sign-in that succeeded, never stored by a cache (RFC 6749 5.1)."""
        ttl = self.config.token_ttl_s
        token, _ = issue_token(
            self.ring,
            sub=user.username,
            role=user.role,
            now=self.clock(),
            ttl_s=ttl,
            issuer=TOKEN_ISSUER,
        )
        self.counters["signins"] += 1
        answer = {
            "token": token,
            "token_type": "Bearer",
            "expires_in": ttl,
            "username": user.username,
            "role": user.role,
        }
        return json_response(200, answer, headers=[(b"cache-control", b"no-store")])

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
        """RFC 7662 in spirit: 200 with ``active`` either way; a bad token is not a bad call.
        An active answer carries the user's current role, not the one the token was signed
        with, and a user who was deleted makes every token of theirs inactive."""
        body: IntrospectRequest = await _read_json(request, IntrospectRequest)
        self.counters["introspections"] += 1
        try:
            claims = verify_token(self.ring, body.token, now=self.clock())
        except TokenError as exc:
            return json_response(200, {"active": False, "reason": exc.reason})

        def look_up() -> tuple[bool, UserRecord | None]:
            return self.store.is_revoked(claims.jti), self.store.get_user(claims.sub)

        revoked, user = await self._db(look_up)
        if revoked:
            return json_response(200, {"active": False, "reason": "revoked"})
        if user is None:
            return json_response(200, {"active": False, "reason": "unknown_user"})
        return json_response(
            200,
            {
                "active": True,
                "sub": user.username,
                "role": user.role,
                "iat": claims.iat,
                "exp": claims.exp,
                "jti": claims.jti,
            },
        )

    async def revocations(self, request: Request) -> Response:
        """Two feeds in one answer: revoked token ids after ``since``, and users whose role
        changed or who were deleted after ``users_since`` (each with its own cursor)."""
        query = parse_qs(request.query)
        since = _cursor(query, "since")
        users_since = _cursor(query, "users_since")

        def read() -> tuple[tuple[int, list[Revocation]], tuple[int, list[str]]]:
            return self.store.revocations_since(since), self.store.user_changes_since(users_since)

        (cursor, revoked), (users_cursor, changed) = await self._db(read)
        return json_response(
            200,
            {
                "cursor": cursor,
                "revoked": [{"jti": r.jti, "exp": r.exp} for r in revoked],
                "users_cursor": users_cursor,
                "changed_users": changed,
            },
        )

    async def health(self, request: Request) -> Response:
        if self.warnings:
            return json_response(200, {"status": "ok", "warnings": self.warnings})
        return json_response(200, {"status": "ok"})

    async def stats(self, request: Request) -> Response:
        return json_response(200, self.statistics())


def _cursor(query: dict[str, list[str]], name: str) -> int:
    try:
        value = int(query.get(name, ["0"])[0])
        if value < 0:
            raise ValueError
    except ValueError:
        raise ClientError(f"{name} must be a non-negative integer cursor") from None
    return value
