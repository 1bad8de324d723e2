"""The HTTP face of the daemon: /metrics, /healthz, /readyz and the JSON API under /api/v1.

Loopback by default; optional TLS and bcrypt basic auth in the manner of Prometheus'
web configuration.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import importlib
import logging
import ssl
from typing import Any, Protocol

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from egressd.config import HttpConfig, split_host_port
from egressd.errors import ConfigError

log = logging.getLogger("egressd.http")

_JSON = "application/json"
_AUTH_CACHE_SIZE = 64


class DaemonView(Protocol):
    """What the HTTP API shows; the daemon implements it, tests may fake it."""

    def readiness(self) -> tuple[bool, str]:
        """(ready, reason) — reason says what is missing when not ready."""
        ...

    def firing_alerts(self) -> list[dict[str, Any]]:
        """Contract-2 events of every firing alert."""
        ...

    def baselines(self, group: str | None) -> list[dict[str, Any]]:
        """Summaries of the baselines of ``group`` (every group when None)."""
        ...


class BasicAuth:
    """Checks ``Authorization: Basic`` against bcrypt hashes; remembers recent successes.

    bcrypt is slow on purpose; Prometheus scrapes every few seconds, so a verified
    (user, password) pair is cached by its SHA-256 instead of being re-hashed each time.
    """

    __slots__ = ("_bcrypt", "_cache", "_users")

    def __init__(self, users: tuple[tuple[str, str], ...]) -> None:
        try:
            bcrypt: Any = importlib.import_module("bcrypt")
        except ImportError:
            raise ConfigError(
                "http.basic_auth_users: bcrypt hashes need the Python package 'bcrypt'"
            ) from None
        self._bcrypt = bcrypt
        self._users = {user: hashed.encode() for user, hashed in users}
        self._cache: dict[bytes, str] = {}

    def check(self, header: str | None) -> bool:
        if not header or not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self._users.get(user)
        if hashed is None:
            return False
        token = hashlib.sha256(f"{user}\0{password}".encode()).digest()
        cached = self._cache.get(token)
        if cached is not None:
            return hmac.compare_digest(cached, user)
        if not self._bcrypt.checkpw(password.encode(), hashed):
            return False
        if len(self._cache) >= _AUTH_CACHE_SIZE:
            self._cache.clear()
        self._cache[token] = user
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
        if not self.auth.check(request.headers.get("Authorization")):
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
        runner = web.AppRunner(self.application(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=self._ssl_context(), reuse_address=True)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner = runner
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            bound = sockets[0].getsockname()
            self.bound = (str(bound[0]), int(bound[1]))
        log.info("HTTP listening on %s", self.config.listen)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- handlers ---------------------------------------------------------------------------

    async def _index(self, request: web.Request) -> web.Response:
        return web.Response(
            text="egressd\n/metrics\n/healthz\n/readyz\n/api/v1/alerts\n/api/v1/baselines?group=G\n"
        )

    async def _metrics(self, request: web.Request) -> web.Response:
        # Collected on the event loop: the engine is not thread-safe, and scrapes are cheap.
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        ready, reason = self.view.readiness()
        if ready:
            return _json({"status": "ready"})
        return _json({"status": "not ready", "reason": reason}, status=503)

    async def _alerts(self, request: web.Request) -> web.Response:
        return _json(self.view.firing_alerts())

    async def _baselines(self, request: web.Request) -> web.Response:
        group = request.query.get("group")
        return _json(self.view.baselines(group or None))
