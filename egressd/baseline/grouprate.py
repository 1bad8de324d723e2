"""How much a source group sends in its busy intervals: the scale its byte floors follow.

Sans-IO. Fed each closed interval's egress bytes per group (event time), it keeps per group a
slowly moving high quantile (:data:`RATE_QUANTILE`) of the group's total egress per interval,
tracked in log2 bytes by stochastic approximation: an interval above the estimate raises it by
``RATE_QUANTILE`` steps, one at or below lowers it by ``1 - RATE_QUANTILE`` steps, so it
settles where a tenth of the group's active intervals lie above it (its busy hours, not its
nights). A step is :data:`STEP_PER_DAY` log2 units a day of intervals (larger over a group's
first intervals, so it finds its level within hours). A tenth of intervals above the estimate
is what it takes to move it: one transfer, however large, moves it by one step (under 1%), and
raising it tenfold takes days of traffic ten times the group's usual.

A rule's absolute byte floor (sensible for a network of some size) is multiplied by
:meth:`GroupRates.factor`: a group whose busy intervals carry many times the reference has
routine bursts many times larger, and a floor that grows with it. :meth:`GroupRates.shrink`
is the other direction: a group whose busy intervals carry a fraction of the reference has its
floors cut to that fraction down to :data:`ROOT_BELOW`, and below it to the square root of
(that fraction times :data:`ROOT_BELOW`), never below a lowest factor; judged per
:data:`REFERENCE_INTERVAL` of time whatever the configured interval, so a window's floor
(bytes per hour or day) means the same share of the group's traffic with 1-minute or 5-minute
intervals. Why the square root: what a group sends routinely to places outside its habits
(one person's upload to a conference site, a vendor's support portal) does not shrink with
its head count, so a floor that followed a tiny group's egress all the way down would page on
every such upload; a floor that stopped shrinking at a fixed share would let a tiny office
lose a tenth of its busy hour to a country it never used. A group with a hundredth of the
reference's egress gets floors at 4.5% (not 1%, nor 20%): a growing share of its own busy
hour the smaller it is (1/60 of it at a fifth of the reference, a tenth at 1/200).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

#: the quantile of a group's per-interval egress that stands for its scale
RATE_QUANTILE = 0.9
#: log2 units the estimate may move in a day of intervals (once past its first ones)
STEP_PER_DAY = 4.0
#: over a group's first intervals the step is at least this divided by (intervals + this)
_EARLY = 4.0
_DAY = 86400.0
#: :meth:`GroupRates.shrink` reads a group's rate as bytes per this many seconds (the default
#: interval), so its reference does not change meaning with the configured interval
REFERENCE_INTERVAL = 300.0
#: :meth:`GroupRates.shrink` follows a group's rate in proportion down to this share of the
#: reference, and more slowly (the square root) below it
ROOT_BELOW = 0.2


class GroupRates:
    """Per group: a decaying high quantile of its egress bytes per closed interval."""

    __slots__ = ("levels",)

    def __init__(self) -> None:
        #: group -> [log2 bytes estimate, intervals observed]
        self.levels: dict[str, list[float]] = {}

    def observe(self, totals: Mapping[str, int], interval: float) -> None:
        """Add one closed interval: ``totals`` maps each group that sent to its bytes."""
        base = STEP_PER_DAY * interval / _DAY
        levels = self.levels
        for group, size in totals.items():
            if size <= 0:
                continue
            x = math.log2(size)
            state = levels.get(group)
            if state is None:
                levels[group] = [x, 1.0]
                continue
            level, n = state
            step = max(base, _EARLY / (n + _EARLY))
            if x > level:
                level += step * RATE_QUANTILE
                state[0] = min(level, x)
            else:
                level -= step * (1.0 - RATE_QUANTILE)
                state[0] = max(level, x)
            state[1] = n + 1.0

    def rate(self, group: str) -> float:
        """The group's busy-interval egress in bytes (0 before its first interval)."""
        state = self.levels.get(group)
        return 0.0 if state is None else float(2.0 ** state[0])

    def factor(self, group: str, scale_above: int) -> float:
        """How many times a floor grows for ``group``: rate / ``scale_above``, at least 1.

        ``scale_above`` 0 turns scaling off (always 1).
        """
        if scale_above <= 0:
            return 1.0
        state = self.levels.get(group)
        if state is None:
            return 1.0
        return max(1.0, float(2.0 ** state[0]) / scale_above)

    def shrink(self, group: str, reference: int, lowest: float, interval: float) -> float:
        """How far a floor shrinks for a small ``group``: its busy-interval egress per
        :data:`REFERENCE_INTERVAL` over ``reference`` (the ratio), down to :data:`ROOT_BELOW`;
        below it sqrt(ratio x :data:`ROOT_BELOW`); within [``lowest``, 1].

        ``interval`` is the length of the intervals :meth:`observe` was fed. ``reference`` 0
        turns shrinking off, and a group without a rate yet keeps the configured floors
        (always 1). Sending raises the rate: nothing a group sends lowers its floors.
        """
        if reference <= 0:
            return 1.0
        state = self.levels.get(group)
        if state is None:
            return 1.0
        ratio = float(2.0 ** state[0]) * (REFERENCE_INTERVAL / interval) / reference
        return min(1.0, max(lowest, ratio, math.sqrt(ROOT_BELOW * ratio)))

    def to_json(self) -> dict[str, list[float]]:
        return {group: [level, n] for group, (level, n) in self.levels.items()}

    @classmethod
    def from_json(cls, data: object) -> GroupRates:
        """Read :meth:`to_json`'s form; entries that are not two finite numbers are skipped."""
        rates = cls()
        if not isinstance(data, dict):
            return rates
        for group, entry in data.items():
            if not (isinstance(group, str) and isinstance(entry, list) and len(entry) == 2):
                continue
            level, n = entry
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in entry):
                continue
            level, n = float(level), float(n)
            # 2^80 bytes in one interval is beyond any link: a larger value is not a rate
            if not (math.isfinite(level) and math.isfinite(n)) or not 0 <= level <= 80 or n < 1:
                continue
            rates.levels[group] = [level, n]
        return rates
