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

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from integration_support import FixedLabeler
from scenarios import DAY, Scenario, generate

from egressd.baseline.seasonal import SeasonalBaselines
from egressd.baseline.statefile import (
    decode_base64,
    encode_state,
    load_state,
    move_aside,
    parse_state,
    save_state,
)
from egressd.config import parse_config
from egressd.errors import DecodeError, StateError
from egressd.pipeline import STATE_VERSION, Engine
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
    # (A file that does not begin as a state file is refused, untouched: test_hardening_state.)
    for corrupt in (b'{"version": 99}', b'{"version": 1, "interval": 300}', b'{"version":2,'):
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


# ------------------------------------------------ the baselines' records at the end of the file


def _learned_engine(keys: int = 300) -> Engine:
    engine = Engine(parse_config(""), FixedLabeler())
    start = 1_773_000_000.0
    for i in range(keys):
        for k in range(3):
            engine.baselines.observe((f"g{i % 5}", f"C{i}|r|{i}"), start + 300 * k, 1000 + i * k)
    return engine


def test_a_state_file_ends_in_its_records_and_reads_the_same_apart_or_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = _learned_engine()
    snapshot = engine.snapshot()
    path = tmp_path / "state.json"
    save_state(path, snapshot)
    blob = path.read_bytes()
    # Still one JSON object (older code reads it), whose last member holds the records last.
    whole = orjson.loads(blob)
    assert list(whole)[-1] == "baselines" and list(whole["baselines"])[-1] == "records"
    assert blob.endswith(b'"}}') and blob.count(b',"records":"') == 1
    assert {k: v for k, v in whole.items() if k != "saved_at"} == snapshot
    # Taken apart: the same data, without orjson ever seeing the records text.
    parsed = orjson.loads
    seen: list[int] = []
    monkeypatch.setattr(
        "egressd.baseline.statefile.orjson.loads", lambda b: seen.append(len(b)) or parsed(b)
    )
    monkeypatch.setattr("egressd.baseline.statefile.BASE64_PIECE", 400)
    assert parse_state(blob) == whole
    decoded = parse_state(blob, decode_records=True)
    assert max(seen) < len(blob) - len(whole["baselines"]["records"])
    records = decoded["baselines"].pop("records")
    assert records.tobytes() == base64.b64decode(whole["baselines"].pop("records"))
    assert decoded == whole
    # An engine restored from either (or from a file of the older layout) is the same.
    restored = []
    older = tmp_path / "older.json"
    older.write_bytes(orjson.dumps(snapshot))  # baselines before the detectors' state
    assert not older.read_bytes().endswith(b'"}}')
    for data in (
        load_state(path),
        load_state(path, decode_records=True),
        load_state(older, decode_records=True),
    ):
        again = Engine(parse_config(""), FixedLabeler())
        assert data is not None
        again.restore(data)
        restored.append(again.snapshot())
    assert restored == [snapshot] * 3


def test_decoding_records_in_pieces_is_strict_base64() -> None:
    raw = bytes(range(256)) * 40
    text = base64.b64encode(raw).decode()
    for piece in (4, 8, 400, 1 << 22):
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("egressd.baseline.statefile.BASE64_PIECE", piece)
            assert decode_base64(text).tobytes() == raw
            assert decode_base64(memoryview(text.encode())).tobytes() == raw
            for bad in (text[:-1], text + "A", text[:8] + "!" + text[9:], "=" + text[1:], "é"):
                with pytest.raises(ValueError):
                    decode_base64(bad)


_TEXT = st.text(alphabet='AQ+/="\\\x01é,:{}[]', max_size=12)
_VALUE = st.recursive(
    st.none() | st.integers(-5, 5) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)


@settings(max_examples=250, deadline=None)
@given(
    before=st.dictionaries(_TEXT, _VALUE, max_size=3),
    inner=st.dictionaries(_TEXT, _VALUE, max_size=3),
    records=st.sampled_from(["", "QUFB", "QUE=", "QQ==", "QU", 'Q"Q', "Q\\u0051Q="]) | _TEXT,
    after=st.dictionaries(_TEXT, _VALUE, max_size=2),
    cut=st.integers(0, 40),
    insert=st.sampled_from([b"", b'"', b"}", b",", b'"records":"', b"\\", b"\xff"]),
)
def test_a_file_taken_apart_means_what_the_whole_parse_means(
    before: dict[str, Any],
    inner: dict[str, Any],
    records: str,
    after: dict[str, Any],
    cut: int,
    insert: bytes,
) -> None:
    """Whatever the bytes, reading the records apart gives what orjson gives for the whole
    file (decoded, when asked), or the file is refused as the whole parse refuses it."""
    state = {**before, "baselines": {**inner, "records": records}, **after}
    written = orjson.dumps(state)
    blobs = [written, encode_state(state)[0]]
    blobs.append(blobs[-1][: len(blobs[-1]) - cut - 3] + insert + blobs[-1][-cut - 3 :])
    for blob in blobs:
        try:
            expected: Any = orjson.loads(blob)
        except orjson.JSONDecodeError:
            expected = None
        try:
            got = parse_state(blob)
        except (orjson.JSONDecodeError, DecodeError):
            got = None
        assert got == expected
        try:
            decoded = parse_state(blob, decode_records=True)
        except (orjson.JSONDecodeError, DecodeError):
            decoded = None
        if decoded is None or expected is None:
            assert decoded == expected
            continue
        text = decoded.get("baselines", {}).get("records") if isinstance(decoded, dict) else None
        if isinstance(text, np.ndarray):  # taken apart: the whole parse's text, decoded
            decoded["baselines"]["records"] = expected["baselines"]["records"]
            assert base64.b64decode(expected["baselines"]["records"], validate=True) == bytes(text)
        assert decoded == expected
