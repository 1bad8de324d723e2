"""Interval partials: counted in pieces anywhere, merged by addition, judged as one.

Flows split at random between several counting processes, shipped as encoded partials and
applied to one detecting engine must give exactly the per (group x destination x interval)
sums, and the alerts, of one engine that saw every flow.
"""

from __future__ import annotations

import math
import random

import pytest

from egressd.aggregate import Accum, Bucket
from egressd.config import parse_config
from egressd.detect.alerts import Alert
from egressd.enrich.embedded import EmbeddedCountryLabeler
from egressd.errors import DecodeError
from egressd.model import FlowRecord
from egressd.partials import (
    PartialCounter,
    decode_batch,
    decode_partials,
    encode_partials,
    encode_segments,
    partition_of,
    stable_hash,
)
from egressd.pipeline import Engine

CONFIG = """
[networks]
local = ["10.0.0.0/8"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16"]
expected_countries = ["GB", "US"]

[[groups]]
name = "office"
sources = ["10.30.0.0/16"]
expected_countries = ["GB", "US", "IE"]

[detection]
interval = "5m"
allowed_lateness = "1m"
unexpected_min_bytes = "100MB"
unexpected_window = "1h"
"""
T0 = 1_773_000_000.0 - 1_773_000_000.0 % 300
DESTINATIONS = ["3.5.140.2", "8.8.8.8", "81.2.69.160", "47.100.23.45", "10.1.2.3", "192.168.1.1"]

Sums = dict[tuple[float, str, str], tuple[int, int, int, dict[str, int], dict[str, int]]]


