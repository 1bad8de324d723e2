"""Per-group busy-interval egress (egressd.baseline.grouprate.GroupRates): the scale a group's
byte floors follow, learned from its closed intervals and kept in the state file."""

from __future__ import annotations

import math
import random

import pytest

from egressd.baseline.grouprate import RATE_QUANTILE, GroupRates
from egressd.config import parse_config
from egressd.enrich.embedded import EmbeddedCountryLabeler
from egressd.model import FlowRecord
from egressd.pipeline import Engine
from tests.integration_support import research_config

INTERVAL = 300.0
DAY_INTERVALS = 288
MB = 1_000_000
GB = 1_000_000_000


def _feed(rates: GroupRates, sizes: list[int], group: str = "g") -> None:
    for size in sizes:
        rates.observe({group: size}, INTERVAL)


def test_the_rate_settles_at_the_groups_busy_intervals() -> None:
    rng = random.Random(7)
    sizes = [round(200 * MB * 2 ** rng.gauss(0.0, 1.0)) for _ in range(14 * DAY_INTERVALS)]
    rates = GroupRates()
    _feed(rates, sizes)
    recent = sorted(sizes[-7 * DAY_INTERVALS :])
    true = recent[int(RATE_QUANTILE * len(recent))]
    assert rates.rate("g") == pytest.approx(true, rel=0.25)
    assert rates.rate("other") == 0.0


def test_one_large_transfer_barely_moves_it_and_a_lasting_change_does() -> None:
    rates = GroupRates()
    _feed(rates, [100 * MB] * (3 * DAY_INTERVALS))
    before = rates.rate("g")
    rates.observe({"g": 500 * GB}, INTERVAL)
    assert before <= rates.rate("g") <= 1.02 * before
    # The group grows tenfold for good: within days its rate follows.
    _feed(rates, [GB] * (3 * DAY_INTERVALS))
    assert rates.rate("g") == pytest.approx(GB, rel=0.05)


def test_groups_learn_apart_and_idle_groups_keep_their_rate() -> None:
    rates = GroupRates()
    for _ in range(DAY_INTERVALS):
        rates.observe({"big": 5 * GB, "small": 20 * MB}, INTERVAL)
    for _ in range(DAY_INTERVALS):
        rates.observe({"small": 20 * MB}, INTERVAL)
    assert rates.rate("big") == pytest.approx(5 * GB, rel=0.01)
    assert rates.rate("small") == pytest.approx(20 * MB, rel=0.01)


def test_the_factor_is_the_rate_over_the_reference_and_never_below_one() -> None:
    rates = GroupRates()
    rates.observe({"big": 6 * GB, "small": 20 * MB}, INTERVAL)
    assert rates.factor("big", 1_500_000_000) == pytest.approx(4.0)
    assert rates.factor("small", 1_500_000_000) == 1.0
    assert rates.factor("unknown", 1_500_000_000) == 1.0
    assert rates.factor("big", 0) == 1.0  # 0 turns scaling off


def test_floors_shrink_with_a_small_group_within_the_lowest_factor() -> None:
    rates = GroupRates()
    rates.observe({"big": 6 * GB, "mid": 250 * MB, "tiny": 5 * MB}, INTERVAL)
    reference = 500 * MB
    assert rates.shrink("big", reference, 0.2, INTERVAL) == 1.0  # never grows
    assert rates.shrink("mid", reference, 0.2, INTERVAL) == pytest.approx(0.5)
    assert rates.shrink("tiny", reference, 0.2, INTERVAL) == 0.2
    assert rates.shrink("unknown", reference, 0.2, INTERVAL) == 1.0  # no rate yet
    assert rates.shrink("tiny", 0, 0.2, INTERVAL) == 1.0  # 0 turns shrinking off


def test_below_a_fifth_of_the_reference_floors_shrink_with_the_square_root() -> None:
    # A twelve-desk office whose busy 5 minutes carry 5 MB (1% of the reference) gets floors
    # at sqrt(0.01 x 0.2) = 4.5% of the configured ones, not 1% (every small upload would page)
    # nor a fixed fifth (a tenth of its busy hour to a new country would not); down to a fifth
    # the factor is the share itself, and nothing goes under the lowest factor.
    rates = GroupRates()
    sizes = {"fifth": 100 * MB, "office": 5 * MB, "quarter": 1_250_000, "idle": 100_000}
    rates.observe(sizes, INTERVAL)
    reference = 500 * MB
    assert rates.shrink("fifth", reference, 0.02, INTERVAL) == pytest.approx(0.2)
    assert rates.shrink("office", reference, 0.02, INTERVAL) == pytest.approx(0.0447, rel=0.01)
    assert rates.shrink("quarter", reference, 0.02, INTERVAL) == pytest.approx(0.0224, rel=0.01)
    assert rates.shrink("idle", reference, 0.02, INTERVAL) == 0.02
    # The smaller the group, the larger a share of its own busy interval its floor is.
    shares = [rates.shrink(g, reference, 0.02, INTERVAL) * reference / sizes[g] for g in sizes]
    assert shares == sorted(shares)
    # A lowest factor of a fifth or more keeps the floors of the proportional rule alone.
    assert rates.shrink("office", reference, 0.2, INTERVAL) == 0.2


def test_the_shrink_reads_the_rate_per_five_minutes_whatever_the_interval() -> None:
    # The same traffic in 1-minute intervals carries a fifth per interval: its floors (bytes
    # per hour or day) must not shrink five times further.
    five, one = GroupRates(), GroupRates()
    five.observe({"g": 250 * MB}, 300.0)
    one.observe({"g": 50 * MB}, 60.0)
    assert one.shrink("g", 500 * MB, 0.2, 60.0) == pytest.approx(
        five.shrink("g", 500 * MB, 0.2, 300.0)
    )


def test_the_state_round_trips_and_bad_entries_are_skipped() -> None:
    rates = GroupRates()
    _feed(rates, [300 * MB, 700 * MB] * 50)
    restored = GroupRates.from_json(rates.to_json())
    assert restored.levels == rates.levels
    assert restored.rate("g") == rates.rate("g")
    bad = {
        "g": [math.log2(GB), 10],
        "nan": [float("nan"), 3],
        "huge": [1e300, 3],
        "short": [30.0],
        "text": ["30", 3],
        "bool": [True, 3],
        "zero": [30.0, 0],
    }
    assert set(GroupRates.from_json(bad).levels) == {"g"}
    assert GroupRates.from_json(None).levels == {}
    assert GroupRates.from_json([1, 2]).levels == {}


CONFIG = research_config({"interval": "5m", "learning": "1d"}, countries=("US",))
T0 = 1_773_014_400.0


def _engine() -> Engine:
    return Engine(parse_config(CONFIG), EmbeddedCountryLabeler())


def test_the_engine_learns_group_rates_and_the_state_file_keeps_them() -> None:
    engine = _engine()
    for i in range(40):
        t = T0 + i * INTERVAL + 100
        engine.process([FlowRecord(t - 1, t, "10.20.0.7", "8.8.8.8", 2 * GB, 2_000_000)])
    assert engine.group_rates.rate("research") == pytest.approx(2 * GB, rel=0.01)
    snapshot = engine.snapshot()
    restored = _engine()
    restored.restore(snapshot)
    assert restored.group_rates.levels == engine.group_rates.levels
    assert restored.spikes.rates is restored.group_rates
    # A state file from before group rates loads, and the rates are learned afresh.
    del snapshot["group_rates"]
    older = _engine()
    older.restore(snapshot)
    assert older.group_rates.levels == {}
    assert older.restored
