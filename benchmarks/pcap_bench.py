"""Speed of egressd's ``pcap`` replay path against a loop over scapy's ``rdpcap``.

Writes a ~200k-packet capture once (mixed TCP/UDP over IPv4/IPv6, several hundred flows, some
VLAN-tagged; packets built by scapy, records written with struct), then times
``read_packet_capture`` (read, parse, summarise into flows) over the whole file and ``rdpcap``
+ a loop summing IP lengths over its first ``--scapy-packets`` packets (scapy is too slow to
read all of it within the time budget). Prints packets per second of both and the ratio.
Run: ``python benchmarks/pcap_bench.py [--packets 200000] [--scapy-packets 30000]`` (< 90 s).
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import tempfile
import time
from pathlib import Path

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.packet import Packet, Raw
from scapy.utils import rdpcap

from egressd.sources.pcapfile import read_packet_capture
from egressd.stats import SourceStats

FLOWS = 600
START = 1_700_000_000.0
# Packet sizes each direction draws from: ACKs, small requests, MTU-sized bulk.
SIZES = (0, 40, 200, 1200, 1400)


def _templates(rng: random.Random) -> list[tuple[list[bytes], list[bytes]]]:
    """Per flow, the frames of each direction, one per payload size."""
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    flows = []
    for i in range(FLOWS):
        v6 = i % 5 == 0
        inside = f"fd00::{i + 1:x}" if v6 else f"10.{i // 250}.{i % 250}.{rng.randrange(1, 250)}"
        octets = (
            rng.randrange(1, 223),
            rng.randrange(256),
            rng.randrange(256),
            rng.randrange(1, 255),
        )
        outside = f"2001:db8::{rng.randrange(1, 0xFFFF):x}" if v6 else ".".join(map(str, octets))
        ip_out: Packet = IPv6(src=inside, dst=outside) if v6 else IP(src=inside, dst=outside)
        ip_in: Packet = IPv6(src=outside, dst=inside) if v6 else IP(src=outside, dst=inside)
        sport, dport = rng.randrange(1024, 65535), rng.choice((443, 443, 80, 53, 123, 8443))
        udp = dport in (53, 123) or i % 7 == 0
        link: Packet = eth / Dot1Q(vlan=10) if i % 4 == 0 else eth
        out_frames = []
        in_frames = []
        for size in SIZES:
            if udp:
                l4_out: Packet = UDP(sport=sport, dport=dport)
                l4_in: Packet = UDP(sport=dport, dport=sport)
            else:
                l4_out = TCP(sport=sport, dport=dport, flags="PA")
                l4_in = TCP(sport=dport, dport=sport, flags="A")
            out_frames.append(bytes(link / ip_out / l4_out / Raw(b"o" * size)))
            in_frames.append(bytes(link / ip_in / l4_in / Raw(b"i" * size)))
        flows.append((out_frames, in_frames))
    return flows


def write_capture(path: Path, packets: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    flows = _templates(rng)
    record = struct.Struct("<IIII")
    ts = START
    with path.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        chunk = []
        for n in range(packets):
            ts += rng.expovariate(2000.0)
            out_frames, in_frames = flows[int(rng.paretovariate(1.2) * 7) % FLOWS]
            frames = out_frames if rng.random() < 0.6 else in_frames
            frame = frames[rng.randrange(len(SIZES))]
            seconds = int(ts)
            chunk.append(record.pack(seconds, int((ts - seconds) * 1e6), len(frame), len(frame)))
            chunk.append(frame)
            if n % 10_000 == 0:
                out.write(b"".join(chunk))
                chunk.clear()
        out.write(b"".join(chunk))


def bench_egressd(path: Path) -> tuple[float, int, int, int]:
    stats = SourceStats("bench")
    start = time.perf_counter()
    records = 0
    volume = 0
    with path.open("rb") as stream:
        for record in read_packet_capture(stream, stats):
            records += 1
            volume += record.bytes
    return time.perf_counter() - start, stats.units, records, volume


def bench_scapy(path: Path, count: int) -> tuple[float, int, int]:
    start = time.perf_counter()
    packets = 0
    volume = 0
    for pkt in rdpcap(str(path), count=count):
        packets += 1
        if IP in pkt:
            volume += pkt[IP].len
        elif IPv6 in pkt:
            volume += pkt[IPv6].plen + 40
    return time.perf_counter() - start, packets, volume


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packets", type=int, default=200_000)
    parser.add_argument("--scapy-packets", type=int, default=30_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="egressd-pcap-bench-") as tmp:
        path = Path(tmp) / "mixed.pcap"
        t0 = time.perf_counter()
        write_capture(path, args.packets)
        size = path.stat().st_size
        print(
            f"capture: {args.packets} packets, {size / 1e6:.1f} MB,"
            f" written in {time.perf_counter() - t0:.1f} s"
        )
        ours, units, records, our_bytes = bench_egressd(path)
        theirs, packets, their_bytes = bench_scapy(path, min(args.scapy_packets, args.packets))
    if packets == units and our_bytes != their_bytes:
        print(f"MISMATCH: egressd counted {our_bytes} IP bytes, scapy {their_bytes}")
        return 1
    ours_rate = units / ours
    theirs_rate = packets / theirs
    print(
        f"egressd read_packet_capture: {ours_rate:>10,.0f} packets/s"
        f" ({units} packets in {ours:.2f} s, {records} flow records)"
    )
    print(
        f"scapy rdpcap loop:           {theirs_rate:>10,.0f} packets/s"
        f" ({packets} packets in {theirs:.2f} s)"
    )
    print(f"ratio: {ours_rate / theirs_rate:.1f}x (target >= 5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
