"""Flows as columns: the batch that decoders hand the engine on the hot path.

One :class:`FlowColumns` holds many flows, one numpy array per field, in arrival order.
Addresses are integers from the start: every address is 128 bits as two ``uint64`` halves,
IPv4 as the IPv4-mapped IPv6 address (``::ffff:a.b.c.d``), so one column carries both
families and :func:`is_v4` picks the IPv4 rows out with two comparisons. Text forms of
addresses are made only where a person reads them (alert evidence), by :func:`address_text`.

A batch means exactly what the :class:`~egressd.model.FlowRecord` list of the same flows, in
the same order, means: :meth:`FlowColumns.from_records` and :meth:`FlowColumns.to_records`
are inverse (up to text normalisation of addresses) and the engine gives the same sums and
alerts for either. Nothing here does I/O.
"""

from __future__ import annotations

import itertools
import socket
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from egressd.enrich.address import parse_address
from egressd.model import FlowRecord

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
U16 = npt.NDArray[np.uint16]
U8 = npt.NDArray[np.uint8]
#: one exporter text per row (numpy object array of ``str``)
Texts = npt.NDArray[np.object_]

#: the high 64 bits of every IPv4 address in a column, and the 32 bits above its value
V4_HI = np.uint64(0)
V4_MARK = np.uint64(0xFFFF_0000_0000)
_LOW32 = np.uint64(0xFFFF_FFFF)

_FIELDS = (
    "time_start",
    "time_end",
    "src_hi",
    "src_lo",
    "dst_hi",
    "dst_lo",
    "bytes",
    "packets",
    "proto",
    "src_port",
    "dst_port",
)


def _u64(values: Iterable[int]) -> U64:
    return np.fromiter(values, dtype=np.uint64)


