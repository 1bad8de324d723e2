"""The unexpected-destination windows' evidence, built incrementally between expiries."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from egressd.aggregate import Accum
from egressd.config import parse_config
from egressd.detect.alerts import Alert, AlertBook
from egressd.detect.unexpected import UnexpectedDestinationDetector, _Span, _Window, add_heaviest
from egressd.enrich import DestinationLabels
from egressd.enrich.embedded import EmbeddedCountryLabeler
from egressd.model import FlowRecord
from egressd.pipeline import Engine
from egressd.sketch import TopK


def _sketch(rng: random.Random, names: str) -> TopK:
    sketch = TopK(32)
    for _ in range(rng.randrange(1, 60)):
        sketch.add(f"{names}{rng.randrange(120)}", rng.randrange(1, 10_000))
    return sketch


def _interval(rng: random.Random, sources: str = "s", destinations: str = "d") -> Accum:
    """An interval's accumulator with random talker sketches."""
    accum = Accum(32)
    accum.sources = _sketch(rng, sources)
    accum.destinations = _sketch(rng, destinations)
    return accum


def _fresh(window: _Window) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """What evidence() holds when built from nothing (the definition it must keep)."""
    sources, destinations = TopK(64), TopK(64)
    sources.merge(window.sources)
    destinations.merge(window.destinations)
    for entry in window.spans[0].entries:
        if entry[4] is not None:
            sources.merge(entry[4].sources)
            destinations.merge(entry[4].destinations)
    return list(sources.counts.items()), list(destinations.counts.items())


def test_evidence_kept_between_looks_equals_building_it_afresh() -> None:
    rng = random.Random(11)
    window = _Window(2)
    lengths = [3600.0, 86400.0]
    for step in range(60):
        start = step * 300.0
        size = rng.randrange(1, 10**8)
        entry = (start, size, 0, 0)
        if step % 7 == 3:  # an interval that sent nothing carries no sketches
            window.spans[0].add((*entry, None))
        else:
            window.spans[0].add((*entry, _interval(rng)))
        window.spans[1].add(entry)
        now = start + 300.0
        # entries leave the first span, their heaviest talkers joining the long-term evidence
        UnexpectedDestinationDetector._expire(window, [now - length for length in lengths], 0)
        if step % 2 or step % 5 == 0:
            sources, destinations = window.evidence()
            assert (list(sources.counts.items()), list(destinations.counts.items())) == _fresh(
                window
            )
    assert window.sources.counts  # the long-term evidence took part


def test_a_snapshot_reads_evidence_without_keeping_it() -> None:
    rng = random.Random(4)
    window = _Window(1)
    for step in range(5):
        window.spans[0].add((step * 300.0, 1000, 0, 0, _interval(rng)))
    sources, destinations = window.evidence(keep=False)
    assert (list(sources.counts.items()), list(destinations.counts.items())) == _fresh(window)
    again, _ = window.evidence(keep=False)
    assert again is not sources  # built anew: nothing kept for the next reader
    kept, _ = window.evidence()
    assert window.evidence()[0] is kept


# -- the fan-out page's evidence ------------------------------------------------------------

GROUP = "research"
COUNTRIES = ("BR", "CN", "FR", "GB", "HK", "IE", "JP", "NL", "RU", "SE", "US", "ZA")


def _fanout_detector() -> UnexpectedDestinationDetector:
    config = parse_config(
        f'[networks]\nlocal = ["10.0.0.0/8"]\n\n[[groups]]\nname = "{GROUP}"\n'
        'sources = ["10.20.0.0/16"]\nexpected_countries = []\n'
    )
    return Engine(config, EmbeddedCountryLabeler()).unexpected


