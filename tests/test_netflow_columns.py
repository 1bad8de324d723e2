"""``NetflowDecoder.decode_columns`` gives exactly the flows and counters ``decode`` gives.

Generated datagram sequences (v5, v9, IPFIX: fixed, reduced-size, variable-length and
sampled-frame templates, options records with sampling rates and system init times, data
before its template, damaged datagrams) and every real export capture go through two fresh
decoders, one per path; after each datagram the flows (as records, exporter aside) and every
counter must be equal.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egressd.columns import FlowColumns
from egressd.decode.netflow import NetflowDecoder
from egressd.decode.netflow.columnar import column_plan
from egressd.decode.netflow.templates import compile_layout
from egressd.errors import DecodeError
from egressd.model import FlowRecord
from tests import netflow_builders as nb
from tests.test_netflow_captures import GROUPS, NOW, _need_captures, group_datagrams

MAX = 2**64 - 1
EXPORTER = "192.0.2.7"

Flow = tuple[float, float, str, str, int, int, int, int, int]


def _flows(records: list[FlowRecord]) -> list[Flow]:
    """Records as the columns contract keeps them: counts saturate, protocol and ports wrap."""
    return [
        (
            r.time_start,
            r.time_end,
            r.src,
            r.dst,
            min(r.bytes, MAX),
            min(r.packets, MAX),
            r.proto & 0xFF,
            r.src_port & 0xFFFF,
            r.dst_port & 0xFFFF,
        )
        for r in records
    ]


def _canonical(records: list[FlowRecord]) -> list[Flow]:
    """Addresses as the columns give them back (text of the 128-bit value)."""
    return _flows(FlowColumns.from_records(records).to_records())


def _outcome(decode: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "ok", decode(data, EXPORTER, NOW)
    except DecodeError as exc:
        return exc.reason, None


def assert_same(datagrams: list[bytes]) -> tuple[int, int]:
    """Feed ``datagrams`` to both paths, and all at once to ``decode_columns_batch``;
    return (flows, datagrams rejected)."""
    records_path, columns_path = NetflowDecoder(), NetflowDecoder()
    flows = rejected = 0
    every: list[Flow] = []
    rejected_at: list[tuple[int, str]] = []
    for index, data in enumerate(datagrams):
        reason, records = _outcome(records_path.decode, data)
        reason_c, columns = _outcome(columns_path.decode_columns, data)
        assert reason_c == reason, f"datagram {index}"
        if reason != "ok":
            rejected += 1
            rejected_at.append((index, reason))
        else:
            assert isinstance(columns, FlowColumns)
            columns.check()
            assert columns.exporter == EXPORTER
            got = _flows(columns.to_records())
            assert got == _canonical(records), f"datagram {index}"
            # the text the record path gives is the text the columns give back
            assert [g[2:4] for g in got] == [(r.src, r.dst) for r in records]
            flows += len(got)
            every += got
        assert dataclasses.asdict(columns_path.stats) == dataclasses.asdict(records_path.stats), (
            f"datagram {index}"
        )
    batch_path = NetflowDecoder()
    batch, failed = batch_path.decode_columns_batch([(d, EXPORTER, NOW) for d in datagrams])
    batch.check()
    assert [(i, exc.reason) for i, exc in failed if isinstance(exc, DecodeError)] == rejected_at
    assert len(failed) == len(rejected_at)
    assert _flows(batch.to_records()) == every
    assert dataclasses.asdict(batch_path.stats) == dataclasses.asdict(records_path.stats)
    return flows, rejected


# ------------------------------------------------------------------ generated datagrams

# (element id, lengths it may have); 65535 is variable length (IPFIX only here)
FIELD_POOL: list[tuple[int, tuple[int, ...]]] = [
    (8, (4,)),
    (12, (4,)),
    (27, (16,)),
    (28, (16,)),
    (1, (1, 2, 3, 4, 5, 6, 7, 8)),
    (2, (1, 2, 3, 4, 8)),
    (85, (8,)),
    (23, (4, 8)),
    (4, (1, 2)),
    (7, (2, 4)),
    (11, (2, 1)),
    (22, (4, 2, 3, 8)),
    (21, (4, 3, 8)),
    (152, (8,)),
    (153, (8,)),
    (150, (4,)),
    (151, (4,)),
    (154, (8,)),
    (157, (8,)),
    (158, (4, 8)),
    (159, (4,)),
    (323, (8,)),
    (34, (1, 2, 4)),
    (48, (1, 2)),
    (302, (4,)),
    (10, (2, 4)),
    (6, (1,)),
    (315, (20, 65535)),
    (95, (65535, 4)),
]


@st.composite
def templates(draw: st.DrawFn, ipfix: bool) -> list[tuple[int, int]]:
    """A data template: usually with both addresses, sometimes odd, variable or none."""
    chosen: list[tuple[int, int]] = []
    if draw(st.integers(0, 9)):
        family = draw(st.sampled_from(["v4", "v6", "both"]))
        if family in ("v4", "both"):
            chosen += [(8, 4), (12, 4)]
        if family in ("v6", "both"):
            chosen += [(27, 16), (28, 16)]
    extra = draw(st.lists(st.sampled_from(FIELD_POOL), max_size=8))
    for eid, lengths in extra:
        length = draw(st.sampled_from(lengths))
        if length == 65535 and not ipfix:
            length = 4
        if eid in (8, 12, 27, 28) and any(e == eid for e, _ in chosen):
            continue
        chosen.append((eid, length))
    if ipfix and draw(st.booleans()):
        chosen.append((33, 4, 9))  # an enterprise field: skipped  # type: ignore[arg-type]
    chosen = draw(st.permutations(chosen))
    return chosen or [(8, 4), (12, 4)]


def _value(draw: st.DrawFn, eid: int, length: int, uptime: int, secs: int) -> int | bytes:
    if length == 65535:
        return draw(st.binary(max_size=300))
    if eid == 315:
        ether = b"\x00" * 12 + b"\x08\x00"
        ip = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20, 0, 0, 64, 6, 0, b"\x0a\0\0\1", b"\x01\x02\x03\x04"
        )
        return draw(st.sampled_from([(ether + ip)[:length], bytes(length)]))
    if eid in (8, 12, 27, 28):
        zero = bytes(length)
        return draw(st.one_of(st.just(zero), st.binary(min_size=length, max_size=length)))
    top = 2 ** (8 * length) - 1
    if eid in (21, 22):
        low = min(top, max(0, uptime - 120_000))
        near = st.integers(low, min(top, uptime + 5_000))
        return draw(st.one_of(near, st.integers(0, top)))
    if eid in (150, 151, 322):
        near = st.integers(min(top, max(0, secs - 600)), min(top, secs))
        return draw(st.one_of(near, st.integers(0, top)))
    if eid in (152, 153, 323):
        return draw(st.one_of(st.integers(0, top), st.just(min(top, secs * 1000 - 1234))))
    return draw(st.one_of(st.integers(0, min(top, 70_000)), st.integers(0, top)))


@st.composite
def scenarios(draw: st.DrawFn) -> list[bytes]:
    """A sequence of export datagrams from one exporter."""
    version = draw(st.sampled_from([5, 9, 10]))
    if version == 5:
        return draw(st.lists(v5_datagrams(), min_size=1, max_size=4))
    ipfix = version == 10
    count = draw(st.integers(1, 3))
    tids = list(range(256, 256 + count))
    layouts = {tid: draw(templates(ipfix)) for tid in tids}
    options_tid = 300
    if ipfix:
        scope: list[tuple[int, int]] = [(149, 4)]
        option_fields = [(48, 1), (34, 4), (160, 8)]
    else:
        scope = [(1, 4)]
        option_fields = [(48, 1), (34, 4)]
    datagrams = []
    secs = draw(st.integers(1_600_000_000, 1_700_000_000))
    uptime = draw(st.integers(0, 2**32 - 1))
    for seq in range(draw(st.integers(1, 6))):
        sets: list[bytes] = []
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["template", "data", "data", "options", "optdata"]))
            if kind == "template":
                chosen = {t: layouts[t] for t in draw(st.lists(st.sampled_from(tids), min_size=1))}
                sets.append(nb.template_set(chosen, ipfix=ipfix))  # type: ignore[arg-type]
            elif kind == "options":
                sets.append(nb.options_template_set(options_tid, scope, option_fields, ipfix=ipfix))
            elif kind == "optdata":
                rows = [
                    [
                        0,
                        draw(st.integers(0, 3)),
                        draw(st.sampled_from([0, 1, 10, 1000, 2**32 - 1])),
                        *([(secs - 5000) * 1000] if ipfix else []),
                    ]
                    for _ in range(draw(st.integers(1, 3)))
                ]
                fields = scope + option_fields
                sets.append(nb.data_set(options_tid, fields, rows))  # type: ignore[arg-type]
            else:
                tid = draw(st.sampled_from(tids))
                fields = layouts[tid]
                rows = [
                    [_value(draw, spec[0], spec[1], uptime, secs) for spec in fields]
                    for _ in range(draw(st.integers(0, 8)))
                ]
                sets.append(nb.data_set(tid, fields, rows, pad=draw(st.booleans())))  # type: ignore[arg-type]
        if ipfix:
            data = nb.ipfix_datagram(sets, export_secs=secs, seq=seq * 10)
        else:
            data = nb.v9_datagram(sets, uptime_ms=uptime, unix_secs=secs, seq=seq)
        if draw(st.integers(0, 7)) == 0:
            data = data[: draw(st.integers(0, len(data)))]  # damaged in transit
        datagrams.append(data)
        secs += draw(st.integers(0, 30))
        uptime = (uptime + draw(st.integers(0, 30_000))) % 2**32
    return datagrams


@st.composite
def v5_datagrams(draw: st.DrawFn) -> bytes:
    uptime = draw(st.integers(0, 2**32 - 1))
    addr = st.binary(min_size=4, max_size=4)
    u32 = st.integers(0, 2**32 - 1)
    records = draw(
        st.lists(
            st.tuples(
                addr,
                addr,
                u32,
                u32,
                u32,
                u32,
                st.integers(0, 65535),
                st.integers(0, 65535),
                st.integers(0, 255),
            ),
            max_size=6,
        )
    )
    data = nb.v5_datagram(
        records,
        uptime_ms=uptime,
        unix_secs=draw(st.integers(0, 2**32 - 1)),
        sampling=draw(st.sampled_from([0, 10, 0x4000 | 100, 0x3FFF])),
    )
    if draw(st.integers(0, 5)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return data


@settings(
    max_examples=int(os.environ.get("EGRESSD_HYPOTHESIS_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenarios())
def test_columns_equal_records_on_generated_datagrams(datagrams: list[bytes]) -> None:
    assert_same(datagrams)


# ------------------------------------------------------------------ chosen cases


def test_columns_use_numpy_for_fixed_templates_and_records_otherwise() -> None:
    """The property above holds on both paths: fixed layouts get a plan, others do not."""
    fixed = ((8, 4, 0), (12, 4, 0), (1, 4, 0), (22, 4, 0), (21, 4, 0))
    assert column_plan(compile_layout(fixed, -1, 9)) is not None
    odd = ((8, 4, 0), (12, 4, 0), (1, 3, 0), (2, 5, 0))
    assert column_plan(compile_layout(odd, -1, 9)) is not None
    variable = ((8, 4, 0), (12, 4, 0), (95, 65535, 0))
    assert column_plan(compile_layout(variable, -1, 10)) is None
    wide_uptime = ((8, 4, 0), (12, 4, 0), (22, 8, 0))
    assert column_plan(compile_layout(wide_uptime, -1, 9)) is None
    frame = ((315, 64, 0), (312, 2, 0))
    assert column_plan(compile_layout(frame, -1, 10)) is None


def test_sampled_counts_saturate_and_keep_order_across_paths() -> None:
    """Per-record sampling rates (own, then sampler, then exporter), a counter times a rate
    past 2**64, a variable-length set between fixed ones: order and values kept."""
    fixed = [(8, 4), (12, 4), (1, 8), (2, 4), (34, 4), (48, 1)]
    variable = [(8, 4), (12, 4), (1, 4), (95, 65535)]
    options = nb.options_template_set(300, [(149, 4)], [(48, 1), (34, 4)], ipfix=True)
    sets = [
        nb.template_set({256: fixed, 257: variable}, ipfix=True),  # type: ignore[dict-item]
        options,
        nb.data_set(300, [(149, 4), (48, 1), (34, 4)], [[0, 2, 100], [0, 0, 0]]),
        nb.data_set(256, fixed, [[b"\x0a\0\0\1", b"\1\2\3\4", 2**63, 3, 0, 2]]),
        nb.data_set(257, variable, [[b"\x0a\0\0\2", b"\1\2\3\5", 7, b"x" * 3]]),
        nb.data_set(256, fixed, [[b"\x0a\0\0\3", b"\1\2\3\6", 5, 1, 4, 2]]),
    ]
    flows, rejected = assert_same([nb.ipfix_datagram(sets, export_secs=1_700_000_000)])
    assert (flows, rejected) == (3, 0)
    decoder = NetflowDecoder()
    got = decoder.decode_columns(nb.ipfix_datagram(sets, export_secs=1_700_000_000), EXPORTER, NOW)
    assert got.bytes.tolist() == [MAX, 7, 20]  # 2**63 x sampler 2's 100; 7; 5 x own 4
    assert got.packets.tolist() == [300, 0, 4]
    assert got.to_records()[1].src == "10.0.0.2"


def test_v9_uptime_times_across_the_counter_wrap() -> None:
    """sysUpTime values on either side of a 32-bit wrap give the record path's times."""
    fields = [(8, 4), (12, 4), (22, 4), (21, 4), (1, 4)]
    uptime = 2**32 - 1_000
    rows = [
        [b"\x0a\0\0\1", b"\1\2\3\4", uptime - 5_000, 500, 10],  # end after the wrap
        [b"\x0a\0\0\1", b"\1\2\3\4", 2**32 - 1, 0, 10],
        [b"\x0a\0\0\1", b"\1\2\3\4", 2**31, 2**31 + 1, 10],
    ]
    data = nb.v9_datagram(
        [nb.template_set({256: fields}, ipfix=False), nb.data_set(256, fields, rows)],  # type: ignore[dict-item]
        uptime_ms=uptime,
        unix_secs=1_700_000_000,
    )
    assert_same([data])
    got = NetflowDecoder().decode_columns(data, EXPORTER, NOW)
    assert got.time_end.tolist()[0] == 1_700_000_000 + 1.5
    assert got.time_start.tolist()[0] == 1_700_000_000 - 5.0


# ------------------------------------------------------------------ real captures


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_columns_equal_records_on_every_capture(name: str) -> None:
    _need_captures()
    assert_same([data for data, _exporter in group_datagrams(name)])


def test_columns_concatenate_in_datagram_order() -> None:
    """Several IPFIX messages in one datagram and sets of one template: flows in order."""
    fields = [(8, 4), (12, 4), (1, 4)]
    message = nb.ipfix_datagram(
        [
            nb.template_set({256: fields}, ipfix=True),  # type: ignore[dict-item]
            nb.data_set(256, fields, [[b"\x0a\0\0\1", b"\1\1\1\1", 1]]),
            nb.data_set(256, fields, [[b"\x0a\0\0\2", b"\1\1\1\1", 2]]),
        ],
        export_secs=1_700_000_000,
    )
    second = nb.ipfix_datagram(
        [nb.data_set(256, fields, [[b"\x0a\0\0\3", b"\1\1\1\1", 3]])], export_secs=1_700_000_000
    )
    got = NetflowDecoder().decode_columns(message + second, EXPORTER, NOW)
    assert got.bytes.tolist() == [1, 2, 3]
    assert np.array_equal(got.src_lo & np.uint64(0xFF), np.array([1, 2, 3], dtype=np.uint64))
