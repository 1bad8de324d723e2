"""Clocks that lie: an exporter stepping back, a state file from the future, a far-future record.

Event time follows the flows; whenever it stops moving, wall time (in the daemon) or the
stream itself (in replay) must keep intervals closing, or nothing pages.
"""

from __future__ import annotations

import io
import logging
from datetime import datetime
from pathlib import Path

import orjson
import pytest

from egressd.app import TICK, Daemon, EngineFeed
from egressd.clock import SteadyWall
from egressd.config import parse_config
from egressd.decode.egressd_json import encode_egressd_json
from egressd.detect.alerts import FIRING, Alert
from egressd.model import FlowRecord
from egressd.pipeline import IDLE_AFTER, Engine
from egressd.replay import replay
from tests.integration_support import research_config

CONFIG = research_config({"interval": "5m", "allowed_lateness": "1m"}, state="{state}")

T0 = 1_773_064_800.0  # an interval boundary
US = "3.5.140.2"
CN = "47.100.23.45"


class FakeClock:
    """Wall time T0 + t and a monotonic clock t, moved by the test."""

    def __init__(self) -> None:
        self.t = 0.0

    def wall(self) -> float:
        return T0 + self.t

    def monotonic(self) -> float:
        return self.t


def live_daemon(tmp_path: Path, clock: FakeClock) -> Daemon:
    daemon = Daemon(parse_config(CONFIG.format(state=tmp_path / "s.json")), environ={}, sources=[])
    daemon.feed = EngineFeed(daemon, wall=clock.wall, monotonic=clock.monotonic)
    daemon.restore_state()
    return daemon


def cn_firing(daemon: Daemon) -> bool:
    return any(
        a.state == FIRING and a.labels["dst_country"] == "CN" for a in daemon.engine.active_alerts()
    )


def test_the_only_exporter_stepping_its_clock_back_an_hour_still_pages(tmp_path: Path) -> None:
    clock = FakeClock()
    daemon = live_daemon(tmp_path, clock)
    step_back_at, exfiltration_at = 600.0, 900.0
    fired_at = None
    while clock.t <= 2400 and fired_at is None:
        if clock.t % 10 == 0:
            # The exporter stamps flows with its own clock, an hour behind from step_back_at.
            stamp = clock.wall() - (3600 if clock.t >= step_back_at else 0)
            batch = [FlowRecord(stamp - 10, stamp, "10.20.0.5", US, 1_000_000, 800)]
            if clock.t == exfiltration_at:
                batch.append(FlowRecord(stamp - 10, stamp, "10.20.0.17", CN, 100_000_000, 70_000))
            daemon.feed.submit(batch)
        daemon.idle_tick(clock.monotonic())  # the ticker, every TICK seconds
        if cn_firing(daemon):
            fired_at = clock.t
        clock.t += TICK
    assert fired_at is not None, "the exfiltration never paged"
    # Within an interval plus the lateness (and the idle delay) of wall time, as when quiet.
    assert fired_at - exfiltration_at <= 300 + 60 + IDLE_AFTER + 2 * TICK
    # Event time kept up with wall time through the step.
    assert daemon.engine.event_time() >= clock.wall() - IDLE_AFTER - 2 * TICK
    assert daemon.stats.idle_advances > 0


def test_a_punctual_exporter_is_not_overtaken_by_wall_time(tmp_path: Path) -> None:
    """While flows move event time on, wall time leaves it alone."""
    clock = FakeClock()
    daemon = live_daemon(tmp_path, clock)
    while clock.t <= 900:
        if clock.t % 10 == 0:
            stamp = clock.wall() - 30  # export delay
            daemon.feed.submit([FlowRecord(stamp - 10, stamp, "10.20.0.5", US, 1_000_000, 800)])
        daemon.idle_tick(clock.monotonic())
        clock.t += TICK
    assert daemon.stats.idle_advances == 0
    assert daemon.engine.aggregator.late_records == 0


