"""Event-time aggregation: per-interval sums per (group x destination), closed by a watermark.

The watermark is the latest flow end time seen minus the allowed lateness; a bucket closes
when the watermark passes its end, and a record for a closed bucket is late: counted, and
accounted in the interval at the watermark, never merged into the past. An exporter whose
clock runs behind is thus still seen, a few minutes later, instead of not at all.
"""

from __future__ import annotations

import math
from operator import itemgetter
from typing import TypeVar

import msgspec

from egressd.columns import address_text
from egressd.enrich import DestinationLabels
from egressd.sketch import TopK
from egressd.talkers import KNOWN_TEXTS, TalkerBacklog, TextCache

AggregateKey = tuple[str, DestinationLabels]  # (group, destination labels)

#: an interval's bytes (or packets) for one key saturate here when it closes: 2**53 (9 PB, exact
#: as a float) is more than any real interval, and sums of thousands of them (windows,
#: baselines, the state file's 64-bit integers) stay in range whatever a flood of records claims
MAX_INTERVAL_COUNT = 2**53

#: an accumulator's waiting talkers go into its sketches at this many flows (three values
#: each): memory per key stays about what its two sketches take
WAITING_FLOWS = 64
_LOW64 = 2**64 - 1
_Item = TypeVar("_Item")
#: address texts the accumulators' settles made, for the next ones (the same talkers come back
#: interval after interval); cleared when it holds :data:`KNOWN_TEXTS`
_TEXTS: TextCache = {}


class Accum(msgspec.Struct, gc=False, eq=False):
    """What one (group, destination) sent in one interval, with its heaviest talkers.

    The sparse path (:meth:`egressd.pipeline.Engine._account_rows`) appends each flow's
    talkers to :attr:`talkers` instead of adding them to the sketches: most keys' sketches
    are never read (an expected destination under every floor), and those that are get the
    same flows added in the same order when first read (:attr:`sources`,
    :attr:`destinations`) or when :data:`WAITING_FLOWS` wait, so the sketches are the ones
    adding flow by flow makes.

    A struct the cyclic garbage collector never tracks (``gc=False``; it holds numbers,
    sketches and a list of numbers, never anything that leads back to it): an interval
    keeps one per key, and the detectors keep closed ones for their windows, so at 100,000
    keys each full collection walked hundreds of thousands of them for nothing. Built in C
    too (``Accum(capacity, bytes, ...)`` sets the sums at once).
    """

    capacity: int
    bytes: int = 0
    packets: int = 0
    flows: int = 0
    #: of ``bytes``, those in flows of small packets (ACKs: a download's return path)
    small: int = 0
    #: bytes the other way: from this destination to the group's sources
    ingress: int = 0
    _sources: TopK | None = None
    _destinations: TopK | None = None
    #: flows counted but not in the sketches yet, flat, in flow order: source address
    #: value, destination address value, bytes; None when there are none
    talkers: list[int] | None = None

    @property
    def sources(self) -> TopK:
        """The heaviest sources (a Space-Saving sketch)."""
        if self.talkers is not None:
            self.settle()
        sketch = self._sources
        if sketch is None:
            sketch = self._sources = TopK(self.capacity)
        return sketch

    @sources.setter
    def sources(self, sketch: TopK) -> None:
        if self.talkers is not None:
            self.settle()
        self._sources = sketch

    @property
    def destinations(self) -> TopK:
        """The heaviest destination addresses (a Space-Saving sketch)."""
        if self.talkers is not None:
            self.settle()
        sketch = self._destinations
        if sketch is None:
            sketch = self._destinations = TopK(self.capacity)
        return sketch

    @destinations.setter
    def destinations(self, sketch: TopK) -> None:
        if self.talkers is not None:
            self.settle()
        self._destinations = sketch

    def settle(self) -> None:
        """Add :attr:`talkers` to the sketches, in order, as adding each flow would."""
        talkers = self.talkers
        self.talkers = None
        capacity = self.capacity
        sources = self._sources
        if sources is None:
            sources = self._sources = TopK(capacity)
        destinations = self._destinations
        if destinations is None:
            destinations = self._destinations = TopK(capacity)
        texts = _TEXTS
        if len(texts) > KNOWN_TEXTS:
            texts.clear()
        flows = iter(talkers)  # type: ignore[arg-type]
        for src, dst, size in zip(flows, flows, flows, strict=True):
            # TopK.add inlined where it is a plain sum: an item already kept, or a new one
            # while the sketch has room (it has no eviction heap until it is full).
            text = texts.get(src)
            if text is None:
                text = texts[src] = address_text(src >> 64, src & _LOW64)
            counts = sources.counts
            current = counts.get(text)
            if current is not None:
                counts[text] = current + size
            elif len(counts) < capacity:
                counts[text] = size
            else:
                sources.add(text, size)
            text = texts.get(dst)
            if text is None:
                text = texts[dst] = address_text(dst >> 64, dst & _LOW64)
            counts = destinations.counts
            current = counts.get(text)
            if current is not None:
                counts[text] = current + size
            elif len(counts) < capacity:
                counts[text] = size
            else:
                destinations.add(text, size)

    def add(self, src: str, dst: str, size: int, packets: int) -> None:
        """Count one flow."""
        self.bytes += size
        self.packets += packets
        self.flows += 1
        self.sources.add(src, size)
        self.destinations.add(dst, size)

    def merge(self, other: Accum) -> None:
        """Add ``other`` (the same key and interval, counted elsewhere) to this one."""
        self.bytes += other.bytes
        self.packets += other.packets
        self.flows += other.flows
        self.small += other.small
        self.ingress += other.ingress
        self.sources.merge(other.sources)
        self.destinations.merge(other.destinations)

    def to_row(self) -> list[object]:
        """The sums as a compact JSON-friendly row (state files and interval partials)."""
        return [
            self.bytes,
            self.packets,
            self.flows,
            self.sources.to_json(),
            self.destinations.to_json(),
            self.small,
            self.ingress,
        ]

    @classmethod
    def from_row(cls, row: list[object], sketch_capacity: int) -> Accum:
        """The inverse of :meth:`to_row`; raises ValueError/TypeError on a malformed row.

        Rows written before small-packet egress and ingress were kept have five fields.
        """
        small: object = 0
        ingress: object = 0
        if len(row) == 7:
            size, packets, flows, sources, destinations, small, ingress = row
        else:
            size, packets, flows, sources, destinations = row
        accum = cls(sketch_capacity)
        accum.small = _count(small)
        accum.ingress = _count(ingress)
        accum.bytes = _count(size)
        accum.packets = _count(packets)
        accum.flows = _count(flows)
        accum.sources = TopK.from_json(_weights(sources), sketch_capacity)
        accum.destinations = TopK.from_json(_weights(destinations), sketch_capacity)
        return accum


