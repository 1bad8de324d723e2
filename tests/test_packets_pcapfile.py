"""pcap/pcapng reader: byte orders, time resolutions, block kinds, truncation, against scapy."""

from __future__ import annotations

import contextlib
import gzip
import io
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import PcapNgWriter, PcapWriter, rdpcap

from egressd.errors import SourceError
from egressd.sources.pcapfile import read_frames, read_packet_capture
from egressd.stats import SourceStats

CAPTURES = Path(__file__).resolve().parents[1].parent / "shared" / "captures"


def capture(name: str) -> Path:
    path = CAPTURES / name
    if not path.exists():
        pytest.skip(f"shared captures not found at {path}")
    return path


def frames_of(data: bytes) -> tuple[list[tuple[float, int, bytes]], SourceStats]:
    stats = SourceStats("test")
    return list(read_frames(io.BytesIO(data), stats)), stats


def sample_packets(n: int = 5) -> list[Ether]:
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    out = []
    for i in range(n):
        p = eth / IP(src="10.0.0.1", dst="192.0.2.1") / UDP(sport=1000 + i) / Raw(b"x" * i * 7)
        p.time = 1_700_000_000 + i * 0.123456789
        out.append(p)
    return out


@pytest.mark.parametrize(
    "name",
    [
        "ndpi/tor.pcap",
        "ndpi/sites.pcapng",
        "ndpi/youtubeupload.pcap",  # pcapng despite its name
        "ndpi/malware.pcap",  # pcapng despite its name
        "ndpi/dns2tcp_tunnel.pcap",  # Linux cooked capture
        "suricata-verify/tls-subjectaltname__input.pcap",
    ],
)
def test_real_captures_match_scapy(name: str) -> None:
    path = capture(name)
    expected = rdpcap(str(path))
    frames, stats = frames_of(path.read_bytes())
    assert len(frames) == len(expected)
    assert not stats.decode_errors
    for (ts, _linktype, frame), pkt in zip(frames, expected, strict=True):
        assert frame == pkt.original
        assert ts == pytest.approx(float(pkt.time), abs=1e-6)


