"""Bounded heavy-hitter tracking (Space-Saving) for alert evidence: top sources and destinations.

Memory is fixed by ``capacity``; counts of the top items are exact unless they were evicted,
in which case they are over-estimates by at most the evicted minimum (the Space-Saving bound).
"""

from __future__ import annotations


class TopK:
    """Space-Saving summary of the heaviest keys by summed weight."""

    __slots__ = ("capacity", "counts")

    def __init__(self, capacity: int = 32) -> None:
        self.capacity = capacity
        self.counts: dict[str, int] = {}

    def add(self, item: str, weight: int) -> None:
        counts = self.counts
        current = counts.get(item)
        if current is not None:
            counts[item] = current + weight
        elif len(counts) < self.capacity:
            counts[item] = weight
        else:
            # Replace the lightest entry and inherit its count (keeps the error bound).
            victim = min(counts, key=counts.__getitem__)
            floor = counts.pop(victim)
            counts[item] = floor + weight

    def merge(self, other: TopK) -> None:
        for item, weight in other.counts.items():
            self.add(item, weight)

    def top(self, n: int) -> list[tuple[str, int]]:
        return sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

    def to_json(self) -> dict[str, int]:
        return dict(self.counts)

    @classmethod
    def from_json(cls, data: dict[str, int], capacity: int = 32) -> TopK:
        sketch = cls(capacity)
        for item, weight in sorted(data.items(), key=lambda kv: -kv[1])[:capacity]:
            sketch.counts[str(item)] = int(weight)
        return sketch
