"""JSON-line decoders: goflow2 (v1 and v2), pmacct and egressd's own format.

Expectations are computed here from the raw input with the standard library (json,
ipaddress, datetime), never copied from the decoders' output.
"""

from __future__ import annotations

import ipaddress
import json
import math
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egressd.decode import common
from egressd.decode.egressd_json import decode_egressd_json, encode_egressd_json
from egressd.decode.goflow2 import _decode_json_checked, decode_goflow2_json
from egressd.decode.pmacct import decode_pmacct_json
from egressd.errors import DecodeError
from egressd.model import FlowRecord

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO.parent / "shared" / "captures"
GOFLOW2 = CAPTURES / "goflow2"
PMACCT_FIXTURES = REPO / "tests" / "fixtures" / "pmacct"
REASONS = set(common.REASONS)


def goflow2_sample(name: str) -> bytes:
    path = GOFLOW2 / name
    if not path.exists():
        pytest.skip(f"shared captures not found at {GOFLOW2}")
    return path.read_bytes()


def line(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def v2(**overrides: Any) -> dict[str, Any]:
    """A goflow2 ≥2 record with its default field set, as in the issue 292 sample."""
    fields: dict[str, Any] = {
        "type": "IPFIX",
        "time_received_ns": 1773065160_000000000,
        "sequence_num": 7,
        "sampling_rate": 0,
        "sampler_address": "192.0.2.10",
        "time_flow_start_ns": 1773065100_250000000,
        "time_flow_end_ns": 1773065150_500000000,
        "bytes": 1000,
        "packets": 3,
        "src_addr": "10.20.0.17",
        "dst_addr": "47.100.23.45",
        "etype": "IPv4",
        "proto": "TCP",
        "src_port": 51000,
        "dst_port": 443,
        "in_if": 1,
        "out_if": 2,
        "src_mac": "3c:ec:ef:fc:f7:38",
        "bgp_communities": [],
        "as_path": [],
    }
    fields.update(overrides)
    return fields


def canonical(address: str) -> str:
    """Address text as the C library writes it, the form every egressd decoder gives.

    It differs from Python's ipaddress only for the deprecated IPv4-compatible ::/96
    (``::0.1.0.0`` rather than ``::1:0``).
    """
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.inet_ntop(family, ipaddress.ip_address(address).packed)


def assert_valid(record: FlowRecord) -> None:
    """What every decoded record must satisfy, whatever the input."""
    for address in (record.src, record.dst):
        assert address == canonical(address)
        parsed = ipaddress.ip_address(address)
        assert not (isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped)
    assert record.exporter == "" or isinstance(record.exporter, str)
    assert isinstance(record.bytes, int) and record.bytes >= 0
    assert isinstance(record.packets, int) and record.packets >= 0
    assert 0 <= record.proto <= 255
    assert 0 <= record.src_port <= 65535 and 0 <= record.dst_port <= 65535
    for moment in (record.time_start, record.time_end):
        assert isinstance(moment, float) and math.isfinite(moment)
        assert 0 <= moment < common.MAX_EPOCH


def decode_or_reason(decode: Any, data: bytes) -> FlowRecord | str | None:
    try:
        record = decode(data)
    except DecodeError as exc:
        assert exc.reason in REASONS
        return exc.reason
    if record is not None:
        assert_valid(record)
    return record  # type: ignore[no-any-return]


# --- goflow2: real samples --------------------------------------------------------------


def test_goflow2_issue292_sflow_line() -> None:
    raw = goflow2_sample("issue292-sflow5-v2.jsonl")
    source = json.loads(raw)
    record = decode_goflow2_json(raw)
    rate = source["sampling_rate"]
    assert rate == 1024
    assert record.bytes == source["bytes"] * rate
    assert record.packets == source["packets"] * rate
    assert record.src == source["src_addr"] and record.dst == source["dst_addr"]
    assert record.exporter == source["sampler_address"]
    assert record.proto == 6 and source["proto"] == "TCP"
    assert (record.src_port, record.dst_port) == (source["src_port"], source["dst_port"])
    assert record.time_end == pytest.approx(source["time_flow_end_ns"] / 1e9, abs=1e-6)
    assert record.time_start == pytest.approx(source["time_flow_start_ns"] / 1e9, abs=1e-6)


def test_goflow2_readme_example_is_ipv6_pretty_printed() -> None:
    raw = goflow2_sample("readme-example-v2.json")
    assert raw.count(b"\n") > 5  # one document over many lines: decoded whole
    source = json.loads(raw)
    record = decode_goflow2_json(raw)
    assert (record.src, record.dst) == ("fd01::1", "fd01::2")
    assert record.bytes == source["bytes"] * source["sampling_rate"]
    assert record.exporter == "192.168.0.1"


def test_goflow2_v1_sample_has_redacted_sampler_address() -> None:
    raw = goflow2_sample("issue104-ipfix-v1-camelcase.json")
    source = json.loads(raw)
    assert source["SamplerAddress"] == "x.x.x.x"
    with pytest.raises(DecodeError) as caught:
        decode_goflow2_json(raw)
    assert caught.value.reason == "bad_address"
    # with a real exporter address the rest of the record decodes
    source["SamplerAddress"] = "198.51.100.7"
    record = decode_goflow2_json(json.dumps(source).encode())
    assert (record.src, record.dst) == ("::", "::")
    assert record.proto == source["Proto"] == 17
    assert record.bytes == source["Bytes"] and record.packets == source["Packets"]
    assert record.time_end == source["TimeFlowEndMs"] / 1000
    assert record.time_start == source["TimeFlowStartMs"] / 1000
    assert record.exporter == "198.51.100.7"


# --- goflow2: field variants ------------------------------------------------------------


@pytest.mark.parametrize(
    ("proto", "number"),
    [
        ("TCP", 6),
        ("UDP", 17),
        ("ICMP", 1),
        ("ICMPv6", 58),
        ("SCTP", 132),
        (6, 6),
        (47, 47),
        ("", 0),
    ],
)
def test_goflow2_proto_names_and_numbers(proto: object, number: int) -> None:
    assert decode_goflow2_json(line(**v2(proto=proto))).proto == number


@pytest.mark.parametrize("etype", ["IPv4", "IPv6", 0x800, 0x86DD, 2048, "ARP"])
def test_goflow2_etype_is_not_needed(etype: object) -> None:
    assert decode_goflow2_json(line(**v2(etype=etype))).src == "10.20.0.17"


@pytest.mark.parametrize(("rate", "factor"), [(0, 1), (1, 1), (100, 100), (None, 1)])
def test_goflow2_sampling_multiplies(rate: int | None, factor: int) -> None:
    fields = v2(sampling_rate=rate, bytes=1500, packets=2)
    if rate is None:
        del fields["sampling_rate"]
    record = decode_goflow2_json(line(**fields))
    assert (record.bytes, record.packets) == (1500 * factor, 2 * factor)


def test_goflow2_times_fall_back_to_receive_time() -> None:
    record = decode_goflow2_json(line(**v2(time_flow_end_ns=0, time_flow_start_ns=0)))
    assert record.time_end == record.time_start == 1773065160.0
    record = decode_goflow2_json(line(**v2(time_flow_start_ns=0)))
    assert record.time_start == record.time_end == 1773065150.5


def test_goflow2_ipv4_mapped_and_ipv6_text_are_normalised() -> None:
    record = decode_goflow2_json(
        line(**v2(src_addr="::ffff:10.1.2.3", dst_addr="2001:DB8:0:0:0::1"))
    )
    assert record.src == "10.1.2.3"
    assert record.dst == ipaddress.ip_address("2001:db8::1").compressed


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"src_addr": "10.0.0.256"}, "bad_address"),
        ({"dst_addr": "evil.example"}, "bad_address"),
        ({"dst_addr": "fe80::1%eth0"}, "bad_address"),
        ({"src_addr": 167772161}, "bad_address"),
        ({"src_addr": ""}, "missing_field"),
        ({"bytes": -1}, "bad_number"),
        ({"bytes": "12x"}, "bad_number"),
        ({"bytes": 1.5}, "bad_number"),
        ({"packets": "many"}, "bad_number"),
        ({"src_port": 70000}, "bad_number"),
        ({"proto": 300}, "bad_number"),
        ({"sampling_rate": -4}, "bad_number"),
        ({"time_flow_end_ns": -5, "time_received_ns": 0}, "bad_time"),
        ({"time_flow_end_ns": "soon"}, "bad_time"),
        ({"time_flow_end_ns": 0, "time_received_ns": 0}, "missing_field"),
    ],
)
def test_goflow2_bad_fields(overrides: dict[str, Any], reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_goflow2_json(line(**v2(**overrides)))
    assert caught.value.reason == reason


def test_goflow2_missing_fields() -> None:
    for name in ("src_addr", "dst_addr", "bytes"):
        fields = v2()
        del fields[name]
        with pytest.raises(DecodeError) as caught:
            decode_goflow2_json(line(**fields))
        assert caught.value.reason == "missing_field"


def test_goflow2_minimal_record_uses_defaults() -> None:
    record = decode_goflow2_json(
        line(src_addr="10.0.0.1", dst_addr="8.8.8.8", bytes=10, time_received_ns=2 * 10**18)
    )
    assert (record.packets, record.proto, record.src_port, record.exporter) == (0, 0, 0, "")
    assert record.time_end == 2e9


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "bad_json"),
        (b"{", "bad_json"),
        (b"\xff\xfe", "bad_json"),
        (b"[1, 2]", "not_object"),
        (b"42", "not_object"),
        (b'"text"', "not_object"),
        (b"null", "not_object"),
    ],
)
def test_json_framing_errors(data: bytes, reason: str) -> None:
    for decode in (decode_goflow2_json, decode_pmacct_json, decode_egressd_json):
        with pytest.raises(DecodeError) as caught:
            decode(data)
        assert caught.value.reason == reason


