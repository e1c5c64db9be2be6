"""WebSocket handshakes through a chain: read the token forms first, relay after the 101.

Two filters, because the token check sits between them:

    service:          websocket_handshake -> auth -> cache -> response_headers -> websocket -> forward
    another region:   websocket_handshake -> response_headers -> websocket_to_region -> forward_to_region

``websocket_handshake`` (first) marks the exchange as an upgrade when the service has
``websocket: {enabled: true}`` (another region's service decides there: the forward to a
region always relays), refuses a malformed handshake with 400 (RFC 6455 4.2.1, 4.4), and moves
a subprotocol or query token into ``Authorization`` (`proxy.websocket`); on the way back it
names ``bearer`` in the 101 when that was offered. Everything else a request meets (route
resolution, the token check, rate limits, balancing) the handshake meets too; the cache lets
an upgrade through untouched. A service without ``websocket`` serves the GET as plain HTTP,
as before: ``Upgrade`` is hop-by-hop and never reaches it.

``websocket`` / ``websocket_to_region`` (just before the terminal) open the upstream leg
(`httpio.upgrade`: one fresh connection, the handshake headers of `httpio.websocket`), and
answer a 101 whose body is a `WebSocketSession`; the server loop (`httpio.switch`) then hands
it the client's connection and `httpio.ws_relay.Relay` joins the two. A non-101 answer goes
back as an ordinary response. While a session lasts, its token is decided again every
``check_interval_s`` (1 s) from the verdict cache (the revocation feed updates it every second): a
revoked or expired token closes the socket with 1008. A cross-region relay leaves message
size and idle limits to the serving region (it pings its own legs).

A session has one access-log line, written by the server loop when it ends (`httpio.server`):
``upstream``, ``retries`` and ``upstream_ms`` are its handshake's, set here; its bytes are what
the relay read off each leg (`WebSocketSession.transferred`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from functools import partial

import structlog
import trio

from httpio.balance import Endpoint, ServicePool
from httpio.errors import ClientError, GatewayError, NoHealthyInstance, UpstreamError
from httpio.health import Outcome
from httpio.messages import Request, Response
from httpio.protocol import Headers, strip_hop_by_hop
from httpio.upgrade import UpgradeAnswer, open_upgrade
from httpio.upstream import UpstreamPool
from httpio.websocket import (
    POLICY_VIOLATION,
    UPGRADE_HEADERS,
    handshake_problem,
    is_upgrade,
    switched_headers,
)
from httpio.websocket import upstream_handshake_headers as handshake_headers
from httpio.ws_relay import Relay, RelayLimits
from proxy import retry
from proxy.auth import AuthPolicy, NeedsIntrospection
from proxy.auth_client import AuthClient
from proxy.filters.chain import Exchange, RequestAnswer
from proxy.filters.forward import upstream_headers
from proxy.filters.remote import hop_mark
from proxy.hop import HOP_HEADER
from proxy.websocket import Handshake, adopt_handshake_token, answer_headers, without_query_token
from proxy.ws_sessions import OpenSocket, OpenSockets
from topology.schema import WebSocketSettings

log = structlog.get_logger()

# A relay to another region's ELB: the serving region enforces the service's limits.
REGION_LIMITS = RelayLimits(idle_timeout_s=0, max_message_bytes=1 << 62, ping_interval_s=30.0)
REGION_DRAIN_S = 5.0
_UPGRADE_NAMES = frozenset(n for n, _ in UPGRADE_HEADERS)
_TOKEN_HEADERS = frozenset({b"authorization", b"authtoken"})


def relay_limits(settings: WebSocketSettings) -> RelayLimits:
    return RelayLimits(
        idle_timeout_s=settings.idle_timeout_s,
        max_message_bytes=settings.max_message_bytes,
        max_lifetime_s=settings.max_lifetime_s,
        ping_interval_s=settings.ping_interval_s,
    )


class BadHandshake(ClientError):
    """400, with the version this gateway speaks (RFC 6455 4.4)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.headers = (*self.headers, (b"sec-websocket-version", b"13"))


