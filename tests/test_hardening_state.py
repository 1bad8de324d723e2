"""Hardening of the state file: crashes mid-save, a full disk, and unusable files at start.

A saver killed with SIGKILL at random moments must leave the old or the new state, never
a torn one; ENOSPC must leave the previous file intact; replay must survive any bad file.
"""

from __future__ import annotations

import asyncio
import errno
import io
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest

from egressd.app import Daemon
from egressd.baseline.seasonal import stored_keys
from egressd.baseline.statefile import load_state, save_state
from egressd.config import Config, parse_config
from egressd.decode.egressd_json import encode_egressd_json
from egressd.detect.policy import MAX_LEARNED_COUNTRIES
from egressd.errors import EgressdError, StateError
from egressd.model import FlowRecord
from egressd.pipeline import STATE_VERSION, Engine
from egressd.replay import replay
from tests.integration_support import FixedLabeler, research_config

REPO = Path(__file__).resolve().parents[1]
KILLS = 36
#: Version fields the saver adds; everything else must equal the base snapshot exactly.
VERSION_FIELDS = ("writer", "seq", "saved_at")


def big_snapshot(keys: int = 12_000) -> dict[str, Any]:
    """A real engine snapshot holding ``keys`` baselines (about 5 MB of JSON)."""
    engine = Engine(Config(), FixedLabeler())
    start = 1_773_000_000.0
    for i in range(keys):
        for k in range(3):
            engine.baselines.observe((f"g{i % 7}", f"C{i}"), start + 300 * k, 1000 + i + k)
    return engine.snapshot()


# --------------------------------------------------------------------------- SIGKILL


