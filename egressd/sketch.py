"""Bounded heavy-hitter tracking (Space-Saving) for alert evidence: top sources and destinations.

Memory is fixed by ``capacity``; counts of the top items are exact unless they were evicted,
in which case they are over-estimates by at most the evicted minimum (the Space-Saving bound).

The engine's batch path adds a batch's weights already summed per item
(:meth:`TopK.add_summed`): while the sketch and the batch's distinct items fit ``capacity``
that equals adding flow by flow exactly; past it, the batch's heaviest ``capacity`` items go
in as Space-Saving updates and the rest of its weight as one more update (named after the
heaviest of the rest), so the counts still sum to the total weight and never under-estimate
an item they name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from heapq import heapify, heappush, heapreplace, nlargest

import msgspec


def _heaviest_first(pair: tuple[str, int]) -> tuple[int, str]:
    return -pair[1], pair[0]


class TopK(msgspec.Struct, gc=False, eq=False):
    """Space-Saving summary of the heaviest keys by summed weight, O(log capacity) per update.

    ``counts`` holds the estimates. Once it is full, ``_heap`` holds one ``(count, item)``
    entry per kept item whose count may be stale (lower than the item's count now: counts only
    grow and increments do not touch the heap). Evicting pops the smallest entry and, when it
    is stale, pushes it back with its current count and looks again; every increment causes
    at most one such repair, so an update costs O(log capacity) amortised instead of a scan
    of every entry (which made every flow with a new address pay ~15-30 µs at capacity 32).

    A struct the cyclic garbage collector never tracks (``gc=False``: it holds a dict of
    texts to numbers and a list of (number, text) pairs, nothing that leads back to it);
    each key's accumulator has two, and the detectors' windows keep more.
    """

    capacity: int = 32
    counts: dict[str, int] = {}
    #: built when ``counts`` first overflows; None while the summary is exact
    _heap: list[tuple[int, str]] | None = None

    def add(self, item: str, weight: int) -> None:
        counts = self.counts
        current = counts.get(item)
        if current is not None:
            counts[item] = current + weight
            return
        heap = self._heap
        if len(counts) < self.capacity:
            counts[item] = weight
            if heap is not None:
                heappush(heap, (weight, item))
            return
        # Full: evict the lightest item; ``item`` inherits its count (keeps the error bound).
        if heap is None:
            heap = self._heap = [(count, key) for key, count in counts.items()]
            heapify(heap)
        floor, victim = heap[0]
        current = counts[victim]
        while current != floor:  # a stale entry: put it back with its count, look again
            heapreplace(heap, (current, victim))
            floor, victim = heap[0]
            current = counts[victim]
        del counts[victim]
        floor += weight
        counts[item] = floor
        heapreplace(heap, (floor, item))

    def add_summed(
        self,
        items: Sequence[str],
        weights: Sequence[int],
        rest: str | None = None,
        rest_weight: int = 0,
    ) -> None:
        """Add one batch, its weights summed per item.

        ``items`` are distinct, in the order they first came in the batch, with their summed
        ``weights``. A batch with more distinct items than are worth keeping passes its
        heaviest ``capacity`` as ``items`` and the rest as ``rest`` (the heaviest of them)
        carrying ``rest_weight``, all the others' weight: one update for them all, instead of
        one eviction per light item (scans bring a new address per flow).

        Guarantees: when ``rest`` is None and the kept items plus the new ones fit
        ``capacity``, the sketch equals adding the batch's flows one by one, in order. Always:
        the counts sum to the total weight added and no count is below its item's true
        weight (``items`` go in as ordinary Space-Saving updates, keeping its error bound);
        only the one count charged with the rest may exceed its item's true weight by more
        than the minimum (by at most the minimum plus ``rest_weight``).
        """
        counts = self.counts
        if not counts and self._heap is None and len(items) <= self.capacity:
            # (the common case, an interval's first settle: :meth:`_add_all`'s first branch)
            counts.update(zip(items, weights, strict=True))
        else:
            self._add_all(zip(items, weights, strict=True), len(items))
        if rest is not None:
            self.add(rest, rest_weight)

    def _add_all(self, pairs: Iterable[tuple[str, int]], count: int) -> None:
        """``add`` of each of ``count`` (item, weight) pairs in order, the items distinct;
        while nothing can be evicted that is plain sums, with no call per item (alert
        evidence merges hundreds of sketches when an interval closes; the batch path adds
        one per key and interval), and into an empty summary the pairs themselves."""
        counts = self.counts
        if not counts and self._heap is None and count <= self.capacity:
            counts.update(pairs)  # (distinct items: the same entries, in the same order)
            return
        if self._heap is None and len(counts) + count <= self.capacity:
            get = counts.get
            for item, weight in pairs:
                counts[item] = get(item, 0) + weight
            return
        add = self.add
        get = counts.get
        for item, weight in pairs:
            current = get(item)
            if current is not None:  # (add's first case, without the call)
                counts[item] = current + weight
            else:
                add(item, weight)

    def add_distinct(self, pairs: Sequence[tuple[str, int]]) -> None:
        """``add`` of each (item, weight) pair in order, the items distinct (a few heaviest
        talkers of an interval joining a window's evidence)."""
        self._add_all(pairs, len(pairs))

    def cap(self, limit: int) -> None:
        """Lower every count above ``limit`` to it (saturated sums)."""
        counts = self.counts
        for item, weight in counts.items():
            if weight > limit:
                counts[item] = limit
        # Counts went down: the eviction heap's entries may now be too high, so rebuild it.
        self._heap = None

    def merge(self, other: TopK) -> None:
        """Add ``other``'s counts one by one, in its order (exactly ``add`` of each)."""
        self._add_all(other.counts.items(), len(other.counts))

    def top(self, n: int) -> list[tuple[str, int]]:
        """The ``n`` heaviest (item, count) pairs, heaviest first, ties by item."""
        counts = self.counts
        if not 0 < n < len(counts):
            return sorted(counts.items(), key=_heaviest_first)[:n]
        # Only items at least as heavy as the n-th heaviest count can be among the first n:
        # sorting those alone gives the same n (alert evidence reads a few of 64 each time).
        least = nlargest(n, counts.values())[-1]
        return sorted([kv for kv in counts.items() if kv[1] >= least], key=_heaviest_first)[:n]

    def copy(self) -> TopK:
        """The same summary, which later updates of this one do not change."""
        other = TopK(self.capacity)
        other.counts = self.counts.copy()
        if self._heap is not None:
            other._heap = self._heap.copy()
        return other

    def to_json(self) -> dict[str, int]:
        return dict(self.counts)

    @classmethod
    def from_json(cls, data: dict[str, int], capacity: int = 32) -> TopK:
        sketch = cls(capacity)
        for item, weight in sorted(data.items(), key=lambda kv: -kv[1])[:capacity]:
            sketch.counts[str(item)] = int(weight)
        return sketch