class WebSocketHandshake:
    """``websocket_handshake``: see the module header."""

    name = "websocket_handshake"

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __repr__(self) -> str:
        return f"<WebSocketHandshake enabled={self.enabled}>"

    def on_request(self, ex: Exchange) -> RequestAnswer:
        request = ex.request
        if not self.enabled or not is_upgrade(request.method, request.headers):
            return None
        problem = handshake_problem(request.headers)
        if problem is not None:
            raise BadHandshake(problem)
        ex.upgrade = adopt_handshake_token(request)
        ex.target = without_query_token(ex.target)
        return None

    def on_response(self, ex: Exchange, response: Response) -> Response:
        if response.status == 101 and isinstance(ex.upgrade, Handshake):
            # response_headers stripped the hop-by-hop fields on the way: this hop's again
            headers = [h for h in response.headers if h[0] not in _UPGRADE_NAMES]
            response.headers = answer_headers(headers, ex.upgrade) + UPGRADE_HEADERS
        return response


class WebSocketSession:
    """The 101's body: given the client's connection, relays it to the upstream's, registered
    in ``sockets`` (as ``describe(relay)`` says) while it lasts."""

    def __init__(
        self,
        answer: UpgradeAnswer,
        limits: RelayLimits,
        name: str,
        describe: Callable[[Relay], OpenSocket],
        sockets: OpenSockets | None,
        watch: TokenWatch | None = None,
    ) -> None:
        self._answer = answer
        self._limits = limits
        self._name = name
        self._describe = describe
        self._sockets = sockets
        self._watch = watch
        self._taken = False
        # (bytes from the client, bytes the upstream sent to it) once the relay ended: the
        # access log's bytes_in and bytes_out (`httpio.switch.Switched.transferred`)
        self.transferred = (0, 0)

    def __repr__(self) -> str:
        return f"<WebSocketSession {self._name} taken={self._taken}>"

    async def take_over(self, stream: trio.SocketStream, trailing: bytes) -> None:
        self._taken = True
        answer = self._answer
        assert answer.stream is not None
        sockets = self._sockets
        relay = Relay(
            stream,
            trailing,
            answer.stream,
            answer.trailing,
            self._limits,
            name=self._name,
            clock=sockets.clock if sockets is not None else None,
            checks=(self._watch.check,) if self._watch is not None else (),
            readiness=sockets.readiness if sockets is not None else None,
        )
        # Held for as long as the socket is open: nothing of the handshake stays but the relay.
        self._answer = UpgradeAnswer(101, [], stream=answer.stream)
        self._watch = None
        ahead = len(trailing), len(answer.trailing)  # frames that came with the handshakes
        del answer
        socket = self._describe(relay)
        if sockets is not None:
            sockets.add(socket)
        try:
            await relay.run()
        finally:
            self.transferred = (
                ahead[0] + relay.client.received,
                ahead[1] + relay.upstream.received,
            )
            if sockets is not None:
                sockets.discard(socket)
            codes = {f"to_{side.value}": code for side, code in relay.close_codes.items()}
            log.info("websocket_closed", relay=relay.name, why=relay.close_why, **codes)

    async def read(self) -> bytes:
        return b""  # a 101 has no body: what follows it is the relay's

    async def aclose(self) -> None:
        if not self._taken and self._answer.stream is not None:
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._answer.stream)


