"""Which destinations a group is expected to send to: configured policy or learned sets.

The most specific label configured decides: a cloud region (when the group lists regions
of that provider), then the ASN (when the group lists ASNs), then the country. A group
without ``expected_countries`` learns its countries during the learning period.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from egressd.config import GroupConfig
from egressd.enrich import DestinationLabels


@dataclass(slots=True)
class LearnedDestinations:
    """Countries one group sent to during its learning period (bytes per country)."""

    started: float
    countries: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        return {"started": self.started, "countries": dict(self.countries)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> LearnedDestinations:
        countries = data.get("countries", {})
        started = data.get("started")
        if not isinstance(countries, dict) or not isinstance(started, int | float):
            raise ValueError("malformed learned destinations")
        return cls(float(started), {str(k): int(v) for k, v in countries.items()})


class ExpectedDestinations:
    """Answers "is this destination expected for this group?" at a given event time."""

    __slots__ = ("_groups", "learn_min_bytes", "learned", "learning")

    def __init__(
        self, groups: tuple[GroupConfig, ...], learning: float, learn_min_bytes: int
    ) -> None:
        self._groups = {g.name: g for g in groups}
        self.learning = learning
        self.learn_min_bytes = learn_min_bytes
        self.learned: dict[str, LearnedDestinations] = {}

    def reconfigure(
        self, groups: tuple[GroupConfig, ...], learning: float, learn_min_bytes: int
    ) -> None:
        self._groups = {g.name: g for g in groups}
        self.learning = learning
        self.learn_min_bytes = learn_min_bytes

    def observe(self, group: str, labels: DestinationLabels, byte_count: int, when: float) -> None:
        """Feed one interval's bytes; only groups that learn their countries keep anything."""
        policy = self._groups.get(group)
        if policy is not None and policy.expected_countries is not None:
            return
        learned = self.learned.get(group)
        if learned is None:
            learned = self.learned[group] = LearnedDestinations(started=when)
        if when - learned.started < self.learning:
            learned.countries[labels.country] = (
                learned.countries.get(labels.country, 0) + byte_count
            )

    def is_learning(self, group: str, when: float) -> bool:
        policy = self._groups.get(group)
        if policy is not None and policy.expected_countries is not None:
            return False
        learned = self.learned.get(group)
        return learned is None or when - learned.started < self.learning

    def expected_countries(self, group: str) -> frozenset[str] | None:
        policy = self._groups.get(group)
        if policy is not None and policy.expected_countries is not None:
            return policy.expected_countries
        learned = self.learned.get(group)
        if learned is None:
            return None
        return frozenset(c for c, b in learned.countries.items() if b >= self.learn_min_bytes)

    def is_expected(self, group: str, labels: DestinationLabels, when: float) -> bool:
        """True when ``labels`` is an expected destination for ``group`` at ``when``.

        During a group's learning period everything is expected (nothing to compare with).
        """
        policy = self._groups.get(group)
        if policy is not None:
            if labels.region and policy.expected_regions is not None:
                provider = labels.region.partition("/")[0]
                regions = policy.expected_regions
                if labels.region in regions or f"{provider}/*" in regions:
                    return True
                if any(r.partition("/")[0] == provider for r in regions):
                    return False
            if labels.asn and policy.expected_asns is not None:
                return labels.asn in policy.expected_asns
            if policy.expected_countries is not None:
                return labels.country in policy.expected_countries
        if self.is_learning(group, when):
            return True
        learned = self.learned[group]
        return learned.countries.get(labels.country, 0) >= self.learn_min_bytes

    def to_json(self) -> dict[str, object]:
        return {g: learned.to_json() for g, learned in self.learned.items()}

    def load_json(self, data: dict[str, object]) -> None:
        learned = {}
        for group, item in data.items():
            if not isinstance(item, dict):
                raise ValueError(f"malformed learned destinations for {group!r}")
            learned[group] = LearnedDestinations.from_json(item)
        self.learned = learned
