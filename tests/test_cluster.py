"""The ingest and detect roles on a real broker (Tansu): N processes, one process's answer.

Flows are split at random over the raw topic's partitions, read by two ``egressd run``
processes in the ingest role and judged by two in the detect role. Every closed
(group x destination x interval) sum must equal the one a single engine computes from the
same flows, and the same alerts must fire once per label set, also when an ingest process
dies between producing and committing and a detect process is SIGKILLed mid-stream.
"""

from __future__ import annotations

import asyncio
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from integration_support import (
    EgressdProcess,
    free_port,
    http_get,
    metric_value,
    require_program,
    running_program,
    wait_for_http,
)
from kafka_support import (
    FLOW_T0,
    MotoS3,
    TansuBroker,
    broker_or_skip,
    committed_offsets,
    create_topic,
    goflow2_record,
    unique,
)

from egressd.aggregate import Bucket
from egressd.config import parse_config
from egressd.decode.goflow2 import decode_goflow2_json
from egressd.enrich.embedded import EmbeddedCountryLabeler
from egressd.pipeline import Engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAW_PARTITIONS = 4
PARTIALS_PARTITIONS = 3
#: every partials partition holds one group: office 0, ops 1, research 2 (CRC-32 % 3)

BASE = """
[networks]
local = ["10.0.0.0/8"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16"]
expected_countries = ["GB", "US"]

[[groups]]
name = "office"
sources = ["10.30.0.0/16"]
expected_countries = ["GB", "US", "IE"]

[[groups]]
name = "ops"
sources = ["10.40.0.0/16"]
expected_countries = ["GB", "US", "DE"]

[detection]
interval = "1m"
allowed_lateness = "30s"
unexpected_min_bytes = "100MB"
unexpected_window = "10m"
resolve_after = "2h"
"""

NODE = """
[state]
save_interval = "{save}"

[http]
listen = "127.0.0.1:{http}"

[alerts]
log_path = "{alerts}"

[[sources.kafka]]
bootstrap_servers = ["{bootstrap}"]
topics = ["{raw}"]
group_id = "{ingest_group}"
format = "goflow2-json"
dead_letter_topic = "{dead_letters}"
session_timeout = "2s"
heartbeat_interval = "300ms"
rebalance_timeout = "3s"
max_batch = 500

[cluster]
role = "{role}"
partials_topic = "{partials}"
detect_group_id = "{detect_group}"
batch_offsets = {batch}
idle_flush = "1s"
heartbeat_interval = "300ms"
{state}
interval_log = "{intervals}"
"""

DESTINATIONS = ["3.5.140.2", "8.8.8.8", "81.2.69.160", "5.9.0.1", "10.1.2.3", "2.16.0.1"]
SOURCES = ["10.20.0.5", "10.20.0.6", "10.30.1.1", "10.30.1.2", "10.40.0.9", "172.16.0.1"]
CN = "47.100.23.45"
MIRROR = "47.100.23.50"  # in CN too
MINUTES = 40
#: interval + allowed_lateness of BASE, session_timeout and state.save_interval of NODE: how
#: long after an exfiltration's flows are produced its alert must reach Alertmanager and the
#: alert log, whatever member crashed or froze meanwhile (docs/scaling.md)
ALERT_BOUND = 60 + 30 + 2 + 2
#: on top of it, for starting the processes (a Python interpreter each, then joining the
#: groups) after the flows were produced, on a 2-core CI machine shared with other jobs
START_SLACK = 25

Key = tuple[float, str, str]
Sums = dict[Key, list[Any]]


def flow_values(seed: int) -> list[bytes]:
    """Time-ordered goflow2 records: 40 minutes of mixed traffic, one exfiltration to CN,
    and a record an hour later that closes every interval before it."""
    rng = random.Random(seed)
    values = []
    seq = 0
    for i in range(MINUTES * 60):
        for _ in range(2):
            seq += 1
            values.append(
                goflow2_record(
                    seq,
                    src=rng.choice(SOURCES),
                    dst=rng.choice(DESTINATIONS),
                    nbytes=int(rng.lognormvariate(10, 1.5)) + 40,
                    t=FLOW_T0 + i + rng.random() * 0.5,
                )
            )
        if 600 <= i < 900 and i % 20 == 0:  # 15 x 12 MB to CN from research: 180 MB
            seq += 1
            values.append(
                goflow2_record(
                    seq, src="10.20.0.17", dst=CN, nbytes=12_000_000, t=FLOW_T0 + i + 0.7
                )
            )
        # Traps, which must page nowhere: research sends 300 MB to GB, which it may; an
        # office host downloads 20 GB from a mirror in CN, whose ACKs (60 B a packet,
        # 400 MB) go back to CN: a download's return traffic, not an upload.
        if 600 <= i < 900 and i % 20 == 10:
            seq += 1
            values.append(
                goflow2_record(
                    seq, src="10.20.0.9", dst="81.2.69.160", nbytes=20_000_000, t=FLOW_T0 + i
                )
            )
        if 300 <= i < 1500 and i % 30 == 15:
            seq += 2
            t = FLOW_T0 + i + 0.2
            values.append(
                goflow2_record(seq - 1, src=MIRROR, dst="10.30.1.1", nbytes=500_000_000, t=t)
            )
            values.append(
                goflow2_record(
                    seq, src="10.30.1.1", dst=MIRROR, nbytes=10_000_000, t=t, packets=166_667
                )
            )
    return values