SAVER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import orjson
    from egressd.baseline.statefile import save_state

    state, base, writer = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    snapshot = orjson.loads(base.read_bytes())
    sys.stdout.write("ready\\n")
    sys.stdout.flush()
    seq = 0
    while True:
        seq += 1
        save_state(state, snapshot, extra={"writer": writer, "seq": seq})
    """
)


def _strip_version(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k not in VERSION_FIELDS}


def _temps(directory: Path) -> list[Path]:
    return sorted(directory.glob(".state.json.*.tmp"))


def test_sigkill_during_saves_never_tears_the_state_file(tmp_path: Path) -> None:
    rng = random.Random(20260309)
    state = tmp_path / "state.json"
    base_file = tmp_path / "base.json"
    base = big_snapshot()
    base_file.write_bytes(orjson.dumps(base))
    save_state(state, base, extra={"writer": 0, "seq": 0})
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}

    last = (0, 0)
    leftovers_seen = 0
    deadline = time.monotonic() + 60
    for writer in range(1, KILLS + 1):
        child = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(state), str(base_file), str(writer)],
            stdout=subprocess.PIPE,
            env=env,
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n"
            time.sleep(rng.uniform(0.0, 0.12))
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            if child.stdout is not None:
                child.stdout.close()
        assert child.returncode == -signal.SIGKILL

        leftovers_seen += bool(_temps(tmp_path))
        data = load_state(state)  # raises StateError on a torn file
        assert data is not None
        version = (data["writer"], data["seq"])
        assert version >= last, f"state went back from {last} to {version}"
        assert _strip_version(data) == _strip_version(base), f"version {version} differs"
        assert data["version"] == STATE_VERSION
        last = version
        assert time.monotonic() < deadline, "the kill loop is far slower than expected"

    # Kills landed mid-write at least once (a temporary file was left), and later saves
    # reached the file: this exercised crashes, not an idle saver.
    assert leftovers_seen >= 1
    assert last[0] > 1
    # The next save cleans up after the dead savers and still works.
    save_state(state, base, extra={"writer": KILLS + 1, "seq": 1})
    assert _temps(tmp_path) == []
    assert load_state(state)["writer"] == KILLS + 1  # type: ignore[index]
    assert (state.stat().st_mode & 0o777) == 0o600


def test_leftover_temp_of_a_live_process_is_kept(tmp_path: Path) -> None:
    """Only temporary files of dead savers are removed; a live one may be mid-write."""
    state = tmp_path / "state.json"
    live = tmp_path / f".state.json.{os.getppid()}.tmp"
    live.write_bytes(b"{")
    save_state(state, {"a": 1})
    assert live.exists()
    assert load_state(state)["a"] == 1  # type: ignore[index]


# --------------------------------------------------------------------------- planted files


def _in_thread(call: Any, unblock: Path | None = None, timeout: float = 5.0) -> Any:
    """``call()`` in a thread; fails when it has not returned within ``timeout`` (then opens
    ``unblock``, a FIFO, from the other end so the thread can end)."""
    import threading

    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # handed back to the test
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if unblock is not None:
            fd = os.open(unblock, os.O_RDWR | os.O_NONBLOCK)
            os.close(fd)
        thread.join(timeout)
        pytest.fail(f"blocked for {timeout} s on a planted file")
    return outcome[0]


def test_a_fifo_planted_at_the_temp_name_does_not_block_saving(tmp_path: Path) -> None:
    # Before: the temporary file was opened for writing whatever it was; a FIFO there blocks
    # the open until a reader comes, so the save (and the daemon's save lock, and its final
    # save at stop) waited for ever.
    state = tmp_path / "state.json"
    fifo = tmp_path / f".state.json.{os.getpid()}.tmp"
    os.mkfifo(fifo)
    result = _in_thread(lambda: save_state(state, {"a": 1}), unblock=fifo)
    assert not isinstance(result, BaseException), result
    assert load_state(state) == {"a": 1, "saved_at": pytest.approx(time.time(), abs=60)}
    assert _temps(tmp_path) == []


def test_a_symlink_planted_at_the_temp_name_is_not_followed(tmp_path: Path) -> None:
    # Before: the save truncated and overwrote whatever file the link named (with the
    # daemon's rights), then renamed the link.
    state = tmp_path / "state.json"
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (tmp_path / f".state.json.{os.getpid()}.tmp").symlink_to(victim)
    save_state(state, {"a": 1})
    assert victim.read_bytes() == b"keep me"
    assert not state.is_symlink()
    assert load_state(state)["a"] == 1  # type: ignore[index]


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_state_path_that_is_not_a_regular_file_is_refused_at_once(
    tmp_path: Path, kind: str
) -> None:
    # Before: a FIFO blocked the start for ever; /dev/zero was read up to state.max_size.
    state = tmp_path / "state.json"
    if kind == "fifo":
        os.mkfifo(state)
    else:
        state.symlink_to("/dev/zero")
    result = _in_thread(lambda: load_state(state), unblock=state if kind == "fifo" else None)
    assert isinstance(result, StateError), result
    assert "not a regular file" in str(result)


# --------------------------------------------------------------------------- ENOSPC


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs mounted for this test (needs root and mount permission)."""
    mountpoint = tmp_path / "tiny"
    mountpoint.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k,mode=0700", "tmpfs", str(mountpoint)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        reason = f"cannot mount a tmpfs (needs root / CAP_SYS_ADMIN): {result.stderr.strip()}"
        if os.environ.get("EGRESSD_REQUIRE_INTEGRATION") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def test_no_space_left_keeps_previous_state(tiny_tmpfs: Path) -> None:
    state = tiny_tmpfs / "state.json"
    small = {"version": STATE_VERSION, "payload": "x" * 20_000}
    save_state(state, small)
    before = state.read_bytes()

    large = {"version": STATE_VERSION, "payload": "y" * 200_000}
    with pytest.raises(StateError) as caught:
        save_state(state, large)
    cause = caught.value.__cause__
    assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC, repr(cause)
    assert "No space left" in str(caught.value)

    assert state.read_bytes() == before
    assert load_state(state)["payload"] == small["payload"]  # type: ignore[index]
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["state.json"]
    # Once there is room again, saving works (nothing was left to eat the space).
    save_state(state, {"version": STATE_VERSION, "payload": "z" * 30_000})
    assert load_state(state)["payload"] == "z" * 30_000  # type: ignore[index]


