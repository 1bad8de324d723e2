"""NetFlow v5 / v9 / IPFIX data sets decoded straight into columns, without record objects.

A fixed-length data template gets a numpy structured dtype once (a :class:`ColumnPlan`, kept
on its :class:`~egressd.decode.netflow.templates.Layout`); a whole data set is then one
``np.frombuffer`` and a few array operations. The meaning is exactly the record path's
(``templated.decode_data_set``, ``v5.decode_v5``): the same flows in the same order, the
same times, sampling and address choice, counts saturating at 2**64 - 1 as
:class:`~egressd.columns.FlowColumns` asks. A layout this path cannot express
(variable-length fields, sampled frames, sysUpTime times wider than 32 bits) gives None and
the caller decodes records instead. Nothing here does I/O.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from egressd.columns import U64, V4_MARK, FlowColumns, texts_column
from egressd.decode.netflow import fields as F
from egressd.decode.netflow.templated import DatagramContext, ExporterOptions
from egressd.decode.netflow.templates import Layout
from egressd.decode.netflow.v5 import HEADER as V5_HEADER
from egressd.errors import DecodeError

F64 = np.float64
_MAX = 2**64 - 1
_MAX64 = np.uint64(_MAX)
_LOW32 = np.uint64(0xFFFF_FFFF)
_WIDTHS = {1: ">u1", 2: ">u2", 4: ">u4", 8: ">u8"}
_ADDRESS_SLOTS = frozenset({F.SRC4, F.SRC6, F.DST4, F.DST6})

#: the fields of a v5 record this decoder reads (see v5.RECORD)
V5_DTYPE = np.dtype(
    {
        "names": ["src", "dst", "packets", "octets", "first", "last", "sport", "dport", "proto"],
        "formats": [">u4", ">u4", ">u4", ">u4", ">u4", ">u4", ">u2", ">u2", "u1"],
        "offsets": [0, 4, 16, 20, 24, 28, 32, 34, 38],
        "itemsize": 48,
    }
)


class ColumnPlan:
    """How to read one fixed layout's data sets as columns: a dtype and where each slot is.

    ``fields`` maps a slot to its dtype field name (IPv6 addresses: the name of the high
    half; the low half is that name with ``l`` appended); ``odd`` holds the integer slots
    of reduced-size encodings (3, 5, 6 or 7 bytes), read as byte arrays and joined.

    Two slots of one width that are computed alike (start and end times of one kind, IPv4
    source and destination, bytes and packets) are read as one (2, n) array whose rows are
    the two slots (a :data:`Pair`): one array operation for both instead of one each, which
    is most of the cost at the 20 to 30 records a datagram carries.
    """

    __slots__ = (
        "addresses",
        "counts",
        "dtype",
        "end_kind",
        "fields",
        "holds",
        "odd",
        "record_len",
        "start_kind",
        "times",
    )

    def __init__(self, layout: Layout) -> None:
        names: list[str] = []
        formats: list[Any] = []
        offsets: list[int] = []
        self.fields: dict[int, str] = {}
        self.odd: frozenset[int] = frozenset()
        odd: set[int] = set()
        offset = 0
        for length, slot in layout.walk:
            if slot >= 0:
                name = f"s{slot}"
                self.fields[slot] = name
                if slot in (F.SRC6, F.DST6):
                    names += [name, name + "l"]
                    formats += [">u8", ">u8"]
                    offsets += [offset, offset + 8]
                else:
                    names.append(name)
                    offsets.append(offset)
                    if slot in (F.SRC4, F.DST4) or length in _WIDTHS:
                        formats.append(_WIDTHS[length])
                    else:
                        formats.append(("u1", (length,)))
                        odd.add(slot)
            offset += length
        self.odd = frozenset(odd)
        self.dtype = np.dtype(
            {"names": names, "formats": formats, "offsets": offsets, "itemsize": offset}
        )
        self.start_kind = layout.start_kind
        self.end_kind = layout.end_kind
        self.record_len = offset
        where = dict(zip(names, offsets, strict=True))
        formats_of = {name: np.dtype(fmt) for name, fmt in zip(names, formats, strict=True)}
        kinds = {F.START: self.start_kind, F.END: self.end_kind}

        def pair(first: int, second: int) -> Pair | None:
            a, b = self.fields.get(first), self.fields.get(second)
            if a is None or b is None or first in odd or second in odd:
                return None
            if formats_of[a] != formats_of[b] or kinds.get(first, 0) != kinds.get(second, 0):
                return None
            return (formats_of[a], where[a], where[b] - where[a])

        self.times = pair(F.START, F.END)
        self.counts = pair(F.BYTES, F.PACKETS)
        fields = self.fields
        v4_only = F.SRC6 not in fields and F.DST6 not in fields
        self.addresses = pair(F.SRC4, F.DST4) if v4_only else None
        #: whether a set can wait to be read with later ones (no per-record sampling rate,
        #: which depends on options as they are when it comes): see :func:`hold_set`
        self.holds = F.OWN_RATE not in fields and F.SAMPLER_ID not in fields


#: two slots read together: (element dtype, offset of the first, offset of the second less it)
Pair = tuple[np.dtype[Any], int, int]


def _pair(buf: bytes, pos: int, n: int, record_len: int, pair: Pair) -> Any:
    """The (2, n) array of a :data:`Pair`'s slots in the ``n`` records from ``pos``."""
    dtype, offset, step = pair
    return np.ndarray((2, n), dtype, buf, pos + offset, (step, record_len))


