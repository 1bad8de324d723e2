"""The alert log: every alert transition appended as one contract-2 JSON line to a file.

A plain, greppable record of what egressd said and when, independent of Alertmanager.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

import orjson

from egressd.detect.alerts import Alert

log = logging.getLogger("egressd.alertlog")


class AlertLog:
    """Appends alert events to ``path`` (mode 0600). Inert until :meth:`start`."""

    __slots__ = ("_fd", "errors", "path", "written")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.written = 0
        self.errors = 0

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def publish(self, alerts: Iterable[Alert]) -> None:
        if self._fd is None:
            return
        # One write per batch: O_APPEND keeps lines whole even with a concurrent reader.
        blob = b"".join(orjson.dumps(alert.event()) + b"\n" for alert in alerts)
        if not blob:
            return
        try:
            os.write(self._fd, blob)
            self.written += blob.count(b"\n")
        except OSError as exc:
            self.errors += 1
            log.warning("cannot append to alert log %s: %s", self.path, exc)

    async def stop(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