def closing_values() -> list[bytes]:
    """One east-west record per raw partition an hour on: every partition's event time moves."""
    return [
        goflow2_record(900_000 + p, src="10.20.0.5", dst="10.1.2.3", nbytes=100, t=FLOW_T0 + 7200)
        for p in range(RAW_PARTITIONS)
    ]


def single_process(values: list[bytes]) -> tuple[Sums, set[tuple[tuple[str, str], ...]]]:
    """Per-interval sums and firing label sets of one engine replaying ``values`` in order."""
    engine = Engine(parse_config(BASE), EmbeddedCountryLabeler())
    sums: Sums = {}

    def record(start: float, bucket: Bucket) -> None:
        for (group, dest), accum in bucket.items():
            sums[(start, group, dest.key)] = accum.to_row()

    engine.on_interval = record
    fired = set()
    records = [r for r in (decode_goflow2_json(v) for v in values) if r is not None]
    for alert in engine.process(records):
        if alert.state == "firing":
            fired.add(tuple(sorted(alert.labels.items())))
    return sums, fired


async def produce_split(bootstrap: str, topic: str, values: list[bytes], seed: int) -> None:
    """``values`` in order, each to a partition picked at random (and the closers one each)."""
    rng = random.Random(seed)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, partition=rng.randrange(RAW_PARTITIONS))
            for value in values
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, wanted: set[bytes]) -> set[bytes]:
    """The distinct messages of ``topic`` once they include ``wanted`` (or after 20 s)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    out: set[bytes] = set()
    try:
        deadline = time.monotonic() + 20
        while not wanted <= out and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=500)).values():
                out.update(m.value for m in messages)
    finally:
        await consumer.stop()
    return out


async def produce_closers(bootstrap: str, topic: str) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
    await producer.start()
    try:
        for p, value in enumerate(closing_values()):
            await (await producer.send(topic, value, partition=p))
    finally:
        await producer.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TansuBroker]:
    running = broker_or_skip(tmp_path_factory.mktemp("tansu"))
    yield running
    running.stop()


class Cluster:
    """Topics, configurations and the processes of one test."""

    def __init__(
        self,
        broker: TansuBroker,
        tmp_path: Path,
        batch: int = 300,
        extra: str = "",
        s3: MotoS3 | None = None,
        base: str = BASE,
    ) -> None:
        self.base = base
        self.broker = broker
        self.extra = extra
        self.s3 = s3
        self.tmp = tmp_path
        self.raw = unique("flows")
        self.partials = unique("partials")
        self.names = {
            "ingest_group": unique("ingest"),
            "detect_group": unique("detect"),
            "dead_letters": unique("dead-letters"),
        }
        self.batch = batch
        self.states = tmp_path / "partitions"
        self.processes: dict[str, EgressdProcess] = {}
        asyncio.run(create_topic(broker.bootstrap, self.raw, RAW_PARTITIONS))
        asyncio.run(create_topic(broker.bootstrap, self.partials, PARTIALS_PARTITIONS))

    def start(
        self, name: str, role: str, env: dict[str, str] | None = None, wait_ready: bool = True
    ) -> EgressdProcess:
        http = free_port()
        config = self.tmp / f"{name}.toml"
        config.write_text(
            self.base
            + NODE.format(
                save="2s",
                http=http,
                alerts=self.tmp / f"{name}.alerts.jsonl",
                bootstrap=self.broker.bootstrap,
                raw=self.raw,
                partials=self.partials,
                role=role,
                batch=self.batch,
                state=(
                    f'state_url = "s3://snapshots/egressd"\ns3_endpoint = "{self.s3.endpoint}"\n'
                    's3_region = "eu-west-2"'
                    if self.s3 is not None
                    else f'state_directory = "{self.states}"'
                ),
                intervals=self.tmp / f"{name}.intervals.jsonl",
                **self.names,
            )
            + self.extra
        )
        process = EgressdProcess(config, f"127.0.0.1:{http}", self.tmp / f"{name}.log")
        keys = {"AWS_ACCESS_KEY_ID": "egressd", "AWS_SECRET_ACCESS_KEY": "egressd"}
        process.start(env={**keys, **(env or {})}, wait_ready=wait_ready)
        self.processes[name] = process
        return process

    def intervals(self) -> tuple[Sums, list[str]]:
        """Every closed interval any detect process logged; differing repeats are errors."""
        sums: Sums = {}
        conflicts = []
        for path in sorted(self.tmp.glob("*.intervals.jsonl")):
            for line in path.read_bytes().splitlines():
                start, group, dest, *row = orjson.loads(line)
                key = (float(start), group, dest)
                if key in sums and sums[key] != row:
                    conflicts.append(f"{key}: {sums[key]} then {row} in {path.name}")
                sums[key] = row
        return sums, conflicts

    def firing(self) -> list[tuple[tuple[str, str], ...]]:
        out = []
        for path in sorted(self.tmp.glob("*.alerts.jsonl")):
            for line in path.read_bytes().splitlines():
                event = orjson.loads(line)
                if event["status"] == "firing":
                    out.append(tuple(sorted(event["labels"].items())))
        return out

    def all_logs(self) -> str:
        """Every process's whole log, one after the other."""
        return "".join(p.log_path.read_text(errors="replace") for p in self.processes.values())

    def logs(self) -> str:
        return "".join(
            f"\n--- {name}\n{p.log()[-3000:]}" for name, p in sorted(self.processes.items())
        )

    def wait_for(self, expected: Sums, timeout: float) -> Sums:
        deadline = time.monotonic() + timeout
        while True:
            sums, _ = self.intervals()
            if all(key in sums for key in expected):
                return sums
            if time.monotonic() > deadline:
                missing = [key for key in expected if key not in sums]
                pytest.fail(
                    f"{len(missing)} of {len(expected)} intervals never closed, e.g. "
                    f"{missing[:3]}{self.logs()}"
                )
            time.sleep(0.5)

    def stop_all(self) -> dict[str, int]:
        return {name: p.stop() for name, p in self.processes.items()}


