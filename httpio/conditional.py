"""Conditional GET and HEAD (RFC 9110 13.2.2), as every process that answers one decides it.

Pure: the request's header fields and the validators of the representation at hand (its
``ETag`` and ``Last-Modified`` field values) in, "answer 304" or not out. The proxy's cache
asks it about a stored entry, a demo backend about a static file; both used to carry their
own copy, and they disagreed on lists spread over several ``If-None-Match`` lines.

- ``If-None-Match`` is evaluated first, with the weak comparison (8.8.3.2): ``W/"x"`` matches
  ``"x"``, a list matches when any of its tags does, ``*`` matches any current
  representation (13.1.2); when it is present, ``If-Modified-Since`` is not looked at (13.2.2
  step 3 before step 4).
- ``If-Modified-Since`` then: not modified when ``Last-Modified`` is not later than it; an
  unreadable date on either side means "modified" (13.1.3: an invalid date is ignored).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from httpio.dates import parse_http_date
from httpio.protocol import Headers, header_value, header_values

_ETAG = re.compile(rb'(W/)?"[^"]*"')


def _opaque_tags(value: bytes) -> set[bytes]:
    """Entity tags of an ``If-None-Match``/``ETag`` list, weak prefix dropped (8.8.3.2)."""
    return {m.group(0).removeprefix(b"W/") for m in _ETAG.finditer(value)}


def etag_matches(if_none_match: Sequence[bytes], etag: bytes | None) -> bool:
    """Whether any ``If-None-Match`` field value names ``etag`` (weakly) or is ``*``."""
    if any(v.strip() == b"*" for v in if_none_match):
        return True
    if etag is None:
        return False
    wanted: set[bytes] = set()
    for value in if_none_match:
        wanted |= _opaque_tags(value)
    return bool(_opaque_tags(etag) & wanted)


def is_not_modified(
    request_headers: Headers, etag: bytes | None, last_modified: bytes | None
) -> bool:
    """RFC 9110 13.2.2 steps 3 and 4 for a GET/HEAD of a representation with these
    validators: True means answer 304."""
    if_none_match = header_values(request_headers, b"if-none-match")
    if if_none_match:
        return etag_matches(if_none_match, etag)
    since = parse_http_date(header_value(request_headers, b"if-modified-since"))
    if since is None:  # the common case: no condition, and no date to parse
        return False
    modified = parse_http_date(last_modified)
    return modified is not None and modified <= since
