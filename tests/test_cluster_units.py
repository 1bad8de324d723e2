"""The ingest role's batch cuts and the detect role's replay handling, without a broker.

Cuts depend on offsets alone, so reading the same offsets again in other fetch sizes (a
restart, another member) cuts the same batches with the same partials; the detect side
drops what it applied before, batch by batch or offset by offset.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.structs import OffsetAndMetadata
from integration_support import research_config
from kafka_support import FLOW_T0, goflow2_record

from egressd.cluster.detect import Detect, _Partition
from egressd.cluster.ingest import Ingest, _Cut, commit_metadata, committed_event_time
from egressd.cluster.wire import (
    HEARTBEAT,
    KIND,
    PARTIALS,
    Heartbeat,
    batch_info,
    heartbeat_headers,
    partials_headers,
    read_headers,
)
from egressd.config import Config, parse_config
from egressd.enrich.embedded import EmbeddedCountryLabeler
from egressd.errors import DecodeError, SourceError
from egressd.partials import encode_segments
from egressd.pipeline import Progress
from egressd.sinks.metrics import PREFIX

CONFIG = research_config(
    {"interval": "1m", "allowed_lateness": "10s"},
    tail="""
[[sources.kafka]]
bootstrap_servers = ["127.0.0.1:9"]
topics = ["flows"]