class FirstSeen:
    """When each firing label set first reached an alert log (and Alertmanager, given its
    port), polled in a thread every 0.2 s so the moment is known whatever the test waits on."""

    def __init__(self, cluster: Cluster, am_port: int | None = None) -> None:
        self.cluster = cluster
        self.am_port = am_port
        self.log: dict[tuple[tuple[str, str], ...], float] = {}
        self.alertmanager: dict[tuple[tuple[str, str], ...], float] = {}
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> FirstSeen:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._done.wait(0.2):
            now = time.monotonic()
            for path in sorted(self.cluster.tmp.glob("*.alerts.jsonl")):
                for line in path.read_bytes().splitlines():
                    try:
                        event = orjson.loads(line)
                    except orjson.JSONDecodeError:
                        continue  # a line being written
                    if event["status"] == "firing":
                        self.log.setdefault(tuple(sorted(event["labels"].items())), now)
            if self.am_port is not None:
                for labels in in_alertmanager(self.am_port):
                    self.alertmanager.setdefault(labels, now)

    def assert_within(self, produced: float, fired: set[tuple[tuple[str, str], ...]]) -> None:
        """Every alert of ``fired`` arrived within ALERT_BOUND + START_SLACK of ``produced``
        (a monotonic time), in the alert log and, when watched, in Alertmanager."""
        seen = [self.log] + ([self.alertmanager] if self.am_port is not None else [])
        for where in seen:
            late = {
                dict(labels)["alertname"]: round(where[labels] - produced, 1)
                if labels in where
                else None
                for labels in fired
                if labels not in where or where[labels] - produced > ALERT_BOUND + START_SLACK
            }
            assert late == {}, f"seconds after the flows: {late}{self.cluster.logs()}"


def check(
    cluster: Cluster,
    expected: Sums,
    fired: set[tuple[tuple[str, str], ...]],
    timeout: float = 120,
) -> Sums:
    sums = cluster.wait_for(expected, timeout=timeout)
    _, conflicts = cluster.intervals()
    assert conflicts == []
    assert {key: sums[key] for key in expected} == expected
    # Intervals the single process closed are all the cluster closed (none invented).
    assert set(sums) == set(expected)
    return sums


