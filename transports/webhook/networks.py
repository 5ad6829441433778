"""Which peers may deliver webhooks: an optional allow-list of networks.

Off by default, because behind a reverse proxy or a tunnel the peer address
is the proxy's, and the signature already proves who wrote the body.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

XSOLLA_NETWORKS: tuple[str, ...] = (
    "185.30.20.0/24",
    "185.30.21.0/24",
    "185.30.22.0/24",
    "185.30.23.0/24",
    "34.102.38.178/32",
    "34.94.43.207/32",
    "35.236.73.234/32",
    "34.94.69.44/32",
    "34.102.22.197/32",
)
"""The documented ranges plus the addresses Xsolla's PHP SDK allows (2025-10)."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowList:
    """A set of networks; ``allows(peer)`` is False for anything unparsable."""

    def __init__(self, networks: Iterable[str | Network]) -> None:
        self.networks: tuple[Network, ...] = tuple(
            ipaddress.ip_network(n, strict=False) if isinstance(n, str) else n for n in networks
        )

    def allows(self, peer: str | None) -> bool:
        if not peer:
            return False
        try:
            address = ipaddress.ip_address(peer.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def __repr__(self) -> str:
        return f"AllowList({[str(n) for n in self.networks]!r})"
