"""The detect role: one engine per partials partition, with state that moves with it.

Every group's partials land in one partition of the partials topic, so the engine of that
partition sees all of the group's traffic: windows, baselines and learned countries are
those of one process that saw every flow. Batches are applied in log order; a batch whose
last offset is at or below the last one applied from its source partition is a replay (an
ingest member died between producing and committing) and is dropped. Event time moves only
through the partials' headers and heartbeats: to the slowest source partition's, so no
partial arrives after the interval it belongs to was closed.

Each partition's state (the state file format, plus the offsets it covers) is saved every
``state.save_interval`` in ``cluster.state_directory``, and on revoke; only then are the
partials offsets committed. On assignment the snapshot is loaded and the consumer seeks to
the offset it covers, so the partials since are replayed into it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

from egressd.aggregate import Bucket
from egressd.clock import SteadyWall
from egressd.cluster.role import KafkaRole
from egressd.cluster.snapshots import (
    CorruptSnapshot,
    DirectoryStore,
    S3Store,
    SnapshotStore,
    SnapshotTooLarge,
)
from egressd.cluster.wire import (
    HEARTBEAT,
    KIND,
    PARTIALS,
    Heartbeat,
    batch_info,
    read_headers,
    watermark,
)
from egressd.config import Config
from egressd.detect.alerts import Alert
from egressd.enrich import DestinationLabeler, DestinationLabels
from egressd.errors import DecodeError, SourceError, StateError
from egressd.partials import decode_batch
from egressd.pipeline import IDLE_AFTER, Engine, Partial
from egressd.sinks.metrics import PREFIX, EgressdCollector
from egressd.sources.kafka import (
    DECODE_BYTES,
    KafkaSource,
    RebalanceListener,
    fetch_pieces,
    start_clients,
    stop_clients,
)
from egressd.units import format_utc

log = logging.getLogger("egressd.cluster.detect")

_POLL_MS: Final = 200
_COMMIT_TIMEOUT: Final = 10.0
#: why a partials-topic message is skipped (each counted from 0 on)
BAD_MESSAGE_REASONS: Final = ("bad_headers", "bad_heartbeat", "bad_partials", "too_deep")


@dataclass(slots=True)
class DetectStats:
    batches_applied: int = 0
    partial_rows: int = 0
    #: batches dropped because a batch up to the same offsets was applied already
    replays_dropped: int = 0
    #: batches that overlap an applied one only in part (applied; see docs/scaling.md)
    partial_overlaps: int = 0
    #: batches (and heartbeat times) of a source partition from an ingest member of an
    #: older group generation than one already heard from: a member that lost the partition
    #: while stalled; its new owner produces the same offsets
    fenced: int = 0
    heartbeats: int = 0
    bad_messages: int = 0
    #: bad_messages by the reason named (a DecodeError reason: a fixed set of names)
    bad_reasons: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(BAD_MESSAGE_REASONS, 0)
    )
    snapshots: int = 0
    snapshot_errors: int = 0
    snapshots_loaded: int = 0
    #: snapshots not read because they are over state.max_size (the partition starts afresh)
    snapshots_too_large: int = 0
    #: snapshots saved over state.max_size (a restart or rebalance would not read them)
    snapshots_saved_too_large: int = 0
    #: source partition times a message put past wall time + detection.max_clock_ahead
    future_times_clamped: int = 0
    #: partials naming an interval past wall time + detection.max_clock_ahead (counted there)
    future_partials_clamped: int = 0
    #: loaded snapshots whose event time lay past wall time + detection.max_clock_ahead
    snapshots_clamped: int = 0
    #: entries of loaded snapshots left out by the engine's bounds on load, by part (as the
    #: all-in-one daemon counts its state file's: ``state_entries_dropped_total{part}``)
    entries_dropped: dict[str, int] = field(default_factory=dict)
    #: partitions given back by a rebalance and kept in memory instead of loaded again
    partitions_kept: int = 0
    #: fetches dropped because they did not start where the consumer was told to seek
    reseeks: int = 0
    commits: int = 0
    commit_failures: int = 0
    resets: int = 0


@dataclass(slots=True)
class _Partition:
    """One assigned partials partition: its engine and how far it has read."""

    tp: TopicPartition
    engine: Engine
    #: last offset applied, per source partition
    applied: dict[str, int] = field(default_factory=dict)
    #: event time reached, per source partition
    times: dict[str, float] = field(default_factory=dict)
    #: partitions of each source topic
    sources: dict[str, int] = field(default_factory=dict)
    #: the newest ingest group generation heard from, per source partition
    generations: dict[str, int] = field(default_factory=dict)
    #: next partials offset to read (what the engine holds ends before it)
    position: int = 0
    intern: dict[str, DestinationLabels] = field(default_factory=dict)
    #: whether a snapshot was loaded (the consumer then seeks to ``position``)
    loaded: bool = False
    #: the group's committed offset of this partition as this process last knew it (read
    #: on assignment, then what it committed)
    committed: int | None = None
    #: the offset the consumer was told to read from next, until a fetch shows it did
    expect: int | None = None
    reseeks: int = 0
    #: per source partition reported quiet (Heartbeat.quiet): the event time it stood at
    #: and the quiet reported when it was first so reported, and the quiet last reported
    quiet_from: dict[str, tuple[float, float, float]] = field(default_factory=dict)


class Detect(KafkaRole):
    """Consumes the partials topic in ``cluster.detect_group_id``; publishes alerts."""

    log = log
    stats: DetectStats

    def __init__(
        self,
        config: Config,
        labeler: DestinationLabeler,
        publish: Callable[[list[Alert]], None],
        *,
        consumer_factory: Callable[..., Any] = AIOKafkaConsumer,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        (kafka,) = config.sources.kafka
        self.config = config
        self.cluster = config.cluster
        self.labeler = labeler
        self.publish = publish
        self.name = f"detect:{config.cluster.partials_topic}"
        # The source gives the connection, security and group timeout settings.
        self._source = KafkaSource(kafka, self.name)
        self.store: SnapshotStore = (
            DirectoryStore(Path(config.cluster.state_directory), config.state.max_size)
            if config.cluster.state_directory is not None
            else S3Store(
                config.cluster.state_url,
                config.cluster.s3_endpoint
                or f"https://s3.{config.cluster.s3_region}.amazonaws.com",
                config.cluster.s3_region,
                os.environ if environ is None else environ,
                config.state.max_size,
            )
        )
        self.stats = DetectStats()
        self._consumer_factory = consumer_factory
        self._consumer: Any = None
        #: never stepping back (see :class:`SteadyWall`)
        self.wall: Callable[[], float] = SteadyWall()
        self.partitions: dict[TopicPartition, _Partition] = {}
        #: called with every partition's alerts whenever the set of owned partitions changes
        self.on_ownership: Callable[[list[Alert]], None] | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._saver: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready = False
        self._interval_log: Any = None
        #: why the group must be left and joined again (a snapshot could not be read)
        self._rejoin = ""
        #: partitions revoked by the last rebalance, saved, in case they come back
        self._parked: dict[TopicPartition, _Partition] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self.cluster.interval_log is not None:
            self._interval_log = open(self.cluster.interval_log, "ab")  # noqa: SIM115
        self._stopping = False
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="egressd-detect")
        self._saver = loop.create_task(self._save_periodically(), name="egressd-detect-saver")

    async def wait(self) -> None:
        assert self._task is not None and self._saver is not None
        await asyncio.wait([self._task, self._saver], return_when=asyncio.FIRST_COMPLETED)
        raise RuntimeError("detect stopped")

    async def stop(self) -> None:
        """Stop reading, save every partition and commit, then leave the group."""
        self._stopping = True
        for task in (self._task, self._saver):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._saver = None
        async with self._lock:
            await self._save(list(self.partitions.values()))
        await self._close()
        await self.store.close()
        if self._interval_log is not None:
            self._interval_log.close()
            self._interval_log = None

    async def _connect(self) -> None:
        options = self._source.consumer_options()
        options.update(
            group_id=self.cluster.detect_group_id,
            max_poll_records=10_000,
            # Sticky: a rebalance moves only the partitions it must (each move costs loading
            # a snapshot and replaying the partials since).
            partition_assignment_strategy=(StickyPartitionAssignor,),
        )
        if self.cluster.transactions:
            # Batches of a transaction the ingest side aborted are never applied.
            options["isolation_level"] = "read_committed"
        consumer = self._consumer_factory(**options)
        await start_clients(f"{self.name}: connecting", consumer)
        self._consumer = consumer
        consumer.subscribe(
            [self.cluster.partials_topic],
            listener=RebalanceListener(self._on_revoked, self._on_assigned),
        )

    def _connected(self) -> str:
        return f"detecting on {self.cluster.partials_topic} as group {self.cluster.detect_group_id}"

    async def _close(self) -> None:
        """Drop the consumer, and the engines unsaved: after an error, their last snapshots
        and the partials since rebuild them on the next assignment."""
        self._ready = False
        consumer, self._consumer = self._consumer, None
        self.partitions.clear()
        self._parked.clear()
        await stop_clients(self.name, consumer)

    # -- the loop ----------------------------------------------------------------------------

    async def _consume(self) -> None:
        consumer = self._consumer
        while not self._stopping:
            if self._rejoin:
                reason, self._rejoin = self._rejoin, ""
                raise SourceError(f"{self.name}: {reason}")
            fetched = await consumer.getmany(timeout_ms=_POLL_MS)
            await self._take(consumer, fetched)

    async def _take(self, consumer: Any, fetched: dict[TopicPartition, list[Any]]) -> None:
        """Apply one fetch as if it had come a megabyte of messages at a time, with a turn
        of the event loop between: in one go, a fetch of large partials messages (up to the
        consumer's 50 MB limit) held HTTP, snapshot saves and pushes for as long as it took.
        Partitions are looked up again for each piece (one may be revoked meanwhile)."""
        for piece in fetch_pieces(fetched, DECODE_BYTES):
            async with self._lock:
                for tp, messages in piece.items():
                    part = self.partitions.get(tp)
                    if part is None or not self._read_from_position(consumer, part, messages):
                        continue
                    for message in messages:
                        if message.offset < part.position:
                            continue  # before what the snapshot covers
                        alerts = self._apply(part, message)
                        part.position = message.offset + 1
                        if alerts:
                            self.publish(alerts)
            await asyncio.sleep(0)

    def _read_from_position(self, consumer: Any, part: _Partition, messages: list[Any]) -> bool:
        """Whether ``messages`` may be applied: the first fetch after a seek must start at
        the sought offset. The consumer starts fetching from the committed offset while the
        snapshot is being loaded, and a seek to an older snapshot's position (one saved by a
        member that froze, after the group had moved on) can come after records from the
        committed offset were fetched: applying those would skip the ones between. Such a
        fetch is dropped and the seek made again (three times at most: a position the log no
        longer holds, after retention, is then given up, with a warning)."""
        if part.expect is None or not messages:
            return True
        first = messages[0].offset
        if first > part.expect and part.reseeks < 3:
            part.reseeks += 1
            self.stats.reseeks += 1
            log.info(
                "%s: %s:%d fetched from offset %d, not %d: seeking again",
                self.name,
                part.tp.topic,
                part.tp.partition,
                first,
                part.expect,
            )
            consumer.seek(part.tp, part.expect)
            return False
        if first > part.expect:
            log.warning(
                "%s: %s:%d offsets %d-%d are gone from the log (retention?): not replayed",
                self.name,
                part.tp.topic,
                part.tp.partition,
                part.expect,
                first - 1,
            )
        part.expect = None
        return True

    @staticmethod
    def _move_quiet(part: _Partition, key: str, quiet: float, wall: float) -> None:
        """A source partition quiet for ``quiet`` seconds on a member that took it over and
        does not know its event time: move the time known here on at wall-clock pace from
        the first such report (as the member before would have; never ahead of it). Known
        here, none: at the sender's wall time, as for a partition without records.

        A member's quiet counts from when it took the partition, after the first report's
        sender took it: so ``quiet - first quiet`` never exceeds the wall time since the first
        report, whichever member sends it."""
        known = part.times.get(key)
        if known is None:
            if wall - IDLE_AFTER > -math.inf:
                part.times[key] = wall - IDLE_AFTER
            return
        start = part.quiet_from.get(key)
        if start is None or quiet < start[2]:  # first report, or a member's taking over
            start = (known, quiet, quiet)
        part.quiet_from[key] = (start[0], start[1], quiet)
        t = start[0] + (quiet - start[1])
        if t > known:
            part.times[key] = t

    def _apply(self, part: _Partition, message: Any) -> list[Alert]:
        headers = read_headers(message.headers)
        kind = headers.get(KIND)
        stats = self.stats
        try:
            if kind == HEARTBEAT:
                beat = Heartbeat.decode(message.value or b"")
                stats.heartbeats += 1
                for key, t in beat.times.items():
                    part.quiet_from.pop(key, None)
                    if t > part.times.get(key, -math.inf):
                        part.times[key] = t
                for key, quiet in beat.quiet.items():
                    self._move_quiet(part, key, quiet, beat.wall)
                # A member names the generation it owns each partition in before it
                # produces anything there (see _stale).
                for key, generation in beat.generations.items():
                    if generation > part.generations.get(key, -1):
                        part.generations[key] = generation
                part.sources.update(beat.partitions)
            elif kind == PARTIALS:
                info = batch_info(headers)
                applied = part.applied.get(info.source, -1)
                if info.last <= applied:
                    stats.replays_dropped += 1
                    log.info(
                        "%s: dropped a replayed batch %s %d-%d (applied up to %d)",
                        self.name,
                        info.source,
                        info.first,
                        info.last,
                        applied,
                    )
                else:
                    segments = decode_batch(
                        message.value or b"", self.config.detection.interval, intern=part.intern
                    )
                    summed = bool(segments) and segments[0][0] is None
                    if (
                        summed
                        and info.first <= applied
                        and self._stale(part, info.source, info.generation)
                    ):
                        stats.fenced += 1
                        log.info(
                            "%s: dropped a batch %s %d-%d of generation %d (generation %d "
                            "owns it; applied up to %d)",
                            self.name,
                            info.source,
                            info.first,
                            info.last,
                            info.generation,
                            part.generations[info.source],
                            applied,
                        )
                        return []
                    if info.generation is not None:
                        part.generations[info.source] = info.generation
                    if summed and info.first <= applied:
                        stats.partial_overlaps += 1
                        log.warning(
                            "%s: batch %s %d-%d overlaps one applied up to %d",
                            self.name,
                            info.source,
                            info.first,
                            info.last,
                            applied,
                        )
                    dropped = 0
                    latest = self._latest_start()
                    for _first, last, partials in segments:
                        if last is not None and last <= applied:
                            dropped += 1  # a part of the batch applied before
                            continue
                        if any(start > latest for start, _key, _accum in partials):
                            partials = self._set_back(partials, latest, message.offset)
                        part.engine.apply_partials(partials)
                        stats.partial_rows += len(partials)
                    if dropped:
                        stats.replays_dropped += dropped
                        log.info(
                            "%s: dropped a replayed part of batch %s %d-%d (%d offsets up "
                            "to %d applied before)",
                            self.name,
                            info.source,
                            info.first,
                            info.last,
                            dropped,
                            applied,
                        )
                    part.applied[info.source] = info.last
                    stats.batches_applied += 1
                part.quiet_from.pop(info.source, None)
                if info.event_time > part.times.get(info.source, -math.inf):
                    part.times[info.source] = info.event_time
            else:
                raise DecodeError("bad_headers", "message of an unknown kind")
        except DecodeError as exc:
            stats.bad_messages += 1
            stats.bad_reasons[exc.reason] = stats.bad_reasons.get(exc.reason, 0) + 1
            log.warning("%s: skipped message %s: %s", self.name, message.offset, exc)
            return []
        self._clamp_times(part, message.offset)
        mark = watermark(part.times, part.sources)
        if mark > part.engine.event_time():
            return part.engine.advance(mark)
        return []

    def _latest_start(self) -> float:
        """The latest interval a partial may name: the one holding wall time +
        max_clock_ahead (the bound ingest counts flows' stamps at)."""
        limit = self.wall() + self.config.detection.max_clock_ahead
        return limit - limit % self.config.detection.interval

    def _set_back(self, partials: list[Partial], latest: float, offset: int) -> list[Partial]:
        """Partials of intervals after ``latest`` count in it, counted and logged: before,
        one forged a year ahead opened an interval that stayed open (and in every snapshot)
        until wall time reached it, its bytes never judged, and a message of many such
        intervals opened as many, without bound."""
        out: list[Partial] = []
        furthest = latest
        for start, key, accum in partials:
            if start > latest:
                furthest = max(furthest, start)
                self.stats.future_partials_clamped += 1
                start = latest
            out.append((start, key, accum))
        log.warning(
            "%s: message %s holds partials of intervals up to %s, more than "
            "detection.max_clock_ahead past wall time: counted at %s",
            self.name,
            offset,
            format_utc(furthest),
            format_utc(latest),
        )
        return out

    def _clamp_times(self, part: _Partition, offset: int) -> None:
        """No message moves a source partition's time past wall time + max_clock_ahead
        (the bound ingest counts flows' stamps at): one forged far in the future would
        close every interval of the partition and hold its event time there, blind until
        wall time caught up. Such a time is set back to the bound, counted and logged."""
        limit = self.wall() + self.config.detection.max_clock_ahead
        for key, t in part.times.items():
            if t > limit:
                part.times[key] = limit
                self.stats.future_times_clamped += 1
                log.warning(
                    "%s: message %s moves %s to event time %s, more than "
                    "detection.max_clock_ahead past wall time: set back to %s",
                    self.name,
                    offset,
                    key,
                    format_utc(t),
                    format_utc(limit),
                )

    @staticmethod
    def _stale(part: _Partition, source: str, generation: int | None) -> bool:
        """Whether a batch of summed partials that overlaps applied offsets of ``source``
        comes from a member that lost the partition: one of an older ingest group generation
        than the newest heard from there.

        The generation grows with every rebalance. A member acknowledges what it produced
        before committing it, so all it produced in order reaches this partition before
        anything of the member the partition goes to next (which starts from that commit).
        A batch of an older generation after a newer one was produced after the group moved
        on, by a member that stalled past its session timeout between its last check and
        its send; its offsets are the new owner's to produce, from the last commit, and it
        may reach past what the new owner produced so far, so it cannot be trimmed: it is
        dropped whole. Batches kept apart per offset need no fence (what was applied is
        skipped offset by offset), nor do batches past everything applied: so a group whose
        generations started again (its metadata deleted) loses nothing."""
        newest = part.generations.get(source)
        return generation is not None and newest is not None and generation < newest

    # -- state ---------------------------------------------------------------------------------

    @staticmethod
    def _name(tp: TopicPartition) -> str:
        return f"{tp.topic}-{tp.partition}"

    def _new_engine(self) -> Engine:
        engine = Engine(self.config, self.labeler)
        if self._interval_log is not None:
            engine.on_interval = self._log_interval
        return engine

    def _log_interval(self, start: float, bucket: Bucket) -> None:
        out = self._interval_log
        for (group, dest), accum in bucket.items():
            out.write(orjson.dumps([start, group, dest.key, *accum.to_row()]) + b"\n")
        out.flush()

    async def _load(self, tp: TopicPartition) -> _Partition:
        part = _Partition(tp, self._new_engine())
        name = self._name(tp)
        try:
            data = await self.store.load(name)
        except CorruptSnapshot as exc:
            if isinstance(exc, SnapshotTooLarge):
                self.stats.snapshots_too_large += 1
            await self.store.discard(name, str(exc))
            data = None
        if data is None:
            return part
        try:
            cluster = data.pop("cluster")
            # (a fresh engine, nothing else holds it yet: restored beside the event loop)
            # (its intervals close at the slowest source partition's watermark, not by
            # lateness: every open one is restored)
            await asyncio.to_thread(
                functools.partial(part.engine.restore, data, open_by_lateness=False)
            )
            part.applied = {str(k): int(v) for k, v in dict(cluster["applied"]).items()}
            part.times = {str(k): float(v) for k, v in dict(cluster["times"]).items()}
            part.sources = {str(k): int(v) for k, v in dict(cluster["sources"]).items()}
            part.generations = {
                str(k): int(v) for k, v in dict(cluster.get("generations", {})).items()
            }
            part.position = int(cluster["position"])
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            await self.store.discard(name, f"{type(exc).__name__}: {exc}")
            return _Partition(tp, self._new_engine())
        self.stats.snapshots_loaded += 1
        part.loaded = True
        dropped = {key: n for key, n in part.engine.dropped_on_load.items() if n}
        counted = self.stats.entries_dropped
        for key, n in dropped.items():
            counted[key] = counted.get(key, 0) + n
        if dropped:
            log.warning(
                "%s: the snapshot %s held entries beyond what the engine keeps, left out: %s",
                self.name,
                self.store.where(name),
                ", ".join(f"{key} {n}" for key, n in dropped.items()),
            )
        self._clamp(part, name)
        log.info(
            "%s: loaded the snapshot of %s:%d from %s, replaying from offset %d",
            self.name,
            tp.topic,
            tp.partition,
            self.store.where(name),
            part.position,
        )
        return part

    def _clamp(self, part: _Partition, name: str) -> None:
        """A snapshot saved by a clock far ahead (or edited) must not freeze detection until
        time catches up: its event time, and the source partitions' times that would carry
        it there again at the next watermark, go back to wall time + max_clock_ahead."""
        limit = self.wall() + self.config.detection.max_clock_ahead
        ahead = part.engine.clamp_event_time(limit)
        later = {key: t for key, t in part.times.items() if t > limit}
        if ahead is None and not later:
            return
        part.times.update(dict.fromkeys(later, limit))
        self.stats.snapshots_clamped += 1
        log.warning(
            "%s: the snapshot %s reaches event time %s, more than detection.max_clock_ahead "
            "past wall time: event time set back to %s",
            self.name,
            self.store.where(name),
            format_utc(max([-math.inf if ahead is None else ahead, *later.values()])),
            format_utc(limit),
        )

    async def _save(self, parts: list[_Partition]) -> None:
        """Snapshot ``parts``, then commit the offsets the snapshots cover."""
        offsets: dict[TopicPartition, int] = {}
        for part in parts:
            extra = {
                "cluster": {
                    "applied": part.applied,
                    "times": part.times,
                    "sources": part.sources,
                    "generations": part.generations,
                    "position": part.position,
                }
            }
            data = part.engine.snapshot(records_text=False)  # (the records' text: the store's)
            data.update(extra)
            data["saved_at"] = time.time()
            try:
                size = await self.store.save(self._name(part.tp), data)
            except StateError as exc:
                self.stats.snapshot_errors += 1
                log.error("%s", exc)
                continue
            self.stats.snapshots += 1
            if size > self.config.state.max_size:  # saved, but a restart would not read it
                self.stats.snapshots_saved_too_large += 1
                log.error(
                    "%s: snapshot %s holds %s bytes, over state.max_size (%s): the partition "
                    "would start afresh when loaded; raise state.max_size",
                    self.name,
                    self.store.where(self._name(part.tp)),
                    f"{size:,}",
                    f"{self.config.state.max_size:,}",
                )
            offsets[part.tp] = part.position
        consumer = self._consumer
        if consumer is None or not offsets:
            return
        try:
            await asyncio.wait_for(consumer.commit(offsets), _COMMIT_TIMEOUT)
        except Exception as exc:  # the snapshot holds the position; the next commit retries
            self.stats.commit_failures += 1
            log.warning("%s: committing partials offsets failed: %r", self.name, exc)
        else:
            self.stats.commits += 1
            for part in parts:
                if part.tp in offsets:
                    part.committed = offsets[part.tp]

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.config.state.save_interval)
            async with self._lock:
                await self._save(list(self.partitions.values()))

    # -- rebalancing -----------------------------------------------------------------------------

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        """Set the partitions aside, unsaved: aiokafka revokes every partition before each
        assignment, and the sticky assignor gives most of them back, so saving them all at
        every rebalance would be wasted (and could outlast the rebalance timeout). One that
        goes to another process is loaded there from its last periodic snapshot, with the
        partials since replayed: the same engine, a little later. A process that leaves the
        group saves first (``stop``)."""
        async with self._lock:
            parts = [self.partitions[tp] for tp in revoked if tp in self.partitions]
            for part in parts:
                del self.partitions[part.tp]
            # Kept in case the next assignment gives them back.
            self._parked = {part.tp: part for part in parts}
        if revoked:
            log.info("%s: partitions revoked: %s", self.name, _describe(revoked))
            self._ownership_changed()

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self._consumer
        if consumer is None or self._stopping:
            return  # leaving the group: the next owner loads these partitions
        async with self._lock:
            parked, self._parked = self._parked, {}
            for tp in assigned:
                if tp in self.partitions:
                    continue
                try:
                    committed = await consumer.committed(tp)
                except Exception as exc:
                    log.warning("%s: committed offset of %s unknown: %r", self.name, tp, exc)
                    self._rejoin = f"committed offset of {tp.topic}:{tp.partition} unknown"
                    continue
                if tp in parked and committed == parked[tp].committed:
                    # Nobody committed it since this process did: whoever may have had it
                    # meanwhile saved nothing the group took, and the engine in memory is
                    # one the partials log gives at its position (as loading the snapshot
                    # and replaying would, later).
                    self.partitions[tp] = parked[tp]
                    consumer.seek(tp, parked[tp].position)
                    parked[tp].expect, parked[tp].reseeks = parked[tp].position, 0
                    self.stats.partitions_kept += 1
                    continue
                try:
                    part = await self._load(tp)
                except StateError as exc:
                    # Unreadable now (storage down) is not corrupt: starting the partition
                    # afresh would forget what it learned. Leave the group and join again.
                    log.error("%s: %s", self.name, exc)
                    self._rejoin = f"snapshot of {tp.topic}:{tp.partition} unreadable"
                    continue
                self.partitions[tp] = part
                part.committed = committed
                if part.loaded:
                    # The snapshot holds everything before its position: replay from there.
                    consumer.seek(tp, part.position)
                    part.expect = part.position
                else:
                    part.position = committed or 0
                    if committed is None:
                        await consumer.seek_to_beginning(tp)
        log.info("%s: partitions assigned: %s", self.name, _describe(assigned) or "none")
        self._ownership_changed()

    def _ownership_changed(self) -> None:
        if self.on_ownership is not None:
            self.on_ownership(self.firing())

    # -- views ------------------------------------------------------------------------------------

    def firing(self) -> list[Alert]:
        return [a for part in self.partitions.values() for a in part.engine.active_alerts()]

    def engines(self) -> list[Engine]:
        return [part.engine for part in self.partitions.values()]

    def engine_metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """What the engines of the owned partitions counted (as the all-in-one daemon shows
        for its one engine): egress per (group, destination), alerts, intervals, event time.
        A partition's counters move with it: they restart on its new owner."""
        regions, asn = self.labeler.has_regions, self.labeler.has_asn
        egress: dict[tuple[str, ...], int] = {}
        firing: dict[str, int] = {}
        samples: list[tuple[str, dict[str, str], float]] = []
        late = closed = keys = 0
        for part in self.partitions.values():
            engine = part.engine
            for table in (engine.stats.egress_by_destination, engine.aggregator.open_totals()):
                for (group, dest), size in table.items():
                    values = EgressdCollector.label_values(group, dest, regions, asn)
                    egress[values] = egress.get(values, 0) + size
            for alert in engine.active_alerts():
                name = alert.labels.get("alertname", "")
                firing[name] = firing.get(name, 0) + 1
            late += engine.aggregator.late_records
            closed += engine.stats.intervals_closed
            keys += len(engine.baselines)
            now = engine.event_time()
            samples.append(
                (
                    PREFIX + "event_time_seconds",
                    {"partition": str(part.tp.partition)},
                    now if now > -math.inf else 0.0,
                )
            )
        names = ["group", "dst_country"] + (["dst_region"] if regions else [])
        names += ["dst_asn"] if asn else []
        for values, size in sorted(egress.items()):
            samples.append(
                (PREFIX + "egress_bytes_total", dict(zip(names, values, strict=True)), float(size))
            )
        for name, count in sorted(firing.items()):
            samples.append((PREFIX + "alerts_firing", {"alertname": name}, float(count)))
        samples += [
            (PREFIX + "late_records_total", {}, float(late)),
            (PREFIX + "intervals_closed_total", {}, float(closed)),
            (PREFIX + "baseline_keys", {}, float(keys)),
            (PREFIX + "state_time_clamped_total", {}, float(self.stats.snapshots_clamped)),
        ]
        samples += [
            (PREFIX + "state_entries_dropped_total", {"part": key}, float(n))
            for key, n in sorted(self.stats.entries_dropped.items())
        ]
        return samples

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        labels = {"role": "detect"}
        stats = self.stats
        return [
            *self.engine_metrics(),
            ("egressd_cluster_batches_applied_total", labels, float(stats.batches_applied)),
            ("egressd_cluster_partial_rows_applied_total", labels, float(stats.partial_rows)),
            ("egressd_cluster_replays_dropped_total", labels, float(stats.replays_dropped)),
            ("egressd_cluster_partial_overlaps_total", labels, float(stats.partial_overlaps)),
            ("egressd_cluster_fenced_total", labels, float(stats.fenced)),
            ("egressd_cluster_heartbeats_received_total", labels, float(stats.heartbeats)),
            *(
                ("egressd_cluster_bad_messages_total", {**labels, "reason": reason}, float(n))
                for reason, n in stats.bad_reasons.items()
            ),
            ("egressd_cluster_snapshots_total", labels, float(stats.snapshots)),
            ("egressd_cluster_snapshot_errors_total", labels, float(stats.snapshot_errors)),
            ("egressd_cluster_snapshots_loaded_total", labels, float(stats.snapshots_loaded)),
            (
                "egressd_cluster_snapshots_too_large_total",
                labels,
                float(stats.snapshots_too_large),
            ),
            (
                "egressd_cluster_snapshots_saved_too_large_total",
                labels,
                float(stats.snapshots_saved_too_large),
            ),
            ("egressd_cluster_partitions_kept_total", labels, float(stats.partitions_kept)),
            ("egressd_cluster_reseeks_total", labels, float(stats.reseeks)),
            (
                "egressd_cluster_future_times_clamped_total",
                labels,
                float(stats.future_times_clamped),
            ),
            (
                "egressd_cluster_future_partials_clamped_total",
                labels,
                float(stats.future_partials_clamped),
            ),
            ("egressd_cluster_commits_total", labels, float(stats.commits)),
            ("egressd_cluster_commit_failures_total", labels, float(stats.commit_failures)),
            ("egressd_cluster_resets_total", labels, float(stats.resets)),
            ("egressd_cluster_owned_partitions", labels, float(len(self.partitions))),
        ]


def _describe(tps: Iterable[TopicPartition]) -> str:
    return ",".join(sorted(f"{tp.topic}:{tp.partition}" for tp in tps))
