"""The event-time engine: classify → enrich → aggregate → detect, with no I/O.

Sources hand it flow records; it returns alert transitions. Live daemon and replay drive
the same engine, so replaying recorded flows gives the alerts living through them would.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from egressd.aggregate import WAITING_FLOWS, Accum, AggregateKey, Bucket, IntervalAggregator
from egressd.baseline.grouprate import GroupRates
from egressd.baseline.seasonal import SeasonalBaselines, SeasonKeyer, timezone_named
from egressd.cache import BoundedCache
from egressd.classify import EgressClassifier
from egressd.columnar import I64, ClassifiedBatch, ColumnClassifier, exact_total, numbered
from egressd.columns import U64, FlowColumns, address_texts
from egressd.config import OTHER_GROUP, Config, DetectionConfig, GroupConfig
from egressd.dedupe import DuplicateExports
from egressd.detect.alerts import Alert, AlertBook
from egressd.detect.detectors import (
    SPIKE,
    UNEXPECTED,
    LabelOptions,
    UnexpectedDestinationDetector,
    VolumeSpikeDetector,
)
from egressd.detect.newdest import NEW_DESTINATION, NewDestinationDetector
from egressd.detect.policy import ExpectedDestinations
from egressd.enrich import DestinationLabeler, DestinationLabels, NumberedLabeler, ParsedLabeler
from egressd.enrich.address import parse_address
from egressd.enrich.special import special_kind_of
from egressd.model import FlowRecord
from egressd.talkers import SETTLE_ROWS

#: a block touching at most this many rows is accounted by key without the talker backlog
#: (:meth:`Engine._account_rows`)
ROW_LOOP_ROWS = 256
#: rows a block looks ahead over at least (see :meth:`Engine._process_blocks`)
_FIRST_WINDOW = 512

#: the state file's version: 2 keeps baselines in a compact form (lists and one text of
#: records, see :meth:`SeasonalBaselines.to_json`); 1, their per-key form, is still read
STATE_VERSION = 2
READABLE_STATE_VERSIONS = (1, 2)
#: the parts of a state file that leave out what the running engine would not hold
#: (:attr:`Engine.dropped_on_load`)
RESTORED_PARTS = (
    "baselines",
    "learned",
    "alerts",
    "windows",
    "spike_held",
    "groups",
    "open_intervals",
)
#: what the detectors page as; an active alert of another name is nothing they evaluate
ALERTNAMES = (UNEXPECTED, SPIKE, NEW_DESTINATION)

# What a destination is when it is not a labelled egress destination.
_INTERNAL = "internal"  # inside networks.local: east-west
_SPECIAL = "special"  # private, multicast, link-local, documentation...: never foreign
_INVALID = "invalid"
_Destination = DestinationLabels | str

#: one interval's sums for one key, counted elsewhere: (interval start, key, sums)
Partial = tuple[float, AggregateKey, Accum]

#: (group, destination) pairs with their own egress total; later ones count under their country
MAX_DESTINATION_TOTALS = 10_000

#: empty intervals evaluated one by one after a gap; a longer gap is skipped in one step
_MAX_EMPTY_TICKS = 64

#: the smallest IP packet (an IPv4 header alone): a link carries at most its rate / this
#: many packets per second
MIN_PACKET_BYTES = 20
#: a record claiming a longer flow is bounded as though it lasted this long, so a bogus start
#: time cannot raise the bound (and the sums it feeds) without limit
MAX_FLOW_SECONDS = 86400.0


#: event time that flows have not moved on for this long (sources quiet, or the only
#: exporter's clock stalled or stepped back) is moved on by wall time
IDLE_AFTER = 10.0


class Progress:
    """When flows last moved event time on, to let wall time take over once they stop.

    Both the all-in-one daemon (one for its engine) and the cluster's ingest role (one per
    source partition) keep one. Only a move *forward* is progress: flows stamped behind
    (a clock stepped back) may arrive steadily yet would otherwise hold every interval open.
    ``now`` is the caller's monotonic clock; nothing here reads a clock.
    """

    __slots__ = ("event_time", "since")

    def __init__(self, now: float, event_time: float = -math.inf) -> None:
        #: the event time flows last moved to (-inf before any)
        self.event_time = event_time
        #: when they did (or when watching began)
        self.since = now

    def note(self, event_time: float, now: float) -> None:
        """Flows reached ``event_time`` at ``now``: progress if it is later than before."""
        if event_time > self.event_time:
            self.event_time = event_time
            self.since = now

    def quiet(self, now: float) -> float:
        """How long event time has stood still."""
        return now - self.since

    def idle_target(self, now: float, limit: float = math.inf) -> float | None:
        """Where wall time carries event time once it stood still for :data:`IDLE_AFTER`:
        on from where flows left it, at wall-clock pace, but never past ``limit`` (the
        caller's wall time); None before that (or before any flow).

        The limit keeps one record stamped ahead (up to ``max_clock_ahead``, a forged or
        broken clock) from setting event time ahead of wall time for good: flows stamped
        behind it are no progress, so without it wall time would carry the forged stamp on.
        """
        quiet = now - self.since
        if self.event_time == -math.inf or quiet < IDLE_AFTER:
            return None
        return min(self.event_time + quiet, limit)


@dataclass(slots=True)
class EngineStats:
    """Counters of the engine; read by the metrics sink."""

    records: int = 0
    egress_records: int = 0
    egress_bytes: int = 0
    ingress_records: int = 0
    ingress_bytes: int = 0
    internal_records: int = 0
    internal_bytes: int = 0
    transit_records: int = 0
    special_records: int = 0
    #: records stamped later than ``Engine.future_limit``, counted at that limit
    future_records: int = 0
    #: records skipped because they claim more bytes or packets than ``max_link_rate``
    #: carries in their duration (a lying or broken exporter; see :meth:`Engine.plausible`)
    invalid_records: int = 0
    intervals_closed: int = 0
    #: records whose bytes another exporter had reported already, taken out whole, and the
    #: bytes taken out (whole records and parts: :mod:`egressd.dedupe`)
    duplicate_records: int = 0
    duplicate_bytes: int = 0
    #: flow keys the duplicate stage forgot to stay within ``duplicate_max_keys``
    duplicate_evictions: int = 0
    #: egress bytes in closed intervals by (group, destination labels)
    egress_by_destination: dict[AggregateKey, int] = field(default_factory=dict)


#: The per-record counters of :class:`EngineStats` a NetFlow worker process keeps and sends
#: its parent (egress ones travel inside the partials; intervals close in the parent). The
#: field types are compared as text or type: a compiled build's dataclass holds types.
WORKER_COUNTERS = tuple(
    f.name
    for f in fields(EngineStats)
    if f.type in ("int", int)
    and f.name not in ("egress_records", "egress_bytes", "intervals_closed")
)


class Engine:
    """The whole detection core. Not thread-safe; one engine per process."""

    def __init__(self, config: Config, labeler: DestinationLabeler) -> None:
        self.config = config
        self.stats = EngineStats()
        detection = config.detection
        self._use_labeler(labeler)
        self.classifier = EgressClassifier(config.networks, config.groups)
        self.column_classifier = ColumnClassifier(self.classifier)
        self.aggregator = IntervalAggregator(
            detection.interval, detection.allowed_lateness, max_keys=detection.max_keys
        )
        self.baselines = SeasonalBaselines(
            detection.max_keys, SeasonKeyer(timezone_named(detection.timezone))
        )
        self.policy = ExpectedDestinations(
            config.groups,
            detection.learning,
            detection.learn_min_bytes,
            detection.learn_min_intervals,
            detection.learn_min_days,
        )
        self.book = AlertBook(detection.pending_for, detection.resolve_after)
        options = LabelOptions(regions=labeler.has_regions, asn=labeler.has_asn)
        #: each group's busy-interval egress, the scale its byte floors follow
        self.group_rates = GroupRates()
        self.policy.shrink = self._learn_factor
        self.unexpected = UnexpectedDestinationDetector(
            detection, self.policy, self.book, options, self.group_rates
        )
        self.spikes = VolumeSpikeDetector(
            detection, self.policy, self.book, options, self.group_rates
        )
        self.new_destinations = NewDestinationDetector(
            detection, self.policy, self.book, options, self.group_rates
        )
        #: per address: the group of a local source ("" when not local), and what a
        #: destination is (labels, or internal / special); one lookup each per record
        self.source_cache: BoundedCache[str, str] = BoundedCache(config.geo.cache_size)
        #: (the batch path keys it by the address's 128-bit integer value, the record path by
        #: its text)
        self.destination_cache: BoundedCache[str | int, _Destination] = BoundedCache(
            config.geo.cache_size
        )
        #: end of the last evaluated interval
        self.last_tick = -math.inf
        #: live sources set this to wall time plus a tolerance before each batch: a record
        #: stamped later (an exporter clock running ahead) counts at this time instead, so
        #: it cannot close every other exporter's intervals early. Replay sets it from the
        #: stream itself (:func:`egressd.replay.stream_segments` and ``stream_ahead``).
        self.future_limit = math.inf
        #: replay sets this to max_clock_ahead: ``future_limit`` then also follows event
        #: time itself, so each record may reach at most this far past the ones before it
        self.stream_ahead = -math.inf
        self.restored = False
        #: per part of a restored state file, the entries left out (see :meth:`restore`)
        self.dropped_on_load: dict[str, int] = {}
        self._link_rate = detection.max_link_rate
        #: observer of every interval closed with data, called with (start, bucket) after
        #: detection has seen it; replay reports collect from here. It must not change them.
        self.on_interval: Callable[[float, Bucket], None] | None = None
        #: blocks touching at most this many rows take the row loop (tests vary it)
        self.row_loop_rows = ROW_LOOP_ROWS
        #: rows the next block looks ahead over
        self._window = _FIRST_WINDOW
        #: counts a flow two exporters report once (None: ``duplicate_exports = "sum"``)
        self.duplicates: DuplicateExports | None = None
        self._use_duplicates(detection)

    def _learn_factor(self, group: str) -> float | None:
        """The factor ``group``'s unexpected-destination floors shrink by (None: no rate yet),
        which its learned countries' byte demand follows."""
        if group not in self.group_rates.levels:
            return None
        detection = self.config.detection
        return self.group_rates.shrink(
            group,
            detection.unexpected_floors_scale_below,
            detection.unexpected_floors_lowest_factor,
            detection.interval,
        )

    # -- configuration --------------------------------------------------------------------

    def reconfigure(self, config: Config, labeler: DestinationLabeler) -> None:
        """Apply a new policy and new geo data without forgetting baselines (SIGHUP)."""
        detection = config.detection
        self.config = config
        self._use_labeler(labeler)
        self.classifier = EgressClassifier(config.networks, config.groups)
        self.column_classifier = ColumnClassifier(self.classifier)
        self.policy.reconfigure(
            config.groups,
            detection.learning,
            detection.learn_min_bytes,
            detection.learn_min_intervals,
            detection.learn_min_days,
        )
        self.book.pending_for = detection.pending_for
        self.book.resolve_after = detection.resolve_after
        self.baselines.max_keys = detection.max_keys
        self.aggregator.max_keys = detection.max_keys
        options = LabelOptions(regions=labeler.has_regions, asn=labeler.has_asn)
        self.unexpected.reconfigure(detection, options)
        self.spikes.reconfigure(detection, options)
        self.new_destinations.reconfigure(detection, options)
        self.source_cache.clear()
        self.destination_cache.clear()
        self.source_cache.resize(config.geo.cache_size)
        self.destination_cache.resize(config.geo.cache_size)
        self._link_rate = detection.max_link_rate
        self._use_duplicates(detection)

    def _use_duplicates(self, detection: DetectionConfig) -> None:
        if detection.duplicate_exports == "sum":
            self.duplicates = None
            return
        if self.duplicates is None:
            self.duplicates = DuplicateExports()
        self.duplicates.expiry = detection.duplicate_expiry
        self.duplicates.max_keys = detection.duplicate_max_keys

    def _use_labeler(self, labeler: DestinationLabeler) -> None:
        """Take a labeler, and note once what batch answers it offers (an isinstance check
        against a protocol costs microseconds: too much for every batch)."""
        self.labeler = labeler
        self._numbered_labeler = labeler if isinstance(labeler, NumberedLabeler) else None
        self._parsed_labeler = labeler if isinstance(labeler, ParsedLabeler) else None

    def labels_changed(self) -> None:
        """The labeler's data was reloaded: forget cached labels, keep everything learned."""
        self.destination_cache.clear()

    # -- the hot path ---------------------------------------------------------------------

    def _source_group(self, address: str) -> str:
        """A source address the cache did not have: its group, "" when it is not local."""
        parsed = parse_address(address)
        group = self.classifier.group_of(*parsed) if parsed is not None else None
        return self.source_cache.store(address, group or "")

    def _destination(self, address: str) -> _Destination:
        """A destination address the cache did not have: what it is, from one parse."""
        dest: _Destination
        parsed = parse_address(address)
        if parsed is not None and self.classifier.group_of(*parsed) is not None:
            dest = _INTERNAL
        elif parsed is not None and special_kind_of(*parsed) is not None:
            dest = _SPECIAL
        else:
            dest = self.labeler.label(address)  # labelers intern their answers
        return self.destination_cache.store(address, dest)

    def plausible(self, record: FlowRecord) -> bool:
        """Whether a link of ``max_link_rate`` could carry ``record`` in its duration.

        The duration counts as at least one second (exporters round to it, and 0 is common)
        and at most :data:`MAX_FLOW_SECONDS`. Packets are bounded by the same link full of
        the smallest IP packets. Counts beyond that come from a lying or broken exporter (or
        a sampling rate applied to a count it cannot apply to) and would make every sum
        they touch meaningless.
        """
        return self._plausible_counts(
            record.bytes, record.packets, record.time_start, record.time_end
        )

    def _plausible_counts(self, size: int, packets: int, start: float, end: float) -> bool:
        duration = end - start
        if not duration >= 1.0:  # also NaN
            duration = 1.0
        elif duration > MAX_FLOW_SECONDS:
            duration = MAX_FLOW_SECONDS
        limit = self._link_rate * duration
        return size <= limit and packets * MIN_PACKET_BYTES <= limit

    def process(self, records: Iterable[FlowRecord]) -> list[Alert]:
        """Account ``records``; return the alerts that started or resolved meanwhile."""
        changed: list[Alert] = []
        stats = self.stats
        if self.duplicates is not None:
            given = records if isinstance(records, list) else list(records)
            records = self.duplicates.records(given, self.future_limit, stats, self.plausible)
            stats.records += len(given) - len(records)  # (taken out, yet received)
        source_group = self.source_cache.get
        destination = self.destination_cache.get
        aggregator = self.aggregator
        interval = aggregator.interval
        buckets = aggregator.buckets
        max_time = aggregator.max_time
        # The bucket of the last egress record: input is mostly in time order.
        current_start: float | None = None
        bucket: Bucket = {}
        count = egress = egress_bytes = future = invalid = extra_lookups = 0
        future_limit = self.future_limit
        stream_ahead = self.stream_ahead
        # What a link carries in one second: below it every record is plausible, so the
        # common case costs one comparison per count.
        burst = self._link_rate
        burst_packets = burst // MIN_PACKET_BYTES
        small_limit = self.config.detection.small_packet_bytes
        try:
            for record in records:
                count += 1
                size = record.bytes
                if (size > burst or record.packets > burst_packets) and not self.plausible(record):
                    invalid += 1
                    continue
                src = record.src
                group = source_group(src)
                if group is None:
                    group = self._source_group(src)
                dst = record.dst
                dest = destination(dst)
                if dest is None:
                    dest = self._destination(dst)
                end = record.time_end
                if end > future_limit:
                    end = future_limit
                    future += 1
                if group and dest.__class__ is not str:
                    egress += 1
                    egress_bytes += size
                    if end >= aggregator.closed_upto:
                        start = end - end % interval
                    else:
                        start = aggregator.late_start(size)
                    if start != current_start:
                        found = buckets.get(start)
                        bucket = found if found is not None else aggregator.bucket(start)
                        current_start = start
                    key = (group, dest)
                    accum = bucket.get(key)  # type: ignore[arg-type]
                    if accum is None:
                        accum = aggregator.accum(bucket, key)  # type: ignore[arg-type]
                    packets = record.packets
                    accum.add(src, dst, size, packets)
                    if size < packets * small_limit:
                        accum.small += size
                elif not group:
                    if dest is _INTERNAL:
                        stats.ingress_records += 1
                        stats.ingress_bytes += size
                        # A download's bytes, set against the small-packet egress it causes.
                        extra_lookups += 1
                        origin = destination(src)
                        if origin is None:
                            origin = self._destination(src)
                        if origin.__class__ is not str:
                            self._ingress(dst, origin, end, size)  # type: ignore[arg-type]
                    else:
                        stats.transit_records += 1
                elif dest is _INTERNAL:
                    stats.internal_records += 1
                    stats.internal_bytes += size
                else:
                    stats.special_records += 1
                if end > max_time:
                    max_time = aggregator.max_time = end
                    if end + stream_ahead > future_limit:
                        future_limit = end + stream_ahead
                    if end >= aggregator.next_due:
                        changed.extend(self._close(aggregator.pop_due()))
                        current_start = None
        finally:
            stats.records += count
            stats.egress_records += egress
            stats.egress_bytes += egress_bytes
            stats.future_records += future
            stats.invalid_records += invalid
            self.source_cache.lookups += count - invalid
            self.destination_cache.lookups += count - invalid + extra_lookups
        return changed

    def process_columns(self, columns: FlowColumns) -> list[Alert]:
        """Account a batch of flows given as columns: the same as :meth:`process` of
        ``columns.to_records()`` (same sums, counters and alerts), the hot path's entry.

        Whole columns are classified and labelled at once, and summed per (interval, group,
        destination) with numpy; Python then runs once per key, not per flow. Records are
        still taken in order: the batch is cut into blocks that end where :meth:`process`
        would close an interval or clamp a record to ``future_limit``, so late records, the
        watermark and closes fall exactly where they would record by record. Two things
        differ, in no sum: top-talker sketches get an interval's flows summed per address
        when something reads them (:mod:`egressd.talkers`; equal to adding flow by flow
        while the addresses fit the sketch, past that the heaviest by weight are kept, so
        an alert may name other top talkers than flow-by-flow Space-Saving would), and the
        caches count one lookup per distinct address of a batch (the batch path classifies
        by range tables, without the source cache, and keeps labels in the destination
        cache by the address's integer value, except with the embedded country data
        alone: then it asks that data without the cache). A block touching few rows (sparse input:
        one interval's few hundred flows) is added by key without the talker backlog, its
        talkers waiting in their accumulators (:meth:`_account_rows`): the backlog's
        sorting costs more than it saves there.
        """
        n = len(columns)
        if n == 0:
            return []
        if not np.isfinite(columns.time_end).all():
            # Infinite or NaN end times (no decoder makes them) keep the record semantics.
            return self.process(columns.to_records())
        stats = self.stats
        valid = self._plausible_rows(columns)
        invalid = n - (len(valid) if valid is not None else n)
        if valid is not None:
            columns = columns.take(valid)
        stats.records += n
        stats.invalid_records += invalid
        if self.duplicates is not None:
            columns = self.duplicates.columns(columns, self.future_limit, stats)
        if len(columns) == 0:
            return []
        batch = ClassifiedBatch(
            columns,
            self.column_classifier,
            self._labels_of,
            self.config.detection.small_packet_bytes,
        )
        stats.egress_records += batch.egress_count
        stats.egress_bytes += batch.egress_bytes
        stats.ingress_records += batch.ingress_count
        stats.ingress_bytes += batch.ingress_bytes
        stats.internal_records += batch.internal_count
        stats.internal_bytes += batch.internal_bytes
        stats.transit_records += batch.transit_count
        stats.special_records += batch.special_count
        return self._process_blocks(batch)

    def _labels_of(self, highs: U64, lows: U64) -> tuple[list[DestinationLabels], I64]:
        """Labels of distinct outside addresses (as column halves), numbered as
        :data:`~egressd.columnar.LabelsOf` says. With the embedded country data alone the
        labeler answers them all in one call: cheaper than the destination cache (a dict as
        large as ``geo.cache_size`` misses the CPU caches on each probe and store), which is
        then not consulted. Otherwise through that cache keyed by the 128-bit value, the
        misses sent to the labeler in one call."""
        labeler = self._numbered_labeler
        if labeler is not None and labeler.embedded_only:
            return labeler.label_numbered(address_texts(highs, lows))
        return numbered(self._cached_labels(highs, lows))

    def _cached_labels(self, highs: U64, lows: U64) -> list[DestinationLabels]:
        """Labels of distinct outside addresses through the destination cache."""
        cache = self.destination_cache
        if highs.any():
            keys = [(h << 64) | low for h, low in zip(highs.tolist(), lows.tolist(), strict=True)]
        else:
            keys = lows.tolist()
        cache.lookups += len(keys)
        found: list[_Destination | None] = list(map(cache.get, keys))
        # ``is None``, not found.count(None): that calls the labels' __eq__ on every hit
        missing: list[int] | None = [i for i, dest in enumerate(found) if dest is None]
        if missing:
            if len(missing) == len(found):  # all new (every flow a new destination)
                missing = None
                hi_column, lo_column, missed = highs, lows, keys
            else:
                hi_column, lo_column = highs[missing], lows[missing]
                missed = [keys[i] for i in missing]
            texts = address_texts(hi_column, lo_column)
            labeler = self._parsed_labeler
            if labeler is not None:  # the composite labeler: no parsing the texts again
                parsed = (
                    [
                        (4, value & 0xFFFF_FFFF)
                        if h == 0 and value >> 32 == 0xFFFF
                        else (6, (h << 64) | value)
                        for h, value in zip(hi_column.tolist(), lo_column.tolist(), strict=True)
                    ]
                    if labeler.has_regions
                    else []
                )
                labelled = labeler.label_parsed(parsed, texts)
            else:
                labelled = self.labeler.label_many(texts)
            cache.store_many(missed, labelled)
            if missing is None:
                return labelled
            for i, labels in zip(missing, labelled, strict=True):
                found[i] = labels
        return found  # type: ignore[return-value]

    def _plausible_rows(self, columns: FlowColumns) -> npt.NDArray[np.intp] | None:
        """Positions of the plausible rows; None when every row is (the common case)."""
        burst = self._link_rate
        if burst >= 2**64:
            return None
        suspect = (columns.bytes > np.uint64(burst)) | (
            columns.packets > np.uint64(burst // MIN_PACKET_BYTES)
        )
        if not suspect.any():
            return None
        keep = np.ones(len(columns), dtype=np.bool_)
        for row in np.flatnonzero(suspect).tolist():
            keep[row] = self._plausible_counts(
                int(columns.bytes[row]),
                int(columns.packets[row]),
                float(columns.time_start[row]),
                float(columns.time_end[row]),
            )
        return np.flatnonzero(keep)

    def _process_blocks(self, batch: ClassifiedBatch) -> list[Alert]:
        """Account ``batch`` block by block (see :meth:`process_columns`)."""
        changed: list[Alert] = []
        aggregator = self.aggregator
        interval = aggregator.interval
        lateness = aggregator.lateness
        future_limit = self.future_limit
        stream_ahead = self.stream_ahead
        ends = batch.ends
        # A fixed limit (live sources: wall time ahead) clamps every row at once; one that
        # follows event time (replay's stream_ahead) moves with the rows before each one.
        fixed_clamp: npt.NDArray[np.bool_] | None = None
        if stream_ahead == -math.inf and future_limit < math.inf:
            fixed_clamp = ends > future_limit
            if fixed_clamp.any():
                ends = np.where(fixed_clamp, future_limit, ends)
            else:
                fixed_clamp = None
        may_clamp = stream_ahead > -math.inf and future_limit < math.inf
        touch = batch.touch
        # Each row's interval and when that interval is due, were it on time and not clamped
        # (the common case, computed once for the batch; a block recomputes its own else).
        on_time = ends - ends % interval
        on_time_due = np.where(touch, on_time + interval + lateness, math.inf)
        m = len(ends)
        pos = 0
        # Each block looks ahead over a window of rows, not the rest of the batch: a sparse
        # batch holds many intervals, and scanning the rest for each would be quadratic.
        # The window is twice the last block's size, or half the last window when that is
        # more (a block cut short by a close does not shrink it at once), kept from batch to
        # batch.
        window = self._window
        while pos < m:
            max_time = aggregator.max_time
            # (the rest of the batch when it is at most twice that: no short tail block)
            end = ends[pos:] if m - pos <= 2 * window else ends[pos : pos + window]
            running = np.maximum.accumulate(end)
            np.maximum(running, max_time, out=running)
            before = np.empty_like(running)
            before[0] = max_time
            before[1:] = running[:-1]
            recompute = False
            # (the limit is future_limit or more: no row past it, no clamp)
            if may_clamp and running[-1] > future_limit:
                limit = np.where(
                    before > max_time, np.maximum(future_limit, before + stream_ahead), future_limit
                )
                clamped = np.flatnonzero(end > limit)
                if len(clamped):
                    recompute = True
                    # Everything before the first clamped record is exact as it is; that one
                    # counts at the limit, and the next block starts after it.
                    k = int(clamped[0])
                    end = end[: k + 1].copy()
                    end[k] = limit[k]
                    running = running[: k + 1]
                    running[k] = max(before[k], end[k])
                    before = before[: k + 1]
            closed_upto = aggregator.closed_upto
            touches = touch[pos : pos + len(end)]
            late = end < closed_upto
            if recompute:
                starts = end - end % interval
                due = np.where(touches, starts + interval + lateness, math.inf)
            else:
                starts = on_time[pos : pos + len(end)]
                due = on_time_due[pos : pos + len(end)]
            if late.any():
                watermark = np.maximum(before - lateness, closed_upto)
                starts = np.where(late, watermark - watermark % interval, starts)
                due = np.where(touches, starts + interval + lateness, math.inf)
            next_due = np.minimum(np.minimum.accumulate(due), aggregator.next_due)
            closing = ((end > before) & (end >= next_due)).nonzero()[0]
            size = int(closing[0]) + 1 if len(closing) else len(end)
            if may_clamp and size == len(end) and end[-1] < ends[pos + size - 1]:
                self.stats.future_records += 1  # the block ends with the clamped record
            if fixed_clamp is not None:
                self.stats.future_records += int(np.count_nonzero(fixed_clamp[pos : pos + size]))
            self._account_block(batch, pos, size, starts[:size], late[:size])
            top = float(running[size - 1])
            if top > max_time:
                aggregator.max_time = top
                if top + stream_ahead > future_limit:
                    future_limit = top + stream_ahead
            if len(closing):
                changed.extend(self._close(aggregator.pop_due()))
            pos += size
            window = max(_FIRST_WINDOW, 2 * size, window // 2)
        self._window = window
        return changed

    def _account_block(
        self,
        batch: ClassifiedBatch,
        pos: int,
        size: int,
        starts: npt.NDArray[np.float64],
        late: npt.NDArray[np.bool_],
    ) -> None:
        """Add rows ``pos`` .. ``pos + size`` of ``batch`` to their intervals' sums."""
        aggregator = self.aggregator
        offsets = batch.touch[pos : pos + size].nonzero()[0]
        if not len(offsets):
            return
        where = offsets + pos
        if len(where) <= self.row_loop_rows and not aggregator.talkers:
            if len(where) < size:  # (else every row touches: the block's own views)
                starts, late = starts[offsets], late[offsets]
            self._account_rows(batch, where, starts, late)
            return
        starts = starts[where - pos]
        egress = batch.egress[where]
        late_egress = late[where - pos] & egress
        if late_egress.any():
            aggregator.late_records += int(late_egress.sum())
            aggregator.late_bytes += exact_total(batch.sizes[where[late_egress]])
        groups = batch.group[where]
        dests = batch.dest[where]
        keys = groups * len(batch.labels) + dests
        single = starts[0] == starts[-1] and bool((starts == starts[0]).all())
        if not single:  # (a dense block is mostly one interval: no sort of its starts then)
            _, start_codes = np.unique(starts, return_inverse=True)
            keys += start_codes.reshape(-1) * (len(batch.groups) * len(batch.labels))
        row_bits = (len(keys) - 1).bit_length()
        if int(keys.max()).bit_length() + row_bits <= 63:
            # (key, row) as one number: a plain sort, several times faster than an argsort,
            # and a key's first row leads its run
            numbers = keys << row_bits
            numbers |= np.arange(len(keys), dtype=np.int64)
            numbers.sort()
            order = numbers & ((1 << row_bits) - 1)
            sorted_keys = numbers >> row_bits
            heads = np.concatenate(([0], np.flatnonzero(np.diff(sorted_keys)) + 1))
            firsts = order[heads]
        else:
            # (no stable sort: sums need no order, and a key's first row is its smallest)
            order = np.argsort(keys)
            sorted_keys = keys[order]
            heads = np.concatenate(([0], np.flatnonzero(np.diff(sorted_keys)) + 1))
            firsts = np.minimum.reduceat(order, heads)
        rows = np.diff(np.concatenate((heads, [len(order)])))
        # each row's key number (keys numbered in sorted order)
        key_number = np.empty(len(order), dtype=np.int64)
        key_number[order] = np.repeat(np.arange(len(heads), dtype=np.int64), rows)
        ordered = where[order]
        is_egress = batch.egress[ordered]
        sizes = batch.sizes[ordered]
        zero = sizes * 0
        egress_sizes = np.where(is_egress, sizes, zero)
        by_first = np.argsort(firsts)  # keys in the order records meet them (all distinct)
        byte_sums = np.add.reduceat(egress_sizes, heads)[by_first].tolist()
        ingress_sums = np.add.reduceat(np.where(is_egress, zero, sizes), heads)[by_first]
        packet_sums = np.add.reduceat(np.where(is_egress, batch.packets[ordered], zero), heads)
        small_sums = np.add.reduceat(np.where(batch.small[ordered], egress_sizes, zero), heads)
        flow_sums = np.add.reduceat(is_egress.astype(np.int64), heads)[by_first].tolist()
        first_rows = firsts[by_first]
        buckets = aggregator.buckets
        max_keys = aggregator.max_keys
        names = batch.groups
        labels = batch.labels
        accums: list[Accum] = [None] * len(heads)  # type: ignore[list-item]
        for j, start, group, dest, size, packets, flows, small, ingress, count in zip(
            by_first.tolist(),
            starts[first_rows].tolist(),
            groups[first_rows].tolist(),
            dests[first_rows].tolist(),
            byte_sums,
            packet_sums[by_first].tolist(),
            flow_sums,
            small_sums[by_first].tolist(),
            ingress_sums.tolist(),
            rows[by_first].tolist(),
            strict=True,
        ):
            bucket = buckets.get(start)
            if bucket is None:
                bucket = aggregator.bucket(start)
            key = (names[group], labels[dest])
            accum = bucket.get(key)
            if accum is None:
                full = len(bucket) >= max_keys
                accum = aggregator.accum(bucket, key)
                if full and key not in bucket:  # each of its records was folded
                    aggregator.folded_records += count - 1
            accums[j] = accum
            if flows:
                accum.bytes += size
                accum.packets += packets
                accum.flows += flows
                accum.small += small
            if ingress:
                accum.ingress += ingress
        # Talkers wait in the interval's backlog until something reads the sketches.
        talking = where[egress]
        if not len(talking):
            return
        columns = batch.columns
        talking_keys = key_number[egress]
        talking_starts = starts[egress]
        for start in [float(starts[0])] if single else np.unique(talking_starts).tolist():
            mine = talking_starts == start
            rows_here = talking[mine] if not single else talking
            backlog = aggregator.backlog(start)
            backlog.add(
                accums,
                talking_keys[mine] if not single else talking_keys,
                columns.src_hi[rows_here],
                columns.src_lo[rows_here],
                columns.dst_hi[rows_here],
                columns.dst_lo[rows_here],
                batch.sizes[rows_here],
            )
            if backlog.rows >= SETTLE_ROWS:
                aggregator.settle(start)

    def _account_rows(
        self,
        batch: ClassifiedBatch,
        where: npt.NDArray[np.intp],
        starts: npt.NDArray[np.float64],
        late: npt.NDArray[np.bool_],
    ) -> None:
        """:meth:`_account_block` of a few touched rows (``where``): below
        :data:`ROW_LOOP_ROWS` rows the talker backlog's sorting costs more than it saves.
        Rows are grouped by key in a few numpy calls and Python runs once per key (a sparse
        interval's key sees three or four flows; a new key's accumulator is built with its
        sums, one call). Keys are met in the order of their first rows, as :meth:`process`
        meets them record by record, so buckets hold the same keys in the same order.
        Talkers wait in their accumulator (:class:`Accum`) and go into the sketches in flow
        order when those are first read or :data:`WAITING_FLOWS` wait (after the block that
        brought them: the sketches are the same whenever they are added): it runs only
        while no interval has a backlog (which would see its flows later)."""
        aggregator = self.aggregator
        buckets = aggregator.buckets
        max_keys = aggregator.max_keys
        capacity = aggregator.sketch_capacity
        names = batch.groups
        labels = batch.labels
        columns = batch.columns
        waiting = 3 * WAITING_FLOWS
        # (the common block: its touched rows are one run, read through views, not copies)
        first, stop = int(where[0]), int(where[-1]) + 1
        rows = slice(first, stop) if stop - first == len(where) else where
        # Late egress is counted for the block at once, outside the loop.
        egress_rows = batch.egress[rows]
        late_egress = late & egress_rows
        if late_egress.any():
            aggregator.late_records += int(np.count_nonzero(late_egress))
            aggregator.late_bytes += exact_total(batch.sizes[where[late_egress]])
        # Each row's (interval, group, destination) as one number, its key's code for the
        # grouping below. A block is mostly two
        # intervals (it ends where one closes, the lateness after the next began): those are
        # told apart by one comparison, without numpy's unique.
        label_count = len(labels)
        key_count = len(names) * label_count
        # (the batch's numbers per row, gathered once for all its blocks)
        row_sums = batch.row_sums()
        codes = row_sums.codes[rows]
        first_start = float(starts[0])
        later = starts != first_start
        if later.any():
            second_start = float(starts[int(later.argmax())])
            if bool((starts[later] == second_start).all()):
                interval_starts = [first_start, second_start]
                codes = codes + later * key_count
            else:
                distinct, interval_codes = np.unique(starts, return_inverse=True)
                interval_starts = distinct.tolist()
                codes = codes + interval_codes.reshape(-1) * key_count
        else:
            interval_starts = [first_start]
        # Rows grouped by key (a stable sort: each key's rows keep flow order, its first row
        # leads), summed per key in numpy; Python then runs once per key, not per row.
        n = len(codes)
        order = codes.argsort(kind="stable")
        ordered = codes[order]
        change = np.empty(n, dtype=np.bool_)
        change[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=change[1:])
        heads = change.nonzero()[0]
        # keys in the order their first rows come (the order records create them in)
        by_first = order[heads].argsort()
        taken = where[order]
        # Per key (in key order): egress bytes, flows, packets, small-packet bytes, ingress
        # bytes, rows, and where its flows end among the egress rows (a running sum).
        table = row_sums.table
        sums = np.empty((7, len(heads)), dtype=table.dtype)
        np.add.reduceat(table[:, taken], heads, axis=1, out=sums[:6])
        sums[1].cumsum(out=sums[6])
        # each egress flow's (source, destination, bytes), flat, by key then flow order
        flowing = taken[egress_rows[order]]
        talkers_flat: list[int]
        if row_sums.talkers is not None:
            talkers_flat = row_sums.talkers[flowing].ravel().tolist()
        else:  # 128-bit values: Python integers
            src_hi, src_lo = columns.src_hi[flowing].tolist(), columns.src_lo[flowing].tolist()
            dst_hi, dst_lo = columns.dst_hi[flowing].tolist(), columns.dst_lo[flowing].tolist()
            sources = [(h << 64) | v for h, v in zip(src_hi, src_lo, strict=True)]
            targets = [(h << 64) | v for h, v in zip(dst_hi, dst_lo, strict=True)]
            flat = zip(sources, targets, batch.sizes[flowing].tolist(), strict=True)
            talkers_flat = list(itertools.chain.from_iterable(flat))
        # (typed lists and an index: the compiled build runs the loop on native integers)
        key_codes: list[int] = ordered[heads][by_first].tolist()
        per_key: list[list[int]] = sums[:, by_first].tolist()
        key_bytes, key_flows, key_packets, key_small, key_ingress, key_rows, key_ends = per_key
        #: each interval's bucket, once its first key has opened it
        interval_buckets: list[Bucket | None] = [None] * len(interval_starts)
        for k in range(len(key_codes)):
            code = key_codes[k]
            flows = key_flows[k]
            ingress = key_ingress[k]
            interval = code // key_count
            bucket = interval_buckets[interval]
            if bucket is None:
                start = interval_starts[interval]
                bucket = buckets.get(start)
                if bucket is None:
                    bucket = aggregator.bucket(start)
                interval_buckets[interval] = bucket
            code -= interval * key_count
            key = (names[code // label_count], labels[code % label_count])
            high = 3 * key_ends[k]
            low = high - 3 * flows
            accum = bucket.get(key)
            if accum is None:
                if len(bucket) < max_keys:  # (IntervalAggregator.accum, inlined)
                    # A new key: its sums at once (most keys meet one block an interval).
                    # The talkers wait in the accumulator until its sketches are read
                    # (most never are); they go into the sketches in flow order, whenever.
                    accum = bucket[key] = Accum(
                        capacity,
                        key_bytes[k],
                        key_packets[k],
                        flows,
                        key_small[k],
                        ingress,
                        None,
                        None,
                        talkers_flat[low:high] if flows else None,
                    )
                    if high - low >= waiting:
                        accum.settle()
                    continue
                accum = aggregator.accum(bucket, key)
                if key not in bucket:  # each of its records was folded
                    aggregator.folded_records += key_rows[k] - 1
            if ingress:
                accum.ingress += ingress
            if not flows:
                continue
            accum.bytes += key_bytes[k]
            accum.packets += key_packets[k]
            accum.flows += flows
            small = key_small[k]
            if small:
                accum.small += small
            talkers = accum.talkers
            if talkers is None:
                talkers = accum.talkers = talkers_flat[low:high]
            else:
                talkers += talkers_flat[low:high]
            if len(talkers) >= waiting:
                accum.settle()

    def apply_partials(
        self, partials: Iterable[Partial], event_time: float | None = None
    ) -> list[Alert]:
        """Add interval partials counted elsewhere; then move event time to ``event_time``.

        Partials merge by addition, so partials of the same records split any way between
        producers give the sums one engine counting every record would. A partial of an
        interval already closed is late: it counts in the interval at the watermark, as a
        late record does. Event time moves only through ``event_time`` (the producer's
        watermark), never through the intervals the partials name.
        """
        aggregator = self.aggregator
        stats = self.stats
        for start, key, accum in partials:
            if start >= aggregator.closed_upto:
                bucket = aggregator.bucket(start)
            else:
                bucket = aggregator.bucket(aggregator.late_start(accum.bytes))
            merged = aggregator.accum(bucket, key)
            merged.merge(accum)
            stats.egress_records += accum.flows
            stats.egress_bytes += accum.bytes
        return self.advance(event_time) if event_time is not None else []

    def _ingress(self, dst: str, origin: DestinationLabels, end: float, size: int) -> None:
        """Account ``size`` bytes from outside ``origin`` to local ``dst`` (not in the hot loop's
        egress path: one bucket lookup per ingress record)."""
        self.source_cache.lookups += 1
        group = self.source_cache.get(dst)
        if group is None:
            group = self._source_group(dst)
        aggregator = self.aggregator
        interval = aggregator.interval
        if end < aggregator.closed_upto:
            watermark = max(aggregator.max_time - aggregator.lateness, aggregator.closed_upto)
            end = watermark
        start = end - end % interval
        bucket = aggregator.buckets.get(start)
        if bucket is None:
            bucket = aggregator.bucket(start)
        key = (group, origin)
        accum = bucket.get(key)
        if accum is None:
            accum = aggregator.accum(bucket, key)
        accum.ingress += size

    def advance(self, event_time: float) -> list[Alert]:
        """Move event time on without records (live sources idle); close what is due."""
        self.aggregator.observe_time(event_time)
        changed = self._close(self.aggregator.pop_due()) if self.aggregator.due else []
        # Evaluate empty intervals so firing alerts resolve while nothing arrives.
        watermark = event_time - self.config.detection.allowed_lateness
        interval = self.config.detection.interval
        if self.last_tick > -math.inf and watermark - self.last_tick >= interval:
            end = watermark - watermark % interval
            if not self.aggregator.buckets or min(self.aggregator.buckets) >= end:
                changed.extend(self._empty_ticks(end))
                self.aggregator.closed_upto = max(self.aggregator.closed_upto, end)
        return changed

    def flush(self) -> list[Alert]:
        """Close every open interval (the end of a replay)."""
        return self._close(self.aggregator.pop_all())

    # -- interval close -------------------------------------------------------------------

    def _close(self, buckets: list[tuple[float, Bucket]]) -> list[Alert]:
        changed: list[Alert] = []
        for start, bucket in buckets:
            changed.extend(self._empty_ticks(start))
            changed.extend(self._tick(start, bucket))
            if self.on_interval is not None:
                self.on_interval(start, bucket)
        return changed

    def _empty_ticks(self, upto: float) -> list[Alert]:
        """Evaluate the empty intervals between the last tick and ``upto`` (bounded)."""
        changed: list[Alert] = []
        if not self.book.active and not self.unexpected.windows:
            if self.last_tick < upto:
                self.last_tick = upto
            return changed
        interval = self.config.detection.interval
        if self.last_tick == -math.inf:
            return changed
        gaps = round((upto - self.last_tick) / interval)
        if gaps <= 0:
            return changed
        starts = [self.last_tick + i * interval for i in range(gaps)]
        if len(starts) > _MAX_EMPTY_TICKS:
            starts = [*starts[: _MAX_EMPTY_TICKS // 2], upto - interval]
        for start in starts:
            changed.extend(self._tick(start, {}))
        return changed

    def _tick(self, start: float, bucket: Bucket) -> list[Alert]:
        detection = self.config.detection
        end = start + detection.interval
        self.stats.intervals_closed += 1
        totals = self.stats.egress_by_destination
        # Keys that only received (a download's ingress) feed the unexpected windows alone.
        # Most intervals have none: the bucket itself is the egress then, copied without them
        # (in the same order) only when there are some.
        egress: Bucket = bucket
        policy = self.policy
        observe = policy.observe
        # Only groups still learning their countries learn anything from observe: asked once
        # per group and interval (the answer cannot change within the interval).
        learning: dict[str, bool] = {}
        # What the baselines learn, built on the way: (group, destination key), bytes.
        learned: list[tuple[tuple[str, str], int]] = []
        # Each group's egress this interval (its rate learns it after the rules ran).
        group_bytes: dict[str, int] = {}
        for key, accum in bucket.items():
            size = accum.bytes
            if not size:
                if egress is bucket:
                    egress = {k: a for k, a in bucket.items() if a.bytes}
                continue
            group, dest = key
            learns = learning.get(group)
            if learns is None:
                learns = learning[group] = policy.is_learning(group, start)
                group_bytes[group] = size
            else:
                group_bytes[group] += size
            if learns:
                observe(group, dest, size, start)
            learned.append(((group, dest.key), size))
            total = totals.get(key)
            if total is not None:
                totals[key] = total + size
            elif len(totals) < MAX_DESTINATION_TOTALS:
                totals[key] = size
            else:
                # Bounded metric cardinality: past the cap a destination adds to its country.
                key = (group, DestinationLabels(dest.country))
                totals[key] = totals.get(key, 0) + size
        self.unexpected.collect(start, bucket)
        changed = self.unexpected.evaluate(end, self.baselines)
        changed.extend(self.spikes.evaluate(start, egress, self.baselines))
        changed.extend(self.new_destinations.evaluate(start, egress))
        self.baselines.observe_interval(start, learned)
        self.group_rates.observe(group_bytes, detection.interval)
        if self.stats.intervals_closed % 288 == 0:
            self.baselines.evict_idle(end, detection.key_idle_timeout)
        if end > self.last_tick:
            self.last_tick = end
        return changed

    # -- views ------------------------------------------------------------------------------

    def active_alerts(self) -> list[Alert]:
        return self.book.firing()

    def event_time(self) -> float:
        return self.aggregator.max_time

    # -- persistence ------------------------------------------------------------------------

    def snapshot(self, *, records_text: bool = True) -> dict[str, Any]:
        """Everything learned, as JSON-friendly data (see :mod:`egressd.baseline.statefile`).

        ``records_text=False`` (a save's, taken on the event loop): the baselines' records
        stay a copy of their rows, which :func:`~egressd.baseline.statefile.save_state`
        encodes in its thread (see :meth:`SeasonalBaselines.to_json`)."""
        return {
            "version": STATE_VERSION,
            "event_time": self.aggregator.max_time
            if self.aggregator.max_time > -math.inf
            else None,
            "closed_upto": (
                self.aggregator.closed_upto if self.aggregator.closed_upto > -math.inf else None
            ),
            "last_tick": self.last_tick if self.last_tick > -math.inf else None,
            "interval": self.config.detection.interval,
            "baselines": self.baselines.to_json(records_text=records_text),
            "learned": self.policy.to_json(),
            "alerts": self.book.to_json(),
            "windows": self.unexpected.to_json(),
            "spikes": self.spikes.to_json(),
            "new_destinations": self.new_destinations.to_json(),
            "group_rates": self.group_rates.to_json(),
            "open_buckets": self.aggregator.to_json(),
        }

    def restore(self, data: dict[str, Any], *, open_by_lateness: bool = True) -> None:
        """Load a snapshot; raises ValueError/KeyError/TypeError when it is not usable.

        ``open_by_lateness``: the engine closes each interval once the allowed lateness has
        passed it, so no more open intervals than that holds are restored, none after the
        saved event time. A cluster's detect partition closes one only when its slowest
        source partition has passed it (its event time) while faster ones open later
        intervals: it restores them all.
        """
        if data.get("version") not in READABLE_STATE_VERSIONS:
            raise ValueError(
                f"state version {data.get('version')!r} is not one of {READABLE_STATE_VERSIONS}"
            )
        if float(data.get("interval", 0)) != self.config.detection.interval:
            raise ValueError("state was written with another detection.interval")
        try:
            self._restore_parts(data, open_by_lateness)
        except AttributeError as exc:  # a list where a table belongs, and the like
            raise ValueError(f"malformed state: {exc}") from exc
        self.restored = True

    def clamp_event_time(self, limit: float) -> float | None:
        """Bring restored event time back to ``limit`` at most; the old time if it was later.

        A state file written by a clock far ahead (or edited) would otherwise hold every
        interval open until real time caught up: flows would all be late, accounted in an
        interval that never closes. The watermark, the closed-up-to mark and the last
        evaluated interval go back with it, and open intervals beyond ``limit`` merge into
        the interval holding it, so what they counted still gets judged.
        """
        aggregator = self.aggregator
        aggregator.settle()  # open intervals may merge below: their sketches must be whole
        interval = aggregator.interval
        ahead = max(aggregator.max_time, aggregator.closed_upto, self.last_tick)
        target = limit - limit % interval
        if not ahead > limit and all(start <= target for start in aggregator.buckets):
            return None
        aggregator.max_time = min(aggregator.max_time, limit)
        watermark = limit - aggregator.lateness
        closed = watermark - watermark % interval
        aggregator.closed_upto = min(aggregator.closed_upto, closed)
        self.last_tick = min(self.last_tick, closed)
        future = sorted(start for start in aggregator.buckets if start > target)
        if future:
            into = aggregator.bucket(target)
            for start in future:
                for key, accum in aggregator.buckets.pop(start).items():
                    merged = into.get(key)
                    if merged is None:
                        into[key] = accum
                        continue
                    merged.merge(accum)
        aggregator.next_due = min(
            (start + interval + aggregator.lateness for start in aggregator.buckets),
            default=math.inf,
        )
        return ahead

    def _restore_parts(self, data: dict[str, Any], open_by_lateness: bool) -> None:
        """Each part held to the bounds the running engine keeps; what a part left out is
        counted in :attr:`dropped_on_load` (a crafted or damaged file cannot grow the engine
        past them, nor hold a key below what pages)."""
        saved_time = data.get("event_time")
        until = math.inf if saved_time is None else float(saved_time)
        max_keys = self.config.detection.max_keys
        dropped = self.dropped_on_load = dict.fromkeys(RESTORED_PARTS, 0)
        self.baselines.load_json(data["baselines"])
        dropped["baselines"] = self.baselines.dropped_on_load
        dropped["learned"] = self.policy.load_json(data["learned"], until)
        dropped["alerts"] = self.book.load_json(data["alerts"], until, ALERTNAMES, max_keys)
        # One labels object per destination key across everything restored.
        intern: dict[str, DestinationLabels] = {}
        self.unexpected.load_json(data["windows"], intern, until)
        dropped["windows"] = self.unexpected.evicted
        dropped["spike_held"] = self.spikes.load_json(data["spikes"], intern, until)
        # (a state from before group rates has none: they are learned again within hours)
        rates = GroupRates.from_json(data.get("group_rates"))
        self.group_rates.levels = rates.levels
        if "new_destinations" in data:
            self.new_destinations.load_json(data["new_destinations"], intern)
        dropped["groups"] = sum(
            _bound_unnamed(table, self.config.groups)
            for table in (
                self.group_rates.levels,
                self.spikes.excesses.learned,
                self.spikes.excesses.pending,
                self.new_destinations.groups,
            )
        )
        dropped["open_intervals"] = self.aggregator.load_json(
            data.get("open_buckets", []),
            intern,
            until if open_by_lateness else math.inf,
            by_lateness=open_by_lateness,
        )
        # The restored open intervals' bytes were counted (egressd_egress_bytes_total) by the
        # process that saved them; they close into the totals here again, so start each key
        # below zero by that much: the counter starts at 0 and never counts a byte twice.
        totals = self.stats.egress_by_destination
        for key, size in self.aggregator.open_totals().items():
            totals[key] = totals.get(key, 0) - size
        if data.get("event_time") is not None:
            self.aggregator.max_time = float(data["event_time"])
        if data.get("closed_upto") is not None:
            self.aggregator.closed_upto = float(data["closed_upto"])
        if data.get("last_tick") is not None:
            self.last_tick = float(data["last_tick"])


def _bound_unnamed(table: dict[str, Any], groups: tuple[GroupConfig, ...]) -> int:
    """Hold a per-group table restored from a state file to the groups configured (and
    unmatched sources' group) plus as many others (a renamed or removed group's, the last
    saved kept); returns how many groups were left out."""
    named = {group.name for group in groups} | {OTHER_GROUP}
    unnamed = [group for group in table if group not in named]
    excess = len(unnamed) - len(named)
    for group in unnamed[: max(excess, 0)]:
        del table[group]
    return max(excess, 0)
