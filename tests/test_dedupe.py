"""A flow two exporters report counts once (egressd/dedupe.py, docs/formats.md "Records
reported by two exporters"): per flow key the largest total one exporter reported counts, so
nothing any single exporter saw is lost and duplicates add nothing."""

from __future__ import annotations

import asyncio
import io
import socket
from pathlib import Path

import numpy as np
import orjson
import pytest
from scenarios import generate, goflow2_line

from egressd.columns import FlowColumns
from egressd.config import ConfigError, NetflowSourceConfig, config_warnings, parse_config
from egressd.dedupe import EXPIRY, MAX_KEYS, DuplicateExports
from egressd.enrich.embedded import EmbeddedCountryLabeler
from egressd.model import FlowRecord
from egressd.pipeline import Engine, EngineStats
from egressd.replay import replay
from egressd.sources.netflow import NetflowSource
from tests.integration_support import research_config
from tests.netflow_builders import data_set, template_set, v9_datagram

T0 = 1_773_000_000.0
CORE, EDGE = "10.255.9.1", "10.255.9.2"


def flow(
    end: float, size: int, exporter: str, *, sport: int = 40000, packets: int = 0
) -> FlowRecord:
    return FlowRecord(
        end - 60, end, "10.20.0.5", "47.100.23.45", size, packets or size // 1000, 6, sport, 443,
        exporter,
    )  # fmt: skip


class Stages:
    """The stage twice, one fed columns and one records (they must agree), engaged already
    (a second exporter seen, on another key) unless ``engaged`` is False."""

    def __init__(self, engaged: bool = True, **options: float) -> None:
        self.columns = DuplicateExports(**options)  # type: ignore[arg-type]
        self.records = DuplicateExports(**options)  # type: ignore[arg-type]
        self.stats, self.records_stats = EngineStats(), EngineStats()
        if engaged:
            for stage in (self.columns, self.records):
                stage.records(
                    [flow(T0 - 4000, 1, EDGE, sport=7), flow(T0 - 4000, 1, CORE, sport=8)],
                    0,
                    EngineStats(),
                    _ok,
                )
                assert stage.engaged

    def __len__(self) -> int:
        return len(self.columns)


def counted(stages: Stages, *batches: list[FlowRecord], limit: float = np.inf) -> int:
    """Bytes of ``batches`` (one after the other) the stage lets through, by the column path;
    the record path must agree."""
    total = total_records = 0
    for batch in batches:
        out = stages.columns.columns(FlowColumns.from_records(batch), limit, stages.stats)
        out.check()
        total += int(out.bytes.sum())
        kept = stages.records.records(batch, limit, stages.records_stats, _ok)
        total_records += sum(r.bytes for r in kept)
    assert total_records == total
    assert (stages.records_stats.duplicate_bytes, stages.records_stats.duplicate_records) == (
        stages.stats.duplicate_bytes,
        stages.stats.duplicate_records,
    )
    return total


def _ok(record: FlowRecord) -> bool:
    return True


def test_the_same_flow_from_two_exporters_counts_once() -> None:
    stage = Stages(engaged=False)
    batch = [flow(T0, 5_000, EDGE), flow(T0, 5_000, CORE)]
    assert counted(stage, batch) == 5_000
    stats = EngineStats()
    again = DuplicateExports()
    out = again.columns(FlowColumns.from_records(batch), np.inf, stats)
    assert len(out) == 1 and out.exporter_of(0) == EDGE
    assert (stats.duplicate_records, stats.duplicate_bytes) == (1, 5_000)


def test_halves_of_a_flow_from_one_exporter_and_the_whole_from_the_other() -> None:
    # Different active timeouts: the edge reports in two pieces, the core once (late).
    stage = Stages()
    pieces = [flow(T0, 3_000, EDGE)], [flow(T0 + 60, 4_000, EDGE)]
    assert counted(stage, *pieces, [flow(T0 + 60, 7_000, CORE)]) == 7_000
    # ... and the other way round: the whole first, the pieces add nothing.
    stage = Stages()
    assert counted(stage, [flow(T0 + 60, 7_000, CORE)], *pieces) == 7_000


def test_failover_loses_nothing() -> None:
    # Both report a flow; then the edge stops and the core carries on alone.
    stage = Stages()
    both = [flow(T0, 1_000, EDGE), flow(T0, 1_000, CORE)]
    alone = [flow(T0 + 60 * i, 2_000, CORE) for i in range(1, 4)]
    assert counted(stage, both, alone) == 1_000 + 3 * 2_000


def test_a_clock_minutes_behind_loses_nothing_and_adds_nothing() -> None:
    stage = Stages()
    edge = [flow(T0 + 60 * i, 1_000, EDGE) for i in range(10)]
    core = [flow(T0 + 60 * i - 420, 1_000, CORE) for i in range(10)]  # 7 minutes behind
    assert counted(stage, core[:5], edge[:7], core[5:], edge[7:]) == 10_000


