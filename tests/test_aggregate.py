"""Event-time aggregation: interval buckets, the watermark that closes them, and late records
(counted, never merged into a closed interval)."""

from __future__ import annotations

import gc
import random

import pytest

from egressd.aggregate import Accum, IntervalAggregator, heaviest_items
from egressd.columns import address_text
from egressd.detect.newdest import destinations_at_least
from egressd.detect.unexpected import add_heaviest, heaviest
from egressd.enrich import DestinationLabels
from egressd.sketch import TopK

CN = ("research", DestinationLabels("CN"))
US = ("research", DestinationLabels("US"))
T0 = 1_772_409_600.0  # 2026-03-02T00:00:00Z, a multiple of 300


def _agg() -> IntervalAggregator:
    return IntervalAggregator(interval=300.0, lateness=60.0)


def test_records_sum_into_their_interval() -> None:
    agg = _agg()
    agg.add(CN, T0 + 10, "10.20.0.1", "47.100.23.45", 1000, 2)
    agg.add(CN, T0 + 20, "10.20.0.2", "47.100.23.45", 500, 1)
    agg.add(US, T0 + 299.9, "10.20.0.1", "8.8.8.8", 7, 1)
    agg.add(CN, T0 + 300, "10.20.0.1", "47.100.23.45", 1, 1)
    assert sorted(agg.buckets) == [T0, T0 + 300]
    accum = agg.buckets[T0][CN]
    assert (accum.bytes, accum.packets, accum.flows) == (1500, 3, 2)
    assert accum.sources.top(2) == [("10.20.0.1", 1000), ("10.20.0.2", 500)]
    assert accum.destinations.top(1) == [("47.100.23.45", 1500)]
    assert agg.buckets[T0][US].bytes == 7
    assert agg.open_totals() == {CN: 1501, US: 7}


def test_watermark_closes_after_interval_end_plus_lateness() -> None:
    agg = _agg()
    agg.add(CN, T0 + 5, "a", "b", 1, 1)
    agg.add(CN, T0 + 300 + 59, "a", "b", 1, 1)  # watermark T0+299: not yet
    assert not agg.due
    agg.observe_time(T0 + 300 + 60)  # watermark T0+300: the first bucket ends
    assert agg.due
    closed = agg.pop_due()
    assert [start for start, _ in closed] == [T0]
    assert agg.closed_upto == T0 + 300
    assert list(agg.buckets) == [T0 + 300]
    assert not agg.due


def test_out_of_order_within_lateness_is_merged() -> None:
    agg = _agg()
    agg.add(CN, T0 + 330, "a", "b", 10, 1)
    assert agg.add(CN, T0 + 290, "a", "b", 5, 1)  # earlier bucket, still open
    assert agg.buckets[T0][CN].bytes == 5
    assert agg.late_records == 0


def test_late_records_are_counted_not_merged_into_the_past() -> None:
    agg = _agg()
    agg.add(CN, T0 + 10, "a", "b", 100, 1)
    agg.observe_time(T0 + 1000)
    ((start, bucket),) = agg.pop_due()
    assert start == T0
    assert not agg.add(CN, T0 + 20, "a", "b", 5000, 3)
    assert (agg.late_records, agg.late_bytes) == (1, 5000)
    assert bucket[CN].bytes == 100  # the closed past is not rewritten
    assert T0 not in agg.buckets  # and not reopened
    # The late bytes count where event time stands: the interval holding the watermark
    # (T0+940), which stays open until the watermark passes its end.
    assert agg.buckets[T0 + 900][CN].bytes == 5000
    assert not agg.due
    assert agg.add(CN, T0 + 900, "a", "b", 1, 1)  # a record for an open interval is fine
    assert agg.buckets[T0 + 900][CN].bytes == 5001