[cluster]
role = "{role}"
batch_offsets = 5
state_directory = "{states}"
""",
)
TP = TopicPartition("flows", 0)


@dataclass
class Message:
    offset: int
    value: bytes
    headers: Any = ()


def messages(offsets: list[int]) -> list[Message]:
    return [
        Message(o, goflow2_record(o, nbytes=1000 + o, t=FLOW_T0 + o, dst="8.8.8.8"))
        for o in offsets
    ]


def ingest(tmp_path: Path) -> Ingest:
    config = parse_config(CONFIG.format(role="ingest", states=tmp_path))
    node = Ingest(config, EmbeddedCountryLabeler(), environ={})
    node._on_assigned([TP])
    return node


def count(node: Ingest, fetched: dict[TopicPartition, list[Any]]) -> list[_Cut]:
    """What ``_round`` counts of a fetch: a batch per partition, then what was held past its
    boundary (there, once the batch is committed)."""
    cuts = node._count(fetched)
    while node._held:
        held, node._held = node._held, {}
        cuts += node._count(held)
    return cuts


def summary(cuts: list[_Cut]) -> list[tuple[int, int, int, bool]]:
    """(first, last, bytes, kept apart per offset) of each cut."""
    out = []
    for cut in cuts:
        if cut.segments is not None:
            size = sum(p[2].bytes for _f, _l, partials in cut.segments for p in partials)
        else:
            size = sum(p[2].bytes for p in cut.partials)
        out.append((cut.first, cut.last, size, cut.segments is not None))
    return out


def test_batches_end_at_offset_boundaries_whatever_the_fetch_sizes(tmp_path: Path) -> None:
    one = ingest(tmp_path)
    cuts = []
    for piece in ([0, 1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11]):
        cuts += count(one, {TP: messages(piece)})
    # The first batch after an assignment keeps its partials apart per offset.
    assert summary(cuts) == [(0, 4, 5010, True), (5, 9, 5035, False)]
    assert one._lanes[TP].first == 10  # 10 and 11 wait for their boundary (or idle_flush)

    # Another member reading again from the commit at 5, in other pieces, cuts the same.
    two = ingest(tmp_path)
    again = []
    for piece in ([5], [6, 7], [8, 9, 10, 11, 12, 13, 14, 15]):
        again += count(two, {TP: messages(piece)})
    assert summary(again) == [(5, 9, 5035, True), (10, 14, 5060, False)]


def test_a_gap_in_offsets_ends_the_batch_at_the_next_record(tmp_path: Path) -> None:
    node = ingest(tmp_path)
    cuts = count(node, {TP: messages([0, 1, 7, 8, 9, 12])})
    assert [(c.first, c.last) for c in cuts] == [(0, 1), (7, 9)]
    assert node._lanes[TP].first == 12


def detect(tmp_path: Path, config: Config | None = None) -> tuple[Detect, _Partition]:
    if config is None:
        config = parse_config(CONFIG.format(role="detect", states=tmp_path))
    node = Detect(config, EmbeddedCountryLabeler(), lambda alerts: None)
    part = _Partition(TopicPartition("partials", 0), node._new_engine())
    return node, part


def test_detect_drops_replays_whole_or_offset_by_offset(tmp_path: Path) -> None:
    node, part = detect(tmp_path)
    # A batch 0-2 (cut short), then the batch 0-4 of a member that read the same offsets
    # again: kept apart per offset, only 3 and 4 are applied.
    short = ingest(tmp_path)
    short._count({TP: messages([0, 1, 2])})
    (first_cut,) = [short._cut(TP, short._lanes[TP])]
    again = ingest(tmp_path)
    (second_cut,) = count(again, {TP: messages([0, 1, 2, 3, 4])})
    for cut in (first_cut, second_cut, second_cut):
        assert cut.segments is not None
        node._apply(
            part,
            Message(
                0,
                encode_segments(cut.segments, 60.0),
                partials_headers(cut.key, cut.first, cut.last, FLOW_T0 + cut.last),
            ),
        )
    total = sum(a.bytes for b in part.engine.aggregator.buckets.values() for a in b.values())
    assert total == sum(1000 + o for o in range(5))
    assert node.stats.replays_dropped == 3 + 1  # offsets 0-2 of the second, then all of it
    assert node.stats.partial_overlaps == 0
    assert part.applied == {"flows:0": 4}


def test_detect_event_time_is_the_slowest_source_partition(tmp_path: Path) -> None:
    node, part = detect(tmp_path)
    beat = Heartbeat({"flows:0": FLOW_T0 + 600, "flows:1": FLOW_T0 + 120}, {"flows": 2})
    node._apply(part, Message(0, beat.encode(), heartbeat_headers()))
    assert part.engine.event_time() == FLOW_T0 + 120
    beat = Heartbeat({"flows:1": FLOW_T0 + 900}, {"flows": 2})
    node._apply(part, Message(1, beat.encode(), heartbeat_headers()))
    assert part.engine.event_time() == FLOW_T0 + 600
    node._apply(part, Message(2, b"{}", [("egressd-kind", b"nonsense")]))
    assert node.stats.bad_messages == 1


async def test_a_snapshot_holding_more_open_intervals_than_lateness_restores_them_all(
    tmp_path: Path,
) -> None:
    # A detect partition closes an interval only when its slowest source partition has
    # passed it, so it may hold far more open intervals than the allowed lateness (10 s on
    # 1 m: three) would in one process. A snapshot of it restores every one: none of the
    # bytes they counted is lost when a member takes the partition over.
    node, part = detect(tmp_path)
    beat = Heartbeat({"flows:0": FLOW_T0, "flows:1": FLOW_T0}, {"flows": 2})
    node._apply(part, Message(0, beat.encode(), heartbeat_headers()))
    source = ingest(tmp_path)
    source._partitions = 1  # (one partials partition: this one)
    for cut in count(source, {TP: messages(list(range(300)))}):
        for _partition, value, _rows in source._encode(cut, 60.0):
            headers = partials_headers(cut.key, cut.first, cut.last, FLOW_T0 + cut.last)
            node._apply(part, Message(cut.last, value, headers))
    buckets = part.engine.aggregator.buckets
    assert len(buckets) >= 5  # (flows:1 has not passed FLOW_T0: nothing closed)
    held = {start: sum(a.bytes for a in b.values()) for start, b in buckets.items()}
    assert sum(held.values()) == sum(1000 + o for o in range(300))
    part.position = 1
    await node._save([part])
    loaded = await node._load(part.tp)
    assert loaded.loaded
    assert loaded.engine.dropped_on_load["open_intervals"] == 0
    restored = loaded.engine.aggregator.buckets
    assert {start: sum(a.bytes for a in b.values()) for start, b in restored.items()} == held


async def test_a_snapshot_from_the_future_is_set_back_to_wall_time(tmp_path: Path) -> None:
    # A snapshot saved by a clock a day ahead: its engine and its source partitions' times
    # go back to wall time + max_clock_ahead on load, as the all-in-one state file does.
    node, part = detect(tmp_path)
    ahead = Heartbeat({"flows:0": FLOW_T0 + 86400}, {"flows": 1})
    node._apply(part, Message(0, ahead.encode(), heartbeat_headers()))
    part.position = 1
    assert part.engine.event_time() == FLOW_T0 + 86400
    await node._save([part])
    node.wall = lambda: FLOW_T0 + 600.0
    loaded = await node._load(part.tp)
    limit = FLOW_T0 + 600 + 300  # max_clock_ahead defaults to 5 minutes
    assert loaded.loaded and loaded.position == 1
    assert loaded.engine.event_time() <= limit
    assert loaded.times == {"flows:0": limit}
    assert node.stats.snapshots_clamped == 1
    node.partitions[loaded.tp] = loaded
    assert (f"{PREFIX}state_time_clamped_total", {}, 1.0) in node.metrics()
    # Detection goes on at real time: the next heartbeat moves event time again.
    node.wall = lambda: FLOW_T0 + 1200.0
    beat = Heartbeat({"flows:0": FLOW_T0 + 1200}, {"flows": 1})
    node._apply(loaded, Message(1, beat.encode(), heartbeat_headers()))
    assert loaded.engine.event_time() == FLOW_T0 + 1200
    # A snapshot within the limit loads as it was.
    node.wall = lambda: FLOW_T0 + 600.0
    again = await node._load(part.tp)
    assert node.stats.snapshots_clamped == 2  # the saved one is still a day ahead
    node.wall = lambda: FLOW_T0 + 86400.0
    await node._load(part.tp)
    assert node.stats.snapshots_clamped == 2
    assert again.times == {"flows:0": limit}


async def test_a_snapshot_over_state_max_size_is_not_read(tmp_path: Path) -> None:
    # The detect role applies state.max_size as the all-in-one daemon does: a snapshot
    # over it is set aside unread and the partition starts afresh (counted).
    node, part = detect(tmp_path)
    beat = Heartbeat({"flows:0": FLOW_T0 + 600}, {"flows": 1})
    node._apply(part, Message(0, beat.encode(), heartbeat_headers()))
    part.position = 1
    await node._save([part])
    path = tmp_path / f"{node._name(part.tp)}.json"
    size = path.stat().st_size
    assert (await node._load(part.tp)).loaded  # within the default limit: loaded
    config = parse_config(
        CONFIG.format(role="detect", states=tmp_path) + f"\n[state]\nmax_size = {size - 1}\n"
    )
    small = Detect(config, EmbeddedCountryLabeler(), lambda alerts: None)
    fresh = await small._load(part.tp)
    assert not fresh.loaded and fresh.position == 0 and fresh.times == {}
    assert small.stats.snapshots_too_large == 1 and small.stats.snapshots_loaded == 0
    assert not path.exists()  # moved aside, as a state file over the limit is
    assert [p.name for p in tmp_path.glob(f"{path.name}.bad-*")]
    assert ("egressd_cluster_snapshots_too_large_total", {"role": "detect"}, 1.0) in (
        small.metrics()
    )


async def test_a_snapshot_saved_over_state_max_size_is_reported_when_saved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Such a snapshot would be set aside at the next load: the save says so at once, while
    # the operator can still raise the limit, instead of the partition starting afresh later.
    node, part = detect(tmp_path)
    beat = Heartbeat({"flows:0": FLOW_T0 + 600}, {"flows": 1})
    node._apply(part, Message(0, beat.encode(), heartbeat_headers()))
    part.position = 1
    await node._save([part])
    assert node.stats.snapshots_saved_too_large == 0
    size = (tmp_path / f"{node._name(part.tp)}.json").stat().st_size
    # Half the first snapshot's size: the second holds another save time, whose text can be
    # a few digits shorter (a float's shortest repr), so "one byte under" was not always under.
    config = parse_config(
        CONFIG.format(role="detect", states=tmp_path) + f"\n[state]\nmax_size = {size // 2}\n"
    )
    small, again = detect(tmp_path, config)
    small._apply(again, Message(0, beat.encode(), heartbeat_headers()))
    again.position = 1
    with caplog.at_level("ERROR"):
        await small._save([again])
    assert small.stats.snapshots == 1  # saved whole all the same
    assert small.stats.snapshots_saved_too_large == 1
    assert "over state.max_size" in caplog.text and "raise state.max_size" in caplog.text
    assert ("egressd_cluster_snapshots_saved_too_large_total", {"role": "detect"}, 1.0) in (
        small.metrics()
    )


class FakeConsumer:
    def __init__(self, highwater: dict[TopicPartition, int]) -> None:
        self._highwater = highwater

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater.get(tp)

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {tp.partition for tp in self._highwater if tp.topic == topic}


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, int]] = []

    async def send(self, topic: str, value: bytes, partition: int, headers: Any) -> Any:
        self.sent.append((topic, value, partition))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


async def test_heartbeats_tell_every_partials_partition_how_far_each_source_came(
    tmp_path: Path,
) -> None:
    node = ingest(tmp_path)
    other = TopicPartition("flows", 1)
    node._on_assigned([other])
    clock = [1000.0]
    node.monotonic = lambda: clock[0]
    node.wall = lambda: FLOW_T0 + 86400.0
    node._consumer = FakeConsumer({TP: 10, other: 4})
    producer = node._producer = FakeProducer()
    node._partitions = 3
    busy, quiet = node._lanes[TP], node._lanes[other]
    busy.acked_time, busy.last, busy.progress = FLOW_T0 + 500, 9, Progress(999.0, FLOW_T0 + 500)
    quiet.acked_time, quiet.last, quiet.progress = -math.inf, 3, Progress(980.0)
    await node._heartbeat()
    # Every partials partition hears it; the busy source reports what was acknowledged;
    # the quiet one (caught up, nothing for 20 s, no record ever) is at wall time (less the
    # quiet time it takes to count as idle).
    assert sorted(p for _t, _v, p in producer.sent) == [0, 1, 2]
    beat = Heartbeat.decode(producer.sent[0][1])
    assert beat.partitions == {"flows": 2}
    assert beat.times == {"flows:0": FLOW_T0 + 500, "flows:1": FLOW_T0 + 86400 - 10}
    # A quiet partition that had records moves on from them at wall-clock pace.
    quiet.acked_time = FLOW_T0 + 300
    quiet.progress.note(FLOW_T0 + 300, 980.0)
    producer.sent.clear()
    await node._heartbeat()
    assert Heartbeat.decode(producer.sent[0][1]).times["flows:1"] == FLOW_T0 + 300 + 20
    # A partition with records not yet read is not quiet, whatever the clock says: it stays
    # at what was acknowledged.
    node._consumer = FakeConsumer({TP: 10, other: 9})
    producer.sent.clear()
    await node._heartbeat()
    assert Heartbeat.decode(producer.sent[0][1]).times == {
        "flows:0": FLOW_T0 + 500,
        "flows:1": FLOW_T0 + 300,
    }


class TakingOverConsumer(FakeConsumer):
    """Caught up at the group's commits, which it answers with their metadata, as aiokafka's
    coordinator does; seeks are recorded."""

    def __init__(self, commits: dict[TopicPartition, tuple[int, str]]) -> None:
        super().__init__({tp: offset for tp, (offset, _m) in commits.items()})
        fetched = {tp: OffsetAndMetadata(offset, meta) for tp, (offset, meta) in commits.items()}

        class Coordinator:
            async def fetch_committed_offsets(
                self, partitions: list[TopicPartition]
            ) -> dict[TopicPartition, OffsetAndMetadata]:
                return {tp: fetched[tp] for tp in partitions if tp in fetched}

        self._coordinator = Coordinator()
        self.seeks: list[tuple[TopicPartition, int]] = []

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


async def test_a_quiet_partition_taken_over_goes_on_from_its_flows_not_the_wall_clock(
    tmp_path: Path,
) -> None:
    """A member assigned caught-up partitions learns from the commit how far their flows
    came: quiet past IDLE_AFTER, it moves them on from there, as the member before would
    have; at wall time it would close intervals flows stamped behind it still fill. Without
    the time in the commit (a broker that drops metadata) it reports the partition quiet,
    for the detect side to move on the time it knows. A partition that never had a record
    is at wall time, as before."""
    node = ingest(tmp_path)
    other, empty = TopicPartition("flows", 1), TopicPartition("flows", 2)
    clock = [1000.0]
    node.monotonic = lambda: clock[0]
    node.wall = lambda: FLOW_T0 + 86400.0
    consumer = node._consumer = TakingOverConsumer(
        {TP: (40, commit_metadata(FLOW_T0 + 1200)), other: (7, ""), empty: (0, "")}
    )
    consumer._highwater[empty] = 0
    producer = node._producer = FakeProducer()
    node._partitions = 1
    await node._assign([TP, other, empty])
    assert consumer.seeks == [(TP, 40), (other, 7), (empty, 0)]
    await node._heartbeat()
    # At once: where the flows came (a commit without the time and an empty partition say
    # nothing yet).
    beat = Heartbeat.decode(producer.sent[-1][1])
    assert (beat.times, beat.quiet) == ({"flows:0": FLOW_T0 + 1200}, {})
    clock[0] += 15  # quiet past IDLE_AFTER
    await node._heartbeat()
    beat = Heartbeat.decode(producer.sent[-1][1])
    assert beat.times == {"flows:0": FLOW_T0 + 1200 + 15, "flows:2": FLOW_T0 + 86400 - 10}
    assert (beat.quiet, beat.wall) == ({"flows:1": 15.0}, FLOW_T0 + 86400)


def test_detect_moves_a_quiet_taken_over_partition_on_from_the_time_it_knew(
    tmp_path: Path,
) -> None:
    node, part = detect(tmp_path)

    def beat(offset: int, times: dict[str, float], quiet: dict[str, float]) -> None:
        blob = Heartbeat(times, {"flows": 2}, quiet=quiet, wall=FLOW_T0 + 86400).encode()
        node._apply(part, Message(offset, blob, heartbeat_headers()))

    # The member before: flows:0 came to FLOW_T0 + 1200 and moved on while quiet.
    beat(0, {"flows:0": FLOW_T0 + 1205, "flows:1": FLOW_T0 + 1300}, {})
    # Its new owner reports it quiet 10 s, then 12 s, then 40 s: from the time known here,
    # at wall-clock pace from the first report; never to the wall clock.
    beat(1, {"flows:1": FLOW_T0 + 1310}, {"flows:0": 10.0})
    assert part.times["flows:0"] == FLOW_T0 + 1205
    beat(2, {}, {"flows:0": 12.0})
    assert part.times["flows:0"] == FLOW_T0 + 1207
    beat(3, {}, {"flows:0": 40.0})
    assert part.times["flows:0"] == FLOW_T0 + 1235
    # Another member takes it over (its quiet starts again): on from there.
    beat(4, {}, {"flows:0": 10.0})
    beat(5, {}, {"flows:0": 11.5})
    assert part.times["flows:0"] == FLOW_T0 + 1236.5
    # Records again: the member's own times count.
    beat(6, {"flows:0": FLOW_T0 + 1250}, {})
    assert part.times["flows:0"] == FLOW_T0 + 1250 and "flows:0" not in part.quiet_from
    # A partition never heard of here: at the sender's wall time, as one without records.
    beat(7, {}, {"flows:2": 10.0})
    assert part.times["flows:2"] == FLOW_T0 + 86400 - 10
    # Bad quiet values make a bad heartbeat.
    with pytest.raises(DecodeError):
        Heartbeat.decode(b'{"v": 1, "times": {}, "partitions": {}, "quiet": {"a": -1}}')


def test_commit_metadata_round_trips_and_ignores_what_is_not_its_own() -> None:
    assert committed_event_time(commit_metadata(FLOW_T0 + 0.25)) == FLOW_T0 + 0.25
    assert commit_metadata(-math.inf) == ""
    for foreign in ("", None, "kafka-connect", "egressd:t=soon", "egressd:t=inf"):
        assert committed_event_time(foreign) == -math.inf


class LiveConsumer(FakeConsumer):
    """Caught up: its highwater follows what was fetched; commits succeed."""

    async def commit(self, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        self._highwater.update((tp, offset) for tp, (offset, _metadata) in offsets.items())


class HeaderProducer(FakeProducer):
    """Keeps each message's headers too."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: list[str | None] = []

    async def send(self, topic: str, value: bytes, partition: int, headers: Any) -> Any:
        self.kinds.append(read_headers(headers).get(KIND))
        return await super().send(topic, value, partition, headers)


