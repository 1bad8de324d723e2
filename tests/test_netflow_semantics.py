"""NetFlow v5 / v9 / IPFIX decoder behaviour on hand-built datagrams: fields, times, state.

Each datagram is encoded by tests/netflow_builders.py from plain values stated in the test.
"""

from __future__ import annotations

import socket

import pytest
from netflow_builders import (
    data_set,
    ipfix_datagram,
    options_template_set,
    template_set,
    v5_datagram,
    v9_datagram,
    withdrawal_set,
)

from egressd.decode.netflow import NetflowDecoder
from egressd.errors import DecodeError

A, B = socket.inet_aton("10.1.2.3"), socket.inet_aton("203.0.113.9")
EXP = "192.0.2.7"
NTP = 2_208_988_800  # seconds from 1900 to 1970
V4 = [(8, 4), (12, 4), (1, 4), (2, 4), (4, 1), (7, 2), (11, 2)]


def _v4_record(nbytes: int = 1000, packets: int = 10) -> list[int | bytes]:
    return [A, B, nbytes, packets, 6, 40000, 443]


def test_v9_basic_and_uptime_times() -> None:
    fields = [*V4, (22, 4), (21, 4)]
    dg = v9_datagram(
        [template_set({300: fields}, ipfix=False),
         data_set(300, fields, [[*_v4_record(), 9_000, 9_500]])],
        uptime_ms=10_000, unix_secs=1_700_000_000,
    )  # fmt: skip
    (r,) = NetflowDecoder().decode(dg, EXP, 0.0)
    assert (r.src, r.dst, r.bytes, r.packets, r.proto, r.src_port, r.dst_port, r.exporter) == (
        "10.1.2.3", "203.0.113.9", 1000, 10, 6, 40000, 443, EXP,
    )  # fmt: skip
    assert r.time_start == pytest.approx(1_700_000_000 - 1.0)
    assert r.time_end == pytest.approx(1_700_000_000 - 0.5)


def test_v9_uptime_wraparound() -> None:
    fields = [*V4, (22, 4), (21, 4)]
    # Exporter uptime wrapped to 1 s; the flow started 2 s earlier, before the wrap.
    dg = v9_datagram(
        [template_set({300: fields}, ipfix=False),
         data_set(300, fields, [[*_v4_record(), 2**32 - 1000, 500]])],
        uptime_ms=1000, unix_secs=1_700_000_000,
    )  # fmt: skip
    (r,) = NetflowDecoder().decode(dg, EXP, 0.0)
    assert r.time_start == pytest.approx(1_700_000_000 - 2.0)
    assert r.time_end == pytest.approx(1_700_000_000 - 0.5)


@pytest.mark.parametrize(
    ("start", "end", "values", "expected"),
    [
        ((150, 4), (151, 4), (1_600_000_000, 1_600_000_010), (1_600_000_000, 1_600_000_010)),
        ((152, 8), (153, 8), (1_600_000_000_250, 1_600_000_001_500),
         (1_600_000_000.25, 1_600_000_001.5)),
        ((154, 8), (155, 8), ((1_600_000_000 + NTP) << 32 | 1 << 31, (1_600_000_002 + NTP) << 32),
         (1_600_000_000.5, 1_600_000_002)),
        ((156, 8), (157, 8), ((1_600_000_000 + NTP) << 32, (1_600_000_001 + NTP) << 32),
         (1_600_000_000, 1_600_000_001)),
        ((158, 4), (159, 4), (3_000_000, 1_000_000), (1_699_999_997, 1_699_999_999)),
    ],
)  # fmt: skip
def test_ipfix_time_elements(
    start: tuple[int, int],
    end: tuple[int, int],
    values: tuple[int, int],
    expected: tuple[float, float],
) -> None:
    fields = [*V4, start, end]
    dg = ipfix_datagram(
        [
            template_set({400: fields}, ipfix=True),
            data_set(400, fields, [[*_v4_record(), *values]]),
        ],
        export_secs=1_700_000_000,
    )
    (r,) = NetflowDecoder().decode(dg, EXP, 0.0)
    assert (r.time_start, r.time_end) == pytest.approx(expected)


def test_ipfix_without_times_uses_export_time() -> None:
    dg = ipfix_datagram(
        [template_set({400: V4}, ipfix=True), data_set(400, V4, [_v4_record()])],
        export_secs=1_700_000_123,
    )
    (r,) = NetflowDecoder().decode(dg, EXP, 0.0)
    assert r.time_start == r.time_end == 1_700_000_123


