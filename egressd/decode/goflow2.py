"""goflow2 output decoders: JSON lines (goflow2 ≥2 snake_case and 1.x CamelCase) and protobuf.

Sans-IO: one line or message in, one FlowRecord out; anything malformed raises DecodeError.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator
from operator import itemgetter
from socket import AF_INET, AF_INET6, inet_pton
from typing import Final

from egressd.decode.common import (
    ADDRESS_CACHE,
    MAX_EPOCH,
    PROTOCOLS,
    as_port,
    as_protocol,
    as_sampling_rate,
    as_time,
    check_epoch,
    format_packed_address,
    load_object,
    optional_address,
    required_address,
    sampled_counts,
)
from egressd.errors import DecodeError
from egressd.model import FlowRecord

_MAX_NS: Final = int(MAX_EPOCH * 1e9)

_FAST_FIELDS: Final = itemgetter(
    "bytes",
    "packets",
    "sampling_rate",
    "time_flow_start_ns",
    "time_flow_end_ns",
    "src_addr",
    "dst_addr",
    "sampler_address",
    "proto",
    "src_port",
    "dst_port",
)

#: the address cache's own dict: a miss raises KeyError and takes the checked path
_ADDRESS_TEXT = ADDRESS_CACHE.data


def decode_goflow2_json(line: bytes) -> FlowRecord:
    """One goflow2 JSON record (either generation of field names) as a FlowRecord.

    The common case — goflow2 ≥2 with integer nanosecond times, known protocol and
    addresses seen before — is resolved with dict lookups alone; anything else takes the
    checked path, which also gives the precise DecodeError reason.
    """
    obj = load_object(line)
    try:
        # One C call fetches every field; a missing one, an unseen address or an odd type
        # raises here and takes the checked path instead.
        nbytes, packets, rate, start, end, src, dst, exporter, proto, src_port, dst_port = (
            _FAST_FIELDS(obj)
        )
        rate = rate or 1
        end = end or obj["time_received_ns"]
        start = start or end
        src = _ADDRESS_TEXT[src]
        dst = _ADDRESS_TEXT[dst]
        exporter = _ADDRESS_TEXT[exporter] if exporter else ""
        proto = PROTOCOLS[proto]
        # OR of ints is negative iff one is, and raises TypeError for str, float or None:
        # six type and sign checks in one C operation.
        bits = nbytes | packets | rate | start | end | src_port | dst_port
    except (KeyError, TypeError):
        return _decode_json_checked(obj)
    if (
        bits >= 0
        and end
        and start < _MAX_NS
        and end < _MAX_NS
        and src_port <= 0xFFFF
        and dst_port <= 0xFFFF
    ):
        return FlowRecord(
            start / 1e9,
            end / 1e9,
            src,
            dst,
            nbytes * rate,
            packets * rate,
            proto,
            src_port,
            dst_port,
            exporter,
        )
    return _decode_json_checked(obj)


class _Names:
    """The JSON key names of one goflow2 generation, with time candidates in preference order."""

    __slots__ = (
        "bytes",
        "dst",
        "dst_port",
        "end_times",
        "exporter",
        "packets",
        "proto",
        "rate",
        "src",
        "src_port",
        "start_times",
    )

    def __init__(
        self,
        *,
        src: str,
        dst: str,
        nbytes: str,
        packets: str,
        rate: str,
        exporter: str,
        proto: str,
        src_port: str,
        dst_port: str,
        start_times: tuple[tuple[str, float], ...],
        end_times: tuple[tuple[str, float], ...],
    ) -> None:
        self.src = src
        self.dst = dst
        self.bytes = nbytes
        self.packets = packets
        self.rate = rate
        self.exporter = exporter
        self.proto = proto
        self.src_port = src_port
        self.dst_port = dst_port
        self.start_times = start_times
        self.end_times = end_times


_V2 = _Names(
    src="src_addr",
    dst="dst_addr",
    nbytes="bytes",
    packets="packets",
    rate="sampling_rate",
    exporter="sampler_address",
    proto="proto",
    src_port="src_port",
    dst_port="dst_port",
    start_times=(("time_flow_start_ns", 1e9),),
    end_times=(("time_flow_end_ns", 1e9), ("time_received_ns", 1e9)),
)

# goflow2 1.x wrote seconds, later 1.x releases added Ms and Ns variants; prefer the finest.
_V1 = _Names(
    src="SrcAddr",
    dst="DstAddr",
    nbytes="Bytes",
    packets="Packets",
    rate="SamplingRate",
    exporter="SamplerAddress",
    proto="Proto",
    src_port="SrcPort",
    dst_port="DstPort",
    start_times=(
        ("TimeFlowStartNs", 1e9),
        ("TimeFlowStartMs", 1e3),
        ("TimeFlowStart", 1.0),
    ),
    end_times=(
        ("TimeFlowEndNs", 1e9),
        ("TimeFlowEndMs", 1e3),
        ("TimeFlowEnd", 1.0),
        ("TimeReceivedNs", 1e9),
        ("TimeReceived", 1.0),
    ),
)


def _first_time(obj: dict[str, object], candidates: tuple[tuple[str, float], ...]) -> float | None:
    # Later candidates are not even checked once one is known, as in the fast path.
    for key, divisor in candidates:
        seconds = as_time(obj.get(key), divisor)
        if seconds is not None:
            return seconds
    return None


def _decode_json_checked(obj: dict[str, object]) -> FlowRecord:
    names = _V1 if "SrcAddr" in obj or "Bytes" in obj else _V2
    get = obj.get
    src = required_address(get(names.src), names.src)
    dst = required_address(get(names.dst), names.dst)
    exporter = optional_address(get(names.exporter))
    nbytes, packets = sampled_counts(
        get(names.bytes),
        get(names.packets),
        as_sampling_rate(get(names.rate)),
        names.bytes,
        names.packets,
    )
    end = _first_time(obj, names.end_times)
    if end is None:
        raise DecodeError("missing_field", "no flow end or receive time")
    start = _first_time(obj, names.start_times)
    return FlowRecord(
        end if start is None else start,
        end,
        src,
        dst,
        nbytes,
        packets,
        as_protocol(get(names.proto)),
        as_port(get(names.src_port), names.src_port),
        as_port(get(names.dst_port), names.dst_port),
        exporter,
    )


# --- protobuf (-format=bin) -------------------------------------------------------------
# Field numbers of goflow2's pb/flow.proto FlowMessage that egressd reads.
_F_SAMPLING_RATE: Final = 3
_F_SRC_ADDR: Final = 6
_F_DST_ADDR: Final = 7
_F_BYTES: Final = 9
_F_PACKETS: Final = 10
_F_SAMPLER_ADDRESS: Final = 11
_F_PROTO: Final = 20
_F_SRC_PORT: Final = 21
_F_DST_PORT: Final = 22
_F_TIME_RECEIVED_NS: Final = 110
_F_TIME_FLOW_START_NS: Final = 111
_F_TIME_FLOW_END_NS: Final = 112

_VARINT: Final = 0
_FIXED64: Final = 1
_LENGTH_DELIMITED: Final = 2
_FIXED32: Final = 5


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position) of the base-128 varint at ``pos``; IndexError when truncated."""
    value = 0
    shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise DecodeError("bad_protobuf", "varint longer than 10 bytes")


