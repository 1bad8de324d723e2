"""``egressd replay --format netflow-pcap`` end to end against the PyPI ``netflow`` decoder alone.

Writes the collector benchmark's softflowd-style NetFlow v9 datagrams (worst case: every flow a
new source and destination; and the realistic corpus) into a pcap, replays it through the
whole engine (decode, classify, label, aggregate, detect), and decodes the same datagrams with
``netflow.parse_packet`` only, in alternating rounds. Prints flows per CPU second and the ratio.
Run: ``python benchmarks/netflow_replay_bench.py [--flows 200000]``.
"""

from __future__ import annotations

import argparse
import io
import struct
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from collector_bench import (
    RECORDS_PER_DATAGRAM,
    realistic,
    stamped,
    template_datagram,
    worst_case,
)

from egressd.config import parse_config
from egressd.replay import replay

TARGET_RATIO = 5.0
CONFIG = """
[networks]
local = ["10.0.0.0/8"]
[[groups]]
name = "hosts"
sources = ["10.0.0.0/8"]
expected_countries = ["GB", "US"]
"""
T0 = 1_773_064_800


def _frame(payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", 40000, 2055, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
        bytes([192, 0, 2, 1]), bytes([192, 0, 2, 9]),
    )  # fmt: skip
    return b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\x08\x00" + ip + udp


def write_pcap(path: Path, datagrams: list[bytes]) -> None:
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        for i, datagram in enumerate(datagrams):
            frame = _frame(datagram)
            out.write(struct.pack("<IIII", T0 + i // 1000, 0, len(frame), len(frame)) + frame)


def replay_run(path: Path) -> Callable[[], int]:
    def run() -> int:
        summary = replay(parse_config(CONFIG), "netflow-pcap", [str(path)], io.BytesIO())
        return summary.records

    return run


def netflow_run(datagrams: list[bytes]) -> Callable[[], int] | None:
    try:
        import netflow
    except ImportError:
        return None
    # bytearray: parse_packet takes bytes that happen to decode as UTF-8 for a hex dump.
    template = bytearray(template_datagram())
    subset = [bytearray(d) for d in datagrams[:400]]  # a few hundred give a stable rate

    def run() -> int:
        templates: dict[str, dict[int, object]] = {"netflow": {}, "ipfix": {}}
        netflow.parse_packet(template, templates)
        flows = 0
        for datagram in subset:
            flows += len(netflow.parse_packet(datagram, templates).flows)
        return flows

    return run


def best_rates(runs: dict[str, Callable[[], int]], rounds: int) -> dict[str, float]:
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.process_time()
            flows = run()
            elapsed = max(time.process_time() - started, 1e-9)
            best[name] = max(best[name], flows / elapsed)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--flows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    datagrams = args.flows // RECORDS_PER_DATAGRAM
    with tempfile.TemporaryDirectory() as tmp:
        for title, pool in (
            ("worst case (every flow a new source and destination)", worst_case(datagrams)),
            ("realistic (1,000 sources, Zipf destinations)", realistic(datagrams)),
        ):
            pool = stamped(pool, T0)
            path = Path(tmp) / "flows.pcap"
            write_pcap(path, [template_datagram(), *pool])
            runs = {"replay": replay_run(path)}
            baseline = netflow_run(pool)
            if baseline is None:
                print("the PyPI netflow package is not installed (pip install netflow)")
                return 2
            runs["netflow"] = baseline
            rates = best_rates(runs, args.rounds)
            ratio = rates["replay"] / rates["netflow"]
            verdict = "met" if ratio >= TARGET_RATIO else "missed"
            print(f"== {title}, {len(pool) * RECORDS_PER_DATAGRAM:,} flows")
            print(f"  egressd replay --format netflow-pcap: {rates['replay']:>10,.0f} flows/s")
            print(f"  PyPI netflow, decode only:            {rates['netflow']:>10,.0f} flows/s")
            print(f"  ratio {ratio:.2f}x (target >= {TARGET_RATIO}x: {verdict})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
