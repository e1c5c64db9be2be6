"""What an instance, ELB or proxy URL in a config file may be: one rule, used everywhere.

The upstream pool dials plain HTTP only (TLS ends before the gateway), so an origin is
``http://host[:port]``: a host name, an IPv4 address or a bracketed IPv6 literal, and a port
(80 when absent); a path after it is allowed and ignored by the pool, which sends each request
target as it is given. `parse_origin` is that rule; the loader checks every URL of every file
with it (through `Origin`), the pool splits what it dials with it, and the balancer's
`httpio.balance.Endpoint` is made from it, so a URL the loader accepts is one the pool can
dial and the balancer can name. It used to be two rules: ``Endpoint.parse`` took ``https``
and the pool refused it.
"""

from __future__ import annotations

from urllib.parse import urlsplit


def parse_origin(url: str) -> tuple[str, int, str]:
    """``(host, port, authority)`` of an ``http://`` URL: the host without brackets, the port
    (80 when absent) and the authority as written (``host:port``, for a Host header).
    ValueError for anything else."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port or 80
    except ValueError:
        parts, port = None, 0
    if parts is None or parts.scheme != "http" or not parts.hostname or not 0 < port <= 65535:
        raise ValueError(
            f"only http:// origins are supported: a URL must look like http://host:port,"
            f" not {url!r}"
        )
    return parts.hostname, port, parts.netloc.rpartition("@")[2]


def origin_url(host: str, port: int) -> str:
    """The canonical ``http://host:port`` of an origin (IPv6 bracketed)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


class Origin:
    """``http://host:port`` split once (`parse_origin`); ``host`` is resolved once and cached
    by the pool."""

    __slots__ = ("host", "host_header", "key", "port", "url")

    def __init__(self, url: str) -> None:
        host, port, authority = parse_origin(url)
        self.url = url.strip().rstrip("/")
        self.host = host
        self.port = port
        self.host_header = authority.encode()
        self.key = (host, port)

    def __repr__(self) -> str:
        return f"Origin({self.url!r})"
