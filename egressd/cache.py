"""One bounded cache for the hot paths (addresses to text, groups, labels), with counters.

A plain dict underneath, so a hot loop binds ``cache.get`` and pays nothing extra on a hit.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """At most ``capacity`` entries; when full, the older half (by insertion) is evicted.

    Hot loops call the bound ``get`` (the dict's own method) and :meth:`store` on a miss, so
    ``misses`` counts stores; callers that know how many lookups they made add them to
    ``lookups`` in bulk (per batch, not per record), which gives ``hits``. Evicting half at
    once costs O(1) amortised per store and, unlike emptying the whole cache, keeps the
    entries most recently added (a busy exporter's hot addresses) across the eviction.
    """

    __slots__ = ("capacity", "data", "evictions", "get", "lookups", "misses")

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self.data: dict[K, V] = {}
        self.get = self.data.get
        self.lookups = 0
        self.misses = 0
        #: entries evicted to stay within capacity (not those dropped by :meth:`clear`)
        self.evictions = 0

    def __len__(self) -> int:
        return len(self.data)

    def __contains__(self, key: object) -> bool:
        return key in self.data

    def store(self, key: K, value: V) -> V:
        """Remember ``value`` for ``key`` (after a miss); returns ``value``."""
        data = self.data
        if len(data) >= self.capacity and key not in data:
            drop = max(1, len(data) // 2)
            for old in list(islice(data, drop)):
                data.pop(old, None)  # another thread sharing the cache may have evicted it
            self.evictions += drop
        data[key] = value
        self.misses += 1
        return value

    def store_many(self, keys: Sequence[K], values: Sequence[V]) -> None:
        """:meth:`store` of each pair in turn (a batch's misses), the same entries, evictions
        and counts, but in runs of one ``dict.update`` while there is room."""
        data = self.data
        capacity = self.capacity
        count = len(keys)
        done = 0
        while done < count:
            room = capacity - len(data)
            if room <= 0:  # the next store may evict: take it on its own
                self.store(keys[done], values[done])
                done += 1
                continue
            # While fewer than capacity entries are held, no store evicts anything.
            end = min(done + room, count)
            data.update(zip(keys[done:end], values[done:end], strict=True))
            self.misses += end - done
            done = end

    @property
    def hits(self) -> int:
        return max(self.lookups - self.misses, 0)

    def clear(self) -> None:
        """Forget everything (what was cached became wrong: new configuration or geo data)."""
        self.data.clear()

    def resize(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        if len(self.data) > self.capacity:
            self.data.clear()
