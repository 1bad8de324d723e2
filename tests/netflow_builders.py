"""Tiny NetFlow v5 / v9 / IPFIX encoders for tests: build exact datagrams from plain values.

Written from the RFC layouts, independently of egressd's decoder, so tests can state intent.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

# A template field: (element id, length) or (element id, length, enterprise number).
Field = tuple[int, ...]


def _pad4(body: bytes) -> bytes:
    return body + b"\x00" * (-len(body) % 4)


def field_specs(fields: Sequence[Field], *, ipfix: bool) -> bytes:
    out = b""
    for spec in fields:
        eid, length = spec[0], spec[1]
        pen = spec[2] if len(spec) > 2 else 0
        if pen:
            assert ipfix
            out += struct.pack("!HHI", eid | 0x8000, length, pen)
        else:
            out += struct.pack("!HH", eid, length)
    return out


def template_set(templates: dict[int, Sequence[Field]], *, ipfix: bool) -> bytes:
    body = b"".join(
        struct.pack("!HH", tid, len(fields)) + field_specs(fields, ipfix=ipfix)
        for tid, fields in templates.items()
    )
    return struct.pack("!HH", 2 if ipfix else 0, 4 + len(body)) + body


def options_template_set(
    tid: int, scope: Sequence[Field], options: Sequence[Field], *, ipfix: bool
) -> bytes:
    if ipfix:
        body = struct.pack("!HHH", tid, len(scope) + len(options), len(scope))
    else:
        body = struct.pack("!HHH", tid, 4 * len(scope), 4 * len(options))
    body += field_specs(scope, ipfix=ipfix) + field_specs(options, ipfix=ipfix)
    body = _pad4(body)
    return struct.pack("!HH", 3 if ipfix else 1, 4 + len(body)) + body


def withdrawal_set(tid: int) -> bytes:
    return struct.pack("!HHHH", 2, 8, tid, 0)


def encode_value(value: int | bytes, length: int) -> bytes:
    if isinstance(value, bytes):
        if length == 65535:
            if len(value) < 255:
                return bytes([len(value)]) + value
            return b"\xff" + struct.pack("!H", len(value)) + value
        assert len(value) == length
        return value
    return value.to_bytes(length, "big")


def data_set(
    tid: int, fields: Sequence[Field], records: Sequence[Sequence[int | bytes]], pad: bool = True
) -> bytes:
    body = b"".join(
        b"".join(encode_value(v, spec[1]) for v, spec in zip(rec, fields, strict=True))
        for rec in records
    )
    if pad:
        body = _pad4(body)
    return struct.pack("!HH", tid, 4 + len(body)) + body


def v9_datagram(
    sets: Sequence[bytes], *, uptime_ms: int, unix_secs: int, source_id: int = 0, seq: int = 0
) -> bytes:
    return struct.pack("!HHIIII", 9, len(sets), uptime_ms, unix_secs, seq, source_id) + b"".join(
        sets
    )


def ipfix_datagram(
    sets: Sequence[bytes], *, export_secs: int, domain: int = 0, seq: int = 0
) -> bytes:
    body = b"".join(sets)
    return struct.pack("!HHIII", 10, 16 + len(body), export_secs, seq, domain) + body


def v5_datagram(
    records: Sequence[tuple[bytes, bytes, int, int, int, int, int, int, int]],
    *,
    uptime_ms: int,
    unix_secs: int,
    sampling: int = 0,
) -> bytes:
    """records: (src, dst, packets, octets, first_ms, last_ms, sport, dport, proto)."""
    out = struct.pack("!HHIIIIBBH", 5, len(records), uptime_ms, unix_secs, 0, 0, 0, 0, sampling)
    for src, dst, packets, octets, first, last, sport, dport, proto in records:
        out += struct.pack(
            "!4s4s4sHHIIIIHHBBBBHHBBH",
            src, dst, b"\0\0\0\0", 0, 0, packets, octets, first, last,
            sport, dport, 0, 0, proto, 0, 0, 0, 0, 0, 0,
        )  # fmt: skip
    return out