class TokenWatch:
    """Decides the session's token again every ``RelayLimits.check_interval_s`` (1 s): once it
    is refused (revoked, expired, or its user's role no longer allowed) the socket closes with
    1008. Only the token's headers and the path are kept, not the handshake request."""

    def __init__(self, client: AuthClient, policy: AuthPolicy, request: Request) -> None:
        self._client = client
        self._policy = policy
        self._headers = [h for h in request.headers if h[0] in _TOKEN_HEADERS]
        self._path = request.path
        self._settling = False

    def check(self, relay: Relay) -> None:
        client = self._client
        try:
            verdict = client.authorizer.decide(
                self._headers, self._path, self._policy, client.clock()
            )
        except ClientError as err:
            relay.close(POLICY_VIOLATION, f"token refused: {err.detail}")
            return
        if isinstance(verdict, NeedsIntrospection) and not self._settling:
            self._settling = True
            relay.start_soon(self._settle, relay, verdict)

    async def _settle(self, relay: Relay, verdict: NeedsIntrospection) -> None:
        try:
            await self._client.settle(verdict, self._policy)
        except ClientError as err:
            relay.close(POLICY_VIOLATION, f"token refused: {err.detail}")
        except GatewayError:
            pass  # the auth servers are out of reach: asked again next time
        finally:
            self._settling = False


def _answer(answer: UpgradeAnswer, session: WebSocketSession) -> Response:
    if answer.status == 101:
        return Response(101, switched_headers(answer.headers), session)
    return Response(answer.status, strip_hop_by_hop(answer.headers), answer.body)


class WebSocketForward:
    """``websocket``: an upgrade goes to one of the service's instances."""

    name = "websocket"

    def __init__(
        self,
        service: str,
        *,
        pool: ServicePool,
        upstream: UpstreamPool,
        settings: WebSocketSettings,
        connect_timeout_s: float,
        retries: int,
        via: bytes,
        drop: frozenset[bytes],
        sockets: OpenSockets | None,
        auth: AuthClient | None,
        policy: AuthPolicy | None,
    ) -> None:
        self.service = service
        self._pool = pool
        self._upstream = upstream
        self._settings = settings
        self._limits = relay_limits(settings)
        self._connect_timeout_s = connect_timeout_s
        self._retries = retries
        self._via = via
        self._drop = drop
        self._sockets = sockets
        self._auth = auth
        self._policy = policy

    def __repr__(self) -> str:
        return f"<WebSocketForward {self.service} {self._settings}>"

    def on_request(self, ex: Exchange) -> RequestAnswer:
        if ex.upgrade is None:
            return None
        return self._handshake(ex)

    async def _handshake(self, ex: Exchange) -> Response:
        headers = upstream_headers(ex, self._via, self._drop)
        headers.extend(ex.identity)
        client_ip = ex.request.client[0]
        try:
            endpoint: Endpoint | None = self._pool.pick(client_ip=client_ip, url=ex.target)
        except NoHealthyInstance as err:
            raise retry.unavailable(err, dependency=False) from None
        tried: list[Endpoint] = []
        retries = 0
        reached_any = False
        first = time.monotonic()
        while endpoint is not None:
            tried.append(endpoint)
            try:
                answer = await _open_on(
                    self._pool,
                    self._upstream,
                    endpoint,
                    ex.target,
                    headers,
                    self._connect_timeout_s,
                    self._settings.handshake_timeout_s,
                )
                break
            except UpstreamError as err:
                # Before any 101 a handshake is a bodiless GET: it may go to another instance
                # as an idempotent request would (`proxy.retry`).
                reached_any = reached_any or err.bytes_sent
                verdict = retry.decide_retry(
                    outcome=retry.outcome_of(err),
                    request_sent=err.bytes_sent,
                    replayable=True,
                    retries_done=retries,
                    max_retries=self._retries,
                    time_left_s=math.inf,
                )
                if verdict is retry.Verdict.RETRY:
                    retries += 1
                nxt = None
                if verdict in retry.TRY_AGAIN:
                    nxt = self._pool.pick_retry(tried, client_ip=client_ip, url=ex.target)
                if nxt is None:
                    raise retry.final_error(
                        err,
                        reached_any=reached_any,
                        service=self.service,
                        dependency=False,
                        tries=len(tried),
                    ) from None
                log.info(
                    "websocket_handshake_retried",
                    service=self.service,
                    failed=endpoint.url,
                    next=nxt.url,
                    error=err.detail,
                )
                endpoint = nxt
        assert endpoint is not None
        _note_upstream(ex, endpoint, len(tried) - 1, first)
        watch = None
        if self._auth is not None and self._policy is not None and not self._policy.public:
            watch = TokenWatch(self._auth, self._policy, ex.request)
        describe = partial(
            OpenSocket, instance=endpoint.url, drain_s=self._settings.drain_s, service=self.service
        )
        name = f"{self.service}:{ex.request_id.decode()}"
        session = WebSocketSession(answer, self._limits, name, describe, self._sockets, watch)
        return _answer(answer, session)


