"""Seasonal baselines: hour-of-day and weekday/weekend seasonality, robustness to outliers,
organic growth, weekend fallback, bounded keys with eviction, and the state round trip."""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Callable

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressd.baseline.seasonal import (
    CLIP,
    MIN_SPREAD,
    OVERALL_ALPHA,
    PEAK_HALF_LIFE,
    RECORD_SIZE,
    SLOT_ALPHA,
    SLOTS,
    SeasonalBaselines,
    SeasonKeyer,
    stored_keys,
)

T0 = 1_772_409_600.0  # Monday 2026-03-02T00:00:00Z
DAY = 86400.0
STEP = 300.0
KEY = ("research", "US")


def weekday_level(hour: float) -> float:
    return 50e6 if 9 <= hour < 18 else 5e6


def feed(
    baselines: SeasonalBaselines,
    days: int,
    volume: Callable[[float], float] | None = None,
    start: float = T0,
) -> None:
    """One observation of ``KEY`` per interval for ``days`` days from ``start``."""
    volume = volume or (lambda t: weekday_level(((t - start) % DAY) / 3600))
    t = start
    while t < start + days * DAY:
        baselines.observe(KEY, t, volume(t))
        t += STEP


def test_hour_of_day_seasonality() -> None:
    b = SeasonalBaselines()
    feed(b, 3)
    noon = b.expect(KEY, T0 + 3 * DAY + 13 * 3600)
    night = b.expect(KEY, T0 + 3 * DAY + 3 * 3600)
    assert noon is not None and night is not None
    assert noon.basis == night.basis == "slot"
    assert math.isclose(noon.bytes, 50e6, rel_tol=0.05)
    assert math.isclose(night.bytes, 5e6, rel_tol=0.05)
    assert noon.observations == 3 * 288
    assert noon.first_seen == T0
    assert b.expect(("research", "CN"), T0) is None


def test_one_outlier_barely_moves_the_baseline() -> None:
    b = SeasonalBaselines()
    feed(b, 3)
    at = T0 + 3 * DAY + 13 * 3600
    before = b.expect(KEY, at)
    b.observe(KEY, at, 50e9)  # a thousand times the usual
    after = b.expect(KEY, at + STEP)
    assert before is not None and after is not None
    assert after.bytes < before.bytes * 1.5


def test_organic_growth_is_tracked() -> None:
    b = SeasonalBaselines()
    feed(b, 21, volume=lambda t: 40e6 * 1.03 ** ((t - T0) / DAY))
    expectation = b.expect(KEY, T0 + 21 * DAY + 12 * 3600)
    assert expectation is not None
    current = 40e6 * 1.03**21
    assert math.isclose(expectation.bytes, current, rel_tol=0.1)


def test_first_weekend_falls_back_to_weekday_history() -> None:
    b = SeasonalBaselines()
    feed(b, 5)  # Monday to Friday
    saturday_noon = T0 + 5 * DAY + 12 * 3600
    expectation = b.expect(KEY, saturday_noon)
    assert expectation is not None
    assert expectation.basis == "either-day-type"
    assert math.isclose(expectation.bytes, 50e6, rel_tol=0.05)
    # A whole weekend day of quieter traffic later, the weekend speaks for itself.
    feed(b, 1, volume=lambda t: 2e6, start=T0 + 5 * DAY)
    sunday_noon = T0 + 6 * DAY + 12 * 3600
    expectation = b.expect(KEY, sunday_noon)
    assert expectation is not None
    assert expectation.basis == "slot"
    assert math.isclose(expectation.bytes, 2e6, rel_tol=0.05)


def test_nightly_job_starting_late_on_first_weekend_is_still_usual() -> None:
    # 01:00-03:00 backup on weekdays; on the first Saturday it starts at 01:05. Ten minutes
    # in, the weekend's own 01:00 hour has only quiet observations; the weekday job's
    # history must still count.
    def backup(t: float) -> float:
        hour = ((t - T0) % DAY) / 3600
        return 2e9 if 1 <= hour < 3 else 5e6

    b = SeasonalBaselines()
    feed(b, 5, volume=backup)
    saturday = T0 + 5 * DAY
    b.observe(KEY, saturday + 3600, 5e6)  # 01:00, before the job
    b.observe(KEY, saturday + 3600 + STEP, 1e9)  # 01:05, the job starts
    expectation = b.expect(KEY, saturday + 3600 + 2 * STEP)
    assert expectation is not None
    assert expectation.bytes > 1e9


