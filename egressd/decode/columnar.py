"""JSON flow lines decoded a block at a time into :class:`~egressd.columns.FlowColumns`.

The record decoders (goflow2, pmacct, egressd JSON) build one dict and one FlowRecord per
line; here a block of lines becomes columns. msgspec parses each line into a struct of just
the fields the format reads (typed where the record decoder's common case is one type; no
dict), each field becomes one numpy column, and every rule of the record decoder is checked
on whole columns. A line that any rule does not clear at column level (a field of another
type, an address never seen, a missing field, bad JSON) is handed to the record decoder,
which gives its record, its skip or its error reason exactly as the record path does; so a
block decodes to what the record path gives, in the same order, with the same counters.

msgspec rejects what ``orjson.loads`` rejects, with one exception: a number literal beyond
the range of a double (``1e400``, or an integer of 309 or more digits) in a field egressd
does not read. orjson fails such a line as ``bad_json``; here it is a flow like any other.
Lines that are not valid UTF-8 are found per block and left to the record decoder.
"""

from __future__ import annotations

import contextlib
from array import array
from collections.abc import Callable, Sequence
from itertools import repeat
from typing import Annotated, Any, Final, Literal, cast

import msgspec
import numpy as np
import numpy.typing as npt

from egressd.cache import BoundedCache
from egressd.columns import F64, U64, FlowColumns, address_value, exporter_fields
from egressd.decode.common import (
    CACHE_LIMIT,
    MAX_EPOCH,
    PACKED_CACHE,
    PORTS,
    PROTOCOLS,
    TIME_CACHE,
    as_time,
    normalize_address,
    packed_address,
)
from egressd.errors import DecodeError
from egressd.model import FlowRecord
from egressd.stats import SourceStats

Bools = npt.NDArray[np.bool_]
#: one line → a record, None (skip on purpose) or DecodeError: the record path's decoder
LineDecoder = Callable[[bytes], FlowRecord | None]

_U64_MAX: Final = 2**64 - 1
_I64_MIN: Final = -(2**63)
_ZERO16: Final = bytes(16)
#: what the address cache answers for a text it does not hold (no packed address is 15 bytes)
_MISS: Final = bytes(15)
_NONE: Final = np.zeros(0, dtype=np.intp)
_UNSET: Final = msgspec.UNSET
#: RecursionError: nesting deeper than msgspec takes (the record decoder then names it)
_PARSE_ERRORS: Final = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)
_astuple = msgspec.structs.astuple


#: what :meth:`JsonColumnDecoder._mend` says of a blank line
_BLANK: Final = "blank"


class _NotAscii(Exception):
    """A block holds bytes beyond ASCII: its lines are checked for UTF-8 one by one."""


#: absent or null means 0 for these (pmacct, egressd JSON); any other miss: -1
_PORTS_OR_ABSENT: Final[dict[object, int]] = {**PORTS, None: 0, _UNSET: 0}
_PROTOCOLS_OR_ABSENT: Final[dict[object, int]] = {**PROTOCOLS, None: 0, _UNSET: 0}


#: a JSON integer for msgspec (a negative one or one beyond 2**64 - 1 fails the uint64 column)
_COUNT = int | msgspec.UnsetType
_PORT = Annotated[int, msgspec.Meta(ge=0, le=0xFFFF)] | msgspec.UnsetType
_TEXT = str | msgspec.UnsetType
_NUMBER = int | float | msgspec.UnsetType
_ANY = object
#: a protocol as the table names it, or a number: a name msgspec matches is one shared str
#: object whose hash is known (the table lookup costs less) and no str is made per line;
#: any other value fails the line here and the record decoder has it
_PROTOCOL_NAME: Any = Literal.__getitem__(tuple(k for k in PROTOCOLS if type(k) is str))
_PROTOCOL = _PROTOCOL_NAME | int | msgspec.UnsetType


class _Layout:
    """The fields a format reads, as a msgspec struct (other keys are skipped)."""

    __slots__ = ("decode", "width")

    def __init__(self, fields: Sequence[tuple[str, Any]]) -> None:
        names = [f"f{i}" for i in range(len(fields))]
        struct = msgspec.defstruct(
            "Line",
            [(name, kind, _UNSET) for name, (_, kind) in zip(names, fields, strict=True)],
            rename={name: key for name, (key, _) in zip(names, fields, strict=True)},
            gc=False,
        )
        self.decode: Callable[[bytes], Any] = msgspec.json.Decoder(struct).decode
        self.width = len(fields)