def test_one_forged_record_from_the_future_shifts_event_time_only_until_wall_time_catches_up(
    tmp_path: Path,
) -> None:
    # One record stamped a day ahead counts at wall time + max_clock_ahead (5 min) and moves
    # event time there. Before: flows stamped behind it were no progress, so from then on
    # wall time carried event time on from the forged stamp, 5 min ahead for good (and in
    # every saved state): every later record of the punctual exporter was late.
    clock = FakeClock()
    daemon = live_daemon(tmp_path, clock)
    ahead = daemon.config.detection.max_clock_ahead
    forged_at = 300.0
    late_after_recovery = 0
    while clock.t <= 2400:
        if clock.t % 10 == 0:
            stamp = clock.wall() - 30  # export delay
            batch = [FlowRecord(stamp - 10, stamp, "10.20.0.5", US, 1_000_000, 800)]
            if clock.t == forged_at:
                forged = clock.wall() + 86400
                batch.append(FlowRecord(forged - 10, forged, "10.20.0.9", US, 1_000, 1))
            daemon.feed.submit(batch)
            if clock.t == forged_at:
                assert daemon.engine.event_time() == clock.wall() + ahead
        daemon.idle_tick(clock.monotonic())
        if clock.t == forged_at + ahead + 60 + IDLE_AFTER + 2 * TICK:
            late_after_recovery = daemon.engine.aggregator.late_records
        clock.t += TICK
    # Once wall time passed the forged stamp, event time follows wall time again: no record
    # of the punctual exporter (30 s behind, within the 1 min lateness) is late any more.
    assert daemon.engine.event_time() <= clock.wall()
    assert daemon.engine.aggregator.late_records == late_after_recovery


@pytest.mark.parametrize(
    "ahead",
    [86400.0, 32_503_680_000.0 - T0],  # a day ahead; the year 3000
    ids=["one-day", "year-3000"],
)
async def test_a_state_file_from_the_future_is_set_back_on_load(
    tmp_path: Path, ahead: float, caplog: pytest.LogCaptureFixture
) -> None:
    # A daemon whose clock ran `ahead` saves its state with an open interval in it.
    future = FakeClock()
    future.t = ahead
    first = live_daemon(tmp_path, future)
    stamp = future.wall()
    first.feed.submit([FlowRecord(stamp - 10, stamp, "10.20.0.5", US, 7_000, 5)])
    assert first.engine.aggregator.open_totals()
    assert await first.save()

    clock = FakeClock()
    with caplog.at_level(logging.WARNING, logger="egressd"):
        daemon = live_daemon(tmp_path, clock)
    assert daemon.stats.state_restored
    assert daemon.stats.state_time_clamped == 1
    assert "max_clock_ahead" in caplog.text
    limit = clock.wall() + daemon.config.detection.max_clock_ahead
    assert daemon.engine.event_time() <= limit
    assert daemon.engine.aggregator.closed_upto <= limit
    assert daemon.engine.last_tick <= limit
    # What the open interval counted is kept, in an interval that can close.
    assert sum(daemon.engine.aggregator.open_totals().values()) == 7_000
    assert all(start <= limit for start in daemon.engine.aggregator.buckets)

    # The demo's exfiltration (6 GB to CN) now pages at wall time, within an interval.
    fired: list[Alert] = []
    while clock.t <= 1200 and not fired:
        if clock.t % 10 == 0 and clock.t <= 600:
            stamp = clock.wall()
            daemon.feed.submit(
                [FlowRecord(stamp - 10, stamp, "10.20.0.17", CN, 100_000_000, 70_000)]
            )
        daemon.idle_tick(clock.monotonic())
        fired = [a for a in daemon.engine.active_alerts() if a.labels["dst_country"] == "CN"]
        clock.t += TICK
    assert fired, "nothing paged after restoring a state from the future"
    assert fired[0].starts_at <= clock.wall() + daemon.config.detection.max_clock_ahead


async def test_a_state_from_the_recent_past_is_left_alone(tmp_path: Path) -> None:
    past = FakeClock()
    past.t = -3600
    first = live_daemon(tmp_path, past)
    stamp = past.wall()
    first.feed.submit([FlowRecord(stamp - 10, stamp, "10.20.0.5", US, 7_000, 5)])
    assert await first.save()
    daemon = live_daemon(tmp_path, FakeClock())
    assert daemon.stats.state_time_clamped == 0
    assert daemon.engine.event_time() == stamp


def replay_lines(records: list[FlowRecord]) -> bytes:
    return b"".join(encode_egressd_json(r) + b"\n" for r in records)


