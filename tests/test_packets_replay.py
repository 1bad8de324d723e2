"""Replay formats ``pcap`` and ``netflow-pcap``: flows and bytes against independent counts."""

from __future__ import annotations

import importlib.util
import io
import ipaddress
from collections import Counter
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.packet import NoPayload, Packet, Raw
from scapy.utils import rdpcap, wrpcap

from egressd.model import FlowRecord
from egressd.sources.files import read_file
from egressd.sources.pcapfile import read_packet_capture
from egressd.stats import SourceStats

CAPTURES = Path(__file__).resolve().parents[1].parent / "shared" / "captures"
_EXTENSIONS = (IPv6ExtHdrHopByHop, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment)

Key = tuple[str, str, int, int, int]


def capture(name: str) -> Path:
    path = CAPTURES / name
    if not path.exists():
        pytest.skip(f"shared captures not found at {path}")
    return path


def scapy_reference(path: Path) -> tuple[Counter[Key], Counter[Key]]:
    """Bytes and packets per (src, dst, proto, sport, dport), counted with scapy's dissectors."""
    volume: Counter[Key] = Counter()
    packets: Counter[Key] = Counter()
    for pkt in rdpcap(str(path)):
        layer: Packet = pkt
        while not isinstance(layer, (IP, IPv6, NoPayload)):
            layer = layer.payload
        if isinstance(layer, NoPayload):
            continue
        if isinstance(layer, IP):
            proto, length, l4, first = layer.proto, layer.len, layer.payload, layer.frag == 0
        else:
            proto, length, l4, first = layer.nh, layer.plen + 40, layer.payload, True
            while isinstance(l4, _EXTENSIONS):
                if isinstance(l4, IPv6ExtHdrFragment) and l4.offset:
                    first = False
                proto, l4 = l4.nh, l4.payload
        sport = dport = 0
        if first:
            head = bytes(l4)
            if proto in (6, 17):
                sport, dport = int.from_bytes(head[0:2], "big"), int.from_bytes(head[2:4], "big")
            elif proto in (1, 58):
                sport, dport = head[0], head[1]
        key = (layer.src, layer.dst, proto, sport, dport)
        volume[key] += length
        packets[key] += 1
    return volume, packets


def replay(path: Path, fmt: str = "pcap") -> tuple[list[FlowRecord], SourceStats]:
    stats = SourceStats(path.name)
    return list(read_file(fmt, path, stats)), stats


def totals(records: list[FlowRecord]) -> tuple[Counter[Key], Counter[Key]]:
    volume: Counter[Key] = Counter()
    packets: Counter[Key] = Counter()
    for r in records:
        key = (r.src, r.dst, r.proto, r.src_port, r.dst_port)
        volume[key] += r.bytes
        packets[key] += r.packets
    return volume, packets


@pytest.mark.parametrize(
    "name",
    [
        "ndpi/youtubeupload.pcap",
        "suricata-verify/tls-subjectaltname__input.pcap",
        "ndpi/sites.pcapng",
        "ndpi/dns2tcp_tunnel.pcap",  # Linux cooked capture (SLL)
        "ndpi/tor.pcap",
        "ndpi/1kxun.pcap",
    ],
)
def test_flows_and_bytes_match_scapy(name: str) -> None:
    path = capture(name)
    records, stats = replay(path)
    assert totals(records) == scapy_reference(path)
    assert stats.records == len(records)
    assert not stats.decode_errors


def test_youtube_upload_is_egress_shaped() -> None:
    path = capture("ndpi/youtubeupload.pcap")
    volume, _ = totals(replay(path)[0])
    up = sum(v for k, v in volume.items() if (k[0], k[1]) == ("192.168.2.27", "172.217.23.111"))
    down = sum(v for k, v in volume.items() if (k[0], k[1]) == ("172.217.23.111", "192.168.2.27"))
    reference, _ = scapy_reference(path)
    assert up == sum(v for k, v in reference.items() if k[:2] == ("192.168.2.27", "172.217.23.111"))
    assert up > 100_000 and up > 5 * down


def test_tls_capture_reaches_about_thirty_public_destinations() -> None:
    records, _ = replay(capture("suricata-verify/tls-subjectaltname__input.pcap"))
    public = {r.dst for r in records if ipaddress.ip_address(r.dst).is_global}
    assert 25 <= len(public) <= 40


