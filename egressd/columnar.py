"""Whole-column lookups for the engine's batch path: groups, special ranges, distinct addresses.

IPv4 rows are answered by one ``searchsorted`` over numpy copies of the classifier's and the
special ranges' tables; the few IPv6 rows go through the same tables one distinct address at
a time. Every answer is per row, in the batch's order. Nothing here does I/O.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from egressd.classify import EgressClassifier
from egressd.columns import U64, FlowColumns, is_v4, v4_values
from egressd.enrich import DestinationLabels
from egressd.enrich.special import special_table

I64 = npt.NDArray[np.int64]
Mask = npt.NDArray[np.bool_]

#: sums of this many uint64 values each below this bound cannot overflow 64 bits
_U64_LIMIT = 2**64


class ColumnClassifier:
    """The classifier's answers for address columns: a group code per row (-1 = not local),
    and whether a row's address is in a special range. ``groups[code]`` names the group."""

    __slots__ = ("_classifier", "_special4", "_v4_codes", "_v4_starts", "groups")

    def __init__(self, classifier: EgressClassifier) -> None:
        self._classifier = classifier
        starts, answers = classifier.table(4)
        self.groups: list[str] = []
        codes: list[int] = []
        for answer in answers:
            if answer is None:
                codes.append(-1)
                continue
            if answer not in self.groups:
                self.groups.append(answer)
            codes.append(self.groups.index(answer))
        self._v4_starts = np.array(starts, dtype=np.uint64)
        self._v4_codes = np.array(codes, dtype=np.int64)
        special_starts, special_ends = special_table(4)
        self._special4 = (
            np.array(special_starts, dtype=np.uint64),
            np.array(special_ends, dtype=np.uint64),
        )

    def _code(self, name: str | None) -> int:
        if name is None:
            return -1
        if name not in self.groups:  # a group only IPv6 prefixes name
            self.groups.append(name)
        return self.groups.index(name)

    def group_codes(self, hi: U64, lo: U64, v4: Mask) -> I64:
        """The group code of each row's address (-1 where it is not local)."""
        if v4.all():  # (the common batch: no masks to gather and scatter through)
            index = np.searchsorted(self._v4_starts, v4_values(lo), side="right") - 1
            codes: I64 = self._v4_codes[index]
            return codes
        codes = np.empty(len(hi), dtype=np.int64)
        values = v4_values(lo[v4])
        codes[v4] = self._v4_codes[np.searchsorted(self._v4_starts, values, side="right") - 1]
        rows = np.flatnonzero(~v4)
        memo: dict[int, int] = {}
        group_of = self._classifier.group_of
        for row, h, low in zip(rows.tolist(), hi[rows].tolist(), lo[rows].tolist(), strict=True):
            value = (h << 64) | low
            code = memo.get(value)
            if code is None:
                code = memo[value] = self._code(group_of(6, value))
            codes[row] = code
        return codes

    def special(self, hi: U64, lo: U64, v4: Mask) -> Mask:
        """Which rows' addresses are in a special-purpose range (private, documentation...)."""
        starts, ends = self._special4
        every = bool(v4.all())
        values = v4_values(lo if every else lo[v4])
        index = np.searchsorted(starts, values, side="right") - 1
        inside = index >= 0
        inside[inside] = values[inside] <= ends[index[inside]]
        if every:  # (the common batch: no scatter through the mask)
            return inside
        out = np.zeros(len(hi), dtype=np.bool_)
        out[v4] = inside
        six_starts, six_ends = special_table(6)
        rows = np.flatnonzero(~v4)
        for row, h, low in zip(rows.tolist(), hi[rows].tolist(), lo[rows].tolist(), strict=True):
            value = (h << 64) | low
            i = bisect_right(six_starts, value) - 1
            out[row] = i >= 0 and value <= six_ends[i]
        return out


def distinct_addresses(hi: U64, lo: U64) -> tuple[I64, I64]:
    """(first row of each distinct address in order of first appearance, and each row's index
    into that list)."""
    if not hi.any():
        return distinct_values(lo)
    # (a stable sort of the two halves: np.unique over rows of pairs compares them as
    # bytes, 10-30 times slower; each run's first row is its smallest index here too)
    n = len(hi)
    order = np.lexsort((lo, hi))
    ordered_hi, ordered_lo = hi[order], lo[order]
    change = np.empty(n, dtype=np.bool_)
    change[0] = True
    np.not_equal(ordered_hi[1:], ordered_hi[:-1], out=change[1:])
    change[1:] |= ordered_lo[1:] != ordered_lo[:-1]
    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.cumsum(change) - 1
    return _by_first_appearance(order[np.flatnonzero(change)], inverse)