def column_plan(layout: Layout) -> ColumnPlan | None:
    """The plan for ``layout``, or None when its sets need the record path."""
    if not layout.fixed or not layout.has_address or layout.has_frame or not layout.record_len:
        return None
    for length, slot in layout.walk:
        if slot < 0:
            continue
        if slot in _ADDRESS_SLOTS:
            if length not in (4, 16):
                return None
        elif slot not in F.INT_SLOTS or not 0 < length <= 8:
            return None
        elif (
            (slot == F.START and layout.start_kind == F.TIME_UPTIME_MS)
            or (slot == F.END and layout.end_kind == F.TIME_UPTIME_MS)
        ) and length > 4:
            return None  # the record path's wrap arithmetic assumes 32-bit values
    return ColumnPlan(layout)


def plan_of(layout: Layout) -> ColumnPlan | None:
    """The plan cached on ``layout`` (built on first use; False there means "none")."""
    plan = layout.columns
    if plan is None:
        plan = layout.columns = column_plan(layout) or False
    return plan or None


def _zeros(n: int) -> U64:
    return np.zeros(n, dtype=np.uint64)


def _raw(rows: Any, plan: ColumnPlan, slot: int) -> Any:
    """One integer slot as read (big-endian), reduced-size encodings joined into uint64."""
    if slot in plan.odd:
        return _int(rows, plan, slot)
    return rows[plan.fields[slot]]


def _int(rows: Any, plan: ColumnPlan, slot: int) -> U64:
    column = rows[plan.fields[slot]]
    if slot in plan.odd:
        value = np.zeros(len(rows), dtype=np.uint64)
        for i in range(column.shape[1]):
            value = (value << np.uint64(8)) | column[:, i]
        return value
    result: U64 = column.astype(np.uint64)
    return result


def _narrow(rows: Any, plan: ColumnPlan, slot: int, dtype: Any) -> Any:
    """A protocol or port column, its value modulo the width (as ``from_records`` does)."""
    name = plan.fields.get(slot)
    if name is None:
        return None
    if slot in plan.odd:
        return _int(rows, plan, slot).astype(dtype)
    return rows[name].astype(dtype)


def _export(shape: Any, export_time: Any) -> Any:
    """``export_time`` (a float, or one per record) as a float64 array of ``shape``."""
    if isinstance(export_time, float):
        return np.full(shape, export_time)
    return np.broadcast_to(export_time, shape).copy()


