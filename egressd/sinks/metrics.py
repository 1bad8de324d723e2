"""egressd's own Prometheus metrics, read from plain counters at scrape time.

A custom collector on a private registry: the hot path only bumps ints, and labels are
bounded (group, country, region, ASN, source, reason) — never an address.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from egressd import __version__
from egressd.baseline.seasonal import SeasonalBaselines
from egressd.detect.alerts import FIRING
from egressd.detect.detectors import SPIKE, UNEXPECTED
from egressd.detect.newdest import NEW_DESTINATION
from egressd.enrich import DestinationLabels
from egressd.pipeline import Engine
from egressd.sinks.alertmanager import AlertmanagerStats
from egressd.sinks.guard import ConnectionStats
from egressd.sources.base import Source

log = logging.getLogger("egressd")

PREFIX = "egressd_"
#: scrapes this close (event time, seconds) to the next hour slot start evaluating it
PREPARE_AHEAD = 900.0
#: keys a scrape evaluates ahead for the next hour slot
PREPARE_CHUNK = 16_384
ALERTNAMES = (UNEXPECTED, SPIKE, NEW_DESTINATION)
#: keys an evaluation of the baseline view may take on the event loop; more (a restored or
#: reloaded view, an hour of day the scrapes did not evaluate ahead) go to a thread
EVALUATE_ON_LOOP = 65_536


@dataclass(slots=True)
class DaemonStats:
    """What the daemon itself does besides detection: reloads, state saves, idle ticks."""

    started: float = 0.0
    config_reloads: int = 0
    config_reload_errors: int = 0
    config_last_reload_success: float = 0.0
    state_saves: int = 0
    state_save_errors: int = 0
    state_last_save: float = 0.0
    state_last_save_bytes: int = 0
    state_values_clamped: int = 0
    state_too_large: int = 0
    #: saves that wrote more than state.max_size: a restart would not read them
    state_saved_too_large: int = 0
    #: state files moved aside as unusable (not JSON, nested too deep, not a state)
    state_corrupt: int = 0
    state_restored: bool = False
    idle_advances: int = 0
    #: per part of a restored state file, entries left out as beyond what the engine holds
    state_entries_dropped: dict[str, int] = field(default_factory=dict)
    #: restored states whose event time was ahead of wall time + max_clock_ahead (set back)
    state_time_clamped: int = 0
    #: flows delivered while the state was restored: held and judged once it was in place,
    #: or dropped past the hold's bound
    records_held_before_state: int = 0
    records_dropped_before_state: int = 0
    alert_log_errors: int = 0
    geo_reloads: int = 0
    geo_reload_errors: int = 0
    #: HTTP basic-auth attempts by outcome (the auth checker's own dict; empty without auth)
    http_auth: dict[str, int] = field(default_factory=dict)
    #: the HTTP listener's connection guard (the server's own object)
    http_connections: ConnectionStats = field(default_factory=ConnectionStats)


class BaselineGauge:
    """Seasonal expectations summed by metric labels, re-evaluated only where they can differ.

    An expectation changes when its baseline learns an interval (or is forgotten), and for
    every key when the event time enters another hour slot. A scrape evaluates just those
    keys, in one batch, so an unchanged scrape costs nothing per baseline. Scrapes in the
    last :data:`PREPARE_AHEAD` seconds before the hour slot moves also evaluate the next
    slot's expectations, :data:`PREPARE_CHUNK` keys at a time, so the scrape after the move
    evaluates only the keys that changed since. What it keeps per key sits in arrays by the
    baselines' slot: the expectation, the next slot's, and the key's label set.
    """

    __slots__ = (
        "_baselines",
        "_changed",
        "_codes",
        "_epoch",
        "_label_index",
        "_label_sets",
        "_next_season",
        "_next_values",
        "_prepared",
        "_shape",
        "_sums",
        "_values",
        "evaluated",
    )

    def __init__(self) -> None:
        self._baselines: SeasonalBaselines | None = None
        self._changed: set[int] = set()
        self._epoch = -1
        #: (season slot, regions, asn) the values were computed for
        self._shape: tuple[int, bool, bool] | None = None
        #: slot -> expected bytes, and slot -> index of its label values in ``_label_sets``
        self._values: np.ndarray[Any, np.dtype[np.float64]] = np.zeros(0)
        self._codes: np.ndarray[Any, np.dtype[np.int64]] = np.zeros(0, np.int64)
        self._label_sets: list[tuple[str, ...]] = []
        self._label_index: dict[tuple[str, ...], int] = {}
        #: label values -> expected bytes, as of the last evaluation
        self._sums: dict[tuple[str, ...], float] = {}
        #: the season slot the event time enters next (-1: none yet), slot -> expected bytes
        #: there, and slot -> whether that is evaluated (and its key unchanged since)
        self._next_season = -1
        self._next_values: np.ndarray[Any, np.dtype[np.float64]] = np.zeros(0)
        self._prepared: np.ndarray[Any, np.dtype[np.bool_]] = np.zeros(0, np.bool_)
        #: expectations evaluated so far (a counter)
        self.evaluated = 0

    def expected(
        self, baselines: SeasonalBaselines, now: float, regions: bool, asn: bool
    ) -> dict[tuple[str, ...], float]:
        shape = (baselines.season.slot(now), regions, asn)
        if (
            baselines is not self._baselines
            or baselines.epoch != self._epoch
            or shape != self._shape
        ):
            relabel = (
                baselines is not self._baselines
                or baselines.epoch != self._epoch
                or self._shape is None
                or self._shape[1:] != shape[1:]
                or len(self._label_sets) > len(baselines)
            )
            # Keys learned or forgotten since the last scrape may hold other slots now.
            moved = _slots([] if relabel else self._changed)
            prepared = not relabel and self._next_season == shape[0]
            self._baselines, self._epoch, self._shape = baselines, baselines.epoch, shape
            self._changed = baselines.track_changes()
            self._changed.clear()
            self._evaluate_all(baselines, now, relabel, moved, prepared)
        elif self._changed:
            slots = _slots(self._changed)
            self._changed.clear()
            self._evaluate_some(baselines, slots, now)
        self._prepare(baselines, now)
        return self._sums

    def pending(self, baselines: SeasonalBaselines, now: float, regions: bool, asn: bool) -> int:
        """About how many keys :meth:`expected` would evaluate now (at most every key)."""
        season = baselines.season.slot(now)
        if baselines is not self._baselines or baselines.epoch != self._epoch:
            return len(baselines)
        if self._shape is None or self._shape[1:] != (regions, asn):
            return len(baselines)
        if season == self._shape[0]:
            return len(self._changed)
        if season != self._next_season:
            return len(baselines)
        return max(0, len(baselines) - int(np.count_nonzero(self._prepared))) + len(self._changed)

    @property
    def last(self) -> dict[tuple[str, ...], float]:
        """What the last evaluation gave (the label values' arity is of its shape)."""
        return self._sums

    def prepare_all(self, baselines: SeasonalBaselines, at: float) -> None:
        """Evaluate every key ahead for the hour slot of ``at``, unless that is the slot
        evaluated now: once the event time enters it, :meth:`expected` evaluates only the keys
        changed since. (The restore does this in its thread for the slot of wall time, which
        flows arriving after a stop bring the event time to.)"""
        assert self._shape is not None, "expected() first"
        season = baselines.season.slot(at)
        if season == self._shape[0]:
            return
        self._next_season = season
        self._prepared[:] = False
        live = baselines.live_slots()
        self._next_values[live] = baselines.expected_bytes_at(live, at)
        self._prepared[live] = True
        self.evaluated += len(live)

    def _prepare(self, baselines: SeasonalBaselines, now: float) -> None:
        """Evaluate some keys for the hour slot the event time enters next, if it is close."""
        assert self._shape is not None
        ahead = now + PREPARE_AHEAD
        season = baselines.season.slot(ahead)
        if season == self._shape[0]:
            return
        if season != self._next_season:
            self._next_season = season
            self._prepared[:] = False
        live = baselines.live_slots()
        todo = live[~self._prepared[live]][:PREPARE_CHUNK]
        if len(todo):
            # Only the season slot of the time matters: any time in it gives the same values.
            self._next_values[todo] = baselines.expected_bytes_at(todo, ahead)
            self._prepared[todo] = True
            self.evaluated += len(todo)

    def _label_codes(
        self, baselines: SeasonalBaselines, slots: np.ndarray[Any, np.dtype[np.intp]]
    ) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The index in ``_label_sets`` of the label values of each key in ``slots``."""
        assert self._shape is not None
        _, regions, asn = self._shape
        numbers, texts = baselines.label_numbers(slots)
        if not len(slots):
            return np.zeros(0, np.int64)
        # The label columns this shape shows, combined pairwise into dense numbers, so the
        # distinct label sets are found by numpy and only those are built as tuples.
        columns = [0, 1] + ([2] if regions else []) + ([3] if asn else [])
        combined = numbers[:, 0].astype(np.int64)
        for column in columns[1:-1]:
            combined = (combined << 32) | numbers[:, column]
            combined = np.unique(combined, return_inverse=True)[1].astype(np.int64)
        combined = (combined << 32) | numbers[:, columns[-1]]
        _, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
        codes = []
        index = self._label_index
        for group, country, region, number in numbers[first].tolist():
            values: tuple[str, ...] = (texts[group], texts[country])
            if regions:
                values += (texts[region],)
            if asn:
                values += (str(number) if number else "",)
            code = index.get(values)
            if code is None:
                code = index[values] = len(self._label_sets)
                self._label_sets.append(values)
            codes.append(code)
        result: np.ndarray[Any, np.dtype[np.int64]] = np.array(codes, np.int64)[inverse]
        return result

    def _reserve(self, slots: int) -> None:
        if len(self._codes) < slots:
            size, old = max(slots, 2 * len(self._codes)), len(self._codes)
            codes = np.full(size, -1, np.int64)
            codes[:old] = self._codes
            values, next_values = np.zeros(size), np.zeros(size)
            values[:old], next_values[:old] = self._values, self._next_values
            prepared = np.zeros(size, np.bool_)
            prepared[:old] = self._prepared
            self._codes, self._values, self._next_values = codes, values, next_values
            self._prepared = prepared

    def _evaluate_all(
        self,
        baselines: SeasonalBaselines,
        now: float,
        relabel: bool,
        moved: np.ndarray[Any, np.dtype[np.intp]],
        prepared: bool,
    ) -> None:
        self._reserve(baselines.slot_count)
        live = baselines.live_slots()
        if relabel:
            self._label_sets.clear()
            self._label_index.clear()
            self._codes[live] = self._label_codes(baselines, live)
        else:
            slots = baselines.held(moved)
            self._codes[slots] = self._label_codes(baselines, slots)
        todo = live
        if prepared:
            # The keys evaluated ahead for this hour slot and unchanged since keep that value.
            self._prepared[moved] = False
            ready = self._prepared[live]
            self._values[live[ready]] = self._next_values[live[ready]]
            todo = live[~ready]
        self.evaluated += len(todo)
        self._values[todo] = baselines.expected_bytes_at(todo, now)
        self._prepared[:] = False
        self._next_season = -1
        self._sum(live)

    def _evaluate_some(
        self, baselines: SeasonalBaselines, changed: np.ndarray[Any, np.dtype[np.intp]], now: float
    ) -> None:
        self.evaluated += len(changed)
        self._reserve(baselines.slot_count)
        self._prepared[changed] = False
        slots = baselines.held(changed)
        if len(slots):
            self._codes[slots] = self._label_codes(baselines, slots)
            self._values[slots] = baselines.expected_bytes_at(slots, now)
        self._sum(baselines.live_slots())

    def _sum(self, live: np.ndarray[Any, np.dtype[np.intp]]) -> None:
        codes = self._codes[live]
        width = len(self._label_sets)
        sums = np.bincount(codes, weights=self._values[live], minlength=width)
        counts = np.bincount(codes, minlength=width)
        label_sets = self._label_sets
        self._sums = {
            label_sets[code]: float(sums[code]) for code in np.flatnonzero(counts).tolist()
        }


def _fresh(view: BaselineGauge) -> BaselineGauge:
    """A view that evaluates everything at its first use, counting on from ``view``."""
    fresh = BaselineGauge()
    fresh.evaluated = view.evaluated
    return fresh


def _slots(slots: Iterable[int]) -> np.ndarray[Any, np.dtype[np.intp]]:
    return np.fromiter(slots, np.intp)


class EgressdCollector(Collector):
    """Turns engine, source, sink and daemon counters into metric families on each scrape."""

    def __init__(
        self,
        engine: Callable[[], Engine],
        sources: Callable[[], Sequence[Source]],
        daemon: DaemonStats,
        alertmanager: AlertmanagerStats | None = None,
    ) -> None:
        self._engine = engine
        self._sources = sources
        self._daemon = daemon
        self._alertmanager = alertmanager
        self._baseline_view = BaselineGauge()
        #: an evaluation of the baseline view running in a thread (see :meth:`_expected`)
        self._evaluating: asyncio.Future[Any] | None = None

    @staticmethod
    def view_for(engine: Engine, wall: float) -> BaselineGauge:
        """A baseline view of ``engine`` evaluated for its event time, and ahead for the hour
        slot of ``wall`` (where flows arriving after a stop take the event time). Touches only
        ``engine``: the daemon builds it in the restore's thread, for an engine not yet in use,
        then :meth:`adopt` puts it in place with the engine; a million baselines take about a
        second to evaluate, which would otherwise stop the event loop at once."""
        view = BaselineGauge()
        now = engine.event_time()
        if now > -math.inf:
            labeler = engine.labeler
            view.expected(engine.baselines, now, labeler.has_regions, labeler.has_asn)
            view.prepare_all(engine.baselines, wall)
        return view

    def adopt(self, view: BaselineGauge) -> None:
        """Use ``view`` (from :meth:`view_for`) from now on; the count of evaluations goes on."""
        view.evaluated += self._baseline_view.evaluated
        self._baseline_view = view
        self._evaluating = None  # (one still running evaluates the view replaced)

    def _expected(
        self, engine: Engine, now: float, regions: bool, asn: bool
    ) -> dict[tuple[str, ...], float]:
        """The baseline view's sums for ``now``, evaluated here when that takes at most
        :data:`EVALUATE_ON_LOOP` keys. Beyond, from the event loop, the evaluation runs in a
        thread (:meth:`_evaluate_beside`) and the scrapes meanwhile show what the view held
        before (nothing when the label names changed); evaluating a million keys at once
        stopped the loop a second (HTTP, sources, state saves, the watchdog). What the loop
        changes in the baselines meanwhile is tracked as ever (their ``changed`` set), and
        evaluated by the next scrape."""
        view = self._baseline_view
        running = self._evaluating
        if running is not None:
            if not running.done():
                return self._stale(view, regions, asn)
            self._evaluating = None
            failure = running.exception() if not running.cancelled() else None
            if running.cancelled() or failure is not None:
                log.error("evaluating the baseline view failed: %r", failure)
                view = self._baseline_view = _fresh(view)
        baselines = engine.baselines
        if view.pending(baselines, now, regions, asn) > EVALUATE_ON_LOOP:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None  # (called outside the daemon: a test, a benchmark)
            if loop is not None:
                self._evaluate_beside(loop, view, baselines, now, regions, asn)
                return self._stale(view, regions, asn)
        return view.expected(baselines, now, regions, asn)

    def _evaluate_beside(
        self,
        loop: asyncio.AbstractEventLoop,
        view: BaselineGauge,
        baselines: SeasonalBaselines,
        now: float,
        regions: bool,
        asn: bool,
    ) -> None:
        self._evaluating = loop.run_in_executor(None, view.expected, baselines, now, regions, asn)

    @staticmethod
    def _stale(view: BaselineGauge, regions: bool, asn: bool) -> dict[tuple[str, ...], float]:
        last = view.last
        width = 2 + regions + asn
        if last and len(next(iter(last))) != width:
            return {}
        return last

    async def settle(self) -> int:
        """:meth:`warm`, what takes more than :data:`EVALUATE_ON_LOOP` keys evaluated in a
        thread while the event loop goes on (after a restore whose flows took the event time
        to an hour not evaluated ahead, after a reload that changed the label names).
        Returns how many were evaluated."""
        view = self._baseline_view
        before = view.evaluated
        for _ in range(4):  # (the loop's flows may move the hour on meanwhile: a few times)
            running = self._evaluating
            if running is not None:
                await asyncio.wait([running])
            engine = self._engine()
            now = engine.event_time()
            if now == -math.inf:
                break
            labeler = engine.labeler
            regions, asn = labeler.has_regions, labeler.has_asn
            self._expected(engine, now, regions, asn)
            if self._evaluating is None:
                break
        view = self._baseline_view
        return view.evaluated - before

    def warm(self) -> int:
        """Evaluate every baseline's expectation for the engine's event time now, here, so the
        first scrape finds them done instead of paying for all of them (the daemon uses
        :meth:`settle`, which takes a large evaluation off the event loop). Returns how many
        were evaluated: after :meth:`adopt`, only the keys changed since :meth:`view_for`,
        unless the event time moved to an hour slot other than those evaluated there."""
        engine = self._engine()
        now = engine.event_time()
        view = self._baseline_view
        before = view.evaluated
        if self._evaluating is not None and not self._evaluating.done():
            return 0  # (one view is evaluated by one caller at a time: see settle)
        if now > -math.inf:
            labeler = engine.labeler
            view.expected(engine.baselines, now, labeler.has_regions, labeler.has_asn)
        return view.evaluated - before

    def collect(self) -> Iterable[Metric]:
        engine = self._engine()
        yield from self._build_info()
        yield from self._egress(engine)
        yield from self._engine_counters(engine)
        yield from self._alerts(engine)
        yield from self._geo(engine)
        yield from self._sources_metrics(self._sources())
        yield from self._daemon_metrics()
        yield from self._alertmanager_metrics()

    # -- families ---------------------------------------------------------------------------

    def _build_info(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(PREFIX + "build_info", "egressd version", labels=["version"])
        info.add_metric([__version__], 1.0)
        yield info

    def _label_names(self, engine: Engine) -> list[str]:
        names = ["group", "dst_country"]
        if engine.labeler.has_regions:
            names.append("dst_region")
        if engine.labeler.has_asn:
            names.append("dst_asn")
        return names

    @staticmethod
    def label_values(
        group: str, dest: DestinationLabels, regions: bool, asn: bool
    ) -> tuple[str, ...]:
        values: tuple[str, ...] = (group, dest.country)
        if regions:
            values += (dest.region,)
        if asn:
            values += (str(dest.asn) if dest.asn else "",)
        return values

    def _egress(self, engine: Engine) -> Iterable[Metric]:
        names = self._label_names(engine)
        regions, asn = engine.labeler.has_regions, engine.labeler.has_asn
        totals: dict[tuple[str, ...], int] = {}
        get, label_values = totals.get, self.label_values
        by_country = not regions and not asn
        values: tuple[str, ...]
        # Closed intervals plus what open buckets hold, so the counter moves as bytes arrive
        # (the open buckets read in place: summing them per key first costs a scrape more).
        for (group, dest), size in engine.stats.egress_by_destination.items():
            values = (
                (group, dest.country) if by_country else label_values(group, dest, regions, asn)
            )
            totals[values] = get(values, 0) + size
        for bucket in engine.aggregator.buckets.values():
            for (group, dest), accum in bucket.items():
                size = accum.bytes
                if size:
                    values = (
                        (group, dest.country)
                        if by_country
                        else label_values(group, dest, regions, asn)
                    )
                    totals[values] = get(values, 0) + size
        egress = CounterMetricFamily(
            PREFIX + "egress_bytes",
            "Bytes sent from local groups to outside destinations (event time, accepted records)",
            labels=names,
        )
        for values, size in sorted(totals.items()):
            egress.add_metric(list(values), float(size))
        yield egress

        baseline = GaugeMetricFamily(
            PREFIX + "egress_baseline_bytes",
            "Seasonal expectation of bytes per interval at the current event time",
            labels=names,
        )
        now = engine.event_time()
        if now > -math.inf:
            expected = self._expected(engine, now, regions, asn)
            for values, expected_bytes in sorted(expected.items()):
                baseline.add_metric(list(values), round(expected_bytes))
        yield baseline
        yield _counter(
            "baseline_expectations_evaluated",
            "Baseline expectations evaluated for egress_baseline_bytes (keys that changed "
            "since the last scrape; every key for the next hour of day, during the quarter "
            "hour before it or when it begins)",
            self._baseline_view.evaluated,
        )

        yield _gauge("baseline_keys", "Baselines kept (group x destination)", len(engine.baselines))
        yield _counter(
            "baseline_evictions",
            "Baselines forgotten, by reason",
            [
                (["capacity"], engine.baselines.evicted_capacity),
                (["idle"], engine.baselines.evicted_idle),
            ],
            ["reason"],
        )
        yield _gauge(
            "event_time_seconds",
            "Latest flow end time seen (the watermark before allowed lateness)",
            now if now > -math.inf else 0.0,
        )
        yield _gauge(
            "open_intervals",
            "Intervals not yet closed by the watermark",
            len(engine.aggregator.buckets),
        )

    def _engine_counters(self, engine: Engine) -> Iterable[Metric]:
        stats = engine.stats
        aggregator = engine.aggregator
        yield _counter("engine_records", "Flow records processed by the engine", stats.records)
        yield _counter("egress_records", "Egress flow records", stats.egress_records)
        yield _counter(
            "ingress_records", "Records from outside to local addresses", stats.ingress_records
        )
        yield _counter(
            "ingress_bytes", "Bytes from outside to local addresses", stats.ingress_bytes
        )
        yield _counter(
            "internal_records", "East-west records between local addresses", stats.internal_records
        )
        yield _counter(
            "internal_bytes", "East-west bytes between local addresses", stats.internal_bytes
        )
        yield _counter(
            "transit_records", "Records between two non-local addresses", stats.transit_records
        )
        yield _counter(
            "special_records",
            "Egress records to special-purpose destinations",
            stats.special_records,
        )
        yield _counter(
            "future_records",
            "Records stamped later than wall time plus detection.max_clock_ahead, "
            "counted at that time",
            stats.future_records,
        )
        yield _counter(
            "invalid_records",
            "Records skipped: more bytes or packets than detection.max_link_rate carries in "
            "their duration",
            stats.invalid_records,
        )
        yield _counter(
            "late_records",
            "Records for intervals already closed (not counted)",
            aggregator.late_records,
        )
        yield _counter("late_bytes", "Bytes of late records", aggregator.late_bytes)
        yield _counter(
            "duplicate_records",
            "Records not counted: another exporter had reported all their bytes of the flow "
            "(detection.duplicate_exports)",
            stats.duplicate_records,
        )
        yield _counter(
            "duplicate_bytes",
            "Bytes not counted: another exporter had reported them for the flow",
            stats.duplicate_bytes,
        )
        yield _counter(
            "duplicate_evictions",
            "Flow keys the duplicate stage forgot at detection.duplicate_max_keys "
            "(their next record counts in full)",
            stats.duplicate_evictions,
        )
        duplicates = engine.duplicates
        yield _gauge(
            "duplicate_flow_keys",
            "Flow keys the duplicate stage holds (0 while a single exporter was seen)",
            len(duplicates) if duplicates is not None else 0,
        )
        yield _counter("intervals_closed", "Intervals closed and evaluated", stats.intervals_closed)
        # The bounds of the engine's own tables, so a flood of distinct labels shows.
        yield _gauge(
            "open_bucket_keys",
            "(group x destination) keys in open intervals (each bucket is capped at max_keys)",
            sum(len(bucket) for bucket in aggregator.buckets.values()),
        )
        yield _counter(
            "bucket_folded_records",
            "Records counted under their country because their interval held max_keys keys",
            aggregator.folded_records,
        )
        yield _gauge(
            "unexpected_windows",
            "Sliding windows kept for unexpected destinations (capped at max_keys)",
            len(engine.unexpected.windows),
        )
        yield _counter(
            "unexpected_windows_evicted",
            "Unexpected-destination windows dropped to stay within max_keys",
            engine.unexpected.evicted,
        )
        yield _gauge_labelled(
            "new_destination_prefixes",
            "Destination prefixes (/24, /48) each group remembers for EgressNewDestinationVolume "
            "(capped at new_destination_max_prefixes per group)",
            engine.new_destinations.prefixes(),
            "group",
        )
        yield _counter(
            "new_destination_prefixes_evicted",
            "Destination prefixes forgotten to stay within new_destination_max_prefixes",
            engine.new_destinations.evicted,
        )
        yield _gauge(
            "egress_destination_series",
            "(group x destination) egress totals with their own series (later ones fold into "
            "their country past the cap)",
            len(stats.egress_by_destination),
        )

    def _alerts(self, engine: Engine) -> Iterable[Metric]:
        firing = dict.fromkeys(ALERTNAMES, 0)
        pending = dict.fromkeys(ALERTNAMES, 0)
        for alert in engine.book.active.values():
            counts = firing if alert.state == FIRING else pending
            counts[alert.key[0]] = counts.get(alert.key[0], 0) + 1
        yield _gauge_labelled("alerts_firing", "Alerts firing now", firing, "alertname")
        yield _gauge_labelled("alerts_pending", "Alerts pending now", pending, "alertname")
        yield _counter(
            "alert_transitions",
            "Alert state transitions",
            [([state], n) for state, n in sorted(engine.book.transitions.items())],
            ["state"],
        )

    def _geo(self, engine: Engine) -> Iterable[Metric]:
        built = GaugeMetricFamily(
            PREFIX + "geo_database_build_timestamp_seconds",
            "When each configured geo database or region map was built (Unix time)",
            labels=["database"],
        )
        build_info: Callable[[], dict[str, float]] | None = getattr(
            engine.labeler, "build_info", None
        )
        if build_info is not None:
            for database, when in sorted(build_info().items()):
                built.add_metric([database], when)
        yield built
        d = self._daemon
        yield _counter("geo_reloads", "Geo data reloads that changed labels", d.geo_reloads)
        yield _counter(
            "geo_reload_errors",
            "Changed geo data files that could not be loaded (old data kept)",
            d.geo_reload_errors,
        )
        caches = (("source", engine.source_cache), ("destination", engine.destination_cache))
        yield _counter(
            "cache_lookups",
            "Per-address cache lookups (one per record each: the source's group, what the "
            "destination is; batches: one per distinct labelled address, none with the "
            "embedded country data alone), by whether the cache had the answer",
            [
                ([name, result], n)
                for name, cache in caches
                for result, n in (("hit", cache.hits), ("miss", cache.misses))
            ],
            ["cache", "result"],
        )
        yield _counter(
            "cache_evictions",
            "Entries evicted from a per-address cache to stay within geo.cache_size",
            [([name], cache.evictions) for name, cache in caches],
            ["cache"],
        )

    def _sources_metrics(self, sources: Sequence[Source]) -> Iterable[Metric]:
        units = CounterMetricFamily(
            PREFIX + "received", "Units received (datagrams, messages)", labels=["source"]
        )
        records = CounterMetricFamily(PREFIX + "records", "Flow records decoded", labels=["source"])
        errors = CounterMetricFamily(
            PREFIX + "decode_errors", "Units that could not be decoded", labels=["source", "reason"]
        )
        dropped = CounterMetricFamily(
            PREFIX + "dropped", "Units dropped before decoding", labels=["source", "reason"]
        )
        ready = GaugeMetricFamily(
            PREFIX + "source_ready", "1 when the source is consuming", labels=["source"]
        )
        extras: dict[str, list[tuple[dict[str, str], float]]] = {}
        for source in sources:
            name = source.name
            stats = source.stats
            units.add_metric([name], stats.units)
            records.add_metric([name], stats.records)
            for reason, n in sorted(stats.decode_errors.items()):
                errors.add_metric([name, reason], n)
            for reason, n in sorted(stats.dropped.items()):
                dropped.add_metric([name, reason], n)
            ready.add_metric([name], 1.0 if source.ready else 0.0)
            extra = getattr(source, "extra_metrics", None)
            if callable(extra):
                for metric, labels, value in extra():
                    extras.setdefault(metric, []).append((labels, value))
        yield from (units, records, errors, dropped, ready)
        yield from _extra_families(extras)

    def _daemon_metrics(self) -> Iterable[Metric]:
        d = self._daemon
        yield _gauge("start_time_seconds", "When the daemon started (Unix time)", d.started)
        yield _counter("config_reloads", "Configuration reloads applied", d.config_reloads)
        yield _counter(
            "config_reload_errors", "Configuration reloads rejected", d.config_reload_errors
        )
        yield _gauge(
            "config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully",
            d.config_last_reload_success,
        )
        yield _counter("state_saves", "State saves that succeeded", d.state_saves)
        yield _counter("state_save_errors", "State saves that failed", d.state_save_errors)
        yield _counter(
            "state_files_too_large",
            "State files not read because they are over state.max_size (moved aside)",
            d.state_too_large,
        )
        yield _counter(
            "state_saves_over_max_size",
            "State saves that wrote more than state.max_size, which the next start will not read",
            d.state_saved_too_large,
        )
        yield _counter(
            "state_files_corrupt",
            "State files moved aside as unusable (not JSON, nested too deep, not a state)",
            d.state_corrupt,
        )
        yield _counter(
            "state_values_clamped",
            "Integers beyond the 64-bit range saved at its limit",
            d.state_values_clamped,
        )
        yield _counter(
            "state_entries_dropped",
            "Entries of a restored state file left out: values learning never writes, times "
            "after its event time, or beyond the engine's bounds (detection.max_keys and the like)",
            [([part], float(n)) for part, n in sorted(d.state_entries_dropped.items())],
            ["part"],
        )
        yield _gauge(
            "state_last_save_timestamp_seconds", "When state was last saved", d.state_last_save
        )
        yield _gauge(
            "state_last_save_bytes", "Size of the last saved state", d.state_last_save_bytes
        )
        yield _gauge(
            "state_restored",
            "1 when learned state was restored at start",
            1.0 if d.state_restored else 0.0,
        )
        yield _counter(
            "state_time_clamped",
            "Restored states whose event time lay past wall time + detection.max_clock_ahead",
            d.state_time_clamped,
        )
        yield _counter(
            "records_held_before_state",
            "Flows received while the state file was restored, judged once it was in place",
            d.records_held_before_state,
        )
        yield _counter(
            "records_dropped_before_state",
            "Flows received while the state file was restored, dropped past the hold's bound",
            d.records_dropped_before_state,
        )
        yield _counter(
            "idle_advances",
            "Times wall time moved event time on (sources quiet, or exporter clocks behind)",
            d.idle_advances,
        )
        yield _counter("alert_log_errors", "Alert log writes that failed", d.alert_log_errors)
        conns = d.http_connections
        yield _gauge("http_connections", "Open HTTP connections", conns.open)
        yield _gauge(
            "http_connection_limit",
            "Open HTTP connections allowed (below the open-file limit)",
            conns.limit,
        )
        yield _counter(
            "http_malformed_requests",
            "HTTP requests answered 400 because they were not valid HTTP",
            conns.malformed,
        )
        yield _counter(
            "http_connections_closed",
            "HTTP connections closed by egressd: request head too slow, or evicted at the cap",
            [(["header_timeout"], conns.header_timeouts), (["evicted"], conns.evicted)],
            ["reason"],
        )
        if d.http_auth:
            yield _counter(
                "http_auth_attempts",
                "HTTP basic-auth attempts by outcome (busy: refused, checks queue full)",
                [([outcome], float(n)) for outcome, n in sorted(d.http_auth.items())],
                ["outcome"],
            )

    def _alertmanager_metrics(self) -> Iterable[Metric]:
        am = self._alertmanager or AlertmanagerStats()
        yield _counter("alertmanager_pushes", "Alert batches delivered to Alertmanager", am.pushes)
        yield _counter(
            "alertmanager_push_errors", "Failed pushes to Alertmanager (each retry)", am.push_errors
        )
        yield _counter(
            "alertmanager_alerts_sent", "Alerts delivered to Alertmanager", am.alerts_sent
        )
        yield _counter(
            "alertmanager_outbox_dropped",
            "Unsent alert transitions dropped because the outbox was full (a firing alert"
            " among them still goes out in the resend round)",
            am.outbox_dropped,
        )
        yield _gauge("alertmanager_outbox", "Alerts waiting to be delivered", am.outbox_size)
        yield _gauge(
            "alertmanager_resend_pending",
            "Firing alerts still to resend in the current round",
            am.resend_pending,
        )


def _counter(
    name: str,
    doc: str,
    value: float | list[tuple[list[str], float]],
    labels: list[str] | None = None,
) -> CounterMetricFamily:
    if labels is None:
        assert not isinstance(value, list)
        return CounterMetricFamily(PREFIX + name, doc, value=value)
    family = CounterMetricFamily(PREFIX + name, doc, labels=labels)
    assert isinstance(value, list)
    for values, n in value:
        family.add_metric(values, n)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, doc, value=value)


def _gauge_labelled(name: str, doc: str, values: dict[str, int], label: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, doc, labels=[label])
    for key, n in sorted(values.items()):
        family.add_metric([key], n)
    return family


def _extra_families(
    extras: dict[str, list[tuple[dict[str, str], float]]],
) -> Iterable[Metric]:
    """Families from sources' own ``extra_metrics()``: ``*_total`` are counters, others gauges."""
    for name, samples in sorted(extras.items()):
        if not name.startswith(PREFIX):
            continue
        names = sorted({key for labels, _ in samples for key in labels})
        family: CounterMetricFamily | GaugeMetricFamily
        if name.endswith("_total"):
            family = CounterMetricFamily(name[: -len("_total")], name, labels=names)
        else:
            family = GaugeMetricFamily(name, name, labels=names)
        for labels, value in samples:
            family.add_metric([labels.get(key, "") for key in names], value)
        yield family


def build_registry(collector: EgressdCollector) -> CollectorRegistry:
    """egressd's own registry; the process-global default registry is never used."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return registry
