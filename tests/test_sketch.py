"""The Space-Saving heavy-hitter sketch behind alert evidence (top sources and destinations)."""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from egressd.sketch import TopK


def test_exact_while_under_capacity() -> None:
    sketch = TopK(8)
    for item, weight in [("a", 5), ("b", 7), ("a", 3), ("c", 1)]:
        sketch.add(item, weight)
    assert sketch.top(2) == [("a", 8), ("b", 7)]
    assert sketch.top(10) == [("a", 8), ("b", 7), ("c", 1)]


def test_ties_break_by_name() -> None:
    sketch = TopK(4)
    sketch.add("b", 1)
    sketch.add("a", 1)
    assert sketch.top(2) == [("a", 1), ("b", 1)]


def test_heavy_hitter_survives_many_small_items() -> None:
    rng = random.Random(3)
    sketch = TopK(16)
    truth: Counter[str] = Counter()
    for i in range(20_000):
        item = "10.20.0.17" if i % 10 == 0 else f"10.30.{rng.randrange(256)}.{rng.randrange(256)}"
        weight = 1_000_000 if item == "10.20.0.17" else rng.randrange(1, 2000)
        sketch.add(item, weight)
        truth[item] += weight
    top_item, estimate = sketch.top(1)[0]
    assert top_item == "10.20.0.17"
    assert estimate >= truth["10.20.0.17"]
    assert len(sketch.counts) == 16


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 40), st.integers(1, 1000)), max_size=300),
    st.integers(1, 12),
)
def test_space_saving_guarantees(stream: list[tuple[int, int]], capacity: int) -> None:
    sketch = TopK(capacity)
    truth: Counter[str] = Counter()
    for item, weight in stream:
        sketch.add(str(item), weight)
        truth[str(item)] += weight
    total = sum(truth.values())
    assert len(sketch.counts) <= capacity
    # Kept counts never under-estimate and over-estimate by at most total / capacity.
    for item, count in sketch.counts.items():
        assert truth[item] <= count <= truth[item] + total / capacity
    # Anything heavier than total / capacity is kept.
    for item, count in truth.items():
        if count > total / capacity:
            assert item in sketch.counts
    assert sum(sketch.counts.values()) == total


def test_merge_and_json_round_trip() -> None:
    a, b = TopK(4), TopK(4)
    a.add("x", 10)
    a.add("y", 5)
    b.add("x", 1)
    b.add("z", 7)
    a.merge(b)
    assert a.top(3) == [("x", 11), ("z", 7), ("y", 5)]
    again = TopK.from_json(a.to_json(), 2)
    assert again.top(5) == [("x", 11), ("z", 7)]
    assert again.capacity == 2


def _reference_space_saving(stream: list[tuple[str, int]], capacity: int) -> dict[str, int]:
    """Textbook Space-Saving: scan for the lightest entry (ties: the smallest item)."""
    counts: dict[str, int] = {}
    for item, weight in stream:
        if item in counts:
            counts[item] += weight
        elif len(counts) < capacity:
            counts[item] = weight
        else:
            victim = min(counts, key=lambda key: (counts[key], key))
            counts[item] = counts.pop(victim) + weight
    return counts


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 60), st.integers(1, 50)), max_size=400),
    st.integers(1, 10),
)
def test_heap_eviction_matches_a_full_scan(stream: list[tuple[int, int]], capacity: int) -> None:
    # Increments leave the eviction heap stale; evictions must still pick the true lightest.
    named = [(f"10.0.0.{item}", weight) for item, weight in stream]
    sketch = TopK(capacity)
    for item, weight in named:
        sketch.add(item, weight)
    assert sketch.counts == _reference_space_saving(named, capacity)


def test_merge_into_a_full_sketch_keeps_the_bound() -> None:
    a, b = TopK(4), TopK(4)
    for i in range(40):
        a.add(f"a{i}", i + 1)
        b.add(f"b{i}", 2 * i + 1)
    a.merge(b)
    assert len(a.counts) == 4
    assert sum(a.counts.values()) == sum(range(1, 41)) + sum(2 * i + 1 for i in range(40))
    assert a.top(1)[0][0] == "b39"


def test_capped_counts_still_evict_the_lightest() -> None:
    sketch = TopK(3)
    for item, weight in [("x", 1000), ("y", 2000), ("z", 149), ("w", 1)]:
        sketch.add(item, weight)  # full: w replaced z and the eviction heap exists
    assert sketch.counts == {"x": 1000, "y": 2000, "w": 150}
    sketch.cap(200)
    assert sketch.counts == {"x": 200, "y": 200, "w": 150}
    sketch.add("w", 60)  # w: 210, its heap entry says 150
    # The lightest is now x (ties: by name), not w, which the heap had as its minimum.
    sketch.add("v", 1)
    assert sketch.counts == {"y": 200, "w": 210, "v": 201}


