"""Garbage-collector settings for a long run of the engine.

The engine keeps many small long-lived objects (configuration, labeler tables, baselines,
detector windows) and allocates many short-lived ones per record. CPython's generational
collector, at its default generation-0 threshold of 700 allocations, runs hundreds of times
in a replay and rescans the long-lived ones each time it reaches the older generations.
Freezing what exists once the engine is built keeps those objects out of every scan, and a
larger generation-0 threshold makes collections rarer; reference counting frees almost all
garbage anyway (the collector only matters for cycles, which the engine does not make per
record). Settings are restored when the block ends, so a caller embedding the replay keeps
its own.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

#: generation-0 threshold while the engine runs (CPython's default: 700)
GEN0_THRESHOLD = 50_000


def settle_long_lived(*, rescan: bool = True) -> int:
    """Collect once over everything, then keep what is left out of every later collection.

    For a daemon once it is built and its state restored, and again after a reload: the
    imported code, configuration, labeler tables and restored state are ~50,000 objects
    that live as long as the process, and each full collection would scan them again
    (30-65 ms of a stopped event loop, docs/security.md). Unfreezing first lets the
    collection free what a reload replaced, so a cycle in it is not kept forever.
    Collections also run less often (:data:`GEN0_THRESHOLD`). Returns how many objects
    are frozen.

    ``rescan=False`` collects and freezes only what was made since the last freeze: for new
    tables that replace acyclic ones (a geo reload's maps and readers, which reference
    counting frees when swapped out), so the event loop does not stop to scan the whole
    frozen heap again (a full scan is proportional to everything the process holds).
    """
    if rescan:
        gc.unfreeze()
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(GEN0_THRESHOLD, gc.get_threshold()[0]), gen1, gen2)
    return gc.get_freeze_count()


@contextmanager
def engine_gc() -> Iterator[None]:
    """Freeze the objects that exist now and collect less often until the block ends."""
    previous = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(GEN0_THRESHOLD, previous[1], previous[2])
    try:
        yield
    finally:
        gc.set_threshold(*previous)
        gc.unfreeze()
