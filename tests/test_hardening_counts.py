"""Counts no link can carry are invalid, and sums stay in the state file's range.

A NetFlow v9 record with ``in_bytes`` = 2**63 (or a 64-bit count times a 32-bit sampling rate)
once made every later state save fail. Whatever format a record arrives in, the engine now
skips one that claims more than ``detection.max_link_rate`` carries in its duration.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from egressd.aggregate import MAX_INTERVAL_COUNT
from egressd.baseline.statefile import load_state, save_state
from egressd.config import parse_config
from egressd.decode.egressd_json import decode_egressd_json
from egressd.decode.goflow2 import (
    decode_goflow2_json,
    decode_goflow2_protobuf,
    encode_goflow2_protobuf,
)
from egressd.decode.netflow import NetflowDecoder
from egressd.decode.pmacct import decode_pmacct_json
from egressd.detect.alerts import FIRING
from egressd.enrich.embedded import EmbeddedCountryLabeler
from egressd.model import FlowRecord
from egressd.pipeline import MAX_FLOW_SECONDS, Engine
from tests.netflow_builders import data_set, template_set, v9_datagram

# A learning group (no expected countries): the case where a failing save lost the most.
CONFIG = """
[networks]
local = ["10.0.0.0/8"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16"]

[[groups]]
name = "pinned"
sources = ["10.30.0.0/16"]
expected_countries = ["US"]

[detection]
interval = "5m"
allowed_lateness = "1m"
learning = "1h"
"""
T0 = 1_773_000_000 - 1_773_000_000 % 300
US = "3.5.140.2"
CN = "47.100.23.45"
RATE = 50_000_000_000  # the default max_link_rate: 400 Gbit/s

V9_FIELDS = [(8, 4), (12, 4), (1, 8), (2, 8), (22, 4), (21, 4)]


def engine() -> Engine:
    return Engine(parse_config(CONFIG), EmbeddedCountryLabeler())


def v9_records(*rows: tuple[int, int]) -> list[FlowRecord]:
    """(bytes, packets) rows as one v9 datagram from the real decoder; flows last 9 s."""
    datagram = v9_datagram(
        [
            template_set({256: V9_FIELDS}, ipfix=False),
            data_set(
                256,
                V9_FIELDS,
                [
                    [bytes([10, 20, 0, 17]), bytes([47, 100, 23, 45]), b, p, 90_000, 99_000]
                    for b, p in rows
                ],
            ),
        ],
        uptime_ms=100_000,
        unix_secs=T0 + 30,
    )
    return NetflowDecoder().decode(datagram, "192.0.2.1", float(T0 + 30))


def test_two_v9_records_of_2_63_bytes_are_invalid_and_the_state_still_saves(
    tmp_path: Path,
) -> None:
    eng = engine()
    records = v9_records((2**63, 1), (2**63, 1), (10_000_000, 10_000))
    assert [r.bytes for r in records] == [2**63, 2**63, 10_000_000]
    eng.process(records)
    eng.advance(T0 + 3600)
    assert eng.stats.invalid_records == 2
    assert eng.stats.records == 3
    assert eng.stats.egress_bytes == 10_000_000  # the plausible record is counted
    save_state(tmp_path / "state.json", eng.snapshot())
    restored = engine()
    data = load_state(tmp_path / "state.json")
    assert data is not None
    restored.restore(data)


def test_each_format_gets_the_same_bound() -> None:
    """A 64-bit count times a 32-bit sampling rate, in every record format with a rate."""
    huge, rate = 2**64 - 1, 2**32 - 1
    end_ns = (T0 + 30) * 10**9
    goflow = {
        "type": "NETFLOW_V9",
        "time_flow_start_ns": end_ns - 10**9,
        "time_flow_end_ns": end_ns,
        "src_addr": "10.20.0.17",
        "dst_addr": CN,
        "bytes": huge,
        "packets": 1,
        "sampling_rate": rate,
    }
    pmacct = {
        "event_type": "purge",
        "ip_src": "10.20.0.17",
        "ip_dst": CN,
        "bytes": huge,
        "packets": 1,
        "sampling_rate": rate,
        "timestamp_start": T0 + 29,
        "timestamp_end": T0 + 30,
    }
    records = [
        decode_goflow2_json(orjson.dumps(goflow)),
        decode_goflow2_protobuf(
            encode_goflow2_protobuf(
                src_addr="10.20.0.17",
                dst_addr=CN,
                bytes=huge,
                packets=1,
                time_flow_start_ns=end_ns - 10**9,
                time_flow_end_ns=end_ns,
                sampling_rate=rate,
            )
        ),
        decode_pmacct_json(orjson.dumps(pmacct)),
        decode_egressd_json(
            orjson.dumps(
                {
                    "time_start": T0 + 29,
                    "time_end": T0 + 30,
                    "src": "10.20.0.17",
                    "dst": CN,
                    "bytes": huge,
                    "packets": 1,
                    "sampling_rate": rate,
                }
            )
        ),
    ]
    eng = engine()
    eng.process([r for r in records if r is not None])
    assert eng.stats.records == 4
    assert eng.stats.invalid_records == 4
    assert eng.stats.egress_records == 0


def test_the_bound_follows_duration_and_packets() -> None:
    eng = engine()
    base = float(T0)
    records = [
        # a full 400 Gbit/s link for 10 s and 1 s (0 s counts as 1 s): plausible
        FlowRecord(base, base + 10, "10.20.0.17", US, 10 * RATE, 1_000),
        FlowRecord(base + 5, base + 5, "10.20.0.17", US, RATE, 1_000),
        # one byte over what a second carries, and a start after the end: invalid
        FlowRecord(base + 5, base + 5, "10.20.0.17", US, RATE + 1, 1_000),
        FlowRecord(base + 9, base + 5, "10.20.0.17", US, RATE + 1, 1_000),
        # more 20-byte packets than the link carries, with few bytes: invalid
        FlowRecord(base, base + 1, "10.20.0.17", US, 1_000, RATE // 20 + 1),
        # a bogus start time a year back cannot raise the bound past a day's worth
        FlowRecord(base - 365 * 86400, base + 10, "10.20.0.17", US, 2 * 86400 * RATE, 1),
        FlowRecord(base - 365 * 86400, base + 10, "10.20.0.17", US, 86400 * RATE, 1),
    ]
    eng.process(records)
    assert eng.stats.invalid_records == 4
    assert eng.stats.egress_bytes == 11 * RATE + int(MAX_FLOW_SECONDS) * RATE


def test_a_configured_link_rate_is_the_bound() -> None:
    config = parse_config(CONFIG + 'max_link_rate = "1GB"\n')
    assert config.detection.max_link_rate == 1_000_000_000
    eng = Engine(config, EmbeddedCountryLabeler())
    eng.process(
        [
            FlowRecord(T0 + 0.0, T0 + 10.0, "10.20.0.17", US, 10_000_000_000, 1),
            FlowRecord(T0 + 0.0, T0 + 10.0, "10.20.0.17", US, 10_000_000_001, 1),
        ]
    )
    assert eng.stats.invalid_records == 1


def test_a_flood_of_day_long_records_saturates_the_interval_and_still_pages(
    tmp_path: Path,
) -> None:
    """Plausible records (a day at 400 Gbit/s each) can still sum past 64 bits: sums saturate."""
    eng = engine()
    each = int(MAX_FLOW_SECONDS) * RATE
    flood = [
        FlowRecord(T0 + 100 - MAX_FLOW_SECONDS, T0 + 100.0, "10.30.0.9", CN, each, 1)
        for _ in range(5_000)
    ]
    assert len(flood) * each > 2**64
    fired = eng.process(flood)
    # open sums past 64 bits are saturated by the state writer ...
    save_state(tmp_path / "open.json", eng.snapshot())
    fired += eng.advance(T0 + 1200)
    # ... closed ones by the engine, so everything downstream stays in range
    save_state(tmp_path / "closed.json", eng.snapshot())
    assert eng.stats.invalid_records == 0
    (alert,) = [a for a in fired if a.state == FIRING]
    assert alert.labels["dst_country"] == "CN"
    assert int(alert.annotations["bytes"]) <= MAX_INTERVAL_COUNT


def test_link_rate_must_be_positive() -> None:
    from egressd.errors import ConfigError

    try:
        parse_config(CONFIG + 'max_link_rate = "0B"\n')
    except ConfigError as exc:
        assert "max_link_rate" in str(exc)
    else:
        raise AssertionError("max_link_rate = 0 was accepted")