class FlowColumns:
    """Many unidirectional flows as parallel arrays (see the module docstring).

    ``bytes`` and ``packets`` are already multiplied by the sampling rate and are at most
    2**64 - 1 (a larger claim saturates there: the engine finds it implausible anyway).
    Times are event time in seconds since the Unix epoch. ``exporter`` names where the whole
    batch came from ("" when nobody said). A batch mixing exporters has ``exporter`` "" and
    ``exporters``, each row's exporter; a batch of one exporter has ``exporters`` None, so
    the common batch costs nothing per row for it (the duplicate stage,
    :mod:`egressd.dedupe`, reads it).
    """

    __slots__ = (
        "bytes",
        "dst_hi",
        "dst_lo",
        "dst_port",
        "exporter",
        "exporters",
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
        time_start: F64,
        time_end: F64,
        src_hi: U64,
        src_lo: U64,
        dst_hi: U64,
        dst_lo: U64,
        bytes: U64,
        packets: U64,
        proto: U8 | None = None,
        src_port: U16 | None = None,
        dst_port: U16 | None = None,
        exporter: str = "",
        exporters: Texts | None = None,
    ) -> None:
        n = len(time_end)
        self.time_start = time_start
        self.time_end = time_end
        self.src_hi = src_hi
        self.src_lo = src_lo
        self.dst_hi = dst_hi
        self.dst_lo = dst_lo
        self.bytes = bytes
        self.packets = packets
        self.proto = proto if proto is not None else np.zeros(n, dtype=np.uint8)
        self.src_port = src_port if src_port is not None else np.zeros(n, dtype=np.uint16)
        self.dst_port = dst_port if dst_port is not None else np.zeros(n, dtype=np.uint16)
        self.exporter = exporter
        self.exporters = exporters

    def __len__(self) -> int:
        return len(self.time_end)

    def check(self) -> None:
        """Raise ValueError unless every column has the same length and its dtype."""
        n = len(self)
        for name, dtype in (
            ("time_start", np.float64),
            ("time_end", np.float64),
            ("src_hi", np.uint64),
            ("src_lo", np.uint64),
            ("dst_hi", np.uint64),
            ("dst_lo", np.uint64),
            ("bytes", np.uint64),
            ("packets", np.uint64),
            ("proto", np.uint8),
            ("src_port", np.uint16),
            ("dst_port", np.uint16),
        ):
            column = getattr(self, name)
            if column.dtype != dtype or column.shape != (n,):
                raise ValueError(
                    f"column {name} is {column.dtype}{column.shape}, not {dtype}({n},)"
                )
        exporters = self.exporters
        if exporters is not None and (exporters.dtype != object or exporters.shape != (n,)):
            raise ValueError(f"column exporters is {exporters.dtype}{exporters.shape}")

    def exporter_of(self, index: int) -> str:
        """The exporter of row ``index``."""
        exporters = self.exporters
        return self.exporter if exporters is None else str(exporters[index])

    @classmethod
    def empty(cls, exporter: str = "") -> FlowColumns:
        f = np.zeros(0, dtype=np.float64)
        u = np.zeros(0, dtype=np.uint64)
        return cls(f, f, u, u, u, u, u, u, exporter=exporter)

    @classmethod
    def from_records(cls, records: Sequence[FlowRecord]) -> FlowColumns:
        """Columns of ``records``; a malformed address becomes ``::`` (0, 0)."""
        src = [address_value(r.src) for r in records]
        dst = [address_value(r.dst) for r in records]
        exporters = {r.exporter for r in records}
        return cls(
            np.fromiter((r.time_start for r in records), dtype=np.float64, count=len(records)),
            np.fromiter((r.time_end for r in records), dtype=np.float64, count=len(records)),
            _u64(v >> 64 for v in src),
            _u64(v & 0xFFFF_FFFF_FFFF_FFFF for v in src),
            _u64(v >> 64 for v in dst),
            _u64(v & 0xFFFF_FFFF_FFFF_FFFF for v in dst),
            _u64(min(r.bytes, 2**64 - 1) for r in records),
            _u64(min(r.packets, 2**64 - 1) for r in records),
            np.fromiter((r.proto & 0xFF for r in records), dtype=np.uint8, count=len(records)),
            np.fromiter((r.src_port & 0xFFFF for r in records), dtype=np.uint16),
            np.fromiter((r.dst_port & 0xFFFF for r in records), dtype=np.uint16),
            **exporter_fields(exporters, lambda: [r.exporter for r in records]),
        )

    def to_records(self) -> list[FlowRecord]:
        """The flows as records, addresses as canonical text (IPv4 dotted quad)."""
        src = [
            address_text(h, lo)
            for h, lo in zip(self.src_hi.tolist(), self.src_lo.tolist(), strict=True)
        ]
        dst = [
            address_text(h, lo)
            for h, lo in zip(self.dst_hi.tolist(), self.dst_lo.tolist(), strict=True)
        ]
        exporters = (
            itertools.repeat(self.exporter, len(self))
            if self.exporters is None
            else self.exporters.tolist()
        )
        return [
            FlowRecord(start, end, s, d, size, packets, proto, sport, dport, exporter)
            for start, end, s, d, size, packets, proto, sport, dport, exporter in zip(
                self.time_start.tolist(),
                self.time_end.tolist(),
                src,
                dst,
                self.bytes.tolist(),
                self.packets.tolist(),
                self.proto.tolist(),
                self.src_port.tolist(),
                self.dst_port.tolist(),
                exporters,
                strict=True,
            )
        ]

    def take(self, index: npt.NDArray[np.intp] | npt.NDArray[np.bool_] | slice) -> FlowColumns:
        """The rows ``index`` selects (a slice, a boolean mask or positions), in that order."""
        made = FlowColumns.__new__(FlowColumns)
        for name in _FIELDS:
            setattr(made, name, getattr(self, name)[index])
        made.exporter = self.exporter
        made.exporters = None if self.exporters is None else self.exporters[index]
        return made

    @classmethod
    def concat(cls, batches: Sequence[FlowColumns]) -> FlowColumns:
        """One batch of ``batches`` one after the other."""
        if len(batches) == 1:
            return batches[0]
        if not batches:
            return cls.empty()
        columns = [np.concatenate([getattr(b, name) for b in batches]) for name in _FIELDS]
        made = cls.__new__(cls)
        for name, column in zip(_FIELDS, columns, strict=True):
            setattr(made, name, column)
        exporters = {b.exporter for b in batches if b.exporters is None and len(b)}
        mixed = any(b.exporters is not None for b in batches)
        if not mixed and len(exporters) <= 1:
            made.exporter = exporters.pop() if exporters else batches[0].exporter
            made.exporters = None
        else:
            made.exporter = ""
            made.exporters = np.concatenate([b.exporter_column() for b in batches])
        return made

    def exporter_column(self) -> Texts:
        """Each row's exporter as a column (made when a batch has none: only where exporters
        mix)."""
        if self.exporters is not None:
            return self.exporters
        return texts_column([self.exporter] * len(self))


