"""Count a flow once when two exporters report it (see docs/formats.md, "Records reported by
two exporters").

A core and an edge router (or a firewall behind a router) that both export the same traffic
make every byte of it count twice. The rule: per flow key (source, destination, protocol,
source port, destination port), count the largest running total any one exporter reported;
a record counts only by how much it raises that largest total. What counts is never below
any single exporter's own total for a key, so a router failing over to the other, different
active timeouts (one exporter's two records against the other's one), a clock minutes behind
or sampling on one of them lose nothing; a forged record can only add (bytes it claims early
count early).

The stage does nothing per record while it has seen a single exporter (one source, one
router: the common deployment): each batch costs one comparison of its exporter. Records of
a second exporter engage it for good (flows in flight then may count twice once, until their
entries fill). Engaged, it holds one entry per flow key seen within :data:`EXPIRY` of event
time (at most ``max_keys``, the least recently reported evicted). A key expired or evicted
counts in full at its next record: the failure is the double count of old, never an
under-count. Packets follow bytes: a record counted in part keeps the same share of its
packets (rounded up); a record whose bytes are all duplicates is dropped.

No I/O here; the table is not saved in the state file (after a restart, flows in flight may
count twice until their entries expire).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

import numpy as np

from egressd.columns import FlowColumns, address_value
from egressd.model import FlowRecord

#: an entry is forgotten when no record of its key ended within this much event time of the
#: latest: the longest common active timeout (30 minutes) twice over, plus clock skew
EXPIRY = 65 * 60.0
#: flow keys held at most (about 630 bytes each with two exporters: 63 MB at the bound)
MAX_KEYS = 100_000
#: exporters one key tracks; records of further exporters of that key count in full (a
#: flood of forged exporter names for one key costs memory no more than this)
MAX_EXPORTERS_PER_KEY = 8

#: (source high, low, destination high, low, protocol << 32 | source port << 16 | destination
#: port)
FlowKey = tuple[int, int, int, int, int]


class DuplicateCounters(Protocol):
    """Where the stage counts what it did (the engine's statistics)."""

    duplicate_records: int
    duplicate_bytes: int
    duplicate_evictions: int


#: A flow key's entry is a list: [bytes counted, latest end seen, exporter, its total,
#: exporter, its total, ...] (no dict per key: most keys have one or two exporters). Positions:
_COUNTED, _LAST, _FIRST_EXPORTER = 0, 1, 2
_PROTO_SHIFT, _PORT_SHIFT = np.uint64(32), np.uint64(16)


class DuplicateExports:
    """The duplicate stage (see the module docstring). Not thread-safe."""

    __slots__ = ("_first", "_next_sweep", "_now", "_table", "engaged", "expiry", "max_keys")

    def __init__(self, expiry: float = EXPIRY, max_keys: int = MAX_KEYS) -> None:
        self.expiry = expiry
        self.max_keys = max_keys
        #: the one exporter seen while not engaged (None before any record)
        self._first: str | None = None
        #: whether records of a second exporter arrived: every record is then looked at
        self.engaged = False
        #: flow key -> entry
        self._table: dict[FlowKey, list[Any]] = {}
        #: the latest record end seen (bounded by the engine's future limit)
        self._now = -math.inf
        #: event time of the next sweep for expired keys
        self._next_sweep = -math.inf

    def __len__(self) -> int:
        return len(self._table)

    def _engages(self, exporters: Iterable[str]) -> bool:
        """Whether records of ``exporters`` engage the stage (or it is engaged already)."""
        if self.engaged:
            return True
        for exporter in exporters:
            if self._first is None:
                self._first = exporter
            elif exporter != self._first:
                self.engaged = True
                return True
        return False

    def columns(self, columns: FlowColumns, limit: float, stats: DuplicateCounters) -> FlowColumns:
        """``columns`` with what other exporters already counted taken out (the same object
        when nothing is). Ends later than ``limit`` count as ``limit`` for expiry."""
        n = len(columns)
        if not self.engaged:
            exporters = columns.exporters
            if n == 0:
                return columns
            if exporters is None:
                if columns.exporter == self._first or not self._engages((columns.exporter,)):
                    return columns
            elif not self._engages(dict.fromkeys(exporters.tolist())):
                return columns
        if n == 0:
            return columns
        self._advance(float(columns.time_end.max()), limit, stats)
        ports = columns.proto.astype(np.uint64) << _PROTO_SHIFT
        ports |= columns.src_port.astype(np.uint64) << _PORT_SHIFT
        ports |= columns.dst_port
        keys = zip(
            columns.src_hi.tolist(),
            columns.src_lo.tolist(),
            columns.dst_hi.tolist(),
            columns.dst_lo.tolist(),
            ports.tolist(),
            strict=True,
        )
        each: Iterable[str] = (
            itertools.repeat(columns.exporter, n)
            if columns.exporters is None
            else columns.exporters.tolist()
        )
        sizes = columns.bytes.tolist()
        changed = self._count(keys, each, sizes, columns.time_end.tolist(), stats)
        if not changed:
            return columns
        nbytes = columns.bytes.copy()
        packets = columns.packets.copy()
        keep = np.ones(n, dtype=np.bool_)
        for index, counted in changed:
            if counted == 0:
                keep[index] = False
                continue
            nbytes[index] = counted
            packets[index] = _share(int(packets[index]), counted, sizes[index])
        made = columns.take(slice(None))
        made.bytes = nbytes
        made.packets = packets
        return made if keep.all() else made.take(keep)

    def records(
        self,
        records: Sequence[FlowRecord],
        limit: float,
        stats: DuplicateCounters,
        plausible: Callable[[FlowRecord], bool],
    ) -> Sequence[FlowRecord]:
        """:meth:`columns` of records (the same list when nothing is taken out). Records
        ``plausible`` rejects pass untouched (the engine skips them): a forged count the
        engine refuses must not raise a key's total either."""
        if not self._engages(dict.fromkeys(record.exporter for record in records)):
            return records
        positions = [index for index, record in enumerate(records) if plausible(record)]
        if not positions:
            return records
        valid = [records[index] for index in positions]
        ends = [record.time_end for record in valid]
        finite = [end for end in ends if math.isfinite(end)]
        if finite:
            self._advance(max(finite), limit, stats)
        keys = (
            (*_halves(address_value(r.src)), *_halves(address_value(r.dst)),
             (r.proto & 0xFF) << 32 | (r.src_port & 0xFFFF) << 16 | r.dst_port & 0xFFFF)
            for r in valid
        )  # fmt: skip
        sizes = [record.bytes for record in valid]
        changed = self._count(keys, [r.exporter for r in valid], sizes, ends, stats)
        if not changed:
            return records
        out: list[FlowRecord | None] = list(records)
        for index, counted in changed:
            record = valid[index]
            out[positions[index]] = (
                FlowRecord(
                    record.time_start, record.time_end, record.src, record.dst, counted,
                    _share(record.packets, counted, record.bytes), record.proto,
                    record.src_port, record.dst_port, record.exporter,
                )
                if counted
                else None
            )  # fmt: skip
        return [record for record in out if record is not None]

    def _advance(self, end: float, limit: float, stats: DuplicateCounters) -> None:
        """Event time reached ``end`` (at most ``limit``): every quarter of the expiry, forget
        the keys without a record that ended within the expiry (so a key lives at most 1.25
        expiries past its last record)."""
        now = min(end, limit)
        if not now > self._now:  # also NaN
            return
        self._now = now
        if now >= self._next_sweep:
            self._next_sweep = now + self.expiry / 4
            self._forget(now - self.expiry)

    def _forget(self, cutoff: float) -> int:
        """Forget the keys whose last record ended before ``cutoff``; how many are left."""
        table = self._table
        if table:
            self._table = {key: e for key, e in table.items() if e[_LAST] >= cutoff}
        return len(self._table)

    def _make_room(self, stats: DuplicateCounters) -> None:
        """The table is full: forget expired keys, then the least recently reported tenth
        (sorting once per tenth of the bound, not once per key)."""
        table = self._table
        keep = self.max_keys - max(self.max_keys // 10, 1)
        if self._forget(self._now - self.expiry) <= keep:
            return
        table = self._table
        order = sorted(table.items(), key=lambda item: item[1][_LAST], reverse=True)
        stats.duplicate_evictions += len(order) - keep
        self._table = dict(order[:keep])

    def _count(
        self,
        keys: Iterable[FlowKey],
        exporters: Iterable[str],
        sizes: Sequence[int],
        ends: Iterable[float],
        stats: DuplicateCounters,
    ) -> list[tuple[int, int]]:
        """(index, bytes that count) of every record that does not count in full."""
        table = self._table
        find = table.get
        changed: list[tuple[int, int]] = []
        removed = removed_bytes = 0
        most = _FIRST_EXPORTER + 2 * MAX_EXPORTERS_PER_KEY
        for index, key, exporter, size, end in zip(itertools.count(), keys, exporters, sizes, ends):
            entry = find(key)
            if entry is None:
                if len(table) >= self.max_keys:
                    self._make_room(stats)
                    table = self._table
                    find = table.get
                table[key] = [size, end, exporter, size]
                continue
            if end > entry[_LAST]:
                entry[_LAST] = end
            if entry[_FIRST_EXPORTER] == exporter:
                total = entry[3] + size
                entry[3] = total
            else:
                try:
                    at = entry.index(exporter, _FIRST_EXPORTER + 2) + 1
                except ValueError:
                    if len(entry) >= most:
                        entry[_COUNTED] += size  # counts in full, untracked
                        continue
                    entry += (exporter, size)
                    total = size
                else:
                    total = entry[at] + size
                    entry[at] = total
            counted = entry[_COUNTED]
            if total > counted:
                entry[_COUNTED] = total
                counts = total - counted
                if counts == size:
                    continue
            else:
                counts = 0
            changed.append((index, counts))
            removed_bytes += size - counts
            if counts == 0:
                removed += 1
        stats.duplicate_records += removed
        stats.duplicate_bytes += removed_bytes
        return changed


def _halves(value: int) -> tuple[int, int]:
    return value >> 64, value & 0xFFFF_FFFF_FFFF_FFFF


def _share(packets: int, counted: int, size: int) -> int:
    """The packets of a record of ``size`` bytes of which ``counted`` count (rounded up)."""
    return -(-packets * counted // size) if size else packets
