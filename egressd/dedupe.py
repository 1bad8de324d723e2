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
import operator
import struct
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, cast

import numpy as np
import numpy.typing as npt

from egressd.columns import FlowColumns, address_value
from egressd.model import FlowRecord

#: an entry is forgotten when no record of its key ended within this much event time of the
#: latest: the longest common active timeout (30 minutes) twice over, plus clock skew
EXPIRY = 65 * 60.0
#: flow keys held at most (about 530 bytes each with two exporters: 53 MB at the bound)
MAX_KEYS = 100_000
#: exporters one key tracks; records of further exporters of that key count in full (a
#: flood of forged exporter names for one key costs memory no more than this)
MAX_EXPORTERS_PER_KEY = 8

#: source high, low, destination high, low, protocol << 32 | source port << 16 | destination
#: port: five native unsigned 64-bit integers side by side (one object a key, fast to hash)
FlowKey = bytes
_KEY = struct.Struct("=5Q")
_KEY_DTYPE = np.dtype((np.void, _KEY.size))


class DuplicateCounters(Protocol):
    """Where the stage counts what it did (the engine's statistics)."""

    duplicate_records: int
    duplicate_bytes: int
    duplicate_evictions: int


#: A flow key's entry is a list: [bytes counted, latest end seen, exporter, its total,
#: exporter, its total, ...] (no dict per key: most keys have one or two exporters). Positions:
_COUNTED, _LAST, _FIRST_EXPORTER = 0, 1, 2
_last_of = operator.itemgetter(_LAST)
_PROTO_SHIFT, _PORT_SHIFT = np.uint64(32), np.uint64(16)


