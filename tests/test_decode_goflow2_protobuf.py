"""goflow2 protobuf (-format=bin) decoding, framing and the test encoder.

The reference message is assembled here byte by byte from the protobuf wire format and
goflow2's pb/flow.proto field numbers, independently of the decoder and encoder.
"""

from __future__ import annotations

import ipaddress
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressd.decode.common import REASONS
from egressd.decode.goflow2 import (
    decode_goflow2_json,
    decode_goflow2_protobuf,
    encode_goflow2_protobuf,
    iter_length_delimited,
)
from egressd.errors import DecodeError
from egressd.model import FlowRecord

CAPTURES = Path(__file__).resolve().parents[1].parent / "shared" / "captures"

END_NS = 1773065150_500000000
START_NS = 1773065100_250000000


def leb128(value: int) -> bytes:
    """Unsigned LEB128, the protobuf varint (test's own implementation)."""
    out = []
    while True:
        low = value & 0x7F
        value >>= 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


# one chunk per field; a tag is the varint of (field number << 3 | wire type)
REFERENCE_FIELDS: list[bytes] = [
    bytes([0x08, 0x04]),  # 1 type = IPFIX (4)
    bytes([0x18, 0x80, 0x08]),  # 3 sampling_rate = 1024
    bytes([0x20, 0x07]),  # 4 sequence_num = 7
    bytes([0x32, 0x04, 10, 20, 0, 17]),  # 6 src_addr = 10.20.0.17
    bytes([0x3A, 0x04, 47, 100, 23, 45]),  # 7 dst_addr = 47.100.23.45
    bytes([0x48, 0xE8, 0x07]),  # 9 bytes = 1000
    bytes([0x50, 0x03]),  # 10 packets = 3
    bytes([0x5A, 0x04, 192, 0, 2, 10]),  # 11 sampler_address = 192.0.2.10
    bytes([0xA0, 0x01, 0x06]),  # 20 proto = 6
    bytes([0xA8, 0x01, 0xB8, 0x8E, 0x03]),  # 21 src_port = 51000
    bytes([0xB0, 0x01, 0xBB, 0x03]),  # 22 dst_port = 443
    bytes([0xF0, 0x01, 0x80, 0x10]),  # 30 etype = 0x800
    bytes([0xB2, 0x06, 0x02, 0xF1, 0x01]),  # 102 as_path = [241], packed: skipped
    bytes([0xF0, 0x06]) + leb128(1773065160_000000000),  # 110 time_received_ns
    bytes([0xF8, 0x06]) + leb128(START_NS),  # 111 time_flow_start_ns
    bytes([0x80, 0x07]) + leb128(END_NS),  # 112 time_flow_end_ns
]
REFERENCE = b"".join(REFERENCE_FIELDS)
EXPECTED = FlowRecord(
    START_NS / 1e9,
    END_NS / 1e9,
    "10.20.0.17",
    "47.100.23.45",
    1000 * 1024,
    3 * 1024,
    6,
    51000,
    443,
    "192.0.2.10",
)


def test_reference_message_decodes() -> None:
    assert decode_goflow2_protobuf(REFERENCE) == EXPECTED


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    fixed64 = bytes([0xC9, 0x03]) + bytes(8)  # field 57, wire 1
    fixed32 = bytes([0xCD, 0x03]) + bytes(4)  # field 57, wire 5
    varint = bytes([0xC8, 0x03, 0xFF, 0x01])  # field 57, wire 0
    blob = bytes([0xCA, 0x03, 0x03]) + b"abc"  # field 57, wire 2
    message = fixed64 + REFERENCE + fixed32 + varint + blob
    assert decode_goflow2_protobuf(message) == EXPECTED


def test_encoder_writes_the_reference_bytes() -> None:
    encoded = encode_goflow2_protobuf(
        flow_type=4,
        sampling_rate=1024,
        sequence_num=7,
        src_addr="10.20.0.17",
        dst_addr="47.100.23.45",
        bytes=1000,
        packets=3,
        sampler_address="192.0.2.10",
        proto=6,
        src_port=51000,
        dst_port=443,
        time_received_ns=1773065160_000000000,
        time_flow_start_ns=START_NS,
        time_flow_end_ns=END_NS,
    )
    without_as_path = b"".join(f for f in REFERENCE_FIELDS if not f.startswith(b"\xb2\x06"))
    assert encoded == without_as_path


def test_ipv6_and_ipv4_mapped_addresses() -> None:
    mapped = ipaddress.IPv6Address("::ffff:47.100.23.45").packed
    v6 = ipaddress.IPv6Address("2001:db8::17").packed
    message = (
        bytes([0x32, 16])
        + v6
        + bytes([0x3A, 16])
        + mapped
        + bytes([0x48, 0x01, 0x80, 0x07])
        + leb128(END_NS)
    )
    record = decode_goflow2_protobuf(message)
    assert (record.src, record.dst) == ("2001:db8::17", "47.100.23.45")
    assert record.time_start == record.time_end == END_NS / 1e9
    assert (record.bytes, record.packets, record.exporter) == (1, 0, "")