async def test_a_clock_stepped_back_does_not_stall_the_heartbeat(tmp_path: Path) -> None:
    # The only exporter's clock steps back an hour and its records keep coming, one a
    # second: they never move the partition's event time on, so, as in the all-in-one
    # daemon, wall time does once they have not for IDLE_AFTER.
    node = ingest(tmp_path)
    clock = [1000.0]
    node.monotonic = lambda: clock[0]
    node.wall = lambda: FLOW_T0 + 600.0
    node._lanes[TP].progress = Progress(clock[0])
    node._consumer = LiveConsumer({TP: 0})
    producer = node._producer = HeaderProducer()
    node._partitions = 1
    times: list[float] = []
    for offset in range(40):
        stamp = FLOW_T0 + offset if offset < 5 else FLOW_T0 - 3600 + offset
        node._consumer._highwater[TP] = offset + 1
        await node._round({TP: [Message(offset, goflow2_record(offset, t=stamp))]})
        for (_t, value, _p), kind in zip(producer.sent, producer.kinds, strict=True):
            if kind == HEARTBEAT:
                times.append(Heartbeat.decode(value).times["flows:0"])
            else:  # no batch goes out after a heartbeat that passed it
                assert kind == PARTIALS and producer.kinds[-1] == HEARTBEAT
        producer.sent.clear()
        producer.kinds.clear()
        clock[0] += 1.0
    # Records up to offset 4 moved event time to FLOW_T0 + 4; from offset 5 on, it stood
    # still while records came, and 35 s later the heartbeat is at wall-clock pace.
    assert times[-1] >= FLOW_T0 + 4 + 35 - 1
    assert times == sorted(times)
    # Nothing counted was left behind the heartbeat: every stalled batch went out first.
    assert node._lanes[TP].first is None


