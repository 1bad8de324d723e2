"""KafkaSource against a fake consumer: batching, positions, commits, poison, retries, security.

The fake stands in for AIOKafkaConsumer behind the one seam (``consumer_factory``); the
broker-backed tests are in test_kafka_broker.py.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaConnectionError, SaslAuthenticationFailed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_decode_columns import _comparable, _lines

import egressd.sources.kafka as kafka_module
from egressd.columns import FlowColumns
from egressd.config import KafkaSourceConfig, parse_config
from egressd.decode.goflow2 import encode_goflow2_protobuf
from egressd.errors import ConfigError, DecodeError
from egressd.model import FlowRecord
from egressd.sources.kafka import KafkaSource, decode_goflow2_protobuf_message, message_decoder

T0 = 1_772_000_000  # epoch seconds, 2026-02-25


def goflow2_json(i: int, *, dst: str = "8.8.8.8", nbytes: int = 1000) -> bytes:
    """A goflow2 ≥2 JSON record, written the way goflow2 writes it."""
    return orjson.dumps(
        {
            "type": "NETFLOW_V9",
            "time_received_ns": (T0 + i) * 10**9,
            "sequence_num": i,
            "sampling_rate": 0,
            "sampler_address": "192.0.2.1",
            "time_flow_start_ns": (T0 + i) * 10**9,
            "time_flow_end_ns": (T0 + i + 1) * 10**9,
            "bytes": nbytes,
            "packets": 3,
            "src_addr": f"10.20.{i // 250 % 250}.{i % 250 + 1}",
            "dst_addr": dst,
            "etype": "IPv4",
            "proto": "TCP",
            "src_port": 40000 + i % 1000,
            "dst_port": 443,
        }
    )


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None


class FakeConsumer:
    """Just enough of AIOKafkaConsumer: a log per partition, positions, commits, a listener."""

    def __init__(self, partitions: dict[TopicPartition, list[bytes | None]]) -> None:
        self.log = partitions
        self.options: list[dict[str, Any]] = []
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.commit_calls: list[dict[TopicPartition, int]] = []
        self.positions: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.listener: ConsumerRebalanceListener | None = None
        self.assignment_pending: list[TopicPartition] | None = None
        self.assigned: list[TopicPartition] = []
        self.start_failures = 0
        self.start_attempts: list[float] = []
        self.getmany_calls: list[int] = []
        self.in_submit = False
        self.fetched_during_submit = False
        self.commit_error: BaseException | None = None
        self.commit_delay = 0.0
        self.stopped = False

    def __call__(self, **options: Any) -> FakeConsumer:
        self.options.append(options)
        return self

    async def start(self) -> None:
        self.start_attempts.append(time.monotonic())
        if self.start_failures:
            self.start_failures -= 1
            raise KafkaConnectionError("Unable to bootstrap from [('127.0.0.1', 1, 0)]")

    async def stop(self) -> None:
        self.stopped = True

    def subscribe(self, topics: Sequence[str], listener: ConsumerRebalanceListener) -> None:
        assert isinstance(listener, ConsumerRebalanceListener)
        self.listener = listener
        self.assignment_pending = [tp for tp in self.log if tp.topic in topics]

    async def rebalance(self, assigned: list[TopicPartition]) -> None:
        assert self.listener is not None
        await self.listener.on_partitions_revoked(list(self.assigned))
        self.assigned = assigned
        for tp in assigned:
            self.positions[tp] = self.committed_offsets.get(tp, 0)
        await self.listener.on_partitions_assigned(list(assigned))

    async def getmany(
        self, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[Message]]:
        if self.in_submit:
            self.fetched_during_submit = True
        self.getmany_calls.append(max_records)
        if self.assignment_pending is not None:
            pending, self.assignment_pending = self.assignment_pending, None
            await self.rebalance(pending)
        out: dict[TopicPartition, list[Message]] = {}
        budget = max_records
        for tp in self.assigned:
            position = self.positions[tp]
            values = self.log[tp][position : position + budget]
            if values:
                out[tp] = [
                    Message(tp.topic, tp.partition, position + k, v) for k, v in enumerate(values)
                ]
                self.positions[tp] = position + len(values)
                budget -= len(values)
            if not budget:
                break
        if not out:
            await asyncio.sleep(timeout_ms / 1000 / 50)
        return out

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.positions[tp] = offset

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.commit_delay:
            await asyncio.sleep(self.commit_delay)
        if self.commit_error is not None:
            raise self.commit_error
        for tp in offsets:
            assert tp in self.assigned, f"commit of unassigned {tp}"
        self.commit_calls.append(dict(offsets))
        self.committed_offsets.update(offsets)

    def highwater(self, tp: TopicPartition) -> int | None:
        return len(self.log[tp]) if tp in self.positions else None


class Sink:
    def __init__(self, consumer: FakeConsumer | None = None) -> None:
        self.batches: list[list[FlowRecord]] = []
        self.consumer = consumer

    def submit(self, records: Sequence[FlowRecord]) -> None:
        if self.consumer is not None:
            self.consumer.in_submit = True
        self.batches.append(list(records))
        if self.consumer is not None:
            self.consumer.in_submit = False

    @property
    def records(self) -> list[FlowRecord]:
        return [r for batch in self.batches for r in batch]


def config(**overrides: Any) -> KafkaSourceConfig:
    return KafkaSourceConfig(
        bootstrap_servers=("127.0.0.1:9092",), topics=("flows",), group_id="g", **overrides
    )


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        await asyncio.sleep(0.005)


TP0 = TopicPartition("flows", 0)
TP1 = TopicPartition("flows", 1)


async def test_batches_are_decoded_submitted_and_positioned() -> None:
    values = {
        TP0: [goflow2_json(i) for i in range(0, 700, 2)],
        TP1: [goflow2_json(i) for i in range(1, 700, 2)],
    }
    fake = FakeConsumer(dict(values))
    sink = Sink(fake)
    source = KafkaSource(config(max_batch=100), "kafka:flows", consumer_factory=fake)
    await source.start(sink)
    await wait_for(lambda: len(sink.records) == 700)
    await source.stop()
    # every message once, each batch no larger than max_batch, the next fetch only after submit
    assert sorted(r.src_port for r in sink.records) == sorted(40000 + i % 1000 for i in range(700))
    assert max(len(b) for b in sink.batches) <= 100
    assert set(fake.getmany_calls) == {100}
    assert not fake.fetched_during_submit
    assert source.checkpoint_position() == {"flows:0": 350, "flows:1": 350}
    expected_bytes = sum(len(v) for vs in values.values() for v in vs)
    assert source.bytes_consumed == expected_bytes
    assert source.records_consumed == source.stats.units == 700
    assert source.stats.records == 700
    options = fake.options[0]
    assert options["enable_auto_commit"] is False
    assert options["group_id"] == "g"
    assert options["session_timeout_ms"] == 10_000
    assert fake.stopped


async def test_checkpoint_saved_commits_exactly_the_saved_offsets_of_owned_partitions() -> None:
    fake = FakeConsumer(
        {TP0: [goflow2_json(i) for i in range(10)], TP1: [goflow2_json(i) for i in range(4)]}
    )
    sink = Sink()
    source = KafkaSource(config(), "k", consumer_factory=fake)
    await source.start(sink)
    await wait_for(lambda: len(sink.records) == 14)
    saved = source.checkpoint_position()
    # the saved position names a partition this member does not own: it must not be committed
    await source.checkpoint_saved({**saved, "other:3": 99})
    assert fake.commit_calls == [{TP0: 10, TP1: 4}]
    # a position older than what was consumed commits exactly that, not the consumer's position
    await source.checkpoint_saved({"flows:0": 5})
    assert fake.commit_calls[-1] == {TP0: 5}
    await source.stop()
    assert source.commits == 2


async def test_commit_failures_and_hangs_are_counted_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka_module, "_COMMIT_TIMEOUT", 0.1)
    fake = FakeConsumer({TP0: [goflow2_json(i) for i in range(3)]})
    sink = Sink()
    source = KafkaSource(config(), "k", consumer_factory=fake)
    await source.start(sink)
    await wait_for(lambda: len(sink.records) == 3)
    fake.commit_error = KafkaConnectionError("broker gone")
    await source.checkpoint_saved(source.checkpoint_position())
    fake.commit_error = None
    fake.commit_delay = 1.0
    await source.checkpoint_saved(source.checkpoint_position())
    await source.stop()
    assert source.commit_failures == 2
    assert source.commits == 0
    assert fake.commit_calls == []


@pytest.mark.parametrize(
    ("saved", "committed", "expected_seek", "expected_start"),
    [(7, 3, 7, 7), (3, 7, None, 7), (5, None, 5, 5)],
)
async def test_restored_position_wins_only_when_ahead_of_the_group(
    saved: int, committed: int | None, expected_seek: int | None, expected_start: int
) -> None:
    fake = FakeConsumer({TP0: [goflow2_json(i) for i in range(10)]})
    if committed is not None:
        fake.committed_offsets[TP0] = committed
    sink = Sink()
    source = KafkaSource(config(), "k", consumer_factory=fake)
    source.restore_position({"flows:0": saved, "bogus": 1, "flows:x": 2, "flows:1": -1})
    await source.start(sink)
    await wait_for(lambda: source.checkpoint_position().get("flows:0") == 10)
    await source.stop()
    assert fake.seeks == ([] if expected_seek is None else [(TP0, expected_seek)])
    assert [r.src_port for r in sink.records] == [40000 + i for i in range(expected_start, 10)]


async def test_poison_messages_are_counted_skipped_and_do_not_block_the_partition() -> None:
    poison = [
        b"{not json",
        b"[1,2]",
        b'{"src_addr": "10.0.0.1"}',
        None,
        encode_goflow2_protobuf(
            src_addr="10.0.0.1", dst_addr="8.8.8.8", bytes=1, packets=1, time_flow_end_ns=T0 * 10**9
        ),
    ]
    log: list[bytes | None] = [goflow2_json(0), *poison, goflow2_json(1)]
    fake = FakeConsumer({TP0: log})
    sink = Sink()
    source = KafkaSource(config(), "k", consumer_factory=fake)
    await source.start(sink)
    await wait_for(lambda: source.checkpoint_position().get("flows:0") == len(log))
    await source.stop()
    assert [r.src_port for r in sink.records] == [40000, 40001]
    # reasons as the decoder names them, computed independently here
    reasons = []
    for value in poison:
        if not value:
            continue
        try:
            kafka_module.decode_goflow2_json(value)
        except DecodeError as exc:
            reasons.append(exc.reason)
    assert sum(source.stats.decode_errors.values()) == 4
    assert sorted(source.stats.decode_errors.elements()) == sorted(reasons)
    assert source.stats.dropped["empty_message"] == 1


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, list[tuple[str, bytes]]]] = []
        self.options: dict[str, Any] = {}

    def __call__(self, **options: Any) -> FakeProducer:
        self.options = options
        return self

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[None]:
        self.sent.append((topic, value, headers))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def test_poison_messages_go_to_the_dead_letter_topic() -> None:
    fake = FakeConsumer({TP0: [goflow2_json(0), b"garbage", goflow2_json(1)]})
    producer = FakeProducer()
    sink = Sink()
    source = KafkaSource(
        config(dead_letter_topic="flows-dead"),
        "k",
        consumer_factory=fake,
        producer_factory=producer,
    )
    await source.start(sink)
    await wait_for(lambda: source.checkpoint_position().get("flows:0") == 3)
    await source.stop()
    assert len(sink.records) == 2
    assert producer.options["enable_idempotence"] is False
    [(topic, value, headers)] = producer.sent
    assert (topic, value) == ("flows-dead", b"garbage")
    assert dict(headers) == {
        "egressd-reason": b"bad_json",
        "egressd-topic": b"flows",
        "egressd-partition": b"0",
        "egressd-offset": b"1",
    }
    assert source.dead_letters == 1


class HangingProducer(FakeProducer):
    """``send`` waits as aiokafka's does for the metadata of a topic it cannot reach (up to
    ``request_timeout_ms``, 40 s by default): here, until the test ends."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = 0

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]
    ) -> asyncio.Future[None]:
        self.waiting += 1
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_an_unreachable_dead_letter_topic_does_not_hold_up_the_flows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The consumer waited for each dead-letter copy, and aiokafka's send waits up to 40 s
    # for an unreachable topic's metadata: one bad message per fetch held every good one
    # behind it from the engine for that long (here, for as long as the copy hung). Now the
    # copies go out beside the consumer, a bounded backlog of them.
    monkeypatch.setattr(kafka_module, "DEAD_LETTER_BACKLOG", 10)
    values: list[bytes | None] = []
    for i in range(40):
        values += [b"garbage", goflow2_json(i)]
    fake = FakeConsumer({TP0: values})
    producer = HangingProducer()
    sink = Sink()
    source = KafkaSource(
        config(dead_letter_topic="flows-dead", max_batch=2),
        "k",
        consumer_factory=fake,
        producer_factory=producer,
    )
    monkeypatch.setattr(kafka_module, "_DEAD_LETTER_TIMEOUT", 0.5)
    await source.start(sink)
    await wait_for(lambda: len(sink.records) == 40)
    assert source.checkpoint_position() == {"flows:0": 80}
    assert producer.waiting >= 1
    assert source.stats.dropped["dead_letter_failed"] >= 40 - 10 - 1  # over the backlog
    await source.stop()
    assert source.stats.dropped["dead_letter_failed"] == 40  # none copied: all counted
    assert source.dead_letters == 0


