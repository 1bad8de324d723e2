"""A long mutation fuzz run over every egressd decoder and the configuration loader.

Seeds come from every shared capture (NetFlow/IPFIX export datagrams, raw frames, goflow2
JSON) plus encoder-made JSON/protobuf records, pmacct fixtures and the example config; each
input is a seed mutated at byte level (flips, interesting values, inserts, deletes, splices)
or, for JSON, at value level. Decoders may only raise DecodeError, the loader ConfigError;
anything else is printed with the input as hex and makes the run exit 1.

Run: ``python benchmarks/fuzz_long.py --seconds 120 [--seed N] [--only netflow,frames]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from egressd.config import parse_config
from egressd.decode.egressd_json import decode_egressd_json, encode_egressd_json
from egressd.decode.flowtable import FlowTable
from egressd.decode.frames import SUPPORTED_LINKTYPES, parse_frame
from egressd.decode.goflow2 import (
    decode_goflow2_json,
    decode_goflow2_protobuf,
    encode_goflow2_protobuf,
    iter_length_delimited,
)
from egressd.decode.netflow import NetflowDecoder
from egressd.decode.pmacct import decode_pmacct_json
from egressd.errors import ConfigError, DecodeError, EgressdError
from egressd.model import FlowRecord
from egressd.sources.pcapfile import read_frames
from egressd.stats import SourceStats

REPO = Path(__file__).resolve().parents[1]
CAPTURES = REPO.parent / "shared" / "captures"
#: failures printed per target before the target is skipped (one bug tends to repeat)
MAX_FAILURES = 3

_INTERESTING_16 = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
_INTERESTING_JSON: list[Any] = [
    None, True, False, 0, -1, 2**63, -(2**63), 2**64, 1e308, -1e308, 0.5, "", "x", "-1",
    "1e999", "NaN", "::", "::ffff:1.2.3.4", "256.1.1.1", "10.0.0.1", "2001:db8::1",
    "2026-03-09T14:05:00Z", "9999-99-99", "TCP", [], {}, [1, 2], {"a": 1}, "\u0000",
]  # fmt: skip


# --------------------------------------------------------------------------- mutation


def mutate(rng: random.Random, data: bytes, seeds: list[bytes]) -> bytes:
    """One to eight byte-level mutations of ``data``."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(9)
        pos = rng.randrange(len(buf) + 1)
        if op == 0 and buf:  # flip a bit
            i = rng.randrange(len(buf))
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and buf:  # random byte
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        elif op == 2 and len(buf) >= 2:  # interesting 16-bit value (lengths, ids, counts)
            i = rng.randrange(len(buf) - 1)
            buf[i : i + 2] = rng.choice(_INTERESTING_16).to_bytes(2, "big")
        elif op == 3:  # insert random bytes
            buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 4 and buf:  # delete a run
            del buf[pos : pos + rng.randint(1, 32)]
        elif op == 5:  # truncate
            del buf[pos:]
        elif op == 6 and buf:  # duplicate a run
            i = rng.randrange(len(buf))
            buf[pos:pos] = buf[i : i + rng.randint(1, 64)]
        elif op == 7 and seeds:  # splice with another seed
            other = rng.choice(seeds)
            j = rng.randrange(len(other) + 1)
            buf[pos:] = other[j:]
        elif op == 8 and len(buf) >= 4:  # interesting 32-bit value
            i = rng.randrange(len(buf) - 3)
            value = rng.choice((0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, len(buf)))
            buf[i : i + 4] = value.to_bytes(4, "big")
    return bytes(buf)


def mutate_json(rng: random.Random, line: bytes, seeds: list[bytes]) -> bytes:
    """Half the time replace values of a JSON object structurally, else mutate bytes."""
    if rng.random() < 0.5:
        try:
            obj: Any = orjson.loads(line)
        except orjson.JSONDecodeError:
            obj = None
        if isinstance(obj, dict) and len(obj) > 0:
            for _ in range(rng.randint(1, 4)):
                key = rng.choice(list(obj))
                action = rng.randrange(4)
                if action == 0:
                    obj[key] = rng.choice(_INTERESTING_JSON)
                elif action == 1:
                    del obj[key]
                elif action == 2:
                    obj[key] = str(obj[key])
                else:
                    obj[key.upper() if rng.random() < 0.5 else key + "_"] = obj.pop(key)
                if not obj:
                    break
            try:
                return orjson.dumps(obj)
            except TypeError:  # an integer beyond 64 bits: orjson cannot write it
                return repr(obj).encode()
    return mutate(rng, line, seeds)


