"""The bounded cache behind the hot paths: bound, eviction order and counters."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from egressd.cache import BoundedCache


def test_store_then_get_and_counters() -> None:
    cache: BoundedCache[str, int] = BoundedCache(4)
    get = cache.get
    assert get("a") is None
    assert cache.store("a", 1) == 1
    assert get("a") == 1  # the bound get sees stores
    cache.lookups += 2
    assert (cache.hits, cache.misses, cache.evictions) == (1, 1, 0)


def test_full_cache_evicts_its_older_half() -> None:
    cache: BoundedCache[int, int] = BoundedCache(4)
    for key in range(4):
        cache.store(key, key)
    cache.store(4, 4)
    assert sorted(cache.data) == [2, 3, 4]
    assert cache.evictions == 2
    # Storing a key again never evicts.
    cache.store(4, 40)
    assert cache.evictions == 2 and cache.get(4) == 40


def test_clear_and_resize_keep_the_bound_get_working() -> None:
    cache: BoundedCache[int, int] = BoundedCache(10)
    get = cache.get
    for key in range(8):
        cache.store(key, key)
    cache.resize(4)
    assert len(cache) == 0 and cache.capacity == 4
    cache.store(1, 2)
    assert get(1) == 2
    cache.clear()
    assert get(1) is None and cache.evictions == 0


@given(st.lists(st.integers(0, 50), max_size=300), st.integers(1, 16))
def test_never_exceeds_capacity_and_keeps_the_newest(keys: list[int], capacity: int) -> None:
    cache: BoundedCache[int, int] = BoundedCache(capacity)
    for key in keys:
        if cache.get(key) is None:
            cache.store(key, key)
        assert len(cache) <= capacity
    if keys:
        assert cache.get(keys[-1]) == keys[-1]
    assert cache.misses - cache.evictions == len(cache)


@given(
    st.lists(st.lists(st.integers(0, 60), max_size=40), max_size=8),
    st.integers(1, 16),
)
def test_storing_many_is_storing_each_in_turn(batches: list[list[int]], capacity: int) -> None:
    """store_many keeps, evicts and counts exactly as one store per pair would, repeated and
    already cached keys included."""
    one: BoundedCache[int, int] = BoundedCache(capacity)
    many: BoundedCache[int, int] = BoundedCache(capacity)
    for n, keys in enumerate(batches):
        for key in keys:
            one.store(key, key + n)
        many.store_many(keys, [key + n for key in keys])
        assert list(many.data.items()) == list(one.data.items())
        assert (many.misses, many.evictions) == (one.misses, one.evictions)
