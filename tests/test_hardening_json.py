"""Hostile JSON flow lines: nesting deep enough to overflow a parser's native stack.

orjson before 3.9.15 (CVE-2024-27454) parses nesting by native recursion with no limit: a
few hundred kilobytes of ``[`` killed the process with SIGSEGV. On Kafka that message is
never committed, so the restarted daemon read it again and died again: one message blinded
it for good. Each line is now checked for depth before orjson sees it (``too_deep``).
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from integration_support import EgressdProcess, free_port, metric_value, research_config
from kafka_support import (
    FLOW_T0,
    TansuBroker,
    broker_or_skip,
    committed_offsets,
    create_topic,
    goflow2_record,
    produce,
    unique,
)

from egressd.cluster.wire import partials_headers
from egressd.decode.egressd_json import encode_egressd_json
from egressd.model import FlowRecord

REPO = Path(__file__).resolve().parents[1]

#: 400 kB of brackets: past the native stack of every orjson before 3.9.15 (8 MiB stacks)
DEPTH = 400_000

CONFIG = research_config(
    {
        "interval": "1m",
        "allowed_lateness": "10s",
        "unexpected_min_bytes": "100MB",
        "unexpected_window": "10m",
    }
)


def poison(kind: str) -> bytes:
    if kind == "arrays":
        return b'{"bytes": ' + b"[" * DEPTH + b"]" * DEPTH + b"}"
    return b'{"bytes": ' + b'{"a": ' * DEPTH + b"1" + b"}" * DEPTH + b"}"


def exfiltration_lines(fmt: str, now: float) -> list[bytes]:
    """Five 60 MB flows to CN within four minutes, then one that closes their intervals."""
    flows = [(now - 280 + 10 * i, "10.20.0.17", "47.100.23.45", 60_000_000) for i in range(5)]
    flows.append((now, "10.20.0.5", "8.8.8.8", 1_000))
    if fmt == "goflow2-json":
        return [
            goflow2_record(i, src=src, dst=dst, nbytes=size, t=t)
            for i, (t, src, dst, size) in enumerate(flows)
        ]
    return [
        encode_egressd_json(FlowRecord(t - 1, t, src, dst, size, max(1, size // 1500)))
        for t, src, dst, size in flows
    ]


@pytest.mark.parametrize("fmt", ["goflow2-json", "egressd-json"])
@pytest.mark.parametrize("kind", ["arrays", "objects"])
def test_replay_counts_a_deeply_nested_line_and_pages(tmp_path: Path, fmt: str, kind: str) -> None:
    # Before: `egressd replay` died with SIGSEGV (rc -11) at the line.
    config = tmp_path / "egressd.toml"
    config.write_text(CONFIG)
    lines = exfiltration_lines(fmt, 1_773_064_800.0)
    lines.insert(2, poison(kind))
    flows = tmp_path / "flows.jsonl"
    flows.write_bytes(b"\n".join(lines) + b"\n")
    args = ["replay", "--config", str(config), "--format", fmt, str(flows)]
    result = subprocess.run(
        [sys.executable, "-m", "egressd.cli", *args],
        capture_output=True,
        cwd=REPO,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, (result.returncode, result.stderr.decode()[-2000:])
    alerts = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert any(a["labels"]["dst_country"] == "CN" for a in alerts), result.stderr.decode()
    assert b"too_deep" in result.stderr, result.stderr.decode()[-2000:]


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    running = broker_or_skip(tmp_path_factory.mktemp("tansu"))
    yield running
    running.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_one_deeply_nested_kafka_message_neither_kills_nor_stalls_the_daemon(
    broker: TansuBroker, tmp_path: Path
) -> None:
    # Before: the daemon died with SIGSEGV on the message, and (never committed) it came
    # back at every restart.
    topic = unique("flows")
    asyncio.run(create_topic(broker.bootstrap, topic))
    http = free_port()
    config = tmp_path / "egressd.toml"
    config.write_text(
        CONFIG
        + f'\n[http]\nlisten = "127.0.0.1:{http}"\n'
        + f'\n[[sources.kafka]]\nbootstrap_servers = ["{broker.bootstrap}"]\n'
        + f'topics = ["{topic}"]\ngroup_id = "{unique("egressd")}"\nformat = "goflow2-json"\n'
    )
    values = exfiltration_lines("goflow2-json", time.time())
    values.insert(2, poison("arrays"))
    egressd = EgressdProcess(config, f"127.0.0.1:{http}", tmp_path / "egressd.log")
    egressd.start()
    try:
        asyncio.run(produce(broker.bootstrap, topic, values))
        deadline = time.monotonic() + 40
        text = ""
        while time.monotonic() < deadline:
            assert egressd.alive(), egressd.log()
            text = egressd.metrics()
            if metric_value(text, "egressd_kafka_messages_total") == len(values):
                break
            time.sleep(0.2)
        assert metric_value(text, "egressd_kafka_messages_total") == len(values), text
        assert metric_value(text, "egressd_decode_errors_total", reason="too_deep") == 1, text
        assert metric_value(text, "egressd_records_total") == len(values) - 1, text
        assert egressd.alive(), egressd.log()
    finally:
        assert egressd.stop() == 0, egressd.log()


async def produce_partials(bootstrap: str, topic: str, messages: list[tuple[bytes, Any]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for value, headers in messages:
            await (await producer.send(topic, value, partition=0, headers=headers))
    finally:
        await producer.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_malformed_partials_neither_stop_a_detect_process_nor_stay_uncommitted(
    broker: TansuBroker, tmp_path: Path
) -> None:
    # Poison on the partials topic (nested too deep, rows that are no partials, an event
    # time of infinity, a message of no kind) is counted by reason and skipped; the detect
    # process goes on, applies the good batch after it and commits past all of it, so no
    # start reads the poison again.
    from test_cluster import PARTIALS_PARTITIONS, Cluster

    cluster = Cluster(broker, tmp_path)
    start = FLOW_T0 - FLOW_T0 % 60
    good = b'{"v":1,"interval":60.0,"rows":[[%d,"research","CN","",5000,1,1,{},{}]]}' % start
    messages = [
        (
            b'{"v":1,"interval":60.0,"rows":' + b"[" * 300_000 + b"]" * 300_000 + b"}",
            partials_headers("flows:0", 0, 0, FLOW_T0),
        ),
        (b'{"v":1,"interval":60.0,"rows":[[1,2]]}', partials_headers("flows:0", 0, 0, FLOW_T0)),
        (b'{"v":1,"interval":60.0,"rows":[]}', partials_headers("flows:0", 0, 0, math.inf)),
        (b"{}", [("egressd-kind", b"nonsense")]),
        (good, partials_headers("flows:0", 0, 0, FLOW_T0)),
    ]
    # every message to partition 0 of the partials topic
    detect = cluster.start("detect", "detect")
    try:
        asyncio.run(produce_partials(broker.bootstrap, cluster.partials, messages))
        deadline = time.monotonic() + 40
        group = cluster.names["detect_group"]
        committed: list[int | None] = []
        text = ""
        while time.monotonic() < deadline:
            assert detect.alive(), detect.log()
            text = detect.metrics()
            committed = asyncio.run(
                committed_offsets(broker.bootstrap, cluster.partials, group, PARTIALS_PARTITIONS)
            )
            if committed[0] == len(messages):
                break
            time.sleep(0.5)
        assert committed[0] == len(messages), (committed, detect.log())
        bad = "egressd_cluster_bad_messages_total"
        assert metric_value(text, bad, reason="too_deep") == 1, text
        assert metric_value(text, bad, reason="bad_partials") == 1, text
        assert metric_value(text, bad, reason="bad_headers") == 2, text
        assert metric_value(text, "egressd_cluster_batches_applied_total") == 1, text
        assert detect.alive(), detect.log()
    finally:
        assert detect.stop() == 0, detect.log()


@pytest.mark.parametrize("columns", [True, False])
def test_a_replayed_line_of_hundreds_of_megabytes_is_skipped_without_holding_it(
    tmp_path: Path, columns: bool
) -> None:
    # Lines were read whole: a 1 MB .gz file holding one line of 1 GB took 3.2 GB of memory
    # to replay (a few MB more of .gz, and the replay died). A line over MAX_LINE is now
    # counted as line_too_long and skipped as it is read; the lines around it count.
    import gzip
    import tracemalloc

    from egressd.sources import files
    from egressd.stats import SourceStats

    lines = exfiltration_lines("goflow2-json", 1_773_064_800.0)
    path = tmp_path / "flows.jsonl.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:
        out.write(b"\n".join(lines[:3]) + b"\n")
        chunk = b"x" * (1 << 20)
        for _ in range(64):  # 64 MB without a line end
            out.write(chunk)
        out.write(b"\n" + b"\n".join(lines[3:]) + b"\n")
    stats = SourceStats("file")
    tracemalloc.start()
    try:
        if columns:
            flows = sum(len(c) for c in files.read_columns_file("goflow2-json", path, stats))
        else:
            flows = sum(1 for _ in files.read_file("goflow2-json", path, stats))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert flows == len(lines)
    assert dict(stats.decode_errors) == {"line_too_long": 1}
    assert stats.units == len(lines) + 1
    assert peak < 4 * files.MAX_LINE, peak  # before: the 64 MB line, and more
