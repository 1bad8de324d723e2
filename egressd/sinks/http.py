"""The HTTP face of the daemon: /metrics, /healthz, /readyz and the JSON API under /api/v1.

Loopback by default; optional TLS and bcrypt basic auth in the manner of Prometheus'
web configuration.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import importlib
import logging
import math
import os
import resource
import ssl
import time
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from egressd.config import HttpConfig, split_host_port
from egressd.errors import ConfigError, SinkError
from egressd.sinks.guard import ConnectionStats, GuardedSite, connection_limit

log = logging.getLogger("egressd.http")

_JSON = "application/json"
#: verified (user, password) pairs remembered, and for how long
AUTH_CACHE_SIZE = 256
AUTH_CACHE_TTL = 300.0
#: bcrypt checks running at once (threads beside the event loop) and waiting for one
AUTH_WORKERS = 1
AUTH_QUEUE = 16
#: bcrypt takes at most this many password bytes; longer ones are refused, not truncated
BCRYPT_MAX_PASSWORD = 72
#: at most one log line per this many seconds about malformed requests
MALFORMED_LOG_EVERY = 60.0
#: ``/api/v1/baselines`` bodies are reused while the baselines stay as they were (they
#: change when an interval closes), so clients asking again and again cost one build, and
#: share one body in memory, per change
#: summaries made between two yields to the event loop while building that body
BASELINES_BLOCK = 500
#: bodies kept (one per group asked for; the oldest goes first)
BASELINES_CACHED = 16
#: a /metrics build starts only once this many times the last build's duration has passed
#: since it ended: clients scraping without pause get at most 1 / (1 + this) of the event
#: loop (a scrape of 100,000 baselines takes tens of milliseconds, on the loop)
SCRAPE_PAUSE = 4.0


class DaemonView(Protocol):
    """What the HTTP API shows; the daemon implements it, tests may fake it."""

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) — reason says what is missing when not ready."""
        ...

    def firing_alerts(self) -> list[dict[str, Any]]:
        """Contract-2 events of every firing alert."""
        ...

    def baselines(self, group: str | None) -> Iterable[dict[str, Any]]:
        """Summaries of the baselines of ``group`` (every group when None), each made when
        it is taken: the server takes them a block at a time between other work."""
        ...

    def baselines_version(self) -> Hashable:
        """Changes whenever the baselines may have: answers built under one version are
        reused while it holds."""
        ...


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes, off the event loop.

    bcrypt is slow on purpose (tens to hundreds of ms per check), so it never runs on the
    event loop: at most ``AUTH_WORKERS`` checks run at once in their own threads, at most
    ``AUTH_QUEUE`` more wait, and any further attempt is refused at once (counted as
    ``busy``). Wrong passwords therefore cost one core at most and cannot stall the
    collector. A verified (user, password) pair is remembered for ``AUTH_CACHE_TTL`` under
    an HMAC with a per-process random key, so Prometheus' scrapes are one hash each. An
    unknown user is checked against a dummy hash of the same cost as the configured ones,
    so answering takes as long as for a known user with a wrong password. A password over
    72 bytes (bcrypt's limit) is refused without hashing.
    """

    __slots__ = (
        "_bcrypt",
        "_cache",
        "_dummy",
        "_key",
        "_pending",
        "_pool",
        "_users",
        "outcomes",
    )

    def __init__(self, users: tuple[tuple[str, str], ...]) -> None:
        try:
            bcrypt: Any = importlib.import_module("bcrypt")
        except ImportError:
            raise ConfigError(
                "http.basic_auth_users: bcrypt hashes need the Python package 'bcrypt'"
            ) from None
        self._bcrypt = bcrypt
        self._users = {user: hashed.encode() for user, hashed in users}
        self._dummy = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(_cost(users)))
        self._key = os.urandom(32)
        self._cache: OrderedDict[bytes, float] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None
        self._pending = 0
        #: attempts by outcome: ok, cached, wrong, unknown_user, too_long, malformed, busy
        self.outcomes: dict[str, int] = dict.fromkeys(AUTH_OUTCOMES, 0)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    async def check(self, header: str | None) -> bool:
        """True when ``header`` carries a configured user and its password."""
        return await self.verify(header) in ("ok", "cached")

    async def verify(self, header: str | None) -> str:
        """The outcome of one attempt: one of ``AUTH_OUTCOMES``; "ok"/"cached" let it in."""
        credentials = _credentials(header)
        if credentials is None:
            return self._count("malformed")
        user, password = credentials
        if len(password) > BCRYPT_MAX_PASSWORD:
            return self._count("too_long")
        token = hmac.new(self._key, user + b"\0" + password, hashlib.sha256).digest()
        now = time.monotonic()
        expiry = self._cache.get(token)
        if expiry is not None:
            if expiry > now:
                return self._count("cached")
            del self._cache[token]
        if self._pending >= AUTH_WORKERS + AUTH_QUEUE:
            return self._count("busy")
        try:
            hashed = self._users.get(user.decode())
        except UnicodeDecodeError:
            hashed = None
        known = hashed is not None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(AUTH_WORKERS, thread_name_prefix="egressd-auth")
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(
                self._pool, self._verify, password, hashed if known else self._dummy
            )
        finally:
            self._pending -= 1
        if not known:
            return self._count("unknown_user")
        if not ok:
            return self._count("wrong")
        self._cache[token] = now + AUTH_CACHE_TTL
        while len(self._cache) > AUTH_CACHE_SIZE:
            self._cache.popitem(last=False)
        return self._count("ok")

    def _verify(self, password: bytes, hashed: bytes | None) -> bool:
        try:
            return bool(self._bcrypt.checkpw(password, hashed))
        except ValueError:  # a malformed hash (check-config refuses those) or password
            return False

    def _count(self, outcome: str) -> str:
        self.outcomes[outcome] += 1
        return outcome


AUTH_OUTCOMES = ("ok", "cached", "wrong", "unknown_user", "too_long", "malformed", "busy")


def _credentials(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) of a Basic ``Authorization`` header, or None when it is not one."""
    if not header or not header.startswith("Basic ") or len(header) > 4096:
        return None
    try:
        decoded = base64.b64decode(header[6:], validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user, password


def _cost(users: tuple[tuple[str, str], ...]) -> int:
    """The highest bcrypt cost among the configured hashes (``$2b$12$...`` is 12)."""
    costs = []
    for _user, hashed in users:
        parts = hashed.split("$")
        if len(parts) > 2 and parts[2].isdigit():
            costs.append(int(parts[2]))
    return min(max(max(costs), 4), 31) if costs else 12


class RequestErrorLog:
    """The logger aiohttp's request handler writes to, with malformed requests tamed.

    aiohttp logs each request it cannot parse as an ERROR with a traceback, so anyone who
    can connect could fill the journal. A malformed request (answered 400) is counted and
    logged as one WARNING line at most every ``MALFORMED_LOG_EVERY`` seconds, saying how
    many came since; every other error (a bug in a handler) is logged as before.
    """

    __slots__ = ("_clock", "_last", "_stats", "_suppressed")

    def __init__(self, stats: ConnectionStats, clock: Any = time.monotonic) -> None:
        self._stats = stats
        self._clock = clock
        self._last = -math.inf
        self._suppressed = 0

    def debug(self, msg: str, *args: Any, exc_info: Any = None, **kw: Any) -> None:
        if not self._malformed(args, exc_info):
            log.debug(msg, *args, exc_info=exc_info, **kw)

    def exception(self, msg: str, *args: Any, exc_info: Any = True, **kw: Any) -> None:
        if not self._malformed(args, exc_info):
            log.error(msg, *args, exc_info=exc_info, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(log, name)

    def _malformed(self, args: tuple[Any, ...], exc: Any) -> bool:
        if not isinstance(exc, HttpProcessingError):
            return False
        self._stats.malformed += 1
        now = self._clock()
        if now - self._last < MALFORMED_LOG_EVERY:
            self._suppressed += 1
            return True
        remote = args[0] if args else "?"
        reason = str(exc.message or "").strip().splitlines()
        more = f"; {self._suppressed} more since the last such line" if self._suppressed else ""
        log.warning(
            "malformed HTTP request from %s answered 400: %s%s",
            remote,
            ascii(reason[0].rstrip(":")[:80]) if reason else "unparsable",
            more,
        )
        self._last = now
        self._suppressed = 0
        return True


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type=_JSON)


class HttpServer:
    """aiohttp server for metrics, health and the API. Inert until :meth:`start`."""

    def __init__(self, config: HttpConfig, registry: CollectorRegistry, view: DaemonView) -> None:
        self.config = config
        self.registry = registry
        self.view = view
        self.auth = BasicAuth(config.basic_auth_users) if config.basic_auth_users else None
        self._runner: web.AppRunner | None = None
        #: group (None: all) -> (baselines version built from, the body being built or built)
        self._baselines_cache: dict[
            str | None, tuple[Hashable, asyncio.Future[tuple[bytes, ...]]]
        ] = {}
        #: the /metrics build the requests that came since the last one wait for
        self._next_scrape: asyncio.Task[bytes] | None = None
        #: monotonic time before which no /metrics build starts (see SCRAPE_PAUSE)
        self._scrape_after = -math.inf
        self.connections = ConnectionStats()
        #: the address actually bound (port 0 in the config picks a free one)
        self.bound: tuple[str, int] | None = None

    def application(self) -> web.Application:
        middlewares = [self._authenticate] if self.auth is not None else []
        app = web.Application(middlewares=middlewares)
        app.router.add_get("/", self._index)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/api/v1/alerts", self._alerts)
        app.router.add_get("/api/v1/baselines", self._baselines)
        return app

    @web.middleware
    async def _authenticate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        assert self.auth is not None
        outcome = await self.auth.verify(request.headers.get("Authorization"))
        if outcome == "busy":
            return web.Response(
                status=503, text="too many login attempts\n", headers={"Retry-After": "1"}
            )
        if outcome not in ("ok", "cached"):
            return web.Response(
                status=401,
                text="unauthorised\n",
                headers={"WWW-Authenticate": 'Basic realm="egressd"'},
            )
        response: web.StreamResponse = await handler(request)
        return response

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self.config.tls_cert_file is None or self.config.tls_key_file is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(str(self.config.tls_cert_file), str(self.config.tls_key_file))
        return context

    async def start(self) -> None:
        host, port = split_host_port(self.config.listen)
        runner = web.AppRunner(
            self.application(),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=self.config.idle_timeout,
            logger=RequestErrorLog(self.connections),
        )
        await runner.setup()
        limit = connection_limit(self.config.max_connections)
        if limit < self.config.max_connections:
            log.warning(
                "HTTP takes %d connections at most, not http.max_connections = %d: the "
                "open-file limit is %d and the rest is kept for state saves, pushes and "
                "sources (raise LimitNOFILE)",
                limit,
                self.config.max_connections,
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            )
        site = GuardedSite(
            runner,
            host,
            port,
            ssl_context=self._ssl_context(),
            limit=limit,
            header_timeout=self.config.header_timeout,
            stats=self.connections,
        )
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise SinkError(
                f"http.listen {self.config.listen}: cannot listen: "
                f"{os.strerror(exc.errno) if exc.errno else exc}",
                retriable=False,
            ) from exc
        self._runner = runner
        self.bound = site.bound
        log.info("HTTP listening on %s (%d connections at most)", self.config.listen, limit)

    async def stop(self) -> None:
        if self._next_scrape is not None:
            self._next_scrape.cancel()
            self._next_scrape = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.auth is not None:
            self.auth.close()

    # -- handlers ---------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(
            text="egressd\n/metrics\n/healthz\n/readyz\n/api/v1/alerts\n/api/v1/baselines?group=G\n"
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await asyncio.shield(self._scrape())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _scrape(self) -> asyncio.Task[bytes]:
        """The next /metrics body: built after every request waiting for it came.

        Collected on the event loop (the engine is not thread-safe), which a scrape of many
        series holds for tens of milliseconds: built for every request, clients scraping
        without pause (no credentials needed by default on loopback) left the collector,
        state saves and the watchdog a few percent of the loop. A build now starts only
        :data:`SCRAPE_PAUSE` times the last one's duration after it, and the requests that
        came meanwhile share it.
        """
        task = self._next_scrape
        if task is None:
            task = self._next_scrape = asyncio.get_running_loop().create_task(self._build())
            # retrieved even when every request waiting for it went away
            task.add_done_callback(_retrieve)
        return task

    async def _build(self) -> bytes:
        # time.monotonic, not loop.time: uvloop's is the time the loop iteration began
        try:
            wait = self._scrape_after - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        finally:
            self._next_scrape = None  # requests from now on wait for the next build
        began = time.monotonic()
        body = generate_latest(self.registry)
        ended = time.monotonic()
        self._scrape_after = ended + SCRAPE_PAUSE * (ended - began)
        return body

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, reason = self.view.readiness()
        if ready:
            return _json({"status": "ready"})
        return _json({"status": "not ready", "reason": reason}, status=503)

    async def _alerts(self, request: web.Request) -> web.Response:
        return _json(self.view.firing_alerts())

    async def _baselines(self, request: web.Request) -> web.StreamResponse:
        parts = await self._baselines_body(request.query.get("group") or None)
        # Written a part (a block of summaries) at a time, waiting for each client to take
        # it: one write of 40 MB copies it all into the transport's buffer on the loop
        # (~0.1 s a request).
        response = web.StreamResponse(headers={"Content-Type": _JSON})
        response.content_length = sum(map(len, parts))
        await response.prepare(request)
        for part in parts:
            await response.write(part)
        await response.write_eof()
        return response

    async def _baselines_body(self, group: str | None) -> tuple[bytes, ...]:
        """The JSON of the baselines of ``group`` in parts (one a block of summaries), built
        once per version of the baselines.

        100,000 baselines take seconds to describe and about 40 MB: built in one go on the
        event loop they stopped the collector, and each client that did not read its answer
        held its own copy. Requests while the baselines stay as they were share one body (and
        one build under way), and the build yields to the loop every BASELINES_BLOCK
        summaries. The parts are never joined: 40 MB joined in one go stopped the loop
        for ~0.1 s of copying.
        """
        loop = asyncio.get_running_loop()
        version = self.view.baselines_version()
        cache = self._baselines_cache
        cached = cache.get(group)
        if cached is not None and cached[0] == version:
            return await asyncio.shield(cached[1])
        future: asyncio.Future[tuple[bytes, ...]] = loop.create_future()
        cache.pop(group, None)
        cache[group] = (version, future)
        while len(cache) > BASELINES_CACHED:
            del cache[next(iter(cache))]
        try:
            # Each block is written out at once: its objects die young instead of piling up
            # (a million of them) for full garbage collections that stop the loop.
            parts: list[bytes] = []
            block: list[dict[str, Any]] = []
            for summary in self.view.baselines(group):
                block.append(summary)
                if len(block) == BASELINES_BLOCK:
                    parts.append((b"," if parts else b"[") + orjson.dumps(block)[1:-1])
                    block = []
                    await asyncio.sleep(0)
            if block:
                parts.append((b"," if parts else b"[") + orjson.dumps(block)[1:-1])
            if not parts:
                parts.append(b"[")
            parts.append(b"]")
            future.set_result(tuple(parts))
        except BaseException as exc:
            if cache.get(group, (0.0, None))[1] is future:
                del cache[group]
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: no warning if no other request waits for it
            raise
        return future.result()


def _retrieve(task: asyncio.Task[bytes]) -> None:
    """Mark a finished task's exception as retrieved (no "never retrieved" warning)."""
    if not task.cancelled():
        task.exception()
