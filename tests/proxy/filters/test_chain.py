"""`proxy.filters.chain`: the order hooks run in, early answers, around filters, and a failed
response hook that must close the body it held. Filters here are tiny recorders; the event
loop runs only because a chain's stages are coroutines."""

from __future__ import annotations

from typing import Any

import pytest

from httpio.messages import Request, Response
from proxy.filters.chain import Chain, Exchange, Stage


def exchange() -> Exchange:
    request = Request("GET", "/s/x", "/s/x", "", [], "1.1", ("127.0.0.1", 1), None)  # type: ignore[arg-type]
    return Exchange(request, b"id-1", "/x", False)


class Hooks:
    """A filter with a request and a response hook, both writing to ``log``."""

    def __init__(self, name: str, log: list[str], answer: Any = None) -> None:
        self.name = name
        self._log = log
        self._answer = answer

    def on_request(self, ex: Exchange) -> Any:
        self._log.append(f"{self.name}>")
        return self._answer

    def on_response(self, ex: Exchange, response: Response) -> Response:
        self._log.append(f"<{self.name}")
        response.headers.append((b"x-seen", self.name.encode()))
        return response


class Terminal:
    name = "terminal"

    def __init__(self, log: list[str]) -> None:
        self._log = log

    async def respond(self, ex: Exchange) -> Response:
        self._log.append("terminal")
        return Response(200, [], b"from the terminal")


class Around:
    name = "around"

    def __init__(self, log: list[str], *, answer: bool = False) -> None:
        self._log = log
        self._answer = answer

    async def around(self, ex: Exchange, rest: Stage) -> Response:
        self._log.append("around>")
        if self._answer:
            return Response(200, [], b"from around")
        response = await rest.run(ex)
        self._log.append("<around")
        return response


async def test_request_hooks_in_order_response_hooks_reversed() -> None:
    log: list[str] = []
    chain = Chain("s", [Hooks("a", log), Hooks("b", log), Terminal(log)])
    response = await chain.run(exchange())
    assert log == ["a>", "b>", "terminal", "<b", "<a"]
    assert response.body == b"from the terminal"
    assert repr(chain) == "<Chain s: a -> b -> terminal>"


async def test_an_answer_now_goes_back_through_the_filters_before_it_only() -> None:
    log: list[str] = []
    early = Response(204, [], b"")
    chain = Chain(
        "s", [Hooks("a", log), Hooks("b", log, answer=early), Hooks("c", log), Terminal(log)]
    )
    response = await chain.run(exchange())
    assert response is early
    assert log == ["a>", "b>", "<a"]
    assert response.headers == [(b"x-seen", b"a")]


async def test_an_awaitable_answer_is_awaited_and_none_goes_on() -> None:
    log: list[str] = []

    async def later(value: Response | None) -> Response | None:
        log.append("awaited")
        return value

    class Slow(Hooks):
        def on_request(self, ex: Exchange) -> Any:
            super().on_request(ex)
            return later(None)

    chain = Chain("s", [Slow("a", log), Terminal(log)])
    await chain.run(exchange())
    assert log == ["a>", "awaited", "terminal", "<a"]


async def test_an_around_filter_wraps_the_rest_of_the_chain() -> None:
    log: list[str] = []
    chain = Chain("s", [Hooks("a", log), Around(log), Hooks("b", log), Terminal(log)])
    await chain.run(exchange())
    assert log == ["a>", "around>", "b>", "terminal", "<b", "<around", "<a"]
    log.clear()
    answering = Chain(
        "s", [Hooks("a", log), Around(log, answer=True), Hooks("b", log), Terminal(log)]
    )
    response = await answering.run(exchange())
    assert response.body == b"from around"
    assert log == ["a>", "around>", "<a"]  # b and the terminal never ran


class StreamedBody:
    def __init__(self) -> None:
        self.closed = False

    async def read(self) -> bytes:
        return b""

    async def aclose(self) -> None:
        self.closed = True


async def test_a_failing_response_hook_closes_the_body() -> None:
    body = StreamedBody()

    class Streams:
        name = "streams"

        async def respond(self, ex: Exchange) -> Response:
            return Response(200, [], body)

    class Broken:
        name = "broken"

        def on_response(self, ex: Exchange, response: Response) -> Response:
            raise RuntimeError("a bug")

    with pytest.raises(RuntimeError):
        await Chain("s", [Broken(), Streams()]).run(exchange())
    assert body.closed  # the terminal's body held an in-flight slot


def test_a_chain_ends_with_its_terminal() -> None:
    with pytest.raises(ValueError, match="terminal"):
        Chain("s", [Hooks("a", [])])