def test_trailing_garbage_and_every_truncation_are_bad_json() -> None:
    good = line(**v2())
    for decode in (decode_goflow2_json, decode_pmacct_json, decode_egressd_json):
        with pytest.raises(DecodeError) as caught:
            decode(good + b" garbage")
        assert caught.value.reason == "bad_json"
    for cut in range(len(good)):
        with pytest.raises(DecodeError) as caught:
            decode_goflow2_json(good[:cut])
        assert caught.value.reason == "bad_json"
    # a line as read from a file keeps its newline; JSON whitespace is fine
    assert decode_goflow2_json(good + b"\n") == decode_goflow2_json(good)


def test_unseen_and_seen_addresses_decode_alike() -> None:
    fields = v2(src_addr="10.99.88.77", dst_addr="2001:db8:77::5")
    common.ADDRESS_CACHE.clear()
    first = decode_goflow2_json(line(**fields))
    second = decode_goflow2_json(line(**fields))
    assert first == second
    assert "10.99.88.77" in common.ADDRESS_CACHE


# --- pmacct: recorded nfacctd/pmacctd output --------------------------------------------


def expected_pmacct_time(text: str | None) -> float | None:
    """Reference time parsing with datetime.strptime, independent of the decoder."""
    if text is None or text.startswith("0000-00-00"):
        return None
    for layout in ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S.%fZ"):
        try:
            return datetime.strptime(text, layout).replace(tzinfo=UTC).timestamp()
        except ValueError:
            continue
    seconds = float(text)
    return seconds or None