def test_same_flow_as_json_sample() -> None:
    path = CAPTURES / "goflow2" / "issue292-sflow5-v2.jsonl"
    if not path.exists():
        pytest.skip(f"shared captures not found at {path.parent}")
    source = json.loads(path.read_bytes())
    message = encode_goflow2_protobuf(
        src_addr=source["src_addr"],
        dst_addr=source["dst_addr"],
        bytes=source["bytes"],
        packets=source["packets"],
        sampling_rate=source["sampling_rate"],
        sampler_address=source["sampler_address"],
        time_received_ns=source["time_received_ns"],
        time_flow_start_ns=source["time_flow_start_ns"],
        time_flow_end_ns=source["time_flow_end_ns"],
        proto=6,
        src_port=source["src_port"],
        dst_port=source["dst_port"],
        flow_type=1,
    )
    assert decode_goflow2_protobuf(message) == decode_goflow2_json(path.read_bytes())


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (REFERENCE_FIELDS[0], "missing_field"),  # no addresses
        (b"\x32\x03\x01\x02\x03\x3a\x04\x01\x02\x03\x04\x80\x07\x01", "bad_address"),
        (REFERENCE + b"\xa0\x01\x80\x02", "bad_number"),  # proto 256
        (REFERENCE + b"\xb0\x01\x80\x80\x04", "bad_number"),  # dst_port 65536
        (b"".join(REFERENCE_FIELDS[3:5]), "missing_field"),  # no time at all
        (REFERENCE + b"\x03", "bad_protobuf"),  # wire type 3 (group)
        (REFERENCE + b"\x00\x00", "bad_protobuf"),  # field number 0
        (REFERENCE + b"\x48" + b"\xff" * 11, "bad_protobuf"),  # varint too long
        (REFERENCE + b"\xca\x03\x05ab", "bad_protobuf"),  # length past the end
        (REFERENCE + b"\xc9\x03\x00", "bad_protobuf"),  # fixed64 cut short
    ],
)
def test_malformed_messages(message: bytes, reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_goflow2_protobuf(message)
    assert caught.value.reason == reason


def test_every_truncation_is_an_error_or_a_shorter_message() -> None:
    boundaries = {
        sum(len(f) for f in REFERENCE_FIELDS[:i]) for i in range(len(REFERENCE_FIELDS) + 1)
    }
    for cut in range(len(REFERENCE)):
        try:
            decode_goflow2_protobuf(REFERENCE[:cut])
        except DecodeError as exc:
            if cut not in boundaries:
                assert exc.reason == "bad_protobuf", cut
            else:
                assert exc.reason == "missing_field", cut
        else:
            assert cut in boundaries  # a prefix ending between fields is a valid message


def test_length_delimited_framing() -> None:
    messages = [REFERENCE, b"", b"x" * 300]
    stream = b"".join(leb128(len(m)) + m for m in messages)
    assert list(iter_length_delimited(stream)) == messages
    delimited = encode_goflow2_protobuf(
        src_addr="10.0.0.1", dst_addr="1.1.1.1", bytes=1, packets=1, delimited=True
    )
    (message,) = iter_length_delimited(delimited)
    assert delimited == leb128(len(message)) + message
    # a truncated tail: complete messages first, then the error
    seen: list[bytes] = []
    with pytest.raises(DecodeError) as caught:
        seen.extend(iter_length_delimited(stream[:-1]))
    assert caught.value.reason == "bad_protobuf"
    assert seen == messages[:2]
    with pytest.raises(DecodeError):
        list(iter_length_delimited(b"\x80"))  # prefix itself cut short


# --- properties ---------------------------------------------------------------------------

FAST = settings(max_examples=300, deadline=None)
packed_ipv4 = st.binary(min_size=4, max_size=4)
packed_ipv6 = st.binary(min_size=16, max_size=16)


def assert_valid(record: FlowRecord) -> None:
    for address in (record.src, record.dst):
        ipaddress.ip_address(address)
    assert record.bytes >= 0 and record.packets >= 0
    assert (
        0 <= record.proto <= 255 and 0 <= record.src_port <= 65535 and 0 <= record.dst_port <= 65535
    )
    assert math.isfinite(record.time_end) and record.time_end >= 0


@FAST
@given(st.binary(max_size=200))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    try:
        record = decode_goflow2_protobuf(data)
    except DecodeError as exc:
        assert exc.reason in REASONS
    else:
        assert_valid(record)
    try:
        for message in iter_length_delimited(data):
            assert len(message) <= len(data)
    except DecodeError as exc:
        assert exc.reason == "bad_protobuf"


@FAST
@given(
    st.one_of(packed_ipv4, packed_ipv6),
    st.one_of(packed_ipv4, packed_ipv6),
    st.integers(0, 2**40),
    st.integers(0, 2**32),
    st.integers(0, 2**32 - 1),
    st.integers(1, 2**64 - 1).filter(lambda ns: ns / 1e9 < 253402300800),
    st.integers(0, 255),
    st.integers(0, 65535),
    st.integers(0, 65535),
)
def test_round_trip(
    src: bytes,
    dst: bytes,
    nbytes: int,
    packets: int,
    rate: int,
    end_ns: int,
    proto: int,
    sport: int,
    dport: int,
) -> None:
    src_text = str(ipaddress.ip_address(src))
    dst_text = str(ipaddress.ip_address(dst))
    message = encode_goflow2_protobuf(
        src_addr=src_text,
        dst_addr=dst_text,
        bytes=nbytes,
        packets=packets,
        sampling_rate=rate,
        time_flow_end_ns=end_ns,
        proto=proto,
        src_port=sport,
        dst_port=dport,
    )
    record = decode_goflow2_protobuf(message)
    factor = rate or 1
    assert ipaddress.ip_address(record.src) == unmapped(src_text)
    assert ipaddress.ip_address(record.dst) == unmapped(dst_text)
    assert (record.bytes, record.packets) == (nbytes * factor, packets * factor)
    assert (record.proto, record.src_port, record.dst_port) == (proto, sport, dport)
    assert record.time_end == end_ns / 1e9 == record.time_start


def unmapped(text: str) -> Any:
    address = ipaddress.ip_address(text)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


@FAST
@given(st.lists(st.binary(max_size=300), max_size=8))
def test_framing_round_trip(messages: list[bytes]) -> None:
    stream = b"".join(leb128(len(m)) + m for m in messages)
    assert list(iter_length_delimited(stream)) == messages