def test_pop_all_and_json_round_trip() -> None:
    agg = _agg()
    agg.add(CN, T0 + 10, "10.20.0.1", "47.100.23.45", 100, 1)
    agg.add(US, T0 + 400, "10.20.0.1", "8.8.8.8", 50, 1)
    again = _agg()
    intern: dict[str, DestinationLabels] = {}
    again.load_json(agg.to_json(), intern)
    by_key = {(g, d.key): n for (g, d), n in again.open_totals().items()}
    assert by_key == {("research", "CN"): 100, ("research", "US"): 50}
    ((restored, accum),) = again.buckets[T0].items()
    assert (restored[0], restored[1].key) == ("research", "CN")
    assert accum.sources.top(1) == [("10.20.0.1", 100)]
    assert again.next_due == T0 + 360
    closed = again.pop_all()
    assert [s for s, _ in closed] == [T0, T0 + 300]
    assert not again.buckets
    assert again.closed_upto == T0 + 600


# -- talkers kept until the sketches are read -----------------------------------------------

V4 = 0xFFFF << 32  # an IPv4-mapped column value's marker


def _flows(seed: int, count: int, sources: int, destinations: int) -> list[tuple[int, int, int]]:
    rng = random.Random(seed)
    return [
        (
            V4 | (0x0A14_0000 + rng.randrange(sources)),
            # every third destination an IPv6 address (the high half set)
            (0x2001_0DB8 << 96) | rng.randrange(destinations)
            if rng.randrange(3) == 0
            else V4 | (0x2F64_0000 + rng.randrange(destinations)),
            rng.randrange(1, 10_000),
        )
        for _ in range(count)
    ]


def _waiting(flows: list[tuple[int, int, int]], capacity: int) -> Accum:
    """An accumulator whose talkers wait, as the engine's row loop leaves them."""
    accum = Accum(capacity)
    accum.talkers = [value for flow in flows for value in flow]
    return accum


def _added(flows: list[tuple[int, int, int]], capacity: int) -> tuple[TopK, TopK]:
    """The sketches adding each flow in order makes."""
    sources, destinations = TopK(capacity), TopK(capacity)
    for src, dst, size in flows:
        sources.add(address_text(src >> 64, src & (2**64 - 1)), size)
        destinations.add(address_text(dst >> 64, dst & (2**64 - 1)), size)
    return sources, destinations


@pytest.mark.parametrize(("sources", "destinations"), [(3, 5), (40, 6), (5, 60), (200, 200)])
def test_waiting_talkers_make_the_sketches_adding_each_flow_makes(
    sources: int, destinations: int
) -> None:
    # Past the capacity (8) the sketches evict: the same evictions, in the same order.
    for seed in range(20):
        flows = _flows(seed, 120, sources, destinations)
        accum = _waiting(flows, 8)
        expected_sources, expected_destinations = _added(flows, 8)
        # either sketch read first settles both
        first = accum.destinations if seed % 2 else accum.sources
        assert accum.talkers is None and first.counts
        assert list(accum.sources.counts.items()) == list(expected_sources.counts.items())
        assert list(accum.destinations.counts.items()) == list(expected_destinations.counts.items())
        # later adds evict as from the sketches adding flow by flow made
        for sketch, expected in (
            (accum.sources, expected_sources),
            (accum.destinations, expected_destinations),
        ):
            for index in range(30):
                sketch.add(f"192.0.2.{index}", index + 1)
                expected.add(f"192.0.2.{index}", index + 1)
            assert list(sketch.counts.items()) == list(expected.counts.items())


@pytest.mark.parametrize(("sources", "destinations"), [(3, 5), (12, 6), (40, 6), (5, 60)])
def test_the_heaviest_talkers_are_the_sketches_heaviest(sources: int, destinations: int) -> None:
    for seed in range(20):
        flows = _flows(seed, 60, sources, destinations)
        accum = _waiting(flows, 16)
        expected_sources, expected_destinations = _added(flows, 16)
        for n in (2, 4, 16):
            assert heaviest(accum, n) == (
                heaviest_items(expected_sources.counts, n),
                heaviest_items(expected_destinations.counts, n),
            )
        # the talkers still wait for whoever reads the sketches themselves
        assert list(accum.sources.counts.items()) == list(expected_sources.counts.items())
        assert heaviest(accum, 4) == (
            heaviest_items(expected_sources.counts, 4),
            heaviest_items(expected_destinations.counts, 4),
        )