def test_one_far_future_record_does_not_hold_replayed_alerts_until_the_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A year-3000 record early in a replay once held every alert until the final flush."""
    records = []
    for step in range(720):  # two hours, a record every 10 s
        now = T0 + step * 10
        records.append(FlowRecord(now - 10, now, "10.20.0.5", US, 1_000_000, 800))
        if step == 30:
            records.append(FlowRecord(32_503_679_990.0, 32_503_680_000.0, "10.20.0.6", US, 1, 1))
        if 360 <= step < 400:  # 40 x 10 MB to CN from the first hour on
            records.append(FlowRecord(now - 10, now, "10.20.0.17", CN, 10_000_000, 7_000))
    path = tmp_path / "flows.jsonl"
    path.write_bytes(replay_lines(records))
    config = parse_config(CONFIG.format(state=tmp_path / "unused.json"))
    out = io.BytesIO()
    before_flush: list[int] = []
    flush = Engine.flush

    def noting_flush(engine: Engine) -> list[Alert]:
        before_flush.append(out.getvalue().count(b"\n"))
        return flush(engine)

    monkeypatch.setattr(Engine, "flush", noting_flush)
    summary = replay(config, "egressd-json", [str(path)], out)
    events = [orjson.loads(line) for line in out.getvalue().splitlines()]
    # The page came out while the stream was read, not at the final flush ...
    assert before_flush == [len(events)]
    (event,) = [e for e in events if e["labels"]["dst_country"] == "CN"]
    assert event["status"] == "firing"
    # ... at the time of the transfer.
    starts = datetime.fromisoformat(event["startsAt"]).timestamp()
    assert T0 + 3600 <= starts <= T0 + 3600 + 2 * 300
    assert summary.future_records == 1
    # It counted as though stamped where its neighbours agree (plus max_clock_ahead): it
    # closed a few intervals early at most, and the flows in them still counted, late.
    assert summary.late_records < 60


def test_a_real_gap_in_a_replay_moves_event_time_on(tmp_path: Path) -> None:
    """Flows resuming after a quiet day are not mistaken for a clock far ahead."""
    records = [
        FlowRecord(T0 + s * 10 - 10, T0 + s * 10, "10.20.0.5", US, 1_000, 1) for s in range(100)
    ]
    later = T0 + 86400
    records += [
        FlowRecord(later + s * 10 - 10, later + s * 10, "10.20.0.17", CN, 10_000_000, 7_000)
        for s in range(40)
    ]
    path = tmp_path / "flows.jsonl"
    path.write_bytes(replay_lines(records))
    config = parse_config(CONFIG.format(state=tmp_path / "unused.json"))
    out = io.BytesIO()
    summary = replay(config, "egressd-json", [str(path)], out)
    assert summary.future_records == 0
    (event,) = [orjson.loads(line) for line in out.getvalue().splitlines()]
    assert datetime.fromisoformat(event["startsAt"]).timestamp() >= later


@pytest.mark.parametrize("step", [-2 * 86400.0, -3600.0, 2 * 86400.0])
def test_the_hosts_clock_stepping_by_hours_or_days_does_not_hold_detection(
    tmp_path: Path, step: float
) -> None:
    """The host's clock is set back (or forward) while the exporter's is right. Back, wall
    time + max_clock_ahead fell behind every flow: all counted late, and nothing paged until
    the host's clock caught up, days later. Wall time as the daemon reads it never steps back."""
    clock = FakeClock()
    daemon = live_daemon(tmp_path, clock)
    step_at, exfiltration_at = 600.0, 900.0
    host = {"offset": 0.0}
    daemon.feed.wall = lambda: clock.wall() + host["offset"]
    fired_at = None
    while clock.t <= 2400 and fired_at is None:
        if clock.t == step_at:
            host["offset"] = step
        if clock.t % 10 == 0:
            stamp = T0 + clock.t  # the exporter's clock is right
            batch = [FlowRecord(stamp - 10, stamp, "10.20.0.5", US, 1_000_000, 800)]
            if clock.t == exfiltration_at:
                batch.append(FlowRecord(stamp - 10, stamp, "10.20.0.17", CN, 100_000_000, 70_000))
            daemon.feed.submit(batch)
        daemon.idle_tick(clock.monotonic())
        if cn_firing(daemon):
            fired_at = clock.t
        clock.t += TICK
    assert fired_at is not None, "the exfiltration never paged"
    assert fired_at - exfiltration_at <= 300 + 60 + IDLE_AFTER + 2 * TICK
    assert daemon.engine.aggregator.late_records == 0
    assert daemon.engine.stats.future_records == 0


def test_wall_time_as_read_never_steps_back() -> None:
    readings = {"wall": 1000.0, "mono": 0.0}
    wall = SteadyWall(lambda: readings["wall"], lambda: readings["mono"])
    assert wall() == 1000.0
    readings.update(wall=500.0, mono=10.0)  # set back 500 s, 10 s later
    assert wall() == 1010.0 and wall.stepped_back == 1
    readings.update(wall=520.0, mono=30.0)
    assert wall() == 1030.0
    readings.update(wall=5000.0, mono=31.0)  # put forward: taken as it comes
    assert wall() == 5000.0
    readings.update(wall=5001.0, mono=32.0)
    assert wall() == 5001.0 and wall.stepped_back == 2
