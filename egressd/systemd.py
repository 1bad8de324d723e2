"""systemd integration: sd_notify readiness, status and watchdog pings over NOTIFY_SOCKET.

Stdlib only; every call is a no-op when the daemon does not run under systemd (no socket).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("egressd.systemd")


class Notifier:
    """Sends sd_notify messages; inert without ``NOTIFY_SOCKET``. Errors are logged, not raised.

    A lost notification must never take the daemon down: systemd would notice the missing
    watchdog ping and restart it anyway, which is the right outcome.
    """

    __slots__ = ("_address", "_socket", "watchdog_interval")

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if path.startswith("@"):
            # Abstract namespace: a leading NUL byte instead of '@'.
            self._address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self._address = path
        self._socket: socket.socket | None = None
        #: seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked
        self.watchdog_interval: float | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1e6 / 2

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *fields: str) -> bool:
        """Send ``fields`` ("READY=1", "STATUS=...") as one datagram; True when sent."""
        if self._address is None:
            return False
        message = "\n".join(fields).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC
                )
            self._socket.sendto(message, self._address)
        except OSError as exc:
            log.warning("sd_notify failed: %s", exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, status: str) -> bool:
        return self.notify(f"STATUS={status}")

    async def keep_alive(self, interval: float) -> None:
        """Ping the watchdog every ``interval`` from the event loop itself: a stuck loop
        stops the pings and systemd acts."""
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd >= 253 (Type=notify-reload) tie it to its own SIGHUP.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