# --------------------------------------------------------------------------- targets


@dataclass(slots=True)
class Target:
    """One thing under fuzz: its seeds, how to run one input and what it counted."""

    name: str
    seeds: list[bytes]
    run: Callable[[bytes], int]  # number of records produced; raises on rejection
    mutator: Callable[[random.Random, bytes, list[bytes]], bytes] = mutate
    allowed: type[EgressdError] = DecodeError
    tried: int = 0
    records: int = 0
    accepted: int = 0
    rejected: int = 0
    failures: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _check_records(records: list[FlowRecord]) -> int:
    for record in records:
        if not (isinstance(record.src, str) and isinstance(record.dst, str)):
            raise AssertionError(f"address is not text: {record!r}")
        if record.bytes < 0 or record.packets < 0:
            raise AssertionError(f"negative counter: {record!r}")
        if not (math.isfinite(record.time_start) and math.isfinite(record.time_end)):
            raise AssertionError(f"non-finite time: {record!r}")
    return len(records)


def _capture_files() -> list[Path]:
    if not CAPTURES.is_dir():
        return []
    return sorted(p for p in CAPTURES.rglob("*") if p.is_file())


def _udp_payloads_and_frames() -> tuple[list[bytes], list[bytes], list[tuple[int, bytes]]]:
    """(NetFlow/IPFIX datagrams, their 'template' subset, every captured frame)."""
    datagrams: list[bytes] = []
    templates: list[bytes] = []
    frames: list[tuple[int, bytes]] = []
    for path in _capture_files():
        if path.suffix == ".dat":
            blob = path.read_bytes()
            datagrams.append(blob)
            if "tpl" in path.name or "template" in path.name:
                templates.append(blob)
            continue
        if path.suffix not in (".pcap", ".pcapng", ".cap"):
            continue
        try:
            captured = list(read_frames(io.BytesIO(path.read_bytes()), SourceStats(str(path))))
        except EgressdError:
            continue
        for _ts, linktype, frame in captured[:2000]:
            frames.append((linktype, frame))
            try:
                header = parse_frame(linktype, frame)
            except DecodeError:
                continue
            if header is None or header.proto != 17:
                continue
            payload = bytes(
                frame[header.payload_offset : header.payload_offset + header.payload_length]
            )
            if len(payload) >= 4 and payload[:2] in (b"\x00\x05", b"\x00\x09", b"\x00\x0a"):
                datagrams.append(payload)
                if "template" in path.name:
                    templates.append(payload)
    return datagrams, templates, frames


