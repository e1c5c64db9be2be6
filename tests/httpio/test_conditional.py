"""`httpio.conditional`: RFC 9110 13.2.2 for the cache's entries and the backends' files
alike. Pure; no event loop."""

from __future__ import annotations

from email.utils import formatdate

import pytest

from httpio.conditional import etag_matches, is_not_modified

NOW = 1_700_000_000


def http_date(t: float) -> bytes:
    return formatdate(t, usegmt=True).encode()


ETAG = b'W/"v1"'
LAST_MODIFIED = http_date(NOW - 3600)


def test_etag_matching_is_weak_and_takes_lists() -> None:
    etag = b'"abc"'
    assert etag_matches([b'"abc"'], etag)
    assert etag_matches([b'W/"abc"'], etag)
    assert etag_matches([b'"zzz", W/"abc"'], etag)
    assert etag_matches([b"*"], etag)
    assert not etag_matches([b'"abcd"'], etag)


def test_a_list_spread_over_several_lines_is_one_list() -> None:
    """RFC 9110 5.3: the backends used to read only the first ``If-None-Match`` line."""
    headers = [(b"if-none-match", b'"zzz"'), (b"if-none-match", b'"abc"')]
    assert is_not_modified(headers, b'"abc"', None)


def test_star_matches_a_representation_without_an_etag() -> None:
    assert is_not_modified([(b"if-none-match", b"*")], None, LAST_MODIFIED)
    assert not is_not_modified([(b"if-none-match", b'"abc"')], None, LAST_MODIFIED)


@pytest.mark.parametrize(
    ("request_headers", "expected"),
    [
        ([(b"if-none-match", b'"v1"')], True),  # weak comparison ignores W/
        ([(b"if-none-match", b'"v0", W/"v1"')], True),
        ([(b"if-none-match", b'"v2"')], False),
        ([(b"if-none-match", b"*")], True),
        ([(b"if-modified-since", http_date(NOW - 3600))], True),
        ([(b"if-modified-since", http_date(NOW - 7200))], False),
        ([(b"if-modified-since", b"garbage")], False),
        # If-None-Match decides alone when present (RFC 9110 13.2.2)
        ([(b"if-none-match", b'"v2"'), (b"if-modified-since", http_date(NOW))], False),
        ([], False),
    ],
)
def test_is_not_modified(request_headers: list[tuple[bytes, bytes]], expected: bool) -> None:
    assert is_not_modified(request_headers, ETAG, LAST_MODIFIED) is expected


def test_an_unreadable_last_modified_means_modified() -> None:
    assert not is_not_modified([(b"if-modified-since", http_date(NOW))], None, b"0")
