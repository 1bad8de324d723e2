"""Hostile JSON flow lines: nesting deep enough to overflow a parser's native stack.

orjson before 3.9.15 (CVE-2024-27454) parses nesting by native recursion with no limit: a
few hundred kilobytes of ``[`` killed the process with SIGSEGV. On Kafka that message is
never committed, so the restarted daemon read it again and died again: one message blinded
it for good. Each line is now checked for depth before orjson sees it (``too_deep``).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from integration_support import EgressdProcess, free_port, metric_value
from kafka_support import TansuBroker, broker_or_skip, create_topic, goflow2_record, produce, unique

from egressd.decode.egressd_json import encode_egressd_json
from egressd.model import FlowRecord

REPO = Path(__file__).resolve().parents[1]

#: 400 kB of brackets: past the native stack of every orjson before 3.9.15 (8 MiB stacks)
DEPTH = 400_000

CONFIG = """
[networks]
local = ["10.0.0.0/8"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16"]
expected_countries = ["GB", "US"]

[detection]
interval = "1m"
allowed_lateness = "10s"
unexpected_min_bytes = "100MB"
unexpected_window = "10m"
"""


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