async def test_a_dead_letter_topic_that_could_not_be_reached_is_not_tried_at_every_fetch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The cluster's ingest role waits for its dead-letter copies (they go in the transaction
    # with its input offsets), and each copy to a topic that could not be reached took
    # _DEAD_LETTER_TIMEOUT (10 s): a producer writing one bad message a fetch let the good
    # ones through at one fetch per 10 s. After a failed copy, copies are dropped (counted)
    # without trying for DEAD_LETTER_PAUSES[0], doubled while they keep failing.
    import types
    from dataclasses import make_dataclass

    clock = [1000.0]
    fake_time = types.SimpleNamespace(monotonic=lambda: clock[0])
    monkeypatch.setattr(kafka_module, "time", fake_time, raising=False)
    monkeypatch.setattr(kafka_module, "_DEAD_LETTER_TIMEOUT", 0.01)
    message = make_dataclass("Message", ["value", "key", "topic", "partition", "offset"])
    failed = [(message(b"garbage", None, "flows", 0, 7), "bad_json")]
    source = KafkaSource(config(dead_letter_topic="flows-dead"), "k")
    hanging, working = HangingProducer(), FakeProducer()
    first, last = getattr(kafka_module, "DEAD_LETTER_PAUSES", (30.0, 600.0))
    await source.dead_letter(failed, hanging)
    assert hanging.waiting == 1 and source.stats.dropped["dead_letter_failed"] == 1
    for _ in range(5):  # fetches during the pause: no attempt, no wait
        await source.dead_letter(failed, hanging)
    assert hanging.waiting == 1 and source.stats.dropped["dead_letter_failed"] == 6
    clock[0] += first
    await source.dead_letter(failed, hanging)  # tried again, fails again: a longer pause
    assert hanging.waiting == 2
    clock[0] += first
    await source.dead_letter(failed, working)
    assert not working.sent
    clock[0] += first + last
    await source.dead_letter(failed, working)
    await source.dead_letter(failed, working)  # it worked: no pause
    assert len(working.sent) == 2 and source.dead_letters == 2
    assert source.stats.dropped["dead_letter_failed"] == 8


