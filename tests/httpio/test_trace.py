import re

import pytest

from httpio.trace import new_ids, new_request_id, next_traceparent, parse_traceparent, request_id_of

VALID = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_continued_with_a_new_span():
    trace_id, out = next_traceparent([(b"traceparent", VALID)])
    assert trace_id == b"4bf92f3577b34da6a3ce929d0e0e4736"
    version, tid, span, flags = out.split(b"-")
    assert (version, tid, flags) == (b"00", trace_id, b"01")
    assert span != b"00f067aa0ba902b7" and len(span) == 16


def test_missing_or_invalid_traceparent_starts_a_new_trace():
    for headers in (
        [],
        [(b"traceparent", b"garbage")],
        [(b"traceparent", b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01")],
        [(b"traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-" + b"0" * 16 + b"-01")],
        [(b"traceparent", b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")],
        [(b"traceparent", VALID.upper())],
        [(b"traceparent", VALID + b"-extra")],
    ):
        trace_id, out = next_traceparent(headers)
        assert trace_id != b"4bf92f3577b34da6a3ce929d0e0e4736"
        assert parse_traceparent(out) == (trace_id, b"00")


def test_a_later_version_is_read_by_its_first_fields():
    assert parse_traceparent(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x") == (
        b"4bf92f3577b34da6a3ce929d0e0e4736",
        b"01",
    )


def test_an_edge_that_trusts_no_client_restarts_the_trace():
    trace_id, _ = next_traceparent([(b"traceparent", VALID)], trust_incoming=False)
    assert trace_id != b"4bf92f3577b34da6a3ce929d0e0e4736"


def test_ids_are_unique_and_never_zero():
    seen = {new_ids() for _ in range(1000)}
    assert len(seen) == 1000
    assert all(t != b"0" * 32 and s != b"0" * 16 for t, s in seen)


# -- the request id ---------------------------------------------------------------------------
def is_generated(request_id: bytes) -> bool:
    return re.fullmatch(rb"[0-9a-f]{16,64}", request_id) is not None


@pytest.mark.parametrize(
    "value", [b"abc", b"A-b_c.d:e", b"0" * 128, b"550e8400-e29b-41d4-a716-446655440000"]
)
def test_sane_request_id_is_kept(value: bytes) -> None:
    assert request_id_of([(b"x-request-id", value)]) == value


@pytest.mark.parametrize(
    "value",
    [b"has space", b"x" * 200, b"0" * 129, b"", b"semi;colon", b"new\tline", "é".encode()],
)
def test_malformed_request_id_is_replaced(value: bytes) -> None:
    replaced = request_id_of([(b"x-request-id", value)])
    assert replaced != value
    assert is_generated(replaced)


def test_missing_request_id_is_generated_fresh_each_time() -> None:
    ids = {request_id_of([]), request_id_of([(b"host", b"x")]), new_request_id()}
    assert len(ids) == 3
    for generated in ids:
        assert is_generated(generated)
        # a generated id is one the next hop keeps
        assert request_id_of([(b"x-request-id", generated)]) == generated


def test_first_sane_request_id_wins() -> None:
    headers = [(b"x-request-id", b"bad id"), (b"x-request-id", b"good-id")]
    assert request_id_of(headers) == b"good-id"
