"""The state file: what the engine learned, saved atomically and restored on start.

Saved as versioned JSON through a temporary file, fsync and rename, so a crash leaves the
old or the new file, never a torn one. A file that cannot be used is moved aside.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import orjson

from egressd.decode.common import check_object_depth
from egressd.errors import DecodeError, StateError, StateTooLarge

log = logging.getLogger("egressd.state")

#: how the temporary file of a save is opened: created here, never an existing file or link
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

#: The integers orjson writes and reads back; one beyond them (a byte sum grown past
#: 2^64) is saturated instead of making every save fail.
INT_MAX = 2**64 - 1
INT_MIN = -(2**63)


#: The baselines' records (one base64 text, nearly all of a large state) are written as the
#: last member of ``baselines``, itself the last member of the state, so that the file ends
#: ``<_RECORDS_AT><base64><_RECORDS_END>``: still one JSON object, which a reader can also
#: take apart without parsing the records as JSON (see :func:`parse_state`).
_RECORDS_AT = b',"records":"'
_RECORDS_END = b'"}}'
#: base64 characters decoded at a time (whole quanta): each piece keeps the interpreter's
#: lock for a few milliseconds, so a thread decoding a million baselines' records does not
#: stop the event loop beside it for the second the whole text takes
BASE64_PIECE = 1 << 22
#: bytes of the key lists' JSON (the last members of ``baselines`` before the records: the
#: group number and the destination text of each key, ~13 MB at a million keys) parsed at a
#: time, so the thread restoring them holds the interpreter's lock for milliseconds at once
LIST_PIECE = 1 << 18
#: the key lists as :func:`parse_state` takes them apart (each with its separator)
_KEY_LISTS = ((b',"group":[', b","), (b',"dests":[', b'","'))


class Base64Records:
    """The baselines' records as a save writes them (``baselines["records"]`` of a snapshot
    taken for a save): a copy of their rows, whose base64 text is made only when the state
    is encoded, :data:`BASE64_PIECE` characters at a time, in the save's thread. Making the
    text of a million keys' records on the event loop (their bytes, base64, a ``str``)
    stood it still for over a second at every save. Equal to another with the same rows,
    and to its text."""

    __slots__ = ("rows",)

    def __init__(self, rows: npt.NDArray[np.uint8]) -> None:
        #: the records' bytes, one contiguous array (the caller's copy: the engine learns on)
        self.rows = np.ascontiguousarray(rows).reshape(-1)

    def pieces(self) -> Iterator[bytes]:
        """The base64 text's ASCII bytes, :data:`BASE64_PIECE` characters a piece (whole
        quanta, so that joined they are the text of all the bytes at once)."""
        data = self.rows.data
        step = BASE64_PIECE // 4 * 3
        for at in range(0, len(data), step):
            yield binascii.b2a_base64(data[at : at + step], newline=False)

    def text(self) -> str:
        """The base64 text (what the state file holds, and a snapshot for anything else)."""
        return base64.b64encode(self.rows.data).decode()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Base64Records):
            return bool(np.array_equal(self.rows, other.rows))
        if isinstance(other, str):
            return self.text() == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Base64Records({len(self.rows)} bytes)"


def encode_state(payload: dict[str, Any]) -> tuple[bytes, int]:
    """The JSON bytes of ``payload`` and how many values had to be saturated to write them.

    Integers outside [-2^63, 2^64 - 1] become the nearest end (orjson refuses them, and
    every save would fail from then on): no value can stop the state from being saved.
    Only a type that has no JSON form (a bug, not a value) raises StateError. The
    baselines' records go last (see :data:`_RECORDS_AT`).
    """
    pieces, clamped = encode_state_pieces(payload)
    return b"".join(pieces), clamped


def encode_state_pieces(payload: dict[str, Any]) -> tuple[list[bytes], int]:
    """:func:`encode_state` as the pieces that, joined, are its bytes: the baselines'
    records text (370 MB at a million keys) encoded :data:`BASE64_PIECE` characters at a
    time. :func:`save_state` writes them one after the other: encoding the text at once
    and joining it to the rest were two copies of it, each one call holding the
    interpreter's lock (0.5 s and more at a million keys, with the event loop beside the
    save's thread standing still) and together twice its size in memory. Records given as
    :class:`Base64Records` are encoded to base64 here, a piece at a time: the same bytes."""
    head, records = _records_apart(payload)
    # (the rest first, at once: a save in a thread may share containers with the engine,
    # and orjson holds the interpreter's lock while it writes them; the text is immutable)
    blob, clamped = _encode(head)
    if records is None:
        return [blob], clamped
    pieces = [blob[: -len(b"}}")], _RECORDS_AT]
    if isinstance(records, Base64Records):
        pieces += records.pieces()
        pieces.append(_RECORDS_END)
        return pieces, clamped
    for at in range(0, len(records), BASE64_PIECE):
        piece = records[at : at + BASE64_PIECE].encode("ascii")
        if piece.translate(None, _BASE64_CHARS):  # (what JSON would escape: orjson's)
            blob, clamped = _encode(payload)
            return [blob], clamped
        pieces.append(piece)
    pieces.append(_RECORDS_END)
    return pieces, clamped


def _records_apart(
    payload: dict[str, Any],
) -> tuple[dict[str, Any], str | Base64Records | None]:
    """``payload`` without the baselines' records text, and the text (None, with
    ``payload`` as it is, when it has no such text to write last)."""
    baselines = payload.get("baselines")
    if not isinstance(baselines, dict):
        return payload, None
    records = baselines.get("records")
    rest = {key: value for key, value in baselines.items() if key != "records"}
    text = isinstance(records, str) and records.isascii()
    if not (rest and (text or isinstance(records, Base64Records))):
        return payload, None
    head = {key: value for key, value in payload.items() if key != "baselines"}
    head["baselines"] = rest
    return head, records


#: the characters of a base64 text
_BASE64_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="


def _base64_only(blob: bytes, start: int, end: int) -> bool:
    """Whether ``blob[start:end]`` holds only base64 characters (checked in pieces)."""
    for at in range(start, end, BASE64_PIECE):
        if blob[at : min(at + BASE64_PIECE, end)].translate(None, _BASE64_CHARS):
            return False
    return True


def parse_state(blob: bytes, *, decode_records: bool = False) -> Any:
    """A state file's or snapshot's JSON, parsed (what ``orjson.loads`` returns); raises
    DecodeError (nested too deep, not an object) or orjson.JSONDecodeError.

    A file that ends in the baselines' records, as :func:`encode_state` writes it, is parsed
    without them, and the records text is taken from the bytes as it stands: orjson took
    over a second to parse a million baselines' 370 MB text into a string, holding the
    interpreter's lock throughout, so the event loop beside it (HTTP, the collector) stood
    still that long. With ``decode_records`` the text is decoded from base64 in pieces
    (:func:`decode_base64`) and ``baselines["records"]`` holds the records' bytes (a numpy
    array, which :meth:`SeasonalBaselines.load_json` takes as they are); without,
    the text (a ``str``). Any other file (older ones, whose records lie elsewhere) is
    parsed whole, as before.
    """
    data = _parse_apart(blob, decode_records)
    if data is not None:
        return data
    check_object_depth(blob)  # before orjson, which crashes on deep nesting before 3.9.15
    return orjson.loads(blob)


def _parse_apart(blob: bytes, decode: bool) -> dict[str, Any] | None:
    """The state with the records text taken apart, or None when ``blob`` does not end in
    it (or when taking it apart could mean something else than the whole parse).

    The head, closed by ``}}``, must parse to an object whose last member is a non-empty
    ``baselines`` object, and the text must hold only base64 characters (nothing JSON
    escapes): the file is then that object with one more member of ``baselines``,
    ``records``, a JSON string that is the text itself.
    """
    if not blob.endswith(_RECORDS_END):
        return None
    # (the first: a key cannot hide in a string, where quotes are escaped; and a record
    # text holds no quote)
    at = blob.find(_RECORDS_AT)
    if at < 0:
        return None
    head = blob[:at] + b"}}"
    try:
        check_object_depth(head)
        data = _parse_head(head)
    except (DecodeError, orjson.JSONDecodeError):
        return None
    if not (isinstance(data, dict) and data and next(reversed(data)) == "baselines"):
        return None
    baselines = data["baselines"]
    if not (isinstance(baselines, dict) and baselines):
        return None
    start, end = at + len(_RECORDS_AT), len(blob) - len(_RECORDS_END)
    try:
        if decode:  # (strict: base64 characters only)
            baselines["records"] = decode_base64(memoryview(blob)[start:end])
            return data
        if not _base64_only(blob, start, end):
            return None
        baselines["records"] = str(memoryview(blob)[start:end], "ascii")
    except ValueError:  # (UnicodeDecodeError too)
        return None
    return data


def _parse_head(head: bytes) -> Any:
    """``orjson.loads(head)``, the key lists that end it parsed apart, in pieces of about
    :data:`LIST_PIECE` bytes: orjson holds the interpreter's lock while it parses, and the
    lists (13 MB at a million keys) took 0.3-1.1 s of it in one call, the longest the event
    loop stood still beside a restore. A piece is cut only at a separator of the list's
    elements (a comma; for texts a quote, a comma and a quote) and parsed as a list of its
    own: when each is a list of at least one element, the whole is the list of all of
    them (JSON's grammar), so the result is what the whole parse gives; anything else (a
    cut inside a text, which holds that separator escaped, or another layout) parses
    ``head`` whole."""
    parts = _key_lists(head)
    if parts is not None:
        rest, lists = parts
        data = orjson.loads(rest)
        baselines = data.get("baselines") if isinstance(data, dict) else None
        if isinstance(baselines, dict) and next(reversed(data)) == "baselines":
            for (name, _separator), values in zip(_KEY_LISTS, lists, strict=True):
                baselines[name[2:-3].decode()] = values
            return data
    return orjson.loads(head)


def _key_lists(head: bytes) -> tuple[bytes, list[list[Any]]] | None:
    """``head`` without the key lists that end its ``baselines`` (closed again), and those
    lists parsed in pieces; None when it does not end in them or a piece is no list of at
    least one element."""
    end = len(head) - 2  # (head ends in the "}}" put after the records were cut off)
    bounds = []
    for name, _separator in reversed(_KEY_LISTS):
        start = head.rfind(name, 0, end)
        if start < 0 or head[end - 1 : end] != b"]":
            return None
        bounds.append((start + len(name), end - 1))
        end = start
    lists = []
    for (_name, separator), (first, last) in zip(_KEY_LISTS, reversed(bounds), strict=True):
        values = _list_in_pieces(head, first, last, separator)
        if values is None:
            return None
        lists.append(values)
    return head[:end] + b"}}", lists


def _list_in_pieces(text: bytes, first: int, last: int, separator: bytes) -> list[Any] | None:
    """The JSON array whose elements are ``text[first:last]``, parsed about
    :data:`LIST_PIECE` bytes at a time, cut after the comma of ``separator``; None when a
    piece is not a list of at least one element."""
    if first == last:
        return []
    comma = separator.index(b",")
    values: list[Any] = []
    at = first
    while True:
        cut = text.find(separator, at + LIST_PIECE, last)
        end = last if cut < 0 else cut + comma
        try:
            piece = orjson.loads(b"[" + text[at:end] + b"]")
        except orjson.JSONDecodeError:
            return None
        if not piece:  # (nothing after the last comma, say: no list)
            return None
        values += piece
        if cut < 0:
            return values
        at = end + 1


def decode_base64(text: str | memoryview) -> npt.NDArray[np.uint8]:
    """Strict base64 (no other characters, padding only at the end) decoded in pieces of
    :data:`BASE64_PIECE` characters, as bytes in an array; raises ValueError when it is
    not base64."""
    # (an array left unset, each piece written once: a bytearray of the size would be
    # zeroed first, all of it in one call)
    out = np.empty(len(text) // 4 * 3, np.uint8)
    filled = 0
    try:
        for start in range(0, len(text), BASE64_PIECE):
            piece = binascii.a2b_base64(text[start : start + BASE64_PIECE], strict_mode=True)
            out[filled : filled + len(piece)] = np.frombuffer(piece, np.uint8)
            filled += len(piece)
    except (binascii.Error, ValueError) as exc:  # (ValueError: a text that is not ASCII)
        raise ValueError(f"not base64: {exc}") from None
    return out[:filled]


def _encode(payload: dict[str, Any]) -> tuple[bytes, int]:
    try:
        return orjson.dumps(payload), 0
    except TypeError:
        pass  # the slow path below: saturate what orjson refuses, then try again
    clamped = [0]
    safe = _saturate(payload, clamped)
    try:
        return orjson.dumps(safe), clamped[0]
    except TypeError as exc:
        raise StateError(f"cannot serialise state: {exc}") from exc


def _saturate(value: Any, clamped: list[int]) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, Base64Records):
        return value.text()
    if isinstance(value, int):
        if INT_MIN <= value <= INT_MAX:
            return value
        clamped[0] += 1
        return INT_MAX if value > 0 else INT_MIN
    if isinstance(value, dict):
        return {key: _saturate(item, clamped) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_saturate(item, clamped) for item in value]
    return value  # orjson's own types (dataclasses, enums, ...) or a bug: it decides


def save_state(
    path: Path,
    data: dict[str, Any],
    *,
    extra: dict[str, Any] | None = None,
    on_clamped: Callable[[int], None] | None = None,
) -> int:
    """Write ``data`` (plus ``extra`` top-level entries) to ``path`` atomically; returns bytes.

    The file is created with mode 0600: it reveals who talks to whom. Values beyond what
    JSON readers take are saturated (see :func:`encode_state`), logged, and their number
    passed to ``on_clamped``.
    """
    payload = dict(data)
    if extra:
        payload.update(extra)
    payload["saved_at"] = time.time()
    pieces, clamped = encode_state_pieces(payload)
    if clamped:
        log.warning(
            "state: %d integer(s) beyond the 64-bit range saved at its limit "
            "(a counter grew past what any link carries)",
            clamped,
        )
        if on_clamped is not None:
            on_clamped(clamped)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        # Whatever sits at the temporary name (a FIFO would block the open for ever, a
        # symlink would have us overwrite its target) is removed, and the file is created
        # anew: O_EXCL and O_NOFOLLOW refuse anything planted between the two.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, _CREATE, 0o600)
        try:
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StateError(f"cannot save state to {path}: {exc.strerror or exc}") from exc
    return sum(map(len, pieces))


def _remove_stale_temps(path: Path) -> None:
    """Delete temporary files of savers killed mid-write (their process is gone).

    Each one is as large as the state; left alone they pile up with every crash until
    the state directory is full and saving fails.
    """
    prefix, suffix = f".{path.name}.", ".tmp"
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix) : -len(suffix)]
        if not (name.startswith(prefix) and name.endswith(suffix) and pid.isdigit()):
            continue
        if int(pid) == os.getpid() or _process_exists(int(pid)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(path.parent / name)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: someone else's process
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


#: the default of state.max_size
MAX_STATE_SIZE = 256_000_000


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading; StateError when it is not a regular file.

    Opened without blocking, so a FIFO planted at the path cannot hold the caller for ever;
    a FIFO or a device (``/dev/zero`` would be read up to the size limit) is refused.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    file = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        file.close()
        raise StateError(f"{path} is not a regular file")
    return file


#: how every state file egressd writes begins (:meth:`egressd.pipeline.Engine.snapshot`)
STATE_SIGNATURE = b'{"version":'


def foreign_state(path: Path) -> str | None:
    """Why ``path`` is no state file of egressd's, or None when it may be one: absent (a
    first start), empty, or beginning as egressd writes a state file.

    An unusable state file is moved aside and replaced (a damaged state must not stop the
    daemon or a scheduled replay); a path naming something else (a directory, a device, a
    capture or a system file given by mistake) must never be renamed or overwritten, so
    ``egressd replay --state``, ``check-config`` and the daemon's start refuse it.
    """
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return f"cannot read: {getattr(exc, 'strerror', None) or exc}"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file; give a state file's path"
    if info.st_size == 0:
        return None
    try:
        # Without blocking, in case a FIFO took the file's place since the stat above.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return "not a regular file; give a state file's path"
            head = os.read(fd, len(STATE_SIGNATURE))
        finally:
            os.close(fd)
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if head != STATE_SIGNATURE:
        return (
            "not an egressd state file (it does not begin as one); nothing was changed: give "
            "another path, or remove the file to learn afresh"
        )
    return None


def load_state(
    path: Path, max_size: int = MAX_STATE_SIZE, *, decode_records: bool = False
) -> dict[str, Any] | None:
    """The saved state, or None when there is none. Raises StateError when it is unreadable.

    A file over ``max_size`` bytes is not read at all (StateTooLarge): parsing JSON takes
    several times its size in memory, so a huge (or sparse) file could exhaust it.
    ``decode_records``: the baselines' records may come back decoded (see
    :func:`parse_state`), for an engine to restore; not for writing the data again.
    """
    try:
        with open_regular(path) as file:
            size = os.fstat(file.fileno()).st_size
            if size > max_size:
                raise StateTooLarge(_too_large(path, size, max_size))
            blob = file.read(max_size + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read state file {path}: {exc.strerror or exc}") from exc
    if len(blob) > max_size:  # it grew between the stat and the read
        raise StateTooLarge(_too_large(path, len(blob), max_size))
    try:
        data = parse_state(blob, decode_records=decode_records)
    except DecodeError as exc:
        raise StateError(f"state file {path} is not usable: {exc}") from exc
    except orjson.JSONDecodeError as exc:
        raise StateError(f"state file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise StateError(f"state file {path} does not hold a JSON object")
    return data


def saved_too_large(path: Path, size: int, max_size: int) -> str:
    """What to say when a save wrote more than ``state.max_size``: a start would not read it."""
    return (
        f"state saved to {path} holds {size:,} bytes, over state.max_size ({max_size:,}): "
        "the next start will not read it and learning would start again; "
        "raise state.max_size (or lower detection.max_keys)"
    )


def _too_large(path: Path, size: int, max_size: int) -> str:
    return (
        f"state file {path} holds {size:,} bytes, over state.max_size ({max_size:,}); "
        "not read (raise state.max_size to use it)"
    )


def move_aside(path: Path, reason: str) -> Path | None:
    """Rename an unusable state file to ``<name>.bad-<timestamp>`` and warn; returns new path.

    An earlier file moved aside in the same second is kept: the new one gets a suffix.
    """
    stem = f"{path.name}.bad-{time.strftime('%Y%m%dT%H%M%S')}"
    target = path.with_name(stem)
    suffix = 1
    while target.exists():
        suffix += 1
        target = path.with_name(f"{stem}-{suffix}")
    try:
        os.replace(path, target)
    except OSError as exc:
        log.warning(
            "state file %s is unusable (%s) and could not be moved aside: %s", path, reason, exc
        )
        return None
    log.warning(
        "state file %s is unusable (%s); moved to %s, learning starts again", path, reason, target
    )
    return target