def test_cap_evicts_least_recently_seen_and_counts() -> None:
    b = SeasonalBaselines(max_keys=10)
    for i in range(10):
        b.observe(("g", f"C{i}"), T0 + i, 1000)
    b.observe(("g", "C0"), T0 + 100, 1000)  # C0 recently seen again
    b.observe(("g", "NEW"), T0 + 200, 1000)
    assert len(b) <= 10
    assert b.evicted_capacity >= 1
    assert ("g", "NEW") in b and ("g", "C0") in b
    assert ("g", "C1") not in b  # the least recently seen went first


def test_idle_keys_are_evicted_and_counted() -> None:
    b = SeasonalBaselines()
    b.observe(("g", "OLD"), T0, 1000)
    b.observe(("g", "NEW"), T0 + 30 * DAY, 1000)
    assert b.evict_idle(T0 + 31 * DAY, idle_timeout=7 * DAY) == 1
    assert list(b.keys()) == [("g", "NEW")]
    assert b.evicted_idle == 1


def test_json_round_trip_and_record_size() -> None:
    b = SeasonalBaselines()
    feed(b, 2)
    b.observe(("office", "US|aws/us-east-1|16509"), T0, 123)
    again = SeasonalBaselines()
    again.load_json(b.to_json())
    assert set(again.keys()) == set(b.keys())
    for key in b:
        record = b.record(key)
        assert record is not None and again.record(key) == record
        assert len(record) == RECORD_SIZE
    at = T0 + 2 * DAY + 13 * 3600
    assert again.expect(KEY, at) == b.expect(KEY, at)
    assert RECORD_SIZE <= 512
    summary = again.summary(KEY)
    assert summary is not None
    hourly = summary["weekday_hourly_bytes"]
    assert isinstance(hourly, list)
    assert math.isclose(hourly[13], 50e6, rel_tol=0.05)


def test_malformed_state_is_rejected() -> None:
    b = SeasonalBaselines()
    for bad in ({"no-tab": "AAAA"}, {"g\tUS": "AAAA"}, {"g\tUS": "not base64!"}):
        try:
            b.load_json(bad)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad}")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.integers(0, 24 * 14 - 1), st.integers(0, 10**9)),
        max_size=300,
    ),
    st.integers(0, 24 * 14 - 1),
)
def test_expected_bytes_at_once_equals_expect_one_by_one(
    observations: list[tuple[int, int, int]], hour: int
) -> None:
    # Keys with history in some hours of either day type, others not: every branch of expect.
    baselines = SeasonalBaselines()
    monday = 1_772_409_600.0  # 2026-03-02T00:00:00Z
    for key, at, size in sorted(observations, key=lambda o: o[1]):
        baselines.observe(("g", f"K{key}"), monday + at * 3600, float(size))
    keys = [("g", f"K{key}") for key in range(5)]  # K4 is never seen
    now = monday + hour * 3600 + 600
    at_once = baselines.expected_bytes(keys, now)
    for key, value in zip(keys, at_once, strict=True):
        expectation = baselines.expect(key, now)
        if expectation is None:
            assert math.isnan(value)
        else:
            assert math.isclose(value, expectation.bytes, rel_tol=1e-9, abs_tol=1e-9)


def test_changed_slots_are_tracked_once_asked_for() -> None:
    baselines = SeasonalBaselines(max_keys=10)
    baselines.observe(("g", "A"), 0.0, 10.0)
    baselines.observe(("g", "C"), 0.0, 10.0)
    changed = baselines.track_changes()
    assert changed == set()
    baselines.observe_interval(300.0, [(("g", "B"), 5.0), (("g", "A"), 1.0)])
    a, b, c = baselines.slots_of([("g", "A"), ("g", "B"), ("g", "C")])
    assert a is not None and b is not None and c is not None
    assert changed == {a, b}  # C learned nothing
    changed.clear()
    assert baselines.evict_idle(10_000.0, 60.0) == 3
    assert changed == {a, b, c}
    changed.clear()
    baselines.observe(("g", "D"), 20_000.0, 1.0)  # a forgotten key's slot, reused
    (d,) = baselines.slots_of([("g", "D")])
    assert d in (a, b, c) and changed == {d}