def flows(seed: int, count: int = 4000) -> list[FlowRecord]:
    """Time-ordered flows of both groups (and some east-west and transit), one exfiltration."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        end = T0 + i * 1.5 + rng.random()
        src = rng.choice(["10.20.0.5", "10.20.0.6", "10.30.1.1", "10.30.1.2", "172.16.0.1"])
        size = int(rng.lognormvariate(11, 1.5))
        out.append(FlowRecord(end - 3, end, src, rng.choice(DESTINATIONS), size, 1 + size // 1400))
    for i in range(12):  # 12 x 20 MB to CN within an hour
        end = T0 + 1800 + i * 60.5
        out.append(FlowRecord(end - 30, end, "10.20.0.17", "47.100.23.45", 20_000_000, 14_000))
    out.sort(key=lambda r: r.time_end)
    return out


def recorder(engine: Engine) -> Sums:
    sums: Sums = {}

    def record(start: float, bucket: Bucket) -> None:
        for (group, dest), accum in bucket.items():
            key = (start, group, dest.key)
            assert key not in sums, f"interval {key} closed twice"
            sums[key] = (
                accum.bytes,
                accum.packets,
                accum.flows,
                dict(accum.sources.counts),
                dict(accum.destinations.counts),
            )

    engine.on_interval = record
    return sums


def transitions(alerts: list[Alert]) -> list[tuple[str, tuple[tuple[str, str], ...], float]]:
    return [(a.state, tuple(sorted(a.labels.items())), a.starts_at) for a in alerts]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_partials_from_several_producers_sum_to_one_process(seed: int) -> None:
    config = parse_config(CONFIG)
    records = flows(seed)
    single = Engine(config, EmbeddedCountryLabeler())
    single_sums = recorder(single)
    single_alerts = single.process(records) + single.flush()

    # Three producers, each a random share of the flows, cut into batches of random size.
    rng = random.Random(seed + 100)
    lanes: dict[str, list[FlowRecord]] = {"a": [], "b": [], "c": []}
    for record in records:
        lanes[rng.choice("abc")].append(record)
    counter = PartialCounter(config, EmbeddedCountryLabeler())
    detect = Engine(config, EmbeddedCountryLabeler())
    detect_sums = recorder(detect)
    detect_alerts: list[Alert] = []
    positions = dict.fromkeys(lanes, 0)
    # Deliver batches round-robin; the detecting engine's event time is the slowest lane's,
    # so no lane's partials can arrive after the interval they belong to closed.
    while any(positions[lane] < len(lanes[lane]) for lane in lanes):
        for lane, mine in lanes.items():
            first = positions[lane]
            last = min(len(mine), first + rng.randint(1, 300))
            counter.count(lane, mine[first:last], math.inf)
            positions[lane] = last
            blob = encode_partials(counter.take(lane), config.detection.interval)
            watermark = min(counter.event_time(name) for name in lanes)
            detect_alerts += detect.apply_partials(
                decode_partials(blob, config.detection.interval), watermark
            )
    detect_alerts += detect.flush()

    assert detect_sums == single_sums
    assert len(single_sums) > 100
    assert transitions(detect_alerts) == transitions(single_alerts)
    assert any(a.labels["dst_country"] == "CN" for a in single_alerts)
    assert detect.aggregator.late_records == 0


def test_a_late_partial_counts_in_the_interval_at_the_watermark() -> None:
    config = parse_config(CONFIG)
    detect = Engine(config, EmbeddedCountryLabeler())
    sums = recorder(detect)
    counter = PartialCounter(config, EmbeddedCountryLabeler())
    counter.count("a", [FlowRecord(T0, T0 + 10, "10.20.0.5", "8.8.8.8", 1000, 1)], math.inf)
    early = counter.take("a")
    counter.count("b", [FlowRecord(T0, T0 + 1200, "10.20.0.5", "8.8.8.8", 7, 1)], math.inf)
    # event time far ahead: the interval at T0 + 1200 closed, and with it T0's
    detect.apply_partials(counter.take("b"), T0 + 3600)
    detect.apply_partials(early, T0 + 3600)
    detect.flush()
    assert detect.aggregator.late_records == 1
    assert detect.aggregator.late_bytes == 1000
    assert sorted(sums) == [(T0 + 1200, "research", "US"), (T0 + 3300, "research", "US")]
    assert sums[(T0 + 3300, "research", "US")][0] == 1000


def test_taking_partials_does_not_make_earlier_records_late() -> None:
    config = parse_config(CONFIG)
    counter = PartialCounter(config, EmbeddedCountryLabeler())
    counter.count("a", [FlowRecord(T0, T0 + 900, "10.20.0.5", "8.8.8.8", 1000, 1)], math.inf)
    counter.take("a")
    counter.count("a", [FlowRecord(T0, T0 + 10, "10.20.0.5", "8.8.8.8", 500, 1)], math.inf)
    ((start, key, accum),) = counter.take("a")
    assert (start, key[0], accum.bytes) == (T0, "research", 500)
    assert counter.event_time("a") == T0 + 900


def test_accum_rows_round_trip_and_merge() -> None:
    one, two = Accum(4), Accum(4)
    one.add("10.0.0.1", "1.1.1.1", 100, 1)
    two.add("10.0.0.1", "2.2.2.2", 50, 2)
    two.add("10.0.0.2", "2.2.2.2", 25, 1)
    again = Accum.from_row(two.to_row(), 4)
    assert again.to_row() == two.to_row()
    one.merge(again)
    assert (one.bytes, one.packets, one.flows) == (175, 4, 3)
    assert one.sources.counts == {"10.0.0.1": 150, "10.0.0.2": 25}


@pytest.mark.parametrize(
    "blob",
    [
        b"not json",
        b"[]",
        b'{"v": 2, "interval": 300.0, "rows": []}',
        b'{"v": 1, "interval": 60.0, "rows": []}',
        b'{"v": 1, "interval": 300.0}',
        b'{"v": 1, "interval": 300.0, "rows": [[1, "g", "CN", "", -5, 1, 1, {}, {}]]}',
        b'{"v": 1, "interval": 300.0, "rows": [[300, "g", "CN", "", 5, 1, 1, [], {}]]}',
        b'{"v": 1, "interval": 300.0, "rows": [[300, "g", "CN", "", 5, 1]]}',
        b'{"v": 1, "interval": 300.0, "rows": [[301, "g", "CN", "", 5, 1, 1, {}, {}]]}',
    ],
)
def test_malformed_partials_are_a_decode_error(blob: bytes) -> None:
    with pytest.raises(DecodeError) as error:
        decode_partials(blob, 300.0)
    assert error.value.reason == "bad_partials"


def test_the_partition_of_a_group_does_not_depend_on_the_process() -> None:
    # CRC-32 of the UTF-8 text: the same in every process and release, unlike hash(),
    # which Python salts per process
    assert stable_hash("research") == 0x57EB50C2
    assert [partition_of(g, 4) for g in ("research", "office", "")] == [2, 2, 0]


def test_segments_keep_partials_apart_per_offset_range() -> None:
    config = parse_config(CONFIG)
    counter = PartialCounter(config, EmbeddedCountryLabeler())
    segments = []
    for offset, size in ((10, 100), (11, 200), (13, 400)):
        counter.count("a", [FlowRecord(T0, T0 + 1, "10.20.0.5", "8.8.8.8", size, 1)], math.inf)
        segments.append((offset, offset, counter.take("a")))
    decoded = decode_batch(encode_segments(segments, 300.0), 300.0)
    assert [(first, last, [p[2].bytes for p in partials]) for first, last, partials in decoded] == [
        (10, 10, [100]),
        (11, 11, [200]),
        (13, 13, [400]),
    ]
    # a batch of rows is one segment without offsets: it covers the batch's whole range
    ((first, last, partials),) = decode_batch(encode_partials(segments[0][2], 300.0), 300.0)
    assert (first, last, len(partials)) == (None, None, 1)
    assert len(decode_partials(encode_segments(segments, 300.0), 300.0)) == 3


@pytest.mark.parametrize(
    "segments",
    [b'"x"', b"[[5, 4, []]]", b"[[-1, 0, []]]", b'[["1", 2, []]]', b"[[1, 2, {}]]", b"[[1, 2]]"],
)
def test_malformed_segments_are_a_decode_error(segments: bytes) -> None:
    blob = b'{"v": 1, "interval": 300.0, "segments": ' + segments + b"}"
    with pytest.raises(DecodeError) as error:
        decode_batch(blob, 300.0)
    assert error.value.reason == "bad_partials"
