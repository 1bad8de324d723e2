"""Hostile exporters against the NetFlow / IPFIX decoder's shared state.

One allowlisted address flooding templates or data for unknown templates must not evict
another exporter's templates or buffered sets; templates that can never yield a record are
counted, not silently kept.
"""

from __future__ import annotations

import struct

from egressd.decode.netflow import NetflowDecoder
from tests.netflow_builders import data_set, ipfix_datagram, template_set, v9_datagram

NOW = 1_773_064_800.0
FIELDS = [(8, 4), (12, 4), (1, 8), (2, 8), (152, 8), (153, 8)]  # v4 src/dst, bytes, packets, ms
LEGIT = "192.0.2.1"
FLOODER = "192.0.2.66"


def row(n: int) -> list[int | bytes]:
    ms = int(NOW * 1000)
    return [bytes([10, 20, 0, 17]), bytes([47, 100, 23, n % 250]), 1000 + n, 1, ms - 1000, ms]


def legit_data(decoder: NetflowDecoder, now: float) -> int:
    datagram = ipfix_datagram([data_set(256, FIELDS, [row(1), row(2)])], export_secs=int(now))
    return len(decoder.decode(datagram, LEGIT, now))


def test_a_template_flood_from_one_exporter_keeps_the_others_templates() -> None:
    decoder = NetflowDecoder(max_templates=100, max_pending=50)
    announce = ipfix_datagram([template_set({256: FIELDS}, ipfix=True)], export_secs=int(NOW))
    decoder.decode(announce, LEGIT, NOW)
    assert legit_data(decoder, NOW) == 2
    # The flooder announces 5,000 templates and sends data for 5,000 it never announced.
    for base in range(256, 5256, 50):
        flood = {tid: FIELDS for tid in range(base, base + 50)}
        decoder.decode(
            ipfix_datagram([template_set(flood, ipfix=True)], export_secs=int(NOW)), FLOODER, NOW
        )
    for tid in range(10_000, 15_000):
        decoder.decode(
            ipfix_datagram([data_set(tid, FIELDS, [row(3)])], export_secs=int(NOW)), FLOODER, NOW
        )
    # The legitimate exporter's template survived, and so does its data.
    assert legit_data(decoder, NOW + 1) == 2
    assert decoder.stats.templates_evicted >= 4_900
    assert decoder.stats.pending_dropped >= 4_900
    assert len(decoder._templates) <= 100


def test_a_data_flood_for_unknown_templates_keeps_the_others_buffered_sets() -> None:
    decoder = NetflowDecoder(max_templates=100, max_pending=50)
    # The legitimate exporter's data arrives before its template (a restart, a lost packet).
    assert legit_data(decoder, NOW) == 0
    for tid in range(10_000, 12_000):
        decoder.decode(
            ipfix_datagram([data_set(tid, FIELDS, [row(3)])], export_secs=int(NOW)), FLOODER, NOW
        )
    announce = ipfix_datagram([template_set({256: FIELDS}, ipfix=True)], export_secs=int(NOW))
    assert len(decoder.decode(announce, LEGIT, NOW + 1)) == 2  # its buffered set, decoded


def set_errors(decoder: NetflowDecoder) -> dict[str, int]:
    return dict(decoder.stats.set_errors)


def test_a_lying_variable_length_field_is_counted() -> None:
    fields = [(8, 4), (12, 4), (1, 8), (82, 65535)]  # interfaceName, variable length
    decoder = NetflowDecoder()
    good = struct.pack("!4s4sQ", bytes([10, 20, 0, 17]), bytes([47, 100, 23, 45]), 1000)
    body = good + b"\x03eth" + good + b"\xc8" + b"short"  # the second claims 200 bytes
    data = struct.pack("!HH", 256, 4 + len(body)) + body
    records = decoder.decode(
        ipfix_datagram([template_set({256: fields}, ipfix=True), data], export_secs=int(NOW)),
        LEGIT,
        NOW,
    )
    assert len(records) == 1
    assert set_errors(decoder) == {"bad_variable_length": 1}


def test_an_empty_template_set_is_counted() -> None:
    decoder = NetflowDecoder()
    empty = struct.pack("!HH", 2, 4)
    decoder.decode(ipfix_datagram([empty], export_secs=int(NOW)), LEGIT, NOW)
    assert set_errors(decoder) == {"empty_template_set": 1}


def test_a_v9_template_without_fields_is_counted_and_withdraws_nothing() -> None:
    decoder = NetflowDecoder()
    v9_fields = [(8, 4), (12, 4), (1, 8), (2, 8), (22, 4), (21, 4)]
    decoder.decode(
        v9_datagram([template_set({256: v9_fields}, ipfix=False)], uptime_ms=1000, unix_secs=1),
        LEGIT,
        NOW,
    )
    zero = struct.pack("!HHHH", 0, 8, 256, 0)  # template 256 with no fields
    decoder.decode(v9_datagram([zero], uptime_ms=1000, unix_secs=1), LEGIT, NOW)
    assert set_errors(decoder) == {"empty_template": 1}
    assert len(decoder._templates) == 1  # NetFlow v9 has no withdrawal


def test_options_template_without_option_fields_is_counted() -> None:
    decoder = NetflowDecoder()
    # v9 options template: scope and option lengths both 0
    body = struct.pack("!HHH", 300, 0, 0) + b"\x00\x00"
    decoder.decode(
        v9_datagram([struct.pack("!HH", 1, 4 + len(body)) + body], uptime_ms=1, unix_secs=1),
        LEGIT,
        NOW,
    )
    assert set_errors(decoder) == {"empty_template": 1}
    assert len(decoder._templates) == 0


def test_an_oversized_template_is_counted_and_not_kept() -> None:
    decoder = NetflowDecoder()
    fields = [(8, 4), (12, 4), (1, 8), (2, 8), (100, 60_000), (101, 60_000)]
    decoder.decode(
        ipfix_datagram([template_set({256: fields}, ipfix=True)], export_secs=int(NOW)),
        LEGIT,
        NOW,
    )
    assert set_errors(decoder) == {"oversized_template": 1}
    assert len(decoder._templates) == 0


def test_a_template_with_a_bad_address_length_is_counted() -> None:
    decoder = NetflowDecoder()
    fields = [(8, 16), (12, 4), (1, 8), (2, 8)]  # sourceIPv4Address 16 bytes long
    decoder.decode(
        ipfix_datagram([template_set({256: fields}, ipfix=True)], export_secs=int(NOW)),
        LEGIT,
        NOW,
    )
    assert set_errors(decoder) == {"bad_address_template": 1}
    assert len(decoder._templates) == 0