def build_targets() -> list[Target]:
    datagrams, templates, frames = _udp_payloads_and_frames()
    if not datagrams:
        from_builders = REPO / "tests"
        sys.path.insert(0, str(from_builders))
        from netflow_builders import (
            data_set,
            template_set,
            v9_datagram,
        )

        fields = [(8, 4), (12, 4), (1, 4), (2, 4), (22, 4), (21, 4)]
        datagrams = [
            v9_datagram(
                [
                    template_set({256: fields}, ipfix=False),
                    data_set(256, fields, [[b"\n\0\0\1", b"\x08\x08\x08\x08", 10, 1, 5, 6]]),
                ],
                uptime_ms=10,
                unix_secs=1_773_064_800,
            )
        ]
        templates = datagrams[:1]

    decoder_box = [NetflowDecoder(max_templates=2000, max_pending=200)]
    count = [0]

    def run_netflow(data: bytes) -> int:
        count[0] += 1
        if count[0] % 5000 == 0:
            # A fresh decoder now and then: state built from mutated templates is also input.
            decoder_box[0] = NetflowDecoder(max_templates=2000, max_pending=200)
            for blob in templates:
                with contextlib.suppress(DecodeError):
                    decoder_box[0].decode(blob, "192.0.2.1", 0.0)
        return _check_records(decoder_box[0].decode(data, "192.0.2.1", count[0] / 100.0))

    for blob in templates:
        with contextlib.suppress(DecodeError):
            decoder_box[0].decode(blob, "192.0.2.1", 0.0)

    frame_seeds = [bytes([linktype & 0xFF, linktype >> 8]) + f for linktype, f in frames]
    if not frame_seeds:
        frame_seeds = [b"\x01\x00" + b"\0" * 12 + b"\x08\x00" + b"\x45" + b"\0" * 40]
    linktypes = sorted(SUPPORTED_LINKTYPES)
    table_box = [FlowTable(15.0, 60.0, 10_000)]
    frame_count = [0]

    def run_frames(data: bytes) -> int:
        # Two leading bytes choose the link type (mostly a supported one), the rest is the frame.
        if len(data) < 2:
            raise DecodeError("too_short", "fuzz input without link type")
        linktype = data[0] | data[1] << 8
        if linktype not in SUPPORTED_LINKTYPES and frame_count[0] % 2:
            linktype = linktypes[data[0] % len(linktypes)]
        frame = data[2:]
        frame_count[0] += 1
        parse_frame(linktype, frame)  # raises DecodeError for malformed IP
        records = table_box[0].add_frame(frame_count[0] / 1000.0, linktype, frame)
        if frame_count[0] % 10_000 == 0:
            records += table_box[0].flush()
        return _check_records(records)

    goflow_json = []
    for path in _capture_files():
        if path.parent.name != "goflow2":
            continue
        try:  # a pretty-printed sample is one record over many lines
            goflow_json.append(orjson.dumps(orjson.loads(path.read_bytes())))
        except orjson.JSONDecodeError:
            goflow_json += [line for line in path.read_bytes().splitlines() if line.strip()]
    sample = FlowRecord(1_773_064_800.0, 1_773_064_860.0, "10.20.0.17", "47.100.23.45", 6000, 4)
    goflow_json.append(
        orjson.dumps(
            {
                "type": "IPFIX",
                "time_received_ns": 1_773_064_861_000_000_000,
                "sampling_rate": 10,
                "sampler_address": "192.0.2.1",
                "time_flow_start_ns": 1_773_064_800_000_000_000,
                "time_flow_end_ns": 1_773_064_860_000_000_000,
                "bytes": 6000,
                "packets": 4,
                "src_addr": "10.20.0.17",
                "dst_addr": "2001:db8::1",
                "etype": "IPv6",
                "proto": "TCP",
                "src_port": 443,
                "dst_port": 50000,
            }
        )
    )
    protobuf = [
        encode_goflow2_protobuf(
            src_addr=src,
            dst_addr=dst,
            bytes=size,
            packets=3,
            time_flow_start_ns=1_773_064_800_000_000_000,
            time_flow_end_ns=1_773_064_860_000_000_000,
            sampling_rate=rate,
            sampler_address="192.0.2.1",
            proto=6,
            src_port=443,
            dst_port=1234,
            delimited=delimited,
        )
        for src, dst, size, rate, delimited in (
            ("10.20.0.17", "47.100.23.45", 6000, 0, False),
            ("fd00::17", "2001:db8::1", 1, 100, False),
            ("10.0.0.1", "8.8.8.8", 2**40, 1, True),
        )
    ]

    def run_protobuf(data: bytes) -> int:
        # Both framings: a bare message, and a length-delimited stream of messages.
        if data[:1] == b"\x00" or len(data) % 3 == 0:
            total = 0
            for message in iter_length_delimited(data):
                total += _check_records([decode_goflow2_protobuf(message)])
            return total
        return _check_records([decode_goflow2_protobuf(data)])

    pmacct_dir = REPO / "tests" / "fixtures" / "pmacct"
    pmacct = [
        line
        for path in sorted(pmacct_dir.glob("*.json"))
        for line in path.read_bytes().splitlines()[:200]
        if line.strip()
    ] or [
        b'{"event_type":"purge","ip_src":"10.0.0.1","ip_dst":"8.8.8.8","bytes":100,'
        b'"packets":1,"timestamp_start":"2026-03-09 14:00:00.000000"}'
    ]

    def run_pmacct(data: bytes) -> int:
        record = decode_pmacct_json(data)
        return 0 if record is None else _check_records([record])

    egressd_json = [
        encode_egressd_json(sample),
        encode_egressd_json(FlowRecord(1.0, 2.0, "fd00::1", "2001:db8::2", 0, 0, 17, 53, 53, "x")),
    ]

    example = REPO / "config" / "egressd.toml"
    configs = [example.read_bytes()] if example.is_file() else []
    configs.append(b'[detection]\ninterval = "5m"\n[[groups]]\nname = "g"\nsources = ["10/8"]\n')

    def run_config(data: bytes) -> int:
        parse_config(data.decode("utf-8", errors="replace"))
        return 1

    def lines_of(decode: Callable[[bytes], FlowRecord]) -> Callable[[bytes], int]:
        return lambda data: _check_records([decode(data)])

    return [
        Target("netflow (v5/v9/IPFIX)", datagrams, run_netflow),
        Target("frames (+ flow table)", frame_seeds, run_frames),
        Target("goflow2-json", goflow_json, lines_of(decode_goflow2_json), mutate_json),
        Target("goflow2-protobuf", protobuf, run_protobuf),
        Target("pmacct-json", pmacct, run_pmacct, mutate_json),
        Target("egressd-json", egressd_json, lines_of(decode_egressd_json), mutate_json),
        Target("config (TOML)", configs, run_config, mutate, ConfigError),
    ]


