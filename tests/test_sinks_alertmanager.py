"""The Alertmanager sink against an aiohttp test server: body shape, retries, outbox, resends."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from egressd.config import AlertmanagerConfig
from egressd.detect.alerts import FIRING, RESOLVED, Alert, parse_rfc3339
from egressd.sinks.alertmanager import AlertmanagerSink

GENERATOR = "http://127.0.0.1:9108/api/v1/alerts"


@dataclass
class FakeAlertmanager:
    """Records every POST; answers with the queued statuses first, then 200."""

    posts: list[list[dict[str, Any]]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    fail_with: list[int] = field(default_factory=list)
    received: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        self.headers.append(dict(request.headers))
        if self.fail_with:
            return web.Response(status=self.fail_with.pop(0), text="try later")
        self.posts.append(body)
        self.received.set()
        return web.json_response({})

    def alerts(self) -> list[dict[str, Any]]:
        return [alert for post in self.posts for alert in post]


@pytest.fixture
async def am() -> AsyncIterator[tuple[FakeAlertmanager, str]]:
    fake = FakeAlertmanager()
    app = web.Application()
    app.router.add_post("/api/v2/alerts", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield fake, str(server.make_url("")).rstrip("/")
    await server.close()


def make_alert(state: str = FIRING, country: str = "CN", ends: float | None = None) -> Alert:
    return Alert(
        key=("EgressUnexpectedDestination", "research", country),
        labels={
            "alertname": "EgressUnexpectedDestination",
            "group": "research",
            "dst_country": country,
            "severity": "page",
        },
        annotations={"summary": "s", "bytes": "6012000000", "top_sources": "10.20.0.17"},
        state=state,
        pending_since=1_773_064_800.0,
        starts_at=1_773_064_800.0,
        ends_at=ends,
    )


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_firing_alert_body(am: tuple[FakeAlertmanager, str]) -> None:
    fake, url = am
    config = AlertmanagerConfig(urls=(url,), resend_interval=60.0)
    sink = AlertmanagerSink(config, GENERATOR, clock=lambda: 1_800_000_000.0)
    await sink.start()
    sink.publish([make_alert()])
    await wait_for(lambda: fake.posts)
    await sink.stop()
    (alert,) = fake.alerts()
    assert "status" not in alert
    assert alert["labels"]["dst_country"] == "CN"
    assert alert["annotations"]["bytes"] == "6012000000"
    assert alert["generatorURL"] == GENERATOR
    assert alert["startsAt"] == "2026-03-09T14:00:00Z"
    # endsAt four resend intervals past the (fake) wall clock, so Alertmanager keeps it open.
    assert parse_rfc3339(alert["endsAt"]) == 1_800_000_000.0 + 4 * 60.0
    assert sink.stats.pushes == 1 and sink.stats.alerts_sent == 1


async def test_resolved_is_sent_once_with_its_end(am: tuple[FakeAlertmanager, str]) -> None:
    fake, url = am
    config = AlertmanagerConfig(urls=(url,), resend_interval=0.2)
    sink = AlertmanagerSink(config, GENERATOR)
    await sink.start()
    sink.publish([make_alert()])
    await wait_for(lambda: fake.posts)
    sink.publish([make_alert(RESOLVED, ends=1_773_068_400.0)])
    await wait_for(lambda: any(a["endsAt"] == "2026-03-09T15:00:00Z" for a in fake.alerts()))
    count = len(fake.alerts())
    await asyncio.sleep(0.7)  # several resend intervals: nothing more for a resolved alert
    await sink.stop()
    assert len(fake.alerts()) == count


async def test_firing_alerts_are_resent(am: tuple[FakeAlertmanager, str]) -> None:
    fake, url = am
    config = AlertmanagerConfig(urls=(url,), resend_interval=0.15)
    sink = AlertmanagerSink(config, GENERATOR)
    await sink.start()
    sink.publish([make_alert()])
    await wait_for(lambda: len(fake.posts) >= 3)
    await sink.stop()
    assert all(a["labels"]["dst_country"] == "CN" for a in fake.alerts())


async def test_retries_with_backoff_until_delivered(am: tuple[FakeAlertmanager, str]) -> None:
    fake, url = am
    fake.fail_with = [500, 503]
    config = AlertmanagerConfig(urls=(url,), resend_interval=60.0)
    sink = AlertmanagerSink(config, GENERATOR)
    await sink.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    sink.publish([make_alert()])
    await wait_for(lambda: fake.posts)
    elapsed = loop.time() - started
    await sink.stop()
    assert sink.stats.push_errors == 2
    assert len(fake.headers) == 3  # two refusals, then the delivery
    assert elapsed >= 0.5 + 1.0 - 0.05  # backoff 0.5 s, then 1 s
    assert fake.alerts()[0]["labels"]["dst_country"] == "CN"


async def test_dead_alertmanager_never_blocks_and_outbox_is_bounded() -> None:
    config = AlertmanagerConfig(urls=("http://127.0.0.1:9",), outbox_size=5, timeout=0.5)
    sink = AlertmanagerSink(config, GENERATOR)
    # Not started: publish must only queue, whatever happens to the Alertmanager.
    countries = ["AA", "BB", "CC", "DD", "EE", "FF", "GG", "HH"]
    sink.publish([make_alert(country=c) for c in countries])
    assert sink.stats.outbox_size == 5
    assert sink.stats.outbox_dropped == 3
    # The latest state of an alert replaces its queued one instead of taking a slot.
    sink.publish([make_alert(RESOLVED, country="HH", ends=1_773_068_400.0)])
    assert sink.stats.outbox_size == 5
    assert sink.stats.outbox_dropped == 3


async def test_outbox_keeps_latest_state_while_alertmanager_is_down(tmp_path: Path) -> None:
    # Refuse connections first; then bring a server up on the same port.
    fake = FakeAlertmanager()
    app = web.Application()
    app.router.add_post("/api/v2/alerts", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    port = server.port
    await server.close()
    config = AlertmanagerConfig(urls=(url,), resend_interval=60.0, timeout=0.5)
    sink = AlertmanagerSink(config, GENERATOR)
    await sink.start()
    sink.publish([make_alert()])
    await wait_for(lambda: sink.stats.push_errors >= 1)
    sink.publish([make_alert(RESOLVED, ends=1_773_068_400.0)])
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        await wait_for(lambda: fake.posts, timeout=10)
    finally:
        await sink.stop()
        await server.close()
    # Only the latest state reached Alertmanager: the resolved alert.
    assert [a["endsAt"] for a in fake.alerts()] == ["2026-03-09T15:00:00Z"]


async def test_bearer_token_and_injected_session(
    am: tuple[FakeAlertmanager, str], tmp_path: Path
) -> None:
    fake, url = am
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    config = AlertmanagerConfig(urls=(url,), bearer_token_file=token)
    async with aiohttp.ClientSession() as session:
        sink = AlertmanagerSink(config, GENERATOR, session=session)
        await sink.start()
        sink.publish([make_alert()])
        await wait_for(lambda: fake.posts)
        await sink.stop()
        assert not session.closed  # an injected session belongs to the caller
    assert fake.headers[0]["Authorization"] == "Bearer s3cret"


async def test_basic_auth_password_file(am: tuple[FakeAlertmanager, str], tmp_path: Path) -> None:
    fake, url = am
    password = tmp_path / "password"
    password.write_text("hunter2\n")
    config = AlertmanagerConfig(
        urls=(url,), basic_auth_username="egressd", basic_auth_password_file=password
    )
    sink = AlertmanagerSink(config, GENERATOR)
    await sink.start()
    sink.publish([make_alert()])
    await wait_for(lambda: fake.posts)
    await sink.stop()
    expected = "Basic " + base64.b64encode(b"egressd:hunter2").decode()
    assert fake.headers[0]["Authorization"] == expected


async def test_restored_firing_alerts_are_announced(am: tuple[FakeAlertmanager, str]) -> None:
    fake, url = am
    sink = AlertmanagerSink(AlertmanagerConfig(urls=(url,)), GENERATOR)
    sink.replace_firing([make_alert(country="CN"), make_alert(country="RU")])
    await sink.start()
    await wait_for(lambda: len(fake.alerts()) >= 2)
    await sink.stop()
    assert sorted(a["labels"]["dst_country"] for a in fake.alerts()) == ["CN", "RU"]


@pytest.mark.parametrize("resend", [0.2, 60.0])
async def test_more_firing_alerts_than_the_outbox_are_all_delivered(
    am: tuple[FakeAlertmanager, str], resend: float
) -> None:
    """100 firing alerts, an outbox of 10: every one is delivered, none starves.

    Before, each resend refilled the outbox in the same order, so the same 90 were pushed
    out every time and only 10 ever reached Alertmanager.
    """
    fake, url = am
    countries = [f"{chr(65 + i // 26)}{chr(65 + i % 26)}" for i in range(100)]
    config = AlertmanagerConfig(urls=(url,), outbox_size=10, resend_interval=resend)
    sink = AlertmanagerSink(config, GENERATOR)
    await sink.start()
    sink.publish([make_alert(country=c) for c in countries])

    def delivered() -> dict[str, int]:
        counts: dict[str, int] = {}
        for alert in fake.alerts():
            country = alert["labels"]["dst_country"]
            counts[country] = counts.get(country, 0) + 1
        return counts

    try:
        await wait_for(lambda: len(delivered()) == len(countries), timeout=10)
        first_complete = delivered()
    finally:
        await sink.stop()
    # Every alert arrived within one resend round after its first send: no alert was
    # resent more than twice before the last one was delivered for the first time.
    assert max(first_complete.values()) <= 3, first_complete
    assert sink.stats.outbox_dropped == 90  # the transitions that did not fit, counted


async def test_restored_firing_set_larger_than_the_outbox_is_announced(
    am: tuple[FakeAlertmanager, str],
) -> None:
    fake, url = am
    countries = [f"Z{chr(65 + i)}" for i in range(20)]
    sink = AlertmanagerSink(AlertmanagerConfig(urls=(url,), outbox_size=5), GENERATOR)
    sink.replace_firing([make_alert(country=c) for c in countries])
    await sink.start()
    try:
        await wait_for(lambda: len({a["labels"]["dst_country"] for a in fake.alerts()}) == 20)
    finally:
        await sink.stop()
    assert sink.stats.outbox_dropped == 0


@dataclass
class HostileAlertmanager:
    """Answers the first POSTs with an error whose body is not UTF-8 (a proxy, a captive
    portal, a broken Alertmanager), then accepts."""

    bad_answers: int
    posts: list[list[dict[str, Any]]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        if self.bad_answers:
            self.bad_answers -= 1
            # Far more than is ever logged, and not text.
            return web.Response(
                status=502,
                body=b"\xff\xfe\xfa" * 400_000,
                headers={"Content-Type": "text/html; charset=utf-8"},
            )
        self.posts.append(body)
        return web.json_response({})


async def test_an_error_answer_that_is_not_text_is_a_failed_push_not_a_dead_sink() -> None:
    # Before: the error body was decoded strictly, the UnicodeDecodeError escaped the
    # delivery task, and `wait` (which the daemon watches) raised: the daemon exited at
    # every push to such an answer, and no alert reached any Alertmanager.
    fake = HostileAlertmanager(bad_answers=2)
    app = web.Application()
    app.router.add_post("/api/v2/alerts", fake.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    url = str(server.make_url("")).rstrip("/")
    sink = AlertmanagerSink(AlertmanagerConfig(urls=(url,), resend_interval=60.0), GENERATOR)
    await sink.start()
    watcher = asyncio.ensure_future(sink.wait())
    try:
        sink.publish([make_alert()])
        await wait_for(lambda: fake.posts or watcher.done(), timeout=10)
        assert not watcher.done(), watcher.exception()
    finally:
        watcher.cancel()
        await sink.stop()
        await server.close()
    assert sink.stats.push_errors == 2
    assert fake.posts[0][0]["labels"]["dst_country"] == "CN"


@pytest.mark.parametrize(
    "secret", [b"\xff\xfe not text\n", b"tok\nen\n"], ids=["not-utf8", "inner-newline"]
)
async def test_an_unusable_token_file_is_a_failed_push_not_a_dead_sink(
    am: tuple[FakeAlertmanager, str], tmp_path: Path, secret: bytes
) -> None:
    # A rotated token file with bytes no header can carry. Before: the error escaped the
    # delivery task and the daemon exited at every push.
    fake, url = am
    token = tmp_path / "token"
    token.write_bytes(secret)
    config = AlertmanagerConfig(urls=(url,), resend_interval=60.0, bearer_token_file=token)
    sink = AlertmanagerSink(config, GENERATOR)
    await sink.start()
    watcher = asyncio.ensure_future(sink.wait())
    try:
        sink.publish([make_alert()])
        await wait_for(lambda: sink.stats.push_errors >= 1 or watcher.done())
        assert not watcher.done(), watcher.exception()
        token.write_text("fixed\n")  # the operator mends it: the next retry delivers
        await wait_for(lambda: fake.posts or watcher.done(), timeout=10)
        assert not watcher.done(), watcher.exception()
    finally:
        watcher.cancel()
        await sink.stop()
    assert fake.headers[-1]["Authorization"] == "Bearer fixed"