# --- column conversions: values plus a mask of the rows whose values the fast rules clear --


def _plain(col: Sequence[object]) -> npt.NDArray[Any] | None:
    """``col`` as a one-dimensional numeric array when numpy infers one, else None."""
    try:
        array = np.array(col)
    except (ValueError, OverflowError):
        return None
    if array.dtype.kind in "iub" and array.shape == (len(col),):
        return array
    return None


def _count(value: object) -> int | None:
    """``value`` if it is a JSON integer (true/false: 1/0) in [0, 2**64), else None."""
    if (type(value) is int or type(value) is bool) and 0 <= value <= _U64_MAX:
        return int(value)
    return None


#: array's typecode for 64 unsigned bits: "L" (C unsigned long) where that is 64 bits, as on
#: 64-bit Linux and macOS. Both refuse the same values, but "L" converts an int of two or more
#: digits (nanosecond times, byte counts past 2**30) directly where "Q" goes through
#: CPython's generic byte-array conversion: nearly twice as fast on such columns.
_U64_CODE: Final = "L" if array("L").itemsize == 8 else "Q"


def _typed_ints(col: Sequence[object]) -> U64 | None:
    """A column of a ``_COUNT`` or ``_PORT`` field when every row holds an integer in
    [0, 2**64), else None."""
    try:
        # array converts Python ints about twice as fast as np.fromiter, and numpy takes
        # its buffer as it is; it refuses what is not an int (unset: TypeError) and what
        # does not fit 64 unsigned bits (OverflowError), as fromiter did.
        return np.frombuffer(array(_U64_CODE, cast("Sequence[int]", col)), dtype=np.uint64)
    except (TypeError, ValueError, OverflowError):  # unset, or 2**64 and beyond
        return None


def _typed_rate(col: Sequence[object]) -> U64 | None:
    """:func:`_typed_ints` of a sampling-rate column: one rate throughout (the common block)
    costs a comparison a row (the same small int object: an identity check) instead of a
    conversion."""
    first = col[0]
    if type(first) is int and 0 <= first <= _U64_MAX and col.count(first) == len(col):
        return np.full(len(col), first, dtype=np.uint64)
    return _typed_ints(col)


def _ints(col: Sequence[object]) -> tuple[U64, Bools]:
    """JSON integers (true/false count as 1/0) in [0, 2**64); anything else is not cleared."""
    typed = _typed_ints(col)
    if typed is not None:
        return typed, np.ones(len(col), dtype=np.bool_)
    array = _plain(col)
    if array is not None:
        if array.dtype.kind == "i":
            return array.astype(np.uint64), array >= 0
        return array.astype(np.uint64), np.ones(len(col), dtype=np.bool_)
    counts = [_count(v) for v in col]
    ok = np.fromiter((c is not None for c in counts), dtype=np.bool_, count=len(col))
    values = np.fromiter((c or 0 for c in counts), dtype=np.uint64, count=len(col))
    return values, ok


def _counts(col: Sequence[object], absent: int | None) -> tuple[U64, Bools]:
    """A count as ``as_count`` reads it; ``absent`` is what a missing or null value means
    (None: it is required)."""
    typed = _typed_ints(col)
    if typed is not None:
        return typed, np.ones(len(col), dtype=np.bool_)
    array = _plain(col)
    if array is not None:
        if array.dtype.kind == "i":
            return array.astype(np.uint64), array >= 0
        return array.astype(np.uint64), np.ones(len(col), dtype=np.bool_)
    values = np.zeros(len(col), dtype=np.uint64)
    ok = np.zeros(len(col), dtype=np.bool_)
    for i, v in enumerate(col):
        if v is None or v is _UNSET:
            if absent is not None:
                values[i] = absent
                ok[i] = True
        elif (count := _count(v)) is not None:
            values[i] = count
            ok[i] = True
    return values, ok


