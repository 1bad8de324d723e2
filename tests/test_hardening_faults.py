"""Faults a hostile network or client can cause in the daemon's own machinery.

The state writer must take any value; a flood of clients must not starve the collector or
the state saves; an Alertmanager outbox smaller than the firing set must still deliver
every alert.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from egressd.app import Daemon
from egressd.baseline.statefile import INT_MAX, encode_state, load_state, save_state
from egressd.config import parse_config
from egressd.model import FlowRecord

CONFIG = """
[networks]
local = ["10.0.0.0/8"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16"]
expected_countries = ["GB", "US"]

[state]
path = "{state}"
"""

T0 = 1_773_064_800.0


# --------------------------------------------------------------------------- state writer


def test_state_writer_saturates_an_integer_beyond_64_bits(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    counted: list[int] = []
    size = save_state(
        path,
        {"version": 1, "sums": {"a": 2**70, "b": [5, -(2**70)], "c": 7}},
        on_clamped=counted.append,
    )
    data = load_state(path)
    assert data is not None and size == path.stat().st_size
    assert data["sums"] == {"a": INT_MAX, "b": [5, -(2**63)], "c": 7}
    assert counted == [2]
    # Values orjson takes are written exactly, without the slow path.
    blob, clamped = encode_state({"x": 2**64 - 1, "y": -(2**63)})
    assert clamped == 0 and orjson.loads(blob) == {"x": 2**64 - 1, "y": -(2**63)}


async def test_daemon_saves_a_byte_sum_beyond_64_bits_and_restores_it(tmp_path: Path) -> None:
    """Two records of 2^63 bytes each made every save fail ("Integer exceeds 64-bit range")."""
    state = tmp_path / "state.json"
    # The engine now skips such records (tests/test_hardening_counts.py); a link rate no
    # bound can reach lets them into an open interval, so the writer itself is tested here.
    config = parse_config(CONFIG.format(state=state) + '[detection]\nmax_link_rate = "1000000TB"\n')
    daemon = Daemon(config, environ={}, sources=[])
    daemon.restore_state()
    huge = [
        FlowRecord(T0 + 50, T0 + 60, "10.20.0.17", "81.2.69.160", 2**63, 1),
        FlowRecord(T0 + 50, T0 + 61, "10.20.0.17", "81.2.69.160", 2**63, 1),
    ]
    daemon.feed.submit(huge)
    assert sum(daemon.engine.aggregator.open_totals().values()) >= 2**64
    assert await daemon.save()
    assert daemon.stats.state_save_errors == 0
    assert daemon.stats.state_values_clamped >= 1

    second = Daemon(config, environ={}, sources=[])
    second.restore_state()
    assert second.stats.state_restored
    totals = second.engine.aggregator.open_totals()
    assert list(totals.values()) == [INT_MAX]
    # Learning goes on from the restored state, and the next save works too.
    second.feed.submit([FlowRecord(T0 + 70, T0 + 80, "10.20.0.17", "81.2.69.160", 2**63, 1)])
    assert await second.save()