@pytest.mark.parametrize("path", sorted(PMACCT_FIXTURES.glob("*.json")), ids=lambda p: p.name)
def test_pmacct_recorded_output(path: Path) -> None:
    lines = path.read_bytes().splitlines()
    records = []
    for raw in lines:
        source = json.loads(raw)
        record = decode_pmacct_json(raw)
        if source["event_type"] != "purge":
            assert record is None
            continue
        assert record is not None
        assert_valid(record)
        records.append(record)
        assert record.src == canonical(source["ip_src"])
        assert record.dst == canonical(source["ip_dst"])
        rate = source.get("sampling_rate") or 1
        assert record.bytes == source["bytes"] * rate
        assert record.packets == source["packets"] * rate
        assert record.src_port == source.get("port_src", 0)
        assert record.exporter == source.get("peer_ip_src", "")
        end = (
            expected_pmacct_time(source.get("timestamp_end"))
            or expected_pmacct_time(source.get("timestamp_start"))
            or expected_pmacct_time(source.get("stamp_inserted"))
        )
        assert record.time_end == pytest.approx(end, abs=1e-6)
        start = expected_pmacct_time(source.get("timestamp_start")) or end
        assert record.time_start == pytest.approx(start, abs=1e-6)
    purges = sum(1 for raw in lines if json.loads(raw)["event_type"] == "purge")
    assert len(records) == purges > 0