def test_two_ingest_and_two_detect_processes_give_one_process_sums(
    broker: TansuBroker, tmp_path: Path
) -> None:
    values = flow_values(seed=7)
    expected, fired = single_process(values + closing_values())
    assert len(expected) > 400
    # Only the exfiltration pages, not the traps (an upload to an expected country, a
    # download's return traffic): whose ingress and small-packet sums travel in the partials.
    assert [(dict(labels)["group"], dict(labels)["dst_country"]) for labels in fired] == [
        ("research", "CN")
    ]
    office_cn = [row for (_s, g, d), row in expected.items() if (g, d) == ("office", "CN")]
    assert sum(row[6] for row in office_cn) == 20_000_000_000  # ingress from the mirror
    assert sum(row[5] for row in office_cn) == 400_000_000  # its ACKs, in small packets
    cluster = Cluster(broker, tmp_path)
    asyncio.run(create_topic(broker.bootstrap, cluster.names["dead_letters"], 1))
    # Two messages no decoder takes: counted, copied to the dead-letter topic, skipped.
    poison = [b"not json", b'{"bytes": "many"}']
    asyncio.run(produce_split(broker.bootstrap, cluster.raw, values + poison, seed=7))
    try:
        for name, role in (("detect-a", "detect"), ("detect-b", "detect")):
            cluster.start(name, role)
        for name in ("ingest-a", "ingest-b"):
            cluster.start(name, "ingest")
        asyncio.run(produce_closers(broker.bootstrap, cluster.raw))
        check(cluster, expected, fired)
        deadline = time.monotonic() + 30
        while sorted(cluster.firing()) != sorted(fired) and time.monotonic() < deadline:
            time.sleep(0.3)
        # The exfiltration fired, once, and nothing else did.
        assert sorted(cluster.firing()) == sorted(fired), cluster.logs()
        # What moved is counted. A partition that moves to the other ingest process while
        # its batch was being counted is read again from its last commit (the batch was not
        # produced), and a batch produced again after a refused commit is dropped as a replay:
        # every flow read at least once, and no more rows applied than produced.
        ingests = [cluster.processes[n].metrics() for n in ("ingest-a", "ingest-b")]
        detects = [cluster.processes[n].metrics() for n in ("detect-a", "detect-b")]
        read = sum(metric_value(t, "egressd_kafka_messages_total") or 0 for t in ingests)
        assert read >= len(values) + len(poison) + RAW_PARTITIONS
        rows = sum(metric_value(t, "egressd_cluster_partial_rows_total") or 0 for t in ingests)
        applied = sum(
            metric_value(t, "egressd_cluster_partial_rows_applied_total") or 0 for t in detects
        )
        assert rows >= applied > 0
        # The engines' own figures: egress counted since each process took its partitions
        # (a counter starts at zero on a partition's new owner and never counts a byte twice,
        # so whatever the rebalances it is never more than the flows hold).
        egress = sum(
            metric_value(t, "egressd_egress_bytes_total", group="research", dst_country="CN") or 0
            for t in detects
        )
        total = sum(
            row[0]
            for (_s, group, dest), row in expected.items()
            if (group, dest) == ("research", "CN")
        )
        assert egress <= total
        for text in detects:
            assert (metric_value(text, "egressd_cluster_heartbeats_received_total") or 0) > 0
        dead = asyncio.run(read_topic(broker.bootstrap, cluster.names["dead_letters"], set(poison)))
        assert dead == set(poison)
    finally:
        codes = cluster.stop_all()
    assert codes == dict.fromkeys(codes, 0), cluster.logs()
    # Every process took part: each was assigned partitions of its topic at some point.
    for name, process in cluster.processes.items():
        assert re.search(r"partitions assigned: \S*:\d", process.log_path.read_text()), name
    # Both detect processes saved the partitions they owned when they stopped.
    assert sorted(p.name for p in cluster.states.glob("*.json")) == [
        f"{cluster.partials}-{p}.json" for p in range(PARTIALS_PARTITIONS)
    ]


def test_killed_ingest_and_detect_processes_neither_lose_nor_double_count(
    broker: TansuBroker, tmp_path: Path
) -> None:
    alertmanager = require_program("prometheus-alertmanager", "alertmanager")
    values = flow_values(seed=11)
    expected, fired = single_process(values + closing_values())
    am_port = free_port()
    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text("route:\n  receiver: blackhole\nreceivers:\n  - name: blackhole\n")
    am_args = [
        alertmanager,
        f"--config.file={am_config}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",
    ]
    extra = f'\n[alertmanager]\nurls = ["http://127.0.0.1:{am_port}"]\nresend_interval = "2s"\n'
    cluster = Cluster(broker, tmp_path, batch=200, extra=extra)
    half = len(values) // 2
    assert not any(b'"10.20.0.17"' in value for value in values[half:])  # the exfiltration
    with running_program(am_args, tmp_path / "alertmanager.log"):
        wait_for_http(f"http://127.0.0.1:{am_port}/-/ready", timeout=30)
        asyncio.run(produce_split(broker.bootstrap, cluster.raw, values[:half], seed=11))
        produced = time.monotonic()
        with FirstSeen(cluster, am_port) as seen:
            crash_and_check(cluster, expected, fired, am_port, values[half:])
        # An ingest member died (SIGKILL) between the exfiltration's flows and its alert,
        # and a detect member after: the alert still came within the bound.
        seen.assert_within(produced, fired)


def in_alertmanager(port: int) -> set[tuple[tuple[str, str], ...]]:
    status, body = http_get(f"http://127.0.0.1:{port}/api/v2/alerts")
    if status != 200:
        return set()
    return {
        tuple(sorted((k, v) for k, v in a["labels"].items() if k != "instance"))
        for a in orjson.loads(body)
    }