def iter_length_delimited(buffer: bytes) -> Iterator[bytes]:
    """Messages of a varint-length-prefixed stream, as goflow2 ``-format=bin`` writes them.

    goflow2 prefixes every message, so a Kafka record value is such a stream holding one
    message and a file holds many. A truncated last message raises DecodeError after the
    complete ones have been yielded.
    """
    pos = 0
    end = len(buffer)
    while pos < end:
        try:
            length, pos = _read_varint(buffer, pos)
        except IndexError as exc:
            raise DecodeError("bad_protobuf", "truncated length prefix") from exc
        stop = pos + length
        if stop > end:
            raise DecodeError("bad_protobuf", f"message of {length} bytes, {end - pos} left")
        yield buffer[pos:stop]
        pos = stop


def decode_goflow2_protobuf(message: bytes) -> FlowRecord:
    """One goflow2 FlowMessage (without its length prefix) as a FlowRecord.

    Unknown fields are skipped, as protobuf requires; addresses are 4 or 16 bytes.
    """
    src = dst = sampler = b""
    nbytes = packets = rate = proto = src_port = dst_port = 0
    received = start = end = 0
    pos = 0
    size = len(message)
    try:
        while pos < size:
            # Tags of fields 1-15 take one byte and of 16-2047 two: decode those inline.
            key = message[pos]
            if key < 0x80:
                pos += 1
            elif message[pos + 1] < 0x80:
                key = (key & 0x7F) | message[pos + 1] << 7
                pos += 2
            else:
                key, pos = _read_varint(message, pos)
            field = key >> 3
            wire = key & 7
            if field == 0:
                raise DecodeError("bad_protobuf", "field number 0")
            if wire == _VARINT:
                value = message[pos]
                if value < 0x80:
                    pos += 1
                elif message[pos + 1] < 0x80:
                    value = (value & 0x7F) | message[pos + 1] << 7
                    pos += 2
                else:
                    value, pos = _read_varint(message, pos)
                if field == _F_BYTES:
                    nbytes = value
                elif field == _F_PACKETS:
                    packets = value
                elif field == _F_SAMPLING_RATE:
                    rate = value
                elif field == _F_PROTO:
                    proto = value
                elif field == _F_SRC_PORT:
                    src_port = value
                elif field == _F_DST_PORT:
                    dst_port = value
                elif field == _F_TIME_FLOW_END_NS:
                    end = value
                elif field == _F_TIME_FLOW_START_NS:
                    start = value
                elif field == _F_TIME_RECEIVED_NS:
                    received = value
            elif wire == _LENGTH_DELIMITED:
                length = message[pos]
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = _read_varint(message, pos)
                stop = pos + length
                if stop > size:
                    raise DecodeError("bad_protobuf", "field runs past the message")
                if field == _F_SRC_ADDR:
                    src = message[pos:stop]
                elif field == _F_DST_ADDR:
                    dst = message[pos:stop]
                elif field == _F_SAMPLER_ADDRESS:
                    sampler = message[pos:stop]
                pos = stop
            elif wire == _FIXED64:
                pos += 8
            elif wire == _FIXED32:
                pos += 4
            else:
                raise DecodeError("bad_protobuf", f"wire type {wire}")
    except IndexError as exc:
        raise DecodeError("bad_protobuf", "message truncated") from exc
    if pos != size:
        raise DecodeError("bad_protobuf", "message truncated")
    if not src or not dst:
        raise DecodeError("missing_field", "src_addr or dst_addr is absent")
    if proto > 255 or src_port > 65535 or dst_port > 65535:
        raise DecodeError("bad_number", "protocol or port out of range")
    end_ns = end or received
    if not end_ns:
        raise DecodeError("missing_field", "no flow end or receive time")
    time_end = check_epoch(end_ns / 1e9)
    time_start = check_epoch(start / 1e9) if start else time_end
    rate = rate or 1
    return FlowRecord(
        time_start,
        time_end,
        format_packed_address(src),
        format_packed_address(dst),
        nbytes * rate,
        packets * rate,
        proto,
        src_port,
        dst_port,
        format_packed_address(sampler) if sampler else "",
    )


