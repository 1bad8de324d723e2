"""The state file: what the engine learned, saved atomically and restored on start.

Saved as versioned JSON through a temporary file, fsync and rename, so a crash leaves the
old or the new file, never a torn one. A file that cannot be used is moved aside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

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


def encode_state(payload: dict[str, Any]) -> tuple[bytes, int]:
    """The JSON bytes of ``payload`` and how many values had to be saturated to write them.

    Integers outside [-2^63, 2^64 - 1] become the nearest end (orjson refuses them, and
    every save would fail from then on): no value can stop the state from being saved.
    Only a type that has no JSON form (a bug, not a value) raises StateError.
    """
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
    blob, clamped = encode_state(payload)
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
            view = memoryview(blob)
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
    return len(blob)


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


def load_state(path: Path, max_size: int = MAX_STATE_SIZE) -> dict[str, Any] | None:
    """The saved state, or None when there is none. Raises StateError when it is unreadable.

    A file over ``max_size`` bytes is not read at all (StateTooLarge): parsing JSON takes
    several times its size in memory, so a huge (or sparse) file could exhaust it.
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
        check_object_depth(blob)  # before orjson, which crashes on deep nesting before 3.9.15
        data = orjson.loads(blob)
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
