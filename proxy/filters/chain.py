"""The chain a request runs through, and the record it carries: `Exchange` and `Chain`.

A chain is an ordered list of filters, request order, the terminal last (`proxy.filters` says
how one is written). It is compiled once, when a config snapshot is applied, into stages: a
stage runs the request hooks of its filters in a plain loop, then either an around filter
(which gets the next stage to call) or the terminal, then the response hooks of the filters
it ran, in reverse. So a synchronous hook costs a method call, not a coroutine, and nothing of
the chain is allocated per request: per request there is the `Exchange`, and a coroutine per
stage (one without the cache, two with it).

A request hook's answer is None (go on: whatever it decided is written on the `Exchange`), a
`Response` (answer now), or an awaitable of either, made only when the decision needs I/O (a
token never seen before is introspected). An answer given early goes back through the
response hooks of the filters before the one that gave it, as Envoy sends a local reply
through the encoders of the filters it passed. Errors (`httpio.errors.GatewayError`) go up to
the server loop untouched, as they always did. A response hook that fails closes the body of
the response it was given: the terminal's body holds an in-flight slot.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from httpio.access_log import RequestNote
from httpio.messages import Request, Response
from httpio.protocol import Headers
from proxy.filters.hooks import AroundFilter, RequestFilter, ResponseFilter, Terminal

if TYPE_CHECKING:
    from authsvc.claims import Claims
    from httpio.gcra_decision import Decision
    from proxy.filters.routes import Route

RequestAnswer = Response | Awaitable[Response | None] | None
_NO_HEADERS: Headers = []


class Exchange:
    """One request on its way through a chain: the request, and what filters decided.

    ``target`` is what the upstream is asked for (``/<rest>?<query>`` of a service's request,
    the whole target of one forwarded to another region); ``from_hop``: another region's
    proxy forwarded it (its hop mark verified); ``identity``: headers the auth filter vouches
    for (``X-User``...), sent upstream after the client's own were dropped; ``upgrade``: the
    request is a WebSocket handshake (`proxy.websocket.Handshake`), None for any other;
    ``note``: what the access log and the metrics want to know
    (`httpio.access_log.RequestNote`: a filter that learns the route, the upstream or a
    rate-limit decision writes it there); ``traceparent``: the W3C trace context for the next
    hop (`httpio.trace`), b"" until the proxy sets it; ``route``: the explicit route
    matched (`proxy.filters.routes`), None for ``/<service>/<rest>``; ``claims``: the verified
    token's, when the auth filter checked one; ``rate_limits``: the rate limits that allowed
    it, with their decisions, for the quota fields of the answer (`proxy.filters.rate_limit`)."""

    __slots__ = (
        "claims",
        "from_hop",
        "identity",
        "note",
        "rate_limits",
        "request",
        "request_id",
        "route",
        "target",
        "traceparent",
        "upgrade",
    )

    def __init__(self, request: Request, request_id: bytes, target: str, from_hop: bool) -> None:
        self.request = request
        self.request_id = request_id
        self.target = target
        self.from_hop = from_hop
        self.identity: Headers = _NO_HEADERS
        self.upgrade: object | None = None  # a WebSocket handshake (proxy.filters.websocket)
        self.note = RequestNote()
        self.traceparent = b""
        self.route: Route | None = None
        self.claims: Claims | None = None
        self.rate_limits: list[tuple[object, Decision]] | None = None

    def __repr__(self) -> str:
        return f"<Exchange {self.request.method} {self.target} id={self.request_id.decode()}>"


class Stage:
    """Request hooks, then an around filter (with the next stage) or the terminal, then the
    response hooks, reversed. Built by `Chain`; never per request."""

    __slots__ = ("_around", "_back", "_next", "_requests", "_terminal")

    def __init__(
        self,
        filters: Sequence[object],
        *,
        around: AroundFilter | None,
        next_stage: Stage | None,
        terminal: Terminal | None,
    ) -> None:
        requests: list[tuple[RequestFilter, tuple[ResponseFilter, ...]]] = []
        passed: list[ResponseFilter] = []
        for f in filters:
            if isinstance(f, RequestFilter):
                requests.append((f, tuple(reversed(passed))))
            if isinstance(f, ResponseFilter):
                passed.append(f)
        self._requests = tuple(requests)
        self._back = tuple(reversed(passed))
        self._around = around
        self._next = next_stage
        self._terminal = terminal

    async def run(self, ex: Exchange) -> Response:
        for f, back in self._requests:
            answer = f.on_request(ex)
            if answer is not None:
                if not isinstance(answer, Response):
                    answer = await answer
                if answer is not None:
                    return await _through(back, ex, answer)
        if self._around is not None:
            assert self._next is not None
            response = await self._around.around(ex, self._next)
        else:
            assert self._terminal is not None
            response = await self._terminal.respond(ex)
        back = self._back
        if back:  # `_through`, inlined: a coroutine fewer for every request with a response hook
            try:
                for hook in back:
                    response = hook.on_response(ex, response)
            except BaseException:
                body = response.body
                if not isinstance(body, bytes):
                    await body.aclose()
                raise
        return response


async def _through(
    filters: tuple[ResponseFilter, ...], ex: Exchange, response: Response
) -> Response:
    try:
        for f in filters:
            response = f.on_response(ex, response)
    except BaseException:
        body = response.body
        if not isinstance(body, bytes):
            await body.aclose()
        raise
    return response


class Chain:
    """The filters of one service (or of the forward to one region), in request order, the
    terminal last; ``run(ex)`` serves one request through them."""

    __slots__ = ("filters", "name", "run")

    def __init__(self, name: str, filters: Sequence[object]) -> None:
        if not filters or not isinstance(filters[-1], Terminal):
            raise ValueError(f"chain {name!r} must end with its terminal filter")
        self.name = name
        self.filters = tuple(filters)
        # ``run(ex)`` serves one request: the first stage's own method, no frame in between.
        self.run: Callable[[Exchange], Awaitable[Response]] = _compile(self.filters).run

    def __repr__(self) -> str:
        return f"<Chain {self.name}: {' -> '.join(describe(f) for f in self.filters)}>"

    def statistics(self) -> dict[str, object]:
        return {"name": self.name, "filters": [describe(f) for f in self.filters]}


def describe(f: object) -> str:
    name = getattr(f, "name", None)
    return name if isinstance(name, str) else type(f).__name__


def _compile(filters: Sequence[object]) -> Stage:
    """Split the filters at each around filter: ``[a, b, C, d, T]`` is a stage of ``a, b``
    around ``C``, whose rest is a stage of ``d`` and the terminal ``T``."""
    *before, terminal = filters
    assert isinstance(terminal, Terminal)
    segments: list[list[object]] = [[]]
    arounds: list[AroundFilter] = []
    for f in before:
        if isinstance(f, AroundFilter):
            arounds.append(f)
            segments.append([])
        else:
            segments[-1].append(f)
    stage = Stage(segments[-1], around=None, next_stage=None, terminal=terminal)
    for segment, around in zip(reversed(segments[:-1]), reversed(arounds), strict=True):
        stage = Stage(segment, around=around, next_stage=stage, terminal=None)
    return stage
