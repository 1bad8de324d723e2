"""Country of an address from data embedded in egressd (RIR delegations via ``iptocc``).

Needs no download and no file: the default, and the fallback when mmdb files are missing.
"""

from __future__ import annotations

from collections.abc import Sequence

import iptocc

from egressd.enrich import UNKNOWN_COUNTRY, DestinationLabels


class EmbeddedCountryLabeler:
    """Country labels from the embedded RIR data. Interns one labels object per country."""

    __slots__ = ("_by_country", "_by_result", "has_asn", "has_regions")

    def __init__(self) -> None:
        self.has_regions = False
        self.has_asn = False
        self._by_country: dict[str, DestinationLabels] = {}
        #: the labels of each result of the lookup seen so far (None: no country)
        self._by_result: dict[str | None, DestinationLabels] = {}

    def _labels(self, country: str | None) -> DestinationLabels:
        code = country or UNKNOWN_COUNTRY
        labels = self._by_country.get(code)
        if labels is None:
            labels = self._by_country[code] = DestinationLabels(country=code, source="embedded")
        return labels

    def country(self, address: str) -> str | None:
        try:
            result = iptocc.country_code(address)
        except (ValueError, TypeError):
            return None
        return result if isinstance(result, str) else None

    def countries(self, addresses: Sequence[str]) -> list[str | None]:
        try:
            return list(iptocc.country_code(addresses))
        except (ValueError, TypeError):
            return [self.country(a) for a in addresses]

    def label(self, address: str) -> DestinationLabels:
        return self._labels(self.country(address))

    def label_many(self, addresses: Sequence[str]) -> list[DestinationLabels]:
        countries = self.countries(addresses)
        by_result = self._by_result
        try:
            return list(map(by_result.__getitem__, countries))
        except KeyError:  # a result not met before: intern its labels, then map them all
            for country in set(countries).difference(by_result):
                by_result[country] = self._labels(country)
            return list(map(by_result.__getitem__, countries))