def _times(kind: int, values: Any, export_time: Any, uptime: Any) -> Any:
    """Seconds since the epoch of one time column (``templated._time``, element-wise).

    ``export_time`` and ``uptime`` (uint32 sysUptime at export, or None) are scalars, or
    arrays with one value per record when sets of several datagrams are read together.
    """
    if kind == F.TIME_UPTIME_MS:
        if uptime is None:
            return _export(values.shape, export_time)
        # the signed 32-bit distance from the header's uptime (a counter wrap either way),
        # then the record path's ``export_time + ms / 1000.0``, operation for operation
        ms = values.astype(np.uint32)
        ms -= uptime
        seconds = ms.view(np.int32).astype(F64)
        seconds /= 1000.0
        seconds += export_time
        return seconds
    if kind == F.TIME_MILLIS:
        return values.astype(F64) / 1000.0
    if kind == F.TIME_SECONDS:
        return values.astype(F64)
    if kind == F.TIME_NTP:
        values = values.astype(np.uint64)
        seconds = ((values >> np.uint64(32)).astype(np.int64) - F.NTP_UNIX_OFFSET).astype(F64)
        return seconds + (values & _LOW32).astype(F64) / 4294967296.0
    if kind == F.TIME_DELTA_US:
        return export_time - values.astype(F64) / 1_000_000.0
    return _export(values.shape, export_time)


def _address(rows: Any, plan: ColumnPlan, v4: int, v6: int, n: int) -> tuple[U64, U64]:
    """(high, low) halves of one address, IPv4 mapped; a zero IPv4 defers to the IPv6 field."""
    fields = plan.fields
    if v6 not in fields:
        lo: U64 = rows[fields[v4]].astype(np.uint64)
        lo |= V4_MARK
        return np.zeros(n, dtype=np.uint64), lo
    name = fields[v6]
    hi6: U64 = rows[name].astype(np.uint64)
    lo6: U64 = rows[name + "l"].astype(np.uint64)
    if v4 not in fields:
        return hi6, lo6
    raw4 = rows[fields[v4]]
    use4 = raw4 != 0
    hi: U64 = np.where(use4, np.uint64(0), hi6)
    lo = np.where(use4, raw4.astype(np.uint64) | V4_MARK, lo6)
    return hi, lo


def _scaled(values: U64, rate: U64 | int) -> U64:
    """``values * rate``, saturating at 2**64 - 1 (``rate`` is at least 1)."""
    if isinstance(rate, int):
        if rate == 1:
            return values
        limit: Any = _MAX // rate
        product = values * np.uint64(rate)
    else:
        limit = _MAX64 // rate
        product = values * rate
    over = values > limit
    if over.any():
        product[over] = _MAX64
    return product


def _rates(rows: Any, plan: ColumnPlan, options: ExporterOptions, n: int) -> U64 | int:
    """Each record's sampling rate: its own, else its sampler's, else the exporter's."""
    default = min(options.default_rate or 1, _MAX)
    fields = plan.fields
    if F.OWN_RATE not in fields and F.SAMPLER_ID not in fields:
        return default
    rate: U64 = np.full(n, default, dtype=np.uint64)
    if F.SAMPLER_ID in fields and options.sampler_rates:
        sampler = _int(rows, plan, F.SAMPLER_ID)
        known = options.sampler_rates
        for sid in np.unique(sampler).tolist():
            found = known.get(sid, 0)
            if found:
                rate[sampler == sid] = min(found, _MAX)
    if F.OWN_RATE in fields:
        own = _int(rows, plan, F.OWN_RATE)
        rate = np.where(own != 0, own, rate)
    return rate


def set_columns(
    buf: bytes, pos: int, end: int, layout: Layout, ctx: DatagramContext
) -> FlowColumns | None:
    """The flows of one data set as columns, or None when the record path must decode it."""
    plan = plan_of(layout)
    if plan is None:
        return None
    n = (end - pos) // layout.record_len
    if n == 0:
        return FlowColumns.empty(ctx.exporter)
    rows = np.frombuffer(buf, plan.dtype, n, pos)
    uptime = None if ctx.uptime_ms is None else np.uint32(ctx.uptime_ms)
    rate = _rates(rows, plan, ctx.options, n)
    return _columns(buf, pos, n, plan, rows, ctx.export_time, uptime, rate, ctx.exporter)


