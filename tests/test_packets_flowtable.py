"""Flow summariser: per-direction records, timeouts, TCP close, bounded table, sampling."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressd.decode.flowtable import FlowTable
from egressd.decode.frames import PacketHeader
from egressd.model import FlowRecord

A = "10.0.0.5"
B = "203.0.113.9"


def pkt(
    src: str = A,
    dst: str = B,
    sport: int = 40000,
    dport: int = 443,
    length: int = 100,
    flags: int = 0x10,
    proto: int = 6,
) -> PacketHeader:
    return PacketHeader(src, dst, proto, sport, dport, length, flags, 0, 0)


def reply(length: int = 100, flags: int = 0x10) -> PacketHeader:
    return pkt(B, A, 443, 40000, length, flags)


def by_direction(
    records: list[FlowRecord],
) -> dict[tuple[str, str, int, int, int], tuple[int, int]]:
    out: dict[tuple[str, str, int, int, int], tuple[int, int]] = {}
    for r in records:
        key = (r.src, r.dst, r.proto, r.src_port, r.dst_port)
        b, p = out.get(key, (0, 0))
        out[key] = (b + r.bytes, p + r.packets)
    return out


def test_one_record_per_direction_with_its_own_bytes() -> None:
    table = FlowTable(15, 60, 100)
    out: list[FlowRecord] = []
    out += table.add(1.0, pkt(length=1500))
    out += table.add(1.1, reply(length=60))
    out += table.add(1.2, pkt(length=1500))
    assert out == []
    records = table.flush()
    assert by_direction(records) == {
        (A, B, 6, 40000, 443): (3000, 2),
        (B, A, 6, 443, 40000): (60, 1),
    }
    forward = next(r for r in records if r.src == A)
    assert (forward.time_start, forward.time_end) == (1.0, 1.2)
    backward = next(r for r in records if r.src == B)
    assert (backward.time_start, backward.time_end) == (1.1, 1.1)
    assert len(table) == 0 and table.stats.flows_flushed == 1


def test_direction_without_packets_is_not_emitted() -> None:
    table = FlowTable(15, 60, 100)
    table.add(0.0, pkt(proto=17, flags=0))
    records = table.flush()
    assert len(records) == 1 and records[0].src == A


def test_idle_timeout_by_packet_time() -> None:
    table = FlowTable(10, 600, 100)
    table.add(0.0, pkt())
    table.add(5.0, pkt())
    assert table.add(14.9, pkt(src="10.0.0.6")) == []  # 9.9 s after the last packet
    out = table.add(15.0, pkt(src="10.0.0.7"))
    assert [(r.src, r.packets) for r in out] == [(A, 2)]
    assert table.stats.flows_expired_idle == 1
    assert len(table) == 2


def test_expire_with_explicit_time() -> None:
    table = FlowTable(10, 600, 100)
    table.add(0.0, pkt())
    assert table.expire(9.0) == []
    assert [r.packets for r in table.expire(10.0)] == [1]
    assert len(table) == 0


def test_active_timeout_splits_long_flow_and_keeps_counting() -> None:
    table = FlowTable(30, 60, 100)
    out: list[FlowRecord] = []
    for second in range(0, 150):
        out += table.add(float(second), pkt(length=10))
    # exported at t=60 and t=120 (packets 0..59 and 60..119), the rest on flush
    assert [r.packets for r in out] == [60, 60]
    assert out[0].time_start == 0.0 and out[0].time_end == 59.0
    assert out[1].time_start == 60.0
    rest = table.flush()
    assert [r.packets for r in rest] == [30]
    assert sum(r.bytes for r in out + rest) == 1500
    assert table.stats.flows_expired_active == 2
    assert table.stats.flows_created == 1


def test_fin_from_both_sides_closes() -> None:
    table = FlowTable(15, 60, 100)
    table.add(0.0, pkt(flags=0x02))
    table.add(0.1, reply(flags=0x12))
    assert table.add(0.2, pkt(flags=0x11)) == []  # one FIN: still open
    out = table.add(0.3, reply(flags=0x11))
    assert by_direction(out) == {
        (A, B, 6, 40000, 443): (200, 2),
        (B, A, 6, 443, 40000): (200, 2),
    }
    assert table.stats.flows_closed_tcp == 1 and len(table) == 0


def test_rst_closes_at_once() -> None:
    table = FlowTable(15, 60, 100)
    table.add(0.0, pkt(flags=0x02))
    out = table.add(0.1, reply(flags=0x14))
    assert len(out) == 2 and len(table) == 0


def test_full_table_exports_the_flow_due_first() -> None:
    table = FlowTable(10, 600, 3)
    table.add(0.0, pkt(sport=1))
    table.add(1.0, pkt(sport=2))
    table.add(2.0, pkt(sport=3))
    table.add(3.0, pkt(sport=1))  # flow 1 is now the most recent; flow 2 is due first
    out = table.add(4.0, pkt(sport=4))
    assert [r.src_port for r in out] == [2]
    assert table.stats.flows_evicted_full == 1
    assert len(table) == 3


def test_sampling_multiplies() -> None:
    table = FlowTable(15, 60, 100, sampling=100)
    table.add(0.0, pkt(length=40))
    table.add(0.5, pkt(length=60))
    [record] = table.flush()
    assert (record.bytes, record.packets) == (10000, 200)


def test_icmp_request_and_reply() -> None:
    table = FlowTable(15, 60, 100)
    table.add(0.0, pkt(proto=1, sport=8, dport=0, flags=0))
    table.add(0.1, pkt(B, A, proto=1, sport=0, dport=0, flags=0))
    got = by_direction(table.flush())
    assert got == {(A, B, 1, 8, 0): (100, 1), (B, A, 1, 0, 0): (100, 1)}


def test_out_of_order_timestamps_do_not_move_time_back() -> None:
    table = FlowTable(10, 600, 100)
    table.add(100.0, pkt())
    table.add(50.0, pkt(src="10.0.0.9"))  # late packet from a merged capture
    out = table.add(111.0, pkt(src="10.0.0.8"))
    assert {r.src for r in out} == {A, "10.0.0.9"}


def test_add_frame_counts_non_ip_and_malformed() -> None:
    table = FlowTable(15, 60, 100)
    assert table.add_frame(0.0, 1, b"\xff" * 12 + b"\x08\x06" + b"\0" * 28) == []
    assert table.add_frame(0.0, 101, b"\x45\x00") == []
    assert (table.stats.non_ip, table.stats.malformed) == (1, 1)


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        FlowTable(0, 60, 100)
    with pytest.raises(ValueError):
        FlowTable(15, 60, 0)


packets = st.lists(
    st.tuples(
        st.floats(0, 1000, allow_nan=False),
        st.sampled_from(["10.0.0.1", "10.0.0.2", "192.0.2.1", "2001:db8::1", "fd00::2"]),
        st.sampled_from(["10.0.0.1", "198.51.100.1", "2001:db8::2", "fd00::2"]),
        st.sampled_from([1, 6, 17, 47]),
        st.integers(0, 5),
        st.integers(0, 5),
        st.integers(20, 1500),
        st.sampled_from([0, 0x02, 0x10, 0x11, 0x04]),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(packets, st.integers(1, 8), st.booleans())
def test_bounded_and_conserving(
    items: list[tuple[float, str, str, int, int, int, int, int]], max_flows: int, sort: bool
) -> None:
    if sort:
        items = sorted(items)
    table = FlowTable(5, 20, max_flows)
    records: list[FlowRecord] = []
    sent: Counter[tuple[str, str, int, int, int]] = Counter()
    for ts, src, dst, proto, sport, dport, length, flags in items:
        records += table.add(
            ts, pkt(src, dst, sport, dport, length, flags if proto == 6 else 0, proto)
        )
        assert len(table) <= max_flows
        sent[(src, dst, proto, sport, dport)] += length
    records += table.flush()
    got: Counter[tuple[str, str, int, int, int]] = Counter()
    for r in records:
        assert r.packets > 0 and r.time_start <= r.time_end
        got[(r.src, r.dst, r.proto, r.src_port, r.dst_port)] += r.bytes
    assert got == sent
    assert table.stats.packets == len(items)
