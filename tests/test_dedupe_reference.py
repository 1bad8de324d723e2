"""The duplicate stage (egressd/dedupe.py) against a plain reading of its rule: per flow key
per exporter a running total, the key's count the largest of them, a record counting by how
much it raises that (packets by the same share, rounded up; nothing raised: dropped), keys
forgotten past the expiry (swept every quarter of it) and the least recently reported tenth
evicted when the table is full. Random batches of several exporters, keys repeated within and
across batches, time jumps past the expiry and a small table: the stage must give the same
rows, bytes, packets, counters and table, in the same order."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egressd.columns import FlowColumns
from egressd.dedupe import MAX_EXPORTERS_PER_KEY, DuplicateExports
from egressd.pipeline import EngineStats

EXPORTERS = [f"10.255.9.{i}" for i in range(1, MAX_EXPORTERS_PER_KEY + 3)]


class Reference:
    """The rule, one record at a time, with plain per-key dictionaries."""

    def __init__(self, expiry: float, max_keys: int) -> None:
        self.expiry, self.max_keys = expiry, max_keys
        self.first: str | None = None
        self.engaged = False
        #: key -> {"counted", "last", "totals": {exporter: total}}
        self.table: dict[bytes, dict[str, Any]] = {}
        self.now, self.next_sweep = -math.inf, -math.inf
        self.records = self.bytes = self.evictions = 0

    def forget(self, cutoff: float) -> None:
        self.table = {k: e for k, e in self.table.items() if e["last"] >= cutoff}

    def batch(self, rows: list[tuple[bytes, str, int, int, float]]) -> list[tuple[int, int, int]]:
        """(row, bytes, packets) of what counts."""
        if not self.engaged:
            for _, exporter, *_ in rows:
                if self.first is None:
                    self.first = exporter
                elif exporter != self.first:
                    self.engaged = True
            if not self.engaged:
                return [(i, size, packets) for i, (_, _, size, packets, _) in enumerate(rows)]
        if not rows:
            return []
        now = max(end for *_, end in rows)
        if now > self.now:
            self.now = now
            if now >= self.next_sweep:
                self.next_sweep = now + self.expiry / 4
                self.forget(now - self.expiry)
        out = []
        for index, (key, exporter, size, packets, end) in enumerate(rows):
            entry = self.table.get(key)
            if entry is None:
                if len(self.table) >= self.max_keys:
                    keep = self.max_keys - max(self.max_keys // 10, 1)
                    self.forget(self.now - self.expiry)
                    if len(self.table) > keep:
                        order = sorted(self.table.items(), key=lambda i: i[1]["last"], reverse=True)
                        self.evictions += len(order) - keep
                        self.table = dict(order[:keep])
                self.table[key] = {"counted": size, "last": end, "totals": {exporter: size}}
                out.append((index, size, packets))
                continue
            entry["last"] = max(entry["last"], end)
            totals = entry["totals"]
            if exporter not in totals and len(totals) >= MAX_EXPORTERS_PER_KEY:
                entry["counted"] += size
                out.append((index, size, packets))
                continue
            totals[exporter] = totals.get(exporter, 0) + size
            counts = max(totals[exporter] - entry["counted"], 0)
            entry["counted"] = max(entry["counted"], totals[exporter])
            self.bytes += size - counts
            if counts == 0:
                self.records += 1
                continue
            out.append((index, counts, -(-packets * counts // size)))
        return out


def key_of(key: int) -> tuple[int, int, int, int, int, int, int]:
    """src hi, lo, dst hi, lo, protocol, source port, destination port of a small key number."""
    return (key & 1, 0xFFFF_0A00_0000 + (key >> 1) % 3, 0, 1 << 63 | key % 2, 6 + key % 2, 40000,
            443)  # fmt: skip


records = st.lists(
    st.tuples(
        st.integers(0, 11),  # key
        st.integers(0, len(EXPORTERS) - 1),
        st.one_of(st.integers(0, 3000), st.integers(0, 1 << 40)),  # bytes
        st.one_of(st.integers(0, 40), st.integers(0, 1 << 40)),  # packets
        st.one_of(st.integers(-30, 30), st.sampled_from([-10_000, 400, 10_000])),  # end offset
    ),
    max_size=25,
)


#: counts near the 64-bit limit: totals outgrow unsigned 64-bit integers (the stage then
#: goes on with Python's integers)
huge_records = st.lists(
    st.tuples(
        st.integers(0, 11),
        st.integers(0, len(EXPORTERS) - 1),
        st.one_of(st.integers(0, 3000), st.integers((1 << 62) - 5, (1 << 64) - 1)),
        st.integers(0, 40),
        st.integers(-30, 30),
    ),
    max_size=25,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.tuples(records, st.booleans()), max_size=12),
    max_keys=st.integers(1, 12),
    expiry=st.sampled_from([100.0, 1000.0, 65 * 60.0]),
)
def test_the_stage_follows_the_rule_exactly(
    batches: list[tuple[list[tuple[int, int, int, int, int]], bool]],
    max_keys: int,
    expiry: float,
) -> None:
    check_against_reference(batches, max_keys, expiry)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.tuples(huge_records, st.booleans()), max_size=8),
    max_keys=st.integers(1, 12),
)
def test_the_rule_holds_past_64_bit_totals(
    batches: list[tuple[list[tuple[int, int, int, int, int]], bool]], max_keys: int
) -> None:
    check_against_reference(batches, max_keys, 1000.0)


def check_against_reference(
    batches: list[tuple[list[tuple[int, int, int, int, int]], bool]],
    max_keys: int,
    expiry: float,
) -> None:
    stage = DuplicateExports(expiry=expiry, max_keys=max_keys)
    by_records = DuplicateExports(expiry=expiry, max_keys=max_keys)
    reference = Reference(expiry, max_keys)
    stats, records_stats = EngineStats(), EngineStats()
    clock = 1_773_000_000.0
    for rows, one_exporter in batches:
        if one_exporter:  # a batch of one exporter (no per-row exporters)
            rows = [(k, rows[0][1], size, packets, end) for k, _, size, packets, end in rows]
        clock += 20
        ends = [clock + offset for *_, offset in rows]
        keys = [key_of(k) for k, *_ in rows]
        exporters = [EXPORTERS[e] for _, e, *_ in rows]
        sizes = [size for _, _, size, _, _ in rows]
        packets = [p for _, _, _, p, _ in rows]
        u64 = [np.array([k[i] for k in keys], dtype=np.uint64) for i in range(4)]
        columns = FlowColumns(
            np.array(ends) - 60, np.array(ends, dtype=np.float64), *u64,
            np.array(sizes, dtype=np.uint64), np.array(packets, dtype=np.uint64),
            proto=np.array([k[4] for k in keys], dtype=np.uint8),
            src_port=np.array([k[5] for k in keys], dtype=np.uint16),
            dst_port=np.array([k[6] for k in keys], dtype=np.uint16),
            exporter=exporters[0] if one_exporter and rows else "",
            exporters=None if one_exporter else np.array(exporters, dtype=object),
        )  # fmt: skip
        columns.check()
        packed = [struct.pack("=5Q", *k[:4], k[4] << 32 | k[5] << 16 | k[6]) for k in keys]
        expected = reference.batch(list(zip(packed, exporters, sizes, packets, ends, strict=True)))
        out = stage.columns(columns, np.inf, stats)
        out.check()
        rows_kept = [i for i, _, _ in expected]
        assert out.time_end.tolist() == [ends[i] for i in rows_kept]
        assert [out.exporter_of(i) for i in range(len(out))] == [exporters[i] for i in rows_kept]
        assert out.bytes.tolist() == [b for _, b, _ in expected]
        assert out.packets.tolist() == [p for _, _, p in expected]
        kept = by_records.records(columns.to_records(), np.inf, records_stats, lambda r: True)
        assert [(r.time_end, r.exporter, r.bytes, r.packets) for r in kept] == [
            (ends[i], exporters[i], b, p) for i, b, p in expected
        ]
    for checked, counters in ((stage, stats), (by_records, records_stats)):
        assert checked.engaged == reference.engaged
        assert (
            counters.duplicate_records,
            counters.duplicate_bytes,
            counters.duplicate_evictions,
        ) == (reference.records, reference.bytes, reference.evictions)
        table = checked._table
        assert checked._ordered() == list(reference.table)
        for key, entry in table.items():
            want = reference.table[key]
            assert entry[:2] == [want["counted"], want["last"]]
            assert dict(zip(entry[2::2], entry[3::2], strict=True)) == want["totals"]