def test_ipfix_enterprise_and_variable_length_fields_are_skipped() -> None:
    fields = [
        (8, 4),
        (1000, 65535, 29305),
        (12, 4),
        (82, 65535),
        (1, 8),
        (77, 2, 9),
        (7, 2),
        (11, 2),
    ]
    records = [
        [A, b"x" * 3, B, b"eth0", 5000, 7, 1234, 80],
        [B, b"y" * 300, A, b"", 6000, 7, 80, 1234],  # 300 bytes: 255 + two-byte length
    ]
    dg = ipfix_datagram(
        [template_set({401: fields}, ipfix=True), data_set(401, fields, records)],
        export_secs=1_700_000_000,
    )
    out = NetflowDecoder().decode(dg, EXP, 0.0)
    assert [(r.src, r.dst, r.bytes, r.src_port, r.dst_port) for r in out] == [
        ("10.1.2.3", "203.0.113.9", 5000, 1234, 80),
        ("203.0.113.9", "10.1.2.3", 6000, 80, 1234),
    ]


def test_ipv4_mapped_ipv6_becomes_ipv4_and_ipv6_text() -> None:
    fields = [(27, 16), (28, 16), (1, 4), (2, 4)]
    mapped = socket.inet_pton(socket.AF_INET6, "::ffff:198.51.100.7")
    v6 = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    dg = ipfix_datagram(
        [template_set({402: fields}, ipfix=True), data_set(402, fields, [[mapped, v6, 1, 1]])],
        export_secs=1,
    )
    (r,) = NetflowDecoder().decode(dg, EXP, 0.0)
    assert (r.src, r.dst) == ("198.51.100.7", "2001:db8::1")


def test_reduced_size_encoding() -> None:
    fields = [(8, 4), (12, 4), (1, 3), (2, 1)]
    dg = v9_datagram(
        [template_set({301: fields}, ipfix=False), data_set(301, fields, [[A, B, 0x123456, 3]])],
        uptime_ms=0, unix_secs=1,
    )  # fmt: skip
    (r,) = NetflowDecoder().decode(dg, EXP, 0.0)
    assert (r.bytes, r.packets) == (0x123456, 3)


def test_zero_length_template_does_not_loop() -> None:
    fields = [(8, 0), (12, 0)]
    body = data_set(302, fields, [], pad=False)[:4] + b"\x00" * 16
    body = body[:2] + (len(body)).to_bytes(2, "big") + body[4:]
    dg = v9_datagram([template_set({302: fields}, ipfix=False), body], uptime_ms=0, unix_secs=1)
    decoder = NetflowDecoder()
    assert decoder.decode(dg, EXP, 0.0) == []
    assert decoder.stats.set_errors["empty_template"] == 1


def test_data_before_template_in_same_datagram() -> None:
    dg = v9_datagram(
        [data_set(303, V4, [_v4_record(1), _v4_record(2)]),
         template_set({303: V4}, ipfix=False),
         data_set(303, V4, [_v4_record(3)])],
        uptime_ms=0, unix_secs=1,
    )  # fmt: skip
    assert sorted(r.bytes for r in NetflowDecoder().decode(dg, EXP, 0.0)) == [1, 2, 3]


def test_templates_are_per_exporter_and_domain() -> None:
    decoder = NetflowDecoder()
    tpl = ipfix_datagram([template_set({404: V4}, ipfix=True)], export_secs=1, domain=1)
    data = [data_set(404, V4, [_v4_record()])]
    decoder.decode(tpl, EXP, 0.0)
    assert decoder.decode(ipfix_datagram(data, export_secs=1, domain=2), EXP, 0.0) == []
    assert decoder.decode(ipfix_datagram(data, export_secs=1, domain=1), "192.0.2.8", 0.0) == []
    assert len(decoder.decode(ipfix_datagram(data, export_secs=1, domain=1), EXP, 0.0)) == 1
    assert decoder.stats.pending_count == 2


def test_template_cap_evicts_oldest() -> None:
    decoder = NetflowDecoder(max_templates=3)
    for tid in range(500, 505):
        decoder.decode(
            ipfix_datagram([template_set({tid: V4}, ipfix=True)], export_secs=1), EXP, float(tid)
        )
    assert decoder.stats.template_count == 3
    assert decoder.stats.templates_evicted == 2
    oldest = ipfix_datagram([data_set(500, V4, [_v4_record()])], export_secs=1)
    newest = ipfix_datagram([data_set(504, V4, [_v4_record()])], export_secs=1)
    assert decoder.decode(oldest, EXP, 600.0) == []
    assert len(decoder.decode(newest, EXP, 600.0)) == 1


