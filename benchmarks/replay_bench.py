"""Replay throughput against a parse-only loop, and baseline memory per tracked key.

Run: ``python benchmarks/replay_bench.py [--records N] [--keys N]``; prints rates and ratios.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import sys
import tempfile
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from scenarios import benchmark_flows, goflow2_line

from egressd.baseline.seasonal import SeasonalBaselines
from egressd.config import parse_config
from egressd.replay import replay

CONFIG = """\
[networks]
local = ["10.0.0.0/8", "fd00::/8"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16", "fd00:20::/32"]
expected_countries = ["GB", "US", "IE", "DE"]

[[groups]]
name = "office"
sources = ["10.30.0.0/16"]
expected_countries = ["GB", "US", "IE", "FR", "NL"]

[[groups]]
name = "servers"
sources = ["10.40.0.0/16"]
expected_countries = ["GB", "US", "DE"]

[[groups]]
name = "lab"
sources = ["10.60.0.0/16"]
"""

TARGET_RATIO = 2.5
TARGET_KEY_MEMORY = 512 * 1024 * 1024


def parse_only(path: Path) -> int:
    """The floor: read every line and decode its JSON, nothing else."""
    count = 0
    loads = orjson.loads
    with open(path, "rb") as stream:
        for line in stream:
            loads(line)
            count += 1
    return count


def replay_once(path: Path) -> int:
    config = parse_config(CONFIG)
    summary = replay(config, "goflow2-json", [str(path)], io.BytesIO())
    return summary.records


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def key_memory(keys: int) -> tuple[int, float]:
    """RSS growth for ``keys`` baselines (key tuples, texts, records); (bytes, seconds)."""
    groups = ("research", "office", "servers", "lab", "other")
    gc.collect()
    before = _rss()
    started = time.perf_counter()
    baselines = SeasonalBaselines(max_keys=keys + 1)
    t0 = 1_772_409_600.0
    for i in range(keys):
        # Region and ASN labels make the many distinct destination keys a real deployment has.
        key = (groups[i % 5], f"US|aws/us-east-{i % 7}|{i}")
        baselines.observe(key, t0 + (i % 48) * 3600.0, 1_000_000 + i)
    seconds = time.perf_counter() - started
    gc.collect()
    grown = _rss() - before
    assert len(baselines) == keys
    del baselines
    return grown, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=150_000)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.goflow2.jsonl"
        started = time.perf_counter()
        flows = benchmark_flows(records=args.records, hosts=2000, destinations=500, days=3)
        with open(path, "wb") as out:
            out.writelines(goflow2_line(flow, i) for i, flow in enumerate(flows))
        del flows
        print(
            f"generated {args.records:,} goflow2 JSON lines ({path.stat().st_size / 1e6:.1f} MB)"
            f" in {time.perf_counter() - started:.1f}s"
        )
        best_parse = best_replay = float("inf")
        for _ in range(args.runs):
            t = time.perf_counter()
            assert parse_only(path) == args.records
            best_parse = min(best_parse, time.perf_counter() - t)
            t = time.perf_counter()
            assert replay_once(path) == args.records
            best_replay = min(best_replay, time.perf_counter() - t)
    parse_rate = args.records / best_parse
    replay_rate = args.records / best_replay
    ratio = best_replay / best_parse
    print(f"parse-only (read + orjson.loads): {parse_rate:12,.0f} lines/s  (best of {args.runs})")
    print(f"replay():                         {replay_rate:12,.0f} lines/s  (best of {args.runs})")
    verdict = "meets" if ratio <= TARGET_RATIO else "MISSES"
    print(f"replay / parse-only time ratio:   {ratio:12.2f}x  ({verdict} target {TARGET_RATIO}x)")

    grown, seconds = key_memory(args.keys)
    per_key = grown / args.keys
    verdict = "meets" if grown <= TARGET_KEY_MEMORY else "MISSES"
    print(
        f"baselines: {args.keys:,} keys grew RSS by {grown / 2**20:,.0f} MiB "
        f"({per_key:.0f} B/key, {seconds:.1f}s to build; {verdict} target "
        f"{TARGET_KEY_MEMORY / 2**20:.0f} MiB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
