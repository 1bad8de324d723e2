"""``egressd replay``: recorded telemetry through the engine as fast as it goes, in event time.

Alert events come out as JSON lines; a summary says what was read, skipped and why.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import operator
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TextIO

import numpy as np
import orjson

from egressd.baseline.statefile import (
    foreign_state,
    load_state,
    move_aside,
    save_state,
    saved_too_large,
)
from egressd.columns import FlowColumns
from egressd.config import Config
from egressd.detect.alerts import FIRING, Alert
from egressd.enrich import DestinationLabeler
from egressd.errors import EgressdError, StateError
from egressd.gctune import engine_gc
from egressd.model import FlowRecord
from egressd.pipeline import Engine
from egressd.sources.files import COLUMN_FORMATS, read_columns_file, read_file
from egressd.stats import SourceStats
from egressd.units import format_bytes, format_duration

if TYPE_CHECKING:
    from egressd.report.collect import ReportCollector

log = logging.getLogger(__name__)

_CHUNK = 8192
#: event time jumps ahead only where this many of the next _WINDOW records agree
_QUORUM = 16
_WINDOW = 64


_END_TIME = operator.attrgetter("time_end")


def _end_time(record: FlowRecord) -> float:
    return record.time_end


def stream_segments(
    chunk: list[FlowRecord], event_time: float, ahead: float
) -> list[tuple[int, float]]:
    """Where event time may jump in ``chunk``: (index, limit) pairs, the first at index 0.

    Within a segment the limit follows event time, ``ahead`` past it
    (:attr:`Engine.stream_ahead`). A record further ahead than that starts a new segment
    only if at least :data:`_QUORUM` of the :data:`_WINDOW` records from it also are (flows
    resuming after a quiet spell); the new limit is ``ahead`` past the :data:`_QUORUM`-th
    earliest of them. A lone record stamped far ahead (a broken clock, a forged year)
    counts at the limit instead: it would otherwise move the watermark so far that no
    interval closes until the input ends.
    """
    return segments_of_ends(list(map(_END_TIME, chunk)), event_time, ahead)


def segments_of_ends(ends: list[float], event_time: float, ahead: float) -> list[tuple[int, float]]:
    """:func:`stream_segments` of a chunk given by its flows' end times."""
    # The common case in C-level loops: no record lies ``ahead`` past the one before it,
    # so none can lie past the latest before it either.
    if ends[0] <= event_time + ahead and not any(
        map(operator.gt, ends[1:], [end + ahead for end in ends])
    ):
        return [(0, event_time + ahead)]
    # This mirrors what Engine.process does with the limit, to know where it must be raised.
    limit = event_time + ahead
    segments = [(0, limit)]
    top = event_time
    for index, end in enumerate(ends):
        if end > limit:
            window = ends[index : index + _WINDOW]
            beyond = [later for later in window if later > limit]
            # The stream's first records have nothing before them to agree with.
            quorum = _QUORUM if top > -math.inf else min(_QUORUM, len(window))
            if len(beyond) >= quorum:
                limit = heapq.nsmallest(quorum, beyond)[-1] + ahead
                if index:
                    segments.append((index, limit))
                else:
                    segments[0] = (0, limit)
            if end > limit:
                end = limit
        if end > top:
            top = end
            if end + ahead > limit:
                limit = end + ahead
    return segments


def column_segments(
    columns: FlowColumns, event_time: float, ahead: float
) -> list[tuple[int, float]]:
    """:func:`segments_of_ends` of a batch of columns; its common case (no flow ends
    ``ahead`` past the one before it) is checked on the column, without a Python loop."""
    ends = columns.time_end
    if ends[0] <= event_time + ahead and not (ends[1:] > ends[:-1] + ahead).any():
        return [(0, event_time + ahead)]
    return segments_of_ends(ends.tolist(), event_time, ahead)


def merge_columns(streams: list[Iterator[FlowColumns]]) -> Iterator[FlowColumns]:
    """The flows of ``streams`` as ``heapq.merge`` by end time orders them (ties: the
    earlier stream first; streams out of order interleave as heapq.merge interleaves
    them), in batches of up to :data:`_CHUNK` flows.

    Only end times go through the heap; each batch is gathered from the streams' columns.
    """
    pending: list[deque[FlowColumns]] = [deque() for _ in streams]

    def ends(index: int, stream: Iterator[FlowColumns]) -> Iterator[tuple[float, int]]:
        for batch in stream:
            pending[index].append(batch)
            yield from zip(batch.time_end.tolist(), itertools.repeat(index))

    order = map(operator.itemgetter(1), heapq.merge(*map(ends, itertools.count(), streams)))
    while taken := list(itertools.islice(order, _CHUNK)):
        sources = np.array(taken, dtype=np.intp)
        counts = np.bincount(sources, minlength=len(streams)).tolist()
        parts = []
        for queue, count in zip(pending, counts, strict=True):
            if not count:
                continue
            held = FlowColumns.concat(list(queue))
            parts.append(held.take(slice(0, count)))
            queue.clear()
            if count < len(held):
                queue.append(held.take(slice(count, None)))
        # Rows sit grouped by stream in ``parts``; put each where the merge placed it.
        grouped = np.argsort(sources, kind="stable")
        placed = np.empty_like(grouped)
        placed[grouped] = np.arange(len(grouped))
        yield FlowColumns.concat(parts).take(placed)


