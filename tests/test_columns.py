"""FlowColumns: the columnar batch type means exactly the records it was made from."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressd.columns import (
    FlowColumns,
    address_text,
    address_texts,
    address_value,
    is_v4,
    v4_values,
)
from egressd.enrich.address import normalize_address
from egressd.model import FlowRecord

v4 = st.integers(0, 2**32 - 1).map(lambda v: str(ipaddress.IPv4Address(v)))
v6 = st.integers(0, 2**128 - 1).map(lambda v: str(ipaddress.IPv6Address(v)))
addresses = st.one_of(v4, v6)
records = st.builds(
    FlowRecord,
    time_start=st.floats(0, 2e9, allow_nan=False),
    time_end=st.floats(0, 2e9, allow_nan=False),
    src=addresses,
    dst=addresses,
    bytes=st.integers(0, 2**64 - 1),
    packets=st.integers(0, 2**64 - 1),
    proto=st.integers(0, 255),
    src_port=st.integers(0, 65535),
    dst_port=st.integers(0, 65535),
    exporter=st.just("192.0.2.9"),
)


def _canonical(record: FlowRecord) -> FlowRecord:
    """The record as decoders write it: addresses in egressd's one canonical text form."""
    record.src = normalize_address(record.src) or "::"
    record.dst = normalize_address(record.dst) or "::"
    return record


@given(st.lists(records, max_size=40))
def test_records_survive_the_round_trip_through_columns(batch: list[FlowRecord]) -> None:
    columns = FlowColumns.from_records(batch)
    columns.check()
    assert len(columns) == len(batch)
    assert columns.to_records() == [_canonical(r) for r in batch]


@given(st.lists(records, min_size=1, max_size=30), st.integers(0, 30))
def test_concat_of_the_halves_is_the_whole(batch: list[FlowRecord], cut: int) -> None:
    columns = FlowColumns.from_records(batch)
    cut = min(cut, len(batch))
    joined = FlowColumns.concat([columns.take(slice(0, cut)), columns.take(slice(cut, None))])
    joined.check()
    assert joined.to_records() == columns.to_records()
    assert joined.exporter == "192.0.2.9"


def test_ipv4_rows_are_found_by_their_mapped_prefix() -> None:
    batch = [
        FlowRecord(0.0, 1.0, "198.51.100.7", "2001:db8::1", 1, 1),
        FlowRecord(0.0, 1.0, "::ffff:203.0.113.5", "::ffff:0:1", 1, 1),
        FlowRecord(0.0, 1.0, "::1", "0.0.0.0", 1, 1),
    ]
    columns = FlowColumns.from_records(batch)
    assert is_v4(columns.src_hi, columns.src_lo).tolist() == [True, True, False]
    assert is_v4(columns.dst_hi, columns.dst_lo).tolist() == [False, True, True]
    assert v4_values(columns.src_lo)[:2].tolist() == [
        int(ipaddress.IPv4Address("198.51.100.7")),
        int(ipaddress.IPv4Address("203.0.113.5")),
    ]


def test_counts_beyond_64_bits_saturate_and_bad_addresses_become_zero() -> None:
    columns = FlowColumns.from_records([FlowRecord(0.0, 1.0, "not an address", "::", 2**70, 3)])
    assert columns.bytes.tolist() == [2**64 - 1]
    assert (columns.src_hi[0], columns.src_lo[0]) == (0, 0)
    assert address_value("bogus") == 0
    assert address_text(0, 0) == "::"


def test_check_names_the_column_that_does_not_fit() -> None:
    columns = FlowColumns.from_records([FlowRecord(0.0, 1.0, "192.0.2.1", "192.0.2.2", 1, 1)])
    columns.bytes = np.zeros(1, dtype=np.int64)  # type: ignore[assignment]
    with pytest.raises(ValueError, match="column bytes"):
        columns.check()
    assert len(FlowColumns.empty()) == 0
    assert FlowColumns.concat([]).to_records() == []


@given(st.lists(st.integers(0, 2**32 - 1), max_size=60) | st.lists(st.integers(0, 2**128 - 1)))
def test_column_texts_are_each_rows_text(values: list[int]) -> None:
    """The whole-column formatter (IPv4 built in one buffer) writes what address_text does."""
    mapped = [v | 0xFFFF_0000_0000 if v < 2**32 else v for v in values]
    hi = np.array([v >> 64 for v in mapped], dtype=np.uint64)
    lo = np.array([v & (2**64 - 1) for v in mapped], dtype=np.uint64)
    texts = address_texts(hi, lo)
    assert texts == [address_text(v >> 64, v & (2**64 - 1)) for v in mapped]
    assert (
        address_texts(np.zeros(3, np.uint64), np.array([0xFFFF_0000_0000] * 3, np.uint64))
        == ["0.0.0.0"] * 3
    )
