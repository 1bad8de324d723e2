"""Pushes alert transitions to Alertmanager's v2 API, resending firing alerts until resolved.

One bounded outbox per Alertmanager, keyed by alert fingerprint, holds transitions: the
latest state of an alert replaces an unsent older one, so a dead Alertmanager never stalls
detection. Resends of firing alerts do not go through the outbox: each resend interval starts
a round over every firing alert, sent in batches after the waiting transitions, and a round
not finished when the next begins goes first in it. A firing alert pushed out of a full
outbox joins the current round. So every firing alert reaches a working Alertmanager once
per round, however many fire and however small the outbox is; the round holds fingerprints
of firing alerts only, so it is bounded by them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from egressd.config import AlertmanagerConfig
from egressd.detect.alerts import FIRING, Alert, rfc3339

log = logging.getLogger("egressd.alertmanager")

Fingerprint = tuple[tuple[str, str], ...]

#: firing alerts carry endsAt this many resend intervals ahead, so Alertmanager resolves
#: them on its own if egressd dies, but never between two resends
_HORIZON_RESENDS = 4
_MAX_BATCH = 500
_BACKOFF_START = 0.5
_BACKOFF_MAX = 30.0
#: bytes of an error answer's body read (and logged)
_ERROR_BODY_LIMIT = 200


def _secret(path: Path) -> str:
    """The secret in ``path``, stripped; OSError (naming the file, never the content) when it
    cannot go into a header: not UTF-8, or a line break or control character inside."""
    raw = path.read_bytes().strip()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise OSError(f"{path}: not UTF-8 text") from None
    if not text.isprintable():
        raise OSError(f"{path}: holds a line break or control character")
    return text


def fingerprint(labels: dict[str, str]) -> Fingerprint:
    """Alertmanager identifies an alert by its label set; so do we."""
    return tuple(sorted(labels.items()))


@dataclass(slots=True)
class AlertmanagerStats:
    """Counters of the push sink, read by the metrics collector."""

    pushes: int = 0  # successful POSTs
    push_errors: int = 0  # failed POST attempts (each retry counts)
    alerts_sent: int = 0  # alerts delivered (an alert resent counts again)
    outbox_dropped: int = 0  # unsent alerts dropped because an outbox was full
    outbox_size: int = 0  # alerts waiting, all targets together
    resend_pending: int = 0  # firing alerts of unfinished resend rounds, all targets together


class _Target:
    """One Alertmanager URL: its outbox, its resend round and its backoff."""

    __slots__ = ("backoff", "outbox", "round", "url", "wake")

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") + "/api/v2/alerts"
        self.outbox: OrderedDict[Fingerprint, Alert] = OrderedDict()
        #: firing alerts still to resend in this round, in order (bounded by the firing set)
        self.round: OrderedDict[Fingerprint, None] = OrderedDict()
        self.wake = asyncio.Event()
        self.backoff = 0.0


class AlertmanagerSink:
    """Delivers alerts to every configured Alertmanager. Inert until :meth:`start`."""

    def __init__(
        self,
        config: AlertmanagerConfig,
        generator_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.generator_url = generator_url
        self.stats = AlertmanagerStats()
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._targets = [_Target(url) for url in config.urls]
        #: alerts currently firing, resent every resend_interval
        self._firing: dict[Fingerprint, Alert] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._last_error_log = 0.0

    # -- input, called synchronously from the pipeline --------------------------------------

    def publish(self, alerts: Iterable[Alert]) -> None:
        """Queue alert transitions (firing or resolved) for every Alertmanager."""
        for alert in alerts:
            key = fingerprint(alert.labels)
            if alert.state == FIRING:
                self._firing[key] = alert
            else:
                self._firing.pop(key, None)
            for target in self._targets:
                self._enqueue(target, key, alert)

    def replace_firing(self, alerts: Iterable[Alert]) -> None:
        """Declare the complete set of firing alerts (after a state restore)."""
        self._firing = {fingerprint(a.labels): a for a in alerts if a.state == FIRING}
        self._start_round()

    def _start_round(self) -> None:
        """Schedule every firing alert for each target; an unfinished round's rest goes first."""
        for target in self._targets:
            for key in self._firing:
                target.round.setdefault(key)
            if target.round:
                target.wake.set()
        self._count_outbox()

    def _enqueue(self, target: _Target, key: Fingerprint, alert: Alert) -> None:
        outbox = target.outbox
        if key in outbox:
            del outbox[key]  # the latest state wins and goes to the back of the line
        elif len(outbox) >= self.config.outbox_size:
            dropped, _alert = outbox.popitem(last=False)
            self.stats.outbox_dropped += 1
            if dropped in self._firing:
                target.round.setdefault(dropped)  # still firing: it goes out in the round
        outbox[key] = alert
        target.wake.set()
        self._count_outbox()

    def _count_outbox(self) -> None:
        self.stats.outbox_size = sum(len(t.outbox) for t in self._targets)
        self.stats.resend_pending = sum(len(t.round) for t in self._targets)

    # -- wire format ------------------------------------------------------------------------

    def body(self, alerts: Iterable[Alert], now: float) -> bytes:
        """The v2 POST body: contract-2 events minus ``status``, with generatorURL."""
        horizon = now + _HORIZON_RESENDS * self.config.resend_interval
        out: list[dict[str, Any]] = []
        for alert in alerts:
            event = alert.event()
            del event["status"]
            if alert.state == FIRING:
                event["endsAt"] = rfc3339(horizon)
            event["generatorURL"] = self.generator_url
            out.append(event)
        return orjson.dumps(out)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if not self._targets:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
                connector=aiohttp.TCPConnector(ssl=self._ssl_context()),
            )
        for target in self._targets:
            self._tasks.append(asyncio.create_task(self._deliver(target), name=target.url))
        self._tasks.append(asyncio.create_task(self._resend(), name="alertmanager-resend"))

    async def stop(self, flush_timeout: float = 3.0) -> None:
        """Try once more to deliver what waits (briefly), then stop."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._session is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_timeout):
                    for target in self._targets:
                        if target.outbox or target.round:
                            await self._send_batch(target)
            if self._own_session:
                await self._session.close()
                self._session = None

    async def wait(self) -> None:
        """Returns or raises only if a delivery task died (a bug): the daemon then exits."""
        if self._tasks:
            done, _ = await asyncio.wait(self._tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise RuntimeError("alertmanager delivery stopped")
        await asyncio.Event().wait()

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if self.config.tls_ca_file is None:
            return True
        return ssl.create_default_context(cafile=str(self.config.tls_ca_file))

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        # Read secrets at every push so a rotated token is picked up without a restart.
        if self.config.bearer_token_file is not None:
            token = _secret(self.config.bearer_token_file)
            headers["Authorization"] = f"Bearer {token}"
        elif self.config.basic_auth_username:
            password = ""
            if self.config.basic_auth_password_file is not None:
                password = _secret(self.config.basic_auth_password_file)
            pair = f"{self.config.basic_auth_username}:{password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        return headers

    # -- delivery ---------------------------------------------------------------------------

    async def _resend(self) -> None:
        while True:
            await asyncio.sleep(self.config.resend_interval)
            self._start_round()

    async def _deliver(self, target: _Target) -> None:
        while True:
            await target.wake.wait()
            target.wake.clear()
            while target.outbox or target.round:
                if await self._send_batch(target):
                    target.backoff = 0.0
                    continue
                target.backoff = min(
                    max(target.backoff * 2, _BACKOFF_START),
                    _BACKOFF_MAX,
                    self.config.resend_interval,
                )
                await asyncio.sleep(target.backoff)

    async def _send_batch(self, target: _Target) -> bool:
        """POST one batch: transitions first, then the resend round; failures stay queued."""
        assert self._session is not None
        batch: list[tuple[Fingerprint, Alert]] = []
        while target.outbox and len(batch) < _MAX_BATCH:
            batch.append(target.outbox.popitem(last=False))
        resent: list[Fingerprint] = []
        queued = {key for key, _alert in batch}
        while target.round and len(batch) < _MAX_BATCH:
            key, _ = target.round.popitem(last=False)
            alert = self._firing.get(key)
            if alert is None or key in queued or key in target.outbox:
                continue  # resolved meanwhile, or its latest state is already on its way
            queued.add(key)
            batch.append((key, alert))
            resent.append(key)
        self._count_outbox()
        if not batch:
            return True
        try:
            headers = self._headers()
            payload = self.body((alert for _key, alert in batch), self._clock())
            async with self._session.post(
                target.url,
                data=payload,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            ) as response:
                if response.status >= 300:
                    # Whatever answers (a proxy, a captive portal) may send megabytes or
                    # bytes that are not text: read what is logged, as text whatever it is.
                    head = await response.content.read(_ERROR_BODY_LIMIT)
                    text = head.decode("utf-8", errors="replace")
                    raise OSError(f"HTTP {response.status}: {text}")
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
            # ValueError: what aiohttp refuses to send (a URL or header it cannot carry).
            # A failed push is retried and counted; it never ends the delivery task, whose
            # end stops the daemon.
            self.stats.push_errors += 1
            self._log_error(target.url, exc)
            for key in reversed(resent):
                target.round[key] = None
                target.round.move_to_end(key, last=False)
            self._requeue(target, batch[: len(batch) - len(resent)])
            return False
        self.stats.pushes += 1
        self.stats.alerts_sent += len(batch)
        return True

    def _requeue(self, target: _Target, batch: list[tuple[Fingerprint, Alert]]) -> None:
        # Newer states queued meanwhile win; the rest go back in front, in their order.
        outbox = target.outbox
        for key, alert in reversed(batch):
            if key in outbox:
                continue
            if len(outbox) >= self.config.outbox_size:
                self.stats.outbox_dropped += 1
                if key in self._firing:
                    target.round.setdefault(key)
                continue
            outbox[key] = alert
            outbox.move_to_end(key, last=False)
        self._count_outbox()

    def _log_error(self, url: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 30.0:
            self._last_error_log = now
            log.warning("cannot push alerts to %s: %s (will retry)", url, exc or type(exc).__name__)
