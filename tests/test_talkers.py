"""The talker backlog's grouping gives the same answer whichever way it sorts the rows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressd import talkers
from egressd.columns import V4_MARK

_V4 = [
    int(V4_MARK) | value for value in (0x0A000001, 0x0A000002, 0x2F64172D, 0xC0000201, 0xFFFFFFFF)
]


@st.composite
def _backlogs(draw: st.DrawFn) -> tuple[Any, ...]:
    rows = draw(st.integers(1, 300))
    keys = draw(
        st.lists(st.integers(0, draw(st.sampled_from([0, 3, 40]))), min_size=rows, max_size=rows)
    )
    pool = draw(st.sampled_from([_V4, _V4[:1], [*_V4, 1, 2**40]]))
    lo = draw(st.lists(st.sampled_from(pool), min_size=rows, max_size=rows))
    weights = st.sampled_from([0, 1, 100, 100, 5_000, 2**40, 2**62])
    sizes = draw(st.lists(weights, min_size=rows, max_size=rows))
    huge = draw(st.booleans())  # sums past 2**64: the engine hands Python integers
    return (
        np.array(keys, dtype=np.int64),
        np.zeros(rows, dtype=np.uint64),
        np.array(lo, dtype=np.uint64),
        np.array([s * 8 for s in sizes], dtype=object) if huge else np.array(sizes, np.uint64),
        draw(st.integers(1, 4)),
    )


@settings(max_examples=300, deadline=None)
@given(backlog=_backlogs())
def test_heaviest_is_the_same_through_each_sort(backlog: tuple[Any, ...]) -> None:
    """Rows packed with their row number (a plain sort), packed without it (an argsort) and
    sorted by columns (lexsort): the same pairs, sums, kept talkers and rests."""
    answers = [talkers._heaviest(*backlog)]
    known: talkers.TextCache = {}
    for _ in range(2):  # texts made, then texts known from the settle before
        assert talkers._heaviest(*backlog, known) == answers[0]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(talkers, "_packed_with_rows", lambda *_: None)
        answers.append(talkers._heaviest(*backlog))
        patch.setattr(talkers, "_packed", lambda *_: None)
        answers.append(talkers._heaviest(*backlog))
    assert answers[0] == answers[1] == answers[2]


def test_known_texts_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The texts kept between settles are dropped when they would pass the bound, and what
    the backlog hands the sketches is the same either way."""
    monkeypatch.setattr(talkers, "KNOWN_TEXTS", 3)
    keys = np.zeros(5, dtype=np.int64)
    sizes = np.array([5, 4, 3, 2, 1], dtype=np.uint64)
    hi = np.zeros(5, dtype=np.uint64)
    known: talkers.TextCache = {}
    first = talkers._heaviest(keys, hi, np.array(_V4, dtype=np.uint64), sizes, 8, known)
    assert first == talkers._heaviest(keys, hi, np.array(_V4, dtype=np.uint64), sizes, 8)
    assert first[0][1][0] == [
        "10.0.0.1",
        "10.0.0.2",
        "47.100.23.45",
        "192.0.2.1",
        "255.255.255.255",
    ]
    assert len(known) == 5  # (at most the bound plus one settle's new addresses)
    talkers._heaviest(keys[:2], hi[:2], np.array([_V4[0], 7], dtype=np.uint64), sizes[:2], 8, known)
    assert known == {7: "::7"}  # cleared first: 5 + 1 is past the bound
