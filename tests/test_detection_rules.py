"""Each detection rule on its own: unexpected windows, download return traffic, fan-out, spikes
beyond a key's peak, new destination networks, and exact egress counters across a restart."""

from __future__ import annotations

import math

import orjson
import pytest

from egressd.config import parse_config
from egressd.detect.alerts import FIRING, RESOLVED, Alert
from egressd.detect.newdest import NewDestinationDetector, block_of, prefix_of
from egressd.detect.newdest import _Entry as _NewEntry
from egressd.detect.newdest import _Window as _NewWindow
from egressd.enrich.embedded import EmbeddedCountryLabeler
from egressd.errors import ConfigError
from egressd.model import FlowRecord
from egressd.pipeline import Engine
from egressd.sketch import TopK
from tests.build_support import pure_python_only
from tests.integration_support import research_config

T0 = 1_773_014_400.0  # a Monday, 00:00 UTC
HOUR = 3600.0
DAY = 86400.0
MB = 1_000_000
GB = 1_000_000_000
US = "8.8.8.8"
US_OTHER_NET = "140.82.112.3"
DE = "88.198.55.33"
DE_FRESH = "88.99.1.1"
CN = "47.100.23.45"
JP_MIRROR = "133.242.1.1"
HOST = "10.20.0.7"
#: one address in each of 40 countries other than the US and DE
_COUNTRY_ADDRESSES = (
    "31.57.57.48", "194.208.118.232", "103.49.18.35", "87.65.3.125", "46.10.150.110",
    "200.58.174.33", "177.199.7.172", "200.68.30.163", "101.34.210.230", "212.10.211.14",
    "85.79.21.251", "81.66.189.235", "194.169.142.130", "193.92.39.62", "87.39.221.29",
    "81.199.22.135", "157.39.107.165", "193.227.68.225", "157.111.132.248", "119.161.10.97",
    "178.53.108.163", "95.58.252.131", "78.61.17.136", "200.23.193.184", "103.122.164.124",
    "193.67.158.129", "95.160.184.246", "193.136.145.32", "78.101.62.137", "89.45.18.197",
    "5.137.242.153", "195.242.33.156", "8.220.27.96", "85.155.173.3", "78.98.240.139",
    "95.14.143.254", "140.128.49.136", "46.118.77.223", "103.232.63.28", "163.197.179.137",
)  # fmt: skip

CONFIG = research_config({"interval": "5m", "learning": "1d"}, countries=("US", "DE"))


#: the unexpected-destination floors as configured: the test group's ~40 MB intervals would
#: shrink them to a fifth (100 MB an hour to 20 MB), and the tests of the windows' mechanics
#: are drawn for the configured ones
ABSOLUTE = 'unexpected_floors_scale_below = "0"\n'
#: the same for the new-network floors (1 GB an hour, 5 GB a day)
NEW_ABSOLUTE = 'new_destination_floors_scale_below = "0"\n'


def _engine(extra: str = "") -> Engine:
    return Engine(parse_config(CONFIG + extra), EmbeddedCountryLabeler())