class DuplicateExports:
    """The duplicate stage (see the module docstring). Not thread-safe."""

    __slots__ = (
        "_first",
        "_next_sweep",
        "_now",
        "_order",
        "_order_next",
        "_table",
        "engaged",
        "expiry",
        "max_keys",
    )

    def __init__(self, expiry: float = EXPIRY, max_keys: int = MAX_KEYS) -> None:
        self.expiry = expiry
        self.max_keys = max_keys
        #: the one exporter seen while not engaged (None before any record)
        self._first: str | None = None
        #: whether records of a second exporter arrived: every record is then looked at
        self.engaged = False
        #: flow key -> entry
        self._table: dict[FlowKey, list[Any]] = {}
        #: The table's order (what eviction breaks ties of latest ends by) is kept as
        #: numbers, not as the dict's own order, so that making room deletes the keys it
        #: evicts instead of building a dict of the rest in that order (most of its cost):
        #: an order number for each of the table's first ``len(_order)`` keys, in the
        #: dict's order; the keys after them came later, numbered on from ``_order_next``.
        self._order: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._order_next = 0
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
        # One bytes object a record (the five key columns side by side: hashed once, compared
        # by memcmp) rather than a tuple of five ints.
        stack = np.empty((n, 5), dtype=np.uint64)
        stack[:, 0] = columns.src_hi
        stack[:, 1] = columns.src_lo
        stack[:, 2] = columns.dst_hi
        stack[:, 3] = columns.dst_lo
        ports = stack[:, 4]
        ports[:] = columns.proto
        ports <<= _PROTO_SHIFT
        ports |= columns.src_port.astype(np.uint64) << _PORT_SHIFT
        ports |= columns.dst_port
        keys = cast(list[FlowKey], stack.view(_KEY_DTYPE).ravel().tolist())
        each: Iterable[str] = (
            itertools.repeat(columns.exporter, n)
            if columns.exporters is None
            else columns.exporters.tolist()
        )
        sizes = columns.bytes.tolist()
        where, counts = self._count(keys, each, sizes, columns.time_end.tolist(), stats)
        if not where:
            return columns
        at = np.array(where, dtype=np.intp)
        share = np.array(counts, dtype=np.uint64)
        keep = share > 0
        if not keep.all():
            at_kept, share = at[keep], share[keep]
        else:
            at_kept = at
        nbytes = columns.bytes.copy()
        packets = columns.packets.copy()
        if len(at_kept):
            old = packets[at_kept]
            size = nbytes[at_kept]  # every one above its share (so above 0)
            if int(old.max()) * int(share.max()) + int(size.max()) < 1 << 64:
                packets[at_kept] = (old * share + size - np.uint64(1)) // size
            else:  # beyond uint64: Python's integers
                packets[at_kept] = [
                    _share(p, c, s)
                    for p, c, s in zip(old.tolist(), share.tolist(), size.tolist(), strict=True)
                ]
            nbytes[at_kept] = share
        made = columns.take(slice(None))
        made.bytes = nbytes
        made.packets = packets
        if len(at_kept) == len(at):
            return made
        rows = np.ones(n, dtype=np.bool_)
        rows[at[~keep]] = False
        return made.take(rows)

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
        keys = [
            _KEY.pack(*_halves(address_value(r.src)), *_halves(address_value(r.dst)),
                      (r.proto & 0xFF) << 32 | (r.src_port & 0xFFFF) << 16 | r.dst_port & 0xFFFF)
            for r in valid
        ]  # fmt: skip
        sizes = [record.bytes for record in valid]
        where, counts = self._count(keys, [r.exporter for r in valid], sizes, ends, stats)
        if not where:
            return records
        out: list[FlowRecord | None] = list(records)
        for index, counted in zip(where, counts, strict=True):
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
            entries = list(table.values())
            last = np.fromiter(map(_last_of, entries), np.float64, len(entries))
            kept = last >= cutoff  # (NaN compares False)
            if not kept.all():
                self._order = self._orders(len(entries))[kept]
                self._table = dict(itertools.compress(table.items(), kept.tolist()))
        return len(self._table)

    def _orders(self, count: int) -> npt.NDArray[np.int64]:
        """The order numbers of the table's ``count`` keys, in the dict's order."""
        held = self._order
        later = count - len(held)
        if not later:
            return held
        start = self._order_next
        self._order_next = start + later
        self._order = np.concatenate((held, np.arange(start, start + later, dtype=np.int64)))
        return self._order

    def _make_room(self, stats: DuplicateCounters) -> None:
        """The table is full: forget expired keys, then the least recently reported tenth
        (sorting once per tenth of the bound, not once per key). The table's order (see
        ``_order``) is kept when forgetting expired keys is enough, else it becomes that of
        a stable sort by latest end, latest first."""
        table = self._table
        keep = self.max_keys - max(self.max_keys // 10, 1)
        keys = list(table)
        entries = list(table.values())
        count = len(entries)
        last = np.fromiter(map(_last_of, entries), np.float64, count)
        order = self._orders(count)
        # The keys an expiry sweep keeps (NaN compares False there as here), in dict order.
        live = np.flatnonzero(last >= self._now - self.expiry)
        if len(live) <= keep:
            if len(live) < count:
                gone = np.ones(count, dtype=np.bool_)
                gone[live] = False
                self._drop(keys, gone)
                self._order = order[live]
            return
        stats.duplicate_evictions += len(live) - keep
        # Latest first, ties in table order: stable sorts, in C (Python's sort of a full
        # table's items cost several microseconds for each key it made room for). Then the
        # others are deleted: building a dict of the kept 90% in their new order cost twice
        # the sorts.
        by_order = live[np.argsort(order[live], kind="stable")]
        ends = last[by_order]
        if ends.min() > 0.0:  # (none NaN, none -0.0): their bits sort as they do, as integers
            latest = by_order[np.argsort(-ends.view(np.int64), kind="stable")[:keep]]
        else:
            latest = by_order[np.argsort(-ends, kind="stable")[:keep]]
        gone = np.ones(count, dtype=np.bool_)
        gone[latest] = False
        self._drop(keys, gone)
        ranks = np.empty(count, dtype=np.int64)
        ranks[latest] = np.arange(keep, dtype=np.int64)
        self._order = ranks[~gone]
        self._order_next = keep

    def _drop(self, keys: list[FlowKey], gone: npt.NDArray[np.bool_]) -> None:
        """Delete the keys (the table's, in its order) where ``gone`` is set."""
        remove = self._table.__delitem__
        for at in np.flatnonzero(gone).tolist():
            remove(keys[at])

    def _ordered(self) -> list[FlowKey]:
        """The table's keys in its order (for tests)."""
        keys = list(self._table)
        return [keys[at] for at in np.argsort(self._orders(len(keys)), kind="stable").tolist()]

    def _count(
        self,
        keys: Iterable[FlowKey],
        exporters: Iterable[str],
        sizes: Sequence[int],
        ends: Iterable[float],
        stats: DuplicateCounters,
    ) -> tuple[list[int], list[int]]:
        """The indexes of the records that do not count in full, and the bytes of each that
        count."""
        table = self._table
        find = table.get
        where: list[int] = []
        counts: list[int] = []
        removed = removed_bytes = 0
        most = _FIRST_EXPORTER + 2 * MAX_EXPORTERS_PER_KEY
        bound = self.max_keys
        for index, key, exporter, size, end in zip(itertools.count(), keys, exporters, sizes, ends):
            entry = find(key)
            if entry is None:
                if len(table) >= bound:
                    self._make_room(stats)
                    table = self._table
                    find = table.get
                table[key] = [size, end, exporter, size]
                continue
            if end > entry[_LAST]:
                entry[_LAST] = end
            # The first and second exporter of a key at fixed places (most keys have no more).
            if entry[_FIRST_EXPORTER] == exporter:
                total = entry[3] + size
                entry[3] = total
            elif len(entry) == 4:
                entry += (exporter, size)
                total = size
            elif entry[4] == exporter:
                total = entry[5] + size
                entry[5] = total
            else:
                try:
                    at = entry.index(exporter, _FIRST_EXPORTER + 4) + 1
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
                share = total - counted
                if share == size:
                    continue
            else:
                share = 0
                removed += 1
            where.append(index)
            counts.append(share)
            removed_bytes += size - share
        stats.duplicate_records += removed
        stats.duplicate_bytes += removed_bytes
        return where, counts


def _halves(value: int) -> tuple[int, int]:
    return value >> 64, value & 0xFFFF_FFFF_FFFF_FFFF


def _share(packets: int, counted: int, size: int) -> int:
    """The packets of a record of ``size`` bytes of which ``counted`` count (rounded up)."""
    return -(-packets * counted // size) if size else packets