def _reference_update(
    level: float, spread: float, n: int, x: float, alpha: float
) -> tuple[float, float]:
    """The update rule, plainly: clip to level ± CLIP x spread, move by max(1/(n+1), alpha)."""
    if n == 0:
        return x, MIN_SPREAD
    bound = CLIP * max(spread, MIN_SPREAD)
    clipped = min(max(x, level - bound), level + bound)
    rate = max(1.0 / (n + 1), alpha)
    error = clipped - level
    return level + rate * error, spread + rate * (abs(error) - spread)


def _reference_observe(record: bytearray, slot: int, event_time: float, byte_count: float) -> None:
    """One observation written into a record the way the module documents its layout."""
    header, cell, peak_at = struct.Struct("<ddffI"), struct.Struct("<eeB"), struct.Struct("<ff")
    first, last, level, spread, n = header.unpack_from(record, 0)
    x = math.log2(1.0 + byte_count) if byte_count > 0 else 0.0
    level, spread = _reference_update(level, spread, n, x, OVERALL_ALPHA)
    header.pack_into(record, 0, min(first, event_time), max(last, event_time), level, spread, n + 1)
    offset = header.size + slot * cell.size
    s_level, s_spread, s_n = cell.unpack_from(record, offset)
    s_level, s_spread = _reference_update(s_level, s_spread, s_n, x, SLOT_ALPHA)
    cell.pack_into(record, offset, s_level, min(s_spread, 60000.0), min(s_n + 1, 255))
    peak_offset = header.size + SLOTS * cell.size
    peak, raised = peak_at.unpack_from(record, peak_offset)
    if x >= peak - (event_time - raised) / PEAK_HALF_LIFE:
        peak_at.pack_into(record, peak_offset, x, event_time)


@settings(max_examples=80, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.integers(0, 7),
                st.one_of(
                    st.integers(-10, 10**12),
                    st.floats(-1.0, 1e15, allow_nan=False),
                    st.sampled_from([0, 1, 2**63, 10**18]),
                ),
            ),
            max_size=12,
            unique_by=lambda item: item[0],
        ),
        max_size=60,
    ),
    st.lists(st.sampled_from([0.0, 300.0, 300.0, 3600.0, -300.0, 9 * 3600.0]), min_size=60),
)
def test_interval_updates_are_the_plain_update_rule_bit_for_bit(
    intervals: list[list[tuple[int, float]]], steps: list[float]
) -> None:
    # observe_interval writes the updates out inline for speed: every stored bit must be what
    # the rule applied key by key gives (state files and alerts depend on it).
    baselines = SeasonalBaselines()
    season = SeasonKeyer()
    expected: dict[tuple[str, str], bytearray] = {}
    at = T0
    for items, step in zip(intervals, steps, strict=False):
        at += step
        batch = [((f"g{k % 3}", f"K{k}"), size) for k, size in items]
        baselines.observe_interval(at, batch)
        for key, size in batch:
            record = expected.get(key)
            if record is None:
                record = expected[key] = bytearray(RECORD_SIZE)
                struct.pack_into("<ddffI", record, 0, at, at, 0.0, MIN_SPREAD, 0)
            _reference_observe(record, season.slot(at), at, size)
    assert {key: baselines.record(key) for key in expected} == {
        key: bytes(record) for key, record in expected.items()
    }


def _per_key_form(baselines: SeasonalBaselines) -> dict[str, str]:
    """The baselines as state files before the compact form held them (version 1)."""
    return {
        f"{group}\t{dest}": base64.b64encode(baselines.record((group, dest)) or b"").decode()
        for group, dest in baselines
    }


