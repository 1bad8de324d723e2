"""A state save takes on the event loop only a copy of the baselines' records (their rows):
their base64 text (370 MB at a million keys, over a second to make) is encoded in the
save's thread, a piece at a time, while the loop goes on. The file is the same bytes."""

from __future__ import annotations

import asyncio
import base64
import binascii
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from egressd.baseline import statefile
from egressd.baseline.statefile import Base64Records, encode_state, encode_state_pieces
from tests.test_daemon_app import T0, flow
from tests.test_hardening_state_write import learned

DESTINATIONS = ("81.2.69.160", "47.100.23.45", "8.8.8.8", "1.1.1.1", "5.9.0.1")


@pytest.mark.parametrize("piece", [4, 8, 12, 1 << 22])
def test_records_encoded_a_piece_at_a_time_are_the_text_of_all_at_once(
    piece: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(statefile, "BASE64_PIECE", piece)
    for size in range(40):  # (every padding: sizes that are no multiple of 3)
        data = bytes(range(7, 7 + size))
        records = Base64Records(np.frombuffer(data, np.uint8))
        text = base64.b64encode(data).decode()
        assert b"".join(records.pieces()) == text.encode() and records.text() == text
        assert records == text and records == Base64Records(np.frombuffer(data, np.uint8))
    assert Base64Records(np.zeros(3, np.uint8)) != Base64Records(np.ones(3, np.uint8))


async def test_a_save_writes_the_same_bytes_as_the_records_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon = learned(tmp_path)
    snapshot = daemon.engine.snapshot()  # (the text, as every caller but a save sees it)
    saving = daemon.engine.snapshot(records_text=False)
    assert isinstance(saving["baselines"]["records"], Base64Records)
    assert saving == snapshot  # (value equality: the rows and their text)
    monkeypatch.setattr(statefile.time, "time", lambda: T0 + 5000)  # (saved_at)
    whole, _ = encode_state({**snapshot, "sources": {}, "saved_at": T0 + 5000})
    monkeypatch.setattr(statefile, "BASE64_PIECE", 12)  # (many pieces)
    pieces, clamped = encode_state_pieces({**saving, "sources": {}, "saved_at": T0 + 5000})
    assert clamped == 0 and b"".join(pieces) == whole and len(pieces) > 40
    assert encode_state({**saving, "sources": {}, "saved_at": T0 + 5000})[0] == whole
    assert await daemon.save()
    assert (tmp_path / "state.json").read_bytes() == whole


async def test_the_loop_learns_while_a_save_encodes_and_the_file_is_the_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The save's thread, between two pieces of the records' text, waits for the event
    loop to learn more traffic (records changed in place): the loop runs meanwhile, no
    record is encoded on it, and the file holds the records as they were when the save
    began."""
    daemon = learned(tmp_path)
    before = daemon.engine.snapshot()
    monkeypatch.setattr(statefile.time, "time", lambda: T0 + 5000)  # (saved_at)
    whole, _ = encode_state({**before, "sources": {}, "saved_at": T0 + 5000})
    monkeypatch.setattr(statefile, "BASE64_PIECE", 12)
    loop, loop_thread = asyncio.get_running_loop(), threading.get_ident()
    encoded_on: list[int] = []
    learned_meanwhile = threading.Event()
    real = binascii.b2a_base64

    def learn() -> None:
        for step in range(4, 8):
            daemon.feed.submit(
                [flow("10.20.0.17", dst, 9_000_000, T0 + 300 * step + 100) for dst in DESTINATIONS]
            )
        learned_meanwhile.set()

    def encode(data: Any, *, newline: bool = True) -> bytes:
        encoded_on.append(threading.get_ident())
        if len(encoded_on) == 2 and encoded_on[-1] != loop_thread:
            loop.call_soon_threadsafe(learn)
            learned_meanwhile.wait(60)  # (a bound against a hang, not a timing)
        return real(data, newline=newline)

    monkeypatch.setattr(binascii, "b2a_base64", encode)
    assert await daemon.save()
    assert len(encoded_on) > 2 and loop_thread not in encoded_on
    assert learned_meanwhile.is_set()
    after = daemon.engine.snapshot()["baselines"]["records"]
    assert after != before["baselines"]["records"]  # (the loop changed the records)
    assert (tmp_path / "state.json").read_bytes() == whole