def _rates(col: Sequence[object]) -> tuple[U64, Bools]:
    """A sampling rate as ``as_sampling_rate`` reads it: any false value means 1."""
    typed = _typed_ints(col)
    if typed is not None:
        typed[typed == 0] = 1
        return typed, np.ones(len(col), dtype=np.bool_)
    array = _plain(col)
    if array is not None:
        values = array.astype(np.uint64)
        values[values == 0] = 1
        return values, (array >= 0) if array.dtype.kind == "i" else np.ones(len(col), np.bool_)
    values = np.ones(len(col), dtype=np.uint64)
    ok = np.zeros(len(col), dtype=np.bool_)
    for i, v in enumerate(col):
        if v is _UNSET or not v:
            ok[i] = True
        elif (count := _count(v)) is not None:
            values[i] = count
            ok[i] = True
    return values, ok


def _times(col: Sequence[object]) -> tuple[F64, Bools, Bools]:
    """Event times as ``as_time`` reads them: (seconds, present, cleared).

    Numbers are seconds; text goes through the shared time cache. Absent, null and zero are
    "not present" (the caller falls back), as in the record decoders.
    """
    n = len(col)
    try:
        array = np.array(col)
    except (ValueError, OverflowError):
        array = None
    if array is not None and array.dtype.kind in "fiub" and array.shape == (n,):
        seconds = array.astype(np.float64)
        present = seconds != 0
        ok = ~present | ((seconds > 0) & (seconds < MAX_EPOCH))
        return seconds, present, ok
    seconds = np.zeros(n, dtype=np.float64)
    present = np.zeros(n, dtype=np.bool_)
    ok = np.ones(n, dtype=np.bool_)
    cached = TIME_CACHE.get
    for i, v in enumerate(col):
        if type(v) is str:
            value = cached(v)
            if value is None:
                try:
                    value = as_time(v)
                except DecodeError:
                    ok[i] = False
                    continue
                if value is None:
                    continue
            elif not value:
                continue
        elif v is None or v is _UNSET:
            continue
        elif type(v) is float or (type(v) in (int, bool) and _I64_MIN <= v <= _U64_MAX):  # type: ignore[operator]
            try:
                value = as_time(v)
            except DecodeError:
                ok[i] = False
                continue
            if value is None:
                continue
        else:
            ok[i] = False
            continue
        seconds[i] = value
        present[i] = True
    TIME_CACHE.lookups += n
    return seconds, present, ok


def _table(col: Sequence[object], table: dict[object, int]) -> npt.NDArray[np.int64]:
    """``table[value]`` per row, -1 where the value is not in it."""
    # One value throughout (a block of one protocol) is common: counting it costs an
    # identity check per row (protocol names are msgspec's shared literals), a lookup each
    # costs more. Equal values are the same key of ``table``.
    try:
        if len(col) and col.count(col[0]) == len(col):
            return np.full(len(col), table.get(col[0], -1), dtype=np.int64)
    except TypeError:  # an unhashable value
        pass
    try:
        return np.fromiter(map(table.get, col, repeat(-1)), dtype=np.int64, count=len(col))
    except TypeError:  # an unhashable value (a list or an object)
        values = np.full(len(col), -1, dtype=np.int64)
        for i, v in enumerate(col):
            with contextlib.suppress(TypeError):
                values[i] = table.get(v, -1)
        return values


def _addresses(col: Sequence[object]) -> tuple[U64, U64, Bools]:
    """Required addresses as column halves; rows not cleared: absent, empty or malformed."""
    n = len(col)
    PACKED_CACHE.lookups += n
    ok = np.ones(n, dtype=np.bool_)
    try:
        # (a miss gives _MISS, 15 bytes where every packed address has 16: the joined length
        # tells whether any row missed, without a second pass over the column)
        packed: list[bytes] = list(map(PACKED_CACHE.get, col, repeat(_MISS)))  # type: ignore[arg-type]
    except TypeError:  # an unhashable value: every row is checked below
        packed = [_MISS] * n
    joined = b"".join(packed)
    if len(joined) != 16 * n:
        # The rows that missed (texts new to the cache, or no address at all) one by one: a
        # block meets a few new addresses, each parsed and cached at its first row.
        find = packed.index
        row = -1
        while True:
            try:
                row = find(_MISS, row + 1)
            except ValueError:  # no more misses
                break
            try:
                packed[row] = packed_address(col[row])
            except DecodeError:
                ok[row] = False
                packed[row] = _ZERO16
        joined = b"".join(packed)
    # (each half converted from big-endian straight into its own contiguous column)
    words = np.frombuffer(joined, dtype=">u8").reshape(n, 2)
    return words[:, 0].astype(np.uint64), words[:, 1].astype(np.uint64), ok


