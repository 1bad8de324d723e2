"""The state file: atomic 0600 saves, unusable files moved aside (learning starts again), and
restart continuity: replaying in two parts with a state file gives the alerts of one replay."""

from __future__ import annotations

import base64
import io
import os
import stat
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from scenarios import DAY, Scenario, generate

from egressd.baseline.seasonal import SeasonalBaselines
from egressd.baseline.statefile import load_state, move_aside, save_state
from egressd.config import parse_config
from egressd.errors import StateError
from egressd.pipeline import STATE_VERSION
from egressd.replay import replay


def test_save_is_atomic_and_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "state.json"
    size = save_state(path, {"version": 1, "baselines": {"a": "b"}}, extra={"who": "test"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert size == path.stat().st_size
    assert os.listdir(path.parent) == ["state.json"]  # no temporary file left behind
    data = load_state(path)
    assert data is not None
    assert data["baselines"] == {"a": "b"} and data["who"] == "test"
    assert isinstance(data["saved_at"], float)
    # Replacing a file that was readable by others leaves a private one.
    path.chmod(0o644)
    save_state(path, {"version": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_failed_save_keeps_the_old_file(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_state(path, {"version": 1, "n": 1})
    with pytest.raises(StateError):
        save_state(path, {"version": 1, "bad": object()})
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StateError):
        save_state(blocker / "state.json", {"version": 1})
    data = load_state(path)
    assert data is not None and data["n"] == 1
    assert sorted(os.listdir(tmp_path)) == ["file", "state.json"]


def test_load_and_move_aside(tmp_path: Path) -> None:
    assert load_state(tmp_path / "absent.json") is None
    path = tmp_path / "state.json"
    path.write_bytes(b"{not json")
    with pytest.raises(StateError):
        load_state(path)
    path.write_bytes(b"[1, 2]")
    with pytest.raises(StateError):
        load_state(path)
    moved = move_aside(path, "test")
    assert moved is not None and moved.exists() and not path.exists()
    assert moved.name.startswith("state.json.bad-")


def _events(out: io.BytesIO) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in out.getvalue().splitlines()]


@pytest.fixture(scope="module")
def two_part_scenario(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Scenario, Path, Path, Path]:
    scenario = generate(seed=5, days=8)
    directory = tmp_path_factory.mktemp("statefile")
    whole = scenario.write(directory / "all.jsonl")
    split = scenario.start + 5 * DAY  # an interval boundary
    early = replace(scenario, flows=[f for f in scenario.flows if f.end < split])
    late = replace(scenario, flows=[f for f in scenario.flows if f.end >= split])
    part1 = early.write(directory / "days1-5.jsonl")
    part2 = late.write(directory / "days6-8.jsonl")
    return scenario, whole, part1, part2


def test_restart_continuity(
    two_part_scenario: tuple[Scenario, Path, Path, Path], tmp_path: Path
) -> None:
    scenario, whole, part1, part2 = two_part_scenario
    config = parse_config(scenario.config_text)
    at_once = io.BytesIO()
    replay(config, "goflow2-json", [str(whole)], at_once)
    state = tmp_path / "state.json"
    in_parts = io.BytesIO()
    first = replay(config, "goflow2-json", [str(part1)], in_parts, state_path=state)
    assert stat.S_IMODE(state.stat().st_mode) == 0o600
    second = replay(config, "goflow2-json", [str(part2)], in_parts, state_path=state)
    expected = _events(at_once)
    assert {e["labels"]["alertname"] for e in expected} == {
        "EgressUnexpectedDestination",
        "EgressVolumeSpike",
    }
    assert first.firing > 0 and second.firing > 0  # alerts on both sides of the restart
    assert _events(in_parts) == expected
    assert second.late_records == 0


def test_a_version_1_state_file_is_read_and_written_again_whole(
    two_part_scenario: tuple[Scenario, Path, Path, Path], tmp_path: Path
) -> None:
    """A state file written before the compact baselines (version 1, a JSON object entry per
    key) restores to the same engine: the rest of the scenario pages the same, and the state
    saved after it is the one a version 2 file leads to."""
    scenario, _whole, part1, part2 = two_part_scenario
    config = parse_config(scenario.config_text)
    state = tmp_path / "state.json"
    replay(config, "goflow2-json", [str(part1)], io.BytesIO(), state_path=state)
    current = load_state(state)
    assert current is not None and current["baselines"]["format"] == 2
    learned = SeasonalBaselines()
    learned.load_json(current["baselines"])
    per_key = {
        f"{group}\t{dest}": base64.b64encode(learned.record((group, dest)) or b"").decode()
        for group, dest in learned
    }
    assert len(per_key) > 10
    old = tmp_path / "old.json"
    old.write_bytes(orjson.dumps({**current, "version": 1, "baselines": per_key}))
    outcomes = []
    for path in (state, old):
        out = io.BytesIO()
        replay(config, "goflow2-json", [str(part2)], out, state_path=path)
        saved = load_state(path)
        assert saved is not None and saved["version"] == STATE_VERSION
        outcomes.append((_events(out), {k: v for k, v in saved.items() if k != "saved_at"}))
    assert outcomes[0][0], "the scenario's second part pages"
    assert outcomes[1] == outcomes[0]
    assert not list(tmp_path.glob("*.bad-*"))


def test_corrupt_state_is_moved_aside_and_learning_restarts(
    two_part_scenario: tuple[Scenario, Path, Path, Path], tmp_path: Path
) -> None:
    scenario, _whole, _part1, part2 = two_part_scenario
    config = parse_config(scenario.config_text)
    fresh = io.BytesIO()
    replay(config, "goflow2-json", [str(part2)], fresh)
    for corrupt in (b"\x00garbage", b'{"version": 99}', b'{"version": 1, "interval": 300}'):
        state = tmp_path / "state.json"
        state.write_bytes(corrupt)
        out = io.BytesIO()
        replay(config, "goflow2-json", [str(part2)], out, state_path=state)
        assert _events(out) == _events(fresh)  # as if nothing had been learned
        aside = [p for p in tmp_path.iterdir() if p.name.startswith("state.json.bad-")]
        assert len(aside) == 1 and aside[0].read_bytes() == corrupt
        aside[0].unlink()
        data = load_state(state)  # and a good state was saved at the end
        assert data is not None and data["version"] == STATE_VERSION
        state.unlink()


def test_files_moved_aside_in_the_same_second_are_all_kept(tmp_path: Path) -> None:
    from egressd.baseline.statefile import move_aside

    path = tmp_path / "state.json"
    moved = []
    for content in (b"first", b"second", b"third"):
        path.write_bytes(content)
        target = move_aside(path, "test")
        assert target is not None
        moved.append(target)
    assert len(set(moved)) == 3
    assert sorted(p.read_bytes() for p in moved) == [b"first", b"second", b"third"]


def test_a_replay_whose_state_outgrows_max_size_says_so(
    two_part_scenario: tuple[Scenario, Path, Path, Path],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The state is written whole, but a later replay (or a daemon) with the same limit would
    set it aside and learn again: the replay that wrote it warns, naming the limit to raise."""
    scenario, _whole, part1, _part2 = two_part_scenario
    config = parse_config(scenario.config_text)
    state = tmp_path / "state.json"
    with caplog.at_level("WARNING"):
        replay(config, "goflow2-json", [str(part1)], io.BytesIO(), state_path=state)
    assert "over state.max_size" not in caplog.text
    size = state.stat().st_size
    small = replace(config, state=replace(config.state, max_size=size // 2))
    with caplog.at_level("WARNING"):
        replay(small, "goflow2-json", [str(part1)], io.BytesIO(), state_path=tmp_path / "s.json")
    assert "over state.max_size" in caplog.text and "raise state.max_size" in caplog.text
    assert load_state(tmp_path / "s.json") is not None  # saved whole all the same