def test_pmacct_fixture_variants_are_covered() -> None:
    text = "".join(p.read_text() for p in PMACCT_FIXTURES.glob("*.json"))
    assert '"purge_init"' in text and '"purge_close"' in text
    assert '"ip_proto": "udp"' in text and '"ip_proto": "0"' in text
    assert "0000-00-00T00:00:00.000000Z" in text  # pmacctd's zero timestamp_end
    assert '"timestamp_start": "15015' in text  # timestamps_since_epoch
    assert '"stamp_inserted"' in text
    assert '"ip_src": "fe80::' in text


def test_pmacct_stamp_updated_is_not_preferred_over_stamp_inserted() -> None:
    record = decode_pmacct_json(
        line(
            event_type="purge",
            ip_src="10.0.0.1",
            ip_dst="1.1.1.1",
            ip_proto="tcp",
            stamp_inserted="2017-08-08 10:35:00",
            stamp_updated="2026-11-27 04:16:08",
            packets=1,
            bytes=10,
        )
    )
    assert record is not None
    assert record.time_end == datetime(2017, 8, 8, 10, 35, tzinfo=UTC).timestamp()
    only_updated = decode_pmacct_json(
        line(ip_src="10.0.0.1", ip_dst="1.1.1.1", stamp_updated="2026-03-09 14:05:00", bytes=1)
    )
    assert only_updated is not None
    assert only_updated.time_end == datetime(2026, 3, 9, 14, 5, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2026-03-09 14:05:00.123456", 1773065100.123456),
        ("2026-03-09 14:05:00", 1773065100.0),
        ("2026-03-09T14:05:00Z", 1773065100.0),
        ("2026-03-09T15:05:00+01:00", 1773065100.0),
        ("1773065100.500000", 1773065100.5),
        (1773065100, 1773065100.0),
        (1773065100.25, 1773065100.25),
    ],
)
def test_pmacct_timestamp_forms(value: object, seconds: float) -> None:
    assert datetime(2026, 3, 9, 14, 5, tzinfo=UTC).timestamp() == 1773065100.0
    record = decode_pmacct_json(
        line(ip_src="10.0.0.1", ip_dst="1.1.1.1", timestamp_end=value, bytes=1)
    )
    assert record is not None
    assert record.time_end == pytest.approx(seconds, abs=1e-6)
    assert record.time_start == record.time_end


@pytest.mark.parametrize(
    ("proto", "number"), [("tcp", 6), ("udp", 17), ("ipv6-icmp", 58), ("gre", 47), ("0", 0), (6, 6)]
)
def test_pmacct_proto_names(proto: object, number: int) -> None:
    record = decode_pmacct_json(
        line(ip_src="10.0.0.1", ip_dst="1.1.1.1", ip_proto=proto, bytes=1, stamp_inserted=1e9)
    )
    assert record is not None and record.proto == number


def test_pmacct_sampling_rate_multiplies() -> None:
    record = decode_pmacct_json(
        line(
            event_type="purge",
            ip_src="10.0.0.1",
            ip_dst="1.1.1.1",
            sampling_rate=512,
            timestamp_end="1773065100.0",
            packets=2,
            bytes=100,
        )
    )
    assert record is not None and (record.bytes, record.packets) == (51200, 1024)