def _exporters(col: Sequence[object], rows: Bools) -> tuple[Bools, set[str], list[str] | None]:
    """Optional exporter addresses (false values mean none): (cleared, texts of ``rows``,
    each row's text when those mix, else None)."""
    n = len(col)
    first = col[0]
    try:
        # One exporter per block is common: comparing texts costs less than hashing them.
        distinct = {first} if type(first) is str and col.count(first) == n else set(col)
    except TypeError:
        distinct = None
    if distinct is not None and len(distinct) <= 16:
        verdict: dict[object, str | None] = {}
        for v in distinct:
            if v is _UNSET or not v:
                verdict[v] = ""
                continue
            try:
                verdict[v] = normalize_address(v)
            except DecodeError:
                verdict[v] = None
        if all(text is not None for text in verdict.values()):
            if rows.all():
                used = set(verdict.values())
            else:
                used = {verdict[v] for v, row in zip(col, rows.tolist(), strict=True) if row}
            texts = [verdict[v] for v in col] if len(used) > 1 else None
            return np.ones(n, dtype=np.bool_), used, texts  # type: ignore[return-value]
    ok = np.zeros(n, dtype=np.bool_)
    used_texts: set[str] = set()
    each = [""] * n
    for i, v in enumerate(col):
        try:
            text = "" if v is _UNSET or not v else normalize_address(v)
        except DecodeError:
            continue
        ok[i] = True
        each[i] = text
        if rows[i]:
            used_texts.add(text)
    return ok, used_texts, each if len(used_texts) > 1 else None