@pytest.mark.parametrize(
    ("count", "sources", "destinations"), [(1, 1, 1), (3, 2, 2), (60, 3, 5), (60, 5, 60)]
)
def test_destinations_at_least_are_the_sketchs_and_leave_the_talkers_waiting(
    count: int, sources: int, destinations: int
) -> None:
    for seed in range(20):
        flows = _flows(seed, count, sources, destinations)
        _expected_sources, expected = _added(flows, 16)
        for least in (0, 5_000, 20_000):
            want = [(item, size) for item, size in expected.counts.items() if size >= least]
            accum = _waiting(flows, 16)
            assert destinations_at_least(accum, least) == want
            # the sketches are made only when read, as ever (read here: the same answer)
            assert list(accum.destinations.counts.items()) == list(expected.counts.items())
            assert destinations_at_least(accum, least) == want


@pytest.mark.parametrize(("count", "sources", "destinations"), [(1, 1, 1), (4, 2, 3), (60, 40, 6)])
def test_add_heaviest_adds_the_heaviest_talkers_in_order(
    count: int, sources: int, destinations: int
) -> None:
    for seed in range(20):
        flows = _flows(seed, count, sources, destinations)
        # into evidence already full: the same evictions as adding each pair
        taken = (TopK(4), TopK(4))
        added = (TopK(4), TopK(4))
        for sketch in (*taken, *added):
            for index in range(4):
                sketch.add(f"192.0.2.{index}", 3_000 + index)
        accum = _waiting(flows, 16)
        add_heaviest(accum, 4, *taken)
        for sketch, pairs in zip(added, heaviest(_waiting(flows, 16), 4), strict=True):
            for item, weight in pairs:
                sketch.add(item, weight)
        assert [list(s.counts.items()) for s in taken] == [list(s.counts.items()) for s in added]
        if sources <= 16 and destinations <= 16:  # (more: the sketches were made to evict)
            assert accum.talkers is not None  # still waiting for whoever reads the sketches


def test_one_flows_heaviest_talkers_are_its_own() -> None:
    flows = _flows(7, 1, 1, 1)
    accum = _waiting(flows, 16)
    expected_sources, expected_destinations = _added(flows, 16)
    assert heaviest(accum, 4) == (
        list(expected_sources.counts.items()),
        list(expected_destinations.counts.items()),
    )
    assert accum.talkers is not None  # still waiting for whoever reads the sketches


def test_heaviest_items_ties_keep_insertion_order() -> None:
    counts = {"a": 5, "b": 9, "c": 5, "d": 9, "e": 1}
    assert heaviest_items(counts, 3) == [("b", 9), ("d", 9), ("a", 5)]
    assert heaviest_items(counts, 5) == list(counts.items())  # all: as they are


def test_interval_sums_and_their_sketches_are_left_out_of_garbage_collections() -> None:
    """At 100,000 keys an interval, every full collection walked each key's accumulator and
    its two sketches (they make no cycles): the collector never tracks them."""
    agg = _agg()
    for i in range(40):  # past the sketches' 32 entries: their eviction heaps are built
        agg.add(CN, T0 + 10, f"10.20.0.{i}", f"47.100.23.{i}", 1000 + i, 2)
    accum = agg.buckets[T0][CN]
    assert accum.sources._heap is not None
    for thing in (accum, accum.sources, accum.destinations):
        assert not gc.is_tracked(thing), thing
    gc.collect()
    assert agg.buckets[T0][CN] is accum
    assert (accum.bytes, accum.packets, accum.flows) == (40 * 1000 + sum(range(40)), 80, 40)
    restored = Accum.from_row(accum.to_row(), 32)
    assert not gc.is_tracked(restored)
    assert not gc.is_tracked(restored.sources)
    assert restored.to_row() == accum.to_row()
