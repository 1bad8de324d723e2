"""The network's burst ratios (egressd.detect.detectors.BurstRatios): the 1% quantile of large
intervals' ratio to their seasonal level, and the ratio they reach about once a day, which
rises with the number of keys a network tests every interval."""

from __future__ import annotations

import random

import pytest

from egressd.detect.detectors import BurstRatios

DAY = 86400.0


def _network(per_day: int, high_per_day: float, days: int = 3) -> BurstRatios:
    """``per_day`` large intervals a day at twice their level, ``high_per_day`` of them at 30."""
    ratios = BurstRatios()
    for day in range(days):
        high = round(high_per_day * (day + 1)) - round(high_per_day * day)
        for i in range(per_day):
            at = day * DAY + i * DAY / per_day
            ratios.add(30.0 if i < high else 2.0, 1.0, at)
    return ratios


def test_a_ratio_reached_twice_a_day_is_the_daily_one_whatever_the_1_percent() -> None:
    ratios = _network(per_day=1000, high_per_day=2)
    assert ratios.quantile(0.99) == pytest.approx(2.0, rel=0.1)
    assert ratios.daily(3 * DAY) == pytest.approx(30.0, rel=0.1)


def test_a_ratio_reached_once_in_three_days_is_above_the_daily_one() -> None:
    ratios = _network(per_day=1000, high_per_day=1 / 3)
    assert ratios.daily(3 * DAY) == pytest.approx(2.0, rel=0.1)


def test_more_keys_make_the_same_ratio_daily() -> None:
    # The same share of bursts (one in 2,000 large intervals): a network with 500 a day sees
    # one every four days, one with 8,000 a day four a day.
    small = _network(per_day=500, high_per_day=0.25, days=8)
    large = _network(per_day=8000, high_per_day=4, days=8)
    assert small.quantile(0.99) == pytest.approx(large.quantile(0.99))
    assert small.daily(8 * DAY) < 3.0 < 25.0 < large.daily(8 * DAY)


def test_too_few_samples_say_nothing() -> None:
    ratios = _network(per_day=100, high_per_day=1, days=1)
    assert ratios.daily(DAY) == 0.0
    assert BurstRatios().daily(DAY) == 0.0


def test_the_rate_follows_the_last_weeks() -> None:
    ratios = _network(per_day=1000, high_per_day=2, days=20)
    assert ratios.rate_since is not None
    assert 19 * DAY - ratios.rate_since <= 14 * DAY
    assert 900 <= ratios.rate_samples / ((20 * DAY - ratios.rate_since) / DAY) <= 1100


def test_the_state_keeps_the_rate_and_reads_the_bins_of_an_older_state() -> None:
    ratios = _network(per_day=1000, high_per_day=2)
    restored = BurstRatios.from_json(ratios.to_json())
    assert restored.bins == ratios.bins
    assert (restored.rate_samples, restored.rate_since) == (ratios.rate_samples, ratios.rate_since)
    assert restored.daily(3 * DAY) == ratios.daily(3 * DAY)
    # A state from before the rate was counted: the bins, and the rate counted afresh.
    older = BurstRatios.from_json(list(ratios.bins))
    assert older.bins == ratios.bins
    assert older.daily(3 * DAY) == 0.0
    older.add(2.0, 1.0, 3 * DAY)
    assert older.rate_samples == 1


@pytest.mark.parametrize("seed", range(5))
def test_the_daily_ratio_is_the_histograms_quantile_found_from_the_top(seed: int) -> None:
    rng = random.Random(seed)
    ratios = BurstRatios()
    per_day = rng.choice((600, 2500, 9000))
    for i in range(per_day * 3):
        ratios.add(2.0 ** rng.gauss(1.0, 1.5), 1.0, i * DAY / per_day)
        if i % 997 == 0 and ratios.samples >= 500:
            now = (i + 1) * DAY / per_day
            since = ratios.rate_since
            assert since is not None
            q = 1.0 - 1.0 / (ratios.rate_samples / max((now - since) / DAY, 1.0))
            assert ratios.daily(now) == ratios._quantile(q)
    # after the counts halve as well
    ratios.bins = [n // 2 for n in ratios.bins]
    ratios.samples = sum(ratios.bins)
    now = 3 * DAY
    since = ratios.rate_since
    assert since is not None
    q = 1.0 - 1.0 / (ratios.rate_samples / max((now - since) / DAY, 1.0))
    assert ratios.daily(now) == ratios._quantile(q)
