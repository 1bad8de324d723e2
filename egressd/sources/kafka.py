"""Kafka input: flow records from goflow2, pmacct or egressd topics, delivered at least once.

Offsets are committed only after the daemon has durably saved the state that includes the
records before them, so a crash replays at most what came after the last checkpoint.

Positions (``{"topic:partition": next offset}``) travel in the state file too: on start and on
every assignment the consumer seeks to the saved position when it is ahead of the group's
committed offset, so records the saved state already holds are not counted again even when
the commit after the last save did not happen.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.helpers import create_ssl_context

from egressd.columns import FlowColumns
from egressd.config import KafkaSourceConfig
from egressd.decode.columnar import COLUMN_FORMATS, JsonColumnDecoder
from egressd.decode.goflow2 import (
    decode_goflow2_json,
    decode_goflow2_protobuf,
    iter_length_delimited,
)
from egressd.errors import DecodeError, SourceError
from egressd.model import FlowRecord
from egressd.sources.base import RecordSink
from egressd.stats import SourceStats

log = logging.getLogger("egressd.sources.kafka")

#: bytes of one Kafka message value → the records it carries; raises DecodeError
MessageDecoder = Callable[[bytes], list[FlowRecord]]
#: keyword arguments (AIOKafkaConsumer's) → an un-started consumer; the unit-test seam
ConsumerFactory = Callable[..., Any]
#: keyword arguments (AIOKafkaProducer's) → an un-started producer, for the dead-letter topic
ProducerFactory = Callable[..., Any]

_BACKOFF_FIRST: Final = 0.5
_BACKOFF_MAX: Final = 30.0
#: a commit that cannot finish in this time (broker gone) is abandoned; the next one retries
_COMMIT_TIMEOUT: Final = 10.0
_POLL_MS: Final = 500
_DEAD_LETTER_TIMEOUT: Final = 10.0
#: undecodable messages (and their bytes) waiting for their dead-letter copy at most: the
#: copies go out beside the consumer, and past these the rest are dropped, counted
DEAD_LETTER_BACKLOG: Final = 1_000
DEAD_LETTER_BACKLOG_BYTES: Final = 32 << 20
#: after a dead-letter copy failed, copies are dropped (counted) without trying for this long:
#: the first pause, doubled while the next attempt fails too, up to the last
DEAD_LETTER_PAUSES: Final = (30.0, 600.0)
#: message bytes decoded per turn of the event loop (about 0.1 s of JSON lines): a fetch
#: holds up to max_batch messages and 50 MB, which took seconds to decode in one go
DECODE_BYTES: Final = 1 << 20


def fetch_pieces(
    batches: Mapping[TopicPartition, Sequence[Any]], limit: int
) -> Iterator[dict[TopicPartition, list[Any]]]:
    """``batches`` in pieces of about ``limit`` bytes of message values (at least one
    message each), in order; the whole of it when it is no larger."""
    sizes = {tp: [len(m.value or b"") for m in messages] for tp, messages in batches.items()}
    if sum(map(sum, sizes.values())) <= limit:
        yield {tp: list(messages) for tp, messages in batches.items()}
        return
    piece: dict[TopicPartition, list[Any]] = {}
    size = 0
    for tp, messages in batches.items():
        start = 0
        for index, length in enumerate(sizes[tp]):
            size += length
            if size >= limit:
                piece[tp] = list(messages[start : index + 1])
                yield piece
                piece, size, start = {}, 0, index + 1
        if start < len(messages):
            piece[tp] = list(messages[start:])
    if piece:
        yield piece


# --------------------------------------------------------------------------- decoding


def _json_lines(decode: Callable[[bytes], FlowRecord | None]) -> MessageDecoder:
    """A message decoder for JSON formats: one object per message, or several per line.

    pmacct's Kafka plugin can pack several records into one message, one per line
    (``kafka_multi_values``); goflow2 and egressd write one per message.
    """

    def decode_message(value: bytes) -> list[FlowRecord]:
        if b"\n" not in value:
            record = decode(value)
            return [] if record is None else [record]
        records = []
        for line in value.split(b"\n"):
            if line.strip():
                record = decode(line)
                if record is not None:
                    records.append(record)
        return records

    return decode_message


def decode_goflow2_protobuf_message(value: bytes) -> list[FlowRecord]:
    """One Kafka message of goflow2 ``-format=bin``: a FlowMessage, length-prefixed or not.

    goflow2 prefixes each message with its varint length; producers that write the bare
    FlowMessage exist too. The prefixed reading is tried first because a bare message
    almost never parses as a prefixed stream that ends exactly at the end of the value.
    """
    try:
        messages = list(iter_length_delimited(value))
        if messages:
            return [decode_goflow2_protobuf(message) for message in messages]
    except DecodeError:
        pass
    return [decode_goflow2_protobuf(value)]


def line_decoder(fmt: str) -> Callable[[bytes], FlowRecord | None] | None:
    """The one-record decoder of a JSON format (None for goflow2-protobuf)."""
    if fmt == "goflow2-json":
        return decode_goflow2_json
    if fmt == "pmacct-json":
        from egressd.decode.pmacct import decode_pmacct_json

        return decode_pmacct_json
    if fmt == "egressd-json":
        from egressd.decode.egressd_json import decode_egressd_json

        return decode_egressd_json
    return None


def message_decoder(fmt: str) -> MessageDecoder:
    """The message decoder of a ``[[sources.kafka]]`` format name."""
    if fmt == "goflow2-json":
        return _json_lines(decode_goflow2_json)
    if fmt == "goflow2-protobuf":
        return decode_goflow2_protobuf_message
    if fmt == "pmacct-json":
        from egressd.decode.pmacct import decode_pmacct_json

        return _json_lines(decode_pmacct_json)
    if fmt == "egressd-json":
        from egressd.decode.egressd_json import decode_egressd_json

        return _json_lines(decode_egressd_json)
    raise ValueError(f"unknown Kafka format {fmt!r}")


# --------------------------------------------------------------------------- positions


def _position_key(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


def parse_position(position: Any) -> dict[TopicPartition, int]:
    """Offsets of a saved position; entries that are not ``"topic:partition": int`` are dropped."""
    offsets: dict[TopicPartition, int] = {}
    if not isinstance(position, dict):
        return offsets
    for key, offset in position.items():
        if not isinstance(key, str) or type(offset) is not int or offset < 0:
            continue
        topic, _, partition = key.rpartition(":")
        if topic and partition.isdigit():
            offsets[TopicPartition(topic, int(partition))] = offset
    return offsets


def map_kafka_error(exc: BaseException, what: str) -> SourceError:
    """A library error as a SourceError; aiokafka says itself whether retrying can help."""
    retriable = bool(getattr(exc, "retriable", True)) if isinstance(exc, KafkaError) else True
    return SourceError(f"{what}: {type(exc).__name__}: {exc}", retriable=retriable)


# ------------------------------------------------- shared with the cluster's Kafka roles

Rebalanced = Callable[[list[TopicPartition]], Awaitable[None]]


class RebalanceListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands aiokafka's rebalance callbacks to a consumer's owner, as lists."""

    def __init__(self, revoked: Rebalanced, assigned: Rebalanced) -> None:
        self._revoked = revoked
        self._assigned = assigned

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        await self._revoked(list(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        await self._assigned(list(assigned))


class Backoff:
    """Delays between attempts to reach the brokers: doubling from 0.5 s up to 30 s, each
    jittered by ±25 % so that members cut off together do not come back together."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current = _BACKOFF_FIRST

    def reset(self) -> None:
        """The brokers answered: the next failure waits the shortest delay again."""
        self.current = _BACKOFF_FIRST

    def next_delay(self) -> float:
        delay = self.current * (0.75 + random.random() / 2)
        self.current = min(self.current * 2, _BACKOFF_MAX)
        return delay


async def start_clients(what: str, *clients: Any) -> None:
    """Start ``clients`` in order; if one fails, stop them all and raise a SourceError."""
    try:
        for client in clients:
            await client.start()
    except BaseException as exc:
        for client in clients:
            with contextlib.suppress(Exception):
                await client.stop()
        if isinstance(exc, Exception):
            raise map_kafka_error(exc, what) from exc
        raise


async def stop_clients(name: str, *clients: Any) -> None:
    """Stop ``clients`` (None for one never made), best effort."""
    for client in clients:
        if client is not None:
            try:
                await client.stop()
            except Exception as exc:  # closing is best effort
                log.debug("%s: closing a Kafka client: %s", name, exc)


# --------------------------------------------------------------------------- the source


class KafkaSource:
    """Consumes ``config.topics`` in group ``config.group_id`` and submits decoded batches.

    One batch (at most ``max_batch`` messages) is fetched, decoded and submitted before the
    next is asked for, so a slow engine slows the consumer instead of filling memory.
    Malformed messages are counted under their reason, optionally copied to the dead-letter
    topic, and skipped: they never hold up their partition.
    """

    __slots__ = (
        "_assigned",
        "_backoff",
        "_columns",
        "_consumer",
        "_consumer_factory",
        "_dead_letter_pause",
        "_dead_letter_retry",
        "_dead_letter_task",
        "_dead_letters_waiting",
        "_decode",
        "_line",
        "_producer",
        "_producer_factory",
        "_ready",
        "_sink",
        "_stopping",
        "_submit_columns",
        "_submitted",
        "_task",
        "bytes_consumed",
        "commit_failures",
        "commits",
        "config",
        "dead_letters",
        "last_error",
        "name",
        "rebalances",
        "records_consumed",
        "request_checkpoint",
        "stats",
    )

    def __init__(
        self,
        config: KafkaSourceConfig,
        name: str,
        *,
        consumer_factory: ConsumerFactory | None = None,
        producer_factory: ProducerFactory | None = None,
    ) -> None:
        self.config = config
        self.name = name
        self.stats = SourceStats(name)
        #: set by the daemon: saves state now and calls ``checkpoint_saved``. Awaited when
        #: partitions are revoked and on stop, so offsets are committed before another
        #: member takes over; without it, the periodic checkpoint covers them later.
        self.request_checkpoint: Callable[[], Awaitable[object]] | None = None
        self._consumer_factory: ConsumerFactory = consumer_factory or AIOKafkaConsumer
        self._producer_factory: ProducerFactory = producer_factory or AIOKafkaProducer
        self._decode = message_decoder(config.format)
        self._line = line_decoder(config.format)
        #: JSON formats decode a fetch into columns for a sink that takes them
        self._columns: JsonColumnDecoder | None = None
        if config.format in COLUMN_FORMATS:
            self._columns = JsonColumnDecoder(config.format)
        self._submit_columns: Callable[[FlowColumns], None] | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._sink: RecordSink | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = False
        self._stopping = False
        self._backoff = Backoff()
        #: undecodable messages waiting for their copy to the dead-letter topic, and the task
        #: sending them (see :meth:`_queue_dead_letters`)
        self._dead_letters_waiting: list[tuple[Any, str]] = []
        self._dead_letter_task: asyncio.Task[None] | None = None
        #: after a failed copy: how long copies are dropped without trying, and until when
        #: (monotonic time; see :data:`DEAD_LETTER_PAUSES`)
        self._dead_letter_pause = 0.0
        self._dead_letter_retry = 0.0
        #: next offset after everything submitted (or restored from the state file)
        self._submitted: dict[TopicPartition, int] = {}
        self._assigned: frozenset[TopicPartition] = frozenset()
        self.records_consumed = 0  # messages fetched (the units of stats)
        self.bytes_consumed = 0  # bytes of message values
        self.commits = 0
        self.commit_failures = 0
        self.rebalances = 0
        self.dead_letters = 0
        self.last_error = ""

    # -- Source protocol --------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self, sink: RecordSink) -> None:
        """Starts consuming in a task; an unreachable broker is retried, never fatal."""
        if self._task is not None:
            raise RuntimeError(f"{self.name} already started")
        self._sink = sink
        if self._columns is not None:
            self._submit_columns = getattr(sink, "submit_columns", None)
        self._stopping = False
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"egressd-{self.name}"
        )

    async def stop(self) -> None:
        """Stops fetching, lets the daemon checkpoint once more, then leaves the group."""
        self._stopping = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._consumer is not None and self.request_checkpoint is not None:
            try:
                await self.request_checkpoint()
            except Exception:
                log.exception(
                    "%s: final checkpoint failed; the saved position still holds", self.name
                )
        await self._close()

    def checkpoint_position(self) -> dict[str, int]:
        return {_position_key(tp): offset for tp, offset in self._submitted.items()}

    async def checkpoint_saved(self, position: Any) -> None:
        """Commits the saved offsets of partitions this member still owns."""
        consumer = self._consumer
        if consumer is None:
            return
        assigned = self._assigned
        offsets = {tp: o for tp, o in parse_position(position).items() if tp in assigned}
        if not offsets:
            return
        try:
            await asyncio.wait_for(consumer.commit(offsets), _COMMIT_TIMEOUT)
        except Exception as exc:  # a failed commit is retried by the next one
            self.commit_failures += 1
            error = map_kafka_error(exc, "commit") if not isinstance(exc, TimeoutError) else None
            log.warning(
                "%s: committing %d offsets failed (%s); the next checkpoint tries again",
                self.name,
                len(offsets),
                error or "timed out",
            )
            return
        self.commits += 1

    def restore_position(self, position: Any) -> None:
        restored = parse_position(position)
        if position is not None and not restored and position != {}:
            log.warning("%s: saved position %r is not usable; ignored", self.name, position)
        self._submitted.update(restored)

    # -- metrics ------------------------------------------------------------------------------

    def lag(self) -> dict[tuple[str, int], int]:
        """Messages behind the fetch highwater, per assigned partition with a known highwater."""
        consumer = self._consumer
        if consumer is None:
            return {}
        lags: dict[tuple[str, int], int] = {}
        for tp in self._assigned:
            # The highwater comes with every fetch response; end_offsets would cost a
            # request per scrape, and some brokers answer it wrongly.
            highwater = consumer.highwater(tp)
            position = self._submitted.get(tp)
            if highwater is None or position is None:
                continue
            lags[(tp.topic, tp.partition)] = max(0, highwater - position)
        return lags

    def extra_metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """(name, labels, value) samples; names ending in ``_total`` are counters, others gauges."""
        source = {"source": self.name}
        samples: list[tuple[str, dict[str, str], float]] = [
            ("egressd_kafka_messages_total", source, float(self.records_consumed)),
            ("egressd_kafka_bytes_total", source, float(self.bytes_consumed)),
            ("egressd_kafka_commits_total", source, float(self.commits)),
            ("egressd_kafka_commit_failures_total", source, float(self.commit_failures)),
            ("egressd_kafka_rebalances_total", source, float(self.rebalances)),
            ("egressd_kafka_dead_letters_total", source, float(self.dead_letters)),
            ("egressd_kafka_connected", source, 1.0 if self._ready else 0.0),
            ("egressd_kafka_assigned_partitions", source, float(len(self._assigned))),
        ]
        for (topic, partition), lag in sorted(self.lag().items()):
            labels = {"source": self.name, "topic": topic, "partition": str(partition)}
            samples.append(("egressd_kafka_lag_messages", labels, float(lag)))
        return samples

    # -- connection -----------------------------------------------------------------------------

    def client_options(self) -> dict[str, Any]:
        """Connection and security options of this source, for other clients of its cluster."""
        return self._client_options()

    def consumer_options(self) -> dict[str, Any]:
        """The consumer options of this source (group, offsets, timeouts) with its security."""
        return self._consumer_options()

    def decode(
        self, batches: dict[TopicPartition, Sequence[Any]]
    ) -> tuple[list[FlowRecord], list[tuple[Any, str]]]:
        """Records of fetched messages, counted in :attr:`stats`; and the undecodable ones."""
        return self._decode_batches(batches)

    async def dead_letter(self, failed: list[tuple[Any, str]], producer: Any) -> None:
        """Copy undecodable messages to ``dead_letter_topic`` (if set) through ``producer``."""
        if failed and self.config.dead_letter_topic:
            await self._dead_letter(failed, producer)

    def _client_options(self) -> dict[str, Any]:
        """Connection and security options shared by the consumer and the producer."""
        cfg = self.config
        options: dict[str, Any] = {
            "bootstrap_servers": list(cfg.bootstrap_servers),
            "client_id": cfg.client_id,
            "security_protocol": cfg.security_protocol,
        }
        if cfg.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self._ssl_context()
        if cfg.sasl_mechanism:
            options["sasl_mechanism"] = cfg.sasl_mechanism
            options["sasl_plain_username"] = cfg.sasl_username
            options["sasl_plain_password"] = self._read_password()
        return options

    def _ssl_context(self) -> ssl.SSLContext:
        cfg = self.config
        try:
            context: ssl.SSLContext = create_ssl_context(
                cafile=str(cfg.tls_ca_file) if cfg.tls_ca_file else None,
                certfile=str(cfg.tls_cert_file) if cfg.tls_cert_file else None,
                keyfile=str(cfg.tls_key_file) if cfg.tls_key_file else None,
            )
        except (OSError, ssl.SSLError) as exc:
            raise SourceError(
                f"{self.name}: TLS files cannot be used: {exc}", retriable=False
            ) from exc
        return context

    def _read_password(self) -> str:
        path = self.config.sasl_password_file
        if path is None:
            return ""
        try:
            # Only the trailing newline an editor adds is dropped; the password is never logged.
            return path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise SourceError(
                f"{self.name}: cannot read sasl_password_file {str(path)!r}: {exc.strerror}",
                retriable=False,
            ) from exc

    def _consumer_options(self) -> dict[str, Any]:
        cfg = self.config
        options = self._client_options()
        options.update(
            group_id=cfg.group_id,
            enable_auto_commit=False,
            # A new group reads the retained history rather than only what comes next:
            # missing flows is worse than replaying them.
            auto_offset_reset="earliest",
            session_timeout_ms=int(cfg.session_timeout * 1000),
            heartbeat_interval_ms=int(cfg.heartbeat_interval * 1000),
            rebalance_timeout_ms=int(cfg.rebalance_timeout * 1000),
            max_poll_records=cfg.max_batch,
            retry_backoff_ms=200,
        )
        return options

    async def _connect(self) -> None:
        options = self._consumer_options()
        consumer = self._consumer_factory(**options)
        await start_clients(f"{self.name}: connecting", consumer)
        self._consumer = consumer
        consumer.subscribe(
            list(self.config.topics),
            listener=RebalanceListener(self._on_revoked, self._on_assigned),
        )
        if self.config.dead_letter_topic and self._producer is None:
            producer = self._producer_factory(
                **self._client_options(), enable_idempotence=False, acks="all"
            )
            await start_clients(f"{self.name}: connecting the dead-letter producer", producer)
            self._producer = producer

    async def _close(self) -> None:
        self._ready = False
        task, self._dead_letter_task = self._dead_letter_task, None
        if task is not None:
            # Copies under way get the time one copy may take, then what is left is dropped.
            await asyncio.wait([task], timeout=_DEAD_LETTER_TIMEOUT)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._dead_letters_waiting:
            self.stats.drop("dead_letter_failed", len(self._dead_letters_waiting))
            self._dead_letters_waiting = []
        consumer, self._consumer = self._consumer, None
        producer, self._producer = self._producer, None
        self._assigned = frozenset()
        await stop_clients(self.name, consumer, producer)

    async def _run(self) -> None:
        while not self._stopping:
            try:
                if self._consumer is None:
                    await self._connect()
                    log.info(
                        "%s: consuming %s from %s as group %s",
                        self.name,
                        ",".join(self.config.topics),
                        ",".join(self.config.bootstrap_servers),
                        self.config.group_id,
                    )
                self._ready = True
                await self._consume()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                error = exc if isinstance(exc, SourceError) else map_kafka_error(exc, self.name)
                self._ready = False
                self.last_error = str(error)
                delay = self._backoff.next_delay()
                log.log(
                    logging.WARNING if error.retriable else logging.ERROR,
                    "%s: %s; retrying in %.1fs",
                    self.name,
                    error,
                    delay,
                )
                if not error.retriable:
                    # A fatal error may hide a half-working client: start again from scratch.
                    await self._close()
                await asyncio.sleep(delay)

    async def _consume(self) -> None:
        consumer = self._consumer
        sink = self._sink
        assert sink is not None
        max_batch = self.config.max_batch
        while not self._stopping:
            batches = await consumer.getmany(timeout_ms=_POLL_MS, max_records=max_batch)
            self._backoff.reset()
            if not batches:
                continue
            for piece in fetch_pieces(batches, DECODE_BYTES):
                submit_columns = self._submit_columns
                decoded = self._decode_columns(piece) if submit_columns else None
                if decoded is None:
                    records, failed = self._decode_batches(piece)
                else:
                    columns, failed = decoded
                if failed and self._producer is not None:
                    self._queue_dead_letters(failed)
                if decoded is None:
                    if records:
                        sink.submit(records)
                elif len(columns) and submit_columns is not None:
                    submit_columns(columns)
                # Only now, with the engine holding them, do these offsets count as submitted.
                for tp, messages in piece.items():
                    if messages:
                        self._submitted[tp] = messages[-1].offset + 1
                # getmany returns without suspending while records are buffered, and a
                # fetch may hold many large messages: yield after each piece, or a backlog
                # would starve checkpoints, the HTTP server and the watchdog.
                await asyncio.sleep(0)

    def _decode_batches(
        self, batches: Mapping[TopicPartition, Sequence[Any]]
    ) -> tuple[list[FlowRecord], list[tuple[Any, str]]]:
        stats = self.stats
        records: list[FlowRecord] = []
        failed: list[tuple[Any, str]] = []
        line = self._line
        units = size = skipped = 0
        if line is None:
            decode = self._decode
            extend = records.extend
            for messages in batches.values():
                units += len(messages)
                for message in messages:
                    value = message.value
                    if not value:
                        stats.drop("empty_message")
                        continue
                    size += len(value)
                    try:
                        extend(decode(value))
                    except DecodeError as exc:
                        stats.failed(exc.reason)
                        failed.append((message, exc.reason))
        else:
            # JSON formats, inlined: one record per message is the rule. Several lines in
            # one message fail as one JSON document and take the slow path only then.
            append = records.append
            for messages in batches.values():
                units += len(messages)
                for message in messages:
                    value = message.value
                    if not value:
                        stats.drop("empty_message")
                        continue
                    size += len(value)
                    try:
                        record = line(value)
                    except DecodeError as exc:
                        reason = exc.reason
                        if b"\n" in value.rstrip():
                            try:
                                skipped += self._decode_lines(value, append)
                                continue
                            except DecodeError as line_exc:
                                reason = line_exc.reason
                        stats.failed(reason)
                        failed.append((message, reason))
                        continue
                    if record is None:
                        skipped += 1
                    else:
                        append(record)
        if skipped:
            stats.drop("skipped", skipped)
        stats.units += units
        stats.records += len(records)
        self.records_consumed += units
        self.bytes_consumed += size
        return records, failed

    def _decode_columns(
        self, batches: Mapping[TopicPartition, Sequence[Any]]
    ) -> tuple[FlowColumns, list[tuple[Any, str]]] | None:
        """A fetch of a JSON format as one batch of columns, counted and failed as
        :meth:`_decode_batches` counts and fails it (same flows, same order); None when a
        message needs that path (empty, or several lines in one message)."""
        assert self._columns is not None
        messages = [message for batch in batches.values() for message in batch]
        values = [message.value for message in messages]
        if not all(values):
            return None
        joined = b"".join(values)
        if b"\n" in joined:
            return None
        failures: list[tuple[int, str]] = []
        columns = self._columns.decode(values, self.stats, failures)
        self.records_consumed += len(values)
        self.bytes_consumed += len(joined)
        return columns, [(messages[index], reason) for index, reason in failures]

    def _decode_lines(self, value: bytes, append: Callable[[FlowRecord], None]) -> int:
        """Records of a message holding several JSON lines; returns how many were skipped.

        All or nothing: a bad line fails the whole message before any record is kept, so
        a dead-lettered message never has half of its records counted.
        """
        line = self._line
        assert line is not None
        decoded = [line(part) for part in value.split(b"\n") if part.strip()]
        for record in decoded:
            if record is not None:
                append(record)
        return sum(record is None for record in decoded)

    def _queue_dead_letters(self, failed: list[tuple[Any, str]]) -> None:
        """Copy ``failed`` to the dead-letter topic beside the consumer, never in its way.

        Before, the consumer waited for the copies: aiokafka's ``send`` waits up to
        ``request_timeout_ms`` (40 s) for the topic's metadata, so while the dead-letter
        topic could not be reached (deleted, not yet created, a broker that does not
        answer), each fetch holding one bad message stopped the flow topic for that long,
        and a producer writing one bad message a fetch kept every good one behind it from
        the engine. At most :data:`DEAD_LETTER_BACKLOG` messages (and
        :data:`DEAD_LETTER_BACKLOG_BYTES`) wait; the rest are dropped, counted."""
        waiting = self._dead_letters_waiting
        held = sum(len(message.value or b"") for message, _reason in waiting)
        dropped = 0
        for item in failed:
            size = len(item[0].value or b"")
            if len(waiting) >= DEAD_LETTER_BACKLOG or held + size > DEAD_LETTER_BACKLOG_BYTES:
                dropped += 1
                continue
            waiting.append(item)
            held += size
        if dropped:
            self.stats.drop("dead_letter_failed", dropped)
        task = self._dead_letter_task
        if waiting and (task is None or task.done()):
            self._dead_letter_task = asyncio.get_running_loop().create_task(
                self._send_dead_letters(), name=f"egressd-{self.name}-dead-letters"
            )

    async def _send_dead_letters(self) -> None:
        while self._dead_letters_waiting and self._producer is not None:
            failed, self._dead_letters_waiting = self._dead_letters_waiting, []
            try:
                await self._dead_letter(failed)
            except asyncio.CancelledError:  # stopped while copying: counted as not copied
                self.stats.drop("dead_letter_failed", len(failed))
                raise

    async def _dead_letter(self, failed: list[tuple[Any, str]], producer: Any = None) -> None:
        """Copies undecodable messages to the dead-letter topic, with where they came from
        (through ``producer`` when given: the ingest role shares its own)."""
        producer = producer or self._producer
        topic = self.config.dead_letter_topic
        if time.monotonic() < self._dead_letter_retry:
            # The last copy failed: the cluster's ingest role waits for its copies (they
            # go in the transaction with its offsets), and each attempt at a topic that
            # cannot be reached took _DEAD_LETTER_TIMEOUT, so one bad message a fetch let
            # the good ones through at one fetch per 10 s.
            self.stats.drop("dead_letter_failed", len(failed))
            return
        try:
            # Sending waits for the topic's metadata and room in the producer's buffer (up
            # to request_timeout_ms each): the whole copy is bounded, not only its acks.
            async with asyncio.timeout(_DEAD_LETTER_TIMEOUT):
                futures = [
                    await producer.send(
                        topic,
                        value=message.value,
                        key=message.key,
                        headers=[
                            ("egressd-reason", reason.encode()),
                            ("egressd-topic", message.topic.encode()),
                            ("egressd-partition", str(message.partition).encode()),
                            ("egressd-offset", str(message.offset).encode()),
                        ],
                    )
                    for message, reason in failed
                ]
                await asyncio.gather(*futures)
        except Exception as exc:  # dead letters must not block the partition
            self.stats.drop("dead_letter_failed", len(failed))
            first, last = DEAD_LETTER_PAUSES
            self._dead_letter_pause = min(last, max(first, 2 * self._dead_letter_pause))
            self._dead_letter_retry = time.monotonic() + self._dead_letter_pause
            log.warning(
                "%s: dead-letter copy of %d messages failed: %s; copies are dropped, counted, "
                "for %ds",
                self.name,
                len(failed),
                exc or type(exc).__name__,
                int(self._dead_letter_pause),
            )
            return
        self._dead_letter_pause = 0.0
        self.dead_letters += len(failed)

    # -- rebalancing ------------------------------------------------------------------------------

    async def _on_revoked(self, revoked: list[TopicPartition]) -> None:
        if not revoked:
            return
        self.rebalances += 1
        # Submitted offsets stay in _submitted, so the next saved state holds them. Commit
        # them now, while this member still owns the partitions, if the daemon can save.
        if self.request_checkpoint is not None and not self._stopping:
            try:
                await asyncio.wait_for(self.request_checkpoint(), self.config.rebalance_timeout / 2)
            except Exception:
                log.warning("%s: checkpoint on revoke failed; the new owner may replay", self.name)
        self._assigned = self._assigned.difference(revoked)
        log.info("%s: partitions revoked: %s", self.name, _describe(revoked))

    async def _on_assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self._consumer
        self._assigned = frozenset(assigned)
        for tp in assigned:
            saved = self._submitted.get(tp)
            if saved is None:
                continue
            try:
                committed = await consumer.committed(tp)
            except Exception as exc:  # fall back to the saved position
                log.warning("%s: reading the committed offset of %s failed: %s", self.name, tp, exc)
                committed = None
            if committed is None or saved > committed:
                # The saved state already holds these records: skip them, not count them twice.
                consumer.seek(tp, saved)
            else:
                # Another member went further; the group's offset is the truth now.
                self._submitted[tp] = committed
        log.info("%s: partitions assigned: %s", self.name, _describe(assigned) or "none")


def _describe(tps: Iterable[TopicPartition]) -> str:
    return ",".join(sorted(_position_key(tp) for tp in tps))