class FailingProducer(FakeProducer):
    """Fails the first message it is given."""

    async def send(self, topic: str, value: bytes, partition: int, headers: Any) -> Any:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.sent:
            done.set_exception(TimeoutError("no acknowledgement"))
        else:
            done.set_result(None)
        self.sent.append((topic, value, partition))
        return done


async def test_a_later_batch_is_never_sent_where_an_earlier_one_failed(tmp_path: Path) -> None:
    node = ingest(tmp_path)
    node._partitions = 1
    producer = node._producer = FailingProducer()
    cuts = count(node, {TP: messages(list(range(12)))})
    assert [(c.first, c.last) for c in cuts] == [(0, 4), (5, 9)]
    with pytest.raises(TimeoutError):
        await node._ship(cuts)
    # The batch 5-9 waited for 0-4, which failed: it was never produced, and nothing was
    # committed; both are read and produced again, in order.
    assert len(producer.sent) == 1
    assert node.stats.commits == 0


class RecordingProducer(FakeProducer):
    """Keeps every message as the detect side would read it."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[Message] = []

    async def send(self, topic: str, value: bytes, partition: int, headers: Any) -> Any:
        self.messages.append(Message(len(self.messages), value, headers))
        return await super().send(topic, value, partition, headers)


class CommittingConsumer(LiveConsumer):
    def __init__(self, fail: bool = False) -> None:
        super().__init__({TP: 0})
        self.fail = fail
        self.commits: list[dict[TopicPartition, tuple[int, str]]] = []

    async def commit(self, offsets: dict[TopicPartition, tuple[int, str]]) -> None:
        if self.fail:
            raise RuntimeError("the coordinator is gone")
        self.commits.append(dict(offsets))
        await super().commit(offsets)


def member(tmp_path: Path, generation: int, *, fail: bool = False) -> Ingest:
    """An ingest member assigned TP in ``generation``, with a clock that only moves on demand."""
    config = parse_config(CONFIG.format(role="ingest", states=tmp_path))
    node = Ingest(config, EmbeddedCountryLabeler(), environ={})
    node._consumer = CommittingConsumer(fail)
    node._consumer._coordinator = type("Coordinator", (), {"generation": generation})()
    clock = [1000.0]
    node.monotonic = lambda: clock[0]
    node._on_assigned([TP])
    node._producer = RecordingProducer()
    node._partitions = 1
    node._last_heartbeat = math.inf  # no heartbeat unless a test asks
    return node


def partials_of(node: Ingest) -> list[Message]:
    producer = node._producer
    assert isinstance(producer, RecordingProducer)
    return [m for m in producer.messages if read_headers(m.headers).get(KIND) == PARTIALS]


def applied_bytes(part: _Partition) -> int:
    return sum(a.bytes for b in part.engine.aggregator.buckets.values() for a in b.values())


def test_batches_are_kept_apart_per_offset_up_to_the_first_boundary(tmp_path: Path) -> None:
    # Assigned at offset 2: offsets 2 and 3 go out cut short (idle_flush); the batch that
    # continues to the boundary at 5 is kept apart per offset too, the next one is not.
    node = ingest(tmp_path)
    cuts = count(node, {TP: messages([2, 3])})
    assert cuts == []
    cuts = [node._cut(TP, node._lanes[TP])]
    cuts += count(node, {TP: messages([4, 5, 6, 7, 8, 9, 10])})
    assert [(c.first, c.last, c.segments is not None) for c in cuts] == [
        (2, 3, True),
        (4, 4, True),
        (5, 9, False),
    ]
    # One batch per partition at a time: what lies past a boundary waits for the commit.
    node = ingest(tmp_path)
    assert [(c.first, c.last) for c in node._count({TP: messages(list(range(12)))})] == [(0, 4)]
    assert [m.offset for m in node._held[TP]] == list(range(5, 12))


async def test_a_failed_commit_stops_production_until_the_partitions_are_read_again(
    tmp_path: Path,
) -> None:
    # Offsets 0-11 in one fetch: the batch 0-4 goes out, its commit fails. The batch 5-9
    # (held past the boundary) is not produced on top of it: the role starts again and
    # reads from the last commit, so no more than one uncommitted batch is ever out.
    node = member(tmp_path, 1, fail=True)
    with pytest.raises(SourceError, match="committing offsets failed"):
        await node._round({TP: messages(list(range(12)))})
    assert [(batch_info(read_headers(m.headers)).first) for m in partials_of(node)] == [0]
    assert node.stats.commit_failures == 1
    # The same with the test hook that fails commits (as a broker in trouble would).
    hooked = Ingest(
        parse_config(CONFIG.format(role="ingest", states=tmp_path)),
        EmbeddedCountryLabeler(),
        environ={"EGRESSD_FAULT": "fail-commit:1,exit-before-commit:9"},
    )
    assert (hooked._fail_commits, hooked._exit_after) == (1, 9)


async def test_a_member_that_stalled_past_its_session_timeout_produces_nothing(
    tmp_path: Path,
) -> None:
    node = member(tmp_path, 1)
    await node._round({TP: messages([0, 1, 2])})
    node._stalled = True  # the ticker saw the event loop stand still (SIGSTOP) that long
    with pytest.raises(SourceError, match="stalled past the group's session timeout"):
        await node._round({TP: messages([3, 4])})
    assert partials_of(node) == [] and node.stats.stalls == 1
    node._on_assigned([TP])  # assigned again: the group heard from it
    assert not node._stalled


@pytest.mark.parametrize("position", range(5))
async def test_a_stale_member_waking_with_a_batch_counts_nothing_twice(
    tmp_path: Path, position: int
) -> None:
    # Member A (generation 1) shipped and committed 0-4, counted 5-7 and froze past the
    # check, before producing. The group gave the partition to B (generation 2), which read
    # from the commit at 5: 5-6 cut short, 7-9 to the boundary (both kept apart per
    # offset), then 10-14. A wakes and produces 5-7 on top; its message can land anywhere
    # among B's (``position``). Every offset is counted once, wherever it lands.
    a = member(tmp_path, 1)
    await a._round({TP: messages([0, 1, 2, 3, 4])})
    await a._round({TP: messages([5, 6, 7])})
    stale = [a._cut(TP, a._lanes[TP])]
    assert stale[0].segments is None  # past the first boundary: partials summed
    await a._ship(stale)
    b = member(tmp_path, 2)
    await b._round({TP: messages([5, 6])})
    await b._ship([b._cut(TP, b._lanes[TP])])
    b._last_heartbeat = -math.inf
    await b._round({TP: messages([7, 8, 9, 10, 11, 12, 13, 14])})
    assert isinstance(b._producer, RecordingProducer)
    b_messages = [m for m in b._producer.messages if read_headers(m.headers).get(KIND)]
    assert [read_headers(m.headers)[KIND] for m in b_messages] == [PARTIALS] * 3 + [HEARTBEAT]
    a_first, a_stale = partials_of(a)
    order = [a_first, *b_messages]
    order.insert(1 + position, a_stale)
    node, part = detect(tmp_path)
    for message in order:
        node._apply(part, message)
    assert applied_bytes(part) == sum(1000 + o for o in range(15))
    assert node.stats.partial_overlaps == 0
    # Landing on B's 5-6 and past it, A's batch was fenced: summed, it cannot be trimmed.
    # Before, B's batches (kept apart per offset) skipped what it had applied; after B's
    # 7-9, it was a replay.
    assert node.stats.fenced == (1 if position == 1 else 0)
    assert node.stats.replays_dropped >= (1 if position >= 2 else 0)
    assert part.generations == {"flows:0": 2}


async def test_heartbeats_name_the_generation_that_owns_each_source_partition(
    tmp_path: Path,
) -> None:
    # B (generation 2) took the partition and beat before producing; A (generation 1)
    # then produces a summed batch over offsets applied before: fenced, as it would be
    # after a batch of B. Heartbeat times themselves are not fenced: a stalled member's
    # say how far what it had acknowledged reached, which stays true.
    a = member(tmp_path, 1)
    await a._round({TP: messages([0, 1, 2, 3, 4])})
    await a._round({TP: messages([5, 6])})
    await a._ship([a._cut(TP, a._lanes[TP])])
    a_first, a_second = partials_of(a)
    node, part = detect(tmp_path)
    node._apply(part, a_first)
    # A batch 3-6 of A (as if cut elsewhere) after B's heartbeat.
    beat = Heartbeat({"flows:0": FLOW_T0 + 4}, {"flows": 1}, {"flows:0": 2})
    node._apply(part, Message(1, beat.encode(), heartbeat_headers()))
    info = batch_info(read_headers(a_second.headers))
    overlapping = Message(
        2,
        a_second.value,
        partials_headers(info.source, 3, info.last, info.event_time, info.generation),
    )
    node._apply(part, overlapping)
    assert node.stats.fenced == 1 and applied_bytes(part) == sum(1000 + o for o in range(5))
    old = Heartbeat({"flows:0": FLOW_T0 + 9}, {"flows": 1}, {"flows:0": 1})
    node._apply(part, Message(3, old.encode(), heartbeat_headers()))
    assert part.times == {"flows:0": FLOW_T0 + 9} and part.generations == {"flows:0": 2}


async def test_generations_that_start_again_lose_nothing(tmp_path: Path) -> None:
    # B (generation 7) produced 0-4 and committed, then 5-7 (cut short) and died before
    # committing. The group's metadata was lost meanwhile: D joins it in generation 0 and
    # reads from the commit at 5. Its batches are not taken for a stale member's: the one
    # kept apart per offset skips 5-7, the summed one lies past everything applied.
    b = member(tmp_path, 7)
    await b._round({TP: messages([0, 1, 2, 3, 4])})
    await b._round({TP: messages([5, 6, 7])})
    await b._ship([b._cut(TP, b._lanes[TP])])
    d = member(tmp_path, 0)
    await d._round({TP: messages([5, 6, 7, 8, 9, 10, 11, 12, 13, 14])})
    node, part = detect(tmp_path)
    for message in partials_of(b) + partials_of(d):
        node._apply(part, message)
    assert applied_bytes(part) == sum(1000 + o for o in range(15))
    assert node.stats.fenced == 0 and part.generations == {"flows:0": 0}


async def test_snapshots_keep_the_generations_heard(tmp_path: Path) -> None:
    node, part = detect(tmp_path)
    beat = Heartbeat({"flows:0": FLOW_T0 + 100}, {"flows": 1}, {"flows:0": 7})
    node._apply(part, Message(0, beat.encode(), heartbeat_headers()))
    part.position = 1
    await node._save([part])
    loaded = await node._load(part.tp)
    assert loaded.loaded and loaded.generations == {"flows:0": 7}


class TransactionalProducer(RecordingProducer):
    """A transactional producer's calls, in order; ``fail_send`` fails the N-th send."""

    def __init__(self, fail_send: int = 0) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.fail_send = fail_send
        self.offsets: list[tuple[dict[TopicPartition, tuple[int, str]], str]] = []
        self.in_transaction = False

    async def begin_transaction(self) -> None:
        assert not self.in_transaction
        self.in_transaction = True
        self.calls.append("begin")

    async def send(self, topic: str, value: bytes, partition: int, headers: Any) -> Any:
        assert self.in_transaction, "a transactional producer sends inside transactions only"
        self.calls.append(f"send:{read_headers(headers)[KIND].decode()}")
        if len(self.messages) + 1 == self.fail_send:
            self.messages.append(Message(len(self.messages), value, headers))
            failed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            failed.set_exception(TimeoutError("no acknowledgement"))
            return failed
        return await super().send(topic, value, partition, headers)

    async def send_offsets_to_transaction(
        self, offsets: dict[TopicPartition, tuple[int, str]], group_id: str
    ) -> None:
        assert self.in_transaction
        self.calls.append("offsets")
        self.offsets.append((dict(offsets), group_id))

    async def commit_transaction(self) -> None:
        assert self.in_transaction
        self.in_transaction = False
        self.calls.append("commit")

    async def abort_transaction(self) -> None:
        assert self.in_transaction
        self.in_transaction = False
        self.calls.append("abort")


