"""Which destinations a group is expected to send to: configured policy or learned sets.

The most specific label configured decides: a cloud region (when the group lists regions
of that provider), then the ASN (when the group lists ASNs), then the country. A group
without ``expected_countries`` learns its countries during the learning period.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from egressd.config import GroupConfig
from egressd.enrich import DestinationLabels

#: countries a group's learned set holds at most on load: more than every two-letter code
MAX_LEARNED_COUNTRIES = 1024


@dataclass(slots=True)
class LearnedDestinations:
    """Countries one group sent to during its learning period.

    Per country: bytes, the intervals it was used in, the days it was used on (and the last
    such day): one flow is not a habit, so a country is learned only with sustained use.
    """

    started: float
    countries: dict[str, int] = field(default_factory=dict)
    #: country -> [intervals used, days used, last day used (days since started)]
    use: dict[str, list[int]] = field(default_factory=dict)
    #: what ``learn_min_bytes`` was multiplied by for this group, fixed when its learned set
    #: was first judged after learning (the group's floor factor then); None until then
    factor: float | None = None

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {
            "started": self.started,
            "countries": dict(self.countries),
            "use": {c: list(u) for c, u in self.use.items()},
        }
        if self.factor is not None:
            data["factor"] = self.factor
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> LearnedDestinations:
        countries = data.get("countries", {})
        started = data.get("started")
        use = data.get("use")
        if not isinstance(countries, dict) or not isinstance(started, int | float):
            raise ValueError("malformed learned destinations")
        learned = cls(float(started), {str(k): int(v) for k, v in countries.items()})
        if isinstance(use, dict):
            learned.use = {str(k): [int(x) for x in v][:3] for k, v in use.items()}
        else:
            # A state written before use was counted: keep what it learned as learned.
            learned.use = {c: [1 << 30, 1 << 30, -1] for c in learned.countries}
        factor = data.get("factor")
        # A state without one (or from before it was kept) takes the group's factor anew.
        if (
            isinstance(factor, int | float)
            and not isinstance(factor, bool)
            and math.isfinite(factor)
            and 0 < factor <= 1
        ):
            learned.factor = float(factor)
        return learned


class ExpectedDestinations:
    """Answers "is this destination expected for this group?" at a given event time.

    A learned country needs ``learn_min_bytes`` times the group's factor: :attr:`shrink`
    (the pipeline sets it to the factor the unexpected-destination floors of the group are
    multiplied by), read when the group's learned set is first judged after its learning and
    kept with it (state files included), so a small group learns what it used at the scale its
    floors judge it by. Without :attr:`shrink`, or for a group it has no factor for, 1.
    """

    __slots__ = (
        "_frozen",
        "_groups",
        "learn_min_bytes",
        "learn_min_days",
        "learn_min_intervals",
        "learned",
        "learning",
        "shrink",
    )

    def __init__(
        self,
        groups: tuple[GroupConfig, ...],
        learning: float,
        learn_min_bytes: int,
        learn_min_intervals: int = 1,
        learn_min_days: int = 1,
    ) -> None:
        self._groups = {g.name: g for g in groups}
        self.learned: dict[str, LearnedDestinations] = {}
        #: learned sets of groups whose learning is over (they no longer change)
        self._frozen: dict[str, frozenset[str]] = {}
        self.learning = learning
        self.learn_min_bytes = learn_min_bytes
        self.learn_min_intervals = learn_min_intervals
        self.learn_min_days = learn_min_days
        #: group -> the factor (at most 1) its learn_min_bytes is multiplied by; None when
        #: the group has none yet
        self.shrink: Callable[[str], float | None] | None = None
        self.reconfigure(groups, learning, learn_min_bytes, learn_min_intervals, learn_min_days)

    def reconfigure(
        self,
        groups: tuple[GroupConfig, ...],
        learning: float,
        learn_min_bytes: int,
        learn_min_intervals: int = 1,
        learn_min_days: int = 1,
    ) -> None:
        self._groups = {g.name: g for g in groups}
        self._frozen = {}
        self.learning = learning
        self.learn_min_bytes = learn_min_bytes
        # A learning period shorter than the demand cannot meet it: ask for what fits.
        self.learn_min_days = max(1, min(learn_min_days, math.ceil(learning / 86400.0)))
        self.learn_min_intervals = learn_min_intervals

    def _factor(self, group: str, learned: LearnedDestinations, keep: bool) -> float:
        """What ``group``'s learn_min_bytes is multiplied by (kept once ``keep`` is set)."""
        if learned.factor is not None:
            return learned.factor
        factor = None if self.shrink is None else self.shrink(group)
        if factor is None:
            return 1.0
        factor = min(1.0, factor)
        if keep:
            learned.factor = factor
        return factor

    def _learned(self, learned: LearnedDestinations, country: str, factor: float) -> bool:
        if learned.countries.get(country, 0) < self.learn_min_bytes * factor:
            return False
        use = learned.use.get(country)
        return (
            use is not None and use[0] >= self.learn_min_intervals and use[1] >= self.learn_min_days
        )

    def observe(self, group: str, labels: DestinationLabels, byte_count: int, when: float) -> None:
        """Feed one interval's bytes; only groups that learn their countries keep anything."""
        policy = self._groups.get(group)
        if policy is not None and policy.expected_countries is not None:
            return
        learned = self.learned.get(group)
        if learned is None:
            learned = self.learned[group] = LearnedDestinations(started=when)
        if when - learned.started < self.learning and byte_count > 0:
            country = labels.country
            learned.countries[country] = learned.countries.get(country, 0) + byte_count
            day = int((when - learned.started) // 86400.0)
            use = learned.use.get(country)
            if use is None:
                learned.use[country] = [1, 1, day]
            else:
                use[0] += 1
                if day != use[2]:
                    use[1] += 1
                    use[2] = day

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
        factor = self._factor(group, learned, keep=False)
        return frozenset(c for c in learned.countries if self._learned(learned, c, factor))

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
        return labels.country in self._learned_countries(group)

    def country_rule(self, group: str, when: float) -> frozenset[str] | None:
        """:meth:`is_expected` for labels with neither region nor ASN, as a set of countries.

        Such labels (the embedded data's, and every label without region maps and an ASN
        database) are expected exactly when their country is in the set; None means all of
        them are (the group is learning). Detectors ask once per group and interval instead
        of once per destination: the answer cannot change within an interval.
        """
        policy = self._groups.get(group)
        if policy is not None and policy.expected_countries is not None:
            return policy.expected_countries
        if self.is_learning(group, when):
            return None
        return self._learned_countries(group)

    def _learned_countries(self, group: str) -> frozenset[str]:
        """The countries ``group`` learned (kept until what it learned changes)."""
        frozen = self._frozen.get(group)
        if frozen is None:
            learned = self.learned[group]
            factor = self._factor(group, learned, keep=True)
            frozen = self._frozen[group] = frozenset(
                c for c in learned.countries if self._learned(learned, c, factor)
            )
        return frozen

    def to_json(self) -> dict[str, object]:
        return {g: learned.to_json() for g, learned in self.learned.items()}

    def load_json(self, data: dict[str, object], until: float = math.inf) -> int:
        """Restore what :meth:`to_json` wrote, held to what learning writes; returns how many
        entries (countries, groups) were left out.

        A group's learning started at a finite time not after ``until`` (the saved event
        time; a later start would keep the group learning, where every destination is
        expected, until the clock passed it: set back to ``until``). Its countries carry
        byte counts not below zero and whole use counts (intervals, days, last day; a
        shorter one would stop every evaluation of the group), at most :data:`MAX_LEARNED_COUNTRIES`
        (the heaviest). Groups the configuration does not name (a renamed or removed
        group's) are kept up to as many as it names, plus one.
        """
        learned: dict[str, LearnedDestinations] = {}
        dropped = 0
        for group, item in data.items():
            if not isinstance(item, dict):
                raise ValueError(f"malformed learned destinations for {group!r}")
            entry = LearnedDestinations.from_json(item)
            if not math.isfinite(entry.started):
                dropped += 1
                continue
            entry.started = min(entry.started, until)
            usable = {
                country: size
                for country, size in entry.countries.items()
                if size >= 0 and _counts(entry.use.get(country))
            }
            if len(usable) > MAX_LEARNED_COUNTRIES:
                usable = dict(sorted(usable.items(), key=lambda kv: -kv[1])[:MAX_LEARNED_COUNTRIES])
            dropped += len(entry.countries) - len(usable)
            entry.countries = usable
            entry.use = {c: u for c, u in entry.use.items() if c in usable}
            learned[str(group)] = entry
        unnamed = [group for group in learned if group not in self._groups]
        spare = len(self._groups) + 1
        if len(unnamed) > spare:
            # the latest started: the most recently renamed or removed
            unnamed.sort(key=lambda group: learned[group].started)
            for group in unnamed[: len(unnamed) - spare]:
                del learned[group]
                dropped += 1
        self._frozen = {}
        self.learned = learned
        return dropped


def _counts(use: list[int] | None) -> bool:
    """Whether a learned country's use is as learning writes it: intervals and days used
    (not below zero) and the last day used."""
    return use is not None and len(use) == 3 and use[0] >= 0 and use[1] >= 0
