"""Event-time aggregation: interval buckets, the watermark that closes them, and late records
(counted, never merged into a closed interval)."""

from __future__ import annotations

from egressd.aggregate import IntervalAggregator
from egressd.enrich import DestinationLabels

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