TRANSACTIONS = '\ntransactions = true\ntransactional_id = "ingest-1"\n'


def transactional(tmp_path: Path, producer: TransactionalProducer) -> Ingest:
    config = parse_config(CONFIG.format(role="ingest", states=tmp_path) + TRANSACTIONS)
    node = Ingest(config, EmbeddedCountryLabeler(), environ={})
    node._consumer = CommittingConsumer()
    node._on_assigned([TP])
    node._producer = producer
    node._partitions = 1
    node._last_heartbeat = math.inf
    return node


async def test_with_transactions_partials_and_input_offsets_commit_together(
    tmp_path: Path,
) -> None:
    producer = TransactionalProducer()
    node = transactional(tmp_path, producer)
    await node._round({TP: messages(list(range(7)))})
    # Batch 0-4, then the held 5-6 wait for their boundary: one transaction holds the
    # partials and the input offset (5, for the ingest consumer group); the consumer
    # commits nothing itself.
    assert producer.calls == ["begin", "send:partials", "offsets", "commit"]
    # The offset carries the event time the partition's flows reached (for its next owner).
    reached = commit_metadata(node._lanes[TP].acked_time)
    assert reached.startswith("egressd:t=")
    assert producer.offsets == [({TP: (5, reached)}, "egressd")]
    consumer = node._consumer
    assert isinstance(consumer, CommittingConsumer) and consumer.commits == []
    assert node.stats.commits == 1
    # Heartbeats go out in transactions of their own.
    producer.calls.clear()
    node._last_heartbeat = -math.inf
    node._lanes[TP].progress = Progress(node.monotonic())
    await node._round({})
    assert producer.calls == ["begin", "send:heartbeat", "commit"]


