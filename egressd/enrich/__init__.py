"""Destination intelligence: what country, cloud region and ASN an address belongs to.

The core asks a :class:`DestinationLabeler` for :class:`DestinationLabels`; the embedded
country data answers by default, mmdb files and region maps refine it when configured.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

#: ISO 3166 user-assigned code used when no data source knows the country
UNKNOWN_COUNTRY = "ZZ"


@dataclass(frozen=True, slots=True)
class DestinationLabels:
    """Labels of one destination. Empty region / zero ASN mean "not known or not configured".

    Two labels are equal when they name the same destination (country, region, ASN), which
    is what baselines, windows and alerts are keyed by; the organisation's name and the data
    source that answered describe it and take no part (labels restored from a state file
    must meet the same destination labelled afresh).
    """

    country: str = UNKNOWN_COUNTRY
    region: str = ""
    asn: int = 0
    as_org: str = field(default="", compare=False)
    #: which data source answered for the country ("embedded", "mmdb:<file>", ...)
    source: str = field(default="embedded", compare=False)
    #: stable text form for state files and the API: ``CN``, ``US|aws/us-east-1|16509``
    #: (an attribute, not a property: closing an interval reads it for every key)
    key: str = field(default="", init=False, repr=False, compare=False)
    # The hash, computed once and kept as a call that returns it (see below the class).
    _hash: Callable[[], int] = field(default=int, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        key = (
            self.country
            if not self.region and not self.asn
            else f"{self.country}|{self.region}|{self.asn or ''}"
        )
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "_hash", hash(key).__index__)

    @classmethod
    def from_key(cls, key: str) -> DestinationLabels:
        country, _, rest = key.partition("|")
        region, _, asn = rest.partition("|")
        return cls(country=country, region=region, asn=int(asn) if asn else 0)

    def describe(self) -> str:
        """Human form for alert text: ``CN, aws/cn-north-1, AS16509 Amazon``."""
        parts = [self.country]
        if self.region:
            parts.append(self.region)
        if self.asn:
            parts.append(f"AS{self.asn}" + (f" {self.as_org}" if self.as_org else ""))
        return ", ".join(parts)


# Labels are dict keys (in (group, labels) tuples) wherever intervals are summed and closed:
# a dozen hashes per key and interval. The generated dataclass hash builds a tuple per call,
# and a ``__hash__`` method returning a stored number still runs Python for each; the class's
# ``__hash__`` is the slot holding the number's own ``__index__`` instead, so CPython's hash
# calls that without running any Python. The same numbers as ``hash(key)``.
DestinationLabels.__hash__ = DestinationLabels._hash  # type: ignore[misc,assignment,method-assign]


class DestinationLabeler(Protocol):
    """Labels destination addresses. Implementations are pure lookups (no network I/O)."""

    #: True when region maps are configured (alerts and metrics then carry ``dst_region``)
    has_regions: bool
    #: True when an ASN database is configured (alerts and metrics then carry ``dst_asn``)
    has_asn: bool

    def label(self, address: str) -> DestinationLabels:
        """Labels of one address (text form). Never raises for a malformed address."""
        ...

    def label_many(self, addresses: Sequence[str]) -> list[DestinationLabels]:
        """Labels of many addresses, in order; batch lookups where the data source allows."""
        ...


@runtime_checkable
class NumberedLabeler(DestinationLabeler, Protocol):
    """A labeler that can answer the engine's batch path without its destination cache:
    when :attr:`embedded_only` holds, labels are a function of the address alone (the
    embedded country data, which never changes while running)."""

    @property
    def embedded_only(self) -> bool:
        """Whether the embedded country data alone answers (may change when data is reloaded)."""
        ...

    def label_numbered(
        self, addresses: Sequence[str]
    ) -> tuple[list[DestinationLabels], npt.NDArray[np.int64]]:
        """The labels of each distinct answer in order of first use, and each address's
        index into them (IPv4 dotted quads or canonical IPv6 texts)."""
        ...


@runtime_checkable
class ParsedLabeler(DestinationLabeler, Protocol):
    """A labeler that takes addresses the engine has already parsed."""

    def label_parsed(
        self, parsed: Sequence[tuple[int, int]], texts: Sequence[str]
    ) -> list[DestinationLabels]:
        """:meth:`label_many` of ``texts``, given also as (version, value); ``parsed`` may be
        empty when :attr:`has_regions` is false (only region maps need it)."""
        ...