# --------------------------------------------------------------------------- driver


def fuzz_one(target: Target, rng: random.Random) -> None:
    seed = rng.choice(target.seeds)
    data = seed if target.tried < len(target.seeds) else target.mutator(rng, seed, target.seeds)
    target.tried += 1
    try:
        produced = target.run(data)
    except target.allowed as exc:
        target.rejected += 1
        reason = getattr(exc, "reason", type(exc).__name__)
        target.reasons[reason] = target.reasons.get(reason, 0) + 1
        return
    except Exception:
        target.failures += 1
        print(f"\nFAILURE in {target.name}: input ({len(data)} bytes) as hex:", file=sys.stderr)
        print(data.hex(), file=sys.stderr)
        traceback.print_exc()
        return
    target.accepted += 1
    target.records += produced


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="total time budget")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--only", default="", help="comma-separated target name prefixes")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    targets = build_targets()
    if args.only:
        prefixes = tuple(p.strip() for p in args.only.split(","))
        targets = [t for t in targets if t.name.startswith(prefixes)]
    print(f"fuzz_long: seed {seed}, {args.seconds:.0f}s over {len(targets)} targets", flush=True)
    # Round-robin in short slices so every target gets an equal share of the budget.
    share = args.seconds / max(len(targets), 1)
    spent = {t.name: 0.0 for t in targets}
    deadline = time.monotonic() + args.seconds
    while time.monotonic() < deadline:
        active = [t for t in targets if t.failures < MAX_FAILURES and spent[t.name] < share]
        if not active:
            break
        for target in active:
            started = time.monotonic()
            stop = started + 0.25
            while time.monotonic() < stop and target.failures < MAX_FAILURES:
                for _ in range(50):
                    fuzz_one(target, rng)
            spent[target.name] += time.monotonic() - started
    header = f"{'target':24} {'seeds':>6} {'inputs':>10} {'accepted':>10} {'records':>10}"
    print(header + f" {'rejected':>10} {'failures':>8}  top rejection reasons")
    for t in targets:
        top = ", ".join(f"{r} {n}" for r, n in sorted(t.reasons.items(), key=lambda kv: -kv[1])[:4])
        print(
            f"{t.name:24} {len(t.seeds):>6} {t.tried:>10,} {t.accepted:>10,} {t.records:>10,}"
            f" {t.rejected:>10,} {t.failures:>8}  {top}"
        )
    failed = sum(t.failures for t in targets)
    print(f"fuzz_long: {'FAILED' if failed else 'ok'} (seed {seed})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
