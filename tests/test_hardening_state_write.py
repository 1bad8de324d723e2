"""A state save writes the baselines' records text (370 MB at a million keys) a piece at a
time: encoded and joined to the rest at once, it was copied twice, each copy one call
holding the interpreter's lock beside the event loop. The file is the same bytes."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from egressd.app import Daemon
from egressd.baseline import statefile
from egressd.baseline.statefile import encode_state, encode_state_pieces, parse_state, save_state
from egressd.config import parse_config
from tests.integration_support import research_config
from tests.test_daemon_app import T0, flow


def learned(tmp_path: Path) -> Daemon:
    daemon = Daemon(
        parse_config(research_config(state=str(tmp_path / "state.json"))), environ={}, sources=[]
    )
    for step in range(4):
        daemon.feed.submit(
            [
                flow("10.20.0.17", dst, 2_000_000 + step, T0 + 300 * step + 100)
                for dst in ("81.2.69.160", "47.100.23.45", "8.8.8.8", "1.1.1.1", "5.9.0.1")
            ]
        )
    assert len(daemon.engine.baselines) >= 4
    return daemon


def test_a_save_writes_the_records_a_piece_at_a_time_as_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = learned(tmp_path)
    snapshot = daemon.engine.snapshot()
    monkeypatch.setattr(statefile.time, "time", lambda: T0 + 5000)  # (saved_at)
    whole, _ = encode_state({**snapshot, "saved_at": T0 + 5000})
    monkeypatch.setattr(statefile, "BASE64_PIECE", 8)
    records = snapshot["baselines"]["records"]
    assert len(records) > 40 * 8
    pieces, clamped = encode_state_pieces({**snapshot, "saved_at": T0 + 5000})
    assert clamped == 0 and b"".join(pieces) == whole
    assert max(len(piece) for piece in pieces[2:-1]) == 8 and len(pieces) > 40

    # save_state writes the pieces (never the joined bytes) and the file reads back whole.
    def joined(payload: object) -> None:
        raise AssertionError("save_state joined the pieces")

    monkeypatch.setattr(statefile, "encode_state", joined)
    path = tmp_path / "saved.json"
    assert save_state(path, snapshot) == len(whole)
    assert path.read_bytes() == whole
    assert parse_state(path.read_bytes()) == orjson.loads(whole)


def test_records_that_are_no_base64_are_written_by_orjson_as_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A text orjson would escape (not base64 in its last piece) falls back to orjson's
    whole encoding, as the whole text's check did."""
    monkeypatch.setattr(statefile, "BASE64_PIECE", 4)
    payload = {"version": 2, "baselines": {"format": 2, "records": "QUJDRA==" * 5 + 'A"B\\'}}
    pieces, _ = encode_state_pieces(payload)
    assert pieces == [orjson.dumps(payload)]
    assert orjson.loads(b"".join(pieces)) == payload


async def test_a_saved_state_written_in_pieces_restores_the_same_baselines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = learned(tmp_path)
    monkeypatch.setattr(statefile, "BASE64_PIECE", 12)
    assert await first.save()
    second = Daemon(first.config, environ={}, sources=[])
    await second.restore_state_off_loop()
    assert list(second.baselines(None)) == list(first.baselines(None))
    assert second.engine.snapshot()["baselines"] == first.engine.snapshot()["baselines"]