def crash_and_check(
    cluster: Cluster,
    expected: Sums,
    fired: set[tuple[tuple[str, str], ...]],
    am_port: int,
    rest: list[bytes],
) -> None:
    broker = cluster.broker
    try:
        cluster.start("detect-a", "detect")
        detect_b = cluster.start("detect-b", "detect")
        # ingest-a dies (SIGKILL) after its third shipment was acknowledged, before the
        # commit: whoever reads those offsets again produces the same batches again.
        ingest_a = cluster.start(
            "ingest-a", "ingest", env={"EGRESSD_FAULT": "exit-before-commit:3"}
        )
        assert ingest_a.process is not None
        assert ingest_a.process.wait(60) == -signal.SIGKILL
        cluster.start("ingest-b", "ingest")
        # detect-b dies mid-stream; its partitions go to detect-a, which replays from the
        # snapshots detect-b saved.
        time.sleep(3)
        detect_b.signal(signal.SIGKILL)
        assert detect_b.process is not None
        detect_b.process.wait(10)
        # The second half of the flows arrives while detect-b is down.
        asyncio.run(produce_split(broker.bootstrap, cluster.raw, rest, seed=12))
        cluster.start("ingest-a2", "ingest")
        cluster.start("detect-b2", "detect")
        asyncio.run(produce_closers(broker.bootstrap, cluster.raw))
        check(cluster, expected, fired)
        deadline = time.monotonic() + 30
        while set(cluster.firing()) != fired and time.monotonic() < deadline:
            time.sleep(0.3)
        # At least once: the alert fired; a replay after the SIGKILL may announce it again.
        assert set(cluster.firing()) == fired, cluster.logs()
        while in_alertmanager(am_port) != fired and time.monotonic() < deadline:
            time.sleep(0.3)
        assert in_alertmanager(am_port) == fired, cluster.logs()
    finally:
        cluster.stop_all()
    replays = sum(
        p.log_path.read_text(errors="replace").count("dropped a replayed batch")
        for p in cluster.processes.values()
    )
    assert replays >= 1, cluster.logs()
    # detect-b's partitions were taken over from its snapshots, not started afresh.
    loaded = sum(
        p.log_path.read_text(errors="replace").count("loaded the snapshot of")
        for name, p in cluster.processes.items()
        if name != "detect-b"
    )
    assert loaded >= 1, cluster.logs()


def test_members_that_leave_or_freeze_change_nothing_in_the_sums(
    broker: TansuBroker, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    values = flow_values(seed=23)
    expected, fired = single_process(values + closing_values())
    # The partitions' snapshots live in S3-compatible storage (moto's server).
    s3 = MotoS3(tmp_path)
    s3.start("snapshots")
    request.addfinalizer(s3.stop)
    cluster = Cluster(broker, tmp_path, batch=250, s3=s3)
    half = len(values) // 2
    try:
        for name in ("detect-a", "detect-b", "detect-c"):
            cluster.start(name, "detect")
        for name in ("ingest-a", "ingest-b"):
            cluster.start(name, "ingest")
        # The first half goes out once both ingest members own raw partitions. Produced
        # before, ingest-a (started first) could read and commit all of it before ingest-b
        # joined (a slow start on a busy machine): ingest-b, handed partitions read to their
        # end, would never read a record to freeze with.
        wait_owned(cluster, ("ingest-a", "ingest-b"), timeout=120)
        asyncio.run(produce_split(broker.bootstrap, cluster.raw, values[:half], seed=23))
        produced = time.monotonic()
        seen = FirstSeen(cluster).__enter__()
        request.addfinalizer(lambda: seen.__exit__(None, None, None))
        # As soon as ingest-b has read records (it then holds the batch it is counting, and
        # often a shipment in flight), detect-b and ingest-b freeze for 2.5 times the session
        # timeout: each group moves their partitions to the others (detect ones taken over
        # from detect-b's snapshots, raw ones read from ingest-b's last commit); then they
        # wake up and rejoin. detect-b's snapshot written on waking, older than what its
        # partition's new owner committed, may be the one loaded next (see docs/scaling.md).
        ingest_b = cluster.processes["ingest-b"]
        deadline = time.monotonic() + 60
        while not (metric_value(ingest_b.metrics(), "egressd_kafka_messages_total") or 0):
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.05)
        frozen = [cluster.processes["detect-b"], ingest_b]
        for process in frozen:
            process.signal(signal.SIGSTOP)
        ingest_a = cluster.processes["ingest-a"]
        owned = 0.0
        stopped = time.monotonic()
        # (at least 2.5 times the session timeout, and until ingest-a took them all: at once
        # on a quiet machine, later on a busy one)
        while time.monotonic() - stopped < 5 or (
            owned < RAW_PARTITIONS and time.monotonic() - stopped < 60
        ):
            owned = max(owned, ingest_owned(ingest_a))
            time.sleep(0.3)
        for process in frozen:
            process.signal(signal.SIGCONT)
        assert owned == RAW_PARTITIONS, cluster.logs()  # ingest-a took all of ingest-b's
        # detect-c leaves cleanly: it saves its partitions and commits before it goes.
        assert cluster.processes["detect-c"].stop() == 0
        asyncio.run(produce_split(broker.bootstrap, cluster.raw, values[half:], seed=24))
        asyncio.run(produce_closers(broker.bootstrap, cluster.raw))
        check(cluster, expected, fired)
        deadline = time.monotonic() + 30
        while set(cluster.firing()) != fired and time.monotonic() < deadline:
            time.sleep(0.3)
        assert set(cluster.firing()) == fired, cluster.logs()
        seen.assert_within(produced, fired)
        # Each rebalance made detect-a give up every partition (aiokafka revokes all) and
        # take back what the sticky assignor left it: those it kept in memory.
        kept = metric_value(
            cluster.processes["detect-a"].metrics(), "egressd_cluster_partitions_kept_total"
        )
        assert (kept or 0) >= 1
    finally:
        codes = cluster.stop_all()
    assert codes == dict.fromkeys(codes, 0), cluster.logs()
    left = cluster.processes["detect-c"].log_path.read_text()
    assert "partitions revoked" in left
    logs = cluster.all_logs()
    assert "from s3://snapshots/egressd/" in logs  # taken over from object storage


