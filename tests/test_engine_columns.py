"""The batch path (`Engine.process_columns`) accounts exactly what the record path does.

Two engines see the same flows, one as records and one as columns, split into the same
batches: their open and closed intervals, counters and alerts must be identical, whatever
mix of families, groups, late, future, implausible, small-packet and ingress flows comes.
"""

from __future__ import annotations

import gc
import itertools
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from enrich_mmdb_factory import maxmind_asn, maxmind_country, write_mmdb
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scenarios import generate, generate_month

from egressd import talkers
from egressd.aggregate import WAITING_FLOWS, Accum, Bucket
from egressd.columnar import ClassifiedBatch, distinct_addresses
from egressd.columns import FlowColumns
from egressd.config import GeoConfig, RegionMapConfig, parse_config
from egressd.detect.alerts import Alert
from egressd.enrich import DestinationLabeler
from egressd.enrich.embedded import EmbeddedCountryLabeler
from egressd.enrich.labeler import build_labeler
from egressd.model import FlowRecord
from egressd.pipeline import ROW_LOOP_ROWS, Engine

CONFIG = """
[networks]
local = ["10.0.0.0/8", "fd00:10::/32"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16", "fd00:10:20::/48"]
expected_countries = ["US"]

[[groups]]
name = "office"
sources = ["10.30.0.0/16"]
expected_countries = ["GB", "US"]

[detection]
interval = "1m"
allowed_lateness = "30s"
unexpected_min_bytes = "20KB"
unexpected_window = "5m"
max_link_rate = "10MB"
max_keys = 6
"""
T0 = 1_773_000_000.0 - 1_773_000_000.0 % 60

#: addresses by what they are; a drawn suffix makes more of them (distinct talkers)
LOCAL_V4 = ("10.20.0.{}", "10.30.1.{}", "10.99.0.{}")
LOCAL_V6 = ("fd00:10:20::{:x}", "fd00:10:99::{:x}")
OUTSIDE_V4 = ("3.5.140.{}", "47.100.23.{}", "81.2.69.{}", "5.45.{}.1", "200.160.2.{}")
OUTSIDE_V6 = ("2a00:1450:4001:80b::{:x}", "2001:250:{:x}::1")
MAPPED = ("::ffff:47.100.23.{}", "::ffff:3.5.140.{}")
SPECIAL = ("192.0.2.{}", "fe80::{:x}", "192.168.1.{}", "not-an-address{}")

addresses = st.builds(
    lambda pattern, n: pattern.format(n),
    st.sampled_from(LOCAL_V4 + LOCAL_V6 + OUTSIDE_V4 + OUTSIDE_V6 + MAPPED + SPECIAL),
    st.integers(1, 40),
)
local_sources = st.builds(
    lambda pattern, n: pattern.format(n), st.sampled_from(LOCAL_V4 + LOCAL_V6), st.integers(1, 6)
)
outside = st.builds(
    lambda pattern, n: pattern.format(n),
    st.sampled_from(OUTSIDE_V4 + OUTSIDE_V6 + MAPPED),
    st.integers(1, 6),
)


@st.composite
def flows(draw: st.DrawFn) -> list[FlowRecord]:
    count = draw(st.integers(1, 120))
    now = T0
    records = []
    for _ in range(count):
        step = draw(st.sampled_from((0.0, 0.5, 3.0, 7.0, 20.0, 45.0)))
        now += step
        kind = draw(st.sampled_from(("egress",) * 6 + ("ingress", "any", "late", "future")))
        if kind == "egress":
            src, dst = draw(local_sources), draw(outside)
        elif kind == "ingress":
            src, dst = draw(outside), draw(local_sources)
        else:
            src, dst = draw(addresses), draw(addresses)
        end = now
        if kind == "late":
            end = now - draw(st.sampled_from((40.0, 100.0, 600.0)))
        elif kind == "future":
            end = now + draw(st.sampled_from((200.0, 7200.0)))
        duration = draw(st.sampled_from((0.0, 0.5, 1.0, 30.0)))
        size = draw(
            st.one_of(
                st.integers(0, 3_000),
                st.integers(3_000, 60_000),
                st.sampled_from((10_000_001, 2**40, 2**63 + 5)),
            )
        )
        packets = draw(st.one_of(st.integers(0, 400), st.sampled_from((600_000, 2**50))))
        records.append(FlowRecord(end - duration, end, src, dst, size, packets))
    return records