def _learned_mixed(max_keys: int = 1000) -> SeasonalBaselines:
    """Keys of three groups sharing destination texts, some forgotten (their slots reused,
    so slot order is not the order keys were learned)."""
    baselines = SeasonalBaselines(max_keys=max_keys)
    for step in range(6):
        batch = [
            ((f"g{k % 3}", f"{('US', 'DE', 'CN')[k % 4 % 3]}|r{k % 2}|{k // 3}"), 1e6 * (k + step))
            for k in range(40 + 5 * step)
        ]
        baselines.observe_interval(T0 + STEP * step, batch)
    baselines.evict_idle(T0 + STEP * 5 + DAY, DAY - STEP * 2)
    baselines.observe_interval(T0 + DAY, [(("g9", "US|r0|7"), 5e6), (("g0", "JP||1"), 5e6)])
    return baselines


def _labels_of(baselines: SeasonalBaselines) -> dict[tuple[str, str], tuple[object, ...]]:
    slots = baselines.slots_of(list(baselines.keys()))
    out = {}
    for key, slot in zip(baselines.keys(), slots, strict=True):
        assert slot is not None
        numbers, texts = baselines.label_numbers(np.array([slot], np.intp))
        g, c, r, asn = numbers[0].tolist()
        out[key] = (texts[g], texts[c], texts[r], asn)
    return out


def test_the_compact_form_and_the_per_key_form_restore_the_same_baselines() -> None:
    """Either form restores every key, in the order learned, with its record and its metric
    labels; a state read in the per-key form is written again in the compact form whole."""
    learned = _learned_mixed()
    compact = orjson.loads(orjson.dumps(learned.to_json()))
    assert compact["format"] == 2 and len(compact["dests"]) == len(learned)
    old = orjson.loads(orjson.dumps(_per_key_form(learned)))
    at = T0 + DAY + 3600
    for data in (compact, old):
        again = SeasonalBaselines()
        again.load_json(data)
        assert list(again.keys()) == list(learned.keys())
        assert stored_keys(data) == list(learned.keys())
        assert {k: again.record(k) for k in learned} == {k: learned.record(k) for k in learned}
        assert _labels_of(again) == _labels_of(learned)
        keys = list(learned.keys())
        np.testing.assert_array_equal(
            again.expected_bytes(keys, at), learned.expected_bytes(keys, at)
        )
        assert again.to_json() == learned.to_json()
        assert again.dropped_on_load == 0


def test_a_state_file_gives_baselines_no_more_than_learning_keeps() -> None:
    """A record learning never writes (a value not finite or below zero) is dropped, and
    beyond max_keys the least recently seen keys are, as the cap's eviction drops them."""
    learned = SeasonalBaselines()
    for k in range(30):
        learned.observe(("g", f"K{k}"), T0 + STEP * k, 1e6)
    data = learned.to_json()
    raw = bytearray(base64.b64decode(data["records"]))  # type: ignore[arg-type]
    struct.pack_into("<f", raw, 29 * RECORD_SIZE + 16, math.nan)  # K29's overall level
    struct.pack_into("<f", raw, 28 * RECORD_SIZE + 20, -1.0)  # K28's spread
    struct.pack_into("<e", raw, 27 * RECORD_SIZE + 28 + 5 * 13, math.inf)  # an hour's level
    struct.pack_into("<d", raw, 26 * RECORD_SIZE + 8, math.inf)  # K26's last seen
    data["records"] = base64.b64encode(bytes(raw)).decode()
    for form in (data, None):
        if form is None:  # the same through the per-key form
            records = [raw[k * RECORD_SIZE : (k + 1) * RECORD_SIZE] for k in range(30)]
            form = {
                f"g\t{dest}": base64.b64encode(record).decode()
                for (_g, dest), record in zip(stored_keys(data), records, strict=True)
            }
        capped = SeasonalBaselines(max_keys=10)
        capped.load_json(form)
        assert list(capped.keys()) == [("g", f"K{k}") for k in range(16, 26)]
        assert capped.dropped_on_load == 20
        assert len(capped) == 10 and capped.slot_count == 10