def _saturating_product(values: U64, rate: U64, rated: bool = True) -> U64:
    """``values * rate``, at most 2**64 - 1; ``rated`` False says every rate is 1."""
    if not rated:
        return values
    product = values * rate
    overflow = (rate > 1) & (values > np.uint64(_U64_MAX) // rate)
    if overflow.any():
        product[overflow] = _U64_MAX
    return product


class _Fields:
    """One block's flows as columns, before the rows the fast rules did not clear are mended."""

    __slots__ = (
        "bytes",
        "dst_hi",
        "dst_lo",
        "dst_port",
        "exporter_rows",
        "exporters",
        "ok",
        "packets",
        "proto",
        "src_hi",
        "src_lo",
        "src_port",
        "time_end",
        "time_start",
    )

    def __init__(
        self,
        ok: Bools,
        time_start: F64,
        time_end: F64,
        src: tuple[U64, U64],
        dst: tuple[U64, U64],
        nbytes: U64,
        packets: U64,
        proto: npt.NDArray[np.int64],
        src_port: npt.NDArray[np.int64] | U64,
        dst_port: npt.NDArray[np.int64] | U64,
        exporters: set[str],
        exporter_rows: list[str] | None = None,
    ) -> None:
        self.ok = ok
        self.time_start = time_start
        self.time_end = time_end
        self.src_hi, self.src_lo = src
        self.dst_hi, self.dst_lo = dst
        self.bytes = nbytes
        self.packets = packets
        self.proto = proto
        self.src_port = src_port
        self.dst_port = dst_port
        self.exporters = exporters
        #: each row's exporter when ``exporters`` holds more than one, else None
        self.exporter_rows = exporter_rows


# --- formats ------------------------------------------------------------------------------

#: in the order goflow2 writes them: msgspec looks for a key's field from the one after the
#: last it found (keys in field order cost a twentieth less to parse)
_GOFLOW2_KEYS: Final = (
    ("sampling_rate", _COUNT),
    ("sampler_address", _ANY),
    ("time_flow_start_ns", _COUNT),
    ("time_flow_end_ns", _COUNT),
    ("bytes", _COUNT),
    ("packets", _COUNT),
    ("src_addr", _TEXT),
    ("dst_addr", _TEXT),
    ("proto", _PROTOCOL),
    ("src_port", _PORT),
    ("dst_port", _PORT),
)
_RATE, _EXPORTER, _START, _END, _BYTES, _PACKETS, _SRC, _DST, _PROTO, _SPORT, _DPORT = range(11)


def _goflow2(cols: Sequence[Sequence[object]]) -> _Fields:
    """goflow2 ≥2 lines the record decoder's fast path takes (integer nanosecond times,
    every field present, a known protocol): the same rules, on columns."""
    typed = [_typed_ints(cols[i]) for i in (_BYTES, _PACKETS)]
    typed.append(_typed_rate(cols[_RATE]))
    typed.extend(_typed_ints(cols[i]) for i in (_START, _END, _SPORT, _DPORT))
    if all(column is not None for column in typed):
        # Every row holds an integer in [0, 2**64) in each (array("Q") took them all) and
        # ports are below 2**16 (msgspec checked _PORT while parsing): nothing more to check.
        nbytes, packets, rate, start, end, src_port, dst_port = cast("list[U64]", typed)
        ok = end != 0
    else:
        nbytes, ok = _ints(cols[_BYTES])
        packets, ok_packets = _ints(cols[_PACKETS])
        rate, ok_rate = _ints(cols[_RATE])
        start, ok_start = _ints(cols[_START])
        end, ok_end = _ints(cols[_END])
        src_port, ok_src_port = _ints(cols[_SPORT])
        dst_port, ok_dst_port = _ints(cols[_DPORT])
        ok &= ok_packets & ok_rate & ok_start & ok_end & ok_src_port & ok_dst_port
        ok &= end != 0
        ok &= (src_port <= 0xFFFF) & (dst_port <= 0xFFFF)
    start = np.where(start == 0, end, start)
    # The record decoder's bound on nanoseconds (year 10000) lies beyond 2**64: a uint64 meets it.
    proto = _table(cols[_PROTO], PROTOCOLS)
    ok &= proto >= 0
    src = _addresses(cols[_SRC])
    dst = _addresses(cols[_DST])
    ok &= src[2] & dst[2]
    ok_exporter, exporters, exporter_rows = _exporters(cols[_EXPORTER], ok)
    ok &= ok_exporter
    # (a sampling rate of 0 means 1; a block sampled 1:1 throughout needs no products)
    rated = int(rate.max()) > 1
    if rated:
        rate[rate == 0] = 1
    return _Fields(
        ok,
        # (uint64 / float: each value converted to float64 and divided, in one pass)
        start / 1e9,
        end / 1e9,
        src[:2],
        dst[:2],
        _saturating_product(nbytes, rate, rated),
        _saturating_product(packets, rate, rated),
        proto,
        src_port,
        dst_port,
        exporters,
        exporter_rows,
    )


def _flow_fields(
    cols: Sequence[Sequence[object]], ok: Bools, start_end: tuple[F64, F64]
) -> _Fields:
    """The fields pmacct and egressd JSON share in position 2 onwards: src, dst, bytes,
    packets, sampling rate, protocol, ports (absent: 0)."""
    src = _addresses(cols[2])
    dst = _addresses(cols[3])
    nbytes, ok_bytes = _counts(cols[4], None)
    packets, ok_packets = _counts(cols[5], 0)
    rate, ok_rate = _rates(cols[6])
    proto = _table(cols[7], _PROTOCOLS_OR_ABSENT)
    src_port = _table(cols[8], _PORTS_OR_ABSENT)
    dst_port = _table(cols[9], _PORTS_OR_ABSENT)
    ok &= src[2] & dst[2] & ok_bytes & ok_packets & ok_rate
    ok &= (proto >= 0) & (src_port >= 0) & (dst_port >= 0)
    return _Fields(
        ok,
        start_end[0],
        start_end[1],
        src[:2],
        dst[:2],
        _saturating_product(nbytes, rate),
        _saturating_product(packets, rate),
        proto,
        src_port,
        dst_port,
        set(),
    )


def _start_end(start_col: Sequence[object], end_col: Sequence[object]) -> tuple[F64, F64, Bools]:
    end, end_present, ok = _times(end_col)
    start, start_present, ok_start = _times(start_col)
    ok &= end_present & ok_start
    return np.where(start_present, start, end), end, ok


_EGRESSD_KEYS: Final = (
    ("time_start", _NUMBER),
    ("time_end", _NUMBER),
    ("src", _TEXT),
    ("dst", _TEXT),
    ("bytes", _COUNT),
    ("packets", _COUNT),
    ("sampling_rate", _COUNT),
    ("proto", _ANY),
    ("src_port", _PORT),
    ("dst_port", _PORT),
    ("exporter", _ANY),
)


def _egressd(cols: Sequence[Sequence[object]]) -> _Fields:
    start, end, ok = _start_end(cols[0], cols[1])
    fields = _flow_fields(cols, ok, (start, end))
    exporters = cols[10]
    try:
        distinct = set(exporters)
    except TypeError:
        distinct = {None}
    if all(type(v) is str or v is _UNSET for v in distinct):
        fields.exporters = {v if type(v) is str else "" for v in distinct}
    else:
        fields.ok &= np.fromiter(
            (type(v) is str or v is _UNSET for v in exporters), dtype=np.bool_, count=len(exporters)
        )
        fields.exporters = {
            v if type(v) is str else "" for v in exporters if v is _UNSET or type(v) is str
        }
    if len(fields.exporters) > 1:
        fields.exporter_rows = [v if type(v) is str else "" for v in exporters]
    return fields


_PMACCT_KEYS: Final = (
    ("timestamp_start", _ANY),
    ("timestamp_end", _ANY),
    ("ip_src", _TEXT),
    ("ip_dst", _TEXT),
    ("bytes", _COUNT),
    ("packets", _COUNT),
    ("sampling_rate", _COUNT),
    ("ip_proto", _ANY),
    ("port_src", _PORT),
    ("port_dst", _PORT),
    ("peer_ip_src", _ANY),
    ("event_type", _ANY),
)


def _pmacct(cols: Sequence[Sequence[object]]) -> _Fields:
    start, end, ok = _start_end(cols[0], cols[1])
    # Lines of other events are skips: the record decoder counts them.
    events = cols[11]
    try:
        distinct = set(events)
    except TypeError:
        distinct = {None, 0}
    if not distinct <= {"purge", None, _UNSET}:
        ok &= np.fromiter(
            (v is None or v is _UNSET or v == "purge" for v in events), np.bool_, len(events)
        )
    fields = _flow_fields(cols, ok, (start, end))
    ok_exporter, fields.exporters, fields.exporter_rows = _exporters(cols[10], fields.ok)
    fields.ok &= ok_exporter
    return fields


_NFDUMP_KEYS: Final = (
    ("first", _ANY),
    ("last", _ANY),
    ("src4_addr", _ANY),
    ("dst4_addr", _ANY),
    ("in_bytes", _COUNT),
    ("in_packets", _COUNT),
    ("proto", _ANY),
    ("src_port", _PORT),
    ("dst_port", _PORT),
    ("received", _ANY),
    ("src6_addr", _ANY),
    ("dst6_addr", _ANY),
    ("ip4_router", _ANY),
    ("ip6_router", _ANY),
    ("type", _ANY),
)

#: nfdump's time text → seconds, as :func:`egressd.decode.nfdump_json.nfdump_time` reads it
NFDUMP_TIME_CACHE: BoundedCache[str, float] = BoundedCache(CACHE_LIMIT)


def _nfdump_times(col: Sequence[object]) -> tuple[F64, Bools, Bools]:
    """(seconds, result not None, cleared) of ``nfdump_time`` per row."""
    from egressd.decode.nfdump_json import nfdump_time

    n = len(col)
    seconds = np.zeros(n, dtype=np.float64)
    known = np.zeros(n, dtype=np.bool_)
    ok = np.ones(n, dtype=np.bool_)
    cached = NFDUMP_TIME_CACHE.get
    NFDUMP_TIME_CACHE.lookups += n
    for i, v in enumerate(col):
        value = cached(v) if type(v) is str else None
        if value is None:
            try:
                value = nfdump_time(None if v is _UNSET else v)
            except DecodeError:
                ok[i] = False
                continue
            if value is None:
                continue
            if type(v) is str:
                NFDUMP_TIME_CACHE.store(v, value)
        seconds[i] = value
        known[i] = True
    return seconds, known, ok


def _either(first: Sequence[object], second: Sequence[object]) -> list[object]:
    """``a or b`` per row (UNSET, like every false value, gives way)."""
    return [a or b for a, b in zip(first, second, strict=True)]


def _nfdump(cols: Sequence[Sequence[object]]) -> _Fields:
    """nfdump's records: counts are stored already scaled by the sampling rate nfcapd knew."""
    end, end_known, ok = _nfdump_times(cols[1])
    # end is ``last or received``: a record without a true ``last`` is left to the decoder
    ok &= end_known & (end != 0)
    start, start_known, ok_start = _nfdump_times(cols[0])
    ok &= ok_start
    types = cols[14]
    try:
        distinct = set(types)
    except TypeError:
        distinct = {None}
    if not distinct <= {"FLOW", _UNSET}:
        ok &= np.fromiter((v is _UNSET or v == "FLOW" for v in types), np.bool_, len(types))
    src = _addresses(_either(cols[2], cols[10]))
    dst = _addresses(_either(cols[3], cols[11]))
    nbytes, ok_bytes = _counts(cols[4], None)
    packets, ok_packets = _counts(cols[5], 0)
    proto = _table(cols[6], _PROTOCOLS_OR_ABSENT)
    src_port = _table(cols[7], _PORTS_OR_ABSENT)
    dst_port = _table(cols[8], _PORTS_OR_ABSENT)
    ok &= src[2] & dst[2] & ok_bytes & ok_packets
    ok &= (proto >= 0) & (src_port >= 0) & (dst_port >= 0)
    ok_exporter, exporters, exporter_rows = _exporters(_either(cols[12], cols[13]), ok)
    ok &= ok_exporter
    return _Fields(
        ok,
        np.where(start_known, start, end),
        end,
        src[:2],
        dst[:2],
        nbytes,
        packets,
        proto,
        src_port,
        dst_port,
        exporters,
        exporter_rows,
    )


def _nfdump_record(text: bytes) -> FlowRecord | None:
    from egressd.decode.nfdump_json import decode_nfdump_object, load_record

    return decode_nfdump_object(load_record(text))


class _Format:
    __slots__ = ("build", "decoder", "layout")

    def __init__(
        self,
        keys: Sequence[tuple[str, Any]],
        build: Callable[[Sequence[Sequence[object]]], _Fields],
        decoder: LineDecoder,
    ) -> None:
        self.layout = _Layout(keys)
        self.build = build
        self.decoder = decoder


def _format(fmt: str) -> _Format:
    if fmt == "goflow2-json":
        from egressd.decode.goflow2 import decode_goflow2_json

        return _Format(_GOFLOW2_KEYS, _goflow2, decode_goflow2_json)
    if fmt == "pmacct-json":
        from egressd.decode.pmacct import decode_pmacct_json

        return _Format(_PMACCT_KEYS, _pmacct, decode_pmacct_json)
    if fmt == "egressd-json":
        from egressd.decode.egressd_json import decode_egressd_json

        return _Format(_EGRESSD_KEYS, _egressd, decode_egressd_json)
    if fmt == "nfdump":
        return _Format(_NFDUMP_KEYS, _nfdump, _nfdump_record)
    raise KeyError(fmt)


#: JSON-lines formats; "nfdump" (records of ``nfdump -o json``, one text each) decodes too
COLUMN_FORMATS: Final = ("goflow2-json", "pmacct-json", "egressd-json")


def _looks_like_multi_line_json(line: bytes) -> bool:
    from egressd.sources.files import looks_like_multi_line_json

    return looks_like_multi_line_json(line)


class JsonColumnDecoder:
    """Lines of one JSON flow format (see :data:`COLUMN_FORMATS`) to FlowColumns.

    :meth:`decode` counts in a :class:`~egressd.stats.SourceStats` exactly what the record
    path (``read_lines`` with the format's record decoder) counts for the same lines: units
    (blank lines are not input), records, decode errors by reason (``multi_line_json`` for a
    piece of pretty-printed JSON) and skipped lines.
    """

    __slots__ = ("_format",)

    def __init__(self, fmt: str) -> None:
        self._format = _format(fmt)

    def decode(
        self,
        lines: Sequence[bytes],
        stats: SourceStats,
        failures: list[tuple[int, str]] | None = None,
    ) -> FlowColumns:
        """The flows of ``lines`` (each one JSON object, with or without its newline).

        With ``failures`` the lines are Kafka messages, counted as the Kafka source's record
        path counts them: every one is input (a blank one fails as ``bad_json``), errors keep
        their own reason, and each failed line's (index, reason) is appended to ``failures``.
        """
        n = len(lines)
        if not n:
            return FlowColumns.empty()
        layout = self._format.layout
        parse = layout.decode
        width = layout.width
        parsed: Bools | None = None
        try:
            # (numpy's max reads the block several bytes at a time, bytes.isascii one word)
            if np.frombuffer(b"".join(lines), dtype=np.uint8).max(initial=0) >= 0x80:
                raise _NotAscii
            # (each line's struct becomes a tuple as soon as it is parsed and is freed at
            # once: the next struct reuses its memory, still in the CPU's cache)
            cols = list(zip(*map(_astuple, map(parse, lines)), strict=True))
        except (*_PARSE_ERRORS, _NotAscii):
            # Some lines do not parse here (or are not UTF-8, which msgspec does not check
            # in the keys it skips): their fields are unset, the record decoder has them.
            rows = []
            for line in lines:
                try:
                    if not line.isascii():
                        line.decode()
                    rows.append(parse(line))
                except (*_PARSE_ERRORS, UnicodeDecodeError):
                    rows.append(None)
            parsed = np.fromiter((row is not None for row in rows), np.bool_, n)
            empty = (_UNSET,) * width
            cols = list(
                zip(*(empty if row is None else _astuple(row) for row in rows), strict=True)
            )
        fields = self._format.build(cols)
        if parsed is not None:
            fields.ok &= parsed
        keep: npt.NDArray[np.bool_] | None = None
        exporters = fields.exporters
        #: exporters of rows the record decoder mended (they may differ from the block's)
        mended: dict[int, str] = {}
        fast = next(iter(exporters), "") if len(exporters) == 1 else ""
        units = n
        # (every row cleared is the common block: no positions to find then)
        slow = _NONE if fields.ok.all() else np.flatnonzero(~fields.ok)
        records = n - len(slow)
        if len(slow):
            keep = fields.ok.copy()
            for index in slow.tolist():
                outcome = self._mend(lines[index], stats, failures, index)
                if outcome is _BLANK:
                    units -= 1
                    continue
                if not isinstance(outcome, FlowRecord):
                    continue
                keep[index] = True
                records += 1
                exporters.add(outcome.exporter)
                mended[index] = outcome.exporter
                _put(fields, index, outcome)
        stats.units += units
        stats.records += records
        columns = FlowColumns(
            fields.time_start,
            fields.time_end,
            fields.src_hi,
            fields.src_lo,
            fields.dst_hi,
            fields.dst_lo,
            fields.bytes,
            fields.packets,
            fields.proto.astype(np.uint8),
            fields.src_port.astype(np.uint16),
            fields.dst_port.astype(np.uint16),
            **exporter_fields(
                exporters, lambda: _exporter_rows(fields.exporter_rows, fast, n, mended)
            ),
        )
        return columns if keep is None else columns.take(keep)

    def _mend(
        self,
        line: bytes,
        stats: SourceStats,
        failures: list[tuple[int, str]] | None,
        index: int,
    ) -> FlowRecord | str | None:
        """The record path for one line: its record, None (an error or skip, counted) or
        :data:`_BLANK` (a blank line, which is not input)."""
        try:
            record = self._format.decoder(line)
        except DecodeError as exc:
            if failures is not None:
                stats.failed(exc.reason)
                failures.append((index, exc.reason))
            elif not line.strip():
                return _BLANK
            elif exc.reason == "bad_json" and _looks_like_multi_line_json(line):
                stats.failed("multi_line_json")
            else:
                stats.failed(exc.reason)
            return None
        if record is None:
            stats.drop("skipped")
            return None
        return record


def _exporter_rows(rows: list[str] | None, fast: str, n: int, mended: dict[int, str]) -> list[str]:
    """Each row's exporter (rows not kept hold any text): the fast rules' (``rows``, or
    ``fast`` for all when they agree), then the mended rows'."""
    if rows is None:
        rows = [fast] * n
    for index, exporter in mended.items():
        rows[index] = exporter
    return rows


def _put(fields: _Fields, index: int, record: FlowRecord) -> None:
    """Row ``index`` of ``fields`` from a record the record decoder made."""
    fields.time_start[index] = record.time_start
    fields.time_end[index] = record.time_end
    src = address_value(record.src)
    dst = address_value(record.dst)
    fields.src_hi[index] = src >> 64
    fields.src_lo[index] = src & _U64_MAX
    fields.dst_hi[index] = dst >> 64
    fields.dst_lo[index] = dst & _U64_MAX
    fields.bytes[index] = min(record.bytes, _U64_MAX)
    fields.packets[index] = min(record.packets, _U64_MAX)
    fields.proto[index] = record.proto & 0xFF
    fields.src_port[index] = record.src_port & 0xFFFF
    fields.dst_port[index] = record.dst_port & 0xFFFF
