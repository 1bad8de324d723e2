"""Egress classification: is a source local, which group is it in, is a destination outside.

Pure prefix matching over integers; callers cache the answer per address text.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from egressd.config import OTHER_GROUP, GroupConfig, IPNetwork, NetworksConfig
from egressd.enrich.address import parse_address

# (version, network as int, mask as int)
_Prefix = tuple[int, int, int]


def _prefixes(networks: Iterable[IPNetwork]) -> tuple[_Prefix, ...]:
    out = []
    for net in networks:
        if isinstance(net, ipaddress.IPv6Network) and net.network_address.ipv4_mapped is not None:
            mapped = ipaddress.ip_network(
                f"{net.network_address.ipv4_mapped}/{max(net.prefixlen - 96, 0)}", strict=False
            )
            net = mapped
        out.append((net.version, int(net.network_address), int(net.netmask)))
    return tuple(out)


def _matches(prefixes: tuple[_Prefix, ...], version: int, value: int) -> bool:
    return any(v == version and value & mask == network for v, network, mask in prefixes)


class EgressClassifier:
    """Answers "is this address inside?" and "which group does this source belong to?"."""

    __slots__ = ("_groups", "_local")

    def __init__(self, networks: NetworksConfig, groups: Iterable[GroupConfig]) -> None:
        self._local = _prefixes(networks.local)
        self._groups = tuple((g.name, _prefixes(g.sources)) for g in groups)

    def is_local(self, address: str) -> bool:
        parsed = parse_address(address)
        return parsed is not None and _matches(self._local, *parsed)

    def source_group(self, address: str) -> str | None:
        """The group of a local source (first match wins, else ``other``); None if not local."""
        parsed = parse_address(address)
        if parsed is None or not _matches(self._local, *parsed):
            return None
        for name, prefixes in self._groups:
            if _matches(prefixes, *parsed):
                return name
        return OTHER_GROUP
