"""Exporters that proved themselves: decodable data from one address over half a minute.

A forged UDP source address costs a sender nothing, so the decoder's shared tables (templates,
buffered sets, options domains) and its shared template budget serve proven exporters first.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Collection

from egressd.cache import BoundedCache

#: an exporter is proven once flows of its were decoded (NetFlow v5, or v9/IPFIX with their
#: template held) from datagrams received this many seconds apart: a sender forging ever-new
#: addresses never is
PROVEN_AFTER = 30.0
#: proven exporters held at most; past it, those holding no template (all expired or
#: evicted) make room
MAX_PROVEN = 4_096
#: exporters waiting to be proven (their first decoded flows' time), the older half dropped
_CANDIDATES = 4_096


class ProvenExporters:
    """Which exporters are proven: ``exporter in proven.held`` (a plain dict, cheap on hot
    paths)."""

    __slots__ = ("_candidates", "_next_sweep", "held", "refused")

    def __init__(self) -> None:
        self.held: dict[str, None] = {}
        self._candidates: BoundedCache[str, float] = BoundedCache(_CANDIDATES)
        self._next_sweep = 0.0
        #: exporters that qualified while :data:`MAX_PROVEN` busy ones were held
        self.refused = 0

    def __len__(self) -> int:
        return len(self.held)

    def saw_data(self, exporter: str, now: float, holds: Callable[[str], bool]) -> bool:
        """Flows of ``exporter`` (not proven) were decoded at ``now``; whether that made it
        proven. ``holds(exporter)``: whether the decoder holds a template of it."""
        first = self._candidates.get(exporter)
        if first is None or now < first:
            self._candidates.store(exporter, now)
            return False
        if now - first < PROVEN_AFTER:
            return False
        held = self.held
        if len(held) >= MAX_PROVEN:
            if now >= self._next_sweep:  # at most once a minute: it is a scan of them all
                self._next_sweep = now + 60.0
                for idle in [e for e in held if not holds(e)]:
                    del held[idle]
            if len(held) >= MAX_PROVEN:
                self.refused += 1
                return False
        del self._candidates.data[exporter]
        held[exporter] = None
        return True

    def restore(self, exporters: object) -> int:
        """Hold ``exporters`` (a state file's list of them) as proven; how many were taken.

        Without it, every exporter was unproven for :data:`PROVEN_AFTER` after a restart,
        and a flood from forged addresses started then shared the queue's reserve, the
        decoder's tables and its template budget with them. Only address texts are taken,
        at most :data:`MAX_PROVEN` in all; anything else in the list is ignored."""
        held = self.held
        taken = 0
        for exporter in saved_exporters(exporters, MAX_PROVEN - len(held), skip=held):
            held[exporter] = None
            taken += 1
        return taken

    def saved(self) -> list[str]:
        """The proven exporters, for the state file."""
        return list(self.held)


def saved_exporters(
    exporters: object, limit: int = MAX_PROVEN, skip: Collection[str] = ()
) -> list[str]:
    """The exporters a state file's list holds: address texts only (anything else in the
    list is ignored), each once and none of ``skip``, at most ``limit``."""
    if not isinstance(exporters, list):
        return []
    out: dict[str, None] = {}
    for exporter in exporters:
        if len(out) >= limit:
            break
        if (
            isinstance(exporter, str)
            and exporter not in out
            and exporter not in skip
            and _is_address(exporter)
        ):
            out[exporter] = None
    return list(out)


def _is_address(text: str) -> bool:
    if len(text) > 45:  # the longest IPv6 text form
        return False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, text)
        except OSError:
            continue
        return True
    return False