def wait_committed(cluster: Cluster, count: int, timeout: float) -> None:
    """Until the ingest group's committed offsets of the raw topic add up to ``count``."""
    deadline = time.monotonic() + timeout
    group = cluster.names["ingest_group"]
    while True:
        offsets = asyncio.run(
            committed_offsets(cluster.broker.bootstrap, cluster.raw, group, RAW_PARTITIONS)
        )
        if sum(o or 0 for o in offsets) >= count:
            return
        assert time.monotonic() < deadline, f"committed {offsets} of {count}{cluster.logs()}"
        time.sleep(0.5)


def wait_owned(cluster: Cluster, names: tuple[str, ...], timeout: float) -> None:
    """Until each of the ingest processes ``names`` owns raw partitions, all of them between
    them (the group has settled with every one of them in it)."""
    deadline = time.monotonic() + timeout
    while True:
        owned = [ingest_owned(cluster.processes[name]) for name in names]
        if min(owned) >= 1 and sum(owned) == RAW_PARTITIONS:
            return
        assert time.monotonic() < deadline, f"owned {owned}{cluster.logs()}"
        time.sleep(0.3)


def ingest_owned(process: EgressdProcess) -> float:
    status, body = http_get(f"{process.base}/metrics")
    if status != 200:
        return 0.0
    text = body.decode()
    return metric_value(text, "egressd_cluster_owned_partitions", role="ingest") or 0.0


def test_a_broker_killed_and_restarted_on_s3_storage_loses_nothing(tmp_path: Path) -> None:
    s3 = MotoS3(tmp_path)
    s3.start("tansu")
    broker = TansuBroker(tmp_path, storage="s3://tansu/", s3=s3)
    try:
        broker.start()
        values = flow_values(seed=31)
        expected, fired = single_process(values + closing_values())
        cluster = Cluster(broker, tmp_path, batch=250)
        half = len(values) // 2
        asyncio.run(produce_split(broker.bootstrap, cluster.raw, values[:half], seed=31))
        try:
            cluster.start("detect-a", "detect")
            cluster.start("ingest-a", "ingest")
            deadline = time.monotonic() + 60
            while not cluster.intervals()[0] and time.monotonic() < deadline:
                time.sleep(0.3)
            assert cluster.intervals()[0], cluster.logs()
            broker.kill()
            time.sleep(2)
            broker.start()  # the same storage: logs and committed offsets are still there
            asyncio.run(produce_split(broker.bootstrap, cluster.raw, values[half:], seed=32))
            asyncio.run(produce_closers(broker.bootstrap, cluster.raw))
            check(cluster, expected, fired)
            deadline = time.monotonic() + 30
            while set(cluster.firing()) != fired and time.monotonic() < deadline:
                time.sleep(0.3)
            assert set(cluster.firing()) == fired, cluster.logs()
        finally:
            codes = cluster.stop_all()
        assert codes == dict.fromkeys(codes, 0), cluster.logs()
    finally:
        broker.stop()
        s3.stop()


def test_an_ingest_killed_after_an_idle_flush_before_its_commit_counts_nothing_twice(
    broker: TansuBroker, tmp_path: Path
) -> None:
    values = flow_values(seed=41)
    expected, fired = single_process(values + closing_values())
    # Batches of 5,000 offsets: the first half of the flows ends mid-batch in every raw
    # partition, so what was read goes out by idle_flush, short of its boundary.
    cluster = Cluster(broker, tmp_path, batch=5000)
    half = len(values) // 2
    asyncio.run(produce_split(broker.bootstrap, cluster.raw, values[:half], seed=41))
    try:
        cluster.start("detect-a", "detect")
        ingest = cluster.start(
            "ingest-a", "ingest", env={"EGRESSD_FAULT": "exit-before-commit-idle:1"}
        )
        assert ingest.process is not None
        assert ingest.process.wait(60) == -signal.SIGKILL
        asyncio.run(produce_split(broker.bootstrap, cluster.raw, values[half:], seed=42))
        asyncio.run(produce_closers(broker.bootstrap, cluster.raw))
        cluster.start("ingest-a2", "ingest")
        check(cluster, expected, fired)
    finally:
        cluster.stop_all()
    logs = cluster.all_logs()
    assert "dropped a replayed" in logs
    assert "overlaps one applied" not in logs


