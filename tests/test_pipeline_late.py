"""Flows that arrive after their interval closed still count, in the interval at the watermark.

An exporter whose clock runs behind the others is common in real networks; dropping its late
flows would hide whatever it carries, an exfiltration included.
"""

from __future__ import annotations

from egressd.config import parse_config
from egressd.detect.alerts import FIRING
from egressd.enrich.embedded import EmbeddedCountryLabeler
from egressd.model import FlowRecord
from egressd.pipeline import Engine
from tests.integration_support import research_config

CONFIG = research_config(
    {
        "interval": "5m",
        "allowed_lateness": "1m",
        "unexpected_min_bytes": "100MB",
        "unexpected_window": "1h",
        # the floors as configured: these tests are about lateness and restarts, and their
        # group's only traffic (a few MB a minute) would shrink the floor to a fifth
        "unexpected_floors_scale_below": "0",
    }
)
T0 = 1_773_000_000.0 - 1_773_000_000.0 % 300  # an interval boundary
US = "3.5.140.2"
CN = "47.100.23.45"


def test_exfiltration_from_an_exporter_ten_minutes_behind_still_pages() -> None:
    engine = Engine(parse_config(CONFIG), EmbeddedCountryLabeler())
    fired = []
    # Two hours of flows: a punctual exporter sends ordinary traffic to the US every 10 s;
    # from the first hour on, a second exporter whose clock is 10 minutes behind reports a
    # transfer to China, 30 MB per 10 s (180 MB a minute).
    for step in range(720):
        now = T0 + step * 10
        batch = [FlowRecord(now - 5, now, "10.20.0.5", US, 1_000_000, 800, exporter="a")]
        if step >= 360:
            skewed = now - 600
            batch.append(
                FlowRecord(skewed - 5, skewed, "10.20.0.17", CN, 30_000_000, 20_000, exporter="b")
            )
        fired.extend(a for a in engine.process(batch) if a.state == FIRING)

    # Every one of the lagging exporter's flows was late (its intervals had closed) ...
    assert engine.aggregator.late_records == 360
    assert engine.aggregator.late_bytes == 360 * 30_000_000
    # ... and still counted: the exfiltration pages within an interval of its start.
    (alert,) = [a for a in fired if a.labels["dst_country"] == "CN"]
    assert alert.labels["alertname"] == "EgressUnexpectedDestination"
    assert alert.starts_at <= T0 + 3600 + 2 * 300
    assert alert.annotations["top_sources"] == "10.20.0.17"
    assert alert.annotations["top_destinations"] == CN
    # Nothing else paged, and the punctual exporter's traffic was never late.
    assert [a.labels["dst_country"] for a in fired] == ["CN"]


def test_a_flow_stamped_in_the_future_counts_at_the_limit_and_delays_no_one() -> None:
    engine = Engine(parse_config(CONFIG), EmbeddedCountryLabeler())
    wall = T0 + 100
    engine.future_limit = wall + 300  # as the daemon sets it: wall time + max_clock_ahead
    # An exporter with its clock two hours ahead, then punctual traffic from another.
    engine.process([FlowRecord(wall + 7200, wall + 7200, "10.20.0.9", US, 5_000, 5)])
    engine.process([FlowRecord(wall - 5, wall, "10.20.0.5", US, 1_000, 1)])
    assert engine.stats.future_records == 1
    assert engine.event_time() == wall + 300  # not two hours ahead
    assert engine.aggregator.late_records == 0  # the punctual exporter is not late
    totals = engine.aggregator.open_totals()
    assert sum(totals.values()) == 6_000


def test_replay_has_no_future_limit() -> None:
    engine = Engine(parse_config(CONFIG), EmbeddedCountryLabeler())
    engine.process([FlowRecord(T0 + 7200, T0 + 7200, "10.20.0.9", US, 5_000, 5)])
    assert engine.stats.future_records == 0
    assert engine.event_time() == T0 + 7200


def test_a_transfer_straddling_a_restart_adds_up_in_one_window() -> None:
    config = parse_config(CONFIG)
    before = Engine(config, EmbeddedCountryLabeler())
    # 60 MB to China in the half hour before a restart, 60 MB in the half hour after: each
    # half is under the 100 MB floor, the hour is over it.
    for minute in range(30):
        end = T0 + minute * 60
        before.process([FlowRecord(end - 1, end, "10.20.0.17", CN, 2_000_000, 10)])
    after = Engine(config, EmbeddedCountryLabeler())
    after.restore(before.snapshot())
    fired = []
    for minute in range(30, 60):
        end = T0 + minute * 60
        batch = [FlowRecord(end - 1, end, "10.20.0.17", CN, 2_000_000, 10)]
        fired += [a for a in after.process(batch) if a.state == FIRING]

    # Labels restored from the state file and labels looked up afresh name one destination.
    assert len(after.unexpected.windows) == 1
    assert [a.labels["dst_country"] for a in fired] == ["CN"]