async def test_a_failed_transaction_is_aborted_and_nothing_committed(tmp_path: Path) -> None:
    producer = TransactionalProducer(fail_send=1)
    node = transactional(tmp_path, producer)
    with pytest.raises(TimeoutError):
        await node._round({TP: messages(list(range(5)))})
    assert producer.calls == ["begin", "send:partials", "abort"]
    assert producer.offsets == [] and node.stats.commits == 0


class Client:
    """A client that starts as told: ``error`` is raised by start()."""

    def __init__(self, error: Exception | None = None, **options: Any) -> None:
        self.options = options
        self.error = error
        self.stopped = False

    async def start(self) -> None:
        if self.error is not None:
            raise self.error

    async def stop(self) -> None:
        self.stopped = True

    async def partitions_for(self, topic: str) -> set[int]:
        return {0}

    def subscribe(self, topics: list[str], listener: Any) -> None:
        self.topics = topics


async def test_a_broker_without_transactions_stops_the_ingest_role_with_the_key(
    tmp_path: Path,
) -> None:
    from aiokafka.errors import KafkaConnectionError, UnknownError

    from egressd.errors import ConfigError

    config = parse_config(CONFIG.format(role="ingest", states=tmp_path) + TRANSACTIONS)
    made: list[Client] = []

    def producers(error: Exception | None) -> Any:
        def make(**options: Any) -> Client:
            made.append(Client(error, **options))
            return made[-1]

        return make

    ok = Ingest(
        config,
        EmbeddedCountryLabeler(),
        consumer_factory=Client,
        producer_factory=producers(None),
        environ={},
    )
    await ok._connect()
    assert made[-1].options["transactional_id"] == "ingest-1"
    assert made[-1].options["enable_idempotence"] is True
    # A broker that answers InitProducerId with an error (Tansu: UnknownError) cannot
    # give transactions: a configuration problem naming the key, not retried.
    refused = Ingest(
        config,
        EmbeddedCountryLabeler(),
        consumer_factory=Client,
        producer_factory=producers(UnknownError()),
        environ={},
    )
    with pytest.raises(
        ConfigError,
        match=r"cluster\.transactions: .*UnknownError.*"
        r"does not support transactions",
    ):
        await refused._connect()
    assert made[-1].stopped
    # One that cannot be reached yet is retried like any connection failure.
    unreachable = Ingest(
        config,
        EmbeddedCountryLabeler(),
        consumer_factory=Client,
        producer_factory=producers(KafkaConnectionError()),
        environ={},
    )
    with pytest.raises(SourceError):
        await unreachable._connect()


async def test_detect_reads_committed_transactions_only_with_transactions(
    tmp_path: Path,
) -> None:
    made: list[Client] = []

    def consumers(**options: Any) -> Client:
        made.append(Client(None, **options))
        return made[-1]

    for extra, isolation in (("", None), ("\ntransactions = true\n", "read_committed")):
        config = parse_config(CONFIG.format(role="detect", states=tmp_path) + extra)
        node = Detect(
            config, EmbeddedCountryLabeler(), lambda alerts: None, consumer_factory=consumers
        )
        await node._connect()
        assert made[-1].options.get("isolation_level") == isolation


class DetectConsumer:
    """The group's committed offsets, and where the detect role told the consumer to read."""

    def __init__(self) -> None:
        self.committed_offsets: dict[TopicPartition, int] = {}
        self.seeks: list[tuple[TopicPartition, int]] = []

    async def committed(self, tp: TopicPartition) -> int | None:
        return self.committed_offsets.get(tp)

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed_offsets.update(offsets)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.seeks.append((tp, 0))


