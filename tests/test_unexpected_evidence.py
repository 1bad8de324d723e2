"""The unexpected-destination windows' evidence, built incrementally between expiries."""

from __future__ import annotations

import random

from egressd.detect.unexpected import UnexpectedDestinationDetector, _Window
from egressd.sketch import TopK


def _sketch(rng: random.Random, names: str) -> TopK:
    sketch = TopK(32)
    for _ in range(rng.randrange(1, 60)):
        sketch.add(f"{names}{rng.randrange(120)}", rng.randrange(1, 10_000))
    return sketch


def _fresh(window: _Window) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """What evidence() holds when built from nothing (the definition it must keep)."""
    sources, destinations = TopK(64), TopK(64)
    sources.merge(window.sources)
    destinations.merge(window.destinations)
    for entry in window.spans[0].entries:
        if entry[4] is not None:
            sources.merge(entry[4])
            destinations.merge(entry[5])
    return list(sources.counts.items()), list(destinations.counts.items())


def test_evidence_kept_between_looks_equals_building_it_afresh() -> None:
    rng = random.Random(11)
    window = _Window(2)
    lengths = [3600.0, 86400.0]
    for step in range(60):
        start = step * 300.0
        size = rng.randrange(1, 10**8)
        entry = (start, size, 0, 0)
        if step % 7 == 3:  # an interval that sent nothing carries no sketches
            window.spans[0].add((*entry, None, None))
        else:
            window.spans[0].add((*entry, _sketch(rng, "s"), _sketch(rng, "d")))
        window.spans[1].add(entry)
        now = start + 300.0
        # entries leave the first span, their heaviest talkers joining the long-term evidence
        UnexpectedDestinationDetector._expire(window, [now - length for length in lengths], 0)
        if step % 2 or step % 5 == 0:
            sources, destinations = window.evidence()
            assert (list(sources.counts.items()), list(destinations.counts.items())) == _fresh(
                window
            )
    assert window.sources.counts  # the long-term evidence took part


def test_a_snapshot_reads_evidence_without_keeping_it() -> None:
    rng = random.Random(4)
    window = _Window(1)
    for step in range(5):
        window.spans[0].add((step * 300.0, 1000, 0, 0, _sketch(rng, "s"), _sketch(rng, "d")))
    sources, destinations = window.evidence(keep=False)
    assert (list(sources.counts.items()), list(destinations.counts.items())) == _fresh(window)
    again, _ = window.evidence(keep=False)
    assert again is not sources  # built anew: nothing kept for the next reader
    kept, _ = window.evidence()
    assert window.evidence()[0] is kept