async def test_unreachable_broker_is_retried_with_growing_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka_module, "_BACKOFF_FIRST", 0.05)
    delays: list[float] = []
    next_delay = kafka_module.Backoff.next_delay

    def recorded(backoff: kafka_module.Backoff) -> float:
        delays.append(next_delay(backoff))
        return delays[-1]

    monkeypatch.setattr(kafka_module.Backoff, "next_delay", recorded)
    fake = FakeConsumer({TP0: [goflow2_json(0)]})
    fake.start_failures = 3
    sink = Sink()
    source = KafkaSource(config(), "k", consumer_factory=fake)
    await source.start(sink)
    await asyncio.sleep(0.02)
    assert not source.ready
    await wait_for(lambda: len(sink.records) == 1, timeout=5)
    assert source.ready
    await source.stop()
    assert not source.ready
    gaps = [b - a for a, b in zip(fake.start_attempts, fake.start_attempts[1:], strict=False)]
    assert len(gaps) == len(delays) == 3
    # 0.05, 0.1, 0.2 seconds, each with ±25% jitter, each waited in full (how much longer
    # the wait lasts is up to the machine's load: no upper bound on the gaps)
    for delay, nominal in zip(delays, (0.05, 0.1, 0.2), strict=True):
        assert nominal * 0.75 <= delay <= nominal * 1.25
    for gap, delay in zip(gaps, delays, strict=True):
        assert gap >= delay - 0.002
    assert "KafkaConnectionError" in source.last_error


