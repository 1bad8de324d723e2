"""``egressd run`` with a ``[[sources.kafka]]`` against a real broker and a real Alertmanager.

An exfiltration produced to the topic pages; a SIGKILL mid-stream resumes from the saved
position, so the restarted daemon reads only what came after its last checkpoint.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from integration_support import (
    EgressdProcess,
    free_port,
    http_get,
    metric_value,
    require_program,
    research_config,
    running_program,
    wait_for_http,
)
from kafka_support import TansuBroker, broker_or_skip, create_topic, goflow2_record, produce, unique

from egressd.baseline.seasonal import stored_keys
from egressd.baseline.statefile import load_state

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = research_config(
    {
        "interval": "1m",
        "allowed_lateness": "10s",
        "unexpected_min_bytes": "100MB",
        "unexpected_window": "10m",
        "resolve_after": "1h",
    },
    state="{state}",
    save_interval="{save}",
    http="127.0.0.1:{http}",
    tail="""
[[sources.kafka]]
bootstrap_servers = ["{bootstrap}"]
topics = ["{topic}"]
group_id = "{group}"
format = "goflow2-json"
session_timeout = "2s"
heartbeat_interval = "300ms"
rebalance_timeout = "2s"
max_batch = 200
""",
)

ALERTMANAGER_CONFIG = """
route:
  receiver: blackhole
receivers:
  - name: blackhole
"""


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    running = broker_or_skip(tmp_path_factory.mktemp("tansu"))
    yield running
    running.stop()


def write_config(
    tmp_path: Path, broker: TansuBroker, topic: str, extra: str = "", save: str = "1h"
) -> tuple[Path, Path, int]:
    http = free_port()
    state = tmp_path / "state.json"
    config = tmp_path / "egressd.toml"
    text = CONFIG.format(
        state=state,
        save=save,
        http=http,
        bootstrap=broker.bootstrap,
        topic=topic,
        group=unique("egressd"),
    )
    config.write_text(text + extra)
    return config, state, http


def eventually(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def test_exfiltration_on_kafka_reaches_alertmanager(broker: TansuBroker, tmp_path: Path) -> None:
    alertmanager = require_program("prometheus-alertmanager", "alertmanager")
    topic = unique("flows")
    asyncio.run(create_topic(broker.bootstrap, topic, partitions=2))
    now = time.time()
    values = [
        goflow2_record(i, dst="8.8.8.8", nbytes=1_000_000, t=now - 600 + i) for i in range(300)
    ]
    values += [
        goflow2_record(
            1000 + i, src="10.20.0.17", dst="47.100.23.45", nbytes=60_000_000, t=now - 280 + i * 10
        )
        for i in range(5)
    ]
    values.append(goflow2_record(2000, dst="8.8.8.8", nbytes=1000, t=now))  # closes the intervals
    am_port = free_port()
    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(ALERTMANAGER_CONFIG)
    am_args = [
        alertmanager,
        f"--config.file={am_config}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",
    ]
    with running_program(am_args, tmp_path / "alertmanager.log"):
        wait_for_http(f"http://127.0.0.1:{am_port}/-/ready", timeout=30)
        extra = f'\n[alertmanager]\nurls = ["http://127.0.0.1:{am_port}"]\nresend_interval = "2s"\n'
        config, _, http = write_config(tmp_path, broker, topic, extra)
        egressd = EgressdProcess(config, f"127.0.0.1:{http}", tmp_path / "egressd.log")
        egressd.start()
        try:
            asyncio.run(produce(broker.bootstrap, topic, values, partitions=2))

            def in_alertmanager() -> bool:
                status, body = http_get(f"http://127.0.0.1:{am_port}/api/v2/alerts")
                return status == 200 and any(
                    a["labels"].get("alertname") == "EgressUnexpectedDestination"
                    and a["labels"].get("dst_country") == "CN"
                    and a["labels"].get("group") == "research"
                    for a in orjson.loads(body)
                )

            eventually(in_alertmanager, 40, "the alert listed by Alertmanager")
            text = egressd.metrics()
            assert metric_value(text, "egressd_kafka_messages_total") == len(values)
            assert metric_value(text, "egressd_kafka_lag_messages") == 0
        finally:
            assert egressd.stop() == 0, egressd.log()


def test_sigkill_mid_stream_resumes_from_the_saved_position(
    broker: TansuBroker, tmp_path: Path
) -> None:
    topic = unique("flows")
    asyncio.run(create_topic(broker.bootstrap, topic, partitions=2))
    config, state, http = write_config(tmp_path, broker, topic, save="500ms")
    start = time.time() - 3600
    first = [goflow2_record(i, nbytes=10_000, t=start + i * 0.2) for i in range(10_000)]
    asyncio.run(produce(broker.bootstrap, topic, first, partitions=2))
    egressd = EgressdProcess(config, f"127.0.0.1:{http}", tmp_path / "egressd.log")
    egressd.start()

    def saved_position() -> int:
        data = load_state(state) or {}
        positions = data.get("sources", {})
        return sum(sum(p.values()) for p in positions.values() if isinstance(p, dict))

    try:
        eventually(lambda: saved_position() > 0, 30, "a saved Kafka position")
    finally:
        egressd.signal(signal.SIGKILL)
        assert egressd.process is not None
        egressd.process.wait(10)
    at_kill = load_state(state)
    assert at_kill is not None
    checkpointed = saved_position()
    # More flows arrive while egressd is down: the stream goes on.
    second = [
        goflow2_record(20_000 + i, nbytes=10_000, t=start + 2000 + i * 0.2) for i in range(5_000)
    ]
    asyncio.run(produce(broker.bootstrap, topic, second, partitions=2))
    total = len(first) + len(second)

    egressd = EgressdProcess(config, f"127.0.0.1:{http}", tmp_path / "egressd2.log")
    egressd.start()
    try:
        eventually(
            lambda: (
                metric_value(egressd.metrics(), "egressd_kafka_messages_total")
                == total - checkpointed
            ),
            60,
            f"the restarted daemon reading from {checkpointed} on",
        )
        time.sleep(1.0)  # nothing more comes: no record before the checkpoint is read again
        text = egressd.metrics()
        assert metric_value(text, "egressd_kafka_messages_total") == total - checkpointed
    finally:
        assert egressd.stop() == 0, egressd.log()
    final = load_state(state)
    assert final is not None
    assert saved_position() == total
    # what was learned before the kill is still there
    assert stored_keys(at_kill["baselines"]), "nothing learned before the kill"
    assert set(stored_keys(at_kill["baselines"])) <= set(stored_keys(final["baselines"]))
    assert checkpointed < total