def _summed(stream: list[tuple[str, int]]) -> tuple[list[str], list[int]]:
    """A batch summed per item, items in the order they first came."""
    sums: dict[str, int] = {}
    for item, weight in stream:
        sums[item] = sums.get(item, 0) + weight
    return list(sums), list(sums.values())


@settings(max_examples=200)
@given(
    kept=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 1000)), max_size=12),
    batch=st.lists(st.tuples(st.integers(0, 20), st.integers(0, 1000)), max_size=40),
)
def test_a_summed_batch_that_fits_equals_adding_flow_by_flow(
    kept: list[tuple[int, int]], batch: list[tuple[int, int]]
) -> None:
    capacity = 24
    one_by_one, summed = TopK(capacity), TopK(capacity)
    for item, weight in kept:
        one_by_one.add(f"k{item}", weight)
        summed.add(f"k{item}", weight)
    stream = [(f"b{item}", weight) for item, weight in batch]
    items, weights = _summed(stream)
    fits = len(one_by_one.counts) + len(items) <= capacity
    for item, weight in stream:
        one_by_one.add(item, weight)
    summed.add_summed(items, weights)
    if fits:
        assert summed.counts == one_by_one.counts
        assert list(summed.counts) == list(one_by_one.counts)
    assert sum(summed.counts.values()) == sum(one_by_one.counts.values())


@settings(max_examples=200)
@given(
    batch=st.lists(st.tuples(st.integers(0, 200), st.integers(1, 10_000)), min_size=1),
    capacity=st.integers(2, 16),
)
def test_a_summed_batch_with_a_rest_keeps_the_totals_and_never_under_counts(
    batch: list[tuple[int, int]], capacity: int
) -> None:
    truth = Counter[str]()
    for item, weight in batch:
        truth[f"a{item}"] += weight
    items, weights = _summed([(f"a{item}", weight) for item, weight in batch])
    by_weight = sorted(range(len(items)), key=lambda i: -weights[i])
    heaviest = sorted(by_weight[:capacity])
    rest = by_weight[capacity:]
    sketch = TopK(capacity)
    sketch.add_summed(
        [items[i] for i in heaviest],
        [weights[i] for i in heaviest],
        items[rest[0]] if rest else None,
        sum(weights[i] for i in rest),
    )
    assert sum(sketch.counts.values()) == sum(truth.values())
    assert len(sketch.counts) <= capacity
    for item, count in sketch.counts.items():
        assert count >= truth[item]
    # The heaviest item of the batch (or one as heavy) is always named.
    assert any(truth[item] == weights[by_weight[0]] for item in sketch.counts)
    # Items other than the one charged with the rest are over-counted by at most the minimum.
    charged = items[rest[0]] if rest else None
    floor = min(sketch.counts.values())
    for item, count in sketch.counts.items():
        if item != charged:
            assert count - truth[item] <= floor


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.tuples(st.integers(0, 40), st.integers(1, 1000)), max_size=30),
        max_size=8,
    ),
    st.integers(1, 24),
)
def test_merge_equals_adding_each_item_in_order(
    batches: list[list[tuple[int, int]]], capacity: int
) -> None:
    """merge (with its fast path while both fit) is exactly add of each item, heap and all:
    the same counts in the same order, and the same evictions afterwards."""
    merged, added = TopK(capacity), TopK(capacity)
    for batch in batches:
        other = TopK(16)
        for item, weight in batch:
            other.add(f"h{item}", weight)
        merged.merge(other)
        for item, weight in other.counts.items():
            added.add(item, weight)
        assert list(merged.counts.items()) == list(added.counts.items())
    for index in range(capacity + 2):  # later evictions agree too
        merged.add(f"new{index}", 1)
        added.add(f"new{index}", 1)
    assert list(merged.counts.items()) == list(added.counts.items())


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.dictionaries(st.integers(0, 40), st.integers(1, 1000), max_size=6), max_size=12),
    st.integers(1, 24),
)
def test_add_distinct_equals_adding_each_pair_in_order(
    batches: list[dict[int, int]], capacity: int
) -> None:
    """A window's evidence takes each interval's few heaviest talkers (distinct items)."""
    taken, added = TopK(capacity), TopK(capacity)
    for batch in batches:
        pairs = [(f"h{item}", weight) for item, weight in batch.items()]
        taken.add_distinct(pairs)
        for item, weight in pairs:
            added.add(item, weight)
        assert list(taken.counts.items()) == list(added.counts.items())
    for index in range(capacity + 2):  # later evictions agree too
        taken.add(f"new{index}", 1)
        added.add(f"new{index}", 1)
    assert list(taken.counts.items()) == list(added.counts.items())


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(st.text("abc", max_size=3), st.integers(0, 4), max_size=40),
    st.integers(-3, 45),
)
def test_top_is_the_heaviest_first_ties_by_item(counts: dict[str, int], n: int) -> None:
    # (small weights: many ties at the n-th place, where the top n is cut)
    sketch = TopK(64)
    sketch.counts.update(counts)
    assert sketch.top(n) == sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]
