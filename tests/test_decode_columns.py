"""JSON lines decoded into columns give what the record decoders give, line for line.

Every check compares the columnar decoder with the record path it stands in for
(``read_lines`` with the format's record decoder) on the same bytes: the flows (each with its
exporter: one per batch, or a column where a batch mixes them), their order, and every
counter. Counts are compared after saturating at 2**64 - 1, as the FlowColumns contract says.
"""

from __future__ import annotations

import io
import json
import string
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import egressd.replay as replay_module
from egressd.columns import FlowColumns
from egressd.config import parse_config
from egressd.decode import common
from egressd.decode.columnar import COLUMN_FORMATS, JsonColumnDecoder
from egressd.decode.nfdump_json import decode_nfdump_object, load_record
from egressd.errors import DecodeError
from egressd.model import FlowRecord
from egressd.replay import replay
from egressd.sources import files
from egressd.sources.files import LINE_FORMATS, read_line_columns, read_lines
from egressd.stats import SourceStats

REPO = Path(__file__).resolve().parents[1]
GOFLOW2 = REPO.parent / "shared" / "captures" / "goflow2"
PMACCT = REPO / "tests" / "fixtures" / "pmacct"
_MAX = 2**64 - 1


def _comparable(records: list[FlowRecord]) -> list[tuple[Any, ...]]:
    return [
        (
            r.time_start,
            r.time_end,
            r.src,
            r.dst,
            min(r.bytes, _MAX),
            min(r.packets, _MAX),
            r.proto,
            r.src_port,
            r.dst_port,
            r.exporter,
        )
        for r in records
    ]


def _counters(stats: SourceStats) -> tuple[Any, ...]:
    return stats.units, stats.records, dict(stats.decode_errors), dict(stats.dropped)


def assert_same(fmt: str, data: bytes, block: int = files.COLUMN_BLOCK) -> list[FlowRecord]:
    """Decode ``data`` both ways and assert the flows and counters agree; return the flows."""
    expected_stats = SourceStats("records")
    expected = list(read_lines(io.BytesIO(data), expected_stats, files._line_decoder(fmt)))
    stats = SourceStats("columns")
    decoder = JsonColumnDecoder(fmt)
    stream = io.BytesIO(data)
    got: list[FlowRecord] = []
    while lines := stream.readlines(block):
        columns = decoder.decode(lines, stats)
        columns.check()
        got.extend(columns.to_records())
    assert _comparable(got) == _comparable(expected)
    assert _counters(stats) == _counters(expected_stats)
    return got


def test_every_line_format_decodes_to_columns() -> None:
    assert set(COLUMN_FORMATS) == set(LINE_FORMATS)


# --- values of every kind in the fields each format reads -----------------------------------

_ADDRESSES = st.sampled_from(
    [
        "10.20.0.17",
        "10.20.0.17",
        "47.100.23.45",
        "47.100.23.45",
        "2001:db8::1",
        "::ffff:192.0.2.1",
        "::1.2.3.4",
        "fe80::1%eth0",
        "1.2.3",
        "01.2.3.4",
        "",
        "999.1.1.1",
        "10.0.0.1 ",
        "2a00:1450:4001:80b::200e",
    ]
)
_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(alphabet=string.digits + ".:-TZ ", max_size=12),
    st.sampled_from(["TCP", "udp", "ICMPv6", "unknown", "tcp6", "17", "300", "", "purge", "x"]),
    st.lists(st.integers(0, 3), max_size=2),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 3), max_size=1),
    _ADDRESSES,
)
_COUNT = st.one_of(st.integers(0, 10**12), st.integers(0, 2**64 - 1), _ODD)
_NS = st.integers(1_500_000_000 * 10**9, 1_900_000_000 * 10**9)
_SECONDS = st.floats(1.5e9, 1.9e9)
_TEXT_TIME = st.sampled_from(
    [
        "2026-03-02 10:00:00.000000",
        "2026-03-02T10:00:01Z",
        "2026-03-02 10:00:02+01:00",
        "1772445600.5",
        "0000-00-00 00:00:00",
        "not a time",
        "0",
        "",
    ]
)


