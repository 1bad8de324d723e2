"""The unexpected-destination rule's week window: a drip of a few MB an hour pages within the
week, its hourly buckets stay bounded and survive a restart, and a transfer that stopped
resolves and does not page again for the week its bytes stay in the window."""

from __future__ import annotations

import orjson

from egressd.config import parse_config
from egressd.detect.alerts import FIRING, RESOLVED, Alert
from egressd.enrich.embedded import EmbeddedCountryLabeler
from egressd.model import FlowRecord
from egressd.pipeline import Engine
from tests.integration_support import research_config

T0 = 1_773_014_400.0  # a Monday, 00:00 UTC
HOUR = 3600.0
DAY = 86400.0
MB = 1_000_000
GB = 1_000_000_000
US = "8.8.8.8"
CN = "47.100.23.45"
DE = "88.198.55.33"
HOST = "10.20.0.7"
#: the configured floors (a group this size would otherwise have them shrink)
CONFIG = research_config({"interval": "5m", "learning": "1d"}, countries=("US",)) + (
    'unexpected_floors_scale_below = "0"\n'
)


def _engine() -> Engine:
    return Engine(parse_config(CONFIG), EmbeddedCountryLabeler())


def _flow(t: float, dst: str, size: int) -> FlowRecord:
    return FlowRecord(T0 + t - 1, T0 + t, HOST, dst, size, max(size // 1200, 1))


def _usual(start: float, end: float) -> list[FlowRecord]:
    """30 MB to the US every interval."""
    return [_flow(start + i * 300 + 100, US, 30 * MB) for i in range(int((end - start) / 300))]


def _drip(start: float, hours: int, per_hour: int, dst: str = CN) -> list[FlowRecord]:
    """``per_hour`` to ``dst`` (China), spread over each interval, for ``hours``."""
    return [_flow(start + k * 300 + 150, dst, per_hour // 12) for k in range(hours * 12)]


def _run(engine: Engine, flows: list[FlowRecord]) -> list[Alert]:
    out: list[Alert] = []
    for flow in sorted(flows, key=lambda f: f.time_end):
        out += engine.process([flow])
    return out


def test_a_drip_under_the_day_floor_pages_on_the_week_with_its_pace() -> None:
    # 8 MB an hour for seven days: 192 MB a day (under 1 GB), 1 GB after ~5 days and 5 hours.
    engine = _engine()
    flows = _usual(0, 8.5 * DAY) + _drip(DAY, 7 * 24, 8 * MB)
    fired = [a for a in _run(engine, flows) if a.state == FIRING]
    assert [(a.labels["alertname"], a.labels["dst_country"]) for a in fired] == [
        ("EgressUnexpectedDestination", "CN")
    ]
    page = fired[0]
    assert page.annotations["window"] == "7d"
    crossing = T0 + DAY + GB / (8 * MB) * HOUR
    assert crossing <= page.starts_at <= crossing + 600
    summary = page.annotations["summary"]
    assert summary.startswith("research sent 1.00 GB over 5 days to CN")
    assert "(7d window)" in summary
    assert "about 8.00 MB an hour" in page.annotations["description"]
    assert "floor 1.00 GB per 7d" in page.annotations["description"]
    # An hour's bucket per entry: a week of intervals stays ~168 entries.
    window = next(iter(engine.unexpected.windows.values()))
    assert len(window.spans[-1].entries) <= 7 * 24 + 1
    assert len(window.spans[1].entries) <= 24 * 12


def test_the_weeks_buckets_survive_a_restart() -> None:
    # Four days of the drip (768 MB), a restart, then the rest: still paged on the week.
    engine = _engine()
    before = _usual(0, 5 * DAY) + _drip(DAY, 4 * 24, 8 * MB)
    assert [a for a in _run(engine, before) if a.state == FIRING] == []
    state = orjson.loads(orjson.dumps(engine.snapshot()))
    saved = [w for w in state["windows"] if w["dest"].startswith("CN")]
    # The day's intervals one by one (expired at the sweep, every 36 intervals), the week's
    # in hourly buckets.
    assert 24 * 12 <= len(saved[0]["entries"]) <= 24 * 12 + 36
    assert 4 * 24 <= len(saved[0]["buckets"]) <= 4 * 24 + 1
    restored = _engine()
    restored.restore(state)
    (key,) = [k for k in engine.unexpected.windows if k[1].country == "CN"]
    week = engine.unexpected.windows[key].spans[-1]
    assert restored.unexpected.windows[key].spans[-1].entries == week.entries
    assert sum(row[1] for row in saved[0]["buckets"]) == week.bytes > 700 * MB
    after = _usual(5 * DAY, 8.5 * DAY) + _drip(5 * DAY, 3 * 24, 8 * MB)
    fired = [a for a in _run(restored, after) if a.state == FIRING]
    assert [a.annotations["window"] for a in fired] == ["7d"]
    # The same as without the restart.
    crossing = T0 + DAY + GB / (8 * MB) * HOUR
    assert crossing <= fired[0].starts_at <= crossing + 600


def test_an_older_state_without_buckets_fills_the_week_from_its_day() -> None:
    engine = _engine()
    _run(engine, _usual(0, 3 * DAY) + _drip(DAY, 2 * 24, 8 * MB))
    state = orjson.loads(orjson.dumps(engine.snapshot()))
    for window in state["windows"]:
        del window["buckets"]
    restored = _engine()
    restored.restore(state)
    saved = next(w for w in state["windows"] if w["dest"].startswith("CN"))
    window = next(w for k, w in restored.unexpected.windows.items() if k[1].country == "CN")
    day = sum(row[1] for row in saved["entries"])
    assert day >= 24 * 12 * (8 * MB // 12)
    assert window.spans[-1].bytes == window.spans[1].bytes == day
    assert len(window.spans[-1].entries) <= len(saved["entries"]) // 12 + 1


def test_a_transfer_that_stopped_resolves_and_does_not_page_again_that_week() -> None:
    # 1.5 GB in three hours pages on the hour; it stops and resolves within hours, though the
    # week window holds its bytes for seven days; a trickle to the same address days later
    # (a few hundred kB an hour) is no second page.
    engine = _engine()
    burst = _drip(DAY + 2 * HOUR, 3, 500 * MB)
    trickle = _drip(3 * DAY, 24, 300_000)
    alerts = _run(engine, _usual(0, 4.5 * DAY) + burst + trickle)
    assert [a.state for a in alerts] == [FIRING, RESOLVED]
    assert alerts[0].annotations["window"] == "1h"
    assert alerts[1].ends_at is not None
    assert alerts[1].ends_at - (T0 + DAY + 5 * HOUR) < 2 * HOUR


def test_a_destination_that_paged_is_no_part_of_a_later_fan_out() -> None:
    # 6 GB to China in two hours pages and resolves; two days later 150 MB to Germany pages
    # on its own. The week still holds China's 6 GB, over the group's fan-out floor (5 GB
    # within 7 d), but those bytes paged already: no fan-out page, then or after a restart.
    flows = _usual(0, 4 * DAY) + _drip(DAY, 2, 3 * GB) + _drip(3 * DAY, 1, 150 * MB, DE)
    for restart in (False, True):
        engine = _engine()
        split = 2 * DAY
        alerts = _run(engine, [f for f in flows if f.time_end < T0 + split])
        if restart:
            restored = _engine()
            restored.restore(orjson.loads(orjson.dumps(engine.snapshot())))
            engine = restored
        alerts += _run(engine, [f for f in flows if f.time_end >= T0 + split])
        fired = [a.labels["dst_country"] for a in alerts if a.state == FIRING]
        assert fired == ["CN", "DE"], restart


def test_a_drip_that_pauses_and_resumes_within_the_week_is_one_page() -> None:
    # 8 MB an hour pages on the week after ~5 days; it stops for a day (the page resolves
    # within hours) and resumes at the same pace while the week still holds over 1 GB of it:
    # the same incident, no second page. What it sends after the resolution counts anew:
    # 150 MB within an hour later on is a page of its own (on the hour).
    engine = _engine()
    resume = 7 * DAY + 12 * HOUR
    flows = (
        _usual(0, 9.5 * DAY)
        + _drip(DAY, 5 * 24 + 18, 8 * MB)
        + _drip(resume, 36, 8 * MB)
        + _drip(resume + 40 * HOUR, 1, 150 * MB)
    )
    alerts = _run(engine, flows)
    assert [(a.state, a.annotations["window"]) for a in alerts] == [
        (FIRING, "7d"),
        (RESOLVED, "7d"),
        (FIRING, "1h"),
        (RESOLVED, "1h"),
    ]
    stopped = T0 + DAY + (5 * 24 + 18) * HOUR
    assert alerts[0].starts_at < stopped
    ends_at = alerts[1].ends_at
    assert ends_at is not None and stopped < ends_at < stopped + 2 * HOUR
    assert T0 + resume + 40 * HOUR <= alerts[2].starts_at <= T0 + resume + 41 * HOUR
    # Over the week's floor the whole time since the first page: that alone pages no more.
    (window,) = [w for k, w in engine.unexpected.windows.items() if k[1].country == "CN"]
    assert window.spans[-1].bytes > GB


#: a group of this size (30 MB an interval) has its floors scaled to about a ninth
SCALED = research_config({"interval": "5m", "learning": "1d"}, countries=("US",))
ROUTINE = ("77.88.8.8", "200.160.2.3", "202.31.203.13", DE)  # RU, BR, KR, DE


def test_a_small_groups_routine_unexpected_traffic_does_not_page_on_the_week() -> None:
    # About 1 MB an hour to each of four countries nobody listed: 24 MB a day, under the
    # scaled day floor (~110 MB), 140 MB over six days, over the scaled week floor. Routine,
    # not a drip: none pages. A drip of 4 MB an hour to China from the same group, four times
    # what each of those carries, pages on the week once past the scaled floor.
    engine = Engine(parse_config(SCALED), EmbeddedCountryLabeler())
    flows = _usual(0, 7 * DAY)
    for dst in ROUTINE:
        flows += _drip(DAY, 6 * 24, 1 * MB, dst)
    flows += _drip(DAY, 6 * 24, 4 * MB)
    alerts = _run(engine, flows)
    assert engine.unexpected.factor("research") < 0.2
    fired = [
        (a.labels["dst_country"], a.annotations["window"]) for a in alerts if a.state == FIRING
    ]
    assert fired == [("CN", "7d")]
    assert engine.unexpected._bars["research"] >= 3 * 100 * MB


def test_a_state_files_week_buckets_are_held_to_what_the_week_keeps() -> None:
    # Buckets dated after the saved event time or below zero are left out, as a
    # window's intervals are: a negative bucket dated in the future would never expire and
    # would hold the week's sum under its floor for good.
    engine = _engine()
    _run(engine, _usual(0, 3 * DAY) + _drip(DAY, 2 * 24, 8 * MB))
    state = orjson.loads(orjson.dumps(engine.snapshot()))
    (saved,) = [w for w in state["windows"] if w["dest"].startswith("CN")]
    good = sum(row[1] for row in saved["buckets"])
    end = state["event_time"]
    saved["buckets"] += [[end + 30 * DAY, -50 * GB, 0, 0], [end - 600, -GB, 0, 0]]
    saved["buckets"] += [[end + 300, 5 * GB, 0, 0]]
    restored = _engine()
    restored.restore(state)
    (window,) = [w for k, w in restored.unexpected.windows.items() if k[1].country == "CN"]
    assert window.spans[-1].bytes == good > 300 * MB