# --- encoder for tests and benchmarks ---------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _packed(address: str) -> bytes:
    return inet_pton(AF_INET6, address) if ":" in address else inet_pton(AF_INET, address)


def encode_goflow2_protobuf(
    *,
    src_addr: str,
    dst_addr: str,
    bytes: int,
    packets: int,
    time_flow_start_ns: int = 0,
    time_flow_end_ns: int = 0,
    time_received_ns: int = 0,
    sampling_rate: int = 0,
    sampler_address: str = "",
    proto: int = 0,
    src_port: int = 0,
    dst_port: int = 0,
    flow_type: int = 4,
    sequence_num: int = 0,
    delimited: bool = False,
) -> builtins.bytes:
    """A goflow2 FlowMessage as goflow2 writes it (proto3: zero fields omitted, in field order).

    ``etype`` follows from the source address family. With ``delimited`` the message
    carries the varint length prefix of ``-format=bin``.
    """
    varints = (
        (1, flow_type),
        (3, sampling_rate),
        (4, sequence_num),
        (9, bytes),
        (10, packets),
        (20, proto),
        (21, src_port),
        (22, dst_port),
        (30, 0x86DD if ":" in src_addr else 0x800),
        (110, time_received_ns),
        (111, time_flow_start_ns),
        (112, time_flow_end_ns),
    )
    blobs = (
        (6, _packed(src_addr)),
        (7, _packed(dst_addr)),
        (11, _packed(sampler_address) if sampler_address else b""),
    )
    fields: list[tuple[int, builtins.bytes]] = [
        (number, _varint(number << 3 | _VARINT) + _varint(value))
        for number, value in varints
        if value
    ]
    fields += [
        (number, _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(blob)) + blob)
        for number, blob in blobs
        if blob
    ]
    message = b"".join(encoded for _, encoded in sorted(fields))
    return _varint(len(message)) + message if delimited else message