def distinct_values(values: U64) -> tuple[I64, I64]:
    """:func:`distinct_addresses` of one uint64 column."""
    if len(values) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    # np.unique's return_index needs a stable sort; any sort will do when each first row is
    # its run's smallest index (several times faster on repeated values)
    n = len(values)
    low = int(values.min())
    row_bits = (n - 1).bit_length()
    packed = (int(values.max()) - low).bit_length() + row_bits <= 63
    ordered: npt.NDArray[Any]
    if packed:
        # (value, row) as one number (IPv4 addresses fit): a plain sort, faster than an
        # argsort, orders the rows, and each value's first row leads its run
        numbers = (values - np.uint64(low)).astype(np.int64) << row_bits
        numbers |= np.arange(n, dtype=np.int64)
        numbers.sort()
        order = numbers & ((1 << row_bits) - 1)
        ordered = numbers >> row_bits
    else:
        order = np.argsort(values)
        ordered = values[order]
    change = np.empty(n, dtype=np.bool_)
    change[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=change[1:])
    if change.all():  # every value new to the batch (a scan): each row is its own first
        rows = np.arange(n, dtype=np.int64)
        return rows, rows.copy()
    inverse = np.empty(n, dtype=np.int64)
    heads = np.flatnonzero(change)
    first = order[heads] if packed else np.minimum.reduceat(order, heads)
    inverse[order] = np.cumsum(change) - 1
    return _by_first_appearance(first, inverse)


def _by_first_appearance(first: I64, inverse: I64) -> tuple[I64, I64]:
    """Distinct values numbered by first appearance (so callers meet addresses in the order
    records do), from their first rows and each row's number in any order."""
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return first[order].astype(np.int64), rank[inverse]


def exact_total(values: U64) -> int:
    """The sum of a uint64 column as a Python integer, exact whatever the values."""
    if len(values) == 0:
        return 0
    if int(values.max()) < _U64_LIMIT // len(values):
        return int(values.sum())
    return sum(values.tolist())


def summable(values: U64) -> bool:
    """Whether any sum of the column's values fits in uint64 (numpy sums are exact then)."""
    return len(values) == 0 or int(values.max()) < _U64_LIMIT // len(values)


#: labels of distinct addresses, given as (high, low) halves: the engine's labeler, as
#: (label objects, each address's index into them), the objects numbered in the order the
#: addresses first use them (see :func:`numbered`)
LabelsOf = Callable[[U64, U64], tuple[list[DestinationLabels], I64]]


def numbered(found: list[DestinationLabels]) -> tuple[list[DestinationLabels], I64]:
    """``found`` (one label object per address) as :data:`LabelsOf` answers it: the
    distinct objects (by identity; labelers intern them) in order of first use, and each
    address's index into them."""
    objects = np.fromiter(map(id, found), dtype=np.uint64, count=len(found))
    firsts, by_object = distinct_values(objects)
    return [found[i] for i in firsts.tolist()], by_object