async def test_fatal_errors_are_mapped_and_the_source_keeps_trying(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kafka_module, "_BACKOFF_FIRST", 0.01)

    class Refusing(FakeConsumer):
        async def start(self) -> None:
            self.start_attempts.append(time.monotonic())
            raise SaslAuthenticationFailed("bad password")

    fake = Refusing({TP0: []})
    source = KafkaSource(config(), "k", consumer_factory=fake)
    await source.start(Sink())
    await wait_for(lambda: len(fake.start_attempts) >= 2)
    await source.stop()
    error = kafka_module.map_kafka_error(SaslAuthenticationFailed("x"), "connecting")
    assert error.retriable is False
    assert kafka_module.map_kafka_error(KafkaConnectionError("x"), "c").retriable is True
    assert "SaslAuthenticationFailed" in source.last_error


async def test_lag_comes_from_the_fetch_highwater_and_metrics_have_a_stable_shape() -> None:
    fake = FakeConsumer(
        {TP0: [goflow2_json(i) for i in range(50)], TP1: [goflow2_json(i) for i in range(20)]}
    )
    sink = Sink()
    source = KafkaSource(config(max_batch=30), "kafka:flows", consumer_factory=fake)
    await source.start(sink)
    await wait_for(lambda: len(sink.records) == 70)
    await source.stop()
    assert source.lag() == {}  # not connected: no lag to report
    # the broker's highwater moves on; lag is highwater minus what was submitted
    fake.log[TP0].extend(goflow2_json(i) for i in range(8))
    fake.log[TP1].append(goflow2_json(0))
    source._consumer = fake  # inspect as if still connected
    source._assigned = frozenset({TP0, TP1})
    assert source.lag() == {("flows", 0): 8, ("flows", 1): 1}
    metrics = {
        (name, tuple(sorted(labels.items()))): value
        for name, labels, value in source.extra_metrics()
    }
    assert metrics[("egressd_kafka_messages_total", (("source", "kafka:flows"),))] == 70
    assert (
        metrics[
            (
                "egressd_kafka_lag_messages",
                (("partition", "0"), ("source", "kafka:flows"), ("topic", "flows")),
            )
        ]
        == 8
    )
    assert all(isinstance(v, float) for v in metrics.values())


