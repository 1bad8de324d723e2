"""Data sets that arrived before their template, held until it comes or they grow too old.

Bounded by a count cap (oldest dropped first) and an age limit; both losses are counted.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass

from egressd.decode.netflow.stats import NetflowStats
from egressd.decode.netflow.templated import DatagramContext
from egressd.decode.netflow.templates import TemplateKey


@dataclass(slots=True)
class PendingSet:
    """One buffered data set body, with the header facts it must be decoded against."""

    key: TemplateKey
    body: bytes
    ctx: DatagramContext
    arrived: float


class PendingSets:
    """Buffered sets in arrival order, indexed by the template they wait for.

    When full, an exporter holding at least its fair share of the buffer (total / exporters)
    drops its own oldest set, any other the oldest set of an exporter not proven (``proven``,
    see :mod:`.proven`), else the largest holder's: one exporter sending data for templates
    it never announces cannot push out another's sets, nor can many forged addresses push
    out a proven exporter's.
    """

    __slots__ = (
        "_by_exporter",
        "_by_key",
        "_proven",
        "_serial",
        "_sets",
        "_unproven",
        "max_sets",
        "stats",
        "timeout",
    )

    def __init__(
        self,
        max_sets: int,
        timeout: float,
        stats: NetflowStats,
        proven: Container[str] = frozenset(),
    ) -> None:
        self.max_sets = max(0, max_sets)
        self.timeout = timeout
        self.stats = stats
        self._sets: dict[int, PendingSet] = {}  # serial -> set; insertion order = arrival
        self._by_key: dict[TemplateKey, list[int]] = {}
        self._by_exporter: dict[str, dict[int, None]] = {}  # serials, oldest first
        self._serial = 0
        self._proven = proven
        #: serials of the sets of exporters not proven, oldest first
        self._unproven: dict[int, None] = {}

    def __len__(self) -> int:
        return len(self._sets)

    def add(self, key: TemplateKey, body: bytes, ctx: DatagramContext, now: float) -> None:
        if self.max_sets == 0:
            self.stats.pending_dropped += 1
            return
        while len(self._sets) >= self.max_sets:
            self._drop_for(key[0])
            self.stats.pending_dropped += 1
        self._serial += 1
        self._sets[self._serial] = PendingSet(key, body, ctx, now)
        self._by_key.setdefault(key, []).append(self._serial)
        self._by_exporter.setdefault(key[0], {})[self._serial] = None
        if key[0] not in self._proven:
            self._unproven[self._serial] = None
        self.stats.pending_sets += 1

    def take(self, key: TemplateKey) -> list[PendingSet]:
        """Remove and return, oldest first, every set waiting for ``key``."""
        serials = self._by_key.pop(key, None)
        if not serials:
            return []
        own = self._by_exporter[key[0]]
        for serial in serials:
            del own[serial]
        if not own:
            del self._by_exporter[key[0]]
        unproven = self._unproven
        for serial in serials:
            unproven.pop(serial, None)
        return [self._sets.pop(serial) for serial in serials]

    def prove(self, exporter: str) -> None:
        """``exporter`` was proven: its sets are no longer dropped before others'."""
        unproven = self._unproven
        for serial in self._by_exporter.get(exporter, ()):
            unproven.pop(serial, None)

    def sweep(self, now: float) -> None:
        """Drop sets older than the timeout (their template is not coming)."""
        while self._sets:
            serial = next(iter(self._sets))
            if now - self._sets[serial].arrived <= self.timeout:
                break
            self._drop(serial)
            self.stats.pending_expired += 1

    def _drop_for(self, exporter: str) -> None:
        holders = self._by_exporter
        own = holders.get(exporter)
        if own is not None and len(own) * len(holders) >= len(self._sets):
            self._drop(next(iter(own)))
        elif self._unproven:  # (not a scan of every holder per set of a forged-address flood)
            self._drop(next(iter(self._unproven)))
        else:
            largest = max(holders.values(), key=len)
            self._drop(next(iter(largest)))

    def _drop(self, serial: int) -> None:
        pending = self._sets.pop(serial)
        self._unproven.pop(serial, None)
        key = pending.key
        serials = self._by_key[key]
        serials.remove(serial)  # the oldest of its key, so this is the list's head
        if not serials:
            del self._by_key[key]
        own = self._by_exporter[key[0]]
        del own[serial]
        if not own:
            del self._by_exporter[key[0]]