@pytest.mark.parametrize(
    "fields",
    [
        {"event_type": "purge_init", "writer_id": "json/1"},
        {"event_type": "purge_close", "writer_id": "json/1", "purged_entries": 3},
        {"event_type": "dump_init", "dump_period": 60},
        {"event_type": "log", "ip_src": "10.0.0.1", "ip_dst": "1.1.1.1", "bytes": 1},
    ],
)
def test_pmacct_markers_are_skipped(fields: dict[str, Any]) -> None:
    assert decode_pmacct_json(line(**fields)) is None


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        (
            {"event_type": "purge", "ip_dst": "1.1.1.1", "bytes": 1, "stamp_inserted": 1e9},
            "missing_field",
        ),
        ({"ip_src": "10.0.0.1", "ip_dst": "1.1.1.1", "bytes": 1}, "missing_field"),
        ({"ip_src": "10.0.0.1", "ip_dst": "1.1.1.1", "stamp_inserted": 1e9}, "missing_field"),
        (
            {"ip_src": "10.0.0.1", "ip_dst": "1.1.1.1", "bytes": 1, "timestamp_end": "May 5"},
            "bad_time",
        ),
        (
            {"ip_src": "10.0.0.1", "ip_dst": "1.1.1.1", "bytes": 1, "timestamp_end": "inf"},
            "bad_time",
        ),
        ({"ip_src": "10.0.0.1", "ip_dst": "1.1.1.1", "bytes": 1, "timestamp_end": -3}, "bad_time"),
        (
            {"ip_src": "10.0.0.1", "ip_dst": "1.1.1.1", "bytes": -1, "stamp_inserted": 1e9},
            "bad_number",
        ),
        (
            {
                "ip_src": "10.0.0.1",
                "ip_dst": "1.1.1.1",
                "bytes": 1,
                "stamp_inserted": 1e9,
                "peer_ip_src": "x",
            },
            "bad_address",
        ),
    ],
)
def test_pmacct_bad_records(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_pmacct_json(line(**fields))
    assert caught.value.reason == reason


# --- egressd-json -----------------------------------------------------------------------


def test_egressd_json_documented_example() -> None:
    record = decode_egressd_json(
        b'{"time_end": "2026-03-09T14:05:00Z", "src": "10.20.0.17", "dst": "47.100.23.45",'
        b' "bytes": 1000}'
    )
    assert record == FlowRecord(1773065100.0, 1773065100.0, "10.20.0.17", "47.100.23.45", 1000, 0)
    record = decode_egressd_json(
        line(
            time_end=1773065100.0,
            time_start=1773065000,
            src="fd00:20::17",
            dst="::ffff:47.100.23.45",
            bytes=10,
            packets=2,
            proto="udp",
            src_port=5353,
            dst_port=53,
            sampling_rate=10,
            exporter="kafka:flows",
        )
    )
    assert record == FlowRecord(
        1773065000.0,
        1773065100.0,
        "fd00:20::17",
        "47.100.23.45",
        100,
        20,
        17,
        5353,
        53,
        "kafka:flows",
    )


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"src": "10.0.0.1", "dst": "1.1.1.1", "bytes": 1}, "missing_field"),
        ({"time_end": 1e9, "dst": "1.1.1.1", "bytes": 1}, "missing_field"),
        ({"time_end": 1e9, "src": "10.0.0.1", "dst": "1.1.1.1"}, "missing_field"),
        ({"time_end": "yesterday", "src": "10.0.0.1", "dst": "1.1.1.1", "bytes": 1}, "bad_time"),
        ({"time_end": 1e300, "src": "10.0.0.1", "dst": "1.1.1.1", "bytes": 1}, "bad_time"),
        ({"time_end": 1e9, "src": "10.0.0.1", "dst": "1.1.1.1", "bytes": 1e30}, "bad_number"),
        (
            {"time_end": 1e9, "src": "10.0.0.1", "dst": "1.1.1.1", "bytes": 1, "exporter": 5},
            "bad_address",
        ),
        (
            {"time_end": 1e9, "src": "10.0.0.1", "dst": "1.1.1.1", "bytes": 1, "src_port": -1},
            "bad_number",
        ),
    ],
)
def test_egressd_json_bad_records(fields: dict[str, Any], reason: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode_egressd_json(line(**fields))
    assert caught.value.reason == reason


# --- properties ---------------------------------------------------------------------------

ipv4_text = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
ipv6_text = (
    st.integers(0, 2**128 - 1)
    .map(lambda n: ipaddress.IPv6Address(n))
    .filter(lambda a: a.ipv4_mapped is None)
    .map(lambda a: a.compressed)
)
address_text = st.one_of(ipv4_text, ipv6_text).map(canonical)
event_time = st.floats(1.0, common.MAX_EPOCH - 1, allow_nan=False, allow_infinity=False)

records = st.builds(
    FlowRecord,
    time_start=event_time,
    time_end=event_time,
    src=address_text,
    dst=address_text,
    bytes=st.integers(0, 2**63),
    packets=st.integers(0, 2**63),
    proto=st.integers(0, 255),
    src_port=st.integers(0, 65535),
    dst_port=st.integers(0, 65535),
    exporter=st.text(max_size=20),
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | address_text
    | st.sampled_from(["TCP", "udp", "", "0", "1773065100.5", "2026-03-09 14:05:00", "purge"]),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=6,
)
FIELD_NAMES = sorted(
    set(v2())
    | {"SrcAddr", "DstAddr", "Bytes", "Packets", "SamplingRate", "SamplerAddress", "Proto"}
    | {"TimeFlowEnd", "TimeFlowEndMs", "TimeReceived", "SrcPort", "DstPort"}
    | {"ip_src", "ip_dst", "ip_proto", "port_src", "port_dst", "event_type", "peer_ip_src"}
    | {"timestamp_start", "timestamp_end", "stamp_inserted", "stamp_updated", "timestamp_arrival"}
    | {"time_start", "time_end", "src", "dst", "exporter"}
)
json_objects = st.dictionaries(
    st.sampled_from(FIELD_NAMES) | st.text(max_size=8), json_values, max_size=12
)
ALL_DECODERS = (decode_goflow2_json, decode_pmacct_json, decode_egressd_json)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes_give_records_or_decode_errors(data: bytes) -> None:
    for decode in ALL_DECODERS:
        decode_or_reason(decode, data)


@FAST
@given(json_objects)
def test_arbitrary_objects_give_records_or_decode_errors(obj: dict[str, Any]) -> None:
    data = orjson.dumps(obj)
    for decode in ALL_DECODERS:
        decode_or_reason(decode, data)


@FAST
@given(st.sampled_from(sorted(v2())), json_values)
def test_one_odd_goflow2_field_gives_record_or_decode_error(name: str, value: Any) -> None:
    data = orjson.dumps(v2(**{name: value}))
    outcome = decode_or_reason(decode_goflow2_json, data)
    # the fast path and the checked path agree on every input
    try:
        checked: FlowRecord | str = _decode_json_checked(orjson.loads(data))
    except DecodeError as exc:
        checked = exc.reason
    assert outcome == checked


@FAST
@given(records)
def test_egressd_json_round_trip(record: FlowRecord) -> None:
    encoded = encode_egressd_json(record)
    assert b"\n" not in encoded
    assert decode_egressd_json(encoded) == record


# goflow2 times are uint64 nanoseconds: they end in 2554
nanosecond_time = st.floats(1.0, 1.8e10, allow_nan=False, allow_infinity=False)


@FAST
@given(records, st.integers(0, 10_000), nanosecond_time, nanosecond_time)
def test_goflow2_v2_lines_from_records(
    record: FlowRecord, rate: int, start: float, end: float
) -> None:
    record.time_start, record.time_end = start, end
    """A goflow2 line written from a record decodes back to it (sampling applied)."""
    data = orjson.dumps(
        v2(
            src_addr=record.src,
            dst_addr=record.dst,
            bytes=record.bytes,
            packets=record.packets,
            sampling_rate=rate,
            proto=record.proto,
            src_port=record.src_port,
            dst_port=record.dst_port,
            time_flow_start_ns=int(record.time_start * 1e9),
            time_flow_end_ns=int(record.time_end * 1e9),
        )
    )
    decoded = decode_goflow2_json(data)
    factor = rate or 1
    assert (decoded.src, decoded.dst) == (record.src, record.dst)
    assert (decoded.bytes, decoded.packets) == (record.bytes * factor, record.packets * factor)
    assert decoded.time_end == pytest.approx(record.time_end, rel=1e-12, abs=1e-6)
