"""``ip_filter``: a service's ``allow_cidrs`` / ``deny_cidrs`` on the real client address (403).

The address is the one the ELB passed on (handed-off socket or PROXY v2 header), or for a
request another region's proxy forwarded, the last ``X-Forwarded-For`` entry it appended
(`proxy.filters.auth.client_address`); never a header a client wrote. Deny wins over allow;
an empty allow list allows every address not denied. IPv4-mapped IPv6 addresses
(``::ffff:10.0.0.1``) are matched as the IPv4 address they carry, so a v4 rule cannot be
walked around on a dual-stack listener. An address that does not parse is refused.

Parsing an address with `ipaddress` costs more than the rest of a request's filters together
(~5 us), so each filter keeps the verdicts of the last addresses it saw (at most
``MEMO_SIZE``, emptied when full: a flood of distinct addresses costs the parse, no memory).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from httpio.errors import Forbidden
from proxy.filters.auth import client_address
from proxy.filters.chain import Exchange, RequestAnswer

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MEMO_SIZE = 4096


def parse_networks(cidrs: Sequence[str]) -> tuple[Network, ...]:
    """Raises ValueError naming the bad entry (the loader reports it with the field path)."""
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def is_allowed(address: str, allow: Sequence[Network], deny: Sequence[Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address.partition("%")[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if any(ip in net for net in deny):
        return False
    return not allow or any(ip in net for net in allow)


class IpFilter:
    name = "ip_filter"

    def __init__(self, allow_cidrs: Sequence[str], deny_cidrs: Sequence[str]) -> None:
        self.allow = parse_networks(allow_cidrs)
        self.deny = parse_networks(deny_cidrs)
        self._memo: dict[str, bool] = {}

    def __repr__(self) -> str:
        return f"<IpFilter allow={len(self.allow)} deny={len(self.deny)}>"

    def settings(self) -> dict[str, object]:
        return {
            "allow_cidrs": [str(n) for n in self.allow],
            "deny_cidrs": [str(n) for n in self.deny],
        }

    def on_request(self, ex: Exchange) -> RequestAnswer:
        address = client_address(ex)
        allowed = self._memo.get(address)
        if allowed is None:
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            allowed = self._memo[address] = is_allowed(address, self.allow, self.deny)
        if not allowed:
            raise Forbidden("the client address is not allowed for this service")
        return None
