"""Learned expected countries: what a group regularly sends to, not what it touched once."""

from __future__ import annotations

import orjson

from egressd.config import parse_config
from egressd.detect.alerts import FIRING
from egressd.enrich import DestinationLabels
from egressd.enrich.embedded import EmbeddedCountryLabeler
from egressd.model import FlowRecord
from egressd.pipeline import Engine

CONFIG = """
[networks]
local = ["10.0.0.0/8"]

[[groups]]
name = "lab"
sources = ["10.60.0.0/16"]      # no expected_countries: learned

[detection]
interval = "5m"
learning = "1d"
"""
T0 = 1_773_000_000.0 - 1_773_000_000.0 % 86400
US = "3.5.140.2"
CN = "47.100.23.45"


def _day(
    engine: Engine, day: int, extra: list[tuple[float, str, int]], usual: int = 40_000_000
) -> list[str]:
    """One day of ``usual`` bytes per interval to the US, plus ``extra`` (offset, destination,
    bytes)."""
    fired = []
    flows = [(day * 86400 + i * 300 + 150, US, usual) for i in range(288)]
    flows += [(day * 86400 + offset, dst, size) for offset, dst, size in extra]
    for offset, dst, size in sorted(flows):
        record = FlowRecord(T0 + offset - 1, T0 + offset, "10.60.0.7", dst, size, size // 1000)
        fired += [
            f"{a.labels['alertname']} {a.labels['dst_country']}"
            for a in engine.process([record])
            if a.state == FIRING
        ]
    return fired


def test_a_few_megabytes_while_learning_do_not_make_a_country_expected() -> None:
    engine = Engine(parse_config(CONFIG), EmbeddedCountryLabeler())
    # While learning: the usual US traffic, and 5 MB to China one afternoon.
    assert _day(engine, 0, [(15 * 3600, CN, 5_000_000)]) == []
    assert engine.policy.expected_countries("lab") == frozenset({"US"})
    # After learning: 2 GB to China pages; the US traffic does not.
    assert _day(engine, 1, [(14 * 3600 + 60 * m, CN, 400_000_000) for m in range(5)]) == [
        "EgressUnexpectedDestination CN"
    ]


def test_a_country_used_while_learning_is_expected_afterwards() -> None:
    engine = Engine(parse_config(CONFIG), EmbeddedCountryLabeler())
    # Used in several intervals across the afternoon: a habit, not a single flow.
    habit = [(15 * 3600 + 1800 * k, CN, 50_000_000) for k in range(6)]
    assert _day(engine, 0, habit) == []
    assert engine.policy.expected_countries("lab") == frozenset({"US", "CN"})
    assert _day(engine, 1, [(14 * 3600, CN, 150_000_000)]) == []


def test_one_large_flow_while_learning_does_not_make_a_country_expected() -> None:
    """Learning poison: one 300 MB flow to China during learning teaches nothing."""
    engine = Engine(parse_config(CONFIG), EmbeddedCountryLabeler())
    assert _day(engine, 0, [(15 * 3600, CN, 300_000_000)]) == []
    assert engine.policy.expected_countries("lab") == frozenset({"US"})
    assert _day(engine, 1, [(14 * 3600 + 60 * m, CN, 2_000_000_000) for m in range(5)]) == [
        "EgressUnexpectedDestination CN"
    ]


def test_sustained_use_needs_several_days_when_learning_lasts_several_days() -> None:
    config = parse_config(CONFIG.replace('learning = "1d"', 'learning = "2d"'))
    engine = Engine(config, EmbeddedCountryLabeler())
    # Twelve intervals on the first day only: not yet a habit for a two-day learning period.
    assert _day(engine, 0, [(10 * 3600 + 600 * k, CN, 30_000_000) for k in range(12)]) == []
    assert _day(engine, 1, []) == []
    assert engine.policy.expected_countries("lab") == frozenset({"US"})
    again = Engine(config, EmbeddedCountryLabeler())
    _day(again, 0, [(10 * 3600 + 600 * k, CN, 30_000_000) for k in range(6)])
    _day(again, 1, [(10 * 3600, CN, 30_000_000)])
    assert again.policy.expected_countries("lab") == frozenset({"US", "CN"})


def test_a_learned_destination_that_jumps_by_orders_of_magnitude_pages() -> None:
    """Learned with a few small intervals (too few for a seasonal level): 20 GB still pages."""
    engine = Engine(parse_config(CONFIG), EmbeddedCountryLabeler())
    _day(engine, 0, [(15 * 3600 + 1800 * k, CN, 4_000_000) for k in range(6)])
    assert "CN" in (engine.policy.expected_countries("lab") or ())
    assert _day(engine, 1, [(16 * 3600 + 30 * k, CN, 2_000_000_000) for k in range(10)]) == [
        "EgressVolumeSpike CN"
    ]


def test_the_country_rule_answers_as_is_expected_for_labels_without_region_or_asn() -> None:
    # Detectors ask the rule once per group and interval instead of is_expected per key.
    config = parse_config(
        CONFIG
        + """
[[groups]]
name = "office"
sources = ["10.70.0.0/16"]
expected_countries = ["DE", "US"]
"""
    )
    engine = Engine(config, EmbeddedCountryLabeler())
    policy = engine.policy
    # "lab" learns: a habit to the US, one afternoon's use of China (not enough to learn).
    for i in range(0, 288, 3):
        policy.observe("lab", DestinationLabels("US"), 40_000_000, T0 + i * 300)
    policy.observe("lab", DestinationLabels("CN"), 5_000_000, T0 + 15 * 3600)
    labels = [DestinationLabels(c) for c in ("US", "CN", "DE", "RU", "ZZ")]
    answers = set()
    for group in ("lab", "office", "unknown"):
        for when in (T0, T0 + 86399, T0 + 86400, T0 + 3 * 86400):
            rule = policy.country_rule(group, when)
            for dest in labels:
                expected = policy.is_expected(group, dest, when)
                assert (rule is None or dest.country in rule) == expected, (group, when, dest)
                answers.add((group, expected))
    # Both answers occur for the learning group and the configured one.
    assert {("lab", True), ("lab", False), ("office", True), ("office", False)} <= answers


SMALL_CONFIG = CONFIG.replace('learning = "1d"', 'learning = "2d"')
NL = "145.100.0.1"


def _small_day(engine: Engine, day: int, extra: list[tuple[float, str, int]]) -> list[str]:
    """One day of a small group: 5 MB per interval to the US (a hundredth of the reference
    of the unexpected-destination floors: they shrink to about 4.5%), plus ``extra``."""
    return _day(engine, day, extra, usual=5_000_000)


def _small_group_learning(engine: Engine) -> None:
    """Two days of learning: 1.5 MB to the Netherlands in three intervals a day (9 MB in
    all, under the configured 20 MB but sustained use at this group's scale)."""
    for day in (0, 1):
        habit = [(9 * 3600 + 3600 * k, NL, 1_500_000) for k in range(3)]
        assert _small_day(engine, day, habit) == []


def test_a_small_group_learns_a_country_it_used_at_its_own_scale() -> None:
    engine = Engine(parse_config(SMALL_CONFIG), EmbeddedCountryLabeler())
    _small_group_learning(engine)
    # After learning: an 8 MB upload to the Netherlands (over the group's shrunk hourly
    # floor, far under the configured one) is to a country the group uses: no page.
    assert _small_day(engine, 2, [(14 * 3600 + 60 * m, NL, 1_600_000) for m in range(5)]) == []
    assert engine.policy.expected_countries("lab") == frozenset({"US", "NL"})
    factor = engine.policy.learned["lab"].factor
    assert factor is not None and 0.02 < factor < 0.1


def test_a_small_group_still_pages_for_a_country_it_never_used() -> None:
    engine = Engine(parse_config(SMALL_CONFIG), EmbeddedCountryLabeler())
    _small_group_learning(engine)
    # The same upload to China, never used while learning, pages at the group's floor.
    assert _small_day(engine, 2, [(14 * 3600 + 60 * m, CN, 1_600_000) for m in range(5)]) == [
        "EgressUnexpectedDestination CN"
    ]


def test_the_learned_factor_is_kept_across_a_restart() -> None:
    config = parse_config(SMALL_CONFIG)
    engine = Engine(config, EmbeddedCountryLabeler())
    _small_group_learning(engine)
    assert _small_day(engine, 2, []) == []
    factor = engine.policy.learned["lab"].factor
    assert factor is not None
    again = Engine(config, EmbeddedCountryLabeler())
    again.restore(orjson.loads(orjson.dumps(engine.snapshot())))
    # Whatever the group's rate does later, it is judged by the factor it learned with.
    again.group_rates.levels["lab"][0] += 10
    assert again.policy.learned["lab"].factor == factor
    assert again.policy.country_rule("lab", T0 + 3 * 86400) == frozenset({"US", "NL"})


def test_a_state_without_a_learned_factor_takes_the_groups_factor() -> None:
    engine = Engine(parse_config(SMALL_CONFIG), EmbeddedCountryLabeler())
    _small_group_learning(engine)
    state = orjson.loads(orjson.dumps(engine.snapshot()))
    state["learned"]["lab"].pop("factor", None)
    again = Engine(parse_config(SMALL_CONFIG), EmbeddedCountryLabeler())
    again.restore(state)
    assert again.policy.country_rule("lab", T0 + 3 * 86400) == frozenset({"US", "NL"})
    assert again.policy.learned["lab"].factor is not None
