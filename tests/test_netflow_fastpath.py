"""The generated per-template set decoders against the generic one, record for record.

Both paths must give identical FlowRecords wherever the generated one applies: on every data
set of every export capture, and on random sets of the layouts the generated code special-cases.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from netflow_builders import data_set
from test_netflow_captures import GROUPS, NOW, _need_captures, group_datagrams

import egressd.decode.netflow.decoder as decoder_module
import egressd.decode.netflow.templated as templated
from egressd.cache import BoundedCache
from egressd.decode.netflow import NetflowDecoder
from egressd.decode.netflow.templated import (
    DatagramContext,
    ExporterOptions,
    decode_data_set,
    decode_data_set_generic,
    remember_v4,
    uptime_bases,
)
from egressd.decode.netflow.templates import Layout, compile_layout
from egressd.errors import DecodeError
from egressd.model import FlowRecord


def _generated_applies(layout: Layout) -> bool:
    return layout.fixed and layout.has_address and not layout.has_frame and not layout.odd_slots


class BothPaths:
    """Stands in for decode_data_set: runs both paths on private address caches, compares."""

    def __init__(self) -> None:
        self.generated_sets = 0
        self.generated_records = 0
        #: layouts compared, by identity; held so that a freed layout's id is not reused
        #: by another (decoders and their layouts are dropped between captures)
        self.layouts: dict[int, Layout] = {}

    def __call__(
        self,
        buf: bytes,
        pos: int,
        end: int,
        layout: Layout,
        ctx: DatagramContext,
        out: list[FlowRecord],
    ) -> int:
        generic: list[FlowRecord] = []
        decode_data_set_generic(
            buf, pos, end, layout, dataclasses.replace(ctx, addr_cache=BoundedCache(1024)), generic
        )
        fast: list[FlowRecord] = []
        count = decode_data_set(
            buf, pos, end, layout, dataclasses.replace(ctx, addr_cache=BoundedCache(1024)), fast
        )
        assert fast == generic
        assert count == len(fast)
        if _generated_applies(layout) and fast:
            self.generated_sets += 1
            self.generated_records += len(fast)
            self.layouts[id(layout)] = layout
        out += fast
        return count


@pytest.fixture
def both_paths(monkeypatch: pytest.MonkeyPatch) -> Iterator[BothPaths]:
    spy = BothPaths()
    monkeypatch.setattr(decoder_module, "decode_data_set", spy)
    yield spy


def test_every_capture_set_decodes_the_same_both_ways(both_paths: BothPaths) -> None:
    _need_captures()
    for name in sorted(GROUPS):
        decoder = NetflowDecoder()
        for data, exporter in group_datagrams(name):
            with contextlib.suppress(DecodeError):  # rejected captures are tested elsewhere
                decoder.decode(data, exporter, NOW)
    # The captures hold many fixed-length IPv4 and IPv6 templates: the generated code must
    # have been compared on a good number of them, not skipped.
    assert len(both_paths.layouts) >= 10, both_paths.layouts
    assert both_paths.generated_records >= 1000, both_paths.generated_records


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_ipv4_text_from_int_matches_ipaddress(value: int) -> None:
    cache: BoundedCache[bytes | int, str] = BoundedCache(8)
    assert remember_v4(value, cache) == str(ipaddress.IPv4Address(value))
    assert cache.data == {value: str(ipaddress.IPv4Address(value))}


# ---------------------------------------------------------------- random sets

ADDR4 = [(8, 4), (12, 4)]
ADDR6 = [(27, 16), (28, 16)]
COUNTS = [(1, 4), (2, 4), (4, 1), (7, 2), (11, 2)]
UPTIME_TIMES = [(22, 4), (21, 4)]

# Field lists covering each branch of the generated code, as (element id, length).
LAYOUTS: dict[str, list[tuple[int, int]]] = {
    "v4 uptime": [*ADDR4, *COUNTS, *UPTIME_TIMES, (10, 4), (6, 1)],
    "v6 uptime": [*ADDR6, *COUNTS, *UPTIME_TIMES],
    "dual stack": [*ADDR4, *ADDR6, *COUNTS, *UPTIME_TIMES],
    "start only": [*ADDR4, *COUNTS, (22, 4)],
    "end only": [*ADDR4, *COUNTS, (21, 4)],
    "no times": [*ADDR4, (1, 8), (2, 8)],
    "millis": [*ADDR4, *COUNTS, (152, 8), (153, 8)],
    "seconds": [*ADDR4, *COUNTS, (150, 4), (151, 4)],
    "ntp": [*ADDR4, *COUNTS, (156, 8), (157, 8)],
    "delta": [*ADDR4, *COUNTS, (158, 4), (159, 4)],
    "own rate": [*ADDR4, *COUNTS, *UPTIME_TIMES, (34, 4)],
    "sampler id": [*ADDR4, *COUNTS, *UPTIME_TIMES, (48, 1)],
    "rate and sampler": [*ADDR4, *COUNTS, *UPTIME_TIMES, (34, 2), (48, 2)],
    "no counts": [*ADDR4, (4, 1)],
}


# (layout name, version, records, header uptime, default rate, sampler rates)
SetCase = tuple[str, int, list[list[int | bytes]], int | None, int, dict[int, int]]


def _value(draw: Any, length: int) -> int | bytes:
    if length == 16:
        return bytes(draw(st.binary(min_size=16, max_size=16)))
    # Bias towards the edges: zero addresses, wrap boundaries, all ones.
    top = 2 ** (8 * length) - 1
    return int(draw(st.one_of(st.integers(0, top), st.sampled_from([0, 1, top, top // 2]))))


@st.composite
def random_sets(
    draw: Any,
) -> tuple[str, int, list[list[int | bytes]], int | None, int, dict[int, int]]:
    name = draw(st.sampled_from(sorted(LAYOUTS)))
    fields = LAYOUTS[name]
    records = [
        [_value(draw, length) for _, length in fields] for _ in range(draw(st.integers(1, 6)))
    ]
    if draw(st.booleans()) and "dual" in name:  # IPv4 zero: the IPv6 fields carry the flow
        for record in records:
            record[0] = record[1] = 0
    uptime = draw(
        st.one_of(
            st.none(),
            st.integers(0, 2**32 - 1),
            st.sampled_from([0, 2**31 - 1, 2**31, 2**31 + 1, 2**32 - 1]),
        )
    )
    default_rate = draw(st.sampled_from([0, 1, 100]))
    samplers = draw(st.dictionaries(st.integers(0, 255), st.integers(1, 4096), max_size=3))
    return name, draw(st.sampled_from([9, 10])), records, uptime, default_rate, samplers


@settings(max_examples=300, deadline=None)
@given(random_sets(), st.integers(1_000_000_000, 2_000_000_000))
def test_random_sets_decode_the_same_both_ways(
    case: SetCase,
    export_secs: int,
) -> None:
    name, version, records, uptime, default_rate, samplers = case
    fields: Sequence[tuple[int, int]] = LAYOUTS[name]
    layout = compile_layout(tuple((eid, length, 0) for eid, length in fields), -1, version)
    assert _generated_applies(layout), name
    body = data_set(300, fields, records, pad=False)[4:]
    options = ExporterOptions(default_rate=default_rate, sampler_rates=samplers)

    def run(decode: Any) -> list[FlowRecord]:
        ctx = DatagramContext(
            "192.0.2.9", version, 0, float(export_secs), uptime, options, BoundedCache(1024)
        )
        out: list[FlowRecord] = []
        assert decode(body, 0, len(body), layout, ctx, out) == len(out)
        return out

    generic = run(decode_data_set_generic)
    assert run(decode_data_set) == generic
    assert len(generic) == len(records)
    assert layout.fast is not None


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 2**31 - 1, 2**31, 2**32 - 1])),
    st.one_of(st.integers(0, 2**32 - 1), st.sampled_from([0, 2**31 - 1, 2**31, 2**32 - 1])),
)
def test_uptime_bases_give_the_signed_32_bit_difference(t: int, uptime: int) -> None:
    below, cut, above = uptime_bases(uptime)
    signed = (t - uptime + 2**31) % 2**32 - 2**31  # RFC 1982-style serial difference
    assert t - (below if t < cut else above) == signed


def test_generated_decoders_fill_record_slots() -> None:
    """FlowRecord is still a plain slotted dataclass, so the slot-filling shortcut is on.

    If this fails, FlowRecord gained construction logic: the generated decoders now call the
    constructor (correct but slower); the comparisons above keep both paths honest either way.
    """
    assert templated._FILL_SLOTS
    assert set(templated._RECORD_FIELDS) == {f.name for f in dataclasses.fields(FlowRecord)}