async def test_revoke_asks_the_daemon_for_a_checkpoint_while_partitions_are_still_owned() -> None:
    fake = FakeConsumer(
        {TP0: [goflow2_json(i) for i in range(5)], TP1: [goflow2_json(i) for i in range(5)]}
    )
    sink = Sink()
    source = KafkaSource(config(), "k", consumer_factory=fake)
    saves: list[dict[str, int]] = []

    async def checkpoint() -> None:
        position = source.checkpoint_position()
        saves.append(position)
        await source.checkpoint_saved(position)

    source.request_checkpoint = checkpoint
    await source.start(sink)
    await wait_for(lambda: len(sink.records) == 10)
    await fake.rebalance([TP1])  # TP0 goes to another member
    assert fake.commit_calls == [{TP0: 5, TP1: 5}]
    assert source.rebalances == 1
    await source.stop()
    assert len(saves) == 2  # revoke, and the final one on stop


async def test_rebalance_to_a_partition_another_member_advanced_follows_the_group() -> None:
    fake = FakeConsumer({TP0: [goflow2_json(i) for i in range(6)]})
    sink = Sink()
    source = KafkaSource(config(), "k", consumer_factory=fake)
    await source.start(sink)
    await wait_for(lambda: len(sink.records) == 6)
    fake.log[TP0].extend(goflow2_json(i) for i in range(6, 12))
    await fake.rebalance([])
    fake.committed_offsets[TP0] = 9  # another member consumed and committed up to 9
    await fake.rebalance([TP0])
    await wait_for(lambda: source.checkpoint_position() == {"flows:0": 12})
    await source.stop()
    assert [r.src_port - 40000 for r in sink.records] == [0, 1, 2, 3, 4, 5, 9, 10, 11]


