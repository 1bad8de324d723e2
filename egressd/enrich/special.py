"""Special-purpose address ranges (private, loopback, documentation, ...) that are never egress.

A destination in one of these ranges is not "foreign": the pipeline treats it as non-egress.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right

from egressd.enrich.address import parse_address

#: (network, kind) — more specific entries first, so :func:`special_kind` names the narrowest
#: kind (255.255.255.255 is "broadcast", not "reserved"). Sources: RFC 6890 / IANA registries.
SPECIAL_RANGES: tuple[tuple[str, str], ...] = (
    ("255.255.255.255/32", "broadcast"),
    ("0.0.0.0/32", "unspecified"),
    ("0.0.0.0/8", "this-network"),
    ("10.0.0.0/8", "private"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("100.64.0.0/10", "cgnat"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("192.0.0.0/24", "protocol-assignments"),
    ("192.0.2.0/24", "documentation"),
    ("198.51.100.0/24", "documentation"),
    ("203.0.113.0/24", "documentation"),
    ("198.18.0.0/15", "benchmarking"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("100::/64", "discard"),
    ("2001:2::/48", "benchmarking"),
    ("2001:db8::/32", "documentation"),
    ("3fff::/20", "documentation"),
    ("fc00::/7", "private"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)


def _intervals(version: int) -> tuple[list[int], list[int], list[str]]:
    """Non-overlapping sorted intervals; the first listed (narrowest) kind wins on overlap."""
    claimed: list[tuple[int, int, str]] = []
    for text, kind in SPECIAL_RANGES:
        net = ipaddress.ip_network(text)
        if net.version != version:
            continue
        lo, hi = int(net.network_address), int(net.broadcast_address)
        # Cut out what earlier (more specific) entries already claimed.
        pieces = [(lo, hi)]
        for c_lo, c_hi, _ in claimed:
            next_pieces = []
            for p_lo, p_hi in pieces:
                if c_hi < p_lo or c_lo > p_hi:
                    next_pieces.append((p_lo, p_hi))
                    continue
                if p_lo < c_lo:
                    next_pieces.append((p_lo, c_lo - 1))
                if c_hi < p_hi:
                    next_pieces.append((c_hi + 1, p_hi))
            pieces = next_pieces
        claimed.extend((p_lo, p_hi, kind) for p_lo, p_hi in pieces)
    claimed.sort()
    return [c[0] for c in claimed], [c[1] for c in claimed], [c[2] for c in claimed]


_TABLES = {4: _intervals(4), 6: _intervals(6)}


def special_table(version: int) -> tuple[list[int], list[int]]:
    """Sorted starts and (inclusive) ends of the special ranges of ``version``, disjoint; for
    lookups over many addresses at once."""
    starts, ends, _ = _TABLES[version]
    return starts, ends


def special_kind_of(version: int, value: int) -> str | None:
    """Kind of special range holding the parsed address, or None for a global address."""
    starts, ends, kinds = _TABLES[version]
    i = bisect_right(starts, value) - 1
    if i >= 0 and value <= ends[i]:
        return kinds[i]
    return None


def special_kind(address: str) -> str | None:
    """``"10.1.2.3"`` → ``"private"``; global or malformed addresses → None."""
    parsed = parse_address(address)
    if parsed is None:
        return None
    return special_kind_of(*parsed)


def is_special(address: str) -> bool:
    """True when ``address`` is private, loopback, link-local, multicast, documentation, ...

    Malformed text is not special (the caller decides what to do with it). IPv4-mapped IPv6
    is judged as the IPv4 address it carries.
    """
    parsed = parse_address(address)
    if parsed is None:
        return False
    starts, ends, _ = _TABLES[parsed[0]]
    value = parsed[1]
    i = bisect_right(starts, value) - 1
    return i >= 0 and value <= ends[i]