def heaviest_items(counts: dict[_Item, int], n: int) -> list[tuple[_Item, int]]:
    """The ``n`` heaviest (item, weight) pairs of ``counts``: all of them, in order, when
    there are at most ``n``; else heaviest first, ties in insertion order (what
    ``heapq.nlargest`` returns, at a third of its cost for a sketch's few dozen items)."""
    if len(counts) <= n:
        return list(counts.items())
    return sorted(counts.items(), key=_WEIGHT, reverse=True)[:n]


_WEIGHT = itemgetter(1)


def value_text(value: int) -> str:
    """The text of an address value, from (and into) :data:`_TEXTS`."""
    texts = _TEXTS
    text = texts.get(value)
    if text is None:
        if len(texts) > KNOWN_TEXTS:
            texts.clear()
        text = texts[value] = address_text(value >> 64, value & _LOW64)
    return text


def with_texts(pairs: list[tuple[int, int]]) -> list[tuple[str, int]]:
    """``pairs`` of (address value, weight) with each address's text instead."""
    texts = _TEXTS
    if len(texts) > KNOWN_TEXTS:
        texts.clear()
    out = []
    for value, weight in pairs:
        text = texts.get(value)
        if text is None:
            text = texts[value] = address_text(value >> 64, value & _LOW64)
        out.append((text, weight))
    return out


def _count(value: object) -> int:
    if type(value) is not int or value < 0:
        raise ValueError(f"a count must be a non-negative integer, not {value!r}")
    return value


def _weights(value: object) -> dict[str, int]:
    if not isinstance(value, dict):
        raise TypeError(f"a top-talker sketch must be a table, not {type(value).__name__}")
    return {str(item): _count(weight) for item, weight in value.items()}


Bucket = dict[AggregateKey, Accum]


def intern_labels(intern: dict[str, DestinationLabels], key: str, as_org: str) -> DestinationLabels:
    """One labels object per destination key (restored state, received partials)."""
    dest = intern.get(key)
    if dest is None:
        base = DestinationLabels.from_key(key)
        dest = intern[key] = DestinationLabels(base.country, base.region, base.asn, as_org, "state")
    return dest