def test_sampling_on_one_exporter_loses_nothing() -> None:
    # The core samples 1:100 (scaled counts land above or below the truth): the larger total
    # of each key counts, whichever reported it.
    stage = Stages()
    edge = [flow(T0 + 60 * i, 10_000, EDGE) for i in range(5)]
    core = [flow(T0 + 60 * i, 9_000 if i % 2 else 12_000, CORE) for i in range(5)]
    total = counted(stage, *[[e, c] for e, c in zip(edge, core, strict=True)])
    running_edge = running_core = expected = 0
    for e, c in zip(edge, core, strict=True):
        running_edge += e.bytes
        running_core += c.bytes
        expected = max(expected, running_edge, running_core)
    assert total == expected >= 50_000


def test_a_forged_larger_record_only_adds() -> None:
    stage = Stages()
    real = [flow(T0 + 60 * i, 1_000, EDGE) for i in range(5)]
    forged = flow(T0, 50_000, "192.0.2.66")
    assert counted(stage, [real[0], forged], real[1:]) == 50_000  # never below the real 5,000
    # ... and the real exporter's traffic past the forged claim counts again.
    assert counted(stage, [flow(T0 + 400, 60_000, EDGE)]) == 60_000 + 5_000 - 50_000


def test_other_flow_keys_do_not_meet() -> None:
    stage = Stages()
    batch = [flow(T0, 1_000, EDGE, sport=1), flow(T0, 1_000, CORE, sport=2)]
    assert counted(stage, batch) == 2_000


def test_an_expired_key_counts_in_full_again() -> None:
    stage = Stages()
    assert counted(stage, [flow(T0, 1_000, EDGE)], [flow(T0, 1_000, CORE)]) == 1_000
    later = T0 + EXPIRY + 120
    # An unrelated flow moves event time past the expiry: the key is forgotten.
    assert counted(stage, [flow(later, 1, EDGE, sport=9)]) == 1
    assert len(stage) == 1
    assert counted(stage, [flow(later, 1_000, CORE)]) == 1_000


def test_an_evicted_key_counts_in_full_again() -> None:
    stage = DuplicateExports(max_keys=2)
    stats = EngineStats()
    first = [flow(T0, 1_000, EDGE, sport=1), flow(T0, 500, CORE, sport=1)]
    assert len(stage.columns(FlowColumns.from_records(first), np.inf, stats)) == 1
    # While held, the core's second half of the flow is a duplicate too.
    kept = FlowColumns.from_records([flow(T0 + 1, 500, CORE, sport=1)])
    assert len(stage.columns(kept, np.inf, stats)) == 0
    # Two later keys fill the table: the least recently reported (the first) makes room.
    others = [flow(T0 + 60, 5, EDGE, sport=2), flow(T0 + 60, 5, EDGE, sport=3)]
    stage.columns(FlowColumns.from_records(others), np.inf, stats)
    assert len(stage) == 2 and stats.duplicate_evictions == 1
    again = FlowColumns.from_records([flow(T0 + 61, 500, CORE, sport=1)])
    out = stage.columns(again, np.inf, stats)
    assert int(out.bytes.sum()) == 500  # counted in full: a double count, never a loss


def test_packets_follow_the_share_of_bytes_that_counts() -> None:
    stage = DuplicateExports()
    stats = EngineStats()
    batch = [flow(T0, 3_000, EDGE, packets=30), flow(T0, 4_000, CORE, packets=41)]
    out = stage.columns(FlowColumns.from_records(batch), np.inf, stats)
    assert out.bytes.tolist() == [3_000, 1_000]
    assert out.packets.tolist() == [30, 11]  # 41 * 1000 / 4000, rounded up
    assert stats.duplicate_records == 0 and stats.duplicate_bytes == 3_000


def test_one_exporter_passes_through_untouched() -> None:
    stage = DuplicateExports()
    stats = EngineStats()
    records = [flow(T0 + 60 * i, 1_000, EDGE) for i in range(5)] * 2  # repeats of one key
    columns = FlowColumns.from_records(records)
    assert stage.columns(columns, np.inf, stats) is columns
    assert stage.records(records, np.inf, stats, _ok) is records
    assert not stage.engaged and len(stage) == 0
    # A second exporter engages it; from then on its records meet the first's.
    mixed = FlowColumns.concat([columns, FlowColumns.from_records([flow(T0, 1_000, CORE)])])
    assert mixed.exporters is not None
    stage.columns(mixed, np.inf, stats)
    assert stage.engaged


def test_the_engine_counts_two_exporters_once_by_default_and_sums_when_told() -> None:
    batch = [flow(T0, 5_000, EDGE), flow(T0, 5_000, CORE)]
    told = {"duplicate_exports": "sum"}
    for detection, egress, duplicates in (({}, 5_000, 1), (told, 10_000, 0)):
        config = research_config(detection, countries=["US"])
        engine = Engine(parse_config(config), EmbeddedCountryLabeler())
        engine.process_columns(FlowColumns.from_records(batch))
        assert engine.stats.egress_bytes == egress
        assert engine.stats.duplicate_records == duplicates
        assert engine.stats.records == 2
        engine = Engine(parse_config(config), EmbeddedCountryLabeler())
        engine.process(batch)
        assert engine.stats.egress_bytes == egress
        assert engine.stats.records == 2