class ClassifiedBatch:
    """One batch of plausible flows, classified: per row its kind, the group and destination
    code of its bucket key, and the numbers summed into it. Rows keep the batch's order.

    A row *touches* a bucket when it is egress (local source, outside destination: keyed by
    the source's group and the destination's labels) or ingress from a labelled outside
    source (keyed by the local destination's group and the source's labels).
    """

    __slots__ = (
        "_row_sums",
        "columns",
        "dest",
        "egress",
        "egress_bytes",
        "egress_count",
        "ends",
        "group",
        "groups",
        "ingress_bytes",
        "ingress_count",
        "internal_bytes",
        "internal_count",
        "labels",
        "packets",
        "sizes",
        "small",
        "special_count",
        "touch",
        "transit_count",
    )

    def __init__(
        self,
        columns: FlowColumns,
        classifier: ColumnClassifier,
        labels_of: LabelsOf,
        small_limit: int,
    ) -> None:
        self.columns = columns
        src_hi, src_lo, dst_hi, dst_lo = (
            columns.src_hi,
            columns.src_lo,
            columns.dst_hi,
            columns.dst_lo,
        )
        src_v4 = is_v4(src_hi, src_lo)
        dst_v4 = is_v4(dst_hi, dst_lo)
        src_group = classifier.group_codes(src_hi, src_lo, src_v4)
        dst_group = classifier.group_codes(dst_hi, dst_lo, dst_v4)
        src_local = src_group >= 0
        dst_local = dst_group >= 0
        outside = ~dst_local
        outside[outside] = ~classifier.special(dst_hi[outside], dst_lo[outside], dst_v4[outside])
        egress = src_local & outside
        ingress = ~src_local & dst_local
        n = len(columns)
        self.egress_count = int(np.count_nonzero(egress))
        #: every row egress (the common batch): no rows to pick out by mask or index below
        every = 0 < n == self.egress_count
        labelled = ingress.copy()
        if not every:
            labelled[ingress] = ~classifier.special(
                src_hi[ingress], src_lo[ingress], src_v4[ingress]
            )
        touch = egress | labelled
        self.egress = egress
        self.touch = touch
        self.groups = list(classifier.groups)
        self.group = src_group if every else np.where(egress, src_group, dst_group)
        sizes = columns.bytes
        internal = src_local & dst_local
        self.egress_bytes = exact_total(sizes if every else sizes[egress])
        self.ingress_count = int(np.count_nonzero(ingress))
        self.ingress_bytes = exact_total(sizes[ingress])
        self.internal_count = int(np.count_nonzero(internal))
        self.internal_bytes = exact_total(sizes[internal])
        self.transit_count = int(np.count_nonzero(~src_local & ~dst_local))
        self.special_count = len(columns) - self.egress_count - self.internal_count
        self.special_count -= self.ingress_count + self.transit_count
        # One label lookup per distinct labelled address: the destination of egress, the
        # source of ingress.
        rows = None if every else np.flatnonzero(touch)
        self.dest = np.full(n, -1, dtype=np.int64)
        self.labels: list[DestinationLabels] = []
        if rows is None or len(rows):
            if rows is None:
                hi, lo = dst_hi, dst_lo
            else:
                pick = egress[rows]
                hi = np.where(pick, dst_hi[rows], src_hi[rows])
                lo = np.where(pick, dst_lo[rows], src_lo[rows])
            first, inverse = distinct_addresses(hi, lo)
            objects, by_object = labels_of(hi[first], lo[first])
            # Merge equal labels of distinct objects (a destination named by two data
            # sources), keeping the first as records would.
            codes: dict[DestinationLabels, int] = {}
            object_code = np.array(
                [codes.setdefault(labels, len(codes)) for labels in objects], dtype=np.int64
            )
            self.labels = list(codes)
            if rows is None:
                self.dest = object_code[by_object][inverse]
            else:
                self.dest[rows] = object_code[by_object][inverse]
        self.ends = columns.time_end
        if summable(sizes) and summable(columns.packets):
            self.sizes: npt.NDArray[Any] = sizes
            self.packets: npt.NDArray[Any] = columns.packets
        else:  # sums past 2**64: Python integers (a flood of huge claims; exact, slower)
            self.sizes = np.array(sizes.tolist(), dtype=object)
            self.packets = np.array(columns.packets.tolist(), dtype=object)
        # size < packets * small_limit, exactly: a product past 64 bits exceeds any size.
        packets = columns.packets
        ceiling = (2**64 - 1) // small_limit
        fits = packets <= np.uint64(ceiling)
        product = np.where(fits, packets, 0) * np.uint64(small_limit)
        self.small = ~fits | (sizes < product)
        self._row_sums: RowSums | None = None

    def row_sums(self) -> RowSums:
        """What the sparse row path (:meth:`egressd.pipeline.Engine._account_rows`) reads of
        each row, made for the whole batch on its first use: a block then gathers its rows'
        numbers with one index instead of one per column (a sparse block is a few hundred
        rows, where numpy's cost per call is most of the work)."""
        made = self._row_sums
        if made is None:
            made = self._row_sums = RowSums(self)
        return made


class RowSums:
    """A :class:`ClassifiedBatch`'s rows as the sparse row path sums them per key.

    ``codes``: each row's key within its interval, group x ``len(labels)`` + destination.
    ``table``: one row of numbers per quantity, a column per batch row: egress bytes,
    egress flows, egress packets, egress bytes in small-packet flows, ingress bytes, and 1
    (rows), in the dtype of the batch's sums (Python integers when they may pass 64 bits).
    ``talkers``: per row (source, destination, bytes), when no address of the batch needs
    more than 64 bits (else None: the caller joins the halves).
    """

    __slots__ = ("codes", "table", "talkers")

    def __init__(self, batch: ClassifiedBatch) -> None:
        self.codes: I64 = batch.group * len(batch.labels)
        self.codes += batch.dest
        sizes, egress = batch.sizes, batch.egress
        egress_sizes = sizes * egress
        self.table: npt.NDArray[Any] = np.stack(
            (
                egress_sizes,
                egress.astype(np.int64).astype(sizes.dtype),
                batch.packets * egress,
                egress_sizes * batch.small,
                sizes * ~egress,
                np.ones(len(sizes), dtype=sizes.dtype),
            )
        )
        columns = batch.columns
        self.talkers: npt.NDArray[Any] | None = None
        if not (columns.src_hi.any() or columns.dst_hi.any()):
            self.talkers = np.column_stack((columns.src_lo, columns.dst_lo, sizes))