def _chunks(batches: Iterator[FlowColumns]) -> Iterator[FlowColumns]:
    """``batches`` cut into :data:`_CHUNK` flows each (the last may be shorter), as the
    record path cuts its input: stream segments depend on where chunks end."""
    carry: list[FlowColumns] = []
    held = 0
    for batch in batches:
        carry.append(batch)
        held += len(batch)
        if held < _CHUNK:
            continue
        joined = FlowColumns.concat(carry)
        cut = held - held % _CHUNK
        for start in range(0, cut, _CHUNK):
            yield joined.take(slice(start, start + _CHUNK))
        carry = [joined.take(slice(cut, held))] if cut < held else []
        held -= cut
    if held:
        yield FlowColumns.concat(carry)


@dataclass(slots=True)
class ReplaySummary:
    inputs: int = 0
    units: int = 0
    records: int = 0
    egress_records: int = 0
    egress_bytes: int = 0
    late_records: int = 0
    #: records stamped further ahead of the stream than max_clock_ahead (counted at that limit)
    future_records: int = 0
    #: records claiming more than detection.max_link_rate carries (skipped)
    invalid_records: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    firing: int = 0
    resolved: int = 0
    seconds: float = 0.0
    #: groups learning their countries that were still learning when the input ended (nothing
    #: was unexpected for them), and the history they need (detection.learning)
    learning: list[str] = field(default_factory=list)
    learning_seconds: float = 0.0

    def lines(self) -> list[str]:
        rate = self.records / self.seconds if self.seconds > 0 else 0.0
        skipped = ", ".join(f"{reason}={n}" for reason, n in sorted(self.skipped.items()))
        lines = [
            f"replay: {self.inputs} input(s), {self.records} records from {self.units} units "
            f"in {self.seconds:.2f}s ({rate:,.0f} records/s)",
            f"replay: egress {self.egress_records} records, {format_bytes(self.egress_bytes)}; "
            f"late records {self.late_records}, ahead of the stream {self.future_records}, "
            f"invalid {self.invalid_records}",
            f"replay: skipped {sum(self.skipped.values())}" + (f" ({skipped})" if skipped else ""),
            f"replay: alerts {self.firing} firing, {self.resolved} resolved",
        ]
        if self.learning:
            lines.append(
                f"replay: still learning when the input ended (detection.learning = "
                f"{format_duration(self.learning_seconds)} of a group's history): "
                f"{', '.join(self.learning)}; no destination was unexpected for them yet"
            )
        if self.skipped.get("multi_line_json"):
            lines.append(
                "replay: multi_line_json: the input holds pretty-printed (multi-line) JSON, and "
                "each record must be one JSON object on one line (JSON Lines); convert it with "
                "`jq -c . FILE` (`jq -c '.[]' FILE` for an array of records)"
            )
        return lines


def build_labeler(config: Config) -> DestinationLabeler:
    """The configured destination labeler (embedded country data when nothing is configured)."""
    geo = config.geo
    if geo.country_mmdb is None and geo.asn_mmdb is None and not geo.region_maps:
        from egressd.enrich.embedded import EmbeddedCountryLabeler

        return EmbeddedCountryLabeler()
    from egressd.enrich.labeler import build_labeler as build_composite

    return build_composite(geo)


