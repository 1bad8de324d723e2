"""Recorded input for ``egressd replay``: one reader per format, each yielding flow records.

Readers count what they read and skip in a :class:`~egressd.stats.SourceStats`; a malformed
line, datagram or packet is counted under its reason and skipped, never fatal.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import logging
import sys
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from egressd.columns import FlowColumns
from egressd.errors import DecodeError, EgressdError, SourceError
from egressd.model import FlowRecord
from egressd.stats import SourceStats

_log = logging.getLogger(__name__)

#: bytes of one line → a record, None for a line to skip on purpose; raises DecodeError
LineDecoder = Callable[[bytes], FlowRecord | None]
#: (binary stream, stats) → records
RecordReader = Callable[[BinaryIO, SourceStats], Iterator[FlowRecord]]


def _line_decoder(fmt: str) -> LineDecoder:
    if fmt == "goflow2-json":
        from egressd.decode.goflow2 import decode_goflow2_json

        return decode_goflow2_json
    if fmt == "pmacct-json":
        from egressd.decode.pmacct import decode_pmacct_json

        return decode_pmacct_json
    if fmt == "egressd-json":
        from egressd.decode.egressd_json import decode_egressd_json

        return decode_egressd_json
    raise KeyError(fmt)


_PRETTY_PUNCTUATION = frozenset((b"{", b"}", b"},", b"[", b"]", b"[{", b"}]", b"},{"))


def looks_like_multi_line_json(line: bytes) -> bool:
    """A line of pretty-printed JSON (``{`` alone, or ``"key": value,``) rather than a record.

    A broken record of JSON Lines starts with ``{``; a line that is only punctuation or starts
    with a quoted key is a piece of one object spread over many lines.
    """
    text = line.strip()
    if text in _PRETTY_PUNCTUATION:
        return True
    return text.startswith(b'"') and b'":' in text.replace(b'" :', b'":')


def read_lines(stream: BinaryIO, stats: SourceStats, decode: LineDecoder) -> Iterator[FlowRecord]:
    """Records of a JSON-lines stream; blank lines are ignored, bad ones counted and skipped."""
    # Counting happens in locals, written back as the generator advances or ends: this loop
    # runs once per line and attribute updates were a measurable part of a replay.
    units = records = 0
    skipping = False  # the rest of a line over MAX_LINE
    try:
        for line in iter(functools.partial(stream.readline, MAX_LINE), b""):
            if skipping:
                skipping = not line.endswith(b"\n")
                continue
            units += 1
            if len(line) >= MAX_LINE and not line.endswith(b"\n"):
                stats.failed("line_too_long")
                skipping = True
                continue
            try:
                record = decode(line)
            except DecodeError as exc:
                if not line.strip():
                    units -= 1  # blank lines are not input
                    continue
                if exc.reason == "bad_json" and looks_like_multi_line_json(line):
                    stats.failed("multi_line_json")
                    continue
                stats.failed(exc.reason)
                continue
            if record is None:
                stats.drop("skipped")
                continue
            records += 1
            yield record
    finally:
        stats.units += units
        stats.records += records


#: bytes of lines decoded into one batch of columns (about a thousand goflow2 lines)
COLUMN_BLOCK = 1 << 18
#: a line longer than this (a flow line takes about a kilobyte) is counted as
#: ``line_too_long`` and skipped, never held whole: lines were read whole, and a 1 MB .gz
#: file of one line took 3.2 GB of memory to replay
MAX_LINE = 4 << 20


def line_blocks(
    stream: BinaryIO, stats: SourceStats, block: int = COLUMN_BLOCK
) -> Iterator[list[bytes]]:
    """The lines of ``stream`` (with their line ends, as ``readline`` gives them), about
    ``block`` bytes of them at a time; a line longer than :data:`MAX_LINE` is counted and
    skipped as it is read."""
    carry = b""
    skipping = False  # the rest of a line over MAX_LINE
    while data := stream.read(block):
        if skipping:
            cut = data.find(b"\n")
            if cut < 0:
                continue
            data = data[cut + 1 :]
            skipping = False
        cut = data.rfind(b"\n")
        if cut < 0:
            carry = carry + data if carry else data
            if len(carry) >= MAX_LINE:
                stats.units += 1
                stats.failed("line_too_long")
                carry = b""
                skipping = True
            continue
        # Lines with their line ends, found with memchr (``bytes.split`` compares byte by
        # byte: more than a tenth of the read + orjson.loads floor of replaying a file).
        # The piece after the last line end begins the next block's first line: only that
        # line is joined, not the block copied behind it.
        lines = io.BytesIO(data).readlines()
        complete = len(carry) + cut  # bytes of the block's complete lines, less a line end
        if carry:
            lines[0] = carry + lines[0]
        carry = lines.pop() if cut + 1 < len(data) else b""
        if complete >= MAX_LINE:  # rare: one of them may be too long (its line end not counted)
            kept = [line for line in lines if len(line) <= MAX_LINE]
            if len(kept) < len(lines):
                for _ in range(len(lines) - len(kept)):
                    stats.units += 1
                    stats.failed("line_too_long")
                lines = kept
        yield lines
    if len(carry) >= MAX_LINE:
        stats.units += 1
        stats.failed("line_too_long")
    elif carry:
        yield [carry]


def read_line_columns(stream: BinaryIO, stats: SourceStats, fmt: str) -> Iterator[FlowColumns]:
    """Flows of a JSON-lines stream as columns, a block of lines at a time.

    Counts and skips exactly what :func:`read_lines` with the format's record decoder does,
    and the flows are the same, in the same order (see :mod:`egressd.decode.columnar`).
    """
    from egressd.decode.columnar import JsonColumnDecoder

    decoder = JsonColumnDecoder(fmt)
    for lines in line_blocks(stream, stats):
        columns = decoder.decode(lines, stats)
        if len(columns):
            yield columns


def _reader(fmt: str) -> RecordReader | None:
    if fmt in LINE_FORMATS:
        decode = _line_decoder(fmt)
        return lambda stream, stats: read_lines(stream, stats, decode)
    if fmt == "pcap":
        from egressd.sources.pcapfile import read_packet_capture

        return read_packet_capture
    if fmt == "netflow-pcap":
        from egressd.sources.pcapfile import read_netflow_capture

        return read_netflow_capture
    if fmt == "nfdump":
        return None
    raise KeyError(fmt)


LINE_FORMATS = ("goflow2-json", "pmacct-json", "egressd-json")
FILE_FORMATS = (*LINE_FORMATS, "netflow-pcap", "pcap", "nfdump")
#: formats read straight into columns (:func:`read_columns_file`), same flows as records
COLUMN_FORMATS = ("netflow-pcap", *LINE_FORMATS, "nfdump")


def read_columns_file(fmt: str, path: str | Path, stats: SourceStats) -> Iterator[FlowColumns]:
    """Flows of one recorded input as column batches; only for :data:`COLUMN_FORMATS`."""
    if fmt not in COLUMN_FORMATS:
        raise EgressdError(f"format {fmt!r} has no column reader")
    if fmt == "nfdump":  # nfdump reads the files itself
        from egressd.sources.nfdump import read_nfdump_columns

        yield from read_nfdump_columns(path, stats)
        return
    stream = open_input(str(path))
    try:
        with _named(path, stats):
            if fmt in LINE_FORMATS:
                yield from read_line_columns(stream, stats, fmt)
                return
            from egressd.sources.pcapfile import read_netflow_columns

            yield from read_netflow_columns(stream, stats)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


@contextlib.contextmanager
def _named(path: str | Path, stats: SourceStats) -> Iterator[None]:
    """Reading ``path``: a compressed file cut short ends it (counted as ``truncated``, what
    came before it counts); one that is no gzip, or corrupt, is an error naming the file."""
    try:
        yield
    except EOFError:
        stats.failed("truncated")
        _log.warning("%s: ends mid-way (a compressed file cut short): read up to there", path)
    except SourceError as exc:
        raise EgressdError(f"{path}: {exc}") from None
    except (OSError, zlib.error) as exc:
        raise EgressdError(f"{path}: cannot read: {exc}") from None


def open_input(path: str) -> BinaryIO:
    """Open ``path`` for reading ("-" is standard input; ``.gz`` files are decompressed)."""
    if path == "-":
        return sys.stdin.buffer
    try:
        if path.endswith(".gz"):
            return gzip.open(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except OSError as exc:
        raise EgressdError(f"{path}: cannot open: {exc.strerror or exc}") from None


def read_file(fmt: str, path: str | Path, stats: SourceStats) -> Iterator[FlowRecord]:
    """Records of one recorded input file in format ``fmt``."""
    try:
        reader = _reader(fmt)
    except KeyError:
        raise EgressdError(
            f"unknown format {fmt!r}: use one of {', '.join(FILE_FORMATS)}"
        ) from None
    if reader is None:  # nfdump reads the files itself
        from egressd.sources.nfdump import read_nfdump

        yield from read_nfdump(path, stats)
        return
    stream = open_input(str(path))
    try:
        with _named(path, stats):
            yield from reader(stream, stats)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