async def test_a_rebalance_saves_nothing_and_keeps_what_comes_back_untouched(
    tmp_path: Path,
) -> None:
    node, _ = detect(tmp_path)
    consumer = node._consumer = DetectConsumer()
    tp = TopicPartition("partials", 0)
    await node._on_assigned([tp])
    part = node.partitions[tp]
    for offset in range(3):
        beat = Heartbeat({"flows:0": FLOW_T0 + offset}, {"flows": 1})
        node._apply(part, Message(offset, beat.encode(), heartbeat_headers()))
        part.position = offset + 1
    await node._save([part])  # the periodic save: snapshot at 3, committed 3
    assert node.stats.snapshots == 1 and consumer.committed_offsets == {tp: 3}
    part.position = 5  # two more applied since
    # aiokafka revokes everything before each assignment: nothing is saved then, and a
    # partition given back with its committed offset unchanged is the same engine, read on
    # from where it was.
    await node._on_revoked([tp])
    assert node.partitions == {} and node.stats.snapshots == 1
    await node._on_assigned([tp])
    assert node.partitions[tp] is part and node.stats.partitions_kept == 1
    assert consumer.seeks[-1] == (tp, 5)
    # Another process had it meanwhile and committed (after its own snapshot): loaded from
    # the snapshot store, not kept.
    await node._on_revoked([tp])
    consumer.committed_offsets[tp] = 4
    await node._on_assigned([tp])
    loaded = node.partitions[tp]
    assert loaded is not part and loaded.loaded and node.stats.snapshots_loaded == 1
    assert consumer.seeks[-1] == (tp, 3) and loaded.committed == 4
    assert node.stats.partitions_kept == 1


async def test_a_fetch_that_does_not_start_at_the_snapshot_position_is_sought_again(
    tmp_path: Path,
) -> None:
    # The consumer fetched from the committed offset (23) while an older snapshot (saved
    # by a member that froze, at offset 6) was being loaded: applying that fetch would skip
    # 6-22. It is dropped and the seek made again; a fetch from 6 is applied.
    node, _ = detect(tmp_path)
    consumer = DetectConsumer()
    tp = TopicPartition("partials", 0)
    part = _Partition(tp, node._new_engine(), position=6, expect=6)
    beat = Heartbeat({"flows:0": FLOW_T0}, {"flows": 1}).encode()
    late = [Message(o, beat, heartbeat_headers()) for o in range(23, 26)]
    assert not node._read_from_position(consumer, part, late)
    assert consumer.seeks == [(tp, 6)] and node.stats.reseeks == 1
    assert node._read_from_position(consumer, part, [Message(6, beat, heartbeat_headers())])
    assert part.expect is None
    # A position the log no longer holds (retention) is given up after three tries.
    part.expect, part.reseeks = 6, 0  # as a new assignment sets them
    for _ in range(3):
        assert not node._read_from_position(consumer, part, late)
    assert node._read_from_position(consumer, part, late) and part.expect is None


def partials_row(start: float, nbytes: int = 5000) -> bytes:
    return b'{"v":1,"interval":60.0,"rows":[[%d,"research","CN","",%d,1,1,{},{}]]}' % (
        start,
        nbytes,
    )


def test_detect_counts_and_skips_malformed_partials_by_reason(tmp_path: Path) -> None:
    # Each of these is one skipped, counted message, never an exception out of the role's
    # loop (which would stop it, and the message, not yet past the committed offset, would
    # stop it again at every start).
    node, part = detect(tmp_path)
    start = FLOW_T0 - FLOW_T0 % 60
    bad = {
        "too_deep": [b'{"v":1,"interval":60.0,"rows":' + b"[" * 100_000 + b"]" * 100_000 + b"}"],
        "bad_partials": [
            b'{"v":1,"interval":60.0,"rows":[['
            + b"9" * 400
            + b',"research","CN","",1,1,1,{},{}]]}',
            b'{"v":1,"interval":60.0,"rows":[5]}',
            b'{"v":1,"interval":60.0,"segments":[{"a":1,"b":2,"c":3}]}',
            b'{"v":1,"interval":60.0,"rows":[[60,"research","CN","",1,1,1,{"a":-1},{}]]}',
            b'{"v":1,"interval":60.0,"rows":[["\xff"]]}',
            b'{"v":2,"interval":60.0,"rows":[]}',
        ],
    }
    offset = 0
    for reason, values in bad.items():
        for value in values:
            headers = partials_headers("flows:0", offset, offset, FLOW_T0)
            assert node._apply(part, Message(offset, value, headers)) == []
            offset += 1
        assert node.stats.bad_reasons[reason] == len(values), reason
    assert node.stats.bad_messages == offset
    # The next good batch is applied as if nothing had come before.
    node._apply(
        part, Message(offset, partials_row(start), partials_headers("flows:0", 0, 0, FLOW_T0))
    )
    assert node.stats.batches_applied == 1
    rows = {
        (name, labels.get("reason")): value
        for name, labels, value in node.metrics()
        if name == "egressd_cluster_bad_messages_total"
    }
    assert rows[("egressd_cluster_bad_messages_total", "too_deep")] == 1
    assert rows[("egressd_cluster_bad_messages_total", "bad_partials")] == 6
    assert rows[("egressd_cluster_bad_messages_total", "bad_heartbeat")] == 0


def test_an_infinite_event_time_in_a_partials_header_is_refused(
    tmp_path: Path,
) -> None:
    # Before: one partials header time of "inf" moved the partition's event
    # time to infinity for good, so its intervals closed at once and detection was blind.
    node, part = detect(tmp_path)
    start = FLOW_T0 - FLOW_T0 % 60
    node._apply(
        part,
        Message(0, Heartbeat({"flows:0": FLOW_T0}, {"flows": 1}).encode(), heartbeat_headers()),
    )
    inf = b'{"v":1,"interval":60.0,"rows":[]}'
    node._apply(part, Message(1, inf, partials_headers("flows:0", 0, 0, math.inf)))
    assert node.stats.bad_reasons["bad_headers"] == 1
    assert part.engine.event_time() == FLOW_T0
    headers = partials_headers("flows:0", 0, 0, start + 150)
    node._apply(part, Message(4, partials_row(start + 60), headers))
    assert part.engine.event_time() == start + 150


def detect_at_wall_time(tmp_path: Path) -> tuple[Detect, _Partition, float]:
    """A detect node whose wall clock reads ``FLOW_T0`` + 60 s, a heartbeat at ``FLOW_T0``
    applied; and the latest event time it takes (wall time + max_clock_ahead)."""
    node, part = detect(tmp_path)
    node.wall = lambda: FLOW_T0 + 60.0
    beat = Heartbeat({"flows:0": FLOW_T0}, {"flows": 1})
    node._apply(part, Message(0, beat.encode(), heartbeat_headers()))
    return node, part, FLOW_T0 + 60.0 + node.config.detection.max_clock_ahead


def test_a_source_time_far_in_the_future_is_set_back_to_wall_time(tmp_path: Path) -> None:
    # Before: one partials header (or heartbeat) stamped a year ahead moved the partition's
    # event time there: every open interval closed at once and later partials were late
    # until wall time caught up. Now the time stops at wall time + max_clock_ahead.
    node, part, limit = detect_at_wall_time(tmp_path)
    start = FLOW_T0 - FLOW_T0 % 60
    year = 365 * 86400.0
    node._apply(
        part, Message(1, partials_row(start), partials_headers("flows:0", 0, 0, FLOW_T0 + year))
    )
    assert part.engine.event_time() == limit
    beat = Heartbeat({"flows:0": FLOW_T0 + year}, {"flows": 1})
    node._apply(part, Message(2, beat.encode(), heartbeat_headers()))
    assert part.engine.event_time() == limit
    assert node.stats.future_times_clamped == 2
    assert node.stats.batches_applied == 1