class HeldSet:
    """A data set whose reading waits, to be read with the sets of the same template that
    follow it (:func:`held_columns`): one set of array operations for many datagrams.

    It keeps what the set's reading depends on as it was when the set came (export time,
    sysUptime, the exporter's sampling rate), so the reading is the one it would get then.
    """

    __slots__ = ("chunk", "export_time", "exporter", "n", "plan", "rate", "uptime_ms")

    def __init__(
        self,
        plan: ColumnPlan,
        chunk: bytes,
        n: int,
        export_time: float,
        uptime_ms: int | None,
        rate: int,
        exporter: str,
    ) -> None:
        self.plan = plan
        self.chunk = chunk
        self.n = n
        self.export_time = export_time
        self.uptime_ms = uptime_ms
        self.rate = rate
        self.exporter = exporter

    def joins(self, other: HeldSet) -> bool:
        """Whether ``other`` can be read in one pass with this set."""
        return other.plan is self.plan and (other.uptime_ms is None) == (self.uptime_ms is None)


def hold_set(
    buf: bytes, pos: int, end: int, layout: Layout, ctx: DatagramContext
) -> HeldSet | None:
    """A :class:`HeldSet` of a data set, or None if it must be read now (a per-record
    sampling rate, which depends on options as they are) or by the record path."""
    plan = layout.columns
    if plan is None:
        plan = plan_of(layout)
    if not plan or not plan.holds:
        return None
    record_len = layout.record_len
    n = (end - pos) // record_len
    if n == 0:
        return None
    rate = ctx.options.default_rate or 1
    return HeldSet(
        plan,
        buf[pos : pos + n * record_len],
        n,
        ctx.export_time,
        ctx.uptime_ms,
        rate if rate < _MAX else _MAX,
        ctx.exporter,
    )


def held_columns(group: list[HeldSet]) -> FlowColumns:
    """The flows of ``group`` (sets that each :meth:`HeldSet.joins` the first), in order."""
    first = group[0]
    plan = first.plan
    if len(group) == 1:
        rows = np.frombuffer(first.chunk, plan.dtype, first.n)
        one = None if first.uptime_ms is None else np.uint32(first.uptime_ms)
        return _columns(
            first.chunk, 0, first.n, plan, rows, first.export_time, one, first.rate,
            first.exporter,
        )  # fmt: skip
    buf = b"".join([held.chunk for held in group])
    counts = [held.n for held in group]
    n = sum(counts)
    rows = np.frombuffer(buf, plan.dtype, n)
    times = [held.export_time for held in group]
    export_time: Any = times[0]
    if times.count(export_time) != len(times):
        export_time = np.repeat(np.array(times, dtype=F64), counts)
    uptime: Any = None
    if first.uptime_ms is not None:
        ups = [held.uptime_ms for held in group]
        uptime = np.repeat(np.array(ups, dtype=np.uint32), counts)
    rates = [held.rate for held in group]
    rate: U64 | int = rates[0]
    if rates.count(rates[0]) != len(rates):
        rate = np.repeat(np.array(rates, dtype=np.uint64), counts)
    names = [held.exporter for held in group]
    if names.count(names[0]) == len(names):
        return _columns(buf, 0, n, plan, rows, export_time, uptime, rate, names[0])
    columns = _columns(buf, 0, n, plan, rows, export_time, uptime, rate, "")
    columns.exporters = np.repeat(texts_column(names), counts)
    return columns