def test_a_malformed_compact_form_is_rejected() -> None:
    good = _learned_mixed().to_json()
    count = len(good["dests"])  # type: ignore[arg-type]
    bad: list[dict[str, object]] = [
        {**good, "groups": ["g0", "g0", "g1", "g9"]},
        {**good, "group": [0] * count, "dests": ["US||1"] * count},  # a key twice
        {**good, "group": [7] * count},
        {**good, "group": [-1] + [0] * (count - 1)},
        {**good, "group": [True] * count},
        {**good, "group": [0] * (count - 1)},
        {**good, "dests": [1] * count},
        {**good, "records": str(good["records"])[:-8]},
        {**good, "records": "!!!!"},
        {**good, "records": None},
    ]
    for data in bad:
        with pytest.raises(ValueError, match="malformed baselines"):
            SeasonalBaselines().load_json(data)


def test_a_restore_leaves_room_for_new_keys_so_the_first_does_not_copy_every_record() -> None:
    """Restored storage held exactly the restored keys, so the first key learned after a
    restore copied every record to a larger array (0.6 s of the event loop at a million keys,
    when the flows held during the restore were judged). It is sized as that first growth
    would size it (doubling, up to max_keys); its unused pages cost no memory."""
    learned = SeasonalBaselines(max_keys=10_000)
    learned.observe_interval(T0, [(("g", f"US||{k}"), 1e6) for k in range(2_000)])
    again = SeasonalBaselines(max_keys=10_000)
    again.load_json(orjson.loads(orjson.dumps(learned.to_json())))
    storage = again._raw
    again.observe_interval(T0 + STEP, [(("g", "DE||1"), 1e6)])
    assert again._raw is storage
    assert len(again) == 2_001 and again._capacity == 4_000
    capped = SeasonalBaselines(max_keys=2_000)  # never past max_keys
    capped.load_json(orjson.loads(orjson.dumps(learned.to_json())))
    assert capped._capacity == 2_000


_OPS = st.lists(
    st.one_of(
        # learn an interval for (group number, destination number) at a time step
        st.tuples(st.just("learn"), st.integers(0, 2), st.integers(0, 11), st.integers(0, 40)),
        st.tuples(st.just("idle"), st.integers(0, 40)),
        st.tuples(st.just("reload"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops=_OPS)
def test_keys_evictions_and_saves_follow_a_model_as_slots_are_reused(
    ops: list[tuple[object, ...]],
) -> None:
    """Slots freed by idle and capacity evictions are reused by new keys: what the baselines
    hold, the order keys were learned, which keys a full table evicts (least recently seen,
    ties by learned order) and the saved state must stay what a plain model of the keys
    says."""
    cap = 6
    b = SeasonalBaselines(max_keys=cap)
    model: dict[tuple[str, str], list[float]] = {}  # key -> [learned number, last seen]
    learned = 0
    for op in ops:
        if op[0] == "learn":
            _, g, d, step = op
            key, at = (f"g{g}", f"D{d}"), T0 + 60.0 * float(step)  # type: ignore[arg-type]
            if key not in model:
                if len(model) >= cap:
                    for old in sorted(model, key=lambda k: (model[k][1], model[k][0]))[
                        : max(1, cap // 10)
                    ]:
                        del model[old]
                learned += 1
                model[key] = [learned, at]
            model[key][1] = max(model[key][1], at)
            b.observe(key, at, 1000.0)
        elif op[0] == "idle":
            now = T0 + 60.0 * float(op[1]) + 3600.0  # type: ignore[arg-type]
            gone = [k for k, (_n, last) in model.items() if last < now - 3600.0]
            for k in gone:
                del model[k]
            assert b.evict_idle(now, idle_timeout=3600.0) == len(gone)
        else:
            again = SeasonalBaselines(max_keys=cap)
            again.load_json(orjson.loads(orjson.dumps(b.to_json())))
            assert again.to_json() == b.to_json()
            b = again
            # a restore numbers keys afresh, in the order they were learned
            for number, k in enumerate(sorted(model, key=lambda k: model[k][0]), 1):
                model[k][0] = number
            learned = len(model)
        in_order = sorted(model, key=lambda k: model[k][0])
        assert list(b.keys()) == in_order
        assert len(b) == len(model)
        saved = b.to_json()
        assert stored_keys(saved) == in_order
        assert sorted(s["destination"] for s in b.summaries()) == sorted(d for _g, d in model)
