"""Country of an address from data embedded in egressd (RIR delegations via ``iptocc``).

Needs no download and no file: the default, and the fallback when mmdb files are missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import count

import iptocc
import numpy as np
import numpy.typing as npt

from egressd.enrich import UNKNOWN_COUNTRY, DestinationLabels


class EmbeddedCountryLabeler:
    """Country labels from the embedded RIR data. Interns one labels object per country."""

    __slots__ = ("_by_country", "_by_result", "has_asn", "has_regions")

    #: labels depend on the address alone, from data that never changes while running
    embedded_only = True

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

    def label_numbered(
        self, addresses: Sequence[str]
    ) -> tuple[list[DestinationLabels], npt.NDArray[np.int64]]:
        """:meth:`label_many` as the engine's batch path takes it: the labels of each
        distinct answer in order of first use, and each address's index into them."""
        answers, index = numbered_answers(self.countries(addresses))
        return [self._labels(country) for country in answers], index

    def label_many(self, addresses: Sequence[str]) -> list[DestinationLabels]:
        countries = self.countries(addresses)
        by_result = self._by_result
        try:
            return list(map(by_result.__getitem__, countries))
        except KeyError:  # a result not met before: intern its labels, then map them all
            for country in set(countries).difference(by_result):
                by_result[country] = self._labels(country)
            return list(map(by_result.__getitem__, countries))


_BAR = ord("|")


def numbered_answers(
    answers: list[str | None],
) -> tuple[list[str | None], npt.NDArray[np.int64]]:
    """The distinct ``answers`` in order of first appearance, and each one's index into them.

    Country codes are two characters: joined with ``|`` between them they become one byte
    string whose pairs numpy numbers without hashing a fresh string per address (the cost
    of a dict here). The join proves its own layout (``3n - 1`` characters with a ``|``
    every third and no other: every answer is two characters, none of them ``|``), and the
    rows read as "no answer" are checked to be None; anything else is numbered by a dict.
    """
    n = len(answers)
    joined = "|".join([answer or "\0\0" for answer in answers])
    if n == 0 or len(joined) != 3 * n - 1 or joined.count("|") != n - 1 or not joined.isascii():
        return _numbered_by_dict(answers)
    raw = np.frombuffer(joined.encode("ascii") + b"|", dtype=np.uint8).reshape(n, 3)
    if not (raw[:, 2] == _BAR).all():  # answers of other lengths whose sum is 2n
        return _numbered_by_dict(answers)
    codes = (raw[:, 0].astype(np.uint16) << 8) | raw[:, 1]
    if any(answers[i] is not None for i in np.flatnonzero(codes == 0).tolist()):
        return _numbered_by_dict(answers)  # an answer of two NULs: not a country code
    values, first = np.unique(codes, return_index=True)
    order = np.argsort(first)
    number = np.empty(1 << 16, dtype=np.int64)
    number[values[order]] = np.arange(len(order), dtype=np.int64)
    return [answers[i] for i in first[order].tolist()], number[codes]


def _numbered_by_dict(
    answers: list[str | None],
) -> tuple[list[str | None], npt.NDArray[np.int64]]:
    """:func:`numbered_answers` of any answers, by dict operations."""
    distinct = list(dict.fromkeys(answers))
    number = dict(zip(distinct, count(), strict=False))
    index = np.fromiter(map(number.__getitem__, answers), dtype=np.int64, count=len(answers))
    return distinct, index