def _flow(t: float, dst: str, size: int, packets: int | None = None, src: str = HOST) -> FlowRecord:
    return FlowRecord(T0 + t - 1, T0 + t, src, dst, size, packets or max(size // 1200, 1))


def _firing(alerts: list[Alert]) -> list[str]:
    return [
        f"{a.labels['alertname']} {a.labels['dst_country']}" for a in alerts if a.state == FIRING
    ]


def _run(engine: Engine, flows: list[FlowRecord]) -> list[Alert]:
    out: list[Alert] = []
    for flow in sorted(flows, key=lambda f: f.time_end):
        out += engine.process([flow])
    return out


def _usual(days: float, start: float = 0.0, size: int = 30 * MB) -> list[FlowRecord]:
    """Every interval: ``size`` to the US and a third of it to DE."""
    out = []
    for i in range(int(days * DAY / 300)):
        t = start + i * 300 + 100
        out += [_flow(t, US, size), _flow(t + 10, DE, size // 3)]
    return out


# -- configuration -----------------------------------------------------------------------


def test_unexpected_windows_default_to_an_hour_a_day_and_a_week() -> None:
    detection = parse_config("").detection
    assert detection.unexpected_windows == ((3600.0, 100 * MB), (DAY, GB), (7 * DAY, GB))
    assert (detection.unexpected_window, detection.unexpected_min_bytes) == (3600.0, 100 * MB)


def test_the_older_two_keys_set_the_first_window_and_keep_a_day_and_a_week_behind_it() -> None:
    detection = parse_config(
        '[detection]\nunexpected_min_bytes = "300MB"\nunexpected_window = "2h"\n'
    ).detection
    assert detection.unexpected_windows == ((7200.0, 300 * MB), (DAY, 3 * GB), (7 * DAY, 3 * GB))
    whole_day = parse_config('[detection]\nunexpected_window = "1d"\n').detection
    assert whole_day.unexpected_windows == ((DAY, 100 * MB), (7 * DAY, GB))


def test_unexpected_windows_as_tables() -> None:
    detection = parse_config(
        '[[detection.unexpected]]\nwindow = "6h"\nmin_bytes = "500MB"\n'
        '[[detection.unexpected]]\nwindow = "10m"\nmin_bytes = "50MB"\n'
    ).detection
    assert detection.unexpected_windows == ((600.0, 50 * MB), (21600.0, 500 * MB))
    assert (detection.unexpected_window, detection.unexpected_min_bytes) == (600.0, 50 * MB)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        (
            '[detection]\nunexpected_min_bytes = "1MB"\n'
            '[[detection.unexpected]]\nwindow = "1h"\nmin_bytes = "1MB"\n',
            "detection.unexpected",
        ),
        ('[[detection.unexpected]]\nwindow = "1m"\nmin_bytes = "1MB"\n', "window"),
        ('[[detection.unexpected]]\nwindow = "1h"\n', "min_bytes"),
        ('[[detection.unexpected]]\nwindow = "1h"\nmin_bytes = "1MB"\nfloor = 3\n', "floor"),
        ("[detection]\ningress_return_fraction = 1.5\n", "ingress_return_fraction"),
        ("[detection]\nunexpected_floors_scale_below = -1\n", "unexpected_floors_scale_below"),
        ("[detection]\nunexpected_floors_lowest_factor = 0\n", "unexpected_floors_lowest_factor"),
        (
            "[detection]\nunexpected_floors_lowest_factor = 1.5\n",
            "unexpected_floors_lowest_factor",
        ),
        (
            "[detection]\nnew_destination_floors_lowest_factor = 0\n",
            "new_destination_floors_lowest_factor",
        ),
        (
            "[detection]\nnew_destination_floors_scale_below = -1\n",
            "new_destination_floors_scale_below",
        ),
    ],
)
def test_bad_unexpected_settings_name_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        parse_config(text)


# -- unexpected destinations ---------------------------------------------------------------


def _to_china(at: float, size: int) -> list[FlowRecord]:
    """``size`` to China (never used by the group) in two intervals from ``at``."""
    return [_flow(at + k * 300 + 150, CN, size // 2) for k in range(2)]


@pytest.mark.parametrize("shrinking", [True, False])
def test_a_small_groups_fifty_megabytes_to_a_new_country_pages(shrinking: bool) -> None:
    # The group sends ~40 MB an interval (a lab of some dozen hosts): 50 MB in ten minutes to
    # a country it never used is over a tenth of its busy hour. Its 40 MB per 5 minutes is 8%
    # of the 500 MB reference, under a fifth: its floors are sqrt(0.08 x 0.2) = 0.126 of the
    # configured ones, 12.6 MB within an hour. Kept absolute ("0"), 100 MB an hour stays.
    engine = _engine("" if shrinking else ABSOLUTE)
    fired = [a for a in _run(engine, _usual(2.5) + _to_china(2 * DAY + 3 * HOUR, 50 * MB))]
    fired = [a for a in fired if a.state == FIRING]
    if not shrinking:
        assert fired == []
        return
    assert _firing(fired) == ["EgressUnexpectedDestination CN"]
    assert engine.unexpected.factor("research") == pytest.approx(0.126, rel=0.01)
    description = fired[0].annotations["description"]
    assert "(floor 12.65 MB per 1h: 100.00 MB scaled to the group's size" in description


def test_a_small_groups_download_from_a_new_country_does_not_page() -> None:
    # A CDN edge in China begins serving the small group: 40 MB an interval of downloads for
    # three hours, and back to it 3 MB an interval of requests averaging 200 bytes a packet
    # (not small packets): 36 MB an hour, over the group's 20 MB floor, but under a tenth of
    # the ingress. The same egress without the download is an upload, and pages.
    flows = _usual(2.5)
    for k in range(36):
        t = 2 * DAY + 3 * HOUR + k * 300 + 150
        flows += [_flow(t, HOST, 40 * MB, src=CN), _flow(t + 1, CN, 3 * MB, packets=15_000)]
    assert _firing(_run(_engine(), flows)) == []
    uploads = [f for f in flows if f.src == HOST]
    assert _firing(_run(_engine(), uploads)) == ["EgressUnexpectedDestination CN"]


def test_a_large_groups_floors_stay_as_configured() -> None:
    # ~800 MB an interval: over the reference, so 90 MB within an hour to a new country stays
    # under the configured 100 MB, and 110 MB pages with it shown as the floor.
    engine = _engine()
    flows = _usual(2.5, size=600 * MB) + _to_china(2 * DAY, 90 * MB)
    flows += _to_china(2 * DAY + 6 * HOUR, 110 * MB)
    fired = [a for a in _run(engine, flows) if a.state == FIRING]
    assert _firing(fired) == ["EgressUnexpectedDestination CN"]
    assert fired[0].starts_at == T0 + 2 * DAY + 6 * HOUR + 2 * 300
    assert engine.unexpected.factor("research") == 1.0
    assert "(floor 100.00 MB per 1h)." in fired[0].annotations["description"]


def test_a_small_groups_floors_hold_across_a_restart() -> None:
    # The state file keeps the group's rate: restored, its floors are the small ones at once
    # (not the configured ones until the rate is learned again).
    engine = _engine()
    assert _firing(_run(engine, _usual(2.5))) == []
    restored = _engine()
    restored.restore(engine.snapshot())
    assert restored.unexpected.rates is restored.group_rates
    fired = _firing(_run(restored, _to_china(2 * DAY + 12 * HOUR, 50 * MB)))
    assert fired == ["EgressUnexpectedDestination CN"]


def test_a_small_groups_drip_pages_on_its_smaller_day_floor() -> None:
    # 12 MB an hour (1 MB an interval) for a day: under the small group's 12.6 MB an hour, over
    # its 126 MB a day (the configured 1 GB times 0.126).
    drip = [_flow(2 * DAY + k * 300 + 150, CN, MB) for k in range(12 * 24)]
    fired = [a for a in _run(_engine(), _usual(2.5) + drip) if a.state == FIRING]
    assert _firing(fired) == ["EgressUnexpectedDestination CN"]
    assert fired[0].annotations["window"] == "1d"


#: a dozen desks at a quiet time: ~2.7 MB an interval, 0.5% of the 500 MB reference; floors
#: at sqrt(0.0053 x 0.2) = 3.3% of the configured ones (3.3 MB an hour, 33 MB a day)
TINY = 2 * MB


def test_a_tiny_groups_fifteen_megabytes_to_a_new_country_page() -> None:
    # Half the office's busy hour in fifteen minutes to a country it never used: worth a
    # page, and under the fifth (20 MB an hour) the floors used to stop at.
    burst = [_flow(2 * DAY + 3 * HOUR + k * 300 + 150, CN, 5 * MB) for k in range(3)]
    engine = _engine()
    fired = [a for a in _run(engine, _usual(2.5, size=TINY) + burst) if a.state == FIRING]
    assert _firing(fired) == ["EgressUnexpectedDestination CN"]
    assert engine.unexpected.factor("research") == pytest.approx(0.033, rel=0.05)
    assert fired[0].annotations["window"] == "1h"
    # The same from a group at the reference is a fifth of one of its busy intervals.
    assert _firing(_run(_engine(), _usual(2.5, size=400 * MB) + burst)) == []


def test_a_tiny_groups_drip_of_a_few_megabytes_an_hour_pages_on_the_day() -> None:
    # 2.5 MB an hour to China for a day (60 MB, a tenth of the office's day): under its 3.3 MB
    # an hour, over its 33 MB a day.
    drip = [_flow(2 * DAY + k * 300 + 150, CN, 210_000) for k in range(12 * 24)]
    fired = [a for a in _run(_engine(), _usual(2.5, size=TINY) + drip) if a.state == FIRING]
    assert _firing(fired) == ["EgressUnexpectedDestination CN"]
    assert fired[0].annotations["window"] == "1d"


def test_a_tiny_groups_download_from_a_new_country_does_not_page() -> None:
    # A CDN edge in China begins serving the office: 10 MB an interval of downloads for three
    # hours and 6% of it back as requests of 200 bytes a packet, 7 MB an hour: over its 3.3 MB
    # floor, but under a tenth of the ingress.
    flows = _usual(2.5, size=TINY)
    for k in range(36):
        t = 2 * DAY + 3 * HOUR + k * 300 + 150
        flows += [_flow(t, HOST, 10 * MB, src=CN), _flow(t + 1, CN, 600_000, packets=3_000)]
    assert _firing(_run(_engine(), flows)) == []


def test_a_slow_drip_pages_through_the_day_window_and_says_so() -> None:
    engine = _engine(ABSOLUTE)
    # 60 MB an hour to China: never 100 MB in an hour, 1 GB after ~17 hours.
    drip = [_flow(DAY + 2 * HOUR + k * 300, CN, 5 * MB) for k in range(12 * 30)]
    alerts = _run(engine, _usual(2.5) + drip)
    fired = [a for a in alerts if a.state == FIRING]
    assert _firing(fired) == ["EgressUnexpectedDestination CN"]
    alert = fired[0]
    assert alert.annotations["window"] == "1d"
    assert int(alert.annotations["bytes"]) >= GB
    crossing = T0 + DAY + 2 * HOUR + 199 * 300  # the 200th 5 MB interval
    assert crossing <= alert.starts_at <= crossing + 300
    assert HOST in alert.annotations["top_sources"]


def test_a_burst_pages_through_the_hour_window() -> None:
    engine = _engine()
    burst = [_flow(DAY + 3 * HOUR + k * 20, CN, 30 * MB) for k in range(10)]
    fired = [a for a in _run(engine, _usual(1.5) + burst) if a.state == FIRING]
    assert _firing(fired) == ["EgressUnexpectedDestination CN"]
    assert fired[0].annotations["window"] == "1h"


def test_a_drip_that_paged_on_the_hour_stays_one_alert_while_it_goes_on() -> None:
    engine = _engine(ABSOLUTE)
    # An hour of 110 MB pages on the hour window; the transfer then goes on at 40 MB an hour
    # (under half the hour's floor, but the day window's pace) until the day's sum passes 1 GB:
    # the same alert all along, not a resolve and a second page from the day window.
    first_hour = [_flow(DAY + 2 * HOUR + k * 300, CN, 9 * MB + MB // 6) for k in range(12)]
    drip = [_flow(DAY + 3 * HOUR + k * 300, CN, 10 * MB // 3) for k in range(12 * 26)]
    alerts = _run(engine, _usual(3) + first_hour + drip)
    assert [(a.state, a.labels["dst_country"]) for a in alerts] == [
        (FIRING, "CN"),
        (RESOLVED, "CN"),
    ]
    assert alerts[0].annotations["window"] == "1h"
    drip_end = T0 + DAY + 3 * HOUR + 12 * 26 * 300
    assert alerts[1].ends_at is not None and alerts[1].ends_at >= drip_end


def test_a_transfer_that_stopped_resolves_while_the_day_window_still_holds_it() -> None:
    engine = _engine(ABSOLUTE)
    burst = [_flow(DAY + 3 * HOUR + k * 20, CN, 30 * MB) for k in range(10)]
    alerts = _run(engine, _usual(2.5) + burst)
    assert [a.state for a in alerts] == [FIRING, RESOLVED]
    # resolved within a few hours of the burst, not once the day window lets go of it
    assert alerts[1].ends_at is not None
    assert alerts[1].ends_at - (T0 + DAY + 3 * HOUR) < 3 * HOUR


def _download(start: float, total: int, ack_share: float, size_per_packet: int = 60) -> list:
    """A download of ``total`` bytes in 2 h from a JP mirror, and its ACKs back (egress)."""
    flows = []
    steps = 24
    for k in range(steps):
        t = start + k * 300 + 50
        flows.append(FlowRecord(T0 + t - 60, T0 + t, JP_MIRROR, HOST, total // steps, 10_000))
        ack = int(total * ack_share / steps)
        flows.append(_flow(t + 5, JP_MIRROR, ack, ack // size_per_packet))
    return flows


def test_the_acks_of_a_download_do_not_page() -> None:
    engine = _engine()
    # 20 GB in 2 h: ~400 MB of 60-byte ACKs to a country the group never sends to.
    alerts = _run(engine, _usual(1.5) + _download(DAY + 2 * HOUR, 20 * GB, 0.02))
    assert _firing(alerts) == []
    windows = [w for (g, d), w in engine.unexpected.windows.items() if d.country == "JP"]
    assert windows and windows[0].spans[-1].ingress == 20 * GB // 24 * 24


def test_acks_beyond_their_share_of_the_ingress_page_and_show_the_ingress() -> None:
    engine = _engine()
    # 2 GB down, 400 MB of small packets up: 20% of the ingress, far beyond an ACK stream.
    fired = [
        a
        for a in _run(engine, _usual(1.5) + _download(DAY + 2 * HOUR, 2 * GB, 0.2))
        if a.state == FIRING
    ]
    assert _firing(fired) == ["EgressUnexpectedDestination JP"]
    assert int(fired[0].annotations["ingress_bytes"]) > 0
    assert int(fired[0].annotations["small_packet_bytes"]) > 0
    assert "set against" in fired[0].annotations["description"]


def test_an_upload_cannot_hide_behind_a_download() -> None:
    engine = _engine()
    flows = _download(DAY + 2 * HOUR, 20 * GB, 0.02)
    # Bulk egress (1,200-byte packets) to the same mirror during the download.
    flows += [_flow(DAY + 2 * HOUR + 600 + k * 30, JP_MIRROR, 20 * MB) for k in range(10)]
    assert _firing(_run(engine, _usual(1.5) + flows)) == ["EgressUnexpectedDestination JP"]


def test_fan_out_under_every_floor_pages_once_for_the_group() -> None:
    engine = _engine(ABSOLUTE)
    # 20 unexpected countries (no expected set covers them), ~90 MB an hour each.
    targets = [
        "77.88.55.60",  # RU
        CN,
        "200.147.67.142",  # BR
        "218.188.1.1",  # HK
        JP_MIRROR,
        "212.58.244.22",  # GB
        "163.172.1.1",  # FR
        "145.100.190.243",  # NL
        "87.198.1.1",  # IE
    ]
    flows = []
    for k in range(36):  # three hours
        for i, target in enumerate(targets):
            flows.append(_flow(DAY + 2 * HOUR + k * 300 + i, target, int(7.4 * MB)))
    fired = [a for a in _run(engine, _usual(1.5) + flows) if a.state == FIRING]
    assert _firing(fired) == ["EgressUnexpectedDestination multiple"]
    alert = fired[0]
    assert int(alert.annotations["destinations"]) == len(targets)
    assert int(alert.annotations["bytes"]) >= 500 * MB
    assert alert.labels["group"] == "research"


def test_a_scan_of_tiny_intervals_opens_no_windows_and_windows_stay_capped() -> None:
    engine = _engine("max_keys = 20\n")
    # A few KB to each of 40 unexpected countries: no window of their own.
    tiny = [_flow(DAY + 100 + k, target, 3_000) for k, target in enumerate(_COUNTRY_ADDRESSES)]
    _run(engine, _usual(1.1) + tiny)
    assert engine.unexpected.windows == {}
    # Windows that do open (1 MB to each of them) stay within max_keys.
    heavy = [
        _flow(DAY + 2 * HOUR + k, target, 1_000_000) for k, target in enumerate(_COUNTRY_ADDRESSES)
    ]
    _run(engine, [*heavy, _flow(DAY + 3 * HOUR, US, 1)])
    assert len(engine.unexpected.windows) <= 20
    assert engine.unexpected.evicted > 0


# -- spikes ----------------------------------------------------------------------------------


def test_a_burst_the_size_of_one_seen_before_does_not_spike_but_far_beyond_does() -> None:
    engine = _engine()
    flows = _usual(3)
    # Day 0 (learning): a 2 GB burst to the US at 14:00.
    flows.append(_flow(14 * HOUR + 200, US, 2 * GB))
    # Day 2: a burst of the same size is routine for this key ...
    flows.append(_flow(2 * DAY + 11 * HOUR + 200, US, int(2.2 * GB)))
    assert _firing(_run(engine, flows)) == []
    # ... 20 GB (ten times anything it has done) is not.
    later = [*_usual(0.5, start=3 * DAY), _flow(3 * DAY + 5 * HOUR + 200, US, 20 * GB)]
    fired = [a for a in _run(engine, later) if a.state == FIRING]
    assert _firing(fired) == ["EgressVolumeSpike US"]
    assert 1.8 * GB <= int(fired[0].annotations["peak_bytes"]) <= 2.3 * GB


def test_the_peak_halves_in_two_weeks() -> None:
    engine = _engine()
    _run(engine, [_flow(100, US, GB), _flow(1000, US, 1)])
    key = ("research", next(iter(engine.baselines.keys()))[1])
    assert engine.baselines.peak(key, T0) == pytest.approx(GB, rel=0.01)
    assert engine.baselines.peak(key, T0 + 14 * DAY) == pytest.approx(GB / 2, rel=0.01)


def _rising(days: float, start: float, rise: float, extra_us: int = 0) -> list[FlowRecord]:
    """:func:`_usual` from ``start``, every destination growing evenly to ``rise`` times its
    level over ``days`` (a term starting, an office moving in), and ``extra_us`` more to the
    US growing from nothing to that over the same days (an attacker's ramp)."""
    out = []
    count = int(days * DAY / 300)
    for i in range(count):
        t = start + i * 300 + 100
        growth = 1.0 + (rise - 1.0) * i / count
        ramp = int(extra_us * i / count)
        us, de = int(30 * MB * growth) + ramp, int(10 * MB * growth)
        out += [_flow(t, US, us), _flow(t + 10, DE, de)]
    return out


def _grab(at: float, size: int) -> list[FlowRecord]:
    """A day of the level reached by ``_rising(rise=2)`` from ``at``, a ``size`` transfer to
    the US from another host in the sixth hour."""
    flows = _usual(1, start=at, size=60 * MB)
    if size:
        flows.append(_flow(at + 5 * HOUR + 200, US, size, src="10.20.0.99"))
    return flows


#: 3.5 times the largest interval the key ever sent (1 GB): beyond its peak however the peak
#: is aged, so only room bought by a rise or a ramp could keep it quiet
GRAB = int(3.5 * GB)


@pytest.mark.parametrize("grab", [0, GRAB])
def test_a_transfer_hidden_in_a_broad_rise_pages_and_the_rise_alone_does_not(grab: int) -> None:
    engine = _engine()
    # Three usual days with a 1 GB burst while learning (the key's peak), then every destination
    # of the group doubles over four days, and the transfer comes in the day after.
    flows = [*_usual(3), _flow(14 * HOUR + 200, US, GB)]
    flows += _rising(4, start=3 * DAY, rise=2.0)
    assert _firing(_run(engine, flows)) == []
    fired = _firing(_run(engine, _grab(7 * DAY, grab)))
    # The peak is in bytes, not relative to the level: a rise of the group's traffic does not
    # raise it, so the grab pages (had the peak grown with the level, it would be quiet).
    assert fired == (["EgressVolumeSpike US"] if grab else [])


def test_a_ramp_to_one_destination_does_not_buy_room_for_a_larger_grab() -> None:
    engine = _engine()
    # The attacker ramps the US traffic to twice its level over four days (quiet: the
    # baseline follows a ramp), then grabs 3.5 GB in one interval.
    flows = [*_usual(3), _flow(14 * HOUR + 200, US, GB)]
    flows += _rising(4, start=3 * DAY, rise=1.0, extra_us=30 * MB)
    assert _firing(_run(engine, flows)) == []
    key = next(k for k in engine.baselines if k[1].startswith("US"))
    assert engine.baselines.peak(key, T0 + 7 * DAY) <= 1.05 * GB  # nor did it raise the peak
    assert _firing(_run(engine, _grab(7 * DAY, GRAB))) == ["EgressVolumeSpike US"]


def _shaped(scale: int, burst: bool) -> list[FlowRecord]:
    """Three days of 100 MB an interval to the US and 600 MB to DE, all times ``scale``; on the
    third day a burst of 4.5 times the US level (4.5 times its peak, 350 MB beyond it)."""
    flows = []
    for i in range(int(3 * DAY / 300)):
        t = i * 300 + 100
        flows += [_flow(t, US, 100 * MB * scale), _flow(t + 10, DE, 600 * MB * scale)]
    if burst:
        flows.append(_flow(2 * DAY + 11 * HOUR + 250, US, 350 * MB * scale))
    return flows


@pytest.mark.parametrize("scale", [1, 4])
def test_a_burst_of_the_same_shape_in_a_four_times_larger_group_does_not_page(scale: int) -> None:
    # At 1x the burst is under the 1 GB excess floor. At 4x it is 1.4 GB beyond the peak: an
    # absolute floor would page, but the group's busy intervals carry 2.8 GB, so its floors
    # are 1.87 times the configured ones (2.8 GB / 1.5 GB) and the same shape stays quiet.
    assert _firing(_run(_engine(), _shaped(scale, burst=True))) == []
    if scale == 4:
        absolute = _engine('spike_floors_scale_above = "0"')
        assert _firing(_run(absolute, _shaped(scale, burst=True))) == ["EgressVolumeSpike US"]


def test_a_grab_far_beyond_a_large_groups_own_scale_still_pages() -> None:
    engine = _engine()
    flows = _shaped(4, burst=False)
    flows.append(_flow(2 * DAY + 11 * HOUR + 250, US, 6 * GB))
    fired = [a for a in _run(engine, flows) if a.state == FIRING]
    assert _firing(fired) == ["EgressVolumeSpike US"]


#: four addresses of the services the group uses in the US: its traffic there spreads over them
_US_SERVICES = (US, US_OTHER_NET, "151.101.1.69", "104.16.132.229")


def _spread(days: float) -> list[FlowRecord]:
    """``days`` of 25 MB an interval to each of the four US addresses from hosts in turn, and
    30 MB to DE: the US key's peak is 100 MB."""
    flows = []
    for i in range(int(days * DAY / 300)):
        t = i * 300 + 100
        flows += [
            _flow(t + k, dst, 25 * MB, src=f"10.20.1.{(i + k) % 50 + 1}")
            for k, dst in enumerate(_US_SERVICES)
        ]
        flows.append(_flow(t + 10, DE, 30 * MB))
    return flows


def _surge(at: float, intervals: int, addresses: tuple[str, ...]) -> list[FlowRecord]:
    """2.4 GB an interval to the US for ``intervals`` intervals from ``at``, spread evenly over
    ``addresses`` from hosts in turn."""
    share = int(2.4 * GB) // len(addresses)
    return [
        _flow(at + k * 300 + 20 + n, dst, share, src=f"10.20.2.{n + 1}")
        for k in range(intervals)
        for n, dst in enumerate(addresses)
    ]


@pytest.mark.parametrize(
    ("intervals", "addresses", "pages"),
    [
        (1, _US_SERVICES, False),  # a one-interval rise over the key's usual addresses
        (2, _US_SERVICES, True),  # the same rise held for a second interval: a transfer
        (1, (US_OTHER_NET,), True),  # the same bytes to one address in one interval
    ],
)
def test_a_rise_spread_over_a_keys_addresses_pages_only_when_it_holds(
    intervals: int, addresses: tuple[str, ...], pages: bool
) -> None:
    # 2.4 GB in five minutes is 24 times the key's 100 MB peak and 2.3 GB beyond it, but
    # spread over its four usual addresses no address goes beyond the peak by the 1 GB the
    # rule asks: a rise of its usual traffic (more users, one interval of noise) is held for
    # a second interval, and pages if that interval is a spike too, judged against the peak
    # from before the rise (which the first interval raised). To one address it pages at once.
    at = 2 * DAY + 11 * HOUR
    flows = [*_spread(3), *_surge(at, intervals, addresses)]
    fired = [a for a in _run(_engine(), flows) if a.state == FIRING]
    assert _firing(fired) == (["EgressVolumeSpike US"] if pages else [])
    if pages:
        assert fired[0].starts_at == T0 + at + intervals * 300
        assert int(fired[0].annotations["peak_bytes"]) <= 110 * MB


def test_a_held_spike_survives_a_restart() -> None:
    # The spike detector's state is saved and read back while the rise is held: the second
    # interval still pages (read back without the hold, it would be held again).
    engine = _engine()
    at = 2 * DAY + 11 * HOUR
    fired: list[Alert] = []
    restarted = False
    for flow in sorted([*_spread(3), *_surge(at, 2, _US_SERVICES)], key=lambda f: f.time_end):
        fired += engine.process([flow])
        if not restarted and engine.spikes.to_json()["held"]:
            saved = orjson.loads(orjson.dumps(engine.spikes.to_json()))
            engine.spikes.load_json(saved, {})
            restarted = True
    assert restarted
    assert _firing(fired) == ["EgressVolumeSpike US"]


#: peer-to-peer: the group's traffic spread thinly over eight countries (AE AT AU BE BG BO BR CL)
_PEERS = _COUNTRY_ADDRESSES[:8]
P2P_CONFIG = research_config(
    {"interval": "5m", "learning": "1d"}, countries=("AE", "AT", "AU", "BE", "BG", "BO", "BR", "CL")
)


def _swarm(bursts: int = 7) -> list[FlowRecord]:
    """Three days of one 5-30 MB flow an interval to a peer in turn; from the second day every
    six hours one peer (never the last) takes 0.95 GB in an interval: far beyond its own peak,
    under the 1 GB excess floor, so none pages."""
    flows = []
    for i in range(3 * 288):
        t = i * 300 + 100
        flows.append(_flow(t, _PEERS[i % 8], (5 + (i * 7) % 26) * MB, src=f"10.20.1.{i % 200 + 1}"))
    for k in range(bursts):
        flows.append(_flow(DAY + k * 6 * HOUR + 250, _PEERS[k % 7], int(0.95 * GB)))
    return flows


@pytest.mark.parametrize(("size", "pages"), [(int(1.2 * GB), False), (4 * GB, True)])
def test_where_a_groups_keys_go_far_beyond_their_peaks_a_burst_like_theirs_does_not_page(
    size: int, pages: bool
) -> None:
    # A 1.2 GB burst to the last peer is 40 times its peak and 1.17 GB beyond it: on its own
    # it would page, but the group's keys went 0.92 GB beyond theirs every six hours, so it
    # must go 1.5 times that far. A bulk transfer to the same peer still pages.
    engine = Engine(parse_config(P2P_CONFIG), EmbeddedCountryLabeler())
    flows = [*_swarm(), _flow(2 * DAY + 20 * HOUR + 250, _PEERS[7], size, src="10.20.0.99")]
    fired = _firing(_run(engine, flows))
    assert fired == (["EgressVolumeSpike CL"] if pages else [])


def test_a_spike_page_says_how_far_its_groups_keys_lately_went_beyond_their_peaks() -> None:
    # What the bytes beyond the key's peak were measured against: the group's learned
    # excess (0.92 GB from the swarm's steps), so a reader can tell a bulk transfer from a
    # burst just past the group's usual ones.
    engine = Engine(parse_config(P2P_CONFIG), EmbeddedCountryLabeler())
    flows = [*_swarm(), _flow(2 * DAY + 20 * HOUR + 250, _PEERS[7], 4 * GB, src="10.20.0.99")]
    fired = [a for a in _run(engine, flows) if a.state == FIRING]
    assert _firing(fired) == ["EgressVolumeSpike CL"]
    excess = int(fired[0].annotations["group_excess_bytes"])
    assert 0.85 * GB < excess < 0.95 * GB
    assert "beyond their own" in fired[0].annotations["description"]


def test_excesses_are_learned_a_day_late_so_a_transfer_cannot_raise_its_own_bar() -> None:
    # The same 0.95 GB steps, all within the last day (the lag): they teach the group nothing
    # yet, and the 1.2 GB burst pages.
    engine = Engine(parse_config(P2P_CONFIG), EmbeddedCountryLabeler())
    flows = [flow for flow in _swarm(bursts=0) if flow.time_end < 2 * DAY + T0]
    flows += [_flow(2 * DAY + k * HOUR + 250, _PEERS[k], int(0.95 * GB)) for k in range(6)]
    flows.append(_flow(2 * DAY + 8 * HOUR + 250, _PEERS[7], int(1.2 * GB), src="10.20.0.99"))
    flows.append(_flow(2 * DAY + 9 * HOUR, _PEERS[0], 10 * MB))  # closes the interval
    assert _firing(_run(engine, flows)) == ["EgressVolumeSpike CL"]


def test_a_groups_excesses_survive_a_restart() -> None:
    engine = Engine(parse_config(P2P_CONFIG), EmbeddedCountryLabeler())
    _run(engine, _swarm())
    restored = Engine(parse_config(P2P_CONFIG), EmbeddedCountryLabeler())
    restored.spikes.load_json(orjson.loads(orjson.dumps(engine.spikes.to_json())), {})
    at = T0 + 3 * DAY
    assert restored.spikes.excesses.excess("research", at) == pytest.approx(
        engine.spikes.excesses.excess("research", at)
    )
    assert 0.85 * GB < restored.spikes.excesses.excess("research", at) < 0.95 * GB


# -- new destination networks ---------------------------------------------------------------


def test_prefixes() -> None:
    assert prefix_of("88.99.1.1") == "88.99.1.0/24"
    assert prefix_of("2a01:4f8::1") == "2a01:4f8::/48"
    assert prefix_of("2001:db8:1:2:3::9") == "2001:db8:1::/48"


@pytest.mark.parametrize("day_window", ["", 'new_destination_day_min_bytes = "0"\n'])
def test_gigabytes_to_a_network_not_used_for_a_week_page_inside_an_allowed_country(
    day_window: str,
) -> None:
    engine = _engine(NEW_ABSOLUTE + day_window)
    flows = _usual(2)
    # The nightly backup to DE at 1-3 GB per interval: a fresh DE network takes 4 GB meanwhile.
    fresh = [_flow(DAY + 1 * HOUR + k * 300 + 150, DE_FRESH, 350 * MB) for k in range(12)]
    fired = [a for a in _run(engine, flows + fresh) if a.state == FIRING]
    assert _firing(fired) == ["EgressNewDestinationVolume DE"]
    alert = fired[0]
    assert alert.annotations["new_prefixes"] == "88.99.1.0/24"
    assert DE_FRESH in alert.annotations["top_destinations"]
    # The crossing of 1 GB is the third 350 MB interval.
    assert alert.starts_at == T0 + DAY + HOUR + 3 * 300


def test_a_network_the_group_uses_does_not_count_as_new() -> None:
    engine = _engine()
    flows = _usual(2)
    flows += [_flow(DAY + HOUR + k * 300 + 150, US, 350 * MB) for k in range(12)]
    assert "EgressNewDestinationVolume US" not in _firing(_run(engine, flows))


def _backup(day: int, dst: str) -> list[FlowRecord]:
    """1.2 GB within the hour from 01:00 on ``day``."""
    return [_flow(day * DAY + HOUR + k * 300 + 150, dst, 100 * MB) for k in range(12)]


#: the unseen horizon of the ageing tests, shorter than the default so they stay days long
EIGHT_DAYS = 'new_destination_unseen = "8d"\n'


def test_a_holiday_does_not_age_the_networks_a_group_knows() -> None:
    engine = _engine(EIGHT_DAYS)
    # A nightly backup to one DE network, known since the first night.
    flows = _usual(3) + _backup(0, DE_FRESH) + _backup(1, DE_FRESH) + _backup(2, DE_FRESH)
    assert _firing(_run(engine, flows)) == []
    # Closed for ten days (a few KB a day), across a restart: more than the 8 days after which
    # an unused network counts as new again, but the group used no network at all meanwhile.
    _run(engine, [_flow(day * DAY + 12 * HOUR, US, 5_000) for day in range(3, 8)])
    engine2 = _engine(EIGHT_DAYS)
    engine2.restore(engine.snapshot())
    _run(engine2, [_flow(day * DAY + 12 * HOUR, US, 5_000) for day in range(8, 13)])
    back = _usual(1, start=13 * DAY) + _backup(13, DE_FRESH)
    assert _firing(_run(engine2, back)) == []
    # A network it never used still pages, holiday or not.
    fresh = _usual(0.5, start=14 * DAY) + _backup(14, "94.130.1.1")
    assert _firing(_run(engine2, fresh)) == ["EgressNewDestinationVolume DE"]


def test_a_monthly_job_keeps_its_network_known_with_the_defaults() -> None:
    engine = _engine()
    # A month-end archive of 1.2 GB to one DE network, a month apart: known the second time.
    flows = _usual(31) + _backup(0, DE_FRESH) + _backup(30, DE_FRESH)
    assert _firing(_run(engine, flows)) == []
    # A network the group never used still pages at the month's end.
    fresh = _usual(0.5, start=31 * DAY) + _backup(31, "94.130.1.1")
    assert _firing(_run(engine, fresh)) == ["EgressNewDestinationVolume DE"]


def test_networks_age_on_the_days_the_group_is_active() -> None:
    engine = _engine(EIGHT_DAYS)
    flows = _usual(10) + _backup(0, DE_FRESH)
    # Nine busy days without the DE network: it is new again, and 1.2 GB to it pages.
    flows += _backup(10, DE_FRESH) + _usual(0.2, start=10 * DAY)
    assert _firing(_run(engine, flows)) == ["EgressNewDestinationVolume DE"]


def test_a_fresh_block_pages_where_the_cloud_a_group_uses_churns_through_networks() -> None:
    engine = _engine(NEW_ABSOLUTE)
    # Every two hours 1.5 GB goes to the cloud, each time to a /24 not used before, all in one
    # /16: the key's usual new-network volume is 1.5 GB an hour.
    uploads = [
        _flow(h * HOUR + 600 + k * 300, f"52.216.{h}.10", 500 * MB)
        for h in range(0, 48, 2)
        for k in range(3)
    ]
    assert _firing(_run(engine, _usual(2) + uploads)) == []
    restored = _engine(NEW_ABSOLUTE)
    restored.restore(engine.snapshot())
    # 2 GB within the hour to a network in a /16 the group never used, beside an upload: under
    # three times the churn of networks, but nothing like it had gone to a new address block.
    later = _usual(1, start=2 * DAY)
    later += [
        _flow(2 * DAY + 2 * HOUR + 600 + k * 300, f"52.216.{50 + k}.10", 500 * MB) for k in range(3)
    ]
    later += [_flow(2 * DAY + 3 * HOUR + 150 + k * 300, "143.198.7.7", 700 * MB) for k in range(3)]
    fired = [a for a in _run(restored, later) if a.state == FIRING]
    assert _firing(fired) == ["EgressNewDestinationVolume US"]
    alert = fired[0]
    assert alert.starts_at == T0 + 2 * DAY + 3 * HOUR + 2 * 300  # 1 GB in the second interval
    assert "143.198.7.0/24" in alert.annotations["new_prefixes"].split(",")
    assert int(alert.annotations["new_block_bytes"]) >= GB


@pytest.mark.parametrize("shrinking", [True, False])
def test_a_small_groups_fresh_network_pages_at_its_smaller_floors(shrinking: bool) -> None:
    # The group's busy 5 minutes carry ~40 MB, a fifth of the 200 MB reference: its hour floor
    # is 200 MB, and 300 MB within the hour to a DE network it never used (most of a busy
    # hour's egress) pages. Kept absolute ("0"), 1 GB stays the floor.
    engine = _engine("" if shrinking else NEW_ABSOLUTE)
    fresh = [_flow(DAY + HOUR + k * 300 + 150, DE_FRESH, 100 * MB) for k in range(3)]
    fired = [a for a in _run(engine, _usual(1.5) + fresh) if a.state == FIRING]
    if not shrinking:
        assert fired == []
        return
    assert _firing(fired) == ["EgressNewDestinationVolume DE"]
    assert engine.new_destinations.factor("research") == pytest.approx(0.2, rel=0.1)
    assert "scaled to the group's size" in fired[0].annotations["description"]


def test_a_small_groups_fresh_network_of_a_provider_it_uses_keeps_the_configured_floors() -> None:
    # 300 MB within the hour to another /24 of the DE hoster the group sends to every interval
    # (a laptop syncing to another network of the office's cloud storage): a new network, but
    # not a new address block, so the configured 1 GB stays its floor.
    same_block = "88.198.7.7"
    fresh = [_flow(DAY + HOUR + k * 300 + 150, same_block, 100 * MB) for k in range(3)]
    assert _firing(_run(_engine(), _usual(1.5) + fresh)) == []


@pytest.mark.parametrize("shrinking", [True, False])
def test_a_small_groups_slow_transfer_in_small_pieces_pages_on_the_day(shrinking: bool) -> None:
    # 4 MB an interval to a fresh DE network for a day and a half: each piece under the
    # configured 8.3 MB an address must carry to count as used (a tenth of the hour floor's
    # share of an interval), over the small group's fifth of it; 1.2 GB a day, over its
    # day floor (a fifth of 5 GB).
    engine = _engine("" if shrinking else NEW_ABSOLUTE)
    drip = [_flow(3 * DAY + k * 300 + 150, DE_FRESH, 4 * MB) for k in range(12 * 36)]
    fired = [a for a in _run(engine, _usual(4.5) + drip) if a.state == FIRING]
    if not shrinking:
        assert fired == []
        return
    assert _firing(fired) == ["EgressNewDestinationVolume DE"]
    assert fired[0].annotations["window"] == "1d"


def test_a_state_written_before_blocks_were_kept_knows_the_blocks_of_its_networks() -> None:
    engine = _engine()
    _run(engine, [*_usual(1.5), *_backup(0, DE_FRESH)])
    state = engine.snapshot()
    groups = state["new_destinations"]["groups"]
    assert "88.99.0.0/16" in {block for block, _first, _last in groups["research"]["blocks"]}
    for item in groups.values():
        del item["blocks"], item["idle"], item["day"]
    del state["new_destinations"]["block_churn"]
    older = _engine()
    older.restore(state)
    assert older.new_destinations.groups["research"].blocks == (
        engine.new_destinations.groups["research"].blocks
    )


def test_a_slow_transfer_to_a_fresh_network_pages_on_the_day_window() -> None:
    engine = _engine(NEW_ABSOLUTE)
    # 300 MB an hour for a day to a DE network never used: never 1 GB within an hour; 5 GB
    # (the day window's floor) in its 200th interval.
    slow = [_flow(3 * DAY + k * 300 + 150, DE_FRESH, 25 * MB) for k in range(288)]
    alerts = _run(engine, _usual(4.5) + slow)
    assert [(a.state, a.labels["alertname"]) for a in alerts] == [
        (FIRING, "EgressNewDestinationVolume"),
        (RESOLVED, "EgressNewDestinationVolume"),
    ]
    fired, resolved = alerts
    assert fired.starts_at == T0 + 3 * DAY + 200 * 300
    assert fired.annotations["window"] == "1d"
    assert int(fired.annotations["bytes"]) >= 5 * GB
    assert DE_FRESH in fired.annotations["top_destinations"]
    assert HOST in fired.annotations["top_sources"]
    # kept while it goes on (its evidence grows with it), resolved soon after it stopped
    assert resolved.annotations["window"] == "1d"
    assert int(resolved.annotations["bytes"]) >= 7 * GB
    assert resolved.ends_at is not None
    assert T0 + 4 * DAY <= resolved.ends_at <= T0 + 4 * DAY + 2 * HOUR


def test_a_transfer_that_paged_on_the_hour_does_not_page_again_on_the_day() -> None:
    engine = _engine()
    fast = [_flow(3 * DAY + HOUR + k * 300 + 150, DE_FRESH, 500 * MB) for k in range(12)]
    alerts = _run(engine, _usual(4.5) + fast)
    assert [(a.state, a.annotations["window"]) for a in alerts] == [
        (FIRING, "1h"),
        (RESOLVED, "1h"),
    ]


def _fresh_networks(days: int) -> list[FlowRecord]:
    """Each day, 8 MB to each of six DE networks and three US ones not used before (day
    window entries far under its floors: the windows wait out their day) and, on day 2, a
    burst to DE beside them."""
    flows = []
    for day in range(1, days):
        for i in range(6):
            for k in range(2):
                at = day * DAY + (2 + i) * HOUR + k * 900 + 150
                flows.append(_flow(at, f"88.99.{10 * day + i}.1", 4 * MB))
                if i < 3:
                    flows.append(_flow(at + 7 * HOUR, f"4.{day}.{i}.1", 4 * MB))
    flows += [_flow(2 * DAY + 13 * HOUR + k * 300 + 200, DE, 900 * MB) for k in range(3)]
    return flows


def _states(engine: Engine, flows: list[FlowRecord], cuts: list[float]) -> list[object]:
    """Alerts and the state file at each cut, restarting from it at the middle one."""
    seen: list[object] = []
    rest = sorted(flows, key=lambda f: f.time_end)
    for index, cut in enumerate(cuts):
        now = [f for f in rest if f.time_end < T0 + cut]
        rest = rest[len(now) :]
        alerts = _run(engine, now)
        seen.append([(a.key, a.state, a.annotations) for a in alerts])
        snapshot = engine.snapshot()
        snapshot.pop("saved_at", None)
        seen.append(orjson.dumps(snapshot))
        if index == 1:
            engine = Engine(engine.config, engine.labeler)
            engine.restore(snapshot)
    return seen


@pure_python_only("egressd.detect.newdest")
def test_windows_waiting_out_their_day_learn_as_if_looked_at_every_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Windows with only day entries under every floor are parked: left alone until they take
    # an entry, their oldest entry expires or a spike covers them. Alerts and the state file
    # (its day churns, their order) must be what looking at every window every interval gives.
    flows = _usual(5) + _fresh_networks(4)
    cuts = [1.6 * DAY, 2.55 * DAY, 3.3 * DAY, 5 * DAY]
    engine = _engine()
    parked = []
    waiting = NewDestinationDetector._park

    def park(self: NewDestinationDetector, *args: object) -> None:
        waiting(self, *args)  # type: ignore[arg-type]
        parked.append(args[0])

    monkeypatch.setattr(NewDestinationDetector, "_park", park)
    lazy = _states(engine, flows, cuts)
    assert len(parked) >= 20
    monkeypatch.setattr(NewDestinationDetector, "_park", lambda *args: None)
    eager = _states(_engine(), flows, cuts)
    assert lazy == eager
    # (both windows' day churns were learned, so the comparison covers them)
    learned = orjson.loads(lazy[-1])["new_destinations"]["day_churn"]  # type: ignore[arg-type]
    assert sorted(dest for _group, dest, _size, _when in learned) == ["DE", "US"]


@pure_python_only("egressd.detect.newdest")
def test_day_churns_learned_while_parked_keep_the_order_they_were_learned_in(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # DE's window is parked when its first day churn is learned (interval 5), US's is looked
    # at when its own is (interval 10, it has an hour entry): the state file lists DE first,
    # as looking at every window every interval does, though DE's came in when it was read.
    def waiting(engine: Engine) -> bytes:
        detector = engine.new_destinations
        start = T0 + 2 * DAY
        for seq, (address, pops_at) in enumerate(((DE, 5), (US, 10)), start=1):
            key = ("research", engine.labeler.label(address))
            window = _NewWindow(key, seq)
            window.day_entries.append((start - 300, 8 * MB, 0))
            window.day_bytes = 8 * MB
            window.day_history.append((start - DAY + pops_at * 300, 8 * MB, 0, 0))
            if address == US:
                window.entries.append(_NewEntry(start - 300, 0, 0, TopK(16), TopK(16)))
            detector.windows[key] = detector._awake[key] = window
        for k in range(1, 30):
            detector._factors = {}
            detector._evaluate(start + k * 300)
        return orjson.dumps(detector.to_json())

    lazy = waiting(_engine())
    monkeypatch.setattr(NewDestinationDetector, "_park", lambda *args: None)
    eager = waiting(_engine())
    assert lazy == eager
    learned = orjson.loads(lazy)["day_churn"]
    assert [dest for _group, dest, _size, _when in learned] == ["DE", "US"]


def test_blocks() -> None:
    assert block_of("88.99.1.0/24") == "88.99.0.0/16"
    assert block_of("2604:a880:b53::/48") == "2604:a880::/32"


def test_the_networks_a_group_remembers_are_bounded() -> None:
    engine = _engine("new_destination_max_prefixes = 5\n")
    flows = [_flow(k * 300 + 100, f"8.8.{k}.8", 10 * MB) for k in range(12)]
    _run(engine, flows)
    _run(engine, [_flow(DAY, US, 1)])
    assert engine.new_destinations.prefixes() == {"research": 5}
    assert engine.new_destinations.evicted >= 6


# -- counters across a restart ---------------------------------------------------------------


def _exported_egress(engine: Engine) -> int:
    totals = dict(engine.stats.egress_by_destination)
    for key, size in engine.aggregator.open_totals().items():
        totals[key] = totals.get(key, 0) + size
    return sum(totals.values())


def test_egress_counters_do_not_count_the_restored_open_interval_again() -> None:
    before = _engine()
    _run(before, [_flow(100, US, 10 * MB), _flow(400, US, 7 * MB)])
    assert _exported_egress(before) == 17 * MB
    after = _engine()
    after.restore(before.snapshot())
    # A restarted process starts its counter at zero: the 7 MB open interval was counted.
    assert _exported_egress(after) == 0
    _run(after, [_flow(450, US, 1 * MB)])
    assert _exported_egress(after) == 1 * MB
    _run(after, [_flow(1000, US, 2 * MB)])  # the restored interval closes
    assert _exported_egress(after) == 3 * MB


#: a research group sending to five countries (grid sites and collaborators in four)
GRID_CONFIG = research_config(
    {"interval": "5m", "learning": "1d", "new_destination_floors_scale_below": "0"},
    countries=("US", "DE", "GB", "FR", "NL"),
)
#: storage endpoints of a grid's sites in three countries, each in its own /16
_GRID_SITES = ("52.4.1.10", "130.246.1.10", "163.172.1.10", "145.100.1.10")


def _grid(day: int, hours: tuple[int, ...], sites: tuple[str, ...] = _GRID_SITES) -> list:
    """1.8 GB within an hour, from each of ``hours`` on ``day``, to a site never used before."""
    return [
        _flow(day * DAY + hour * HOUR + k * 300 + 150, sites[n], 150 * MB)
        for n, hour in enumerate(hours)
        for k in range(12)
    ]


def _grid_engine(extra: str = "") -> Engine:
    return Engine(parse_config(GRID_CONFIG + extra), EmbeddedCountryLabeler())


def test_a_group_that_routinely_sends_gigabytes_to_fresh_blocks_pages_only_beyond_that() -> None:
    engine = _grid_engine()
    # After its first half day (the warm-up), the group sends 1.8 GB an hour to a site it never
    # used, in the US, GB, FR and NL, every three hours (a research grid): its new-block churn,
    # over its destinations.
    assert _firing(_run(engine, _usual(1) + _grid(0, (13, 16, 19, 22)))) == []
    restored = _grid_engine()
    restored.restore(engine.snapshot())
    # 1.6 GB within the hour to a DE network in a block it never used: the DE key has learned
    # no churn, but for this group that is what a new collaborator looks like.
    flows = _usual(1, start=DAY)
    flows += [_flow(DAY + 10 * HOUR + k * 300 + 150, DE_FRESH, 200 * MB) for k in range(8)]
    # 6 GB within the hour to another: beyond three times the group's 1.8 GB, capped at
    # new_destination_group_churn_max (5 GB): it pages once 5 GB have gone.
    flows += [_flow(DAY + 15 * HOUR + k * 300 + 150, "94.130.1.1", 500 * MB) for k in range(12)]
    fired = [a for a in _run(restored, flows) if a.state == FIRING]
    assert _firing(fired) == ["EgressNewDestinationVolume DE"]
    alert = fired[0]
    assert alert.starts_at == T0 + DAY + 15 * HOUR + 10 * 300
    assert alert.annotations["new_prefixes"] == "94.130.1.0/24"
    assert alert.annotations["group_new_block_bar_bytes"] == str(5 * GB)
    assert "new_destination_group_churn_max" in alert.annotations["description"]


@pytest.mark.parametrize("case", ["off", "two destinations"])
def test_a_fresh_block_pages_at_the_floor_unless_novelty_is_routine_for_the_group(
    case: str,
) -> None:
    # Turned off, or with fresh blocks in two destinations only (a cloud that churns, a page
    # that was an incident), the group's novelty is not routine: 1.6 GB to a fresh block pages.
    extra = 'new_destination_group_churn_max = "0"\n' if case == "off" else ""
    hours = (13, 16, 19, 22) if case == "off" else (13, 16)
    engine = _grid_engine(extra)
    flows = _usual(2) + _grid(0, hours)
    flows += [_flow(DAY + 10 * HOUR + k * 300 + 150, DE_FRESH, 200 * MB) for k in range(8)]
    fired = [a for a in _run(engine, flows) if a.state == FIRING]
    assert _firing(fired) == ["EgressNewDestinationVolume DE"]
    assert "group_new_block_bar_bytes" not in fired[0].annotations


def test_what_the_groups_churn_held_back_does_not_raise_the_keys_own_bar() -> None:
    engine = _grid_engine()
    flows = _usual(2) + _grid(0, (13, 16, 19, 22))
    # 4.2 GB within the hour to a fresh DE block: under the group's bar (5 GB), no page. Were
    # it learned as the DE key's own churn, that key's bar would be 12.6 GB from then on.
    flows += [_flow(DAY + 10 * HOUR + k * 300 + 150, DE_FRESH, 350 * MB) for k in range(12)]
    # 6 GB within the hour to another fresh DE block, hours later: beyond the group's bar.
    flows += [_flow(DAY + 15 * HOUR + k * 300 + 150, "94.130.1.1", 500 * MB) for k in range(12)]
    fired = [a for a in _run(engine, flows) if a.state == FIRING]
    assert _firing(fired) == ["EgressNewDestinationVolume DE"]
    assert fired[0].annotations["new_prefixes"] == "94.130.1.0/24"


@pytest.mark.parametrize("bounded", [True, False])
def test_a_keys_own_churn_of_fresh_blocks_raises_its_bar_no_further_than_the_groups(
    bounded: bool,
) -> None:
    engine = _grid_engine("" if bounded else 'new_destination_group_churn_max = "0"\n')
    # On the first day, counting but not yet paging, 6 GB within the hour go to a DE site in a
    # block the group never used (a grid transfer during learning): the DE key learns 6 GB of
    # new-block churn, three times which is 18 GB.
    flows = _usual(2)
    flows += [_flow(14 * HOUR + k * 300 + 150, DE_FRESH, 500 * MB) for k in range(12)]
    # The next day 8 GB within the hour to a fresh VPS in DE: beyond
    # new_destination_group_churn_max (5 GB), so it pages however much the key had sent to new
    # blocks; with the bound off, the key's own churn holds it.
    flows += [_flow(DAY + 10 * HOUR + k * 300 + 150, "94.130.1.1", 667 * MB) for k in range(12)]
    fired = [a for a in _run(engine, flows) if a.state == FIRING]
    if not bounded:
        assert fired == []
        return
    assert _firing(fired) == ["EgressNewDestinationVolume DE"]
    alert = fired[0]
    assert alert.starts_at == T0 + DAY + 10 * HOUR + 8 * 300  # 5.3 GB
    assert alert.annotations["new_prefixes"] == "94.130.1.0/24"
    assert int(alert.annotations["baseline_bytes"]) > 5 * GB  # the key's churn of networks


@pytest.mark.parametrize("bounded", [True, False])
def test_stepping_a_destinations_fresh_block_churn_up_does_not_lift_its_bar_past_the_bound(
    bounded: bool,
) -> None:
    engine = _grid_engine("" if bounded else 'new_destination_group_churn_max = "0"\n')
    # Every other day, a fresh DE block takes 2.5 times what the last one did: 0.9 GB (under
    # the 1 GB floor), 2.25 GB, then 5.6 GB, each under three times the last (what the key
    # learned: its bars for fresh blocks, the hour's and the day's), so none would page, and
    # the next step could be 14 GB. The bound stops the climb at 5 GB.
    flows = _usual(6)
    for day, (address, size) in enumerate(
        (("88.99.1.1", 75 * MB), ("94.130.1.1", 188 * MB), ("116.203.1.1", 470 * MB)),
        start=0,
    ):
        at = (1 + 2 * day) * DAY + 10 * HOUR
        flows += [_flow(at + k * 300 + 150, address, size) for k in range(12)]
    fired = [a for a in _run(engine, flows) if a.state == FIRING]
    if not bounded:
        assert fired == []
        return
    assert _firing(fired) == ["EgressNewDestinationVolume DE"]
    assert fired[0].annotations["new_prefixes"] == "116.203.1.0/24"
    assert fired[0].starts_at == T0 + 5 * DAY + 10 * HOUR + 11 * 300  # 5.2 GB


def test_a_state_file_cannot_give_a_group_an_unbounded_or_unreal_churn() -> None:
    """What learning keeps, a state file cannot exceed: at most GROUP_CHURN_KEPT destinations a
    group (the most recently raised) and positive finite sizes, or every evaluation of the
    group's fresh blocks would scan whatever the file held."""
    from egressd.detect.newdest import GROUP_CHURN_KEPT

    engine = _grid_engine()
    detector = engine.new_destinations
    rows: list[list[object]] = [
        ["research", f"US||{n + 1}", float(GB), T0 + n] for n in range(4 * GROUP_CHURN_KEPT)
    ]
    rows += [["research", "DE||1", math.nan, T0], ["research", "FR||1", math.inf, T0]]
    rows += [["research", "GB||1", -5.0 * GB, T0], ["research", "NL||1", float(GB), math.nan]]
    detector.load_json({"groups": {}, "group_block_churn": rows}, {})
    kept = detector.group_block_churn["research"]
    assert len(kept) == GROUP_CHURN_KEPT
    assert sorted(when for _size, when in kept.values()) == [
        T0 + n for n in range(3 * GROUP_CHURN_KEPT, 4 * GROUP_CHURN_KEPT)
    ]
    assert all(size == GB for size, _when in kept.values())
    churn = detector._group_churn("research", T0 + 4 * GROUP_CHURN_KEPT)
    assert churn == pytest.approx(GB, rel=1e-5)


def test_a_state_file_cannot_give_keys_unreal_churns_or_groups_unbounded_networks() -> None:
    """What learning keeps, a state file cannot exceed: each key's churns are positive and
    finite (a NaN or infinite one would hold the key's bar above anything it sends, for
    good), churns are kept for at most max_keys keys (the most recently raised), and a
    group's networks and blocks number at most new_destination_max_prefixes (the most
    recently used), with finite times."""
    engine = _engine("max_keys = 20\nnew_destination_max_prefixes = 5\n")
    detector = engine.new_destinations
    good = [["eng", f"US||{n + 1}", float(GB), T0 + n] for n in range(60)]
    unreal = [["eng", "DE", math.nan, T0], ["eng", "FR", math.inf, T0], ["eng", "NL", -5.0, T0]]
    unreal += [["eng", "GB", float(GB), math.nan], ["eng", "IE", 0.0, T0]]
    uses = [[f"94.130.{n}.0/24", T0, T0 + n] for n in range(12)]
    uses += [["5.1.1.0/24", T0, math.inf], ["5.1.2.0/24", math.nan, T0]]
    detector.load_json(
        {
            "groups": {"eng": {"since": T0, "prefixes": uses, "blocks": uses}},
            **{name: unreal + good for name in ("churn", "block_churn", "day_churn")},
            "day_block_churn": unreal + good,
        },
        {},
    )
    newest = {f"US||{n + 1}" for n in range(40, 60)}
    for churns in (detector.churn, detector.block_churn, detector.day_churn):
        assert {dest.key for _group, dest in churns} == newest
        assert all(size == GB for size, _when in churns.values())
    assert {dest.key for _group, dest in detector.day_block_churn} == newest
    tracked = detector.groups["eng"]
    for table in (tracked.prefixes, tracked.blocks):
        assert set(table) == {f"94.130.{n}.0/24" for n in range(7, 12)}


def test_a_state_file_cannot_give_unexpected_windows_more_than_learning_keeps() -> None:
    """A window restored holds what learning could have: intervals closed by the saved event
    time, finite starts, sizes not below zero, at most its longest span's worth (the latest);
    and at most max_keys windows. A negative entry dated in the future, before, never expired
    and held its key's total under the floor for good."""
    engine = _engine("max_keys = 20\n")
    saved = T0 + 2 * DAY
    # Eight days of intervals: the longest span (the default week's) holds the latest seven.
    one = [[saved - 8 * DAY + 300.0 * n, 1 * MB, 0, 0] for n in range(8 * 288)]
    one += [[math.nan, 1, 0, 0], [saved - 600, -50 * GB, 0, 0], [saved - 900, MB, -MB, 0]]
    one += [[saved + 30 * DAY, -50 * GB, 0, 0], [saved + 300, 5 * GB, 0, 0]]
    windows: list[dict[str, object]] = [
        {"group": "research", "dest": "CN", "entries": one, "sources": {}, "destinations": {}}
    ]
    windows += [
        {"group": "research", "dest": f"FR||{n + 1}", "entries": [[saved - 300, n, 0, 0]]}
        for n in range(40)
    ]
    engine.restore(
        {**engine.snapshot(), "event_time": saved, "closed_upto": saved, "windows": windows}
    )
    unexpected = engine.unexpected
    cn = next(w for (_g, dest), w in unexpected.windows.items() if dest.key == "CN")
    # (the week's span sums its intervals in hourly buckets)
    starts = [entry[0] for entry in cn.entries]
    assert starts == [saved - 7 * DAY + 3600.0 * n for n in range(7 * 24)]
    assert cn.spans[-1].bytes == 7 * 288 * MB
    assert len(unexpected.windows) <= 20
    assert {dest.key for _group, dest in unexpected.windows} >= {"CN", "FR||40"}


def _hour_to(day: float, hour: float, dst: str, size: int, intervals: int = 12) -> list:
    """``size`` over ``intervals`` five-minute intervals from ``hour`` on ``day``."""
    return [
        _flow(day * DAY + hour * HOUR + k * 300 + 150, dst, size // intervals)
        for k in range(intervals)
    ]


@pytest.mark.parametrize("restart", [False, True])
def test_a_block_a_page_just_named_does_not_page_again_the_same_day(restart: bool) -> None:
    # (the spike rule off: DE's usual 10 MB an interval would make these transfers spikes)
    extra = NEW_ABSOLUTE + 'spike_min_bytes = "1TB"\n'
    engine = _engine(extra)
    # A new collaborator: a 1.5 GB test transfer to a network in a block never used pages.
    test = _hour_to(1, 10, DE_FRESH, 1500 * MB, intervals=4)
    alerts = _run(engine, _usual(1.5) + test)
    assert [(a.state, a.annotations["new_prefixes"]) for a in alerts] == [
        (FIRING, "88.99.1.0/24"),
        (RESOLVED, "88.99.1.0/24"),
    ]
    if restart:
        restored = _engine(extra)
        restored.restore(engine.snapshot())
        engine = restored
    # The bulk in the afternoon, to the site's other endpoint (another /24 of that block): the
    # person paged in the morning knows that block; 3 GB within the hour does not page again.
    flows = _usual(0.25, start=1.5 * DAY) + _hour_to(1, 15, "88.99.77.1", 3 * GB)
    assert _firing(_run(engine, flows)) == []
    # A block no page named still pages, that day and with the same bytes.
    flows = _usual(0.25, start=1.75 * DAY) + _hour_to(1, 19, "94.130.1.1", 3 * GB)
    assert _firing(_run(engine, flows)) == ["EgressNewDestinationVolume DE"]
    # A day after the page resolved, a new network in that block is judged as before (against
    # three times the 2 GB the key learned from the hour before that page crossed its bar).
    later = _usual(1, start=2 * DAY) + _hour_to(2, 15, "88.99.200.1", 8 * GB)
    assert _firing(_run(engine, later)) == ["EgressNewDestinationVolume DE"]


@pytest.mark.parametrize("restart", [False, True])
def test_a_fresh_block_judged_routine_is_that_sites_for_a_day_once_its_transfer_ended(
    restart: bool,
) -> None:
    engine = _grid_engine()
    # A grid group (1.8 GB an hour to fresh sites in four countries, its first and third day).
    flows = _usual(3.5) + _grid(0, (13, 16, 19, 22)) + _grid(2, (13, 16, 19, 22))
    # A new collaborator's test transfer: 1.6 GB within the hour to a block never used,
    # judged the group's routine novelty (under its bar), no page; then it ends.
    flows += [_flow(3 * DAY + 10 * HOUR + k * 300 + 150, DE_FRESH, 200 * MB) for k in range(8)]
    assert _firing(_run(engine, flows)) == []
    if restart:
        restored = _grid_engine()
        restored.restore(engine.snapshot())
        engine = restored
    # The bulk in the afternoon: 9 GB in three hours to that site's two endpoints (the second
    # in another /24 of the block). Without the judgement, the new network pages within the
    # hour and the day window at 5 GB; the site is the one the group's routine took.
    bulk = _usual(0.25, start=3.5 * DAY)
    bulk += [
        _flow(3 * DAY + 15 * HOUR + k * 300 + 150, ("88.99.77.1", DE_FRESH)[k % 2], 250 * MB)
        for k in range(36)
    ]
    assert _firing(_run(engine, bulk)) == []
    # A transfer judged routine that goes on (no pause: no test, then bulk) is judged as
    # before: 1.5 GB an hour for five hours to another fresh block pages on the day window.
    flows = _usual(0.25, start=3.75 * DAY)
    flows += [_flow(3 * DAY + 19 * HOUR + k * 300 + 150, "94.130.1.1", 125 * MB) for k in range(60)]
    fired = [a for a in _run(engine, flows) if a.state == FIRING]
    assert _firing(fired) == ["EgressNewDestinationVolume DE"]
    assert fired[0].annotations["window"] == "1d"
    assert "94.130.1.0/24" in fired[0].annotations["new_prefixes"]


def test_a_state_file_cannot_hold_unbounded_or_unreal_paged_blocks() -> None:
    from egressd.detect.newdest import PAGED_BLOCKS_KEPT

    detector = _engine().new_destinations
    rows: list[list[object]] = [[f"10.{n}.0.0/16", T0 + n] for n in range(4 * PAGED_BLOCKS_KEPT)]
    rows += [["11.0.0.0/16", math.nan], ["12.0.0.0/16", math.inf]]
    group = {"since": T0, "prefixes": [], "paged_blocks": rows}
    detector.load_json({"groups": {"research": group}}, {})
    paged = detector.groups["research"].paged
    assert sorted(paged.values()) == [
        T0 + n for n in range(3 * PAGED_BLOCKS_KEPT, 4 * PAGED_BLOCKS_KEPT)
    ]
    # Blocks judged routine likewise: the latest kept, finite times only.
    rows = [[f"10.{n}.0.0/16", T0 + n, T0 + n, False] for n in range(4 * PAGED_BLOCKS_KEPT)]
    rows += [["11.0.0.0/16", math.nan, T0, True], ["12.0.0.0/16", T0, math.inf, True]]
    group = {"since": T0, "prefixes": [], "routine_blocks": rows}
    detector.load_json({"groups": {"research": group}}, {})
    routine = detector.groups["research"].routine
    assert sorted(judged for judged, _used, _quiet in routine.values()) == [
        T0 + n for n in range(3 * PAGED_BLOCKS_KEPT, 4 * PAGED_BLOCKS_KEPT)
    ]


@pytest.mark.parametrize("restart", [False, True])
def test_a_fresh_block_that_pages_while_its_keys_page_fires_gets_a_page_of_its_own(
    restart: bool,
) -> None:
    extra = NEW_ABSOLUTE + 'spike_min_bytes = "1TB"\n'
    engine = _engine(extra)
    # A transfer to a network in a block never used pages, and goes on for two hours (with
    # a second network of that block: the same transfer).
    first = _hour_to(1, 10, DE_FRESH, 6 * GB, intervals=24) + _hour_to(1, 10.5, "88.99.77.1", GB)
    cut = T0 + DAY + 10.5 * HOUR
    before = [f for f in _usual(1.5) + first if f.time_end < cut]
    alerts = _run(engine, before)
    assert _firing(alerts) == ["EgressNewDestinationVolume DE"]
    assert "dst_block" not in alerts[0].labels
    if restart:
        restored = _engine(extra)
        restored.restore(engine.snapshot())
        engine = restored
    # Meanwhile 3 GB within the hour go to a block no page is about: a page of its own.
    rest = [f for f in _usual(2) + first if f.time_end >= cut]
    rest += _hour_to(1, 10.75, "94.130.1.1", 3 * GB)
    cut = T0 + DAY + 11.5 * HOUR
    alerts = _run(engine, [f for f in rest if f.time_end < cut])
    if restart:
        # (both pages firing across a restart: each still resolves on its own)
        restored = _engine(extra)
        restored.restore(engine.snapshot())
        engine = restored
    alerts += _run(engine, [f for f in rest if f.time_end >= cut])
    fired = [a for a in alerts if a.state == FIRING]
    assert [a.labels.get("dst_block") for a in fired] == ["94.130.0.0/16"]
    page = fired[0]
    assert page.labels["alertname"] == "EgressNewDestinationVolume"
    assert page.labels["dst_country"] == "DE"
    assert page.annotations["firing_with_blocks"] == "88.99.0.0/16"
    assert page.annotations["new_prefixes"] == "94.130.1.0/24"
    assert "was firing" in page.annotations["summary"]
    # Both resolve when their transfers end.
    resolved = [a for a in alerts if a.state == RESOLVED]
    assert sorted(a.labels.get("dst_block", "") for a in resolved) == ["", "94.130.0.0/16"]
