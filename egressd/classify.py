"""Egress classification: is a source local, which group is it in, is a destination outside.

Prefixes become one sorted table of disjoint ranges per IP version, so an address (as an
integer) is classified by one binary search however many groups there are.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
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


#: what a range of addresses is: None = not local, else the group of its sources
_Answer = str | None


def _range_table(
    version: int, local: tuple[_Prefix, ...], groups: tuple[tuple[str, tuple[_Prefix, ...]], ...]
) -> tuple[list[int], list[_Answer]]:
    """Starts of disjoint ranges covering every address of ``version``, and each one's answer.

    The answer is constant between two consecutive prefix boundaries, so it is computed once
    per range, by the same first-match rules as :meth:`EgressClassifier.source_group`.
    """
    top = 1 << (32 if version == 4 else 128)
    bounds = {0}
    for prefixes in (local, *(p for _, p in groups)):
        for v, network, mask in prefixes:
            if v == version:
                bounds.add(network)
                end = network + ((top - 1) ^ mask) + 1
                if end < top:
                    bounds.add(end)
    starts = sorted(bounds)
    answers: list[_Answer] = []
    for start in starts:
        if not _matches(local, version, start):
            answers.append(None)
            continue
        answers.append(
            next((name for name, p in groups if _matches(p, version, start)), OTHER_GROUP)
        )
    return starts, answers


class EgressClassifier:
    """Answers "is this address inside?" and "which group does this source belong to?"."""

    __slots__ = ("_tables",)

    def __init__(self, networks: NetworksConfig, groups: Iterable[GroupConfig]) -> None:
        local = _prefixes(networks.local)
        by_group = tuple((g.name, _prefixes(g.sources)) for g in groups)
        self._tables = {version: _range_table(version, local, by_group) for version in (4, 6)}

    def table(self, version: int) -> tuple[list[int], list[str | None]]:
        """The range table of ``version``: sorted starts and each range's answer (the group
        of its sources, None = not local); for lookups over many addresses at once."""
        return self._tables[version]

    def group_of(self, version: int, value: int) -> str | None:
        """The group of a parsed local source (else ``other``); None if not local."""
        starts, answers = self._tables[version]
        return answers[bisect_right(starts, value) - 1]

    def is_local(self, address: str) -> bool:
        parsed = parse_address(address)
        return parsed is not None and self.group_of(*parsed) is not None

    def source_group(self, address: str) -> str | None:
        """The group of a local source (first match wins, else ``other``); None if not local."""
        parsed = parse_address(address)
        return None if parsed is None else self.group_of(*parsed)