@pytest.mark.parametrize("endianness", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_byte_orders_and_resolutions(tmp_path: Path, endianness: str, nano: bool) -> None:
    packets = sample_packets()
    path = tmp_path / "x.pcap"
    with PcapWriter(str(path), linktype=1, endianness=endianness, nano=nano) as writer:
        for p in packets:
            writer.write(p)
    frames, _ = frames_of(path.read_bytes())
    assert [f[2] for f in frames] == [bytes(p) for p in packets]
    assert {f[1] for f in frames} == {1}
    # a float holds epoch seconds to ~0.2 µs, so nanosecond files compare at that precision
    for (ts, _, _), p in zip(frames, packets, strict=True):
        assert ts == pytest.approx(float(p.time), abs=1e-6)


def test_pcapng_written_by_scapy(tmp_path: Path) -> None:
    packets = sample_packets()
    path = tmp_path / "x.pcapng"
    writer = PcapNgWriter(str(path))
    for p in packets:
        writer.write(p)
    writer.close()
    frames, stats = frames_of(path.read_bytes())
    assert [f[2] for f in frames] == [bytes(p) for p in packets]
    assert [f[0] for f in frames] == pytest.approx([float(p.time) for p in packets], abs=1e-6)
    assert not stats.decode_errors


# A pcapng writer of our own, independent of the reader, for what scapy cannot write.
def block(endian: str, block_type: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    length = len(body) + 12
    return struct.pack(endian + "II", block_type, length) + body + struct.pack(endian + "I", length)


def option(endian: str, code: int, value: bytes) -> bytes:
    return struct.pack(endian + "HH", code, len(value)) + value + b"\0" * (-len(value) % 4)


def shb(endian: str) -> bytes:
    return block(endian, 0x0A0D0D0A, struct.pack(endian + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def idb(endian: str, linktype: int, snaplen: int = 0, options: bytes = b"") -> bytes:
    if options:
        options += option(endian, 0, b"")
    return block(endian, 1, struct.pack(endian + "HHI", linktype, 0, snaplen) + options)


def epb(endian: str, iface: int, ticks: int, data: bytes) -> bytes:
    head = struct.pack(
        endian + "IIIII", iface, ticks >> 32, ticks & 0xFFFFFFFF, len(data), len(data)
    )
    return block(endian, 6, head + data)


@pytest.mark.parametrize("endian", ["<", ">"])
def test_pcapng_blocks_interfaces_and_resolutions(endian: str) -> None:
    f1, f2, f3, f4 = b"frame-one", b"frame-two!", b"frame-three", b"legacy"
    data = (
        shb(endian)
        + idb(endian, 1)  # default microseconds
        + idb(endian, 101, options=option(endian, 9, b"\x09"))  # nanoseconds
        + idb(
            endian,
            113,
            options=option(endian, 9, b"\x8a") + option(endian, 14, struct.pack(endian + "q", 100)),
        )
        + block(endian, 4, b"\0" * 8)  # name resolution block: skipped
        + epb(endian, 0, 1_500_000_000_250_000, f1)
        + epb(endian, 1, 1_500_000_000_123_456_789, f2)
        + epb(endian, 2, 1024 * 5 + 512, f3)  # 2^-10 units: 5.5 s, + 100 s offset
        + block(endian, 3, struct.pack(endian + "I", len(f1)) + f1)  # simple packet block
        + block(
            endian, 2, struct.pack(endian + "HHIIII", 0, 0, 0, 2_000_000, len(f4), len(f4)) + f4
        )
    )
    frames, stats = frames_of(data)
    assert not stats.decode_errors
    assert [(f[1], f[2]) for f in frames] == [(1, f1), (101, f2), (113, f3), (1, f1), (1, f4)]
    assert frames[0][0] == pytest.approx(1_500_000_000.25)
    assert frames[1][0] == pytest.approx(1_500_000_000.123456789)
    assert frames[2][0] == pytest.approx(105.5)
    assert frames[3][0] == frames[2][0]  # no time in a simple packet block: latest seen
    assert frames[4][0] == pytest.approx(2.0)


def test_pcapng_sections_switch_byte_order_and_interfaces() -> None:
    data = (
        shb("<")
        + idb("<", 1)
        + epb("<", 0, 1_000_000, b"little")
        + shb(">")
        + idb(">", 101)
        + epb(">", 0, 2_000_000, b"big")
    )
    frames, stats = frames_of(data)
    assert [(f[0], f[1], f[2]) for f in frames] == [(1.0, 1, b"little"), (2.0, 101, b"big")]
    assert not stats.decode_errors


def test_pcapng_packet_for_unknown_interface_is_truncation() -> None:
    frames, stats = frames_of(shb("<") + idb("<", 1) + epb("<", 3, 0, b"x"))
    assert frames == [] and stats.decode_errors["truncated"] == 1


@pytest.mark.parametrize("name", ["ndpi/tor.pcap", "ndpi/sites.pcapng"])
def test_truncated_files_yield_a_prefix_and_count(name: str) -> None:
    data = capture(name).read_bytes()
    full, _ = frames_of(data)
    step = max(1, len(data) // 97)
    ends = record_ends(data)
    for cut in [*range(1, 200, 3), *range(200, len(data), step)]:
        frames, stats = frames_of(data[:cut])
        assert frames == full[: len(frames)], cut
        assert stats.decode_errors["truncated"] == (0 if cut in ends else 1), cut


def record_ends(data: bytes) -> set[int]:
    """Offsets where a record or block ends (little-endian files), walked independently."""
    ends = set()
    if data[:4] == b"\x0a\x0d\x0d\x0a":
        pos = 0
        while pos < len(data):
            pos += struct.unpack_from("<I", data, pos + 4)[0]
            ends.add(pos)
    else:
        pos = 24
        while pos < len(data):
            pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
            ends.add(pos)
    return ends


def test_cut_between_pcap_records_is_a_clean_end() -> None:
    data = capture("ndpi/tor.pcap").read_bytes()
    full, _ = frames_of(data)
    boundary = 24 + sum(16 + len(frame) for _, _, frame in full[:10])
    frames, stats = frames_of(data[:boundary])
    assert frames == full[:10] and not stats.decode_errors


def test_corrupt_length_stops_cleanly() -> None:
    packets = sample_packets(3)
    buf = io.BytesIO()
    writer = PcapWriter(buf, linktype=1)
    for p in packets:
        writer.write(p)
    writer.flush()
    data = bytearray(buf.getvalue())
    # third record's captured length → 2 GiB
    offset = 24 + sum(16 + len(bytes(p)) for p in packets[:2])
    data[offset + 8 : offset + 12] = struct.pack("<I", 0x7FFFFFFF)
    frames, stats = frames_of(bytes(data))
    assert len(frames) == 2 and stats.decode_errors["truncated"] == 1


def test_empty_input_is_no_packets() -> None:
    frames, stats = frames_of(b"")
    assert frames == [] and not stats.decode_errors


def test_not_a_capture_is_a_source_error() -> None:
    with pytest.raises(SourceError):
        frames_of(b'{"json": "lines"}\n')


def test_gzip_truncated_counts(tmp_path: Path) -> None:
    data = capture("ndpi/tor.pcap").read_bytes()
    full, _ = frames_of(data)
    packed = gzip.compress(data)
    with gzip.GzipFile(fileobj=io.BytesIO(packed)) as stream:
        stats = SourceStats("gz")
        assert list(read_frames(stream, stats)) == full
    with gzip.GzipFile(fileobj=io.BytesIO(packed[: len(packed) // 2])) as stream:
        stats = SourceStats("gz")
        frames = list(read_frames(stream, stats))
        assert frames == full[: len(frames)] and stats.decode_errors["truncated"] == 1


def _tiny_captures() -> list[bytes]:
    pcap = io.BytesIO()
    writer = PcapWriter(pcap, linktype=1)
    for p in sample_packets(3):
        writer.write(p)
    writer.flush()
    pcapng = shb(">") + idb(">", 1, options=option(">", 9, b"\x06")) + epb(">", 0, 5, b"abc")
    return [pcap.getvalue(), pcapng]


TINY_CAPTURES = _tiny_captures()


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(TINY_CAPTURES), st.integers(0, 400), st.binary(min_size=1, max_size=16))
def test_mutated_captures_stop_cleanly(base: bytes, where: int, noise: bytes) -> None:
    data = bytearray(base)
    where %= len(data)
    data[where : where + len(noise)] = noise
    stats = SourceStats("fuzz")
    try:
        for ts, linktype, frame in read_frames(io.BytesIO(bytes(data)), stats):
            assert isinstance(ts, float) and 0 <= linktype <= 0xFFFF
            assert len(frame) <= len(data)
    except SourceError:
        pass  # the magic number itself was hit: not a capture any more
    assert stats.decode_errors["truncated"] <= 1
    with contextlib.suppress(SourceError):
        list(read_packet_capture(io.BytesIO(bytes(data)), SourceStats("fuzz")))
