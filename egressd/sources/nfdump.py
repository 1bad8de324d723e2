"""nfcapd flow archives read through nfdump's own reader (``nfdump -r FILE`` / ``-R DIR``).

nfdump prints times in the local time zone without an offset, so it runs with ``TZ=UTC``
and its times are read as UTC. It writes a JSON array, split here one record at a time.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from egressd.columns import FlowColumns
from egressd.decode.nfdump_json import NfdumpJsonSplitter, decode_nfdump_object, load_record
from egressd.errors import DecodeError, SourceError
from egressd.model import FlowRecord
from egressd.stats import SourceStats

_log = logging.getLogger(__name__)

#: bytes of nfdump's output split at a time
_CHUNK = 1 << 20

#: the program that reads nfcapd files; ``EGRESSD_NFDUMP`` names another one
NFDUMP = "nfdump"


def nfdump_command(path: str | Path) -> list[str]:
    """The command that prints the flows of an nfcapd file (``-r``) or directory (``-R``)."""
    program = os.environ.get("EGRESSD_NFDUMP", NFDUMP)
    found = shutil.which(program)
    if found is None:
        raise SourceError(
            f"--format nfdump needs nfdump to read nfcapd files, and {program!r} is not "
            "installed (Debian/Ubuntu: apt-get install nfdump)",
            retriable=False,
        )
    flag = "-R" if Path(path).is_dir() else "-r"
    return [found, flag, str(path), "-o", "json", "-q"]


def read_nfdump(path: str | Path, stats: SourceStats) -> Iterator[FlowRecord]:
    """Flow records of an nfcapd file or directory, in the order nfdump prints them."""
    units = records = 0
    try:
        for texts in _record_texts(path, stats):
            for text in texts:
                units += 1
                try:
                    record = decode_nfdump_object(load_record(text))
                except DecodeError as exc:
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


def read_nfdump_columns(path: str | Path, stats: SourceStats) -> Iterator[FlowColumns]:
    """:func:`read_nfdump` as column batches (the same flows in the same order, the same
    counters), one per piece of nfdump's output."""
    from egressd.decode.columnar import JsonColumnDecoder

    decoder = JsonColumnDecoder("nfdump")
    for texts in _record_texts(path, stats):
        # Every record text is input and keeps its error reason, as failures say.
        columns = decoder.decode(texts, stats, [])
        if len(columns):
            yield columns


def _record_texts(path: str | Path, stats: SourceStats) -> Iterator[list[bytes]]:
    """The texts of nfdump's records, a list per piece of its output read."""
    if str(path) == "-":
        raise SourceError(
            "--format nfdump reads nfcapd files or directories, not stdin", retriable=False
        )
    if not Path(path).exists():
        raise SourceError(f"{path}: no such file or directory", retriable=False)
    command = nfdump_command(path)
    environment = dict(os.environ, TZ="UTC")
    # stderr goes to a file: a pipe nobody reads while stdout streams could fill and stall it.
    errors = tempfile.TemporaryFile()  # noqa: SIM115 - closed with the process below
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL, env=environment
    )
    assert process.stdout is not None
    splitter = NfdumpJsonSplitter()
    try:
        while chunk := process.stdout.read(_CHUNK):
            texts = splitter.feed(chunk)
            if texts:
                yield texts
        returncode = process.wait()
        errors.seek(0)
        error = errors.read(2000).decode(errors="replace").strip()
        if error and returncode == 0:
            # nfdump skips a file it cannot read (bad magic, truncated) with a message and
            # status 0: count it as a bad input and say what nfdump said.
            stats.failed("nfdump_error")
            _log.warning("%s: nfdump: %s", path, " / ".join(error.splitlines()[:3]))
        if returncode != 0:
            raise SourceError(
                f"{path}: nfdump exited with {returncode}: {error or 'no message'}",
                retriable=False,
            )
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stdout.close()
        errors.close()
