"""``egressd replay --format netflow-pcap`` through columns gives what the record path gives.

The same pcap of export datagrams (more flows than one replay chunk, a transfer that pages,
a burst of flows and lone flows stamped far ahead, some damaged datagrams) is replayed by
the columnar path and by the record path (``COLUMN_FORMATS`` emptied); alert events and
every summary figure but the time taken must be equal.
"""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import pytest

import egressd.replay as replay_module
from egressd.config import parse_config
from egressd.replay import ReplaySummary, replay
from tests import netflow_builders as nb

CONFIG = """
[networks]
local = ["10.0.0.0/8"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16"]
expected_countries = ["GB", "US"]

[detection]
interval = "5m"
unexpected_min_bytes = "200KB"
unexpected_window = "1h"
"""
T0 = 1_773_064_800
FIELDS = [(8, 4), (12, 4), (7, 2), (11, 2), (4, 1), (1, 4), (2, 4), (22, 4), (21, 4)]
CN = bytes([47, 100, 23, 45])
GB = bytes([81, 2, 69, 160])
US = bytes([8, 8, 8, 8])


def _frame(payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, 2055, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
        bytes([192, 0, 2, 1]), bytes([192, 0, 2, 9]),
    )  # fmt: skip
    return b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\x08\x00" + ip + udp


def write_pcap(path: Path, datagrams: list[tuple[float, bytes]]) -> None:
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for when, datagram in datagrams:
            frame = _frame(datagram)
            seconds = int(when)
            out.write(struct.pack("<IIII", seconds, 0, len(frame), len(frame)) + frame)


def build(seed: int) -> list[tuple[float, bytes]]:
    """Two hours of v9 export: 30 flows a datagram, one upload to CN in the second hour."""
    rng = random.Random(seed)
    uptime = 10_000_000
    template = nb.template_set({256: FIELDS}, ipfix=False)  # type: ignore[dict-item]
    out: list[tuple[float, bytes]] = []
    for i in range(900):
        secs = T0 + i * 8
        rows = []
        for _ in range(30):
            # few enough addresses for the top-talker sketches to be exact on both paths
            dst = rng.choice([GB, US, bytes([rng.randrange(1, 20), 1, 2, 3])])
            size = rng.randrange(40, 50_000)
            if i > 450 and rng.random() < 0.05:
                dst, size = CN, 400_000
            end = uptime - rng.randrange(0, 2_000)
            if 600 <= i < 603 or (300 <= i < 303 and not rows):
                # a burst stamped three days ahead (event time jumps), and lone records so
                # stamped (they count at the limit)
                end = (end + 3 * 86_400_000) % 2**32
            rows.append(
                [bytes([10, 20, 0, rng.randrange(1, 20)]), dst, rng.randrange(1024, 65535),
                 443, 6, size, max(1, size // 1400), end - 500, end]
            )  # fmt: skip
        sets = [nb.data_set(256, FIELDS, rows)]  # type: ignore[arg-type]
        if i % 100 == 0:
            sets.insert(0, template)
        data = nb.v9_datagram(sets, uptime_ms=uptime, unix_secs=secs, seq=i)
        if i % 97 == 5:
            data = data[:30]  # damaged: its set is cut short
        out.append((secs, data))
        uptime += 8_000
    return out


def _run(path: Path) -> tuple[bytes, ReplaySummary]:
    out = io.BytesIO()
    summary = replay(parse_config(CONFIG), "netflow-pcap", [str(path)], out)
    summary.seconds = 0.0
    return out.getvalue(), summary


@pytest.mark.parametrize("seed", [1, 2])
def test_columns_replay_equals_records_replay(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    path = tmp_path / "export.pcap"
    write_pcap(path, build(seed))
    by_columns, summary_columns = _run(path)
    monkeypatch.setattr(replay_module, "COLUMN_FORMATS", ())
    by_records, summary_records = _run(path)
    assert summary_columns == summary_records
    assert by_columns == by_records
    # what is compared is not empty: it pages, skips the damage, clamps the burst
    assert b'"dst_country":"CN"' in by_columns
    assert summary_columns.records > 2 * replay_module._CHUNK
    assert summary_columns.skipped
    assert summary_columns.future_records > 0
