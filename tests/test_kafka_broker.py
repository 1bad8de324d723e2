"""KafkaSource against a real broker (Tansu): delivery, commits, crashes, outages, groups, formats.

Skipped when the broker binary is missing, unless EGRESSD_REQUIRE_INTEGRATION=1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from kafka_support import (
    EXFIL_CONFIG,
    FLOW_T0,
    MotoS3,
    TansuBroker,
    broker_or_skip,
    committed_offsets,
    create_topic,
    goflow2_record,
    kafka_config,
    produce,
    unique,
)

from egressd.baseline.seasonal import stored_keys
from egressd.baseline.statefile import load_state
from egressd.config import parse_config
from egressd.decode.goflow2 import encode_goflow2_protobuf
from egressd.model import FlowRecord
from egressd.pipeline import Engine
from egressd.replay import build_labeler
from egressd.sources.kafka import KafkaSource

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    running = broker_or_skip(tmp_path_factory.mktemp("tansu"))
    yield running
    running.stop()


class CollectingSink:
    def __init__(self, delay: float = 0.0) -> None:
        self.records: list[FlowRecord] = []
        self.delay = delay

    def submit(self, records: Sequence[FlowRecord]) -> None:
        self.records.extend(records)
        if self.delay:
            time.sleep(self.delay)  # a slow engine: the consumer must wait, not buffer


async def eventually(predicate: Any, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def sources() -> AsyncIterator[list[KafkaSource]]:
    started: list[KafkaSource] = []
    yield started
    for source in started:
        await source.stop()


# --------------------------------------------------------------------------- (b) exfil → alert


async def test_goflow2_exfiltration_on_a_topic_pages(
    broker: TansuBroker, sources: list[KafkaSource]
) -> None:
    topic = unique("flows")
    await create_topic(broker.bootstrap, topic, partitions=2)
    values = []
    # Normal egress to the US for an hour, then 3 GB to a Chinese address in ten minutes.
    for i in range(120):
        values.append(goflow2_record(i, dst="8.8.8.8", nbytes=2_000_000, t=FLOW_T0 + i * 30))
    for i in range(20):
        values.append(
            goflow2_record(
                1000 + i,
                src="10.20.0.17",
                dst="47.100.23.45",
                nbytes=150_000_000,
                t=FLOW_T0 + 3600 + i * 30,
            )
        )
    # later traffic moves event time on so the intervals close
    for i in range(20):
        values.append(
            goflow2_record(2000 + i, dst="8.8.8.8", nbytes=1_000_000, t=FLOW_T0 + 4800 + i * 60)
        )
    assert await produce(broker.bootstrap, topic, values, partitions=1) == len(values)

    config = parse_config(EXFIL_CONFIG)
    engine = Engine(config, build_labeler(config))
    alerts: list[dict[str, Any]] = []

    class EngineSink:
        def submit(self, records: Sequence[FlowRecord]) -> None:
            alerts.extend(alert.event() for alert in engine.process(records))

    source = KafkaSource(kafka_config(broker.bootstrap, [topic], unique("g")), f"kafka:{topic}")
    sources.append(source)
    await source.start(EngineSink())
    await eventually(lambda: engine.stats.records == len(values), what="all records")
    firing = [a for a in alerts if a["status"] == "firing"]
    assert [a["labels"]["alertname"] for a in firing] == ["EgressUnexpectedDestination"]
    [alert] = firing
    assert alert["labels"]["group"] == "research"
    assert alert["labels"]["dst_country"] == "CN"
    assert "10.20.0.17" in alert["annotations"]["top_sources"]
    assert "47.100.23.45" in alert["annotations"]["top_destinations"]
    assert source.ready


# --------------------------------------------------------------------------- commits and lag


async def test_checkpoint_commits_what_was_saved_and_lag_follows_the_highwater(
    broker: TansuBroker, sources: list[KafkaSource]
) -> None:
    topic, group = unique("flows"), unique("g")
    await create_topic(broker.bootstrap, topic, partitions=2)
    await produce(broker.bootstrap, topic, [goflow2_record(i) for i in range(300)], partitions=2)
    sink = CollectingSink()
    source = KafkaSource(kafka_config(broker.bootstrap, [topic], group), f"kafka:{topic}")
    sources.append(source)
    await source.start(sink)
    await eventually(lambda: len(sink.records) == 300)
    position = source.checkpoint_position()
    assert position == {f"{topic}:0": 150, f"{topic}:1": 150}
    await source.checkpoint_saved(position)
    assert await committed_offsets(broker.bootstrap, topic, group, 2) == [150, 150]
    await eventually(lambda: source.lag() == {(topic, 0): 0, (topic, 1): 0}, what="zero lag")
    assert source.records_consumed == 300
    assert source.bytes_consumed == sum(len(goflow2_record(i)) for i in range(300))


# --------------------------------------------------------------------------- (f) poison


async def test_poison_messages_are_skipped_counted_and_dead_lettered(
    broker: TansuBroker, sources: list[KafkaSource]
) -> None:
    topic, dead = unique("flows"), unique("dead")
    await create_topic(broker.bootstrap, topic, partitions=1)
    await create_topic(broker.bootstrap, dead, partitions=1)
    values = []
    poison = {5: b"{truncated", 6: b'"a string"', 50: b'{"dst_addr": "8.8.8.8"}'}
    for i in range(100):
        values.append(poison.get(i, goflow2_record(i)))
    await produce(broker.bootstrap, topic, values)
    sink = CollectingSink()
    cfg = kafka_config(broker.bootstrap, [topic], unique("g"), dead_letter_topic=dead)
    source = KafkaSource(cfg, f"kafka:{topic}")
    sources.append(source)
    await source.start(sink)
    await eventually(lambda: source.checkpoint_position().get(f"{topic}:0") == 100)
    assert sorted(r.src_port for r in sink.records) == [i for i in range(100) if i not in poison]
    assert sum(source.stats.decode_errors.values()) == 3
    await eventually(lambda: source.dead_letters == 3)  # copied beside the consumer

    consumer = AIOKafkaConsumer(
        dead, bootstrap_servers=broker.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        copies: list[Any] = []
        deadline = time.monotonic() + 20
        while len(copies) < 3 and time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                copies.extend(batch)
    finally:
        await consumer.stop()
    assert sorted((int(dict(m.headers)["egressd-offset"]), m.value) for m in copies) == sorted(
        poison.items()
    )
    assert {dict(m.headers)["egressd-topic"] for m in copies} == {topic.encode()}


# --------------------------------------------------------------------------- (e) groups


async def test_two_members_of_one_group_split_the_partitions(
    broker: TansuBroker, sources: list[KafkaSource]
) -> None:
    topic, group = unique("flows"), unique("g")
    await create_topic(broker.bootstrap, topic, partitions=4)
    first, second = CollectingSink(), CollectingSink()
    a = KafkaSource(kafka_config(broker.bootstrap, [topic], group), "kafka:a")
    b = KafkaSource(kafka_config(broker.bootstrap, [topic], group), "kafka:b")
    sources.extend([a, b])
    await a.start(first)
    await eventually(lambda: len(a._assigned) == 4, what="first member owns everything")
    await b.start(second)
    await eventually(
        lambda: len(a._assigned) == 2 and len(b._assigned) == 2, timeout=40, what="an even split"
    )
    assert not (a._assigned & b._assigned)
    await produce(broker.bootstrap, topic, [goflow2_record(i) for i in range(400)], partitions=4)
    await eventually(lambda: len(first.records) + len(second.records) >= 400)
    await asyncio.sleep(0.5)
    seen = Counter(r.src_port for r in first.records + second.records)
    assert seen == Counter(range(400))  # each record once, by exactly one member
    partitions_a = {tp.partition for tp in a._assigned}
    assert {r.src_port % 4 for r in first.records} == partitions_a
    assert len(first.records) == len(second.records) == 200


# --------------------------------------------------------------------------- (g) formats


async def test_protobuf_pmacct_and_egressd_json_topics(
    broker: TansuBroker, sources: list[KafkaSource]
) -> None:
    base = {"bytes": 1000, "packets": 2, "sampling_rate": 4, "proto": 6, "dst_port": 443}
    protobuf = []
    for i in range(40):
        protobuf.append(
            encode_goflow2_protobuf(
                src_addr="10.20.0.9",
                dst_addr="2001:db8::5",
                src_port=i,
                time_flow_end_ns=(FLOW_T0 + i) * 10**9,
                delimited=i % 2 == 0,  # goflow2 prefixes; other producers may not
                **base,  # type: ignore[arg-type]
            )
        )
    pmacct = [
        orjson.dumps({"event_type": "purge_init", "timestamp": "2026-03-02 10:00:00"}),
        *(
            orjson.dumps(
                {
                    "event_type": "purge",
                    "ip_src": "10.20.0.3",
                    "ip_dst": "1.1.1.1",
                    "port_src": i,
                    "port_dst": 53,
                    "ip_proto": "udp",
                    "packets": 1,
                    "bytes": 80 + i,
                    "stamp_inserted": "2026-03-02 10:00:00",
                }
            )
            for i in range(40)
        ),
    ]
    egressd = [
        orjson.dumps(
            {
                "time_end": FLOW_T0 + i,
                "src": "10.20.0.4",
                "dst": "9.9.9.9",
                "bytes": i + 1,
                "src_port": i,
            }
        )
        for i in range(40)
    ]
    expectations = {
        "goflow2-protobuf": (protobuf, [(i, 4000, "2001:db8::5") for i in range(40)]),
        "pmacct-json": (pmacct, [(i, 80 + i, "1.1.1.1") for i in range(40)]),
        "egressd-json": (egressd, [(i, i + 1, "9.9.9.9") for i in range(40)]),
    }
    for fmt, (values, expected) in expectations.items():
        topic = unique(fmt)
        await create_topic(broker.bootstrap, topic)
        await produce(broker.bootstrap, topic, values)
        sink = CollectingSink()
        source = KafkaSource(
            kafka_config(broker.bootstrap, [topic], unique("g"), format=fmt), f"kafka:{topic}"
        )
        sources.append(source)
        await source.start(sink)
        await eventually(
            lambda s=source, n=len(values), t=topic: s.checkpoint_position().get(f"{t}:0") == n  # noqa: B008
        )
        got = sorted((r.src_port, r.bytes, r.dst) for r in sink.records)
        assert got == expected, fmt
        assert not source.stats.decode_errors, fmt
        assert source.stats.dropped["skipped"] == (1 if fmt == "pmacct-json" else 0), fmt


# --------------------------------------------------------------------------- faults


async def test_unreachable_broker_at_start_is_retried_until_it_appears(
    tmp_path: Path, sources: list[KafkaSource]
) -> None:
    late = TansuBroker(tmp_path)
    topic = unique("flows")
    source = KafkaSource(kafka_config(late.bootstrap, [topic], unique("g")), f"kafka:{topic}")
    sources.append(source)
    sink = CollectingSink()
    await source.start(sink)
    await asyncio.sleep(1.5)
    assert not source.ready
    assert "connecting" in source.last_error
    late.start()
    try:
        await create_topic(late.bootstrap, topic)
        await produce(late.bootstrap, topic, [goflow2_record(i) for i in range(10)])
        await eventually(
            lambda: len(sink.records) == 10, timeout=60, what="consumption after the broker came up"
        )
        assert source.ready
    finally:
        await source.stop()
        late.stop()


async def test_broker_restart_mid_stream_loses_nothing(
    tmp_path: Path, sources: list[KafkaSource]
) -> None:
    s3 = MotoS3(tmp_path)
    s3.start("tansu")
    broker = TansuBroker(tmp_path, storage="s3://tansu/", s3=s3)
    try:
        broker.start()
        topic, group = unique("flows"), unique("g")
        await create_topic(broker.bootstrap, topic, partitions=2)
        total = 12_000
        values = [goflow2_record(i) for i in range(total)]
        await produce(broker.bootstrap, topic, values, partitions=2)
        sink = CollectingSink(delay=0.02)
        cfg = kafka_config(broker.bootstrap, [topic], group, max_batch=100)
        source = KafkaSource(cfg, f"kafka:{topic}")
        sources.append(source)

        async def checkpoints() -> None:
            while True:
                await asyncio.sleep(0.3)
                await source.checkpoint_saved(source.checkpoint_position())

        ticker = asyncio.get_running_loop().create_task(checkpoints())
        await source.start(sink)
        await eventually(lambda: len(sink.records) >= 2000, what="some records before the kill")
        broker.kill()
        at_kill = len(sink.records)
        await asyncio.sleep(2.0)
        broker.start()  # same storage: the log and the committed offsets are still there
        more = [goflow2_record(i) for i in range(total, total + 1000)]
        await produce(broker.bootstrap, topic, more, partitions=2)
        await eventually(
            lambda: len({r.src_port for r in sink.records}) == total + 1000, timeout=90, what="all"
        )
        ticker.cancel()
        await source.stop()
        assert at_kill < total, "the broker was not killed mid-stream"
        seen = Counter(r.src_port for r in sink.records)
        assert set(seen) == set(range(total + 1000))
        # one consumer that never crashed resumes at its own position: no duplicates either
        assert max(seen.values()) == 1
    finally:
        broker.stop()
        s3.stop()


# --------------------------------------------------------------------------- (c) crash


def _start_harness(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "tests")]))
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, str(REPO / "tests" / "kafka_support.py"), *args],
            stdout=out,
            stderr=out,
            env=env,
        )


async def test_sigkill_mid_stream_resumes_from_the_checkpoint_without_double_counting(
    broker: TansuBroker, tmp_path: Path
) -> None:
    topic, group = unique("flows"), unique("g")
    total = 6000
    await create_topic(broker.bootstrap, topic, partitions=2)
    # one record a second: the stream spans twenty 5-minute intervals
    values = [goflow2_record(i, nbytes=1000 + i, t=FLOW_T0 + i) for i in range(total)]
    await produce(broker.bootstrap, topic, values, partitions=2)
    expected_bytes = sum(1000 + i for i in range(total))
    config = tmp_path / "egressd.toml"
    config.write_text(EXFIL_CONFIG)
    state = tmp_path / "state.json"
    consumed = tmp_path / "consumed"
    common = [
        "--bootstrap",
        broker.bootstrap,
        "--topic",
        topic,
        "--group",
        group,
        "--state",
        str(state),
        "--config",
        str(config),
        "--consumed",
        str(consumed),
        "--interval",
        "0.2",
        "--max-batch",
        "100",
    ]
    log = tmp_path / "harness.log"

    def saved() -> dict[str, Any]:
        data = load_state(state)
        return data or {"records_total": 0, "kafka": {}}

    first = _start_harness([*common, "--slow", "0.02"], log)
    try:
        await eventually(
            lambda: saved()["records_total"] >= 1500,
            timeout=60,
            what=f"first checkpoints\n{log.read_text()}",
        )
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    at_kill = saved()
    checkpointed = sum(at_kill["kafka"].values())
    assert at_kill["records_total"] == checkpointed < total, "the kill was not mid-stream"
    run1 = int(consumed.read_text())
    assert run1 >= checkpointed  # it had consumed at least what it saved

    second = _start_harness(common, log)
    try:
        await eventually(lambda: saved()["records_total"] == total, timeout=60, what="the rest")
        second.send_signal(signal.SIGTERM)
        assert second.wait(20) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
    final = saved()
    # The state counts every record exactly once and holds every byte exactly once ...
    assert final["records_total"] == total
    assert final["bytes_total"] == expected_bytes
    assert sum(final["kafka"].values()) == total
    # ... the restarted run read only what came after the last checkpoint ...
    assert int(consumed.read_text()) == total - checkpointed
    # ... the baselines learned before the kill survived it ...
    learned = stored_keys(at_kill["engine"]["baselines"])
    assert learned, "no interval had closed before the kill"
    assert set(learned) <= set(stored_keys(final["engine"]["baselines"]))
    # ... and the group's offsets were committed at the end.
    assert await committed_offsets(broker.bootstrap, topic, group, 2) == [total // 2, total // 2]
