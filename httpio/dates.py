"""HTTP dates (RFC 9110 5.6.7): one way to write them, one way to read them.

Every process writes them: the server loop's ``Date`` on every response, the cache's ``Date``
on an entry the origin sent without one, a backend's ``Last-Modified``. Formatting with
`email.utils.formatdate` costs ~4 us, which was 6 % of a backend's CPU under wrk when done per
response, so `http_date` remembers the last few seconds it wrote (a server writes the same
second thousands of times; a backend the same few file dates). `parse_http_date` accepts the
three forms RFC 9110 5.6.7 requires a recipient to read, and answers None for anything else
(an invalid date is ignored, 13.1.3, or means "already expired", RFC 9111 5.3: the caller's
call).
"""

from __future__ import annotations

import functools
from email.utils import formatdate, parsedate_to_datetime


@functools.lru_cache(maxsize=256)
def http_date(seconds: int) -> bytes:
    """``Sun, 06 Nov 1994 08:49:37 GMT`` for a whole number of seconds since the epoch."""
    return formatdate(seconds, usegmt=True).encode()


def parse_http_date(value: bytes | None) -> float | None:
    """Seconds since the epoch of an HTTP date, or None when absent or unreadable."""
    if value is None:
        return None
    try:
        return parsedate_to_datetime(value.decode("latin-1")).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