# --------------------------------------------------------------------------- formats


def test_protobuf_messages_with_and_without_length_prefix() -> None:
    fields = {
        "src_addr": "10.20.0.7",
        "dst_addr": "2001:db8::1",
        "bytes": 1500,
        "packets": 2,
        "sampling_rate": 10,
        "time_flow_start_ns": T0 * 10**9,
        "time_flow_end_ns": (T0 + 5) * 10**9,
        "proto": 17,
        "src_port": 5353,
        "dst_port": 53,
    }
    bare = encode_goflow2_protobuf(**fields)  # type: ignore[arg-type]
    prefixed = encode_goflow2_protobuf(**fields, delimited=True)  # type: ignore[arg-type]
    assert prefixed != bare and prefixed.endswith(bare)
    expected = FlowRecord(T0, T0 + 5, "10.20.0.7", "2001:db8::1", 15000, 20, 17, 5353, 53, "")
    assert decode_goflow2_protobuf_message(bare) == [expected]
    assert decode_goflow2_protobuf_message(prefixed) == [expected]
    assert decode_goflow2_protobuf_message(prefixed + prefixed) == [expected, expected]
    with pytest.raises(DecodeError):
        decode_goflow2_protobuf_message(b"\x0a\x05abc")


def test_pmacct_messages_may_pack_several_lines_and_purge_markers_are_skipped() -> None:
    decode = message_decoder("pmacct-json")
    line = {
        "event_type": "purge",
        "ip_src": "10.20.0.1",
        "ip_dst": "8.8.8.8",
        "port_src": 1000,
        "port_dst": 443,
        "ip_proto": "tcp",
        "packets": 2,
        "bytes": 300,
        "timestamp_start": "2026-03-02 10:00:00.000000",
        "timestamp_end": "2026-03-02 10:00:05.000000",
    }
    marker = {"event_type": "purge_init", "seq": 1, "timestamp": "2026-03-02 10:00:00"}
    packed = b"\n".join(
        [orjson.dumps(marker), orjson.dumps(line), orjson.dumps({**line, "bytes": 700}), b""]
    )
    records = decode(packed)
    assert [r.bytes for r in records] == [300, 700]
    assert records[0].src == "10.20.0.1" and records[0].dst_port == 443
    assert decode(orjson.dumps(marker)) == []


def test_egressd_json_messages() -> None:
    decode = message_decoder("egressd-json")
    [record] = decode(
        orjson.dumps({"time_end": T0, "src": "10.20.0.1", "dst": "1.1.1.1", "bytes": 42})
    )
    assert (record.src, record.dst, record.bytes, record.time_end) == (
        "10.20.0.1",
        "1.1.1.1",
        42,
        T0,
    )
    with pytest.raises(ValueError):
        message_decoder("csv")


# --------------------------------------------------------------------------- security


async def test_sasl_password_comes_from_its_file_and_is_never_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka_module, "_BACKOFF_FIRST", 0.01)
    secret = tmp_path / "password"
    secret.write_text("s3cr3t-Pa55\n")
    fake = FakeConsumer({TP0: []})
    fake.start_failures = 2
    cfg = config(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="egressd",
        sasl_password_file=secret,
    )
    source = KafkaSource(cfg, "k", consumer_factory=fake)
    with caplog.at_level(logging.DEBUG):
        await source.start(Sink())
        await wait_for(lambda: source.ready)
        await source.stop()
    options = fake.options[-1]
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "egressd"
    assert options["sasl_plain_password"] == "s3cr3t-Pa55"
    assert "s3cr3t" not in caplog.text
    assert "s3cr3t" not in source.last_error


