"""Wall time that never steps back, for the bounds wall time puts on event time.

A host clock stepped back (by hand, by NTP, a VM resumed from a snapshot) would otherwise pull
those bounds behind the flows: every record counted as late, and nothing paged until the clock
caught up again, hours or days later.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class SteadyWall:
    """``wall()``, or more: once read, it goes on from the last reading at the pace of the
    monotonic clock when the wall clock steps back. A step forward is taken as it comes (a
    clock put right, or one that was behind at boot)."""

    __slots__ = ("_last", "_monotonic", "_since", "_wall", "stepped_back")

    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._last: float | None = None
        self._since = 0.0
        #: readings at which the wall clock was behind where it had been carried to
        self.stepped_back = 0

    def __call__(self) -> float:
        now, since = self._wall(), self._monotonic()
        if self._last is not None:
            carried = self._last + max(since - self._since, 0.0)
            if carried > now:
                now = carried
                self.stepped_back += 1
        self._last, self._since = now, since
        return now
