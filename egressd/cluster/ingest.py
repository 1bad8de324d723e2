"""The ingest role: raw flows from Kafka to interval partials keyed by group.

Per source partition, records are summed into partials and cut into batches at offsets that
depend only on offsets: a batch ends before every multiple of ``batch_offsets``, so reading
the same offsets again (after a crash, or on another member after a rebalance) cuts the same
batches, and the detecting side recognises a batch it has applied by its last offset. A
batch that has not reached its boundary goes out after ``idle_flush`` without new records.

A batch's partials go to ``partition = stable_hash(group) % P`` of the partials topic, one
message per partition, with headers naming the source partition, its first and last offset
and its event time. Input offsets are committed only once the broker acknowledged every
message of the batches before them. Heartbeats tell every partials partition how far event
time has come in each source partition this member owns, so a partition that receives no
partials still closes its intervals; where records stop moving a source partition's event
time on (none come, or its clock stepped back), wall time does, as in the all-in-one daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor
from aiokafka.errors import KafkaError

from egressd.clock import SteadyWall
from egressd.cluster.role import KafkaRole
from egressd.cluster.wire import Heartbeat, heartbeat_headers, partials_headers, source_key
from egressd.config import Config
from egressd.enrich import DestinationLabeler
from egressd.errors import ConfigError, SourceError
from egressd.partials import (
    PartialCounter,
    Segment,
    encode_partials,
    encode_segments,
    partition_of,
)
from egressd.pipeline import IDLE_AFTER, Partial, Progress
from egressd.sources.kafka import (
    DECODE_BYTES,
    KafkaSource,
    RebalanceListener,
    fetch_pieces,
    map_kafka_error,
    start_clients,
    stop_clients,
)

log = logging.getLogger("egressd.cluster.ingest")

_POLL_MS: Final = 200
_ACK_TIMEOUT: Final = 30.0
_COMMIT_TIMEOUT: Final = 10.0
#: test hooks, comma-separated: ``exit-before-commit:N`` kills this process (SIGKILL) once
#: the N-th shipment was acknowledged and before its offsets are committed;
#: ``exit-before-commit-idle:N`` does so at the N-th shipment holding a batch cut short by
#: idle_flush; ``fail-commit:N`` makes the first N offset commits fail (as a broker in
#: trouble would); ``stop-before-produce-idle:N`` stops this process (SIGSTOP) just before
#: it produces its N-th shipment holding a batch cut short, past the stall check (a freeze
#: no check can see coming); ``cut-short:K`` cuts batches kept apart per offset every K
#: offsets, as idle_flush would during slow fetches; ``hold-after-shipment:N`` pauses for
#: 2 s once the N-th shipment is committed, before anything else is shipped
FAULT_ENV: Final = "EGRESSD_FAULT"
_HOLD: Final = 2.0
_TICK: Final = 0.1


@dataclass(slots=True)
class IngestStats:
    batches: int = 0  # batches cut
    idle_flushes: int = 0  # of which cut short (idle_flush, or event time stalled)
    messages_produced: int = 0
    partial_rows: int = 0
    #: of those, rows of first batches after an assignment (kept apart per offset), and the
    #: offsets those batches covered
    exact_rows: int = 0
    exact_offsets: int = 0
    bytes_produced: int = 0
    heartbeats: int = 0
    commits: int = 0
    commit_failures: int = 0
    #: rounds refused because the process had stalled past the group's session timeout
    stalls: int = 0
    resets: int = 0  # connections started again after an error
    partials_partitions: int = 0


@dataclass(slots=True)
class _Lane:
    """One owned source partition: the batch being counted and what was acknowledged."""

    key: str
    first: int | None = None  # first offset of the batch being counted
    last: int = -1  # last offset counted
    boundary: int = 0  # the batch ends before this offset
    acked_time: float = -math.inf  # event time of everything acknowledged
    last_activity: float = 0.0  # monotonic time of the last record counted
    #: when records last moved this partition's event time on (the all-in-one daemon's rule:
    #: once they stop, for IDLE_AFTER, wall time moves it on)
    progress: Progress = field(default_factory=lambda: Progress(0.0))
    #: the ingest group generation this partition was assigned in (None: unknown)
    generation: int | None = None
    #: batches that start before this offset keep their partials apart per offset: the
    #: first boundary after the first offset read since the assignment. The previous owner
    #: may have produced, and not committed, one batch from that offset (never more: see
    #: ``_round``), which this member may cut elsewhere (idle_flush) than it did.
    exact_until: int | None = None
    exact: bool = True
    segments: list[Segment] = field(default_factory=list)
    #: the partition had records before this member took it over (a commit past offset 0)
    had_records: bool = False


@dataclass(slots=True)
class _Cut:
    tp: TopicPartition
    key: str
    first: int
    last: int
    event_time: float
    partials: list[Partial] = field(default_factory=list)
    idle: bool = False  # cut short (idle_flush, or event time stalled)
    segments: list[Segment] | None = None  # partials per offset, instead of ``partials``


#: commit metadata: the event time a partition's flows reached at the committed offset
_REACHED = "egressd:t="


def commit_metadata(event_time: float) -> str:
    """The metadata committed with a raw partition's offset (empty before any flow)."""
    return f"{_REACHED}{event_time!r}" if math.isfinite(event_time) else ""