def _note_upstream(ex: Exchange, endpoint: Endpoint, retries: int, first: float) -> None:
    """The access log's upstream of a handshake: the instance (or ELB) that answered it, the
    tries before, and the time from the first try to its answer's head."""
    note = ex.note
    note.upstream = endpoint.url
    note.retries = retries
    note.upstream_ms = round((time.monotonic() - first) * 1000, 3)


async def _open_on(
    pool: ServicePool,
    upstream: UpstreamPool,
    endpoint: Endpoint,
    target: str,
    headers: Headers,
    connect_timeout_s: float,
    handshake_timeout_s: float,
) -> UpgradeAnswer:
    """The handshake to ``endpoint``, its outcome fed to the pool's health."""
    pool.begin(endpoint)
    started = time.monotonic()
    try:
        answer = await open_upgrade(
            upstream.origin(endpoint.url),
            target,
            handshake_headers(headers),
            connect_timeout_s=connect_timeout_s,
            response_head_timeout_s=handshake_timeout_s,
        )
    except UpstreamError as err:
        pool.end(endpoint, retry.outcome_of(err), time.monotonic() - started)
        raise
    except BaseException:
        pool.end(endpoint, Outcome.CANCELLED, time.monotonic() - started)
        raise
    ok = Outcome.SUCCESS if answer.status < 500 else Outcome.RESET
    pool.end(endpoint, ok, time.monotonic() - started)
    return answer


class RemoteWebSocket:
    """``websocket_to_region``: an upgrade for another region goes to one of its ELBs."""

    name = "websocket_to_region"

    def __init__(
        self,
        region: str,
        *,
        pool: ServicePool,
        upstream: UpstreamPool,
        via: bytes,
        local_region: str,
        hop_keys: Sequence[bytes],
        sockets: OpenSockets | None,
    ) -> None:
        self.region = region
        self._pool = pool
        self._upstream = upstream
        self._via = via
        self._local_region = local_region
        self._hop_keys = tuple(hop_keys)
        self._sockets = sockets

    def __repr__(self) -> str:
        return f"<RemoteWebSocket {self.region}>"

    def on_request(self, ex: Exchange) -> RequestAnswer:
        if ex.upgrade is None:
            return None
        return self._handshake(ex)

    async def _handshake(self, ex: Exchange) -> Response:
        headers = upstream_headers(ex, self._via, frozenset({HOP_HEADER}))
        mark = hop_mark(self._hop_keys, self._local_region, ex.request_id, time.time())
        headers.append((HOP_HEADER, mark))
        endpoint = self._pool.pick()
        # a cross-region request's timeouts: config.json's "Upstream" section
        timeouts = self._upstream.timeouts
        first = time.monotonic()
        answer = await _open_on(
            self._pool,
            self._upstream,
            endpoint,
            ex.target,
            headers,
            timeouts.connect_timeout_s,
            timeouts.response_head_timeout_s,
        )
        _note_upstream(ex, endpoint, 0, first)
        describe = partial(
            OpenSocket, instance=endpoint.url, drain_s=REGION_DRAIN_S, region=self.region
        )
        name = f"region:{self.region}:{ex.request_id.decode()}"
        return _answer(
            answer, WebSocketSession(answer, REGION_LIMITS, name, describe, self._sockets)
        )