def _accum(accum: Accum, sketches: bool) -> tuple[Any, ...]:
    sums = (accum.bytes, accum.packets, accum.flows, accum.small, accum.ingress)
    if not sketches:
        return sums
    return (*sums, accum.sources.counts, accum.destinations.counts)


def _bucket(
    bucket: Bucket, exact_talkers: Bucket | None = None, talkers: bool = True
) -> list[tuple[Any, ...]]:
    """A bucket's keys in order and their sums; sketch counts where the reference's sketches
    never filled up (then no eviction happened, and the batch path must match exactly)."""
    out = []
    for key, accum in bucket.items():
        reference = (exact_talkers or bucket)[key]
        exact = max(len(reference.sources.counts), len(reference.destinations.counts))
        out.append((key, _accum(accum, talkers and exact < reference.capacity)))
        if talkers:  # every sketch accounts for every byte, whatever was evicted
            assert sum(accum.sources.counts.values()) == accum.bytes
            assert sum(accum.destinations.counts.values()) == accum.bytes
    return out


def _alerts(alerts: list[Alert]) -> list[tuple[Any, ...]]:
    return [(a.state, a.labels, a.annotations, a.starts_at, a.ends_at) for a in alerts]


class Pair:
    """A record engine and a column engine fed the same batches."""

    def __init__(
        self,
        config_text: str = CONFIG,
        labeler: Callable[[], DestinationLabeler] = EmbeddedCountryLabeler,
    ) -> None:
        config = parse_config(config_text)
        self.records = Engine(config, labeler())
        self.columns = Engine(config, labeler())
        self.closed: dict[str, list[tuple[float, Bucket]]] = {"records": [], "columns": []}
        self.records.on_interval = lambda s, b: self.closed["records"].append((s, b))
        self.columns.on_interval = lambda s, b: self.closed["columns"].append((s, b))
        self.alerts: dict[str, list[Alert]] = {"records": [], "columns": []}

    def limits(self, future_limit: float, stream_ahead: float) -> None:
        for engine in (self.records, self.columns):
            engine.future_limit = future_limit
            engine.stream_ahead = stream_ahead

    def feed(self, batch: list[FlowRecord]) -> None:
        # The record engine sees exactly what the columns carry (addresses normalised).
        columns = FlowColumns.from_records(batch)
        self.alerts["records"] += [a.copy() for a in self.records.process(columns.to_records())]
        self.alerts["columns"] += [a.copy() for a in self.columns.process_columns(columns)]

    def flush(self) -> None:
        self.alerts["records"] += [a.copy() for a in self.records.flush()]
        self.alerts["columns"] += [a.copy() for a in self.columns.flush()]

    def check(self, settle: bool = True) -> None:
        """Compare everything; open sketches only when ``settle`` (which settles them, as
        anything reading them does: left alone, backlogs span batches until the close)."""
        a, b = self.records, self.columns
        if settle:
            b.aggregator.settle()
        assert b.stats == a.stats
        for field in (
            "closed_upto",
            "max_time",
            "next_due",
            "late_records",
            "late_bytes",
            "folded_records",
        ):
            assert getattr(b.aggregator, field) == getattr(a.aggregator, field), field
        assert list(b.aggregator.buckets) == list(a.aggregator.buckets)
        for start, bucket in a.aggregator.buckets.items():
            assert _bucket(b.aggregator.buckets[start], bucket, settle) == _bucket(
                bucket, talkers=settle
            ), start
        closed_a, closed_b = self.closed["records"], self.closed["columns"]
        assert [s for s, _ in closed_b] == [s for s, _ in closed_a]
        for (start, bucket_a), (_, bucket_b) in zip(closed_a, closed_b, strict=True):
            assert _bucket(bucket_b, bucket_a) == _bucket(bucket_a), start
        assert _alerts(self.alerts["columns"]) == _alerts(self.alerts["records"])
        assert b.last_tick == a.last_tick


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    records=flows(),
    cuts=st.lists(st.integers(0, 120), max_size=6),
    future=st.sampled_from((math.inf, T0 + 400.0, T0 + 3000.0)),
    ahead=st.sampled_from((-math.inf, 0.0, 90.0)),
    settle=st.booleans(),
    row_loop=st.sampled_from((0, 3, ROW_LOOP_ROWS)),
    numpy_settle=st.booleans(),
)
def test_columns_account_exactly_what_records_do(
    records: list[FlowRecord],
    cuts: list[int],
    future: float,
    ahead: float,
    settle: bool,
    row_loop: int,
    numpy_settle: bool,
) -> None:
    """Whichever way blocks are accounted: numpy grouping and the talker backlog (0), the
    row loop (all of them here), or both in one interval (3)."""
    pair = Pair()
    pair.columns.row_loop_rows = row_loop
    pair.limits(future, ahead)
    small_rows = talkers.SMALL_ROWS
    talkers.SMALL_ROWS = -1 if numpy_settle else small_rows  # every backlog through numpy
    try:
        _feed_in_cuts(pair, records, cuts, settle)
    finally:
        talkers.SMALL_ROWS = small_rows