def _columns(
    buf: bytes,
    pos: int,
    n: int,
    plan: ColumnPlan,
    rows: Any,
    export_time: Any,
    uptime: Any,
    rate: U64 | int,
    exporter: str,
) -> FlowColumns:
    """The columns of ``n`` records of ``plan`` at ``pos`` (``rows`` reads them)."""
    fields = plan.fields
    record_len = plan.record_len
    if plan.times is not None:
        pair = _pair(buf, pos, n, record_len, plan.times)
        both = _times(plan.end_kind, pair, export_time, uptime)
        time_start, time_end = both[0], both[1]
    elif F.END in fields:
        time_end = _times(plan.end_kind, _raw(rows, plan, F.END), export_time, uptime)
        if F.START in fields:
            time_start = _times(plan.start_kind, _raw(rows, plan, F.START), export_time, uptime)
        else:
            time_start = time_end.copy()
    elif F.START in fields:
        time_start = _times(plan.start_kind, _raw(rows, plan, F.START), export_time, uptime)
        # export time has whole seconds only: never end a flow before it starts
        time_end = np.maximum(time_start, export_time)
    else:
        time_start, time_end = _export(n, export_time), _export(n, export_time)
    if plan.addresses is not None:
        lows = _pair(buf, pos, n, record_len, plan.addresses).astype(np.uint64)
        lows |= V4_MARK
        his = np.zeros((2, n), dtype=np.uint64)
        src_hi, src_lo, dst_hi, dst_lo = his[0], lows[0], his[1], lows[1]
    else:
        src_hi, src_lo = _address(rows, plan, F.SRC4, F.SRC6, n)
        dst_hi, dst_lo = _address(rows, plan, F.DST4, F.DST6, n)
    if plan.counts is not None:
        counts = _scaled(_pair(buf, pos, n, record_len, plan.counts).astype(np.uint64), rate)
        size, packets = counts[0], counts[1]
    else:
        size = _scaled(_int(rows, plan, F.BYTES), rate) if F.BYTES in fields else _zeros(n)
        packets = _scaled(_int(rows, plan, F.PACKETS), rate) if F.PACKETS in fields else _zeros(n)
    return FlowColumns(
        time_start,
        time_end,
        src_hi,
        src_lo,
        dst_hi,
        dst_lo,
        size,
        packets,
        _narrow(rows, plan, F.PROTO, np.uint8),
        _narrow(rows, plan, F.SRC_PORT, np.uint16),
        _narrow(rows, plan, F.DST_PORT, np.uint16),
        exporter=exporter,
    )


def v5_columns(buf: bytes, exporter: str) -> FlowColumns:
    """A v5 datagram as columns (:func:`~egressd.decode.netflow.v5.decode_v5`'s flows)."""
    if len(buf) < V5_HEADER.size:
        raise DecodeError("truncated_header", f"{len(buf)} bytes")
    _, count, uptime, secs, nsecs, _, _, _, sampling = V5_HEADER.unpack_from(buf)
    if count == 0 or V5_HEADER.size + count * V5_DTYPE.itemsize > len(buf):
        raise DecodeError("bad_count", f"{count} records in {len(buf)} bytes")
    rows = np.frombuffer(buf, V5_DTYPE, count, V5_HEADER.size)
    export_time = secs + nsecs / 1e9
    base = np.uint32(uptime)
    first = (rows["first"].astype(np.uint32) - base).view(np.int32)
    last = (rows["last"].astype(np.uint32) - base).view(np.int32)
    # top two bits are the sampling mode; the interval is the lower 14 (0 = unsampled)
    rate = sampling & 0x3FFF or 1
    return FlowColumns(
        first / 1000.0 + export_time,
        last / 1000.0 + export_time,
        np.zeros(count, dtype=np.uint64),
        rows["src"].astype(np.uint64) | V4_MARK,
        np.zeros(count, dtype=np.uint64),
        rows["dst"].astype(np.uint64) | V4_MARK,
        _scaled(rows["octets"].astype(np.uint64), rate),
        _scaled(rows["packets"].astype(np.uint64), rate),
        rows["proto"].copy(),
        rows["sport"].astype(np.uint16),
        rows["dport"].astype(np.uint16),
        exporter=exporter,
    )