@pytest.mark.parametrize("fault", ["full", "read-only"])
async def test_a_running_daemon_whose_state_cannot_be_saved_says_so_retries_and_detects(
    tiny_tmpfs: Path, fault: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The state directory full, or read-only: each save fails loudly (logged, counted), the
    next one is tried at the next save interval, and detection goes on meanwhile; once there
    is room again, the next save writes the state whole."""
    state = tiny_tmpfs / "state.json"
    config = parse_config(
        research_config(
            {"interval": "5m"}, state=str(state), save_interval="1s", http="127.0.0.1:0"
        )
    )
    daemon = Daemon(config, environ={}, sources=[])
    if fault == "full":
        filler = tiny_tmpfs / "filler"
        with filler.open("wb", buffering=0) as out, pytest.raises(OSError):
            while True:
                out.write(b"x" * 4096)
    else:
        subprocess.run(["mount", "-o", "remount,ro", str(tiny_tmpfs)], check=True)
    task = asyncio.create_task(daemon.run())
    try:
        async with asyncio.timeout(30):
            while daemon.stats.state_save_errors < 2:
                await asyncio.sleep(0.05)
        t0 = 1_773_064_800.0
        daemon.feed.submit(
            [
                FlowRecord(t0 + 50, t0 + 60, "10.20.0.17", "47.100.23.45", 300_000_000, 2000),
                FlowRecord(t0 + 400, t0 + 420, "10.20.0.17", "81.2.69.160", 1_000, 1),
            ]
        )
        assert [a["labels"]["dst_country"] for a in daemon.firing_alerts()] == ["CN"]
        assert any("cannot save state" in r.getMessage() for r in caplog.records)
        assert daemon.stats.state_saves == 0
        if fault == "full":
            filler.unlink()
        else:
            subprocess.run(["mount", "-o", "remount,rw", str(tiny_tmpfs)], check=True)
        async with asyncio.timeout(30):
            while daemon.stats.state_saves < 1:
                await asyncio.sleep(0.05)
    finally:
        assert daemon._stopping is not None
        daemon._stopping.set()
        assert await task == 0
    saved = load_state(state)
    assert saved is not None and saved["alerts"]
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["state.json"]


# --------------------------------------------------------------------------- bad files at start


CONFIG = research_config({"interval": "5m"}, countries=("US",))
START = 1_773_064_800.0  # 2026-03-09T14:00:00Z


def _flows(path: Path) -> None:
    lines = []
    for i in range(40):
        t = START + 60 * i
        lines.append(encode_egressd_json(FlowRecord(t, t, "10.20.0.17", "8.8.8.8", 5_000, 5)))
    path.write_bytes(b"\n".join(lines) + b"\n")


def _old_state(config: Config) -> dict[str, Any]:
    """A usable state whose baseline key (research, KP) the replayed input never produces."""
    engine = Engine(config, FixedLabeler("KP"))
    for k in range(3):
        engine.baselines.observe(("research", "KP"), START - 86400 + 300 * k, 10_000)
    return engine.snapshot()


def _corruptions(good: dict[str, Any]) -> dict[str, bytes]:
    blob = orjson.dumps(good)
    return {
        "garbage": bytes(random.Random(5).randrange(256) for _ in range(4096)),
        "empty": b"",
        "truncated": blob[: len(blob) // 2],
        "not-an-object": b"[1, 2, 3]",
        "wrong-version": orjson.dumps({**good, "version": STATE_VERSION + 41}),
        "no-version": orjson.dumps({k: v for k, v in good.items() if k != "version"}),
        "wrong-interval": orjson.dumps({**good, "interval": 60.0}),
        "list-for-table": orjson.dumps({**good, "baselines": []}),
        "bad-baseline": orjson.dumps({**good, "baselines": {"research\tKP": "!!"}}),
        "bad-window": orjson.dumps({**good, "windows": [{"group": "g", "dest": "CN"}]}),
    }


#: corruptions that no longer begin as egressd writes a state file: replay refuses them
_FOREIGN = ("garbage", "not-an-object", "no-version")


@pytest.mark.parametrize("kind", sorted(set(_corruptions({"version": 1})) - set(_FOREIGN)))
def test_replay_moves_a_bad_state_aside_and_learns_again(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = parse_config(CONFIG)
    inputs = tmp_path / "flows.jsonl"
    _flows(inputs)
    state = tmp_path / "state.json"
    bad = _corruptions(_old_state(config))[kind]
    state.write_bytes(bad)
    alerts = tmp_path / "alerts.jsonl"

    with caplog.at_level(logging.WARNING, logger="egressd.state"), alerts.open("wb") as out:
        summary = replay(
            config, "egressd-json", [str(inputs)], out, state_path=state, labeler=FixedLabeler()
        )

    assert summary.records == 40
    moved = list(tmp_path.glob("state.json.bad-*"))
    assert len(moved) == 1 and moved[0].read_bytes() == bad
    assert any("unusable" in r.getMessage() and "moved" in r.getMessage() for r in caplog.records)
    fresh = load_state(state)
    assert fresh is not None and fresh["version"] == STATE_VERSION
    # Learning started again: only what this replay saw is in the new baselines.
    assert set(stored_keys(fresh["baselines"])) == {("research", "JP")}


@pytest.mark.parametrize("kind", [*_FOREIGN, "text", "directory", "fifo"])
def test_replay_refuses_a_state_path_that_is_no_state_file_and_changes_nothing(
    kind: str, tmp_path: Path
) -> None:
    """A path given to --state by mistake (a system file, a capture, a directory, a FIFO) is
    never renamed nor overwritten: the replay stops before reading its input, naming the
    path. (A file that begins as egressd writes a state file but is damaged is moved aside:
    the test above.)"""
    config = parse_config(CONFIG)
    inputs = tmp_path / "flows.jsonl"
    _flows(inputs)
    state = tmp_path / "state"
    if kind == "directory":
        state.mkdir()
        (state / "keep").write_text("x")
    elif kind == "fifo":
        os.mkfifo(state)
    else:
        content = {
            **_corruptions(_old_state(config)),
            "text": b"root:x:0:0:root:/root:/bin/bash\n",
        }[kind]
        state.write_bytes(content)
    before = sorted(p.name for p in tmp_path.iterdir())
    snapshot = state.read_bytes() if state.is_file() else None

    with pytest.raises(EgressdError, match=r"--state .*state"):
        replay(config, "egressd-json", [str(inputs)], io.BytesIO(), state_path=state)

    assert sorted(p.name for p in tmp_path.iterdir()) == before
    if snapshot is not None:
        assert state.read_bytes() == snapshot
    if kind == "directory":
        assert (state / "keep").read_text() == "x"


def _foreign(kind: str, state: Path) -> None:
    """Something that is no state file of egressd's at ``state``."""
    if kind == "directory":
        state.mkdir()
        (state / "keep").write_text("x")
    elif kind == "fifo":
        os.mkfifo(state)
    elif kind == "device":
        state.symlink_to("/dev/zero")
    elif kind == "capture":
        state.write_bytes(bytes.fromhex("d4c3b2a1020004000000000000000000ffff000001000000"))
    else:
        state.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")


_FOREIGN_PATHS = ("system-file", "capture", "directory", "fifo", "device")


@pytest.mark.parametrize("kind", _FOREIGN_PATHS)
def test_check_config_and_run_refuse_a_state_path_that_is_no_state_file(
    kind: str, tmp_path: Path
) -> None:
    """``state.path`` naming something that is no egressd state (/etc/passwd, a directory,
    a device) was moved aside like a damaged state, and the daemon wrote its own in its
    place. ``check-config`` and ``egressd run`` now refuse it, naming the key and the file,
    and nothing is renamed or written (a damaged state that begins as egressd writes one is
    still moved aside at start: test_corrupt_state_is_moved_aside)."""
    state = tmp_path / "state"
    _foreign(kind, state)
    config = tmp_path / "egressd.toml"
    config.write_text(research_config(state=str(state), http="127.0.0.1:0"))
    before = sorted(p.name for p in tmp_path.iterdir())
    snapshot = state.read_bytes() if state.is_file() and kind != "device" else None
    for command in ("check-config", "run"):
        result = subprocess.run(
            [sys.executable, "-m", "egressd.cli", command, "--config", str(config)]
            + (["--allow-root"] if command == "run" else []),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, (command, result.stderr)
        assert f"state.path: '{state}': not " in result.stderr, (command, result.stderr)
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    if snapshot is not None:
        assert state.read_bytes() == snapshot
    if kind == "directory":
        assert (state / "keep").read_text() == "x"


@pytest.mark.parametrize("kind", _FOREIGN_PATHS[:3])
async def test_a_state_path_that_became_no_state_file_stops_the_start_before_it_starts(
    kind: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The file is checked again when the daemon starts (a configuration checked before the
    file appeared; a state path from $STATE_DIRECTORY, which no key names): the start stops
    with an error naming it, nothing is served, and nothing is moved aside or saved."""
    for named in (True, False):
        where = tmp_path / ("named" if named else "directory")
        where.mkdir()
        state = where / "state.json"
        text = research_config(state=str(state) if named else None, http="127.0.0.1:0")
        daemon = Daemon(
            parse_config(text),  # (parsed while no file is there: a first start)
            environ={} if named else {"STATE_DIRECTORY": str(where)},
            sources=[],
        )
        _foreign(kind, state)
        before = sorted(p.name for p in where.iterdir())
        with caplog.at_level(logging.ERROR):
            assert await asyncio.wait_for(daemon.run(), 30) == 1
        key = "state.path" if named else "$STATE_DIRECTORY"
        assert f"cannot start: {key}: '{state}': not " in caplog.text
        assert daemon.http.bound is None
        assert sorted(p.name for p in where.iterdir()) == before


def test_replay_restores_a_good_state(tmp_path: Path) -> None:
    """The control case: a usable state is kept and extended, nothing is moved aside."""
    config = parse_config(CONFIG)
    inputs = tmp_path / "flows.jsonl"
    _flows(inputs)
    state = tmp_path / "state.json"
    save_state(state, _old_state(config))
    with (tmp_path / "alerts.jsonl").open("wb") as out:
        replay(config, "egressd-json", [str(inputs)], out, state_path=state, labeler=FixedLabeler())
    assert not list(tmp_path.glob("state.json.bad-*"))
    saved = load_state(state)
    assert saved is not None
    assert set(stored_keys(saved["baselines"])) == {("research", "JP"), ("research", "KP")}


# ------------------------------------------------- count bounds of what a state file restores

#: a small max_keys, so that a crafted file goes past it cheaply
BOUND_KEYS = 40
BOUND_CONFIG = f"""
[networks]
local = ["10.0.0.0/8"]
[[groups]]
name = "research"
sources = ["10.20.0.0/16"]
[[groups]]
name = "office"
sources = ["10.30.0.0/16"]
[detection]
interval = "5m"
allowed_lateness = "1m"
learning = "1d"
max_keys = {BOUND_KEYS}
[state]
path = "{{state}}"
"""
SAVED_AT = 1_773_064_800.0  # the crafted files' event time (an interval boundary)
FUTURE = SAVED_AT + 10 * 86400.0


def _alert(name: str, group: str, dest: str, state: str, when: float) -> dict[str, Any]:
    return {
        "key": [name, group, dest],
        "labels": {"alertname": name},
        "annotations": {"bytes": "1"},
        "state": state,
        "pending_since": when,
        "starts_at": when,
        "last_true": when,
        "updated": when,
    }


def crafted_state(config: Config) -> dict[str, Any]:
    """A state file as an attacker (or a bad disk) could write it: within state.max_size,
    but holding far more than the engine ever keeps, with times in the future of its own
    event time and values learning never writes."""
    data = Engine(config, FixedLabeler()).snapshot()
    data["event_time"] = SAVED_AT
    data["closed_upto"] = SAVED_AT - 300.0
    data["last_tick"] = SAVED_AT - 300.0
    row = [1000, 2, 1, {"10.20.0.5": 1000}, {"3.5.140.2": 1000}, 0, 0]
    # Open intervals: 5 x 100 keys in the intervals the lateness holds open, 30 intervals
    # a long way back, one after the saved event time.
    buckets = [SAVED_AT - 300.0 * i for i in range(5)] + [
        SAVED_AT - 86400.0 * (i + 1) for i in range(30)
    ]
    data["open_buckets"] = [
        [start, "research", f"C{k % 26}|r{k}|{k + 1}", "", *row]
        for start in buckets
        for k in range(100)
    ] + [[FUTURE, "research", "CN", "", *row]]
    # Active alerts: 100 spikes (the latest updated last), 5 of a name nothing evaluates, a
    # pending one dated in the future (it would wait for ever and hold its key silent).
    data["alerts"] = (
        [
            _alert("EgressVolumeSpike", "research", f"C{k}", "firing", SAVED_AT - 1000 + k)
            for k in range(100)
        ]
        + [_alert("Bogus", "research", f"B{k}", "firing", SAVED_AT) for k in range(5)]
        + [_alert("EgressVolumeSpike", "research", "CN", "pending", FUTURE)]
        + [_alert("EgressUnexpectedDestination", "research", "RU", "resolved", SAVED_AT)]
    )
    # Spike held keys: 100, one held in the future, one with a negative peak.
    data["spikes"]["held"] = (
        [["EgressVolumeSpike", "research", f"H{k}", SAVED_AT - 3000 + k, 10.0] for k in range(100)]
        + [["EgressVolumeSpike", "research", "F", FUTURE, 10.0]]
        + [["EgressVolumeSpike", "research", "N", SAVED_AT - 300, -1.0]]
    )
    data["spikes"]["last"] = [["EgressVolumeSpike", "research", f"L{k}"] for k in range(100)]
    # Learned countries: 3,000 in one group, one with negative bytes, one whose use is cut
    # short; a group whose learning started in the future; 20 groups nobody configured.
    countries = {f"X{k}": 10_000 + k for k in range(3000)}
    use = {c: [5, 2, 1] for c in countries}
    countries["NEG"], use["NEG"] = -5, [5, 2, 1]
    countries["CUT"], use["CUT"] = 50, [5]
    data["learned"] = {
        "research": {"started": SAVED_AT - 86400.0, "countries": countries, "use": use},
        "office": {"started": FUTURE, "countries": {"US": 5}, "use": {"US": [1, 1, 0]}},
        **{
            f"gone{k}": {"started": SAVED_AT - k, "countries": {"US": 5}, "use": {"US": [1, 1, 0]}}
            for k in range(20)
        },
    }
    data["group_rates"] = {f"rate{k}": [10.0, 5.0] for k in range(20)}
    return data


def test_a_crafted_state_is_held_to_what_the_running_engine_keeps() -> None:
    config = parse_config(BOUND_CONFIG.format(state="/nonexistent/s.json"))
    engine = Engine(config, FixedLabeler())
    engine.restore(orjson.loads(orjson.dumps(crafted_state(config))))
    dropped = engine.dropped_on_load

    # Open intervals: only those the lateness holds open (3 with 1m lateness on 5m), at most
    # max_keys keys each (the heaviest), none after the saved event time.
    buckets = engine.aggregator.buckets
    assert sorted(buckets) == [SAVED_AT - 600.0, SAVED_AT - 300.0, SAVED_AT]
    assert all(len(bucket) == BOUND_KEYS for bucket in buckets.values())
    assert dropped["open_intervals"] == 35 * 100 + 1 - 3 * BOUND_KEYS

    # Alerts: at most max_keys of a name (the latest updated), none of an unknown name, none
    # dated after the saved event time, none resolved.
    active = engine.book.active
    assert len(active) == BOUND_KEYS
    assert {key[0] for key in active} == {"EgressVolumeSpike"}
    assert min(a.updated for a in active.values()) == SAVED_AT - 1000 + 100 - BOUND_KEYS
    assert ("EgressVolumeSpike", "research", "CN") not in active
    assert dropped["alerts"] == 100 - BOUND_KEYS + 5 + 1 + 1

    # Spike held keys: at most max_keys, none in the future, no negative peak; the keys
    # evaluated when idle are those of active spike alerts only.
    held = engine.spikes._held
    assert len(held) == BOUND_KEYS
    assert all(when <= SAVED_AT and peak >= 0 for when, peak in held.values())
    assert dropped["spike_held"] == 100 - BOUND_KEYS + 2
    assert set(engine.spikes._last) <= set(active)

    # Learned countries: at most MAX_LEARNED_COUNTRIES a group (the heaviest), none with
    # negative bytes or a short use; a learning start set back to the saved event time, so
    # the group's learning ends (it does not hold every destination expected for ever).
    research = engine.policy.learned["research"].countries
    assert len(research) == MAX_LEARNED_COUNTRIES
    assert "NEG" not in research and "CUT" not in research
    assert min(research.values()) == 10_000 + 3000 - MAX_LEARNED_COUNTRIES
    assert engine.policy.learned["office"].started == SAVED_AT
    assert not engine.policy.is_learning("office", SAVED_AT + 86400.0)
    # Groups nobody configured: as many as are configured (research, office, other).
    assert len(engine.policy.learned) == 2 + 3
    assert len(engine.group_rates.levels) == 3
    assert dropped["learned"] == 3000 - MAX_LEARNED_COUNTRIES + 2 + 17
    assert dropped["groups"] == 17

    # What stays is still judged: the next intervals close and evaluate without error.
    engine.advance(SAVED_AT + 3600.0)
    assert not engine.aggregator.buckets


async def test_a_daemon_logs_and_counts_what_a_state_file_held_beyond_the_bounds(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = parse_config(BOUND_CONFIG.format(state=tmp_path / "s.json"))
    (tmp_path / "s.json").write_bytes(orjson.dumps(crafted_state(config)))
    with caplog.at_level(logging.WARNING, logger="egressd"):
        daemon = Daemon(config, environ={}, sources=[])
        daemon.restore_state()
    assert daemon.stats.state_restored
    lines = [r.getMessage() for r in caplog.records if "left out on load" in r.getMessage()]
    assert len(lines) == 1, caplog.text
    assert "open_intervals 3381" in lines[0] and "alerts 67" in lines[0]
    counted = daemon.stats.state_entries_dropped
    assert counted["open_intervals"] == 3381
    assert counted["spike_held"] == 62
    text = generate_latest(daemon.registry).decode()
    assert 'egressd_state_entries_dropped_total{part="alerts"} 67.0' in text