def test_partials_of_intervals_far_in_the_future_count_at_wall_time(tmp_path: Path) -> None:
    # Before: a partial names its interval, and one a year ahead opened an interval that
    # stayed open (saved in every snapshot) until wall time reached it: its bytes were never
    # judged, and a message of many such intervals opened as many, without bound. Now it
    # counts in the interval holding wall time + max_clock_ahead, as ingest counts a flow.
    node, part, limit = detect_at_wall_time(tmp_path)
    start = FLOW_T0 - FLOW_T0 % 60
    year = 365 * 86400.0 - (365 * 86400.0) % 60
    rows = b",".join(
        b'[%d,"research","CN","",1000,1,1,{},{}]' % (start + year + 60 * n) for n in range(500)
    )
    value = b'{"v":1,"interval":60.0,"rows":[' + rows + b"]}"
    node._apply(part, Message(1, value, partials_headers("flows:0", 0, 0, FLOW_T0)))
    assert node.stats.batches_applied == 1
    open_starts = set(part.engine.aggregator.buckets)
    assert max(open_starts) <= limit
    assert len(open_starts) <= 2
    assert node.stats.future_partials_clamped == 500
    samples = {name: value for name, _labels, value in node.metrics()}
    assert samples["egressd_cluster_future_partials_clamped_total"] == 500
    # Their bytes are judged once event time passes that interval.
    node.wall = lambda: limit + 3600.0
    beat = Heartbeat({"flows:0": limit + 600.0}, {"flows": 1})
    node._apply(part, Message(2, beat.encode(), heartbeat_headers()))
    assert not part.engine.aggregator.buckets
    assert part.engine.stats.egress_bytes == 500 * 1000


async def test_an_ingest_member_counts_a_fetch_of_large_messages_a_piece_at_a_time(
    tmp_path: Path,
) -> None:
    # Before: a whole fetch (up to max_batch messages, up to the consumer's 50 MB fetch
    # limit) was decoded and counted in one go: megabyte messages of flow lines held the
    # event loop for seconds per fetch, long enough on a busy machine for the member to
    # take itself for stalled past its session timeout, drop what it counted and rejoin.
    # Now it is counted as if fetched a megabyte at a time, with a turn of the loop between.
    node = member(tmp_path, 1)
    line = goflow2_record(0, nbytes=1000, t=FLOW_T0, dst="8.8.8.8")
    per_message = 1_000_000 // (len(line) + 1)
    big = b"\n".join([line] * per_message)
    events: list[str] = []
    counted = node._round

    async def round_(fetched: dict[TopicPartition, list[Any]]) -> None:
        events.append("round")
        await counted(fetched)

    node._round = round_  # type: ignore[method-assign]

    async def ticker() -> None:
        while True:
            events.append("tick")
            await asyncio.sleep(0)

    ticking = asyncio.create_task(ticker())
    await node._take({TP: [Message(offset, big) for offset in range(8)]})
    ticking.cancel()
    rounds = [index for index, event in enumerate(events) if event == "round"]
    assert len(rounds) >= 4
    assert all("tick" in events[a:b] for a, b in pairwise(rounds))
    # Counted as one fetch would have been: the batch 0-4 went out, 5-7 wait for theirs.
    assert [batch_info(read_headers(m.headers)).first for m in partials_of(node)] == [0]
    assert node._lanes[TP].last == 7


async def test_a_detect_process_applies_a_fetch_of_large_messages_a_piece_at_a_time(
    tmp_path: Path,
) -> None:
    # Before: a whole fetch of the partials topic (up to the consumer's 50 MB limit) was
    # applied in one go: megabyte messages of partials held the event loop (HTTP, snapshot
    # saves, Alertmanager pushes) for as long as they took. Now it is applied as if fetched
    # a megabyte at a time, with a turn of the loop between.
    node, part = detect(tmp_path)
    node._consumer = DetectConsumer()
    node.partitions[part.tp] = part
    start = FLOW_T0 - FLOW_T0 % 60
    row = b'[%d,"research","CN","",1000,1,1,{},{}]' % start
    value = b'{"v":1,"interval":60.0,"rows":[' + b",".join([row] * 25_000) + b"]}"
    events: list[str] = []
    applying = node._apply

    def apply(part: _Partition, message: Any) -> Any:
        events.append("apply")
        return applying(part, message)

    node._apply = apply  # type: ignore[method-assign]

    async def ticker() -> None:
        while True:
            events.append("tick")
            await asyncio.sleep(0)

    fetched = {
        part.tp: [
            Message(offset, value, partials_headers("flows:0", offset, offset, FLOW_T0))
            for offset in range(8)
        ]
    }
    ticking = asyncio.create_task(ticker())
    await node._take(node._consumer, fetched)
    ticking.cancel()
    runs = "".join("a" if event == "apply" else "t" for event in events).strip("t").split("t")
    assert len([run for run in runs if run]) >= 3
    assert node.stats.batches_applied == 8
    assert part.position == 8


async def test_entries_a_snapshot_held_beyond_the_bounds_are_counted_by_part(
    tmp_path: Path,
) -> None:
    # What a partition snapshot held beyond what the engine keeps (here alerts of an
    # alertname no detector evaluates, or dated after the snapshot's event time) is left
    # out on load; it was only logged, now it is counted as the all-in-one daemon counts
    # its state file's: egressd_state_entries_dropped_total{part}.
    node, part = detect(tmp_path)
    beat = Heartbeat({"flows:0": FLOW_T0}, {"flows": 1})
    node._apply(part, Message(0, beat.encode(), heartbeat_headers()))
    part.position = 1
    await node._save([part])
    load = node.store.load

    async def crafted(name: str) -> dict[str, Any] | None:
        data = await load(name)
        assert data is not None
        alert = {
            "labels": {"alertname": "NoSuchRule"},
            "annotations": {},
            "state": "firing",
            "pending_since": FLOW_T0,
            "starts_at": FLOW_T0,
            "last_true": FLOW_T0,
            "updated": FLOW_T0,
        }
        data["alerts"] = data["alerts"] + [
            {**alert, "key": ["NoSuchRule", "research", f"X{n}"]} for n in range(3)
        ]
        return data

    node.store.load = crafted  # type: ignore[method-assign]
    for _ in range(2):
        loaded = await node._load(part.tp)
        assert loaded.loaded and loaded.engine.dropped_on_load["alerts"] == 3
    assert node.stats.entries_dropped == {"alerts": 6}
    samples = node.metrics()
    assert ("egressd_state_entries_dropped_total", {"part": "alerts"}, 6.0) in samples