def test_pcapng_with_ipv6() -> None:
    records, _ = replay(capture("ndpi/sites.pcapng"))
    assert any(":" in r.src for r in records)


def test_vlan_and_cooked_captures_written_by_scapy(tmp_path: Path) -> None:
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    packets = []
    for i in range(40):
        ip = IP(src="10.9.0.2", dst="198.51.100.20") / TCP(sport=50000 + i % 4, dport=443)
        back = IP(src="198.51.100.20", dst="10.9.0.2") / TCP(sport=443, dport=50000 + i % 4)
        packets.append(eth / Dot1Q(vlan=7) / ip / Raw(b"u" * (100 + i)))
        packets.append(eth / Dot1AD(vlan=1) / Dot1Q(vlan=2) / back / Raw(b"d" * 10))
    for i, p in enumerate(packets):
        p.time = 1_700_000_000 + i * 0.01
    ethernet = tmp_path / "vlan.pcap"
    wrpcap(str(ethernet), packets)
    cooked = tmp_path / "sll.pcap"
    wrpcap(str(cooked), [CookedLinux(proto=0x0800) / p[IP] for p in packets], linktype=113)
    cooked2 = tmp_path / "sll2.pcap"
    wrpcap(str(cooked2), [CookedLinuxV2(proto=0x0800) / p[IP] for p in packets], linktype=276)
    for path in (ethernet, cooked, cooked2):
        records, stats = replay(path)
        volume, count = totals(records)
        assert (volume, count) == scapy_reference(path), path.name
        assert len(volume) == 8 and sum(count.values()) == 80
        assert stats.units == 80 and not stats.dropped


def test_truncated_capture_still_yields_flows_and_counts() -> None:
    path = capture("ndpi/youtubeupload.pcap")
    data = path.read_bytes()
    stats = SourceStats("cut")
    records = list(read_packet_capture(io.BytesIO(data[: len(data) // 2]), stats))
    assert records and stats.decode_errors["truncated"] == 1
    assert 0 < stats.units < 137


def test_non_ip_frames_are_dropped_and_counted() -> None:
    records, stats = replay(capture("stratosphere-slips/test8-malicious.pcap"))
    reference, _ = scapy_reference(capture("stratosphere-slips/test8-malicious.pcap"))
    assert totals(records)[0] == reference
    assert stats.dropped["non_ip"] == 519  # ARP frames, counted by ethertype in the file


def test_udp_flow_records_carry_ports_for_every_direction() -> None:
    records, _ = replay(capture("ndpi/youtubeupload.pcap"))
    quic = [r for r in records if r.proto == 17 and 443 in (r.src_port, r.dst_port)]
    assert {(r.src, r.dst) for r in quic} >= {
        ("192.168.2.27", "172.217.23.111"),
        ("172.217.23.111", "192.168.2.27"),
    }


HAS_NETFLOW = importlib.util.find_spec("egressd.decode.netflow") is not None
needs_netflow = pytest.mark.skipif(
    not HAS_NETFLOW, reason="egressd.decode.netflow (NetFlow/IPFIX decoder) not present yet"
)


@needs_netflow
def test_netflow_v5_capture() -> None:
    # SOURCES.md: 1 packet, NetFlow v5, header count field = 29 records
    records, stats = replay(capture("akvorado/nfv5.pcap"), "netflow-pcap")
    assert len(records) == 29
    assert {r.exporter for r in records} == {"10.19.144.41"}
    assert stats.units == 1 and not stats.decode_errors


@needs_netflow
def test_netflow_v9_capture_with_templates() -> None:
    # SOURCES.md: 9 packets, v9, templates 1024/2048 + options template 256; 21 data records
    records, stats = replay(capture("graylog-plugin-netflow/netflow9.pcap"), "netflow-pcap")
    assert len(records) == 21
    assert {r.exporter for r in records} == {"192.168.1.1"}
    assert stats.units == 9


@needs_netflow
def test_sflow_is_not_netflow() -> None:
    records, stats = replay(capture("ndpi/sflow.pcap"), "netflow-pcap")
    assert records == []
    assert sum(stats.decode_errors.values()) == 9
