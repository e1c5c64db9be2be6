from httpio.trace import new_ids, next_traceparent, parse_traceparent

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