def test_template_expiry_and_refresh() -> None:
    decoder = NetflowDecoder(template_timeout=10.0)
    tpl = ipfix_datagram([template_set({405: V4}, ipfix=True)], export_secs=1)
    data = ipfix_datagram([data_set(405, V4, [_v4_record()])], export_secs=1)
    decoder.decode(tpl, EXP, 0.0)
    decoder.decode(tpl, EXP, 8.0)  # refresh
    assert len(decoder.decode(data, EXP, 17.0)) == 1
    assert decoder.decode(data, EXP, 30.0) == []
    assert decoder.stats.templates_expired == 1


def test_ipfix_withdrawal() -> None:
    decoder = NetflowDecoder()
    decoder.decode(
        ipfix_datagram([template_set({406: V4, 407: V4}, ipfix=True)], export_secs=1), EXP, 0
    )
    decoder.decode(ipfix_datagram([withdrawal_set(406)], export_secs=1), EXP, 0)
    assert decoder.stats.template_count == 1
    decoder.decode(ipfix_datagram([withdrawal_set(2)], export_secs=1), EXP, 0)  # all templates
    assert decoder.stats.template_count == 0
    assert decoder.stats.templates_withdrawn == 2


def test_pending_is_bounded() -> None:
    decoder = NetflowDecoder(max_pending=2)
    for tid in (600, 601, 602):
        decoder.decode(ipfix_datagram([data_set(tid, V4, [_v4_record()])], export_secs=1), EXP, 0)
    assert decoder.stats.pending_count == 2 and decoder.stats.pending_dropped == 1
    records = decoder.decode(
        ipfix_datagram([template_set({600: V4, 601: V4, 602: V4}, ipfix=True)], export_secs=1),
        EXP,
        0,
    )
    assert len(records) == 2


def test_ipfix_options_packet_interval_and_selector_rate() -> None:
    decoder = NetflowDecoder()
    scope = [(302, 4)]
    opts = [(305, 4), (306, 4)]
    fields = [*V4, (302, 4)]
    dg = ipfix_datagram(
        [options_template_set(700, scope, opts, ipfix=True),
         data_set(700, scope + opts, [[1, 1, 99], [2, 1, 0]]),  # selector 1: 1 in 100
         template_set({701: fields}, ipfix=True),
         data_set(701, fields, [[*_v4_record(10, 1), sel] for sel in (1, 2, 3)])],
        export_secs=1,
    )  # fmt: skip
    out = decoder.decode(dg, EXP, 0.0)
    assert [r.bytes for r in out] == [1000, 10, 10]
    assert decoder.stats.options_records == 2


def test_v9_options_default_and_record_rate() -> None:
    decoder = NetflowDecoder()
    scope, opts = [(1, 4)], [(34, 4), (35, 1)]  # scope "system"; SAMPLING_INTERVAL 256
    fields_own = [*V4, (34, 4)]
    dg = v9_datagram(
        [options_template_set(800, scope, opts, ipfix=False),
         data_set(800, scope + opts, [[0, 256, 2]]),
         template_set({801: V4, 802: fields_own}, ipfix=False),
         data_set(801, V4, [_v4_record(2, 1)]),
         data_set(802, fields_own, [[*_v4_record(2, 1), 10]])],
        uptime_ms=0, unix_secs=1,
    )  # fmt: skip
    assert [r.bytes for r in decoder.decode(dg, EXP, 0.0)] == [512, 20]


def test_v5_sampling_mode_bits_ignored() -> None:
    rec = (A, B, 2, 100, 0, 0, 1, 2, 17)
    dg = v5_datagram([rec], uptime_ms=0, unix_secs=1, sampling=(0b01 << 14) | 64)
    (r,) = NetflowDecoder().decode(dg, EXP, 0.0)
    assert (r.bytes, r.packets) == (6400, 128)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated_header"),
        (b"\x00\x07" + bytes(30), "bad_version"),
        (b"\x00\x05\x00\x02" + bytes(20), "bad_count"),
        (b"\x00\x0a\x00\x30" + bytes(12), "truncated_message"),
        (b"\x00\x0a\x00\x04" + bytes(12), "bad_length"),
        (b"\x00\x09" + bytes(18) + b"\x01\x00\x00\x02", "bad_set_length"),
    ],
)
def test_rejections_name_a_reason(data: bytes, reason: str) -> None:
    decoder = NetflowDecoder()
    with pytest.raises(DecodeError) as info:
        decoder.decode(data, EXP, 0.0)
    assert info.value.reason == reason
    assert decoder.stats.decode_errors[reason] == 1