_GOFLOW2 = {
    "type": st.just("IPFIX"),
    "time_received_ns": _NS,
    "sampling_rate": st.integers(0, 4096),
    "sampler_address": _ADDRESSES,
    "time_flow_start_ns": st.one_of(_NS, st.just(0)),
    "time_flow_end_ns": _NS,
    "bytes": st.integers(0, 10**12),
    "packets": st.integers(0, 10**9),
    "src_addr": _ADDRESSES,
    "dst_addr": _ADDRESSES,
    # names the protocol table holds (any case it has) or not, numbers in and out of range
    "proto": st.one_of(
        st.sampled_from(["TCP", "UDP", "ICMP"]),
        st.sampled_from(["tcp", "Tcp", "IPv6-ICMP", "ipv6-icmp", "GRE", "nosuch", "6", ""]),
        st.integers(0, 300),
        st.none(),
    ),
    "src_port": st.integers(0, 65535),
    "dst_port": st.integers(0, 65535),
    "etype": st.just("IPv4"),
}
_GOFLOW2_V1 = {
    "TimeFlowStart": st.integers(1_500_000_000, 1_900_000_000),
    "TimeFlowEnd": st.integers(1_500_000_000, 1_900_000_000),
    "Bytes": st.integers(0, 10**12),
    "Packets": st.integers(0, 10**9),
    "SrcAddr": _ADDRESSES,
    "DstAddr": _ADDRESSES,
    "SamplerAddress": _ADDRESSES,
    "Proto": st.integers(0, 255),
    "SrcPort": st.integers(0, 65535),
    "DstPort": st.integers(0, 65535),
}
_EGRESSD = {
    "time_start": st.one_of(_SECONDS, st.just(0)),
    "time_end": _SECONDS,
    "src": _ADDRESSES,
    "dst": _ADDRESSES,
    "bytes": st.integers(0, 10**12),
    "packets": st.integers(0, 10**9),
    "sampling_rate": st.integers(0, 4096),
    "proto": st.one_of(st.integers(0, 255), st.sampled_from(["tcp", "UDP"])),
    "src_port": st.integers(0, 65535),
    "dst_port": st.integers(0, 65535),
    "exporter": st.text(max_size=8),
}
_PMACCT = {
    "event_type": st.just("purge"),
    "timestamp_start": _TEXT_TIME,
    "timestamp_end": _TEXT_TIME,
    "stamp_inserted": _TEXT_TIME,
    "ip_src": _ADDRESSES,
    "ip_dst": _ADDRESSES,
    "bytes": st.integers(0, 10**12),
    "packets": st.integers(0, 10**9),
    "sampling_rate": st.integers(0, 4096),
    "ip_proto": st.sampled_from(["tcp", "udp", "icmp"]),
    "port_src": st.integers(0, 65535),
    "port_dst": st.integers(0, 65535),
    "peer_ip_src": _ADDRESSES,
}
#: values a field takes now and then instead of its usual kind
_EDGE = st.one_of(
    _ODD,
    st.sampled_from([0, 1, 65535, 65536, 2**63, 2**64 - 1, -1, 0.0, 1.0, 1e300, "0", "80"]),
    _NS,
    _SECONDS,
    _TEXT_TIME,
)


