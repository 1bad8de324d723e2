"""EgressUnexpectedDestination: bytes to destinations outside a group's expected set.

Each configured window (``detection.unexpected_windows``; by default 1 h / 100 MB,
1 d / 1 GB and 7 d / 1 GB) has its own floor, and a destination pages when any window reaches
its floor; a window after the first only while the transfer goes on (:func:`still_sending`),
so a transfer that stopped resolves when the first window empties. What a destination's windows
hold when its alert resolves pages no second time (:meth:`_Window.pay`): a paused transfer that
resumes within the week is the incident that resolved, and only what is sent after counts
toward a new page. A trickle at a window's pace longer than a day (:data:`KEEP_REACH`) keeps
open only a page of that window. A window of more than ``2 * _SPAN_ENTRIES`` intervals (the
week's) keeps its intervals summed into buckets (:func:`bucket_lengths`: hourly for the week,
at most 169 entries per destination), in memory and in the state file. A small group's floor
for a window longer than a day is at least :data:`GROUP_BAR_TIMES` times its third largest
unexpected destination's sum in the longest window, at most the configured floor
(:meth:`UnexpectedDestinationDetector.measure_bars`): routine traffic to several unlisted
countries sums over a week to what the scaled floor is.
Small-packet egress (ACKs) counts only beyond ``ingress_return_fraction`` of the ingress from
the same destination in that window, so a download's return path does not page while an
upload beside it does. A group's unexpected egress summed over its destinations pages too, at
``fanout_factor`` times a window's floor (fan-out: many destinations, each under its floor),
over the windows up to a day (a week of a group's routine sums to no incident).
Every byte floor (the windows', the fan-out sums', the dust that opens a window) is multiplied
by the group's factor: its busy-interval egress (:class:`GroupRates`) over
``unexpected_floors_scale_below`` when it carries less, down to a fifth, and more slowly (the
square root) below, at least ``unexpected_floors_lowest_factor``, asked once per group and
interval. A new country is as telling in a lab of a hundred hosts as in an office of
thousands, at a tenth of the bytes; in an office of a dozen desks at a thirtieth.
Under the configured floors only upload-shaped egress counts: bytes beyond
:data:`RETURN_SHARE` of the ingress from the destination (a download's requests and ACKs from
a CDN edge in a new country do not page a small office); at the configured floors bulk
egress counts in full, as for any group.

Cost: a destination gets a window of its own from its first interval carrying at least a
tenth of the smallest per-interval share of a floor of the windows kept per interval, or half
that share of a bucketed window's (248 KB with the defaults, the week's, times the group's
factor; smaller intervals count for the fan-out sums only). A window is looked at when
it takes an entry that leaves one of its spans at or over that span's floor, or has an alert to
keep or resolve; the rest is swept every 36 intervals. Evidence sketches are kept
for the first window's span; older entries merge their heaviest talkers into the window's
evidence once, and only for windows halfway to a floor, when that evidence is next read (a
page's annotations, a state snapshot) or once a few dozen busy intervals' worth wait
(:meth:`_Window.defer`): what a read finds is what merging at once gave, and intervals no
read reaches (a replay without a state file reads a window's evidence only when one of its
pages is sent) are never merged. A window's merged evidence, once read
(a description), is kept and takes only the entries that came since at the next read, until
an entry leaves the first span: a fan-out page reads hundreds of windows each interval.
A firing page brought up to date captures its windows' evidence as it is (the long-term part
and what waits to join it held, copied before they next change; the first span's entries as
they are); merging it and formatting wait until its
annotations are read (sent, resolved, saved), from the kept evidence while that has not moved
past what was captured.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from itertools import islice
from typing import Any

from egressd.aggregate import Accum, AggregateKey, Bucket, heaviest_items, value_text, with_texts
from egressd.baseline.grouprate import GroupRates
from egressd.baseline.seasonal import SeasonalBaselines
from egressd.config import DetectionConfig
from egressd.detect.alerts import RESOLVED, Alert, AlertBook, AlertKey, rfc3339
from egressd.detect.base import Detector
from egressd.detect.labels import LabelOptions, alert_labels, top, top_with_bytes
from egressd.detect.policy import ExpectedDestinations
from egressd.enrich import DestinationLabels
from egressd.sketch import TopK
from egressd.units import format_bytes, format_duration

UNEXPECTED = "EgressUnexpectedDestination"
#: the destination key of a group's summed unexpected egress (fan-out)
FANOUT_COUNTRY = "multiple"
#: talkers per interval merged into a window's long-term evidence, and how many it keeps
_EVIDENCE_ITEMS = 4
_EVIDENCE_CAPACITY = 16
#: talker values (three a flow) of the intervals waiting to join a window's long-term evidence
#: (:meth:`_Window.defer`) past which they join it at once, and what an interval whose talkers
#: went into its sketches counts (two sketches' worth): what they hold stays under half a MB a
#: window (a sparse window's week of intervals, 40-80 intervals of a busy key)
_PENDING_SIZE = 16384
_SETTLED_SIZE = 6 * 64
#: windows not looked at for this many intervals are swept (expired, dropped when empty)
_SWEEP_EVERY = 36
#: under the configured floors (a small group's lower ones), egress counts only beyond this
#: share of the ingress from the same destination within the window, whatever its packets'
#: size: a download's return path (ACKs, and requests that can average more than
#: ``small_packet_bytes`` a packet) stays under a tenth of it, an upload does not
RETURN_SHARE = 0.1


#: one interval of one key: (start, bytes, small-packet bytes, ingress bytes). Plain tuples of
#: numbers: the garbage collector stops tracking them, so a day of them costs it nothing. A
#: window's first span holds its intervals' evidence too: (start, bytes, small, ingress,
#: accumulator), the interval's :class:`~egressd.aggregate.Accum` (its ``sources`` and
#: ``destinations`` sketches, made when first read: most windows' never are), None when the
#: interval sent nothing (or came from a state file, whose evidence is merged already), so
#: expiring the first span and giving up the sketches is one pass.
_Entry = tuple[Any, ...]


def still_sending(
    totals: Sequence[int], spans: Sequence[tuple[float, int]], factor: float, reach: int = -1
) -> bool:
    """Whether an alert's transfer goes on: it keeps the alert open (no resolve, no new page).

    It goes on while the shortest window's bytes, at their pace, would bring some window (up
    to index ``reach``; -1: every one) to half its floor (times ``factor``). A slow transfer
    that paged on the hour and goes on at the daily window's pace stays one alert, instead of
    resolving and paging again when the day's sum crosses its floor; a transfer that stopped
    resolves as soon as the shortest window empties, whatever the longer ones still hold.
    """
    shortest, recent = spans[0][0], totals[0]
    last = len(spans) - 1 if reach < 0 else min(reach, len(spans) - 1)
    # (a loop, not any() of a generator: asked of every alerting window each interval)
    for index in range(last + 1):
        length, floor = spans[index]
        if recent * (length / shortest) >= factor * floor / 2:
            return True
    return False


#: windows up to this long keep any alert open while the transfer goes on at their pace
#: (still_sending); a longer one (the week's) only an alert that paged on it
KEEP_REACH = 86400.0


#: a small group's floor for a window longer than :data:`KEEP_REACH` is at least this many
#: times the third largest of its unexpected destinations' sums in the longest window, never
#: above the configured floor (:meth:`UnexpectedDestinationDetector.measure_bars`)
GROUP_BAR_TIMES = 3


def keep_reach(spans: Sequence[tuple[float, int]]) -> int:
    """The index of the longest window of at most :data:`KEEP_REACH` (0 when none is)."""
    return max((i for i, (length, _floor) in enumerate(spans) if length <= KEEP_REACH), default=0)


#: a span holds at most about this many entries: a longer window sums its intervals into
#: buckets of several (a week of 5-minute intervals in hourly buckets)
_SPAN_ENTRIES = 168


def bucket_lengths(windows: Sequence[tuple[float, int]], interval: float) -> tuple[float, ...]:
    """Per window, the length of its entries: one interval, or for a window of more than
    ``2 * _SPAN_ENTRIES`` intervals a whole number of them (a week of 5 minutes: an hour)."""
    return tuple(
        interval * max(1, round(length / interval) // _SPAN_ENTRIES) for length, _floor in windows
    )


class _Span:
    """The entries of one window length, with running sums.

    A span with ``bucket`` longer than an interval (a week's) sums consecutive intervals into
    one entry per bucket, stamped with its first interval's start: it expires a bucket at a
    time, so it covers its length less at most a bucket.
    """

    __slots__ = ("bucket", "bytes", "entries", "ingress", "next_bucket", "small")

    def __init__(self, bucket: float = 0.0) -> None:
        self.entries: deque[_Entry] = deque()
        self.bytes = 0
        self.small = 0
        self.ingress = 0
        #: 0 for one entry per interval
        self.bucket = bucket
        #: where the last entry's bucket ends (an entry starting before it joins that one)
        self.next_bucket = 0.0

    def add(self, entry: _Entry) -> None:
        if self.bucket:
            self.add_bucketed(entry[0], entry[1], entry[2], entry[3])
            return
        self.entries.append(entry)
        self.bytes += entry[1]
        self.small += entry[2]
        self.ingress += entry[3]

    def add_bucketed(self, start: float, size: int, small: int, ingress: int) -> None:
        """Sum an interval into the last bucket, or open a bucket with it."""
        entries = self.entries
        if start < self.next_bucket and entries:
            last = entries[-1]
            entries[-1] = (last[0], last[1] + size, last[2] + small, last[3] + ingress)
        else:
            entries.append((start, size, small, ingress))
            self.next_bucket = start - start % self.bucket + self.bucket
        self.bytes += size
        self.small += small
        self.ingress += ingress

    def expire(self, horizon: float) -> None:
        entries = self.entries
        while entries and entries[0][0] < horizon:
            entry = entries.popleft()
            self.bytes -= entry[1]
            self.small -= entry[2]
            self.ingress -= entry[3]

    def effective(self, return_fraction: float) -> int:
        """Egress that counts: bulk always; small packets beyond a share of the ingress."""
        small = self.small
        if not small:
            return self.bytes
        return self.bytes - small + max(small - int(return_fraction * self.ingress), 0)

    def upload(self, return_fraction: float, effective: int | None = None) -> int:
        """Egress that counts toward a floor under the configured one: what counts
        (:meth:`effective`, given as ``effective`` when the caller has it already), but only
        beyond :data:`RETURN_SHARE` of the ingress."""
        total = self.effective(return_fraction) if effective is None else effective
        ingress = self.ingress
        if not ingress:
            return total
        return min(total, max(self.bytes - int(RETURN_SHARE * ingress), 0))


class _Window:
    """One (group, destination)'s recent intervals: one span per configured window length."""

    __slots__ = (
        "_destinations",
        "_evidence",
        "_generation",
        "_merged",
        "_pending",
        "_pending_size",
        "_shared",
        "_sources",
        "alerting",
        "bucketed",
        "credit",
        "longer",
        "paged_on",
        "paid_until",
        "spans",
        "touched",
    )

    def __init__(self, count: int, buckets: Sequence[float] = ()) -> None:
        #: the first span's entries carry the intervals' sketches (see _Entry); ``buckets``:
        #: per span, its bucket length (bucket_lengths) when longer than an interval, else 0
        self.spans = [_Span(buckets[i] if i < len(buckets) else 0.0) for i in range(count)]
        #: the spans after the first: one entry per interval, and in buckets
        self.longer = tuple(span for span in self.spans[1:] if not span.bucket)
        self.bucketed = tuple(span for span in self.spans[1:] if span.bucket)
        #: evidence of entries older than the first span (heaviest talkers only): see
        #: :attr:`sources`; the accumulators of intervals that left the first span and whose
        #: heaviest talkers join it when it is next read, in order, and what they hold
        #: (talker values, :data:`_SETTLED_SIZE` for sketches); True while a capture holds the
        #: long-term sketches and the list (the next merge copies them first)
        self._sources = TopK(_EVIDENCE_CAPACITY)
        self._destinations = TopK(_EVIDENCE_CAPACITY)
        self._pending: list[Accum] = []
        self._pending_size = 0
        self._shared = False
        self.alerting = False
        #: while alerting, the longest window (index) its alert fired on, else -1
        self.paged_on = -1
        #: per span, what it still holds of the intervals before ``paid_until`` (bytes,
        #: small-packet bytes, ingress): an alert of the window resolved then, and those bytes
        #: paged once (:meth:`pay`); None when the spans hold none of them
        self.credit: list[list[int]] | None = None
        self.paid_until = 0.0
        #: the last interval end at which the window was looked at
        self.touched = 0.0
        #: evidence() as last built, and how many first-span entries it holds; None once
        #: entries left the first span (or the long-term evidence changed)
        self._evidence: tuple[TopK, TopK] | None = None
        self._merged = 0
        #: counts forget_evidence: captured evidence of the same generation is a prefix
        self._generation = 0

    @property
    def sources(self) -> TopK:
        """The long-term evidence's sources: the heaviest talkers of every interval that left
        the first span while the window was heavy (or alerting), added in order."""
        if self._pending:
            self._merge_pending()
        return self._sources

    @sources.setter
    def sources(self, sketch: TopK) -> None:
        self._merge_pending()
        self._sources = sketch

    @property
    def destinations(self) -> TopK:
        """The long-term evidence's destinations (see :attr:`sources`)."""
        if self._pending:
            self._merge_pending()
        return self._destinations

    @destinations.setter
    def destinations(self, sketch: TopK) -> None:
        self._merge_pending()
        self._destinations = sketch

    def defer(self, left: Sequence[_Entry]) -> None:
        """Intervals that left the first span while the window was heavy: their heaviest
        talkers join the long-term evidence when it is next read (most windows' never is
        before they empty; a state snapshot reads every one), or once what waits holds
        :data:`_PENDING_SIZE` talker values."""
        pending = self._pending
        size = self._pending_size
        for entry in left:
            accum = entry[4]
            if accum is not None:
                pending.append(accum)
                talkers = accum.talkers
                size += len(talkers) if talkers is not None else _SETTLED_SIZE
        self._pending_size = size
        if size > _PENDING_SIZE:
            self._merge_pending()

    def _merge_pending(self, count: int = -1) -> None:
        """Add the waiting intervals' heaviest talkers to the long-term evidence, in order:
        all of them, or the first ``count`` (the rest go on waiting)."""
        pending = self._pending
        if not pending:
            return
        sources, destinations = self._sources, self._destinations
        if self._shared:
            # A capture holds these: it keeps them as they are (copy on write).
            sources = self._sources = sources.copy()
            destinations = self._destinations = destinations.copy()
            self._shared = False
        # (a new list: a capture holds its prefix of the old one)
        if 0 <= count < len(pending):
            self._pending = pending[count:]
            pending = pending[:count]
            self._pending_size = sum(
                len(accum.talkers) if accum.talkers is not None else _SETTLED_SIZE
                for accum in self._pending
            )
        else:
            self._pending = []
            self._pending_size = 0
        for accum in pending:
            add_heaviest(accum, _EVIDENCE_ITEMS, sources, destinations)

    @property
    def entries(self) -> deque[_Entry]:
        """Entries of the longest window: empty when no window holds anything."""
        return self.spans[-1].entries

    @property
    def intervals(self) -> deque[_Entry]:
        """Entries of the longest window kept per interval (every interval such a window
        holds; the bucketed spans hold them too, summed)."""
        longer = self.longer
        return longer[-1].entries if longer else self.spans[0].entries

    @property
    def total(self) -> int:
        return self.spans[0].bytes

    def pay(self, now: float) -> None:
        """The window's alert resolved at ``now``: what its spans hold paged, and pages no
        second time (a paused transfer that resumes within the week is the same incident;
        what is sent from ``now`` on counts toward a page of its own)."""
        self.credit = [[span.bytes, span.small, span.ingress] for span in self.spans]
        self.paid_until = now
        for span in self.bucketed:
            # An interval from now on opens a bucket of its own: no bucket straddles ``now``.
            span.next_bucket = min(span.next_bucket, now)

    def settle(self, horizons: Sequence[float]) -> None:
        """Take what is about to leave each span (before ``horizons``) off its credit; none
        left once the longest span keeps nothing from before ``paid_until``."""
        credit = self.credit
        if credit is None:
            return
        until = self.paid_until
        for index, span in enumerate(self.spans):  # (see collect: not zip)
            paid = credit[index]
            horizon = horizons[index]
            for entry in span.entries:
                start = entry[0]
                if start >= horizon or start >= until:
                    break
                paid[0] -= entry[1]
                paid[1] -= entry[2]
                paid[2] -= entry[3]
        for entry in self.spans[-1].entries:
            if entry[0] >= horizons[-1]:
                if entry[0] >= until:
                    self.credit = None
                return
        self.credit = None

    def unpaid(self, index: int) -> _Span:
        """Span ``index`` without what paged already (its sums only)."""
        span = self.spans[index]
        credit = self.credit
        if credit is None:
            return span
        paid = credit[index]
        view = _Span()
        view.bytes = span.bytes - paid[0]
        view.small = span.small - paid[1]
        view.ingress = span.ingress - paid[2]
        return view

    def evidence(self, keep: bool = True) -> tuple[TopK, TopK]:
        """Top sources and destinations over everything the window holds (read only).

        The same sketches as merging the long-term evidence and then every first-span entry's
        into empty ones, in order: entries only join at the end between expiries, so the
        sketches built last time take just the entries that came since (one merge per entry
        instead of the whole span's at each look, for a fan-out page's hundreds of windows).
        ``keep=False`` (a state snapshot reads every window once) builds without keeping.
        """
        entries = self.spans[0].entries
        if self._evidence is None and not keep:
            return _build_evidence(self.sources, self.destinations, entries)
        return self._advance(len(entries))

    def _advance(self, count: int) -> tuple[TopK, TopK]:
        """The kept evidence, taking the first-span entries up to ``count``."""
        entries = self.spans[0].entries
        cached = self._evidence
        if cached is None:
            sources = TopK(64)
            destinations = TopK(64)
            sources.merge(self.sources)
            destinations.merge(self.destinations)
            cached = self._evidence = (sources, destinations)
            merged = 0
        else:
            sources, destinations = cached
            merged = self._merged
            if merged == count:
                return cached
        for entry in islice(entries, merged, count):
            accum = entry[4]
            if accum is not None:
                sources.merge(accum.sources)
                destinations.merge(accum.destinations)
        self._merged = count
        return cached

    def capture_evidence(self) -> _EvidenceAt:
        """What :meth:`evidence_at` needs to give the evidence as it is now, later: no merging
        now (a firing page's evidence is read only when its annotations are)."""
        entries = self.spans[0].entries
        pending = self._pending
        self._shared = True  # (the long-term sketches are copied before they next change)
        return (
            self._generation,
            len(entries),
            self._sources,
            self._destinations,
            pending,
            len(pending),
            tuple(entries),
        )

    def evidence_at(self, captured: _EvidenceAt) -> tuple[TopK, TopK]:
        """The evidence as it was at :meth:`capture_evidence` (read only).

        Until entries leave the first span (a new generation) the window's entries are the
        captured ones and more after them: the kept evidence serves, when it has not taken
        any of those after. Otherwise it is built from what was captured, and not kept.
        """
        generation, count, sources, destinations, pending, waiting, entries = captured
        if generation == self._generation and (self._evidence is None or self._merged <= count):
            return self._advance(count)
        if waiting:
            if pending is self._pending and sources is self._sources:
                # Nothing merged since the capture: what waited then joins the window's own
                # evidence now (once), and the capture reads that.
                self._merge_pending(waiting)
                sources, destinations = self._sources, self._destinations
            else:
                sources, destinations = sources.copy(), destinations.copy()
                for accum in pending[:waiting]:
                    add_heaviest(accum, _EVIDENCE_ITEMS, sources, destinations)
        return _build_evidence(sources, destinations, entries)

    def forget_evidence(self) -> None:
        """Entries left the first span or the long-term evidence changed: build anew."""
        self._evidence = None
        self._generation += 1


#: a window's evidence as :meth:`_Window.capture_evidence` took it: (generation, first-span
#: entries, long-term sources and destinations, the list of intervals waiting to join them and
#: how many of it waited, the first-span entries themselves)
_EvidenceAt = tuple[int, int, TopK, TopK, list[Accum], int, tuple[_Entry, ...]]


def _build_evidence(
    long_sources: TopK, long_destinations: TopK, entries: Iterable[_Entry]
) -> tuple[TopK, TopK]:
    sources = TopK(64)
    destinations = TopK(64)
    sources.merge(long_sources)
    destinations.merge(long_destinations)
    for entry in entries:
        accum = entry[4]
        if accum is not None:
            sources.merge(accum.sources)
            destinations.merge(accum.destinations)
    return sources, destinations


def heaviest(accum: Accum, n: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """The :func:`~egressd.aggregate.heaviest_items` of ``accum``'s sources' and destinations'
    sketch.

    While its talkers wait and no sketch would evict (at most ``capacity`` distinct addresses
    each), the sketches would hold the exact sums in first-flow order: those are summed by
    address value and only the ``n`` picked get their text (a window's expiry reads the few
    heaviest of each interval leaving its first span). The talkers stay: a later read of the
    sketches makes them as ever. (Here, not a method of the accumulator: this module is
    compiled in the compiled build, the accumulators' is not.)
    """
    talkers = accum.talkers
    # (the accumulator's own fields read, not through a Python property: a call of Python
    # from compiled code)
    if talkers is not None and accum._sources is None and accum._destinations is None:
        count = len(talkers)
        if count <= 3 * min(n, accum.capacity):
            # At most n distinct talkers each, none evicted: all of them, summed, in
            # first-flow order (by text: one text per address value).
            by_source: dict[str, int] = {}
            by_target: dict[str, int] = {}
            for index in range(0, count, 3):
                source = value_text(talkers[index])
                target = value_text(talkers[index + 1])
                weight = talkers[index + 2]
                by_source[source] = by_source.get(source, 0) + weight
                by_target[target] = by_target.get(target, 0) + weight
            return list(by_source.items()), list(by_target.items())
        # Summed a run of one talker at a time (a key's flows mostly come in runs of one
        # source or destination): a dict update per run, not per flow, and the same sums in
        # the same first-flow order (a talker's first run ends before any later one's).
        sources: dict[int, int] = {}
        destinations: dict[int, int] = {}
        src = talkers[0]
        dst = talkers[1]
        src_sum = dst_sum = 0
        for index in range(0, count, 3):
            size = talkers[index + 2]
            value = talkers[index]
            if value == src:
                src_sum += size
            else:
                sources[src] = sources.get(src, 0) + src_sum
                src = value
                src_sum = size
            value = talkers[index + 1]
            if value == dst:
                dst_sum += size
            else:
                destinations[dst] = destinations.get(dst, 0) + dst_sum
                dst = value
                dst_sum = size
        sources[src] = sources.get(src, 0) + src_sum
        destinations[dst] = destinations.get(dst, 0) + dst_sum
        capacity = accum.capacity
        if len(sources) <= capacity and len(destinations) <= capacity:
            return (
                with_texts(heaviest_items(sources, n)),
                with_texts(heaviest_items(destinations, n)),
            )
    return heaviest_items(accum.sources.counts, n), heaviest_items(accum.destinations.counts, n)


def add_heaviest(accum: Accum, n: int, sources: TopK, destinations: TopK) -> None:
    """Add :func:`heaviest` of ``accum``'s sketches to ``sources`` and ``destinations`` (a
    window's long-term evidence), in order; an interval of one flow (a third of a sparse
    network's) without the lists."""
    talkers = accum.talkers
    if (
        talkers is not None
        and len(talkers) == 3
        and accum._sources is None
        and accum._destinations is None
    ):
        sources.add(value_text(talkers[0]), talkers[2])
        destinations.add(value_text(talkers[1]), talkers[2])
        return
    heavy_sources, heavy_destinations = heaviest(accum, n)
    _add_each(sources, heavy_sources)
    _add_each(destinations, heavy_destinations)


def _add_each(sketch: TopK, pairs: list[tuple[str, int]]) -> None:
    """``sketch.add`` of each (item, weight) pair in order (:meth:`TopK.add_distinct`), an
    item the sketch holds summed here without the call."""
    counts = sketch.counts
    for item, weight in pairs:
        current = counts.get(item)
        if current is not None:
            counts[item] = current + weight
        else:
            sketch.add(item, weight)


def _by_key(item: tuple[AggregateKey, _Window]) -> tuple[str, str]:
    return item[0][0], item[0][1].key


def about(seconds: float) -> str:
    """A transfer's length in words a page's reader takes in at once ("6 days", "19 hours")."""
    for unit, size in (("day", 86400.0), ("hour", 3600.0)):
        if seconds >= 2 * size:
            return f"{round(seconds / size)} {unit}s"
    minutes = max(round(seconds / 60), 1)
    return f"{minutes} minute" + ("s" if minutes > 1 else "")


def _floor_text(floor: int, configured: int, span: str, barred: bool = False) -> str:
    """The floor a page was judged by; below the configured one, that one and why
    (``barred``: the group's bar raised it, see measure_bars)."""
    text = f"{format_bytes(floor)} per {span}"
    if floor < configured:
        text += (
            f": {format_bytes(configured)} scaled to the group's size "
            "(its busy-interval egress under unexpected_floors_scale_below)"
        )
        if barred:
            text += (
                f", raised to {GROUP_BAR_TIMES}x the group's third largest unexpected "
                f"destination within {span}"
            )
    return text


class UnexpectedDestinationDetector(Detector):
    """Sliding windows per (group, unexpected destination), plus per-group sums."""

    __slots__ = (
        "_alerting",
        "_bars",
        "_buckets",
        "_factors",
        "_fanout_last",
        "_group_levels",
        "_groups",
        "_limits",
        "_reach",
        "_ticks",
        "_touched",
        "evicted",
        "rates",
        "windows",
    )

    def __init__(
        self,
        config: DetectionConfig,
        policy: ExpectedDestinations,
        book: AlertBook,
        labels: LabelOptions,
        rates: GroupRates | None = None,
    ) -> None:
        super().__init__(config, policy, book, labels)
        #: each group's busy-interval egress: the floors of a small group shrink with it
        self.rates = rates if rates is not None else GroupRates()
        #: this interval's factor per group (asked of the rates once per group and interval)
        self._factors: dict[str, float] = {}
        self.windows: dict[AggregateKey, _Window] = {}
        #: windows dropped to stay within detection.max_keys
        self.evicted = 0
        #: per group: one span per window length over all its unexpected destinations
        self._groups: dict[str, list[_Span]] = {}
        #: groups with an active fan-out alert
        self._fanout_last: set[str] = set()
        #: per group, its bar for windows longer than a day (measure_bars), and this
        #: interval's floors (_levels)
        self._bars: dict[str, int] = {}
        self._group_levels: dict[str, list[float]] = {}
        #: per group: windows with an alert of their own
        self._alerting: dict[str, set[AggregateKey]] = {}
        #: windows that took an entry this interval, in bucket order
        self._touched: list[tuple[AggregateKey, _Window]] = []
        self._ticks = 0
        #: what collect needs of the configuration: (dust, floors, lowest floor)
        self._limits = self._compute_limits()
        #: per window, its bucket length when its span sums several intervals, else 0
        self._buckets = self._compute_buckets()
        #: the longest window up to a day (keep_reach): the fan-out's, and without a bar
        self._reach = keep_reach(config.unexpected_windows)

    def reconfigure(self, config: DetectionConfig, labels: LabelOptions) -> None:
        if config.unexpected_windows != self._config.unexpected_windows:
            self.windows = {}  # other window lengths: start afresh
            self._groups = {}
            self._alerting = {}
            self._touched = []
        self._config = config
        self._labels = labels
        self._limits = self._compute_limits()
        self._buckets = self._compute_buckets()
        self._reach = keep_reach(config.unexpected_windows)

    def _compute_buckets(self) -> tuple[float, ...]:
        interval = self._config.interval
        lengths = bucket_lengths(self._config.unexpected_windows, interval)
        return tuple(length if length > interval else 0.0 for length in lengths)

    def _compute_limits(self) -> tuple[int, list[int], int]:
        floors = [floor for _length, floor in self._config.unexpected_windows]
        return self._dust, floors, min(floors)

    def measure_bars(self) -> None:
        """Each group's bar for its windows longer than a day (:data:`GROUP_BAR_TIMES`).

        Routine traffic to unexpected destinations (a few MB a day to each of several
        countries nobody listed) sums over a week to what a small group's scaled week floor
        is: a drip is told apart from it by being several times what the group's third largest
        such destination carries, up to the configured floor (the floor of a group at its full
        size, which no bar raises). Measured at the sweep (every 36 intervals) over the windows
        without an alert or a credit (what paged is no routine).
        """
        tops: dict[str, list[int]] = {}
        for (group, _dest), window in self.windows.items():
            if window.alerting or window.credit is not None:
                continue
            size = window.spans[-1].bytes
            top = tops.get(group)
            if top is None:
                tops[group] = [size]
            elif len(top) < 3:
                top.append(size)
                top.sort(reverse=True)
            elif size > top[2]:
                top[2] = size
                top.sort(reverse=True)
        self._bars = {g: GROUP_BAR_TIMES * top[2] for g, top in tops.items() if len(top) == 3}
        self._group_levels = {}

    def _levels(self, group: str, g: float) -> list[float]:
        """``group``'s floors this interval: the configured ones times its factor ``g``, and
        for a window longer than a day at least its bar (never above the configured floor)."""
        levels = self._group_levels.get(group)
        if levels is None:
            spans = self._config.unexpected_windows
            bar = self._bars.get(group, 0)
            reach = self._reach
            levels = self._group_levels[group] = [
                floor * g if i <= reach else max(floor * g, min(floor, bar))
                for i, (_length, floor) in enumerate(spans)
            ]
        return levels

    def factor(self, group: str) -> float:
        """What ``group``'s floors are multiplied by this interval (at most 1)."""
        factor = self._factors.get(group)
        if factor is None:
            config = self._config
            factor = self._factors[group] = self.rates.shrink(
                group,
                config.unexpected_floors_scale_below,
                config.unexpected_floors_lowest_factor,
                config.interval,
            )
        return factor

    # -- accounting ------------------------------------------------------------------------

    def collect(self, start: float, bucket: Bucket) -> None:
        """Remember this interval's bytes to every destination unexpected for its group."""
        policy = self.policy
        windows = self.windows
        count = len(self._config.unexpected_windows)
        buckets = self._buckets
        now = start + self._config.interval
        # The longest span holds every entry the others do, so its sum bounds theirs: under
        # the lowest floor, no span can page.
        dust, floors, lowest = self._limits
        # A small group's floors are lower (its factor, at most 1, asked once per interval):
        # under the least any group's can be, nothing to ask.
        factors: dict[str, float] = {}
        self._factors = factors
        self._group_levels = {}
        config = self._config
        shrinks = config.unexpected_floors_scale_below > 0
        least = config.unexpected_floors_lowest_factor if shrinks else 1.0
        dust_least, lowest_least = dust * least, lowest * least
        touched = self._touched
        groups: dict[str, list[int]] = {}
        #: per group, the policy's answer for labels without region and ASN (asked once)
        rules: dict[str, frozenset[str] | None] = {}
        # The entries hold these as objects (Any): one float for every entry of the interval,
        # one int per value and window. Compiled, a float or int local is a machine number,
        # boxed anew for each tuple it goes into (three tuples a window and interval: a
        # compiled window took half as much memory again).
        stamp: Any = start
        for key, accum in bucket.items():
            size = accum.bytes
            window = windows.get(key)
            if window is None:
                if not size:
                    continue  # ingress alone: nothing to set it against
                dest = key[1]
                if dest.region or dest.asn:
                    if policy.is_expected(key[0], dest, start):
                        continue
                else:
                    group = key[0]
                    if group in rules:
                        rule = rules[group]
                    else:
                        rule = rules[group] = policy.country_rule(group, start)
                    if rule is None or dest.country in rule:
                        continue
                if size >= dust or (size >= dust_least and size >= dust * self.factor(key[0])):
                    window = windows[key] = _Window(count, buckets)
                small, ingress = accum.small, accum.ingress
            else:
                small, ingress = accum.small, accum.ingress
                if not size and not ingress:
                    continue
            if window is not None:
                held = window.spans
                span = held[0]
                size_value: Any = size
                small_value: Any = small
                ingress_value: Any = ingress
                span.entries.append(
                    (stamp, size_value, small_value, ingress_value, accum if size else None)
                )
                span.bytes += size
                if small:
                    span.small += small
                if ingress:
                    span.ingress += ingress
                entry: _Entry = (stamp, size_value, small_value, ingress_value)
                for span in window.longer:
                    span.entries.append(entry)
                    span.bytes += size
                    if small:
                        span.small += small
                    if ingress:
                        span.ingress += ingress
                for span in window.bucketed:
                    # Span.add_bucketed inlined: every window, every interval it takes.
                    entries = span.entries
                    if start < span.next_bucket and entries:
                        last = entries[-1]
                        entries[-1] = (
                            last[0],
                            last[1] + size_value,
                            last[2] + small_value,
                            last[3] + ingress_value,
                        )
                    else:
                        entries.append(entry)
                        span.next_bucket = start - start % span.bucket + span.bucket
                    span.bytes += size
                    if small:
                        span.small += small
                    if ingress:
                        span.ingress += ingress
                if window.touched != now:
                    window.touched = now
                    # Evaluation looks only at windows that might page (sums before expiring
                    # bound those after) or that have an alert to keep or resolve.
                    if window.alerting:
                        touched.append((key, window))
                    elif held[-1].bytes >= lowest_least:
                        # (the factor's cache read here: a compiled call of a bound method
                        # held in a local goes through Python's generic call)
                        g = factors.get(key[0], -1.0)
                        if g < 0.0:
                            g = self.factor(key[0])
                        # (enumerate, not zip(strict=True): compiled, a zip with keywords
                        # is a Python call and iterator, one without is a C loop)
                        for index, span in enumerate(held):
                            if span.bytes >= floors[index] * g:
                                touched.append((key, window))
                                break
            total = groups.get(key[0])
            if total is None:
                groups[key[0]] = [size, small, ingress]
            else:
                total[0] += size
                if small:
                    total[1] += small
                if ingress:
                    total[2] += ingress
        for group, (size, small, ingress) in groups.items():
            spans = self._groups.get(group)
            if spans is None:
                # (the fan-out's windows only: up to a day, see _evaluate_fanout)
                spans = self._groups[group] = [
                    _Span(bucket) for bucket in buckets[: self._reach + 1]
                ]
            entry = (stamp, size, small, ingress)
            for span in spans:
                span.add(entry)
        if len(windows) > self._config.max_keys:
            self._evict_for_room()

    @property
    def _dust(self) -> int:
        """Below this, an interval does not open a window of its own (it still counts for
        the group's fan-out sums): a tenth of the smallest per-interval share of a floor of
        the windows kept per interval, at most half that share of a bucketed (week's) one.

        A window reaches a floor only with intervals averaging that share, so the bytes of
        the dust intervals before a window opens are at most a tenth of a per-interval
        window's floor; a week's drip opens its window with intervals at half its floor's
        pace (a tenth of it, 50 kB, would keep a week's window for most scanned addresses).
        """
        config = self._config
        interval = config.interval
        windows = config.unexpected_windows
        return int(
            min(
                floor * interval / length / (2 if bucket > interval else 10)
                for (length, floor), bucket in zip(
                    windows, bucket_lengths(windows, interval), strict=True
                )
            )
        )

    @staticmethod
    def _expire(window: _Window, horizons: list[float], heavy: int) -> None:
        """Drop what left each span (``horizons``: the oldest start each span keeps).

        Intervals leaving the first span give up their sketches; for windows of at least
        ``heavy`` bytes (or with an alert) their heaviest talkers join the window's evidence.
        """
        spans = window.spans
        if window.credit is not None:
            window.settle(horizons)
        # Span.expire inlined: this runs for every window the sweep looks at.
        span = spans[0]
        entries = span.entries
        horizon = horizons[0]
        left: list[_Entry] = []  # what leaves the first span, sketches and all
        if entries and entries[0][0] < horizon:
            size = small = ingress = 0
            while entries and entries[0][0] < horizon:
                entry = entries.popleft()
                left.append(entry)
                size += entry[1]
                small += entry[2]
                ingress += entry[3]
            span.bytes -= size
            span.small -= small
            span.ingress -= ingress
            # (forget_evidence inlined)
            window._evidence = None
            window._generation += 1
        for index in range(1, len(spans)):
            span = spans[index]
            entries = span.entries
            horizon = horizons[index]
            if entries and entries[0][0] < horizon:
                size = small = ingress = 0
                while entries and entries[0][0] < horizon:
                    entry = entries.popleft()
                    size += entry[1]
                    small += entry[2]
                    ingress += entry[3]
                span.bytes -= size
                span.small -= small
                span.ingress -= ingress
        if left and (spans[-1].bytes >= heavy or window.alerting):
            window.defer(left)

    def _evict_for_room(self) -> None:
        """Drop the lightest tenth of the windows without an active alert.

        The lightest are the furthest from the floor, so they are the ones that cannot page.
        """
        candidates = [
            (window.spans[-1].bytes, key)
            for key, window in self.windows.items()
            if not window.alerting and window.credit is None
        ]
        excess = len(self.windows) - self._config.max_keys
        count = min(len(candidates), max(excess, self._config.max_keys // 10, 1))
        for _total, key in heapq.nsmallest(count, candidates, key=lambda item: item[0]):
            self.windows.pop(key).touched = -1.0  # an evicted window is not evaluated
        self.evicted += count

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(self, now: float, baselines: SeasonalBaselines) -> list[Alert]:
        """Evaluate at event time ``now`` (the end of the closed interval).

        Only windows whose totals can have grown (they took an entry) or that have an alert
        to keep or resolve are evaluated; totals of the others only shrink.
        """
        self._ticks += 1
        sweep = self._ticks % _SWEEP_EVERY == 0
        if not (self._touched or sweep or self._fanout_last or any(self._alerting.values())):
            # Nothing took an entry and nothing has an alert: only the groups' sums can move.
            return self._evaluate_fanout(now) if self._groups else []
        config = self._config
        spans = config.unexpected_windows
        fraction = config.ingress_return_fraction
        changed: list[Alert] = []
        book = self.book
        active = book.active
        fanout_last = self._fanout_last
        windows = self.windows
        horizons = [now - length for length, _floor in spans]
        floors = [floor for _length, floor in spans]
        # Windows halfway to the longest window's floor might still page: keep evidence.
        heavy = spans[-1][1] // 2
        reach_least = self._reach
        # (methods called as such, not held in locals: compiled, a held bound method is
        # called through Python's generic call, a method call is a C call)
        factors = self._factors  # (what factor asked of the rates this interval)
        if sweep:
            for key, window in list(windows.items()):
                if not window.alerting:
                    self._expire(window, horizons, int(heavy * self.factor(key[0])))
                    if not window.entries:
                        del windows[key]
            if reach_least < len(spans) - 1:
                self.measure_bars()
        touched = self._touched
        self._touched = []
        # In key order, not bucket order (one process and a scale-out's partials fill buckets
        # in different orders): two groups paging in one interval page in the same order.
        touched.sort(key=_by_key)
        untouched = [
            (key, held)
            for alerting in self._alerting.values()
            for key in alerting
            if (held := windows.get(key)) is not None and held.touched != now
        ]
        untouched.sort(key=_by_key)
        for key, window in touched + untouched:
            if window.touched < 0:
                continue  # evicted since it took its entry
            group, dest = key
            g = factors.get(group)
            if g is None:
                g = self.factor(group)
            if not window.alerting and (sweep or window.touched != now):
                # Fast path: the sums before expiring bound the sums after; under every
                # floor nothing can fire (expiring waits for the hourly sweep). A window that
                # took an entry this interval was let in by collect with the same sums and
                # factor, unless the sweep expired it since.
                for index, span in enumerate(window.spans):  # (see collect: not zip)
                    if span.bytes >= floors[index] * g:
                        break
                else:
                    continue
            self._expire(window, horizons, int(heavy * g))
            alert_key: AlertKey = (UNEXPECTED, group, dest.key)
            if not window.alerting and group in fanout_last and alert_key not in active:
                # The group's fan-out page covers this destination: it cannot fire (below).
                if not window.entries:
                    del windows[key]
                continue
            fire_index = -1
            totals = []
            effectives = []
            paid = window.credit is not None
            # Up to the first window that fires: what is read below is that window's total
            # and the first window's (still_sending reads only the shortest's pace).
            for index, span in enumerate(window.spans):
                if paid:
                    # What paged once (its alert resolved) pages no second time.
                    span = window.unpaid(index)
                total = span.effective(fraction)
                effectives.append(total)
                configured = floors[index]
                if g < 1.0 and total < configured:
                    # Under the configured floor only upload-shaped egress counts: a download
                    # from a new CDN edge is no page for a small group either.
                    total = span.upload(fraction, total)
                totals.append(total)
                if total >= (
                    configured * g if index <= reach_least else self._levels(group, g)[index]
                ):
                    fire_index = index
                    break
            # Kept as with the configured floors, or while the upload goes on at the group's:
            # a download's return path that paged at the configured floor stays one alert.
            # A transfer goes on at the pace of the windows up to a day, or of a longer one
            # that paged: a trickle at a week's pace keeps open only a page of the week.
            # (Asked only where it decides: a page on a longer window, or an alert to keep.)
            sending = False
            if fire_index > 0 or (fire_index < 0 and window.alerting):
                reach = max(reach_least, fire_index, window.paged_on)
                sending = still_sending(effectives, spans, 1.0, reach) or (
                    g < 1.0 and still_sending(totals, spans, g, reach)
                )
            if fire_index > 0 and not sending:
                # A longer window holds a page only while the transfer goes on: one that
                # stopped resolves, and its bytes do not page again, for the week they stay.
                fire_index = -1
            if fire_index >= 0 and group in fanout_last and alert_key not in active:
                # The group's fan-out page already covers this destination: one page, not
                # one per country, while it lasts.
                fire_index = -1
            if fire_index < 0 and not window.alerting:
                if not window.entries:
                    del windows[key]
                continue
            keep = fire_index >= 0 or sending
            shown = fire_index if fire_index >= 0 else 0
            # The floor this group's page is judged by (and shows).
            floor = round(
                spans[shown][1] * g if shown <= reach_least else self._levels(group, g)[shown]
            )

            # Evidence of a firing alert is rebuilt when its total grew by a tenth of the
            # floor, not at every interval of a day-long window: an alert held open with
            # weaker evidence only moves its times (AlertBook.hold), no descriptions built.
            step = max(floor // 10, 1)
            strength = totals[shown] // step * step
            alert: Alert | None = None
            if not (keep and book.hold(alert_key, now, strength)):

                def describe(
                    window: _Window = window,
                    total: int = totals[shown],
                    index: int = shown,
                    group: str = group,
                    dest: DestinationLabels = dest,
                    floor: int = floor,
                ) -> tuple[dict[str, str], dict[str, str]]:
                    return self._describe(now, window, total, index, floor, group, dest, baselines)

                def later(
                    window: _Window = window,
                    total: int = totals[shown],
                    index: int = shown,
                    group: str = group,
                    dest: DestinationLabels = dest,
                    floor: int = floor,
                ) -> tuple[int, Callable[[], dict[str, str]]]:
                    return total, self._capture(
                        now, window, total, index, floor, group, dest, baselines
                    )

                alert = book.evaluate(
                    alert_key, now, fire_index >= 0, keep, describe, strength, later
                )
            if alert is not None:
                changed.append(alert)
                if alert.state == RESOLVED:
                    window.pay(now)
            window.alerting = alert_key in active
            if window.alerting:
                if fire_index > window.paged_on:
                    window.paged_on = fire_index
                alerting = self._alerting.get(group)
                if alerting is None:
                    alerting = self._alerting[group] = set()
                alerting.add(key)
            else:
                window.paged_on = -1
                self._alerting.get(group, set()).discard(key)
                if not window.entries:
                    del windows[key]
        changed.extend(self._evaluate_fanout(now))
        return changed

    def _evaluate_fanout(self, now: float) -> list[Alert]:
        config = self._config
        # A group's sums over windows up to a day: a week of its routine unexpected egress
        # summed over every destination is no incident (a drip is one destination's).
        spans = config.unexpected_windows[: self._reach + 1]
        count = len(spans)
        factor = config.fanout_factor
        fraction = config.ingress_return_fraction
        changed = []
        sweep = self._ticks % _SWEEP_EVERY == 0
        least = factor
        if config.unexpected_floors_scale_below > 0:
            least *= config.unexpected_floors_lowest_factor
        for group in list(self._groups):
            group_spans = self._groups[group]
            active = group in self._fanout_last
            if not active and not sweep:
                # The sums before expiring bound those after: under every floor, nothing to do
                # (under the least any group's can be, the group's factor is not even asked).
                for span, (_length, floor) in zip(group_spans, spans, strict=True):
                    if span.bytes >= least * floor:
                        break
                else:
                    continue
            # The fan-out factor times the group's own (a small group's floors are lower).
            times = factor * self.factor(group)
            sums = []
            uploads = []
            for index, span in enumerate(group_spans):
                span.expire(now - spans[index][0])
                total = span.effective(fraction)
                sums.append(total)
                uploads.append(span.upload(fraction, total))
            if not active:
                if not group_spans[-1].entries:
                    del self._groups[group]
                    continue
                if all(
                    total < times * floor for total, (_l, floor) in zip(sums, spans, strict=True)
                ):
                    continue  # cannot fire, and no alert to keep
            # Destinations paging on their own are not part of the fan-out.
            for key in self._alerting.get(group, ()):
                window = self.windows.get(key)
                if window is not None:
                    for index in range(count):
                        span = window.spans[index]
                        total = span.effective(fraction)
                        sums[index] -= total
                        uploads[index] -= span.upload(fraction, total)
            effectives = list(sums)
            if times < factor:
                # Under the configured floor only upload-shaped egress counts (see above).
                for index, (_l, floor) in enumerate(spans):
                    if sums[index] < factor * floor:
                        sums[index] = max(min(sums[index], uploads[index]), 0)
            fire_index = -1
            for index, (_l, floor) in enumerate(spans):
                if sums[index] >= times * floor:
                    fire_index = index
                    break
            sending = still_sending(effectives, spans, factor) or (
                times < factor and still_sending(sums, spans, times)
            )
            if fire_index > 0 and not sending:
                fire_index = -1  # a longer window holds a page only while the sending goes on
            keep = fire_index >= 0 or sending
            shown = fire_index if fire_index >= 0 else 0
            alert_key: AlertKey = (UNEXPECTED, group, FANOUT_COUNTRY)
            floor = int(times * spans[shown][1])

            step = max(floor // 10, 1)
            strength = sums[shown] // step * step
            alert: Alert | None = None
            if not (keep and self.book.hold(alert_key, now, strength)):

                def describe(
                    group: str = group,
                    total: int = sums[shown],
                    index: int = shown,
                    floor: int = floor,
                ) -> tuple[dict[str, str], dict[str, str]]:
                    return self._describe_fanout(now, group, total, index, floor)

                def later(
                    group: str = group,
                    total: int = sums[shown],
                    index: int = shown,
                    floor: int = floor,
                ) -> tuple[int, Callable[[], dict[str, str]]]:
                    return total, self._capture_fanout(now, group, total, index, floor)

                alert = self.book.evaluate(
                    alert_key, now, fire_index >= 0, keep, describe, strength, later
                )
            if alert is not None:
                changed.append(alert)
            if alert_key in self.book.active:
                self._fanout_last.add(group)
            else:
                self._fanout_last.discard(group)
        return changed

    # -- evidence ----------------------------------------------------------------------------

    def _describe_fanout(
        self, now: float, group: str, total: int, index: int, floor: int
    ) -> tuple[dict[str, str], dict[str, str]]:
        labels = {
            "alertname": UNEXPECTED,
            "group": group,
            "dst_country": FANOUT_COUNTRY,
            "severity": self._config.severity,
        }
        return labels, self._capture_fanout(now, group, total, index, floor)()

    def _capture_fanout(
        self, now: float, group: str, total: int, index: int, floor: int
    ) -> Callable[[], dict[str, str]]:
        """What a fan-out page's annotations say of the windows as they are now, rendered
        (the windows' evidence merged, the texts built) only when the annotations are read.
        ``floor`` is the one the sum was judged by (the group's, for the window)."""
        config = self._config
        length, configured = config.unexpected_windows[index]
        configured = int(config.fanout_factor * configured)
        countries: dict[str, int] = {}
        #: the windows' evidence as it is now (their sketches take later intervals' entries)
        evidence: list[tuple[_Window, _EvidenceAt]] = []
        horizon = now - length
        # In destination order, not the order windows opened (flows in one process, partials
        # in a scale-out): merging more talkers than the sketches keep depends on the order.
        mine = [(dest, window) for (g, dest), window in self.windows.items() if g == group]
        mine.sort(key=lambda item: item[0].key)
        for dest, window in mine:
            span = window.spans[index]
            entries = span.entries
            size = span.bytes  # (every entry within the horizon: the running sum)
            for entry in entries:  # (less what a span not expired lately holds from before it)
                if entry[0] >= horizon:
                    break
                size -= entry[1]
            if not size:
                continue
            evidence.append((window, window.capture_evidence()))
            countries[dest.country] = countries.get(dest.country, 0) + size
        expected = self.policy.expected_countries(group)
        expected_text = ", ".join(sorted(expected)) if expected else "none"

        def render() -> dict[str, str]:
            span = format_duration(length)
            n = config.top_talkers
            count = len(evidence)
            sources = TopK(64)
            destinations = TopK(64)
            for window, captured in evidence:
                window_sources, window_destinations = window.evidence_at(captured)
                sources.merge(window_sources)
                destinations.merge(window_destinations)
            top_countries = sorted(countries.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
            return {
                "summary": (
                    f"{group} sent {format_bytes(total)} within {span} to {count} destinations "
                    "it is not expected to send to, each under its own floor"
                ),
                "description": (
                    f"Group {group} sent {format_bytes(total)} to {count} unexpected "
                    f"destinations within {span} up to {rfc3339(now)} (floor for the sum "
                    f"{_floor_text(floor, configured, span)}). "
                    f"Countries: {', '.join(c for c, _ in top_countries)}. "
                    f"Expected countries: {expected_text}. "
                    f"Top sources: {top_with_bytes(sources, n)}. "
                    f"Top destinations: {top_with_bytes(destinations, n)}."
                ),
                "bytes": str(total),
                "baseline_bytes": "0",
                "window": span,
                "destinations": str(count),
                "dst_countries": ",".join(c for c, _ in top_countries),
                "expected_countries": expected_text,
                "top_sources": top(sources, n),
                "top_destinations": top(destinations, n),
            }

        return render

    def _describe(
        self,
        now: float,
        window: _Window,
        total: int,
        index: int,
        floor: int,
        group: str,
        dest: DestinationLabels,
        baselines: SeasonalBaselines,
    ) -> tuple[dict[str, str], dict[str, str]]:
        labels = alert_labels(UNEXPECTED, group, dest, self._config.severity, self._labels)
        return labels, self._capture(now, window, total, index, floor, group, dest, baselines)()

    def _capture(
        self,
        now: float,
        window: _Window,
        total: int,
        index: int,
        floor: int,
        group: str,
        dest: DestinationLabels,
        baselines: SeasonalBaselines,
    ) -> Callable[[], dict[str, str]]:
        """What a window's page says of it as it is now, rendered when the annotations are
        read (the window's spans and evidence, the baseline and the policy change later).
        ``floor`` is the one it was judged by (the window's, times the group's factor)."""
        config = self._config
        length, configured = config.unexpected_windows[index]
        barred = index > self._reach and floor > round(configured * self.factor(group))
        span_data = window.spans[index]
        small, ingress = span_data.small, span_data.ingress
        expectation = baselines.expect((group, dest.key), now - config.interval)
        baseline = round(expectation.bytes) if expectation is not None else 0
        expected = self.policy.expected_countries(group)
        expected_text = ", ".join(sorted(expected)) if expected else "none"
        first = span_data.entries[0][0] if span_data.entries else now
        if window.credit is not None:
            first = max(first, window.paid_until)  # (what came before paged once)
        captured = window.capture_evidence()
        # A drip over days reads as its pace: what an hour of it carries.
        pace = ""
        if now - first >= 2 * 86400.0:
            pace = f", about {format_bytes(total * 3600.0 / (now - first))} an hour"

        def render() -> dict[str, str]:
            sources, destinations = window.evidence_at(captured)
            span = format_duration(length)
            n = config.top_talkers
            set_against = ""
            if small:
                set_against = (
                    f" Of it, small-packet egress {format_bytes(small)} was set against "
                    f"{format_bytes(ingress)} of ingress from {dest.describe()}."
                )
            annotations = {
                "summary": (
                    f"{group} sent {format_bytes(total)} over {about(now - first)} to "
                    f"{dest.describe()}, a destination it is not expected to send to "
                    f"({span} window)"
                ),
                "description": (
                    f"Group {group} sent {format_bytes(total)} to {dest.describe()} between "
                    f"{rfc3339(first)} and {rfc3339(now)}{pace} "
                    f"(floor {_floor_text(floor, configured, span, barred)}).{set_against} "
                    f"Expected countries: {expected_text}. "
                    f"Top sources: {top_with_bytes(sources, n)}. "
                    f"Top destinations: {top_with_bytes(destinations, n)}."
                ),
                "bytes": str(total),
                "baseline_bytes": str(baseline),
                "window": span,
                "ingress_bytes": str(ingress),
                "small_packet_bytes": str(small),
                "expected_countries": expected_text,
                "top_sources": top(sources, n),
                "top_destinations": top(destinations, n),
            }
            if dest.as_org:
                annotations["dst_as_org"] = dest.as_org
            return annotations

        return render

    # -- persistence -------------------------------------------------------------------------

    def to_json(self) -> list[dict[str, object]]:
        """Each window: its intervals (those of its longest window kept per interval) and, when
        a window sums intervals into buckets, its longest such window's buckets."""
        out: list[dict[str, object]] = []
        for (group, dest), window in self.windows.items():
            sources, destinations = window.evidence(keep=False)
            item: dict[str, object] = {
                "group": group,
                "dest": dest.key,
                "as_org": dest.as_org,
                "entries": [list(e[:4]) for e in window.intervals],
                "sources": sources.to_json(),
                "destinations": destinations.to_json(),
            }
            if window.bucketed:
                item["buckets"] = [list(e) for e in window.bucketed[-1].entries]
            if window.credit is not None:
                item["paid_until"] = window.paid_until
            if window.alerting and window.paged_on > 0:
                item["paged_on"] = window.paged_on
            out.append(item)
        return out

    def load_json(
        self,
        data: list[dict[str, object]],
        intern: dict[str, DestinationLabels],
        until: float = math.inf,
    ) -> None:
        """Restore what :meth:`to_json` wrote, held to what learning keeps: a window's entries
        are intervals that closed by ``until`` (the saved event time), with finite starts and
        sizes not below zero, at most as many as its longest span holds (the latest); at most
        ``max_keys`` windows (the lightest without an alert dropped, as at run time). An
        entry dated in the future would never expire, and a negative or an ingress-laden one
        would hold the key's total under its floor for as long. A bucketed window's buckets
        are held the same way; an older state's windows, which held their entries per interval
        only, fill it from those."""
        config = self._config
        windows: dict[AggregateKey, _Window] = {}
        count = len(config.unexpected_windows)
        kept = math.ceil(
            max(length for length, _floor in config.unexpected_windows) / config.interval
        )
        buckets = self._buckets
        #: per group, its windows' intervals and buckets (the group's sums, rebuilt in order)
        group_entries: dict[str, tuple[list[_Entry], list[_Entry]]] = {}
        for item in data:
            dest_key = str(item["dest"])
            dest = intern.get(dest_key)
            if dest is None:
                base = DestinationLabels.from_key(dest_key)
                dest = DestinationLabels(
                    base.country, base.region, base.asn, str(item.get("as_org", "")), "state"
                )
                intern[dest_key] = dest
            window = _Window(count, buckets)
            entries = item["entries"]
            saved_buckets = item.get("buckets")
            if not isinstance(entries, list) or not isinstance(saved_buckets, list | None):
                raise ValueError("malformed window")
            group = str(item["group"])
            intervals, summed = group_entries.setdefault(group, ([], []))
            rows: list[tuple[float, int, int, int]] = []
            for row in entries:
                if len(row) == 4 and isinstance(row[2], int):
                    small, ingress = int(row[2]), int(row[3])
                else:  # an older state: [start, bytes, sources, destinations]
                    small = ingress = 0
                    window.sources.merge(TopK.from_json(row[2]))
                    window.destinations.merge(TopK.from_json(row[3]))
                entry = (float(row[0]), int(row[1]), small, ingress)
                if math.isfinite(entry[0]) and entry[0] < until and min(entry[1:]) >= 0:
                    rows.append(entry)
            rows.sort(key=lambda e: e[0])
            rows = rows[-kept:]
            for entry in rows:
                # Restored evidence is merged already: the first span's entries carry none.
                window.spans[0].add((*entry, None))
                for span in window.longer:
                    span.add(entry)
                if saved_buckets is None:
                    for span in window.bucketed:
                        span.add(entry)
            intervals.extend(rows)
            if saved_buckets is not None:
                sums: list[tuple[float, int, int, int]] = []
                for row in saved_buckets:
                    entry = (float(row[0]), int(row[1]), int(row[2]), int(row[3]))
                    if math.isfinite(entry[0]) and entry[0] < until and min(entry[1:]) >= 0:
                        sums.append(entry)
                sums.sort(key=lambda e: e[0])
                for entry in sums[-kept:]:
                    for span in window.bucketed:
                        span.add(entry)
                    summed.append(entry)
            else:
                summed.extend(rows)
            sources, destinations = item.get("sources"), item.get("destinations")
            if isinstance(sources, dict) and isinstance(destinations, dict):
                window.sources = TopK.from_json(sources, _EVIDENCE_CAPACITY)
                window.destinations = TopK.from_json(destinations, _EVIDENCE_CAPACITY)
            window.alerting = (UNEXPECTED, group, dest_key) in self.book.active
            paged_on = item.get("paged_on")
            if window.alerting and isinstance(paged_on, int) and 0 < paged_on < count:
                window.paged_on = paged_on
            paid_until = item.get("paid_until")
            if isinstance(paid_until, int | float):
                # What the spans hold from before it (the invariant pay and settle keep).
                window.paid_until = float(paid_until)
                window.credit = [
                    [sum(e[j] for e in span.entries if e[0] < paid_until) for j in (1, 2, 3)]
                    for span in window.spans
                ]
                for span in window.bucketed:
                    span.next_bucket = min(span.next_bucket, float(paid_until))
            windows[(group, dest)] = window
        # The group spans' entries must be in time order to expire from the left (and to
        # sum into buckets).
        groups: dict[str, list[_Span]] = {}
        for group, (intervals, summed) in group_entries.items():
            spans = groups[group] = [_Span(bucket) for bucket in buckets[: self._reach + 1]]
            intervals.sort(key=lambda e: e[0])
            summed.sort(key=lambda e: e[0])
            for span in spans:
                for entry in summed if span.bucket else intervals:
                    span.add(entry)
        self.windows = windows
        self._groups = groups
        self._touched = list(windows.items())
        self._alerting = {}
        for key, window in windows.items():
            if window.alerting:
                self._alerting.setdefault(key[0], set()).add(key)
        self._fanout_last = {g for (_a, g, d) in self.book.active if d == FANOUT_COUNTRY}
        if len(windows) > config.max_keys:
            self._evict_for_room()
        self.measure_bars()