def exporter_fields(texts: set[str], rows: Callable[[], Sequence[str]]) -> dict[str, Any]:
    """``exporter`` / ``exporters`` keyword arguments of a batch whose rows' exporters are
    ``texts``: ``rows()`` (each row's, in order) is asked for only when they mix."""
    if len(texts) <= 1:
        return {"exporter": next(iter(texts), ""), "exporters": None}
    return {"exporter": "", "exporters": texts_column(rows())}


def texts_column(texts: Sequence[str]) -> Texts:
    """``texts`` as a numpy object column."""
    column = np.empty(len(texts), dtype=object)
    column[:] = texts
    return column


def address_value(text: str) -> int:
    """``"192.0.2.1"`` → the 128-bit column value (IPv4-mapped); malformed → 0."""
    parsed = parse_address(text)
    if parsed is None:
        return 0
    version, value = parsed
    return value | 0xFFFF_0000_0000 if version == 4 else value


def address_text(hi: int, lo: int) -> str:
    """Text form of a column address (IPv4 dotted quad for IPv4-mapped values)."""
    if hi == 0 and lo >> 32 == 0xFFFF:
        return socket.inet_ntop(socket.AF_INET, (lo & 0xFFFF_FFFF).to_bytes(4, "big"))
    return socket.inet_ntop(socket.AF_INET6, ((hi << 64) | lo).to_bytes(16, "big"))


def is_v4(hi: U64, lo: U64) -> npt.NDArray[np.bool_]:
    """Which rows of an address column hold IPv4 addresses."""
    mask: npt.NDArray[np.bool_] = (hi == V4_HI) & ((lo & ~_LOW32) == V4_MARK)
    return mask


def v4_values(lo: U64) -> U64:
    """The IPv4 value of each row of the low half (meaningful where :func:`is_v4` holds)."""
    return lo & _LOW32


def _octet_table(end: str) -> npt.NDArray[np.uint32]:
    """Per octet value, its decimal text and ``end`` as 4 bytes (NUL-padded), as one uint32."""
    table = np.zeros((256, 4), dtype=np.uint8)
    for value in range(256):
        text = f"{value}{end}".encode("ascii")
        table[value, : len(text)] = list(text)
    words: npt.NDArray[np.uint32] = table.view(np.uint32).reshape(256)
    return words


#: the first three octets of a dotted quad, each with its dot; the last, ended by a space
_OCTET_DOT = _octet_table(".")
_OCTET_END = _octet_table(" ")
_BYTE = np.uint64(255)


def address_texts(hi: U64, lo: U64) -> list[str]:
    """Text forms of a whole address column (the same as :func:`address_text` row by row,
    about five times as fast for IPv4 rows)."""
    if not len(hi):
        return []
    v4 = is_v4(hi, lo)
    if not v4.all():
        return [address_text(h, low) for h, low in zip(hi.tolist(), lo.tolist(), strict=True)]
    # Every address as 16 bytes of octet texts padded with NULs, in one buffer: drop the
    # NULs and split at the spaces that end each address (the split leaves one "" last).
    values = v4_values(lo)
    quads = np.empty((len(values), 4), dtype=np.uint32)
    quads[:, 0] = _OCTET_DOT[values >> np.uint64(24)]
    quads[:, 1] = _OCTET_DOT[(values >> np.uint64(16)) & _BYTE]
    quads[:, 2] = _OCTET_DOT[(values >> np.uint64(8)) & _BYTE]
    quads[:, 3] = _OCTET_END[values & _BYTE]
    texts = quads.tobytes().translate(None, b"\0").decode("ascii").split(" ")
    texts.pop()
    return texts