def test_an_ingest_whose_commit_failed_and_that_then_died_counts_nothing_twice(
    broker: TansuBroker, tmp_path: Path
) -> None:
    # Batches end at multiples of 200 offsets; the first 1,200 flows give each raw partition
    # about 300: a batch to the boundary at 200, then one cut short by idle_flush. ingest-a's
    # first commit fails (the test hook stands for a broker in trouble), and it dies
    # (SIGKILL) once a batch cut short is out, before committing it. Left to go on after
    # the failed commit, it would have had two batches out and uncommitted, the second cut
    # where the next owner does not cut: that overlap was counted twice.
    values = flow_values(seed=43)
    expected, fired = single_process(values + closing_values())
    cluster = Cluster(broker, tmp_path, batch=200)
    asyncio.run(produce_split(broker.bootstrap, cluster.raw, values[:1200], seed=43))
    try:
        cluster.start("detect-a", "detect")
        ingest = cluster.start(
            "ingest-a", "ingest", env={"EGRESSD_FAULT": "fail-commit:1,exit-before-commit-idle:1"}
        )
        assert ingest.process is not None
        assert ingest.process.wait(60) == -signal.SIGKILL
        asyncio.run(produce_split(broker.bootstrap, cluster.raw, values[1200:], seed=44))
        asyncio.run(produce_closers(broker.bootstrap, cluster.raw))
        cluster.start("ingest-a2", "ingest")
        check(cluster, expected, fired)
    finally:
        cluster.stop_all()
    log = cluster.processes["ingest-a"].log_path.read_text(errors="replace")
    assert "committing offsets failed" in log and "reading again from the last commit" in log
    logs = cluster.all_logs()
    assert "dropped a replayed" in logs
    assert "overlaps one applied" not in logs