class _Progress:
    """Records read so far and their rate on a terminal (``None``: say nothing).

    tqdm draws it when installed (the ``report`` extra brings it); otherwise one line is
    rewritten in place.
    """

    __slots__ = ("_bar", "_last", "_out", "_start")

    def __init__(self, out: TextIO | None) -> None:
        self._out = out
        self._start = time.monotonic()
        self._last = self._start
        self._bar: Any = None
        if out is not None:
            try:
                from tqdm import tqdm
            except ImportError:
                return
            self._bar = tqdm(
                file=out, desc="replay", unit=" records", unit_scale=True, mininterval=0.5
            )

    def update(self, path: str, records: int) -> None:
        if self._out is None:
            return
        if self._bar is not None:
            self._bar.set_description_str(f"replay {path}", refresh=False)
            self._bar.update(records - self._bar.n)
            return
        now = time.monotonic()
        if now - self._last < 0.5:
            return
        self._last = now
        rate = records / max(now - self._start, 1e-9)
        self._out.write(f"\rreplay: {path}: {records:,} records ({rate:,.0f}/s)   ")
        self._out.flush()

    def done(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._out is not None:
            self._out.write("\r" + " " * 78 + "\r")
            self._out.flush()


def refuse_foreign_state(path: Path) -> None:
    """Stop unless ``path`` is absent, empty or begins as a state file egressd writes
    (:func:`~egressd.baseline.statefile.foreign_state`): a damaged state file is moved
    aside and replaced by the replay's state, but a path that names something else is
    never renamed or overwritten."""
    problem = foreign_state(path)
    if problem is not None:
        raise EgressdError(f"--state {path}: {problem}")


def replay(
    config: Config,
    fmt: str,
    inputs: list[str],
    out: BinaryIO,
    *,
    progress: TextIO | None = None,
    state_path: Path | None = None,
    labeler: DestinationLabeler | None = None,
    report: ReportCollector | None = None,
) -> ReplaySummary:
    """Replay ``inputs`` in format ``fmt``; write alert events to ``out``; return a summary.

    ``report`` (when given) is shown every interval the engine closes and every alert event.
    """
    engine = Engine(config, labeler or build_labeler(config))
    if state_path is not None:
        refuse_foreign_state(state_path)
        try:
            data = load_state(state_path, config.state.max_size, decode_records=True)
            if data is not None:
                engine.restore(data)
        except (StateError, ValueError, KeyError, TypeError) as exc:
            move_aside(state_path, str(exc))
            engine = Engine(config, engine.labeler)
    if report is not None:
        engine.on_interval = report.observe_interval
    summary = ReplaySummary()
    meter = _Progress(progress)
    started = time.monotonic()

    def emit(alerts: list[Alert]) -> None:
        for alert in alerts:
            event = alert.event()
            out.write(orjson.dumps(event) + b"\n")
            if report is not None:
                report.alert(event)
            if alert.state == FIRING:
                summary.firing += 1
            else:
                summary.resolved += 1

    # The engine is built (and its state loaded): see egressd.gctune.
    with engine_gc():
        all_stats = [SourceStats(name=path) for path in inputs]
        readers = [
            read_file(fmt, path, stats) for path, stats in zip(inputs, all_stats, strict=True)
        ]
        # Several inputs are merged by flow end time: files from several collectors covering the
        # same hours interleave as they happened (consecutive files merge to their concatenation).
        records = readers[0] if len(readers) == 1 else heapq.merge(*readers, key=_end_time)
        label = inputs[0] if len(inputs) == 1 else f"{len(inputs)} inputs"
        ahead = config.detection.max_clock_ahead
        engine.stream_ahead = ahead
        if fmt in COLUMN_FORMATS:  # straight into columns
            records = iter(())
            streams = [
                read_columns_file(fmt, path, stats)
                for path, stats in zip(inputs, all_stats, strict=True)
            ]
            batches = streams[0] if len(streams) == 1 else merge_columns(streams)
            for columns in _chunks(batches):
                segments = column_segments(columns, engine.event_time(), ahead)
                ends = [index for index, _ in segments[1:]] + [len(columns)]
                for (first, limit), last in zip(segments, ends, strict=True):
                    engine.future_limit = limit
                    part = columns.take(slice(first, last)) if len(segments) > 1 else columns
                    emit(engine.process_columns(part))
                meter.update(label, engine.stats.records)
        while True:
            chunk = list(itertools.islice(records, _CHUNK))
            if not chunk:
                break
            segments = stream_segments(chunk, engine.event_time(), ahead)
            ends = [index for index, _ in segments[1:]] + [len(chunk)]
            for (first, limit), last in zip(segments, ends, strict=True):
                engine.future_limit = limit
                emit(engine.process(chunk[first:last] if len(segments) > 1 else chunk))
            meter.update(label, engine.stats.records)
        for stats in all_stats:
            summary.inputs += 1
            summary.units += stats.units
            summary.skipped.update(stats.decode_errors)
            summary.skipped.update(stats.dropped)
        emit(engine.flush())
    meter.done()
    out.flush()
    summary.records = engine.stats.records
    summary.egress_records = engine.stats.egress_records
    summary.egress_bytes = engine.stats.egress_bytes
    summary.late_records = engine.aggregator.late_records
    summary.future_records = engine.stats.future_records
    summary.invalid_records = engine.stats.invalid_records
    summary.seconds = time.monotonic() - started
    policy = engine.policy
    summary.learning = sorted(
        group for group in policy.learned if policy.is_learning(group, engine.event_time())
    )
    summary.learning_seconds = config.detection.learning
    if state_path is not None:
        size = save_state(state_path, engine.snapshot(records_text=False))
        if size > config.state.max_size:
            log.warning("%s", saved_too_large(state_path, size, config.state.max_size))
    return summary