async def test_tls_context_is_built_from_the_configured_files(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    key, cert = tmp_path / "client.key", tmp_path / "client.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=egressd-test",
            "-days",
            "1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    fake = FakeConsumer({TP0: []})
    cfg = config(security_protocol="SSL", tls_ca_file=cert, tls_cert_file=cert, tls_key_file=key)
    source = KafkaSource(cfg, "k", consumer_factory=fake)
    await source.start(Sink())
    await wait_for(lambda: source.ready)
    await source.stop()
    context = fake.options[0]["ssl_context"]
    assert context.verify_mode.name == "CERT_REQUIRED"
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "egressd-test"),),)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            'security_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\nsasl_password_file = "{pw}"',
            "sasl_username",
        ),
        (
            'security_protocol = "SASL_SSL"\nsasl_mechanism = "PLAIN"\nsasl_username = "u"',
            "sasl_password_file",
        ),
        ('security_protocol = "SSL"\ntls_cert_file = "{pw}"', "tls_key_file"),
        ('tls_ca_file = "{pw}"', "security_protocol"),
        ('session_timeout = "2s"\nheartbeat_interval = "3s"', "heartbeat_interval"),
    ],
)
def test_check_config_rejects_incomplete_security_settings(
    tmp_path: Path, extra: str, message: str
) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    text = (
        '[[sources.kafka]]\nbootstrap_servers = ["127.0.0.1:9092"]\ntopics = ["flows"]\n'
        + extra.format(pw=secret)
        + "\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "egressd.toml")
    assert message in str(caught.value)


async def test_several_json_lines_in_one_message_all_or_nothing() -> None:
    good = [goflow2_json(i) for i in range(3)]
    log: list[bytes | None] = [
        b"\n".join(good) + b"\n",  # three records in one message
        good[0] + b"\n{broken\n",  # a bad line fails the whole message
        goflow2_json(7),
    ]
    fake = FakeConsumer({TP0: log})
    sink = Sink()
    source = KafkaSource(config(), "k", consumer_factory=fake)
    await source.start(sink)
    await wait_for(lambda: source.checkpoint_position().get("flows:0") == 3)
    await source.stop()
    assert [r.src_port - 40000 for r in sink.records] == [0, 1, 2, 7]
    assert dict(source.stats.decode_errors) == {"bad_json": 1}
    assert source.stats.records == 4 and source.stats.units == 3


class ColumnSink(Sink):
    """A sink that takes columns too, as the daemon's engine feed does."""

    def __init__(self) -> None:
        super().__init__()
        self.column_batches = 0

    def submit_columns(self, columns: FlowColumns) -> None:
        self.column_batches += 1
        self.batches.append(columns.to_records())


def _flows(records: list[FlowRecord]) -> list[tuple[Any, ...]]:
    # Columns carry one exporter per batch: compare the rest.
    return [
        (
            r.time_start,
            r.time_end,
            r.src,
            r.dst,
            r.bytes,
            r.packets,
            r.proto,
            r.src_port,
            r.dst_port,
        )
        for r in records
    ]


async def _consume(
    log: dict[TopicPartition, list[bytes | None]], sink: Sink
) -> tuple[KafkaSource, list[bytes | None]]:
    """Consume ``log`` into ``sink``; the source and the values dead-lettered."""
    producer = FakeProducer()
    source = KafkaSource(
        config(dead_letter_topic="dead", max_batch=7),
        "k",
        consumer_factory=FakeConsumer(log),
        producer_factory=producer,
    )
    await source.start(sink)
    await wait_for(
        lambda: all(
            source.checkpoint_position().get(f"flows:{tp.partition}") == len(values)
            for tp, values in log.items()
        )
    )
    await source.stop()
    return source, [value for _, value, _ in producer.sent]


@pytest.mark.parametrize("with_odd_messages", [False, True])
async def test_json_fetches_decode_to_columns_as_to_records(with_odd_messages: bool) -> None:
    """A sink that takes columns gets the flows, counters and dead letters of the record
    path; a fetch with an empty or multi-line message goes the record path whole."""
    good = [goflow2_json(i) for i in range(40)]
    poison = [b"{not json", b"[1,2]", b'{"src_addr": "10.0.0.1"}', b"  ", goflow2_json(1)[:-1]]
    odd = [None, b"", b"\n".join(good[:3])] if with_odd_messages else []
    log: dict[TopicPartition, list[bytes | None]] = {
        TP0: [*good[:20], *poison, *odd, *good[20:30]],
        TP1: [*good[30:], poison[0], *good[:5]],
    }
    record_sink = Sink()
    records, record_letters = await _consume(log, record_sink)
    column_sink = ColumnSink()
    columns, column_letters = await _consume(log, column_sink)
    assert _flows(column_sink.records) == _flows(record_sink.records)
    assert len(record_sink.records) == 45 + 3 * with_odd_messages
    assert column_sink.column_batches > 0
    assert (columns.stats.units, columns.stats.records) == (
        records.stats.units,
        records.stats.records,
    )
    assert columns.stats.decode_errors == records.stats.decode_errors
    assert columns.stats.dropped == records.stats.dropped
    assert column_letters == record_letters
    assert (columns.records_consumed, columns.bytes_consumed) == (
        records.records_consumed,
        records.bytes_consumed,
    )
    assert sum(records.stats.decode_errors.values()) == 6


@dataclass
class _Fetched:
    value: bytes
    offset: int
    key: bytes | None = None


@pytest.mark.parametrize("fmt", ["goflow2-json", "pmacct-json", "egressd-json"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_fetch_decodes_to_columns_as_to_records(fmt: str, data: st.DataObject) -> None:
    """The two decodings of one fetch of single-line messages, from the same source code."""
    lines = data.draw(_lines(fmt)).split(b"\n")
    values = [line for line in lines if line] or [b"{}"]
    fetch = {TP0: [_Fetched(value, offset) for offset, value in enumerate(values)]}
    records_source = KafkaSource(config(format=fmt), "records")
    records, record_failed = records_source._decode_batches(fetch)
    columns_source = KafkaSource(config(format=fmt), "columns")
    decoded = columns_source._decode_columns(fetch)
    assert decoded is not None
    columns, column_failed = decoded
    assert _comparable(columns.to_records()) == _comparable(records)  # counts saturated
    assert [(m.offset, reason) for m, reason in column_failed] == [
        (m.offset, reason) for m, reason in record_failed
    ]
    for field in ("units", "records", "decode_errors", "dropped"):
        assert getattr(columns_source.stats, field) == getattr(records_source.stats, field)
    assert (columns_source.records_consumed, columns_source.bytes_consumed) == (
        records_source.records_consumed,
        records_source.bytes_consumed,
    )


async def test_a_fetch_of_large_messages_is_decoded_a_piece_at_a_time() -> None:
    # Before: a whole fetch was decoded in one go on the event loop. One message may hold
    # thousands of flow lines (about 0.1 s to decode a megabyte), and a fetch holds up to
    # max_batch messages (up to the consumer's 50 MB fetch limit): a producer writing
    # megabyte messages stopped the loop (HTTP, state saves, the watchdog, other sources)
    # for seconds per fetch. Now at most about a megabyte is decoded per turn of the loop.
    line = goflow2_json(1)
    per_message = 1_000_000 // (len(line) + 1)
    value = b"\n".join([line] * per_message)
    fake = FakeConsumer({TP0: [value] * 8})
    events: list[str] = []

    class Recording(Sink):
        def submit(self, records: Sequence[FlowRecord]) -> None:
            events.append("submit")
            super().submit(records)

    async def ticker() -> None:
        while True:
            events.append("tick")
            await asyncio.sleep(0)

    sink = Recording()
    source = KafkaSource(config(max_batch=100), "kafka:flows", consumer_factory=fake)
    ticking = asyncio.create_task(ticker())
    await source.start(sink)
    await wait_for(lambda: len(sink.records) == 8 * per_message, timeout=120)
    await source.stop()
    ticking.cancel()
    submits = [index for index, event in enumerate(events) if event == "submit"]
    assert len(fake.getmany_calls) >= 1 and len(submits) >= 4
    assert all("tick" in events[a:b] for a, b in pairwise(submits))
    assert source.checkpoint_position() == {"flows:0": 8}
