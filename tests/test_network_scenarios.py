"""Differently shaped months (tests/network_scenarios.py) with the default detection settings:
a cloud-heavy company, a university, a small office behind 1:1000 sampling and an enterprise
of eighteen groups. One seed each (benchmarks/detection_bench.py --scenario networks scores
more)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import orjson
import pytest
from network_scenarios import (
    CAMPUS_CONFIG,
    ENTERPRISE_CONFIG,
    GENERATORS,
    OFFICE_CONFIG,
    SAAS_CONFIG,
    generate_enterprise,
)
from scenarios import Scenario
from test_scenarios import check_detected, check_events, false_pages

from egressd.config import parse_config
from egressd.replay import replay

#: the months that page every exfiltration and nothing else on seed 1
CLEAN = ("campus", "saas", "small-office")


def _replay(scenario: Scenario, directory: Path) -> list[dict[str, Any]]:
    path = scenario.write(directory / "flows.goflow2.jsonl")
    out = io.BytesIO()
    summary = replay(parse_config(scenario.config_text), "goflow2-json", [str(path)], out)
    assert summary.records == len(scenario.flows)
    assert not summary.skipped
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("kind", CLEAN)
def test_a_differently_shaped_month_pages_every_exfiltration_and_nothing_else(
    kind: str, tmp_path: Path
) -> None:
    scenario = GENERATORS[kind](1)
    check_events(scenario, _replay(scenario, tmp_path))


@pytest.fixture(scope="module")
def enterprise(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, list[dict[str, Any]]]:
    """Seed 1 of the enterprise month, replayed once for the tests below."""
    scenario = generate_enterprise(1)
    return scenario, _replay(scenario, tmp_path_factory.mktemp("enterprise"))


@pytest.mark.slow
def test_an_enterprise_month_pages_every_exfiltration(
    enterprise: tuple[Scenario, list[dict[str, Any]]],
) -> None:
    scenario, events = enterprise
    assert len({g for g in scenario.config_text.split("\n") if g.startswith("name = ")}) == 18
    check_detected(scenario, events)
    # Today's figure, not the goal (see the next test): this seed gets one false page,
    # EgressVolumeSpike london/US, an ordinary burst of the headquarters' SaaS traffic. Over
    # seeds 1-8 main gets 0-1 such pages per seed (README, detection_bench).
    assert len(false_pages(scenario, events)) <= 1, false_pages(scenario, events)


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="a known defect: the per-key spike rule, tested on each of the enterprise's ~90 "
    "keys every interval, pages on an ordinary burst of a large office key (README, "
    "'How detection works'); strict, so the test must be updated when that is fixed",
)
def test_an_enterprise_month_pages_nothing_else(
    enterprise: tuple[Scenario, list[dict[str, Any]]],
) -> None:
    scenario, events = enterprise
    assert not false_pages(scenario, events)


@pytest.mark.parametrize(
    "config_text", [SAAS_CONFIG, CAMPUS_CONFIG, OFFICE_CONFIG, ENTERPRISE_CONFIG]
)
def test_the_network_configs_set_only_interval_and_learning(config_text: str) -> None:
    detection = config_text.split("[detection]")[1]
    keys = sorted(line.split("=")[0].strip() for line in detection.splitlines() if "=" in line)
    assert keys == ["interval", "learning"]
    parse_config(config_text)
