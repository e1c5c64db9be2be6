"""`proxy.filters.body_limit`: a declared length over the limit is a 413 before any read; a
chunked one is counted as it streams, and the backend sees it aborted, not cut short."""

from __future__ import annotations

import json

import pytest
import trio

from httpio.errors import GatewayError, RequestBodyTooLarge
from httpio.messages import Request, Response, json_response
from proxy.filters.body_limit import BodyLimit
from tests.proxy.filters.edge import exchange
from tests.proxy.filters.test_edge_chain import edge_service
from tests.proxy.test_app import make_config, proxy_for, serving
from tests.support.polling import wait_until


def test_over_the_limit_is_413_and_at_it_goes_on() -> None:
    f = BodyLimit(10)
    assert f.on_request(exchange("POST", headers=[(b"content-length", b"10")])) is None
    assert f.on_request(exchange("GET")) is None
    with pytest.raises(RequestBodyTooLarge):
        f.on_request(exchange("POST", headers=[(b"content-length", b"11")]))


async def test_a_chunked_body_over_the_limit_is_413_and_the_backend_sees_it_aborted() -> None:
    """A real `ProxyApp` over sockets, a real backend: 5 bytes reach the backend; the chunk
    that crosses 8 does not: the client gets the 413 JSON, the backend a body that broke
    off (its server raised), never a 5-byte body that looks complete."""
    got: list[bytes] = []
    outcome: list[str] = []

    async def backend(request: Request) -> Response:
        try:
            while chunk := await request.body.read():
                got.append(chunk)
        except GatewayError:
            outcome.append("aborted")
            raise
        outcome.append("complete")
        return json_response(200, {"body": b"".join(got).decode()})

    async with serving(backend) as urls:
        async with proxy_for(make_config(edge_service(*urls))) as proxy:  # type: ignore[arg-type]
            host, port = proxy.url.removeprefix("http://").split(":")
            with trio.fail_after(30):
                stream = await trio.open_tcp_stream(host, int(port))
                async with stream:
                    await stream.send_all(
                        b"POST /api/users/7 HTTP/1.1\r\nHost: x\r\nX-Api-Key: chunked\r\n"
                        b"Transfer-Encoding: chunked\r\n\r\n5\r\n01234\r\n"
                    )
                    await wait_until(lambda: got == [b"01234"], 30)
                    await stream.send_all(b"5\r\n56789\r\n0\r\n\r\n")
                    answer = b""
                    while data := await stream.receive_some(65536):
                        answer += data
                await wait_until(lambda: bool(outcome), 30)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 ") and b"connection: close" in head.lower()
    assert json.loads(body)["error"] == "body_too_large"
    assert got == [b"01234"] and outcome == ["aborted"]
