"""HTTP endpoints and metrics content, with a real engine behind them and aiohttp's test client."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from egressd.app import Daemon
from egressd.config import ConfigError, parse_config
from egressd.model import FlowRecord
from egressd.stats import SourceStats

CONFIG = """
[networks]
local = ["10.0.0.0/8"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16"]
expected_countries = ["GB", "US"]

[detection]
interval = "5m"
allowed_lateness = "1m"
unexpected_min_bytes = "100MB"
"""

T0 = 1_773_064_800.0  # 2026-03-09T14:00:00Z, an interval boundary


class FakeSource:
    def __init__(self, name: str, ready: bool) -> None:
        self.name = name
        self.stats = SourceStats(name)
        self.ready = ready


def flow(src: str, dst: str, size: int, end: float) -> FlowRecord:
    return FlowRecord(end - 10, end, src, dst, size, max(1, size // 1500))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


@pytest.fixture
async def daemon_client() -> AsyncIterator[tuple[Daemon, TestClient[Any, Any]]]:
    daemon = Daemon(parse_config(CONFIG), environ={}, sources=[])
    client = TestClient(TestServer(daemon.http.application()))
    await client.start_server()
    yield daemon, client
    await client.close()


async def test_readyz_waits_for_state_and_sources() -> None:
    source = FakeSource("netflow:test", ready=False)
    daemon = Daemon(parse_config(CONFIG), environ={}, sources=[source])  # type: ignore[list-item]
    async with TestClient(TestServer(daemon.http.application())) as client:
        response = await client.get("/readyz")
        assert response.status == 503
        assert "state" in (await response.json())["reason"]
        daemon.restore_state()
        response = await client.get("/readyz")
        assert response.status == 503
        assert "netflow:test" in (await response.json())["reason"]
        source.ready = True
        assert (await client.get("/readyz")).status == 200
        assert (await client.get("/healthz")).status == 200


async def test_egress_metrics_and_alert_api(
    daemon_client: tuple[Daemon, TestClient[Any, Any]],
) -> None:
    daemon, client = daemon_client
    # Interval [T0, T0+300): 150 MB and 60 MB to CN (unexpected), 5 MB to GB.
    first = [
        flow("10.20.0.17", "47.100.23.45", 150_000_000, T0 + 30),
        flow("10.20.0.18", "47.100.23.45", 60_000_000, T0 + 200),
        flow("10.20.0.17", "81.2.69.160", 5_000_000, T0 + 100),
        flow("10.1.0.1", "10.20.0.17", 7_000, T0 + 100),  # east-west, never egress
        flow("8.8.8.8", "10.20.0.17", 9_000, T0 + 100),  # ingress
    ]
    daemon.feed.submit(first)
    # A record far enough in the next interval moves the watermark past T0+300+60.
    daemon.feed.submit([flow("10.20.0.17", "81.2.69.160", 1_000, T0 + 370)])

    response = await client.get("/metrics")
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    got = samples(await response.text())
    cn = (("dst_country", "CN"), ("group", "research"))
    gb = (("dst_country", "GB"), ("group", "research"))
    assert got[("egressd_egress_bytes_total", cn)] == 210_000_000
    # Closed interval plus the open one: GB counts its 1000 bytes still in an open bucket.
    assert got[("egressd_egress_bytes_total", gb)] == 5_001_000
    assert got[("egressd_ingress_bytes_total", ())] == 9_000
    assert got[("egressd_internal_bytes_total", ())] == 7_000
    assert got[("egressd_alerts_firing", (("alertname", "EgressUnexpectedDestination"),))] == 1
    assert got[("egressd_alerts_firing", (("alertname", "EgressVolumeSpike"),))] == 0
    assert got[("egressd_event_time_seconds", ())] == T0 + 370
    assert got[("egressd_baseline_keys", ())] == 2
    assert got[("egressd_egress_baseline_bytes", cn)] > 0
    assert ("egressd_build_info", (("version", __import__("egressd").__version__),)) in got
    # Labels are bounded: no label value is ever an address.
    for _name, labels in got:
        for _key, value in labels:
            with pytest.raises(ValueError):
                ipaddress.ip_address(value)

    alerts = await (await client.get("/api/v1/alerts")).json()
    assert len(alerts) == 1
    (alert,) = alerts
    assert alert["status"] == "firing"
    assert alert["labels"] == {
        "alertname": "EgressUnexpectedDestination",
        "group": "research",
        "dst_country": "CN",
        "severity": "page",
    }
    assert alert["annotations"]["bytes"] == "210000000"
    assert alert["annotations"]["top_sources"].split(",")[0].strip() == "10.20.0.17"
    assert alert["startsAt"] == "2026-03-09T14:05:00Z"

    baselines = await (await client.get("/api/v1/baselines", params={"group": "research"})).json()
    assert sorted(b["destination"] for b in baselines) == ["CN", "GB"]
    assert all(b["group"] == "research" for b in baselines)
    assert await (await client.get("/api/v1/baselines", params={"group": "nobody"})).json() == []


async def test_source_counters_in_metrics(
    daemon_client: tuple[Daemon, TestClient[Any, Any]],
) -> None:
    daemon, client = daemon_client
    source = FakeSource("netflow:127.0.0.1:2055", ready=True)
    source.stats.units = 12
    source.stats.records = 30
    source.stats.failed("truncated_header")
    source.stats.drop("exporter_not_allowed", 4)
    daemon.sources.append(source)  # type: ignore[arg-type]
    got = samples(await (await client.get("/metrics")).text())
    name = (("source", "netflow:127.0.0.1:2055"),)
    assert got[("egressd_received_total", name)] == 12
    assert got[("egressd_records_total", name)] == 30
    assert got[("egressd_decode_errors_total", (("reason", "truncated_header"), *name))] == 1
    assert got[("egressd_dropped_total", (("reason", "exporter_not_allowed"), *name))] == 4


def test_basic_auth_needs_bcrypt_hashes() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('[http.basic_auth_users]\nadmin = "plaintext"\n')
    assert "not a bcrypt hash" in str(info.value)
    try:
        import bcrypt  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError) as info:
            parse_config(
                '[http.basic_auth_users]\nadmin = "$2b$12$'
                'KIXQJ3Zq1u6sW3z0m1n1OeZz6fVYw3qk6sJtq0nq6bC1y3c7D8e9a"\n'
            )
        assert "bcrypt" in str(info.value)


async def test_scrapes_evaluate_only_baselines_that_changed(
    daemon_client: tuple[Daemon, TestClient[Any, Any]],
) -> None:
    daemon, client = daemon_client
    cn = (("dst_country", "CN"), ("group", "research"))
    gb = (("dst_country", "GB"), ("group", "research"))
    evaluated = ("egressd_baseline_expectations_evaluated_total", ())
    daemon.feed.submit(
        [
            flow("10.20.0.17", "47.100.23.45", 40_000, T0 + 30),
            flow("10.20.0.17", "81.2.69.160", 5_000_000, T0 + 100),
            flow("10.20.0.17", "81.2.69.160", 1_000, T0 + 370),  # closes [T0, T0+300)
        ]
    )
    first = samples(await (await client.get("/metrics")).text())
    assert first[evaluated] == 2
    expected_gb = first[("egressd_egress_baseline_bytes", gb)]
    assert expected_gb == pytest.approx(5_000_000, rel=0.02)
    again = samples(await (await client.get("/metrics")).text())
    assert again[evaluated] == 2  # nothing learned since: nothing evaluated
    assert again[("egressd_egress_baseline_bytes", gb)] == expected_gb
    # The next interval closes with GB alone: only GB is evaluated again.
    daemon.feed.submit([flow("10.20.0.17", "81.2.69.160", 9_000, T0 + 680)])
    third = samples(await (await client.get("/metrics")).text())
    assert third[evaluated] == 3
    assert (
        third[("egressd_egress_baseline_bytes", cn)] == first[("egressd_egress_baseline_bytes", cn)]
    )
    assert third[("egressd_egress_baseline_bytes", gb)] != expected_gb
    # An hour later every expectation may differ: every key is evaluated once.
    daemon.feed.submit([flow("10.20.0.17", "81.2.69.160", 9_000, T0 + 3600 + 400)])
    fourth = samples(await (await client.get("/metrics")).text())
    keys = fourth[("egressd_baseline_keys", ())]
    assert fourth[evaluated] == 3 + keys
    for labels in (cn, gb):
        values = daemon.engine.baselines.expected_bytes(
            [("research", dict(labels)["dst_country"])], T0 + 3600 + 400
        )
        assert fourth[("egressd_egress_baseline_bytes", labels)] == round(values[0])


@pytest.mark.parametrize(
    ("regions", "asn"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_baseline_gauge_labels_match_the_destination_labels(regions: bool, asn: bool) -> None:
    from egressd.baseline.seasonal import SeasonalBaselines
    from egressd.enrich import DestinationLabels
    from egressd.sinks.metrics import BaselineGauge, EgressdCollector

    baselines = SeasonalBaselines()
    keys = [("research", "CN"), ("research", "US|aws/us-east-1|16509"), ("ops", "DE||3320")]
    keys.append(("ops", "GB|gcp/europe-west2|0"))
    baselines.observe_interval(T0, [(key, 1000.0) for key in keys])
    expected = {
        EgressdCollector.label_values(group, DestinationLabels.from_key(key), regions, asn)
        for group, key in keys
    }
    assert set(BaselineGauge().expected(baselines, T0 + 60, regions, asn)) == expected


@pytest.mark.parametrize("regions", [False, True])
def test_baseline_gauge_evaluated_ahead_equals_a_fresh_evaluation(regions: bool) -> None:
    import random

    from egressd.baseline.seasonal import SeasonalBaselines
    from egressd.sinks.metrics import PREPARE_AHEAD, BaselineGauge

    rng = random.Random(5)
    # More keys than max_keys: evictions hand slots to other keys between scrapes.
    baselines = SeasonalBaselines(max_keys=200)
    keys = [("g", f"C{i % 7}|r{i % 3}|{i}") for i in range(300)]
    gauge = BaselineGauge()
    prepared_moves = 0
    for step in range(6 * 120):  # six hours of scrapes every 30 s, an interval every 5 min
        now = T0 + step * 30.0
        if step % 10 == 0:
            learned = rng.sample(keys, 60)
            baselines.observe_interval(now - 300, [(key, rng.randrange(10**8)) for key in learned])
        before = gauge.evaluated
        moved = gauge._shape is not None and baselines.season.slot(now) != gauge._shape[0]
        got = gauge.expected(baselines, now, regions, False)
        assert got == BaselineGauge().expected(baselines, now, regions, False)
        if moved and gauge.evaluated - before < len(baselines):
            prepared_moves += 1  # evaluated ahead: only keys changed since were evaluated now
    assert prepared_moves == 6 - 1 and PREPARE_AHEAD < 3600


async def test_baselines_evaluated_at_start_leave_the_first_scrape_nothing_to_evaluate(
    daemon_client: tuple[Daemon, TestClient[Any, Any]],
) -> None:
    """The daemon evaluates every restored baseline before it serves (``warm``): the first
    scrape then reads them instead of paying for all of them at once."""
    daemon, client = daemon_client
    gb = (("dst_country", "GB"), ("group", "research"))
    evaluated = ("egressd_baseline_expectations_evaluated_total", ())
    assert daemon.collector.warm() == 0  # no event time yet: nothing to evaluate
    daemon.feed.submit(
        [
            flow("10.20.0.17", "47.100.23.45", 40_000, T0 + 30),
            flow("10.20.0.17", "81.2.69.160", 5_000_000, T0 + 100),
            flow("10.20.0.17", "81.2.69.160", 1_000, T0 + 370),  # closes [T0, T0+300)
        ]
    )
    assert daemon.collector.warm() == 2
    first = samples(await (await client.get("/metrics")).text())
    assert first[evaluated] == 2  # all done before the scrape
    assert first[("egressd_egress_baseline_bytes", gb)] == pytest.approx(5_000_000, rel=0.02)


async def test_a_listen_address_in_use_is_named_with_its_key() -> None:
    import socket

    from prometheus_client import CollectorRegistry

    from egressd.config import HttpConfig
    from egressd.errors import SinkError
    from egressd.sinks.http import HttpServer

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = HttpConfig(listen=f"127.0.0.1:{port}")
        server = HttpServer(config, CollectorRegistry(), view=None)  # type: ignore[arg-type]
        with pytest.raises(SinkError) as info:
            await server.start()
    assert str(info.value) == f"http.listen 127.0.0.1:{port}: cannot listen: Address already in use"
