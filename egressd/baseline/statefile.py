"""The state file: what the engine learned, saved atomically and restored on start.

Saved as versioned JSON through a temporary file, fsync and rename, so a crash leaves the
old or the new file, never a torn one. A file that cannot be used is moved aside.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import orjson

from egressd.errors import StateError

log = logging.getLogger("egressd.state")


def save_state(path: Path, data: dict[str, Any], *, extra: dict[str, Any] | None = None) -> int:
    """Write ``data`` (plus ``extra`` top-level entries) to ``path`` atomically; returns bytes.

    The file is created with mode 0600: it reveals who talks to whom.
    """
    payload = dict(data)
    if extra:
        payload.update(extra)
    payload["saved_at"] = time.time()
    try:
        blob = orjson.dumps(payload)
    except TypeError as exc:
        raise StateError(f"cannot serialise state: {exc}") from exc
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
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


def load_state(path: Path) -> dict[str, Any] | None:
    """The saved state, or None when there is none. Raises StateError when it is unreadable."""
    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot read state file {path}: {exc.strerror or exc}") from exc
    try:
        data = orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        raise StateError(f"state file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise StateError(f"state file {path} does not hold a JSON object")
    return data


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
