"""The error tree: each class's status and code, the one JSON body shape, and the 401
challenge (RFC 6750 3). Pure: no event loop."""

from __future__ import annotations

import msgspec
import pytest

from httpio.errors import (
    ClientError,
    DependencyUnavailable,
    ErrorBody,
    Forbidden,
    GatewayError,
    GatewayRefusal,
    LoopDetected,
    NoHealthyInstance,
    Overloaded,
    RequestBodyTooLarge,
    RequestHeadTooLarge,
    RequestTimeout,
    RouteNotFound,
    Unauthorized,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
    UpstreamUnreachable,
    encode_error,
)

EXPECTED: list[tuple[type[GatewayError], type[Exception], int, str]] = [
    (GatewayError, Exception, 500, "internal_error"),
    (ClientError, GatewayError, 400, "bad_request"),
    (RequestTimeout, ClientError, 408, "request_timeout"),
    (RequestBodyTooLarge, ClientError, 413, "body_too_large"),
    (RequestHeadTooLarge, ClientError, 431, "headers_too_large"),
    (Unauthorized, ClientError, 401, "unauthorized"),
    (Forbidden, ClientError, 403, "forbidden"),
    (GatewayRefusal, GatewayError, 500, "refused"),
    (RouteNotFound, GatewayRefusal, 404, "not_found"),
    (NoHealthyInstance, GatewayRefusal, 503, "no_healthy_instance"),
    (Overloaded, GatewayRefusal, 503, "overloaded"),
    (DependencyUnavailable, GatewayRefusal, 503, "dependency_unavailable"),
    (LoopDetected, GatewayRefusal, 508, "loop_detected"),
    (UpstreamError, GatewayError, 502, "bad_gateway"),
    (UpstreamUnreachable, UpstreamError, 502, "upstream_unreachable"),
    (UpstreamProtocolError, UpstreamError, 502, "upstream_protocol_error"),
    (UpstreamTimeout, UpstreamError, 504, "upstream_timeout"),
]


def decode(body: bytes) -> dict[str, object]:
    decoded = msgspec.json.decode(body)
    assert isinstance(decoded, dict)
    return decoded


@pytest.mark.parametrize(("cls", "parent", "status", "code"), EXPECTED)
def test_status_code_and_blame(
    cls: type[GatewayError], parent: type[Exception], status: int, code: str
) -> None:
    err = cls("what went wrong")
    assert issubclass(cls, parent)
    assert (err.status, err.code, err.detail) == (status, code, "what went wrong")
    assert decode(err.body()) == {"status": status, "error": code, "detail": "what went wrong"}


@pytest.mark.parametrize(("cls", "status", "code"), [(c, s, k) for c, _, s, k in EXPECTED])
def test_detail_defaults_to_the_code_in_words(
    cls: type[GatewayError], status: int, code: str
) -> None:
    err = cls()
    assert err.detail == code.replace("_", " ")
    assert str(err) == code
    assert decode(err.body())["detail"] == err.detail


def test_body_is_exactly_status_error_detail_in_that_order() -> None:
    assert encode_error(502, "upstream_unreachable", 'a "quoted" detail') == (
        b'{"status":502,"error":"upstream_unreachable","detail":"a \\"quoted\\" detail"}'
    )
    assert msgspec.json.decode(RouteNotFound("no service x").body(), type=ErrorBody) == (
        ErrorBody(404, "not_found", "no service x")
    )


def test_headers_are_per_instance() -> None:
    err = Overloaded("busy", headers=((b"retry-after", b"1"),))
    assert err.headers == ((b"retry-after", b"1"),)
    assert Overloaded("busy").headers == ()


def test_unauthorized_carries_a_bearer_challenge() -> None:
    assert Unauthorized("expired").headers == (
        (b"www-authenticate", b'Bearer realm="gateway", error="invalid_token"'),
    )
    # RFC 6750 3.1: a request without any token gets the challenge without an error code.
    assert Unauthorized("no token", error="").headers == (
        (b"www-authenticate", b'Bearer realm="gateway"'),
    )
    assert Unauthorized(error="invalid_request").headers[0][1].endswith(b'error="invalid_request"')
    assert decode(Unauthorized("expired").body()) == {
        "status": 401,
        "error": "unauthorized",
        "detail": "expired",
    }


def test_upstream_errors_say_whether_bytes_left() -> None:
    assert UpstreamUnreachable("refused").bytes_sent is False
    assert UpstreamTimeout("slow", bytes_sent=True).bytes_sent is True
    assert UpstreamProtocolError("garbage", bytes_sent=True).status == 502