def committed_event_time(metadata: str | None) -> float:
    """The event time :func:`commit_metadata` recorded; -inf when there is none (a commit
    without it, by another consumer or an older egressd)."""
    if not metadata or not metadata.startswith(_REACHED):
        return -math.inf
    try:
        value = float(metadata[len(_REACHED) :])
    except ValueError:
        return -math.inf
    return value if math.isfinite(value) else -math.inf


async def _committed(consumer: Any, tp: TopicPartition) -> tuple[int | None, float]:
    """A partition's committed offset (None: never committed) and the event time committed
    with it. aiokafka's ``committed`` drops the metadata, so this asks its coordinator as
    ``committed`` does."""
    fetch = getattr(getattr(consumer, "_coordinator", None), "fetch_committed_offsets", None)
    if fetch is None:
        return await consumer.committed(tp), -math.inf
    found = (await fetch([tp])).get(tp)
    if found is None or found.offset < 0:
        return None, -math.inf
    return found.offset, committed_event_time(found.metadata)


class Ingest(KafkaRole):
    """Consumes the raw flow topics of the one ``[[sources.kafka]]`` and produces partials."""

    log = log
    stats: IngestStats

    def __init__(
        self,
        config: Config,
        labeler: DestinationLabeler,
        *,
        consumer_factory: Callable[..., Any] = AIOKafkaConsumer,
        producer_factory: Callable[..., Any] = AIOKafkaProducer,
        environ: dict[str, str] | None = None,
    ) -> None:
        (kafka,) = config.sources.kafka
        self.config = config
        self.cluster = config.cluster
        self.name = f"ingest:{','.join(kafka.topics)}"
        self.source = KafkaSource(kafka, f"kafka:{','.join(kafka.topics)}")
        self.counter = PartialCounter(config, labeler)
        self.stats = IngestStats()
        self._consumer_factory = consumer_factory
        self._producer_factory = producer_factory
        self._consumer: Any = None
        self._producer: Any = None
        self._partitions = 0
        self._lanes: dict[TopicPartition, _Lane] = {}
        self._transactional = self.cluster.transactions
        #: undecodable messages of this round, for the dead-letter topic
        self._failed: list[tuple[Any, str]] = []
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._ready = False
        self._last_heartbeat = 0.0
        #: never stepping back (see :class:`SteadyWall`)
        self.wall: Callable[[], float] = SteadyWall()
        self.monotonic: Callable[[], float] = time.monotonic
        env = os.environ if environ is None else environ
        fault = env.get(FAULT_ENV, "")
        self._exit_after = _fault_count(fault, "exit-before-commit")
        self._exit_after_idle = _fault_count(fault, "exit-before-commit-idle")
        self._fail_commits = _fault_count(fault, "fail-commit")
        self._stop_before = _fault_count(fault, "stop-before-produce-idle")
        self._cut_short = _fault_count(fault, "cut-short")
        self._hold_after = _fault_count(fault, "hold-after-shipment")
        self._shipments = 0
        self._idle_shipments = 0
        self._commit_attempts = 0
        #: fetched messages past a batch boundary, counted once the batch before is committed
        self._held: dict[TopicPartition, list[Any]] = {}
        #: when the event loop last ran the ticker, and whether it once did not for longer
        #: than the group's session timeout since the last assignment: a process stalled
        #: that long (SIGSTOP, swapping) sent no group heartbeats, may have lost its
        #: partitions, and must not produce what it counted before
        self._tick = 0.0
        self._stalled = False
        self._ticker: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._stopping = False
        loop = asyncio.get_running_loop()
        self._tick = self.monotonic()
        self._ticker = loop.create_task(self._run_ticker(), name="egressd-ingest-ticker")
        self._task = loop.create_task(self._run(), name="egressd-ingest")

    async def wait(self) -> None:
        assert self._task is not None
        await self._task
        raise RuntimeError("ingest stopped")

    async def stop(self) -> None:
        """Stop fetching; what is counted and not shipped is read again by the next owner."""
        self._stopping = True
        for task in (self._task, self._ticker):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._ticker = None
        await self._close()

    # -- connection ------------------------------------------------------------------------

    async def _connect(self) -> None:
        source = self.source
        options = source.consumer_options()
        # Sticky: a rebalance moves only the partitions it must (a moved partition is read
        # again from its last commit).
        options["partition_assignment_strategy"] = (StickyPartitionAssignor,)
        producer_options: dict[str, Any] = dict(
            source.client_options(), acks="all", linger_ms=5, max_batch_size=1024 * 1024
        )
        if self._transactional:
            producer_options.update(
                transactional_id=self.cluster.transactional_id, enable_idempotence=True
            )
        else:
            # Tansu (and brokers like it) have neither idempotent producers nor
            # transactions; a replayed batch is recognised downstream by its offsets.
            producer_options["enable_idempotence"] = False
        producer = self._producer_factory(**producer_options)
        what = f"{self.name}: connecting"
        if self._transactional:
            await self._start_transactional(producer)
        consumer = self._consumer_factory(**options)
        if self._transactional:
            try:
                await start_clients(what, consumer)
            except BaseException:
                await stop_clients(self.name, producer)
                raise
        else:
            await start_clients(what, producer, consumer)
        try:
            partitions = await producer.partitions_for(self.cluster.partials_topic)
        except Exception as exc:
            await stop_clients(self.name, consumer, producer)
            raise map_kafka_error(exc, f"{self.name}: connecting") from exc
        self._consumer, self._producer = consumer, producer
        self._partitions = self.stats.partials_partitions = len(partitions)
        consumer.subscribe(
            list(source.config.topics), listener=RebalanceListener(self._on_revoked, self._assign)
        )

    async def _start_transactional(self, producer: Any) -> None:
        """Start a transactional producer (InitProducerId with its transactional id). A
        broker that answers with an error rather than not at all has no transactions to
        give: a configuration problem, which stops the process instead of retrying."""
        try:
            await producer.start()
        except Exception as exc:
            with contextlib.suppress(Exception):
                await producer.stop()
            if isinstance(exc, KafkaError) and not exc.retriable:
                servers = ",".join(self.source.config.bootstrap_servers)
                raise ConfigError(
                    "cluster.transactions: the broker at "
                    f"{servers} refused a transactional producer (InitProducerId for "
                    f"transactional_id {self.cluster.transactional_id!r} answered "
                    f"{type(exc).__name__}: {exc}): it does not support transactions; set "
                    "cluster.transactions = false for brokers without them"
                ) from exc
            raise map_kafka_error(exc, f"{self.name}: connecting") from exc

    def _connected(self) -> str:
        topic = self.cluster.partials_topic
        return f"producing partials to {topic} ({self._partitions} partitions)"

    async def _close(self) -> None:
        """Drop the clients; counted but unacknowledged batches go with them: their offsets
        were not committed, so they are read (and cut) again."""
        self._ready = False
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        for tp in list(self._lanes):
            self.counter.drop(self._lanes.pop(tp).key)
        self._held.clear()
        await stop_clients(self.name, consumer, producer)

    # -- the loop ----------------------------------------------------------------------------

    async def _consume(self) -> None:
        consumer = self._consumer
        while not self._stopping:
            fetched = await consumer.getmany(
                timeout_ms=_POLL_MS, max_records=self.source.config.max_batch
            )
            await self._take(fetched)

    async def _take(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        """Count one fetch as if it had come a megabyte of messages at a time, with a turn
        of the event loop between: in one go, a fetch of megabyte messages of flow lines
        (up to the consumer's 50 MB limit) held the loop for seconds, long enough on a busy
        machine to look stalled past the session timeout (see :meth:`_check_alive`)."""
        for piece in fetch_pieces(fetched, DECODE_BYTES):
            async with self._lock:
                self._check_alive()
                await self._round(piece)
            await asyncio.sleep(0)

    async def _run_ticker(self) -> None:
        while True:
            await asyncio.sleep(_TICK)
            now = self.monotonic()
            if now - self._tick > self.source.config.session_timeout:
                self._stalled = True
            self._tick = now

    def _check_alive(self) -> None:
        """Refuse to go on after a stall longer than the group's session timeout: the group
        may have given this member's partitions to another, which reads them again from
        their last commit; what this one counted meanwhile must not be produced on top."""
        stalled = self.monotonic() - self._tick
        limit = self.source.config.session_timeout
        if self._lanes and (self._stalled or stalled > limit):
            self.stats.stalls += 1
            raise SourceError(
                f"{self.name}: the process stalled past the group's session timeout "
                f"({limit:g}s): its partitions may have moved; dropping what it counted "
                "and joining again"
            )

    async def _round(self, fetched: dict[TopicPartition, list[Any]]) -> None:
        """Count one fetch, ship the batches it ends, and beat when a heartbeat is due."""
        beat = self.monotonic() - self._last_heartbeat >= self.cluster.heartbeat_interval
        cuts = self._count(fetched)
        cuts.extend(self._idle_cuts(beat))
        while True:
            failed, self._failed = self._failed, []
            if cuts or failed:
                await self._ship(cuts, failed)
            if not self._held:
                break
            # What the fetch held past a boundary, now that the batch before is committed.
            held, self._held = self._held, {}
            cuts = self._count(held)
        if beat:
            await self._heartbeat()

    def _lane(self, tp: TopicPartition) -> _Lane:
        lane = self._lanes.get(tp)
        if lane is None:
            lane = self._lanes[tp] = _Lane(source_key(tp.topic, tp.partition))
            lane.last_activity = self.monotonic()
            lane.progress = Progress(lane.last_activity)
        return lane

    def _count(self, fetched: dict[TopicPartition, list[Any]]) -> list[_Cut]:
        """Count fetched messages; the batches that reached their boundary.

        At most one batch per partition is cut: messages past its boundary are held
        (``_held``) until it is shipped and committed, so a member never has more than one
        batch of a partition out and uncommitted, which the partition's next owner keeps
        apart per offset (see ``_Lane.exact_until``)."""
        cuts: list[_Cut] = []
        step = self.cluster.batch_offsets
        future_limit = self.wall() + self.config.detection.max_clock_ahead
        now = self.monotonic()
        for tp, messages in fetched.items():
            if tp not in self._lanes or not messages:
                continue  # revoked while the fetch was on its way
            lane = self._lanes[tp]
            if lane.exact_until is None:
                lane.exact_until = (messages[0].offset // step + 1) * step
            if lane.first is None:
                lane.first = messages[0].offset
                lane.boundary = (lane.first // step + 1) * step
            end = lane.boundary
            if self._cut_short and lane.exact:
                end = min(end, lane.first + self._cut_short)
            j = 0
            while j < len(messages) and messages[j].offset < end:
                j += 1
            if j > 0:
                chunk = messages[:j]
                if lane.exact:
                    self._count_apart(tp, lane, chunk, future_limit)
                else:
                    records, failed = self.source.decode({tp: chunk})
                    self._failed.extend(failed)
                    self.counter.count(lane.key, records, future_limit)
                lane.last = chunk[-1].offset
                lane.last_activity = now
                lane.progress.note(self.counter.event_time(lane.key), now)
            if j < len(messages) or lane.last == end - 1:
                cut = self._cut(tp, lane)
                cut.idle = end < lane.boundary  # cut short by the test hook
                cuts.append(cut)
                if j < len(messages):
                    self._held[tp] = messages[j:]
        return cuts

    def _count_apart(
        self, tp: TopicPartition, lane: _Lane, messages: list[Any], future_limit: float
    ) -> None:
        for message in messages:
            records, failed = self.source.decode({tp: [message]})
            self._failed.extend(failed)
            self.counter.count(lane.key, records, future_limit)
            partials = self.counter.take(lane.key)
            if partials:
                lane.segments.append((message.offset, message.offset, partials))

    def _idle_cuts(self, beat: bool = False) -> list[_Cut]:
        """Batches cut short: by ``idle_flush``, or, when a heartbeat follows (``beat``), in
        a partition whose event time stands still while records keep coming (its clock
        stepped back): the heartbeat then moves that time on, and must not pass records
        counted and not yet shipped."""
        now = self.monotonic()
        cuts = []
        for tp, lane in self._lanes.items():
            if lane.first is None:
                continue
            if now - lane.last_activity >= self.cluster.idle_flush or (
                beat and lane.progress.idle_target(now) is not None
            ):
                cut = self._cut(tp, lane)
                cut.idle = True
                cuts.append(cut)
                self.stats.idle_flushes += 1
        return cuts

    def _cut(self, tp: TopicPartition, lane: _Lane) -> _Cut:
        assert lane.first is not None
        cut = _Cut(
            tp,
            lane.key,
            lane.first,
            lane.last,
            self.counter.event_time(lane.key),
            self.counter.take(lane.key),
        )
        if lane.exact:
            cut.segments, lane.segments = lane.segments, []
            lane.exact = lane.exact_until is not None and lane.last + 1 < lane.exact_until
        lane.first = None
        self.stats.batches += 1
        return cut

    async def _ship(self, cuts: list[_Cut], failed: list[tuple[Any, str]] | None = None) -> None:
        """Produce ``cuts``, wait for every acknowledgement, then commit their offsets;
        undecodable messages (``failed``) go to the dead-letter topic first.

        With ``cluster.transactions``, all of it is one Kafka transaction, the input offsets
        included (``send_offsets_to_transaction``): a failure aborts it, and readers of
        committed transactions never see the batches. Without, a failed commit leaves them
        out, uncommitted; either way the clients start again and nothing more is produced
        on top of them (see ``_Lane.exact_until``).
        """
        producer = self._producer
        self._check_alive()
        if (
            self._stop_before
            and any(cut.idle for cut in cuts)
            and self._idle_shipments + 1 >= self._stop_before
        ):
            self._stop_before = 0
            log.warning("%s: %s: stopping before producing", self.name, FAULT_ENV)
            os.kill(os.getpid(), signal.SIGSTOP)
        if not self._transactional:
            # Before the batches holding their offsets are committed.
            await self.source.dead_letter(failed or [], producer)
            if cuts:
                await self._produce(cuts)
                await self._commit(cuts)
            return
        await producer.begin_transaction()
        try:
            await self.source.dead_letter(failed or [], producer)
            if cuts:
                await self._produce(cuts)
                await self._commit(cuts)
            else:
                await producer.commit_transaction()
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.abort_transaction()
            raise

    async def _produce(self, cuts: list[_Cut]) -> None:
        """Batches of one source partition go out one wave after another, each acknowledged
        before the next is sent: a later batch must never be written where an earlier one
        failed, or the earlier one, produced again, would look like a replay and be dropped.
        """
        producer = self._producer
        topic = self.cluster.partials_topic
        interval = self.config.detection.interval
        waves: list[list[_Cut]] = []
        depth: dict[TopicPartition, int] = {}
        for cut in cuts:
            n = depth.get(cut.tp, 0)
            depth[cut.tp] = n + 1
            if n == len(waves):
                waves.append([])
            waves[n].append(cut)
        for wave in waves:
            futures = []
            for cut in wave:
                lane = self._lanes.get(cut.tp)
                headers = partials_headers(
                    cut.key,
                    cut.first,
                    cut.last,
                    cut.event_time,
                    None if lane is None else lane.generation,
                )
                for partition, value, rows in self._encode(cut, interval):
                    futures.append(
                        await producer.send(topic, value, partition=partition, headers=headers)
                    )
                    self.stats.partial_rows += rows
                    self.stats.bytes_produced += len(value)
                    if cut.segments is not None:
                        self.stats.exact_rows += rows
                if cut.segments is not None:
                    self.stats.exact_offsets += cut.last - cut.first + 1
            await asyncio.wait_for(asyncio.gather(*futures), _ACK_TIMEOUT)
            self.stats.messages_produced += len(futures)

    async def _commit(self, cuts: list[_Cut]) -> None:
        """Commit the input offsets ``cuts`` end at (with transactions: in the transaction
        their partials were produced in, which this commits)."""
        ends: dict[TopicPartition, int] = {}
        times: dict[TopicPartition, float] = {}
        for cut in cuts:
            ends[cut.tp] = max(ends.get(cut.tp, 0), cut.last + 1)
            times[cut.tp] = max(times.get(cut.tp, -math.inf), cut.event_time)
        # Each offset carries the event time its partition's flows reached: a member the
        # partition moves to goes on from there (see _learn_positions).
        offsets = {tp: (end, commit_metadata(times[tp])) for tp, end in ends.items()}
        self._shipments += 1
        self._idle_shipments += any(cut.idle for cut in cuts)
        if (self._exit_after and self._shipments >= self._exit_after) or (
            self._exit_after_idle and self._idle_shipments >= self._exit_after_idle
        ):
            log.warning("%s: %s: exiting before the commit", self.name, FAULT_ENV)
            os.kill(os.getpid(), signal.SIGKILL)
        try:
            self._commit_attempts += 1
            if self._commit_attempts <= self._fail_commits:
                raise RuntimeError(f"{FAULT_ENV}: commit {self._commit_attempts} fails")
            if self._transactional:
                group = self.source.config.group_id
                await asyncio.wait_for(
                    self._producer.send_offsets_to_transaction(offsets, group), _COMMIT_TIMEOUT
                )
                await asyncio.wait_for(self._producer.commit_transaction(), _COMMIT_TIMEOUT)
            else:
                await asyncio.wait_for(self._consumer.commit(offsets), _COMMIT_TIMEOUT)
        except Exception as exc:
            # Without transactions the batches are out, uncommitted. Nothing more is
            # produced on top of them: the clients start again and whoever is assigned
            # these partitions (this member or another) reads them again from their last
            # commit, keeping apart per offset what this shipment may have covered, which
            # the detecting side then skips.
            self.stats.commit_failures += 1
            raise SourceError(
                f"{self.name}: committing offsets failed ({exc!r}); reading again from the "
                "last commit"
            ) from exc
        self.stats.commits += 1
        for cut in cuts:
            lane = self._lanes.get(cut.tp)
            if lane is not None and cut.event_time > lane.acked_time:
                lane.acked_time = cut.event_time
        if self._hold_after and self._shipments >= self._hold_after:
            self._hold_after = 0
            log.warning("%s: %s: holding for %.0fs", self.name, FAULT_ENV, _HOLD)
            await asyncio.sleep(_HOLD)

    def _encode(self, cut: _Cut, interval: float) -> list[tuple[int, bytes, int]]:
        """(partials partition, message value, rows) of ``cut``, one per partition it feeds."""
        partitions = self._partitions
        out = []
        if cut.segments is None:
            by_partition: dict[int, list[Partial]] = {}
            for partial in cut.partials:
                by_partition.setdefault(partition_of(partial[1][0], partitions), []).append(partial)
            for partition, partials in sorted(by_partition.items()):
                out.append((partition, encode_partials(partials, interval), len(partials)))
            return out
        by_segment: dict[int, list[Segment]] = {}
        for first, last, partials in cut.segments:
            split: dict[int, list[Partial]] = {}
            for partial in partials:
                split.setdefault(partition_of(partial[1][0], partitions), []).append(partial)
            for partition, mine in split.items():
                by_segment.setdefault(partition, []).append((first, last, mine))
        for partition, segments in sorted(by_segment.items()):
            rows = sum(len(partials) for _first, _last, partials in segments)
            out.append((partition, encode_segments(segments, interval), rows))
        return out

    async def _heartbeat(self) -> None:
        consumer = self._consumer
        producer = self._producer
        now = self.monotonic()
        beat = Heartbeat()
        for tp, lane in self._lanes.items():
            if lane.generation is not None:
                beat.generations[lane.key] = lane.generation
            t = lane.acked_time
            highwater = consumer.highwater(tp)
            caught_up = highwater is not None and lane.last + 1 >= highwater
            if lane.first is None and caught_up:
                # Nothing waits in this partition, and its records have not moved its event
                # time on for IDLE_AFTER (none came, or its clock stalled or stepped back):
                # wall time moves it on from where they left it. One that never had a record
                # (goflow2 keys by exporter: partitions without an exporter stay empty) is
                # at wall time: whatever comes to it later is live, and the slowest
                # partition still sets the pace of a backlog elsewhere.
                target = lane.progress.idle_target(now, self.wall())
                if target is not None:
                    t = max(t, target)
                elif t == -math.inf and lane.progress.quiet(now) >= IDLE_AFTER:
                    if lane.had_records:
                        # Taken over, its flows' time unknown here (no commit metadata):
                        # the detect side moves on the time it knows, not to wall time,
                        # which flows stamped behind it have not reached.
                        beat.quiet[lane.key] = lane.progress.quiet(now)
                    else:
                        t = self.wall() - IDLE_AFTER
            if t > -math.inf:
                beat.times[lane.key] = t
        if beat.quiet:
            beat.wall = self.wall()
        for topic in self.source.config.topics:
            partitions = consumer.partitions_for_topic(topic)
            if partitions:
                beat.partitions[topic] = len(partitions)
        self._last_heartbeat = now
        if not beat.times and not beat.quiet:
            return
        value = beat.encode()
        if self._transactional:
            await producer.begin_transaction()
        try:
            futures = [
                await producer.send(
                    self.cluster.partials_topic, value, partition=p, headers=heartbeat_headers()
                )
                for p in range(self._partitions)
            ]
            await asyncio.wait_for(asyncio.gather(*futures), _ACK_TIMEOUT)
            if self._transactional:
                await asyncio.wait_for(producer.commit_transaction(), _COMMIT_TIMEOUT)
        except BaseException:
            if self._transactional:
                with contextlib.suppress(Exception):
                    await producer.abort_transaction()
            raise
        self.stats.heartbeats += 1

    # -- rebalancing -------------------------------------------------------------------------

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        # A shipment under way finishes (and commits) first; what is counted and not shipped
        # is forgotten: its offsets are not committed, so the next owner reads and cuts it.
        async with self._lock:
            for tp in revoked:
                self._held.pop(tp, None)
                lane = self._lanes.pop(tp, None)
                if lane is not None:
                    self.counter.drop(lane.key)
        if revoked:
            log.info("%s: source partitions revoked: %s", self.name, _describe(revoked))

    async def _assign(self, assigned: list[TopicPartition]) -> None:
        self._on_assigned(assigned)
        await self._learn_positions(assigned)

    def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        generation = getattr(getattr(self._consumer, "_coordinator", None), "generation", None)
        # The group just heard from this member: whatever stalled before is behind it.
        self._stalled = False
        self._tick = self.monotonic()
        for tp in assigned:
            self._lane(tp).generation = generation if isinstance(generation, int) else None
        log.info("%s: source partitions assigned: %s", self.name, _describe(assigned) or "none")

    async def _learn_positions(self, assigned: list[TopicPartition]) -> None:
        """Each new lane starts at its partition's committed offset; a partition read to its
        end before (committed offset at its highwater) is then known to be caught up, and its
        event time can move on while it stays quiet: from the event time its flows reached,
        committed with the offset, as it would have on the member it comes from (not from
        the wall clock, which is ahead of flows stamped behind it and would close their open
        intervals)."""
        consumer = self._consumer
        if consumer is None:
            return
        for tp in assigned:
            lane = self._lanes.get(tp)
            if lane is None or lane.first is not None or lane.last >= 0:
                continue
            try:
                committed, reached = await _committed(consumer, tp)
            except Exception as exc:  # aiokafka starts from the committed offset anyway
                log.debug("%s: committed offset of %s unknown: %r", self.name, tp, exc)
                continue
            if committed is not None:
                # Read from the last commit, whatever this member had fetched before: what
                # it counted and did not produce was dropped on revoke.
                consumer.seek(tp, committed)
                lane.last = committed - 1
                lane.had_records = committed > 0
                if reached > lane.acked_time:
                    # Quiet counts from now: the previous owner's quiet time is not known.
                    lane.acked_time = reached
                    lane.progress = Progress(self.monotonic(), reached)

    # -- views --------------------------------------------------------------------------------

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        labels = {"role": "ingest"}
        stats = self.stats
        samples = [
            ("egressd_cluster_batches_total", labels, float(stats.batches)),
            ("egressd_cluster_idle_flushes_total", labels, float(stats.idle_flushes)),
            ("egressd_cluster_messages_produced_total", labels, float(stats.messages_produced)),
            ("egressd_cluster_partial_rows_total", labels, float(stats.partial_rows)),
            ("egressd_cluster_exact_rows_total", labels, float(stats.exact_rows)),
            ("egressd_cluster_exact_offsets_total", labels, float(stats.exact_offsets)),
            ("egressd_cluster_bytes_produced_total", labels, float(stats.bytes_produced)),
            ("egressd_cluster_heartbeats_total", labels, float(stats.heartbeats)),
            ("egressd_cluster_commits_total", labels, float(stats.commits)),
            ("egressd_cluster_commit_failures_total", labels, float(stats.commit_failures)),
            ("egressd_cluster_stalls_total", labels, float(stats.stalls)),
            ("egressd_cluster_resets_total", labels, float(stats.resets)),
            ("egressd_cluster_owned_partitions", labels, float(len(self._lanes))),
        ]
        samples.extend(self.source.extra_metrics())
        return samples


def _fault_count(spec: str, name: str) -> int:
    for item in spec.split(","):
        kind, _, count = item.strip().partition(":")
        if kind == name and count.isdigit():
            return int(count)
    return 0


def _describe(tps: Iterable[TopicPartition]) -> str:
    return ",".join(sorted(source_key(tp.topic, tp.partition) for tp in tps))