def _saturated(bucket: Bucket) -> Bucket:
    """``bucket`` with its sums capped at :data:`MAX_INTERVAL_COUNT` (once per closed key)."""
    for accum in bucket.values():
        if accum.bytes > MAX_INTERVAL_COUNT:
            accum.bytes = MAX_INTERVAL_COUNT
            # talkers' counts are parts of the sum, so only then can they exceed the cap
            accum.sources.cap(MAX_INTERVAL_COUNT)
            accum.destinations.cap(MAX_INTERVAL_COUNT)
        if accum.packets > MAX_INTERVAL_COUNT:
            accum.packets = MAX_INTERVAL_COUNT
        if accum.small > accum.bytes:
            accum.small = accum.bytes
        if accum.ingress > MAX_INTERVAL_COUNT:
            accum.ingress = MAX_INTERVAL_COUNT
    return bucket


class IntervalAggregator:
    """Open buckets keyed by interval start; hands out the ones the watermark has passed."""

    __slots__ = (
        "_folded",
        "buckets",
        "closed_upto",
        "folded_records",
        "interval",
        "late_bytes",
        "late_records",
        "lateness",
        "max_keys",
        "max_time",
        "next_due",
        "sketch_capacity",
        "talker_texts",
        "talkers",
    )

    def __init__(
        self,
        interval: float,
        lateness: float,
        sketch_capacity: int = 32,
        max_keys: int = 100_000,
    ) -> None:
        self.interval = interval
        self.lateness = lateness
        self.sketch_capacity = sketch_capacity
        #: distinct keys per bucket; past it, destinations fold into their country's key
        self.max_keys = max_keys
        self._folded: dict[str, DestinationLabels] = {}
        self.folded_records = 0
        self.buckets: dict[float, Bucket] = {}
        #: every bucket that ends at or before this is closed
        self.closed_upto = -math.inf
        self.max_time = -math.inf
        #: watermark position (max_time) at which the oldest open bucket is due
        self.next_due = math.inf
        self.late_records = 0
        self.late_bytes = 0
        #: per open interval, batch-path flows whose talkers are not in the sketches yet
        #: (see :mod:`egressd.talkers`); settled before anything reads them
        self.talkers: dict[float, TalkerBacklog] = {}
        #: address texts the backlogs made, for the next ones (see :mod:`egressd.talkers`)
        self.talker_texts: TextCache = {}

    def backlog(self, start: float) -> TalkerBacklog:
        """The talker backlog of the open interval at ``start``."""
        backlog = self.talkers.get(start)
        if backlog is None:
            backlog = self.talkers[start] = TalkerBacklog(self.talker_texts)
        return backlog

    def settle(self, start: float | None = None) -> None:
        """Put the backlog's talkers (of interval ``start``, else all) into the sketches."""
        if start is None:
            for backlog in self.talkers.values():
                backlog.settle()
            self.talkers.clear()
            return
        if start in self.talkers:
            self.talkers.pop(start).settle()

    def add(
        self, key: AggregateKey, event_time: float, src: str, dst: str, size: int, packets: int
    ) -> bool:
        """Account one record; False when it was late (see :meth:`late_start`).

        :meth:`egressd.pipeline.Engine.process` does the same per record with the lookups
        bound to locals; both go through :meth:`bucket` and :meth:`accum`.
        """
        on_time = event_time >= self.closed_upto
        start = event_time - event_time % self.interval if on_time else self.late_start(size)
        bucket = self.buckets.get(start)
        if bucket is None:
            bucket = self.bucket(start)
        accum = bucket.get(key)
        if accum is None:
            accum = self.accum(bucket, key)
        accum.add(src, dst, size, packets)
        if event_time > self.max_time:
            self.max_time = event_time
        return on_time

    def late_start(self, size: int) -> float:
        """Count a late record; the start of the interval it is accounted in instead.

        That is the interval holding the watermark: still open (it closes only when the
        watermark passes its end), and where event time stands now.
        """
        self.late_records += 1
        self.late_bytes += size
        watermark = max(self.max_time - self.lateness, self.closed_upto)
        return watermark - watermark % self.interval

    def bucket(self, start: float) -> Bucket:
        """The open bucket of the interval at ``start``, opened if need be."""
        bucket = self.buckets.get(start)
        if bucket is None:
            bucket = self.buckets[start] = {}
            due = start + self.interval + self.lateness
            if due < self.next_due:
                self.next_due = due
        return bucket

    def accum(self, bucket: Bucket, key: AggregateKey) -> Accum:
        """The accumulator of ``key`` in ``bucket``, created if need be (within the cap)."""
        accum = bucket.get(key)
        if accum is None and len(bucket) >= self.max_keys:
            # A flood of distinct labels (an internet-wide scan with ASN labels) would grow
            # one bucket without bound; past the cap, a destination counts under its
            # country, which detection still judges.
            key = (key[0], self._country_only(key[1].country))
            self.folded_records += 1
            accum = bucket.get(key)
        if accum is None:
            accum = bucket[key] = Accum(self.sketch_capacity)
        return accum

    def _country_only(self, country: str) -> DestinationLabels:
        labels = self._folded.get(country)
        if labels is None:
            labels = self._folded[country] = DestinationLabels(country)
        return labels

    def observe_time(self, event_time: float) -> None:
        """Move the watermark without a record (an idle live source, or an ignored record)."""
        if event_time > self.max_time:
            self.max_time = event_time

    @property
    def due(self) -> bool:
        return self.max_time >= self.next_due

    def pop_due(self) -> list[tuple[float, Bucket]]:
        """Close and return, oldest first, every bucket the watermark has passed."""
        watermark = self.max_time - self.lateness
        ready = sorted(s for s in self.buckets if s + self.interval <= watermark)
        for start in ready:
            self.settle(start)
        out = [(start, _saturated(self.buckets.pop(start))) for start in ready]
        if ready:
            self.closed_upto = max(self.closed_upto, ready[-1] + self.interval)
        # Buckets older than what is closed now cannot receive records any more either.
        self._recompute_due()
        return out

    def pop_all(self) -> list[tuple[float, Bucket]]:
        """Close every open bucket (end of a replay)."""
        ready = sorted(self.buckets)
        self.settle()
        out = [(start, _saturated(self.buckets.pop(start))) for start in ready]
        if ready:
            self.closed_upto = max(self.closed_upto, ready[-1] + self.interval)
        self._recompute_due()
        return out

    def _recompute_due(self) -> None:
        self.next_due = (
            min(self.buckets) + self.interval + self.lateness if self.buckets else math.inf
        )

    def to_json(self) -> list[list[object]]:
        """Open buckets (so records already taken from a source survive a restart)."""
        out: list[list[object]] = []
        self.settle()
        for start, bucket in self.buckets.items():
            for (group, dest), accum in bucket.items():
                out.append([start, group, dest.key, dest.as_org, *accum.to_row()])
        return out

    def load_json(
        self,
        data: list[list[object]],
        intern: dict[str, DestinationLabels],
        until: float = math.inf,
        *,
        by_lateness: bool = True,
    ) -> int:
        """Restore what :meth:`to_json` wrote, held to what the aggregator itself keeps;
        returns how many keys were left out.

        An open interval starts not below zero and not after ``until`` (the saved event
        time: no record opened one later); as many are kept as the allowed lateness holds
        open at once (the latest; all of them without ``by_lateness``, for an aggregator
        whose intervals close by another watermark), and in each at most ``max_keys`` keys
        (the heaviest: past it, a running aggregator folds keys into their country's).
        """
        buckets: dict[float, Bucket] = {}
        dropped = 0
        for start, group, key, as_org, *row in data:
            begins = float(start)  # type: ignore[arg-type]
            if not 0 <= begins <= until:
                dropped += 1
                continue
            dest = intern_labels(intern, str(key), str(as_org))
            accum = Accum.from_row(row, self.sketch_capacity)
            buckets.setdefault(begins, {})[(str(group), dest)] = accum
        # Open at once: from the watermark's interval back over the lateness, plus the one
        # a record past the watermark opens.
        if by_lateness:
            most = math.ceil(self.lateness / self.interval) + 2
            for begins in sorted(buckets)[:-most]:
                dropped += len(buckets.pop(begins))
        for begins, bucket in buckets.items():
            if len(bucket) > self.max_keys:
                heaviest = sorted(bucket.items(), key=lambda item: -item[1].bytes)
                buckets[begins] = dict(heaviest[: self.max_keys])
                dropped += len(bucket) - self.max_keys
        self.buckets = buckets
        self.talkers = {}
        self._recompute_due()
        return dropped

    def open_totals(self) -> dict[AggregateKey, int]:
        """Bytes per key in buckets not yet closed (for live metrics)."""
        totals: dict[AggregateKey, int] = {}
        for bucket in self.buckets.values():
            for key, accum in bucket.items():
                if accum.bytes:
                    totals[key] = totals.get(key, 0) + accum.bytes
        return totals
