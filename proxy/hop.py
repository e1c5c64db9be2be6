"""The mark a proxy puts on a request it forwards to another region, and its check.

The next proxy must know two things about a request that arrives from another region:
that it was forwarded once already (so it is never forwarded again: 508), and whether the
``X-Forwarded-Proto``/``-Host`` it carries were set by one of our proxies rather than by a
client. Presence of the header answers the first (a client that forges it only gets its
own request refused). The second needs proof, so the value is
``<region>;<unix time>;<HMAC-SHA256(key, region;time;request id)>`` with the fleet's shared
key (the newest of ``Auth_key``/``Auth_keys``; the launcher generates one per fleet, see
`topology.persistent`, since the original's published ``private_key`` let any client forge the
mark): bound to the request id and valid for ``MAX_AGE_S``, a copy seen by a backend cannot
be replayed onto other requests. Proxies never pass the mark to backends.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

HOP_HEADER = b"x-gateway-hop"
MAX_AGE_S = 30


def _mac(key: bytes, region: bytes, stamp: bytes, request_id: bytes) -> bytes:
    message = region + b";" + stamp + b";" + request_id
    return hmac.new(key, message, hashlib.sha256).hexdigest().encode()


def sign_hop(key: bytes, region: str, request_id: bytes, now: float) -> bytes:
    stamp = b"%d" % int(now)
    r = region.encode()
    return r + b";" + stamp + b";" + _mac(key, r, stamp, request_id)


def verified_hop(keys: Sequence[bytes], value: bytes, request_id: bytes, now: float) -> bool:
    """True when ``value`` was made by a proxy holding one of ``keys`` for this request,
    less than ``MAX_AGE_S`` ago."""
    parts = value.split(b";")
    if len(parts) != 3 or not parts[1].isdigit():
        return False
    region, stamp, mac = parts
    if abs(now - int(stamp)) > MAX_AGE_S:
        return False
    return any(hmac.compare_digest(_mac(k, region, stamp, request_id), mac) for k in keys)
