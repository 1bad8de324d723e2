"""Connection limits for the HTTP listener: header timeout and a cap below the fd limit.

aiohttp closes idle keep-alive connections, but a connection that never completes a request
head (an idle or slowloris client) stays open for ever, and each one holds a file
descriptor. A few thousand of them exhausted the open-file limit: state saves, Alertmanager
pushes and /metrics then failed with "Too many open files". So every connection sits
behind a small protocol wrapper here:

- the head of each request must arrive within ``header_timeout`` of its first byte (or of
  the connection) or the connection is aborted;
- at most ``limit`` connections are open, kept below the process's open-file limit with a
  reserve for the state file, pushes and sources; a new connection over the cap aborts the
  oldest one that has not yet sent a complete request head, or when there is none the one
  silent the longest. A flood of idle connections thus evicts itself, while a scrape,
  which sends its request at once, is served.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from ssl import SSLContext
from typing import Any

from aiohttp import web

log = logging.getLogger("egressd.http")

#: file descriptors kept free of HTTP connections (state saves, pushes, sources, logs)
FD_RESERVE = 192
#: listen backlog: also bounds how many connections one loop iteration accepts
BACKLOG = 64
_HEAD_END = b"\r\n\r\n"


@dataclass(slots=True)
class ConnectionStats:
    """What the guard did, read by the metrics collector."""

    open: int = 0
    limit: int = 0
    header_timeouts: int = 0  # request head not complete in time
    evicted: int = 0  # closed to admit a new connection at the cap
    malformed: int = 0  # requests refused with 400 because they were not valid HTTP


def connection_limit(max_connections: int, nofile: int | None = None) -> int:
    """``max_connections``, lowered to leave ``FD_RESERVE`` of the open-file limit free."""
    if nofile is None:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if nofile == resource.RLIM_INFINITY or nofile <= 0:
        return max_connections
    reserve = min(FD_RESERVE, nofile // 2)
    return max(1, min(max_connections, nofile - reserve - BACKLOG))


class ConnectionGuard:
    """Protocol factory wrapping aiohttp's; keeps the open connections in eviction order."""

    __slots__ = ("_active", "_factory", "_waiting", "header_timeout", "stats")

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        limit: int,
        header_timeout: float,
        stats: ConnectionStats,
    ) -> None:
        self._factory = factory
        #: connections that never sent a complete request head, oldest first
        self._waiting: OrderedDict[_GuardedProtocol, None] = OrderedDict()
        #: connections that did, the longest silent first
        self._active: OrderedDict[_GuardedProtocol, None] = OrderedDict()
        self.header_timeout = header_timeout
        self.stats = stats
        stats.limit = limit

    def __call__(self) -> asyncio.Protocol:
        return _GuardedProtocol(self, self._factory())

    def admit(self, conn: _GuardedProtocol) -> None:
        """Register a new connection, closing another first when at the cap."""
        while self._waiting or self._active:
            if len(self._waiting) + len(self._active) < self.stats.limit:
                break
            victims = self._waiting if self._waiting else self._active
            victim = next(iter(victims))
            self.stats.evicted += 1
            self._forget(victim)
            victim.abort()
        self._waiting[conn] = None
        self._count()

    def touch(self, conn: _GuardedProtocol, head_seen: bool) -> None:
        """Data arrived on ``conn``; ``head_seen`` when it completed a request head."""
        if conn in self._active:
            self._active.move_to_end(conn)
        elif head_seen and conn in self._waiting:
            del self._waiting[conn]
            self._active[conn] = None

    def _count(self) -> None:
        self.stats.open = len(self._waiting) + len(self._active)

    def _forget(self, conn: _GuardedProtocol) -> None:
        self._waiting.pop(conn, None)
        self._active.pop(conn, None)
        self._count()

    def closed(self, conn: _GuardedProtocol) -> None:
        self._forget(conn)

    def timed_out(self, conn: _GuardedProtocol) -> None:
        self.stats.header_timeouts += 1
        self._forget(conn)
        conn.abort()


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's request handler with a header deadline; data passes through unchanged."""

    __slots__ = ("_admitted", "_guard", "_inner", "_tail", "_timer", "_transport")

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: Any = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, to find a head end split across reads
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # uvloop's transports are not asyncio.Transport subclasses
        self._guard.admit(self)
        self._admitted = True
        self._start_timer()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if not self._admitted:
            return
        self._guard.touch(self, self._track_heads(data))
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._guard.closed(self)
        if self._admitted:
            self._admitted = False
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._admitted:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._admitted:
            self._inner.resume_writing()

    def abort(self) -> None:
        self._stop_timer()
        if self._transport is not None:
            self._transport.abort()

    # -- request heads --------------------------------------------------------------------

    def _track_heads(self, data: bytes) -> bool:
        """True when a head ended in ``data``; bytes after the last end start the next clock.

        A head ends at CRLFCRLF (egressd serves GET only: no body follows it).
        """
        seen = self._tail + data
        end = seen.rfind(_HEAD_END)
        self._tail = seen[-(len(_HEAD_END) - 1) :]
        if end < 0:
            if self._timer is None:
                self._start_timer()  # a new request began on a kept-alive connection
            return False
        self._stop_timer()
        if end + len(_HEAD_END) < len(seen):
            self._start_timer()  # a pipelined request started after it
        return True

    def _start_timer(self) -> None:
        self._stop_timer()
        self._timer = asyncio.get_running_loop().call_later(
            self._guard.header_timeout, self._guard.timed_out, self
        )

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class GuardedSite(web.BaseSite):
    """A TCP site like aiohttp's TCPSite whose connections pass through a ConnectionGuard."""

    __slots__ = ("_guard_args", "_host", "_port", "bound")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        ssl_context: SSLContext | None,
        limit: int,
        header_timeout: float,
        stats: ConnectionStats,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context, backlog=BACKLOG)
        self._host = host
        self._port = port
        self._guard_args = (limit, header_timeout, stats)
        self.bound: tuple[str, int] | None = None

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server: Any = self._runner.server
        assert server is not None
        limit, header_timeout, stats = self._guard_args
        guard = ConnectionGuard(server, limit, header_timeout, stats)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            guard,
            self._host,
            self._port,
            ssl=self._ssl_context,
            backlog=self._backlog,
            reuse_address=True,
            ssl_handshake_timeout=header_timeout if self._ssl_context else None,
        )
        sockets = self._server.sockets
        if sockets:
            bound = sockets[0].getsockname()
            self.bound = (str(bound[0]), int(bound[1]))