def _object(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly well-formed objects; some fields absent or of another kind, as tools and hands
    write them."""

    def mend(obj: dict[str, Any], changes: list[tuple[str, bool, Any]]) -> dict[str, Any]:
        for key, drop, value in changes:
            if drop:
                obj.pop(key, None)
            else:
                obj[key] = value
        return obj

    return st.builds(
        mend,
        st.fixed_dictionaries(fields),
        st.lists(st.tuples(st.sampled_from(sorted(fields)), st.booleans(), _EDGE), max_size=2),
    )


_OBJECTS = {
    "goflow2-json": st.one_of(_object(_GOFLOW2), _object(_GOFLOW2), _object(_GOFLOW2_V1)),
    "egressd-json": _object(_EGRESSD),
    "pmacct-json": _object(_PMACCT),
}

#: lines that are not records: blank, pieces of pretty-printed JSON, bad JSON, not objects,
#: two values on one line, bad UTF-8, escapes, deep nesting
_BROKEN = st.sampled_from(
    [
        b"\n",
        b"  \r\n",
        b"\x0c\n",
        b"{\n",
        b'  "bytes": 5,\n',
        b"},\n",
        b"[1, 2]\n",
        b"null\n",
        b'"text"\n',
        b"{bad json\n",
        b'{"a": 1} {"b": 2}\n',
        b'{"a": 1},{"b": 2}\n',
        b"\xff\xfe\n",
        b'{"x": "\xff"}\n',
        b'{"x": "\xed\xa0\x80"}\n',
        b'{"x": "\\ud800"}\n',
        b'{"x": "\\u00e9", "y": "\xc3\xa9"}\n',
        b'{"x": ' + b"[" * 700 + b"]" * 700 + b"}\n",
        b'{"x": ' + b"[" * 1000 + b"]" * 1000 + b"}\n",
        b"\xef\xbb\xbf{}\n",
    ]
)


def _lines(fmt: str) -> st.SearchStrategy[bytes]:
    def encode(obj: dict[str, Any], extra: dict[str, Any], spaced: bool, crlf: bool) -> bytes:
        obj = {**obj, **extra}
        text = orjson.dumps(obj)
        if spaced:
            text = text.replace(b'":', b'" : ').replace(b",", b" , ")
        return text + (b"\r\n" if crlf else b"\n")

    record = st.builds(
        encode,
        _OBJECTS[fmt],
        st.dictionaries(
            st.sampled_from(["extra", "in_if", "as_path", "\u00e9t\u00e9"]), _ODD, max_size=2
        ),
        st.booleans(),
        st.booleans(),
    )
    return st.lists(st.one_of(record, record, record, _BROKEN), min_size=1, max_size=40).map(
        b"".join
    )


_BASE = {
    "goflow2-json": {
        "type": "IPFIX",
        "time_received_ns": 1_772_409_602_381_384_448,
        "sampling_rate": 1,
        "sampler_address": "10.255.0.1",
        "time_flow_start_ns": 1_772_409_597_081_102_848,
        "time_flow_end_ns": 1_772_409_600_381_384_448,
        "bytes": 440340,
        "packets": 366,
        "src_addr": "10.60.0.4",
        "dst_addr": "202.31.203.13",
        "proto": "TCP",
        "src_port": 48588,
        "dst_port": 443,
    },
    "egressd-json": {
        "time_start": 1772409597.5,
        "time_end": 1772409600.25,
        "src": "10.60.0.4",
        "dst": "2001:db8::1",
        "bytes": 440340,
        "packets": 366,
        "sampling_rate": 10,
        "proto": 6,
        "src_port": 48588,
        "dst_port": 443,
        "exporter": "eth0",
    },
    "pmacct-json": {
        "event_type": "purge",
        "peer_ip_src": "10.255.0.1",
        "ip_src": "10.60.0.4",
        "ip_dst": "202.31.203.13",
        "port_src": 48588,
        "port_dst": 443,
        "ip_proto": "tcp",
        "timestamp_start": "2026-03-02 00:00:01.500000",
        "timestamp_end": "2026-03-02 00:00:03.250000",
        "stamp_inserted": "2026-03-02 00:00:00",
        "sampling_rate": 1,
        "packets": 366,
        "bytes": 440340,
    },
}
_EDGES: list[Any] = [
    None, True, False, 0, 1, -1, 17, 65535, 65536, 2**53 + 1, 2**63, 2**64 - 1, -(2**63),
    0.0, -0.0, 1.0, 1.5, -1.5, 1e300, 1772409600, 1772409600.5, 1772409600 * 10**9,
    253402300799.5, 253402300800, "", "0", "80", "6", "300", "TCP", "tcp", "Tcp", "x", "purge",
    "purge_init", "10.0.0.1", "::ffff:1.2.3.4", "::", "1.2.3", "fe80::1%eth0", [], {}, [1],
    {"a": 1}, "2026-03-02 10:00:00.000000", "2026-03-02T10:00:01Z", "0000-00-00 00:00:00",
    "1772445600.5", "1e3", " 1", "nan", "inf",
]  # fmt: skip


@pytest.mark.parametrize("fmt", COLUMN_FORMATS)
def test_every_field_at_every_edge(fmt: str) -> None:
    """A good line with one field absent or set to each edge value, one line per case."""
    base = _BASE[fmt]
    lines = [orjson.dumps(base) + b"\n"]
    for key in base:
        lines.append(orjson.dumps({k: v for k, v in base.items() if k != key}) + b"\n")
        lines.extend(orjson.dumps({**base, key: value}) + b"\n" for value in _EDGES)
    # In one batch (columns of mixed kinds) and a line per batch (columns of one kind each).
    flows = assert_same(fmt, b"".join(lines))
    assert _comparable(assert_same(fmt, b"".join(lines), block=1)) == _comparable(flows)
    assert len(flows) > len(lines) // 3


@pytest.mark.parametrize("fmt", COLUMN_FORMATS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_columns_equal_records_for_any_mix_of_lines(fmt: str, data: st.DataObject) -> None:
    blob = data.draw(_lines(fmt))
    # A small block also exercises batches that start and end anywhere.
    assert_same(fmt, blob, block=data.draw(st.sampled_from([1, 300, files.COLUMN_BLOCK])))


@pytest.mark.parametrize("fmt", COLUMN_FORMATS)
@settings(max_examples=100, deadline=None)
@given(blob=st.binary(max_size=400))
def test_columns_equal_records_for_arbitrary_bytes(fmt: str, blob: bytes) -> None:
    assert_same(fmt, blob)


def test_clean_goflow2_lines_take_the_columnar_rules() -> None:
    """Lines the fast rules clear give exact values (not only equal to the record path)."""
    line = orjson.dumps(
        {
            "time_flow_start_ns": 1_772_409_597_081_102_848,
            "time_flow_end_ns": 1_772_409_600_381_384_448,
            "sampling_rate": 3,
            "sampler_address": "192.0.2.10",
            "bytes": 2**63,
            "packets": 366,
            "src_addr": "10.60.0.4",
            "dst_addr": "2001:db8::7",
            "proto": "TCP",
            "src_port": 48588,
            "dst_port": 443,
        }
    )
    stats = SourceStats("x")
    columns = JsonColumnDecoder("goflow2-json").decode([line + b"\n"] * 3, stats)
    (record, *_) = columns.to_records()
    assert _counters(stats) == (3, 3, {}, {})
    assert columns.exporter == "192.0.2.10"
    assert record == FlowRecord(
        1_772_409_597_081_102_848 / 1e9,
        1_772_409_600_381_384_448 / 1e9,
        "10.60.0.4",
        "2001:db8::7",
        _MAX,  # 2**63 * 3 saturates
        1098,
        6,
        48588,
        443,
        "192.0.2.10",
    )
    assert int(columns.src_hi[0]) == 0 and int(columns.src_lo[0]) == 0xFFFF_0A3C_0004


@pytest.mark.parametrize(
    "key",
    ["bytes", "packets", "sampling_rate", "time_flow_start_ns", "time_flow_end_ns", "dst_port"],
)
@pytest.mark.parametrize("value", [None, 2**64, True, -1, "5", 1.5, 0])
def test_goflow2_count_column_failing_late_in_a_block(key: str, value: object) -> None:
    """A count column is read straight from the parsed rows until one row has no integer in
    [0, 2**64) there; the block then gives what the record path gives, row by row."""
    base = _BASE["goflow2-json"]
    good = [orjson.dumps({**base, "bytes": 1000 + i}) + b"\n" for i in range(40)]
    odd = {k: v for k, v in base.items() if k != key} if value is None else {**base, key: value}
    lines = [*good, json.dumps(odd).encode() + b"\n", *good[:2]]
    flows = assert_same("goflow2-json", b"".join(lines))
    assert _comparable(flows[:40]) == _comparable(assert_same("goflow2-json", b"".join(good)))


@pytest.mark.parametrize(
    "proto", [b'"TCP"', b'"T\\u0043P"', b'"tcp"', b'"Tcp"', b"6", b"6.0", b"true", b"null", b'"x"']
)
def test_goflow2_protocol_in_a_block(proto: bytes) -> None:
    """A protocol the parser does not take as a table name or a number (escaped, another
    case, another kind) sends its block line by line: still what the record path gives."""
    base = _BASE["goflow2-json"]
    good = [orjson.dumps({**base, "bytes": 1000 + i}) + b"\n" for i in range(40)]
    odd = orjson.dumps({**base, "proto": "@"}).replace(b'"@"', proto) + b"\n"
    flows = assert_same("goflow2-json", b"".join([*good, odd, *good[:2]]))
    assert len(flows) >= 42


@pytest.mark.parametrize("rate", [0, 1, 7, 1000, 2**40, 2**64 - 1])
@pytest.mark.parametrize("odd", [None, 0, 3, -1, 2**64, "5"])
def test_goflow2_one_sampling_rate_throughout_a_block(rate: int, odd: object) -> None:
    """A block of one sampling rate (read with one comparison a row) and the same block with
    one row of another rate or kind: what the record path gives, products saturating."""
    base = _BASE["goflow2-json"]
    rows = [{**base, "sampling_rate": rate, "bytes": 1000 + i, "packets": 3} for i in range(30)]
    if odd is not None:
        rows[17] = {**rows[17], "sampling_rate": odd}
    data = "".join(json.dumps(row) + "\n" for row in rows).encode()
    flows = assert_same("goflow2-json", data)
    scale = max(rate, 1)
    assert [f.bytes for f in flows[:17]] == [min((1000 + i) * scale, _MAX) for i in range(17)]


def test_goflow2_addresses_new_to_the_cache_in_a_block() -> None:
    """Addresses the cache has not seen (some repeated within the block), among cached ones,
    malformed ones and missing ones: what the record path gives, and each new text is parsed
    and cached once."""
    base = _BASE["goflow2-json"]
    cached = ["10.60.0.4", "203.0.113.9"]
    new = ["10.61.0.9", "198.51.100.23", "2001:db8::44", "::ffff:192.0.2.77"]
    rows: list[dict[str, object]] = []
    for i in range(60):
        src = new[i % 2] if i % 5 == 0 else cached[i % 2]
        dst = new[2 + i % 2] if i % 7 == 0 else cached[(i + 1) % 2]
        rows.append({**base, "src_addr": src, "dst_addr": dst, "bytes": 100 + i})
    rows[13] = {**rows[13], "dst_addr": "10.0.0.256"}  # malformed: a decode error
    rows[29] = {k: v for k, v in rows[29].items() if k != "src_addr"}  # missing
    rows[44] = {**rows[44], "src_addr": ["10.0.0.1"]}  # not a text
    data = b"".join(orjson.dumps(row) + b"\n" for row in rows)
    common.PACKED_CACHE.clear()
    for text in cached:
        common.packed_address(text)
    misses = common.PACKED_CACHE.misses
    flows = assert_same("goflow2-json", data)
    assert len(flows) == 57
    assert {f.dst for f in flows} >= {"2001:db8::44", "192.0.2.77"}
    assert common.PACKED_CACHE.misses - misses == len(new)
    assert set(new) <= set(common.PACKED_CACHE.data)


# --- real outputs of the tools ----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in PMACCT.glob("*.json")))
def test_pmacct_fixtures(name: str) -> None:
    assert assert_same("pmacct-json", (PMACCT / name).read_bytes())


@pytest.mark.parametrize(
    "name",
    ["issue104-ipfix-v1-camelcase.json", "issue292-sflow5-v2.jsonl", "readme-example-v2.json"],
)
def test_goflow2_captures(name: str) -> None:
    path = GOFLOW2 / name
    if not path.exists():
        pytest.skip(f"shared captures not found at {GOFLOW2}")
    assert_same("goflow2-json", path.read_bytes())


@pytest.mark.parametrize("fmt", COLUMN_FORMATS)
def test_scenario_lines(tmp_path: Path, fmt: str) -> None:
    from scenarios import generate

    path = generate(1, days=8).write(tmp_path / "flows.jsonl", fmt)
    flows = assert_same(fmt, path.read_bytes())
    assert len(flows) > 10_000
    # The file reader gives the same flows, in batches no larger than a block of lines.
    with open(path, "rb") as stream:
        batches = list(read_line_columns(stream, SourceStats("file"), fmt))
    assert len(batches) > 1
    assert _comparable([r for b in batches for r in b.to_records()]) == _comparable(flows)


# --- replay: the columnar path gives byte for byte the alerts and summary of the record path --


def _replay(config_text: str, fmt: str, path: Path) -> tuple[bytes, list[str]]:
    out = io.BytesIO()
    summary = replay(parse_config(config_text), fmt, [str(path)], out)
    summary.seconds = 0.0
    return out.getvalue(), summary.lines()


@pytest.mark.parametrize("fmt", COLUMN_FORMATS)
def test_replay_alerts_match_the_record_path(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scenarios import generate

    scenario = generate(2)
    path = scenario.write(tmp_path / "flows.jsonl", fmt)
    # A few broken lines among the flows, counted the same either way.
    with open(path, "ab") as out:
        out.write(b"{broken\n\n[1]\n" + path.read_bytes()[:2000].split(b"\n")[0] + b"\n")
    columns = _replay(scenario.config_text, fmt, path)
    monkeypatch.setattr(replay_module, "COLUMN_FORMATS", ())
    records = _replay(scenario.config_text, fmt, path)
    assert columns == records
    assert columns[0].count(b"\n") >= 2  # the scenario pages: alerts were compared


@settings(max_examples=300, deadline=None)
@given(
    ends=st.lists(
        st.one_of(st.floats(1.7e9, 1.8e9), st.sampled_from([1.7e9, 1.7e9 + 600.0, 2.5e9])),
        min_size=1,
        max_size=200,
    ),
    event_time=st.one_of(st.just(-float("inf")), st.floats(1.6e9, 1.9e9)),
    ahead=st.sampled_from([0.0, 300.0, 3600.0]),
)
def test_column_segments_are_the_record_segments(
    ends: list[float], event_time: float, ahead: float
) -> None:
    columns = FlowColumns.from_records(
        [FlowRecord(end, end, "10.0.0.1", "1.1.1.1", 1, 1) for end in ends]
    )
    assert replay_module.column_segments(columns, event_time, ahead) == (
        replay_module.segments_of_ends(ends, event_time, ahead)
    )


# --- nfdump's records (``nfdump -o json``): one pretty-printed object per text ---------------

_NFDUMP_TIME = st.one_of(
    st.builds(
        lambda day, seconds, ms: (
            f"2026-03-{day:02d}T{seconds // 3600:02d}:"
            f"{seconds // 60 % 60:02d}:{seconds % 60:02d}.{ms:03d}"
        ),
        st.integers(1, 28),
        st.integers(0, 86399),
        st.integers(0, 999),
    ),
    st.sampled_from(["1970-01-01T00:00:00.000", "2026-03-09T24:00:00.000", "2026-03-09 14:04"]),
)
_NFDUMP = {
    "type": st.just("FLOW"),
    "first": _NFDUMP_TIME,
    "last": _NFDUMP_TIME,
    "received": _NFDUMP_TIME,
    "in_packets": st.integers(0, 10**9),
    "in_bytes": st.integers(0, 10**12),
    "proto": st.integers(0, 255),
    "src_port": st.integers(0, 65535),
    "dst_port": st.integers(0, 65535),
    "src4_addr": _ADDRESSES,
    "dst4_addr": _ADDRESSES,
    "ip4_router": _ADDRESSES,
}


def _nfdump_text(obj: dict[str, Any]) -> bytes:
    """As nfdump prints a record: one field per line, tab-indented."""
    fields = ",\n".join(f'\t"{key}" : {orjson.dumps(value).decode()}' for key, value in obj.items())
    return ("{\n" + fields + "\n}").encode()


def _nfdump_records(texts: list[bytes], stats: SourceStats) -> list[FlowRecord]:
    """What read_nfdump makes of ``texts`` (its loop, without the nfdump process)."""
    records = []
    for text in texts:
        stats.units += 1
        try:
            record = decode_nfdump_object(load_record(text))
        except DecodeError as exc:
            stats.failed(exc.reason)
            continue
        if record is None:
            stats.drop("skipped")
            continue
        stats.records += 1
        records.append(record)
    return records


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    texts=st.lists(
        st.one_of(
            st.builds(_nfdump_text, _object(_NFDUMP)),
            st.builds(_nfdump_text, _object(_NFDUMP)),
            st.builds(
                lambda obj: _nfdump_text({k.replace("4", "6"): v for k, v in obj.items()}),
                _object(_NFDUMP),
            ),
            _BROKEN.map(lambda line: line.strip()),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_nfdump_records_to_columns(texts: list[bytes]) -> None:
    expected_stats = SourceStats("records")
    expected = _nfdump_records(texts, expected_stats)
    stats = SourceStats("columns")
    failures: list[tuple[int, str]] = []
    got = JsonColumnDecoder("nfdump").decode(texts, stats, failures).to_records()
    assert _comparable(got) == _comparable(expected)
    assert _counters(stats) == _counters(expected_stats)
    assert len(failures) == sum(expected_stats.decode_errors.values())


def test_nfdump_fields_at_every_edge() -> None:
    base = {
        "type": "FLOW",
        "first": "2026-03-09T14:00:00.250",
        "last": "2026-03-09T14:04:59.750",
        "in_packets": 3,
        "in_bytes": 4500,
        "proto": 6,
        "src_port": 40000,
        "dst_port": 443,
        "src4_addr": "10.20.0.5",
        "dst4_addr": "47.100.23.45",
        "ip4_router": "192.0.2.1",
        "src6_addr": "fd00:20::5",
    }
    texts = [_nfdump_text(base)]
    for key in base:
        texts.append(_nfdump_text({k: v for k, v in base.items() if k != key}))
        texts.extend(_nfdump_text({**base, key: value}) for value in _EDGES)
    for batch in (texts, *([text] for text in texts)):
        expected_stats = SourceStats("records")
        expected = _nfdump_records(batch, expected_stats)
        stats = SourceStats("columns")
        got = JsonColumnDecoder("nfdump").decode(batch, stats, []).to_records()
        assert _comparable(got) == _comparable(expected)
        assert _counters(stats) == _counters(expected_stats)


@settings(max_examples=300, deadline=None)
@given(
    streams=st.lists(
        st.lists(
            st.lists(st.sampled_from([1.0, 2.0, 2.0, 3.0, 5.0, 8.0]), min_size=1, max_size=6),
            max_size=4,
        ),
        min_size=2,
        max_size=4,
    ),
    chunk=st.sampled_from([1, 3, 8192]),
)
def test_merged_columns_follow_heapq_merge(streams: list[list[list[float]]], chunk: int) -> None:
    """Batches of several streams (in order or not, with ties) merge as heapq.merge merges
    their records by end time."""
    import heapq

    records = [
        [
            [FlowRecord(end, end, "10.0.0.1", f"10.1.{s}.{b}", k, 1) for k, end in enumerate(ends)]
            for b, ends in enumerate(batches)
        ]
        for s, batches in enumerate(streams)
    ]
    expected = list(
        heapq.merge(
            *([r for batch in batches for r in batch] for batches in records),
            key=lambda r: r.time_end,
        )
    )
    columns = [iter([FlowColumns.from_records(batch) for batch in batches]) for batches in records]
    saved = replay_module._CHUNK
    replay_module._CHUNK = chunk
    try:
        merged = list(replay_module.merge_columns(columns))
    finally:
        replay_module._CHUNK = saved
    assert all(len(batch) <= chunk for batch in merged)
    got = [r for batch in merged for r in batch.to_records()]
    assert _comparable(got) == _comparable(expected)


@pytest.mark.parametrize("fmt", COLUMN_FORMATS)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_files_read_to_columns_as_to_records_with_lines_over_the_limit(
    fmt: str, data: st.DataObject
) -> None:
    # The file readers bound a line's length (files.MAX_LINE, here made small): both paths
    # count and skip the same lines, wherever the blocks of the column path end.
    import unittest.mock

    blob = data.draw(_lines(fmt))
    cut = data.draw(st.integers(0, len(blob)))
    long_line = data.draw(st.binary(min_size=60, max_size=200).filter(lambda b: b"\n" not in b))
    blob = blob[:cut] + long_line + data.draw(st.sampled_from([b"\n", b""])) + blob[cut:]
    block = data.draw(st.sampled_from([1, 7, 64, 300]))
    with unittest.mock.patch.object(files, "MAX_LINE", data.draw(st.integers(20, 120))):
        expected_stats = SourceStats("records")
        expected = list(read_lines(io.BytesIO(blob), expected_stats, files._line_decoder(fmt)))
        stats = SourceStats("columns")
        got: list[FlowRecord] = []
        with unittest.mock.patch.object(files, "COLUMN_BLOCK", block):
            for lines in files.line_blocks(io.BytesIO(blob), stats, block):
                got.extend(JsonColumnDecoder(fmt).decode(lines, stats).to_records())
    assert _comparable(got) == _comparable(expected)
    assert _counters(stats) == _counters(expected_stats)
