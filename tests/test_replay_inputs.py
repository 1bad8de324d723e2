"""Several replay inputs covering the same hours (one per collector) interleave by event time."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import orjson
from scenarios import generate

from egressd.config import load_config
from egressd.replay import replay


def _events(config_path: Path, inputs: list[Path]) -> tuple[list[dict[str, object]], int]:
    out = io.BytesIO()
    summary = replay(load_config(config_path), "goflow2-json", [str(p) for p in inputs], out)
    return [orjson.loads(line) for line in out.getvalue().splitlines()], summary.late_records


def test_two_collectors_files_of_the_same_days_give_the_alerts_of_one_file(
    tmp_path: Path,
) -> None:
    scenario = generate(2)
    config = scenario.write_config(tmp_path / "egressd.toml")
    whole = scenario.write(tmp_path / "all.jsonl")
    # Two collectors, each seeing every other flow, over the same nine days.
    first = dataclasses.replace(scenario, flows=scenario.flows[0::2]).write(tmp_path / "a.jsonl")
    second = dataclasses.replace(scenario, flows=scenario.flows[1::2]).write(tmp_path / "b.jsonl")

    expected, late = _events(config, [whole])
    merged, merged_late = _events(config, [first, second])

    assert expected, "the scenario pages on its exfiltrations"
    assert merged == expected
    assert merged_late == late == 0


def test_consecutive_files_replay_as_their_concatenation(tmp_path: Path) -> None:
    scenario = generate(3)
    config = scenario.write_config(tmp_path / "egressd.toml")
    whole = scenario.write(tmp_path / "all.jsonl")
    half = len(scenario.flows) // 2
    early = dataclasses.replace(scenario, flows=scenario.flows[:half]).write(tmp_path / "1.jsonl")
    late = dataclasses.replace(scenario, flows=scenario.flows[half:]).write(tmp_path / "2.jsonl")

    assert _events(config, [late, early]) == _events(config, [whole])
