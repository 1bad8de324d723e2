"""Interval partials on the wire: what one producer counted per (group, destination, interval).

An interval partial is the seam between the per-record half of egressd (decode, classify,
label, sum) and the per-interval half (windows, baselines, detectors, alerts): partials of
the same flows counted by several producers merge by addition into exactly the sums one
process would have (see :meth:`egressd.pipeline.Engine.apply_partials`).

A batch is one orjson document::

    {"v": 1, "interval": 300.0, "rows": [[start, group, destination key, AS name, *sums]]}

where ``sums`` is :meth:`egressd.aggregate.Accum.to_row`, so fields added to the sums travel
without a change here. The interval is carried so that a detecting process configured with
another interval rejects the batch instead of mixing incompatible sums.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from egressd.aggregate import Accum, Bucket, IntervalAggregator, intern_labels
from egressd.columns import FlowColumns
from egressd.config import Config
from egressd.decode.common import check_depth
from egressd.enrich import DestinationLabeler, DestinationLabels
from egressd.errors import DecodeError
from egressd.model import FlowRecord
from egressd.pipeline import Engine, Partial

PARTIALS_VERSION = 1


def partials_of(buckets: Iterable[tuple[float, Bucket]]) -> list[Partial]:
    """Every (start, key, sums) of ``buckets``, in bucket order."""
    return [(start, key, accum) for start, bucket in buckets for key, accum in bucket.items()]


def _rows(partials: Iterable[Partial]) -> list[list[object]]:
    return [
        [start, group, dest.key, dest.as_org, *accum.to_row()]
        for start, (group, dest), accum in partials
    ]


def encode_partials(partials: Iterable[Partial], interval: float) -> bytes:
    """One batch of partials as bytes."""
    return orjson.dumps({"v": PARTIALS_VERSION, "interval": interval, "rows": _rows(partials)})


#: a batch whose partials are kept apart per source offset range: (first, last, partials)
Segment = tuple[int, int, list[Partial]]


def encode_segments(segments: Iterable[Segment], interval: float) -> bytes:
    """One batch whose partials stay apart per offset range, so a reader that applied a
    batch ending inside this one can skip exactly what it already has."""
    return orjson.dumps(
        {
            "v": PARTIALS_VERSION,
            "interval": interval,
            "segments": [[first, last, _rows(partials)] for first, last, partials in segments],
        }
    )


def decode_batch(
    blob: bytes,
    interval: float,
    sketch_capacity: int = 32,
    intern: dict[str, DestinationLabels] | None = None,
) -> list[tuple[int | None, int | None, list[Partial]]]:
    """The segments of a batch: (first, last, partials), offsets None for a batch of rows
    that covers its whole range. Raises DecodeError (reason ``bad_partials``, or ``too_deep``
    for arrays or objects nested past Python's recursion limit)."""
    check_depth(blob)  # before orjson, which crashes on it before 3.9.15
    try:
        data = orjson.loads(blob)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("bad_partials", f"partials are not JSON: {exc}") from exc
    if not isinstance(data, dict) or data.get("v") != PARTIALS_VERSION:
        raise DecodeError("bad_partials", "partials batch of an unknown version")
    if data.get("interval") != interval:
        raise DecodeError(
            "bad_partials",
            f"partials counted with interval {data.get('interval')!r}, not {interval}",
        )
    labels = {} if intern is None else intern
    rows = data.get("rows")
    if isinstance(rows, list):
        return [(None, None, _decode_rows(rows, interval, sketch_capacity, labels))]
    segments = data.get("segments")
    if not isinstance(segments, list):
        raise DecodeError("bad_partials", "partials batch without rows")
    out: list[tuple[int | None, int | None, list[Partial]]] = []
    try:
        for first, last, seg_rows in segments:
            if type(first) is not int or type(last) is not int or not 0 <= first <= last:
                raise ValueError(f"segment offsets {first!r}-{last!r}")
            if not isinstance(seg_rows, list):
                raise TypeError("segment rows must be a list")
            out.append((first, last, _decode_rows(seg_rows, interval, sketch_capacity, labels)))
    except (ValueError, TypeError, ArithmeticError, LookupError) as exc:
        raise DecodeError("bad_partials", f"malformed segment: {exc}") from exc
    return out


def decode_partials(
    blob: bytes,
    interval: float,
    sketch_capacity: int = 32,
    intern: dict[str, DestinationLabels] | None = None,
) -> list[Partial]:
    """Every partial of a batch; raises DecodeError (reason ``bad_partials``) when unusable."""
    return [
        partial
        for _first, _last, partials in decode_batch(blob, interval, sketch_capacity, intern)
        for partial in partials
    ]


def _decode_rows(
    rows: list[Any],
    interval: float,
    sketch_capacity: int,
    labels: dict[str, DestinationLabels],
) -> list[Partial]:
    out: list[Partial] = []
    try:
        for start, group, key, as_org, *row in rows:
            if not isinstance(start, int | float) or start % interval:
                raise ValueError(f"interval start {start!r} is not on an interval boundary")
            dest = intern_labels(labels, str(key), str(as_org))
            out.append((float(start), (str(group), dest), Accum.from_row(row, sketch_capacity)))
    except (ValueError, TypeError, ArithmeticError, LookupError) as exc:
        raise DecodeError("bad_partials", f"malformed partial row: {exc}") from exc
    return out


def stable_hash(text: str) -> int:
    """A hash of ``text`` every process agrees on (unlike :func:`hash`, salted per process)."""
    return zlib.crc32(text.encode("utf-8"))


def partition_of(group: str, partitions: int) -> int:
    """The partials partition of ``group``: everything of one group meets in one engine."""
    return stable_hash(group) % partitions


class PartialCounter:
    """The per-record half alone: classifies, labels and sums records into partials.

    It never closes an interval nor judges lateness (that is the detecting engine's job,
    which sees every producer's partials); what it counted leaves through :meth:`take`.
    Counting happens per *lane* (a Kafka partition, say), each with its own sums and event
    time, so what one lane counted can be taken without the others'.
    """

    __slots__ = ("_lanes", "engine")

    def __init__(self, config: Config, labeler: DestinationLabeler) -> None:
        self.engine = Engine(config, labeler)
        self._lanes: dict[str, IntervalAggregator] = {}

    def _lane(self, lane: str) -> IntervalAggregator:
        aggregator = self._lanes.get(lane)
        if aggregator is None:
            detection = self.engine.config.detection
            # Infinite lateness: no bucket is ever due, no record ever late.
            aggregator = self._lanes[lane] = IntervalAggregator(
                detection.interval, math.inf, max_keys=detection.max_keys
            )
        return aggregator

    def count(self, lane: str, records: Sequence[FlowRecord], future_limit: float) -> None:
        """Sum ``records`` into ``lane``; stamps later than ``future_limit`` count at it."""
        engine = self.engine
        engine.aggregator = self._lane(lane)
        engine.future_limit = future_limit
        engine.process(records)

    def count_columns(self, lane: str, columns: FlowColumns, future_limit: float) -> None:
        """:meth:`count` of flows given as columns."""
        engine = self.engine
        engine.aggregator = self._lane(lane)
        engine.future_limit = future_limit
        engine.process_columns(columns)

    def event_time(self, lane: str) -> float:
        """The latest flow end time counted in ``lane`` (-inf before any)."""
        aggregator = self._lanes.get(lane)
        return aggregator.max_time if aggregator is not None else -math.inf

    def take(self, lane: str) -> list[Partial]:
        """What ``lane`` counted since the last take, oldest interval first."""
        aggregator = self._lanes.get(lane)
        if aggregator is None:
            return []
        partials = partials_of(aggregator.pop_all())
        # pop_all marks the intervals closed; here nothing is ever late, so forget that.
        aggregator.closed_upto = -math.inf
        return partials

    def drop(self, lane: str) -> None:
        """Forget ``lane`` (its partition went to another process)."""
        self._lanes.pop(lane, None)
