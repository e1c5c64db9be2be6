"""The hooks a filter may have (`proxy.filters` says how a filter is written), as Protocols
that `proxy.filters.chain` asks of each filter once, when it builds a chain.

Apart from the chain because they are checked at run time (``isinstance``), which a Protocol
compiled by mypyc refuses (`httpio.accel`): this module is never compiled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from httpio.messages import Response
    from proxy.filters.chain import Exchange, RequestAnswer, Stage


@runtime_checkable
class RequestFilter(Protocol):
    def on_request(self, ex: Exchange) -> RequestAnswer: ...


@runtime_checkable
class ResponseFilter(Protocol):
    def on_response(self, ex: Exchange, response: Response) -> Response: ...


@runtime_checkable
class AroundFilter(Protocol):
    """Runs the rest of the chain itself (``await rest.run(ex)``), or answers instead."""

    async def around(self, ex: Exchange, rest: Stage) -> Response: ...


@runtime_checkable
class Terminal(Protocol):
    async def respond(self, ex: Exchange) -> Response: ...