def _feed_in_cuts(pair: Pair, records: list[FlowRecord], cuts: list[int], settle: bool) -> None:
    bounds = sorted({0, len(records), *(c for c in cuts if c < len(records))})
    for lo, hi in itertools.pairwise(bounds):
        pair.feed(records[lo:hi])
        pair.check(settle)
    pair.flush()
    pair.check()


@pytest.mark.parametrize("numpy_settle", [False, True], ids=["dicts", "numpy"])
def test_many_talkers_keep_every_byte_and_the_heaviest(
    numpy_settle: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past the sketch's capacity the batch path is no longer flow-by-flow Space-Saving, but
    the counts still add up to the bytes and a heavy talker is still named."""
    if numpy_settle:
        monkeypatch.setattr("egressd.talkers.SMALL_ROWS", -1)
    pair = Pair()
    batch = [
        FlowRecord(T0 + 1, T0 + 2, f"10.20.{i // 250}.{i % 250 + 1}", "47.100.23.45", 100, 1)
        for i in range(500)
    ]
    batch.insert(250, FlowRecord(T0 + 1, T0 + 2, "10.20.9.9", "3.5.140.2", 1_000_000, 700))
    batch.insert(260, FlowRecord(T0 + 1, T0 + 2, "10.20.9.9", "47.100.23.45", 1_000_000, 700))
    pair.feed(batch)
    pair.check()  # sums identical, sketches account for every byte
    (bucket,) = pair.columns.aggregator.buckets.values()
    for (_group, dest), accum in bucket.items():
        top, weight = accum.sources.top(1)[0]
        assert top == "10.20.9.9"
        assert weight >= 1_000_000
        if dest.country == "CN":
            assert len(accum.sources.counts) == accum.capacity


def test_a_small_backlog_settles_in_dicts_as_numpy_settles_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The dict sums of a small backlog hand the sketches what numpy's grouping hands them,
    past the sketch's capacity too (the heaviest kept, ties and the rest alike)."""
    rng = random.Random(5)
    batch = [
        FlowRecord(
            T0 + i / 100,
            T0 + 1 + i / 100,
            f"10.20.{rng.randrange(3)}.{rng.randrange(1, 60)}",
            rng.choice(("47.100.23.45", "3.5.140.2", "2001:db8::1", "2a00:1450::5"))
            if i % 50
            else f"2a00:1450::{i:x}",
            rng.choice((100, 100, 200, 5_000, 2**62)),
            1,
        )
        for i in range(1_500)
    ]
    sketches = []
    for small_rows in (-1, talkers.SMALL_ROWS):
        monkeypatch.setattr("egressd.talkers.SMALL_ROWS", small_rows)
        engine = Pair().columns
        engine.row_loop_rows = 0
        engine.process_columns(FlowColumns.from_records(batch))
        engine.aggregator.settle()
        sketches.append(
            [
                (key, list(a.sources.counts.items()), list(a.destinations.counts.items()))
                for bucket in engine.aggregator.buckets.values()
                for key, a in bucket.items()
            ]
        )
    assert sketches[0] == sketches[1]
    assert any(len(sources) == 32 for _key, sources, _dests in sketches[0])  # some overflowed


def test_ipv4_talkers_grouped_as_one_number_settle_as_the_general_grouping(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """IPv4 backlogs group (key, address) packed in one int64 with an unstable sort; the
    sketches get what the three-column stable grouping gives them: the same items in the
    same order, sums, heaviest kept and rest, with ties."""
    rng = random.Random(9)
    rows = 20_000
    keys = np.array([rng.randrange(40) for _ in range(rows)], dtype=np.int64)
    lo = np.array(
        [0xFFFF_0000_0000 | (0x0A14_0000 + rng.randrange(3_000)) for _ in range(rows)],
        dtype=np.uint64,
    )
    hi = np.zeros(rows, dtype=np.uint64)
    sizes = np.array([rng.choice((100, 100, 200, 5_000, 2**40)) for _ in range(rows)], np.uint64)
    packed = talkers._heaviest(keys, hi, lo, sizes, 32)
    monkeypatch.setattr("egressd.talkers._packed", lambda *_args: None)
    general = talkers._heaviest(keys, hi, lo, sizes, 32)
    assert packed == general
    assert any(rest is not None for _key, (_items, _weights, rest, _w) in packed)
    assert packed[0][1][0][0].startswith("10.20.")


@pytest.mark.slow
@pytest.mark.parametrize("month", [False, True], ids=["nine-days", "month"])
def test_a_scenario_gives_the_same_alerts_in_columns(month: bool) -> None:
    scenario = generate_month(seed=1) if month else generate(seed=1, days=9)
    pair = Pair(scenario.config_text)
    batch: list[FlowRecord] = []
    for flow in scenario.flows:
        batch.append(
            FlowRecord(
                flow.start,
                flow.end,
                flow.src,
                flow.dst,
                flow.real_bytes,
                flow.packets * flow.sampling_rate,
                flow.proto,
                flow.src_port,
                flow.dst_port,
            )
        )
        if len(batch) == 1000:
            pair.feed(batch)
            batch = []
    pair.feed(batch)
    pair.flush()
    fired = [a for a in pair.alerts["columns"] if a.state == "firing"]
    assert len(fired) >= len(scenario.expected)
    pair.check()


def test_a_snapshot_holds_the_talkers_still_in_the_backlog() -> None:
    pair = Pair()
    pair.columns.row_loop_rows = 0  # the backlog's path, not the row loop's
    batch = [
        FlowRecord(
            T0 + i, T0 + i + 1, f"10.20.0.{i % 7 + 1}", f"47.100.23.{i % 5 + 1}", 1000 + i, 2
        )
        for i in range(40)
    ]
    pair.feed(batch)
    assert pair.columns.aggregator.talkers  # nothing read the sketches yet
    assert pair.columns.snapshot()["open_buckets"] == pair.records.snapshot()["open_buckets"]
    assert not pair.columns.aggregator.talkers


def test_a_long_backlog_settles_on_the_way_and_stays_exact(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("egressd.pipeline.SETTLE_ROWS", 10)
    pair = Pair()
    pair.columns.row_loop_rows = 0  # the backlog's path, not the row loop's
    for step in range(6):
        pair.feed(
            [
                FlowRecord(T0, T0 + step * 5 + i / 10, f"10.20.0.{i % 9 + 1}", "3.5.140.2", i, 1)
                for i in range(7)
            ]
        )
        # each batch of 7 flows to one key pushes the backlog past 10 rows every other batch
        assert pair.columns.aggregator.talkers.get(T0, None) is None or (
            pair.columns.aggregator.talkers[T0].rows < 10
        )
    pair.check()


def test_the_row_loops_talkers_wait_a_bounded_while_and_stay_exact() -> None:
    pair = Pair()
    for step in range(5):
        # 150 flows a batch to one key, among 40 sources (past the sketches' 32): the row loop
        pair.feed(
            [
                FlowRecord(
                    T0, T0 + step * 5 + i / 100, f"10.20.0.{i * 7 % 40 + 1}", "3.5.140.2", i + 1, 1
                )
                for i in range(150)
            ]
        )
        for bucket in pair.columns.aggregator.buckets.values():
            for accum in bucket.values():
                # its talkers go into the sketches once WAITING_FLOWS wait
                assert accum.talkers is None or len(accum.talkers) < 3 * WAITING_FLOWS
        pair.check(settle=step % 2 == 1)
    pair.flush()
    pair.check()


def test_the_row_loop_builds_accumulators_the_collector_does_not_track() -> None:
    """The sparse path's accumulators (built with their sums at once) and the sketches they
    settle into stay out of every garbage collection, as the record path's do."""
    pair = Pair()
    pair.feed(
        [
            FlowRecord(T0, T0 + i / 100, f"10.20.0.{i % 40 + 1}", f"3.5.140.{i % 3 + 1}", i + 1, 1)
            for i in range(200)
        ]
    )
    pair.check()
    for engine in (pair.records, pair.columns):
        accums = [a for bucket in engine.aggregator.buckets.values() for a in bucket.values()]
        assert accums
        for accum in accums:
            assert not gc.is_tracked(accum)
            assert not gc.is_tracked(accum.sources)
            assert not gc.is_tracked(accum.destinations)


def _feed_outside_mix(pair: Pair, rng: random.Random, steps: int) -> None:
    """Feed both paths batches of 50 records between local sources and outside addresses
    (IPv4, IPv6 and IPv4-mapped; every ninth one ingress, labelled by its source),
    checking them equal as it goes and after a flush."""
    patterns = OUTSIDE_V4 + OUTSIDE_V6 + MAPPED
    for step in range(steps):
        batch = []
        for i in range(50):
            end = T0 + step * 20 + i / 10
            dst = rng.choice(patterns).format(rng.randrange(1, 50))
            src = rng.choice(LOCAL_V4 + LOCAL_V6).format(rng.randrange(1, 5))
            size = rng.randrange(100, 40_000)
            if i % 9 == 0:
                src, dst = dst, src
            batch.append(FlowRecord(end - 1, end, src, dst, size, rng.randrange(1, 90)))
        pair.feed(batch)
        pair.check(settle=step % 3 == 0)
    pair.flush()
    pair.check()


def test_regions_and_asn_label_the_batch_as_they_label_records(tmp_path: Path) -> None:
    """With region maps and an ASN database (the composite labeler's batch lookups), keys
    carry region and ASN; both paths give the same buckets and alerts."""
    asn = write_mmdb(
        tmp_path / "GeoLite2-ASN.mmdb",
        "GeoLite2-ASN",
        {
            "47.100.0.0/16": maxmind_asn(37963, "ALIBABA"),
            "2a00:1450::/32": maxmind_asn(15169, "GOOGLE"),
        },
    )
    regions = tmp_path / "own.csv"
    regions.write_text("3.5.140.0/24,cloud/eu-2\n2a00:1450:4001::/48,cloud/eu-1\n")
    geo = GeoConfig(asn_mmdb=asn, region_maps=(RegionMapConfig(format="csv", path=regions),))
    pair = Pair(labeler=lambda: build_labeler(geo))
    _feed_outside_mix(pair, random.Random(5), steps=30)
    keys = {key for _, bucket in pair.closed["columns"] for key in bucket}
    assert any(dest.asn == 37963 for _, dest in keys)
    assert any(dest.region == "cloud/eu-2" for _, dest in keys)
    assert any(dest.region == "cloud/eu-1" and dest.asn == 15169 for _, dest in keys)


@pytest.mark.parametrize("with_file", [False, True], ids=["embedded", "country-mmdb"])
def test_composite_labeler_labels_the_batch_as_it_labels_records(
    tmp_path: Path, with_file: bool
) -> None:
    """The composite labeler with the embedded data alone answers the batch path directly
    (no destination cache: its lookups stay 0); with a country file the batch path goes
    through the cache. Either way, the same buckets and alerts as records."""
    geo = GeoConfig()
    if with_file:
        country = write_mmdb(
            tmp_path / "GeoLite2-Country.mmdb",
            "GeoLite2-Country",
            {"47.100.0.0/16": maxmind_country("NZ"), "2a00:1450::/32": maxmind_country("NZ")},
        )
        geo = GeoConfig(country_mmdb=country)
    pair = Pair(labeler=lambda: build_labeler(geo))
    _feed_outside_mix(pair, random.Random(7), steps=20)
    cache = pair.columns.destination_cache
    assert (cache.lookups > 0) is with_file
    keys = {key for _, bucket in pair.closed["columns"] for key in bucket}
    assert any(dest.country == "NZ" for _, dest in keys) is with_file


@pytest.mark.parametrize("seed", range(40))
def test_rows_by_weight_are_a_stable_sort_by_key_and_weight(seed: int) -> None:
    """The packed sort that picks each key's heaviest talkers orders rows as a stable sort
    by (key, weight) does: small weights packed whole, large ones by rank, and Python
    integers (sums past 64 bits)."""
    rng = random.Random(seed)
    rows = rng.choice((1, 2, 50, 3_000))
    cuts = sorted(rng.sample(range(1, rows), min(rows - 1, rng.choice((0, 1, 10, 100)))))
    bounds = np.array(cuts, dtype=np.intp)
    choices = rng.choice(((1, 2, 3), (1, 2, 2**40, 2**62, 2**64 - 1), (1, 2**64, 2**70)))
    values = [rng.choice(choices) for _ in range(rows)]
    sums = np.array(values, dtype=object if max(values) >= 2**64 else np.uint64)
    groups = np.repeat(np.arange(len(cuts) + 1), np.diff([0, *cuts, rows]))
    assert talkers._by_weight(bounds, sums).tolist() == np.lexsort((sums, groups)).tolist()


@pytest.mark.parametrize("seed", range(20))
def test_distinct_addresses_number_them_by_first_appearance(seed: int) -> None:
    """Each distinct address's first row and each row's index into them, numbered in order
    of first appearance: what np.unique's stable return_index gives, renumbered."""
    rng = random.Random(seed)
    rows = rng.choice((1, 2, 40, 3_000))
    pool = rng.choice((1, 3, 500, 2**32))
    # (IPv4 addresses, or low halves of IPv6 ones spread over all 64 bits: both sorts)
    base = 0xFFFF_0000_0000 if seed % 2 else 0
    scale = 1 if seed % 2 else 2**64 // pool
    lo = np.array([base | rng.randrange(pool) * scale for _ in range(rows)], np.uint64)
    hi = np.zeros(rows, dtype=np.uint64)
    first, inverse = distinct_addresses(hi, lo)
    values = lo.tolist()
    seen: dict[int, int] = {}
    for row, value in enumerate(values):
        seen.setdefault(value, row)
    assert first.tolist() == list(seen.values())
    order = list(seen)
    assert inverse.tolist() == [order.index(value) for value in values]


@pytest.mark.parametrize("seed", range(20))
def test_distinct_addresses_of_ipv6_number_them_by_first_appearance(seed: int) -> None:
    """The same with IPv6 in the batch (both halves sorted): addresses that share a high
    or a low half stay apart, and IPv4 ones (high half zero) sit among them."""
    rng = random.Random(seed)
    rows = rng.choice((2, 40, 3_000))
    highs = [0, 0x2001_0DB8_0000_0000, 0x2A00_1098_0000_0000, 2**64 - 1][: rng.choice((2, 3, 4))]
    lows = [0xFFFF_0000_0000 | rng.randrange(2**32) for _ in range(rng.choice((1, 3, 50)))]
    lows += [rng.randrange(2**64) for _ in range(rng.choice((1, 20)))]
    pairs = [(rng.choice(highs), rng.choice(lows)) for _ in range(rows)]
    pairs[rng.randrange(rows)] = (highs[1], lows[0])  # never all IPv4
    hi = np.array([h for h, _ in pairs], np.uint64)
    lo = np.array([low for _, low in pairs], np.uint64)
    first, inverse = distinct_addresses(hi, lo)
    seen: dict[tuple[int, int], int] = {}
    for row, pair in enumerate(pairs):
        seen.setdefault(pair, row)
    assert first.tolist() == list(seen.values())
    order = list(seen)
    assert inverse.tolist() == [order.index(pair) for pair in pairs]


@pytest.mark.parametrize("seed", range(3))
def test_a_batch_of_egress_alone_classifies_as_in_a_mixed_batch(seed: int) -> None:
    """A batch whose every row is egress takes no row masks or indexes; its rows get the
    groups, destinations, labels and sums they get in a batch that also holds ingress and
    internal rows."""
    rng = random.Random(seed)
    engine = Engine(parse_config(CONFIG), EmbeddedCountryLabeler())
    egress = [
        FlowRecord(
            T0 + i,
            T0 + i + 1,
            rng.choice(LOCAL_V4[:2]).format(rng.randint(1, 9)),
            rng.choice(OUTSIDE_V4 + OUTSIDE_V6 + MAPPED).format(rng.randint(1, 9)),
            rng.randint(0, 90_000),
            rng.randint(0, 60),
        )
        for i in range(200)
    ]
    others = [
        FlowRecord(T0, T0 + 1, "47.100.23.5", "10.20.0.3", 500, 2),  # ingress
        FlowRecord(T0, T0 + 1, "10.20.0.3", "10.30.1.4", 700, 3),  # internal
    ]
    args = (engine.column_classifier, engine._labels_of, 100)
    alone = ClassifiedBatch(FlowColumns.from_records(egress), *args)
    mixed = ClassifiedBatch(FlowColumns.from_records(egress + others), *args)
    n = len(egress)
    assert alone.egress_count == n == mixed.egress_count
    assert alone.egress_bytes == mixed.egress_bytes == sum(r.bytes for r in egress)
    assert alone.touch.all() and mixed.touch[:n].all()
    assert alone.group.tolist() == mixed.group[:n].tolist()
    assert [alone.labels[d] for d in alone.dest.tolist()] == [
        mixed.labels[d] for d in mixed.dest[:n].tolist()
    ]
    assert (alone.ingress_count, alone.internal_count) == (0, 0)
    assert (mixed.ingress_count, mixed.internal_count) == (1, 1)
    assert alone.dest.dtype == mixed.dest.dtype == np.int64
    assert alone.small.tolist() == mixed.small[:n].tolist()