async def produce_spread(bootstrap: str, topic: str, values: list[bytes]) -> None:
    """``values`` in order, round-robin over the raw partitions (so each gets its share)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, linger_ms=5)
    await producer.start()
    try:
        futures = [
            await producer.send(topic, value, partition=i % RAW_PARTITIONS)
            for i, value in enumerate(values)
        ]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


def wait_for_log(process: EgressdProcess, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in process.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {text!r} in\n{process.log()[-3000:]}"
        time.sleep(0.1)


def test_an_ingest_frozen_before_it_produces_is_fenced_when_it_wakes(
    broker: TansuBroker, tmp_path: Path
) -> None:
    # ingest-a reads 100 flows per raw partition (a batch to the boundary at 100, shipped
    # and committed), then 80 more, a batch cut short by idle_flush, and freezes (SIGSTOP,
    # a test hook) just before producing it, past every check a process can make. The
    # group gives its partitions to ingest-b, which reads from the commit at 100, cuts its
    # batches short every 30 offsets (as idle_flush would on slow fetches), ships the first
    # ones and pauses. Then ingest-a wakes and produces its batch, 100-179, on top of
    # ingest-b's 100-129: its generation is older than ingest-b's, so detect drops it.
    values = flow_values(seed=47)
    expected, fired = single_process(values + closing_values())
    cluster = Cluster(broker, tmp_path, batch=100)
    asyncio.run(produce_spread(broker.bootstrap, cluster.raw, values[:400]))
    try:
        detect = cluster.start("detect-a", "detect")
        ingest_a = cluster.start(
            "ingest-a", "ingest", env={"EGRESSD_FAULT": "stop-before-produce-idle:1"}
        )
        wait_committed(cluster, 400, timeout=60)
        asyncio.run(produce_spread(broker.bootstrap, cluster.raw, values[400:720]))
        wait_for_log(ingest_a, "stopping before producing", timeout=30)
        ingest_b = cluster.start(
            "ingest-b", "ingest", env={"EGRESSD_FAULT": "cut-short:30,hold-after-shipment:1"}
        )
        wait_for_log(ingest_b, "holding", timeout=60)
        ingest_a.signal(signal.SIGCONT)
        # Its commit is refused by the group (a member it no longer knows): it starts again.
        wait_for_log(ingest_a, "committing offsets failed", timeout=30)
        asyncio.run(produce_spread(broker.bootstrap, cluster.raw, values[720:]))
        asyncio.run(produce_closers(broker.bootstrap, cluster.raw))
        check(cluster, expected, fired)
        fenced = metric_value(detect.metrics(), "egressd_cluster_fenced_total", role="detect")
        assert (fenced or 0) >= 1, cluster.logs()
    finally:
        cluster.stop_all()
    logs = cluster.all_logs()
    assert re.search(r"dropped a batch \S+ 100-179 of generation \d+", logs), cluster.logs()
    assert "overlaps one applied" not in logs


def test_transactions_on_a_broker_without_them_stop_ingest_at_start_up(
    broker: TansuBroker, tmp_path: Path
) -> None:
    # Tansu answers InitProducerId for a transactional id with an error (UNKNOWN_SERVER_ERROR):
    # the ingest role says which key asked for what the broker lacks and exits as for an
    # invalid configuration (status 2, which the shipped units do not restart), at once,
    # without retrying.
    extra = '\ntransactions = true\ntransactional_id = "ingest-a"\n'
    cluster = Cluster(broker, tmp_path, extra=extra)
    try:
        started = time.monotonic()
        ingest = cluster.start("ingest-a", "ingest", wait_ready=False)
        assert ingest.process is not None
        assert ingest.process.wait(60) == 2, ingest.log()
        took = time.monotonic() - started
        log = ingest.log()
        assert "invalid configuration: cluster.transactions: the broker at" in log
        assert "InitProducerId for transactional_id 'ingest-a'" in log
        assert "does not support transactions" in log
        assert log.count("refused a transactional producer") == 1  # not retried
        assert took < 30, took
    finally:
        cluster.stop_all()


#: BASE with 10-second intervals and 5 seconds' lateness: a live page within 19 s
LIVE = BASE.replace(
    'interval = "1m"\nallowed_lateness = "30s"', 'interval = "10s"\nallowed_lateness = "5s"'
)
#: interval + allowed_lateness of LIVE, session_timeout and state.save_interval of NODE
LIVE_BOUND = 10 + 5 + 2 + 2


def test_a_live_exfiltration_pages_within_the_bound_through_two_and_two_processes(
    broker: TansuBroker, tmp_path: Path
) -> None:
    # Flows stamped with the wall time at which they are produced, to every raw partition
    # (80 a second, so 10-offset batches fill every half second), through two ingest and
    # two detect processes: 180 MB to CN from research must page within interval +
    # allowed_lateness + session timeout + save_interval of being produced, and not before
    # its interval could close (its end + allowed_lateness).
    assert LIVE != BASE
    cluster = Cluster(broker, tmp_path, batch=10, base=LIVE)
    rng = random.Random(5)
    outcome: dict[str, float] = {}

    async def traffic() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=broker.bootstrap, enable_idempotence=False, linger_ms=5
        )
        await producer.start()
        seq = 0
        try:
            started = time.monotonic()
            while time.monotonic() - started < 60 and not cluster.firing():
                now = time.time()
                if "produced" not in outcome and time.monotonic() - started > 8:
                    # The exfiltration: 15 x 12 MB, spread over the raw partitions.
                    futures = []
                    for i in range(15):
                        seq += 1
                        value = goflow2_record(
                            seq, src="10.20.0.17", dst=CN, nbytes=12_000_000, t=now
                        )
                        futures.append(
                            await producer.send(cluster.raw, value, partition=i % RAW_PARTITIONS)
                        )
                    await asyncio.gather(*futures)
                    outcome["produced"] = time.monotonic()
                    outcome["stamp"] = now
                for partition in range(RAW_PARTITIONS):
                    seq += 1
                    value = goflow2_record(
                        seq,
                        src=rng.choice(SOURCES),
                        dst=rng.choice(DESTINATIONS),
                        nbytes=rng.randrange(100, 5000),
                        t=now,
                    )
                    await producer.send(cluster.raw, value, partition=partition)
                await asyncio.sleep(0.05)
        finally:
            await producer.stop()

    try:
        for name in ("detect-a", "detect-b"):
            cluster.start(name, "detect")
        for name in ("ingest-a", "ingest-b"):
            cluster.start(name, "ingest")
        with FirstSeen(cluster) as seen:
            asyncio.run(traffic())
            time.sleep(0.5)
        assert "produced" in outcome, cluster.logs()
        fired = [labels for labels in seen.log if dict(labels)["dst_country"] == "CN"]
        assert [dict(labels)["group"] for labels in fired] == ["research"], cluster.logs()
        delay = seen.log[fired[0]] - outcome["produced"]
        interval_end = (outcome["stamp"] // 10 + 1) * 10
        earliest = interval_end + 5 - outcome["stamp"]
        assert earliest - 1.0 <= delay <= LIVE_BOUND, (delay, earliest, cluster.logs())
        print(f"live page {delay:.1f}s after the flows (interval closed at +{earliest:.1f}s)")
    finally:
        codes = cluster.stop_all()
    assert codes == dict.fromkeys(codes, 0), cluster.logs()


def test_a_caught_up_partition_taken_over_while_quiet_keeps_its_flows_time(
    broker: TansuBroker, tmp_path: Path
) -> None:
    """Flows stamped behind the wall clock (an exporter whose clock lags, a backlog): the
    first half is read and committed, then the raw partitions move to another ingest member
    and stay quiet past IDLE_AFTER. Their event time must go on from where their flows left
    it, as one process's would, not jump to the wall clock: that would close every open
    interval and make the second half late (it did: 242 of 501 intervals never closed).
    Tansu drops offset commit metadata, so the new member reports the partitions quiet and
    the detect side moves on the time it knows."""
    values = flow_values(seed=31)
    expected, _fired = single_process(values + closing_values())
    split = next(
        i
        for i, v in enumerate(values)
        if orjson.loads(v)["time_flow_end_ns"] >= (FLOW_T0 + 1200) * 1e9
    )
    first, second = values[:split], values[split:]
    cluster = Cluster(broker, tmp_path, batch=250)
    try:
        cluster.start("detect-a", "detect")
        cluster.start("ingest-a", "ingest")
        asyncio.run(produce_split(broker.bootstrap, cluster.raw, first, seed=31))
        wait_committed(cluster, len(first), 60)
        assert cluster.processes["ingest-a"].stop() == 0
        ingest_b = cluster.start("ingest-b", "ingest")
        deadline = time.monotonic() + 30
        while ingest_owned(ingest_b) < RAW_PARTITIONS:
            assert time.monotonic() < deadline, cluster.logs()
            time.sleep(0.3)
        time.sleep(15)  # caught up and quiet past IDLE_AFTER (10 s) on their new owner
        asyncio.run(produce_split(broker.bootstrap, cluster.raw, second, seed=32))
        asyncio.run(produce_closers(broker.bootstrap, cluster.raw))
        check(cluster, expected, set(), timeout=60)
    finally:
        codes = cluster.stop_all()
    assert codes == dict.fromkeys(codes, 0), cluster.logs()