def test_the_config_keys_are_checked_and_named() -> None:
    config = parse_config("")
    assert config.detection.duplicate_exports == "count_once"
    assert (config.detection.duplicate_expiry, config.detection.duplicate_max_keys) == (
        EXPIRY,
        MAX_KEYS,
    )
    with pytest.raises(ConfigError, match="duplicate_exports"):
        parse_config('[detection]\nduplicate_exports = "merge"\n')
    with pytest.raises(ConfigError, match="duplicate_max_keys"):
        parse_config("[detection]\nduplicate_max_keys = 0\n")


def test_only_a_named_setting_warns_where_exporters_reach_different_workers() -> None:
    netflow = '[[sources.netflow]]\nlisten = "127.0.0.1:2055"\nworkers = 2\n'
    quiet = parse_config(netflow)
    assert not any("duplicate_exports" in w for w in config_warnings(quiet))
    named = parse_config(netflow + '[detection]\nduplicate_exports = "count_once"\n')
    assert any("duplicate_exports" in w for w in config_warnings(named))
    one_worker = parse_config(netflow.replace("2\n", "1\n") + named_key())
    assert not any("duplicate_exports" in w for w in config_warnings(one_worker))


def named_key() -> str:
    return '[detection]\nduplicate_exports = "count_once"\n'


# --- end to end --------------------------------------------------------------------------


def _replay(config: Path, path: Path) -> tuple[list[bytes], int, int]:
    out = io.BytesIO()
    from egressd.config import load_config

    summary = replay(load_config(config), "goflow2-json", [str(path)], out)
    return out.getvalue().splitlines(), summary.egress_bytes, summary.records


def test_replay_of_goflow2_from_two_exporters_gives_the_alerts_of_one(tmp_path: Path) -> None:
    scenario = generate(2)
    config = scenario.write_config(tmp_path / "egressd.toml")
    one = scenario.write(tmp_path / "one.jsonl")
    # Every flow reported again, just after, by a second router (its own sampler_address).
    with open(tmp_path / "two.jsonl", "wb") as out:
        for i, f in enumerate(scenario.flows):
            out.write(goflow2_line(f, i))
            out.write(goflow2_line(f._replace(exporter="10.255.9.9"), i))
    alerts, egress, records = _replay(config, one)
    doubled, doubled_egress, doubled_records = _replay(config, tmp_path / "two.jsonl")
    assert alerts, "the scenario pages"
    assert doubled_records == 2 * records
    assert doubled_egress == egress
    assert [orjson.loads(a) for a in doubled] == [orjson.loads(a) for a in alerts]


FIELDS = [(8, 4), (12, 4), (1, 4), (2, 4), (22, 4), (21, 4), (4, 1), (7, 2), (11, 2)]
SECS = 1_773_064_800


def _datagram(seq: int, with_template: bool) -> bytes:
    rows = [
        [
            bytes([10, 20, 0, i]),
            bytes([47, 100, 23, i]),
            1_000_000 + i,
            700,
            5,
            9,
            6,
            40000 + i,
            443,
        ]
        for i in range(20)
    ]
    sets = [data_set(256, FIELDS, rows)]  # type: ignore[arg-type]
    if with_template:
        sets.insert(0, template_set({256: FIELDS}, ipfix=False))  # type: ignore[dict-item]
    return v9_datagram(sets, uptime_ms=10, unix_secs=SECS, seq=seq)


class _EngineSink:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def submit(self, records: list[FlowRecord]) -> None:
        self.engine.process(records)

    def submit_columns(self, columns: FlowColumns) -> None:
        self.engine.process_columns(columns)


async def test_netflow_from_two_routers_into_one_collector_counts_once() -> None:
    engine = Engine(parse_config(research_config(countries=["US"])), EmbeddedCountryLabeler())
    source = NetflowSource(NetflowSourceConfig(listen="127.0.0.1:0", workers=1))
    await source.start(_EngineSink(engine))
    senders = []
    try:
        assert source.bound is not None
        for address in ("127.0.0.2", "127.0.0.3"):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((address, 0))
            senders.append(sock)
        for seq in range(10):
            for sock in senders:
                sock.sendto(_datagram(seq, seq == 0), source.bound)
        async with asyncio.timeout(10):
            while engine.stats.records < 2 * 10 * 20:
                await asyncio.sleep(0.01)
    finally:
        await source.stop()
        for sock in senders:
            sock.close()
    one_router = 10 * sum(1_000_000 + i for i in range(20))
    assert engine.stats.egress_bytes == one_router
    assert engine.stats.duplicate_records == 10 * 20
    assert engine.stats.duplicate_bytes == one_router