@st.composite
def _fanout_windows(draw: st.DrawFn) -> tuple[list[tuple[DestinationLabels, _Window]], float]:
    """A group's unexpected windows whose talkers overflow the page's sketches (64 kept)."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = random.Random(seed)
    count = draw(st.integers(2, len(COUNTRIES)))
    detector = _fanout_detector()
    spans = len(detector._config.unexpected_windows)
    windows = []
    for country in COUNTRIES[:count]:
        window = _Window(spans)
        for step in range(rng.randrange(1, 6)):
            start = step * 300.0
            size = rng.randrange(1, 10**8)
            window.spans[0].add((start, size, 0, 0, _interval(rng, "10.20.0.", "47.100.0.")))
            for index in range(1, spans):
                window.spans[index].add((start, size, 0, 0))
        windows.append((DestinationLabels(country), window))
    return windows, 6 * 300.0


@settings(max_examples=200, deadline=None)
@given(_fanout_windows(), st.randoms(use_true_random=False))
def test_the_fan_out_page_reads_the_same_whatever_order_its_windows_came_in(
    drawn: tuple[list[tuple[DestinationLabels, _Window]], float], rng: random.Random
) -> None:
    """Scale-out opens a group's windows in the order partials arrive, one process in the
    order flows did: the page must say the same either way (its sketches keep 64 talkers,
    and which ones survive merging more than that depends on the order merged)."""
    windows, now = drawn
    shuffled = list(windows)
    rng.shuffle(shuffled)
    pages = []
    for order in (windows, shuffled):
        detector = _fanout_detector()
        detector.windows = {(GROUP, dest): window for dest, window in order}
        pages.append(detector._describe_fanout(now, GROUP, 10**9, 0, 500 * 10**6))
    assert pages[0] == pages[1]


# -- annotations brought up to date but read later -----------------------------------------

T0 = 1_773_014_400.0  # a Monday, 00:00 UTC
MB = 1_000_000
#: unexpected destinations for the research group: RU, CN, BR, HK, JP, GB, FR, NL, IE
_TARGETS = (
    "77.88.55.60", "47.100.23.45", "200.147.67.142", "218.188.1.1", "133.242.1.1",
    "212.58.244.22", "163.172.1.1", "145.100.190.243", "87.198.1.1",
)  # fmt: skip


def _paging_flows() -> list[FlowRecord]:
    """Three hours of a growing fan-out under every floor, one destination of it over its own,
    from hosts that change, then three hours of quiet: pages that grow, then resolve."""
    rng = random.Random(3)
    flows = []
    for k in range(72):
        t = T0 + 300 * k + 100
        if k < 36:
            for i, target in enumerate(_TARGETS):
                if i == 0 and k >= 20:
                    continue  # RU's own page ends first
                # RU pages at once and hardly grows after: its page's evidence waits unread
                # while the fan-out page's growth reads RU's window again
                scale = (16 if k < 4 else 0.1) if i == 0 else 1 + k / 36
                for _ in range(4):
                    host = f"10.20.{rng.randrange(3)}.{rng.randrange(1, 200)}"
                    size = int(rng.uniform(1.5, 2.2) * MB * scale)
                    flows.append(FlowRecord(t - 1, t + i, host, target, size, size // 1200))
        flows.append(FlowRecord(t - 1, t + 50, "10.20.0.7", "8.8.8.8", 30 * MB, 25_000))
    return flows


class _EagerBook(AlertBook):
    """Builds every description when it is brought up to date (no deferred annotations)."""

    __slots__ = ()

    def evaluate(self, *args: Any, **kwargs: Any) -> Alert | None:
        return super().evaluate(*args[:6], **kwargs)


def test_annotations_read_intervals_later_say_what_they_said_when_brought_up_to_date() -> None:
    """A firing page's annotations are captured each time its bytes grow and rendered when
    read, intervals later, after the windows took more entries and expired some: the events
    say what building the annotations at once says."""
    config = parse_config(
        '[networks]\nlocal = ["10.0.0.0/8"]\n\n[[groups]]\nname = "research"\n'
        'sources = ["10.20.0.0/16"]\nexpected_countries = ["US"]\n'
        # the floors as configured (the flows are drawn for them, not for the group's size)
        '[detection]\nunexpected_floors_scale_below = "0"\n'
    )
    engines = {name: Engine(config, EmbeddedCountryLabeler()) for name in ("eager", "late", "read")}
    engines["eager"].book.__class__ = _EagerBook
    events: dict[str, list[dict[str, Any]]] = {name: [] for name in engines}
    deferred = 0
    for number, flow in enumerate(_paging_flows()):
        for name, engine in engines.items():
            events[name] += [alert.event() for alert in engine.process([flow])]
        deferred += sum(a._render is not None for a in engines["late"].book.active.values())
        # One engine's fan-out page is read as soon as it is brought up to date (its windows'
        # evidence moves on), its other pages only every hundredth flow (their evidence behind).
        for alert in engines["read"].book.active.values():
            if alert.key[2] == "multiple" or number % 100 == 0:
                assert alert.annotations
    for name, engine in engines.items():
        events[name] += [alert.event() for alert in engine.flush()]
    assert deferred  # the late engine did keep annotations unrendered between intervals
    statuses = [(e["status"], e["labels"]) for e in events["late"]]
    for status in ("firing", "resolved"):
        for country in ("multiple", "RU"):
            assert any(s == status and labels["dst_country"] == country for s, labels in statuses)
    assert events["late"] == events["eager"]
    assert events["read"] == events["eager"]


def test_expiring_keeps_what_each_span_holds_and_merges_what_left_the_first() -> None:
    """Expiring leaves each span (per interval and in hourly buckets) exactly its entries from
    its horizon on with their sums, and merges the heaviest talkers of every interval that left
    the first span into the long-term evidence, in order, when the week holds ``heavy``."""
    rng = random.Random(5)
    lengths = [3600.0, 4 * 3600.0, 8 * 3600.0]
    for _trial in range(40):
        window = _Window(3, (0.0, 0.0, 3600.0))
        heavy = rng.choice([0, 10**6, 10**7, 10**9])
        #: the model: every interval with its accumulator, and the long-term evidence
        held: list[tuple[float, int, int, int, Accum | None]] = []
        sources, destinations = TopK(16), TopK(16)
        start = 0.0
        for _step in range(rng.randrange(1, 150)):
            start += 300.0 * rng.choice([1, 1, 1, 2, 5, 20])  # (gaps: intervals not taken)
            size = rng.choice([0, rng.randrange(1, 10**6)])
            small = rng.choice([0, rng.randrange(0, size + 1)])
            ingress = rng.choice([0, rng.randrange(1, 10**6)])
            accum = _interval(rng) if size else None
            window.spans[0].add((start, size, small, ingress, accum))
            for span in window.spans[1:]:
                span.add((start, size, small, ingress))
            held.append((start, size, small, ingress, accum))
            if rng.random() < 0.7:
                continue  # (a window not looked at this interval)
            now = start + 300.0
            horizons = [now - length for length in lengths]
            before = list(window.spans[0].entries)
            UnexpectedDestinationDetector._expire(window, horizons, heavy)
            for span, horizon in zip(window.spans, horizons, strict=True):
                kept = list(span.entries)
                assert all(e[0] >= horizon for e in kept)
                assert span.bytes == sum(e[1] for e in kept)
                assert span.small == sum(e[2] for e in kept)
                assert span.ingress == sum(e[3] for e in kept)
            assert list(window.spans[0].entries) == [e for e in held if e[0] >= horizons[0]]
            in_day = [e[:4] for e in held if e[0] >= horizons[1]]
            assert list(window.spans[1].entries) == in_day
            left = [e for e in before if e[0] < horizons[0]]
            if left and window.spans[-1].bytes >= heavy:
                for entry in left:
                    if entry[4] is not None:
                        add_heaviest(entry[4], 4, sources, destinations)
            assert window.sources.counts == sources.counts
            assert window.destinations.counts == destinations.counts


def test_captured_evidence_stays_as_it_was_while_merges_wait_and_happen() -> None:
    """The heaviest talkers of intervals leaving the first span join the long-term evidence
    only when it is read (or enough wait): evidence captured for a page, read later, is what
    merging eagerly gave at the capture, whatever merges and reads came in between."""
    rng = random.Random(3)
    lengths = [3600.0, 86400.0]
    merged = 0
    for _trial in range(40):
        window = _Window(2)
        #: the model: the long-term evidence merged as intervals leave the first span
        model_sources, model_destinations = TopK(16), TopK(16)
        captures: list[tuple[Any, Any]] = []
        start = 0.0
        for _step in range(rng.randrange(20, 150)):
            start += 300.0 * rng.choice([1, 1, 1, 3])
            accum = _interval(rng) if rng.random() < 0.9 else None
            size = rng.randrange(1, 10**6) if accum is not None else 0
            window.spans[0].add((start, size, 0, 0, accum))
            window.spans[1].add((start, size, 0, 0))
            now = start + 300.0
            if rng.random() < 0.6:
                heavy = rng.choice([0, 0, 10**12])
                before = list(window.spans[0].entries)
                UnexpectedDestinationDetector._expire(window, [now - n for n in lengths], heavy)
                if window.spans[-1].bytes >= heavy:
                    for entry in before:
                        if entry[0] < now - lengths[0] and entry[4] is not None:
                            add_heaviest(entry[4], 4, model_sources, model_destinations)
            expected_sources, expected_destinations = TopK(64), TopK(64)
            expected_sources.merge(model_sources)
            expected_destinations.merge(model_destinations)
            for entry in window.spans[0].entries:
                if entry[4] is not None:
                    expected_sources.merge(entry[4].sources)
                    expected_destinations.merge(entry[4].destinations)
            expected = (list(expected_sources.counts.items()), expected_destinations.counts)
            choice = rng.random()
            if choice < 0.25:
                captures.append((window.capture_evidence(), expected))
            elif choice < 0.35:
                merged += bool(window._pending)
                sources, destinations = window.evidence()
                assert (list(sources.counts.items()), destinations.counts) == expected
            if captures and rng.random() < 0.2:
                captured, then = captures.pop(rng.randrange(len(captures)))
                sources, destinations = window.evidence_at(captured)
                assert (list(sources.counts.items()), destinations.counts) == then
        for captured, then in captures:
            sources, destinations = window.evidence_at(captured)
            assert (list(sources.counts.items()), destinations.counts) == then
        assert window.sources.counts == model_sources.counts
    assert merged  # (reads found intervals waiting to join)


def test_upload_given_the_effective_egress_is_upload_computing_it() -> None:
    rng = random.Random(8)
    for _ in range(2000):
        span = _Span()
        span.bytes = rng.randrange(0, 10**7)
        span.small = rng.choice([0, rng.randrange(0, span.bytes + 1)])
        span.ingress = rng.choice([0, rng.randrange(0, 10**8)])
        fraction = rng.choice([0.0, 0.05, 0.5, 1.0])
        assert span.upload(fraction, span.effective(fraction)) == span.upload(fraction)


def test_an_intervals_entries_share_their_numbers() -> None:
    """Every span's entry of one interval holds the same number objects, and every window's
    the same start: in the compiled build a number held as a machine value was boxed anew
    for each tuple (half as much memory again a window, 468 entries each)."""
    detector = _fanout_detector()
    start = 1_772_409_600.0
    bucket = {}
    for index, country in enumerate(COUNTRIES[:3]):
        accum = bucket[(GROUP, DestinationLabels(country))] = Accum(16)
        accum.bytes = 400_000 + index
        accum.small = 1_000 + index
        accum.ingress = 2_000 + index
        accum.flows = accum.packets = 1
    detector.collect(start, bucket)
    stamps = set()
    for window in detector.windows.values():
        first = window.spans[0].entries[-1]
        for span in window.spans[1:]:
            entry = span.entries[-1]
            assert all(a is b for a, b in zip(entry, first[:4], strict=True))
        stamps.add(id(first[0]))
    assert len(detector.windows) == 3
    assert len(stamps) == 1
