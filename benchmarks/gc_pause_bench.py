"""Full garbage collections in a running daemon, with and without its heap frozen.

Run: ``python benchmarks/gc_pause_bench.py [--keys 100000 1000000] [--intervals N]``.
For each size, writes a state file of that many baselines (20 groups x country x ASN keys,
and the detectors' windows and open intervals from some traffic), then in a fresh process
per variant restores it into a :class:`~egressd.app.Daemon` and measures generation-2
collections (``gc.callbacks`` start to stop): three explicit ``gc.collect()`` right after the
restore, then the natural ones while the engine takes ``--intervals`` five-minute intervals
of traffic (column batches of 1,000 flows, ~1,000 sources, destinations drawn from 200,000
addresses, so the label cache fills), the state saved every ``--save-every`` intervals as
the daemon's saver does. "unfrozen" undoes what the daemon does to the collector; "daemon"
keeps it (``--variants freeze-only threshold-only`` for each half of it alone). Pauses are
CPU time of the collecting thread. A full collection stops the event loop for its whole
length: the collector's socket buffer, the HTTP API and the watchdog wait.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from egressd.app import Daemon
from egressd.baseline.statefile import save_state
from egressd.columns import FlowColumns
from egressd.config import parse_config
from egressd.gctune import GEN0_THRESHOLD

CONFIG = """
[networks]
local = ["10.0.0.0/8"]
[[groups]]
name = "research"
sources = ["10.20.0.0/16"]
expected_countries = ["GB", "US"]
[detection]
max_keys = {keys}
[state]
path = "{state}"
max_size = "2GB"
[[geo.region_maps]]
format = "csv"
path = "{regions}"
"""
T0 = 1_773_064_800.0
BATCH = 1_000
COUNTRIES = ("US", "GB", "DE", "FR", "NL", "IE", "JP", "SG", "CN", "BR", "IN", "CA")
FIRST_OCTETS = (2, 5, 8, 13, 23, 31, 37, 41, 46, 47, 52, 62, 77, 81, 85, 91, 95, 101, 103, 104)


def networks(count: int) -> list[int]:
    """``count`` public /24 networks (as integers), each its own region in the CSV map."""
    rng = random.Random(7)
    out: dict[int, None] = {}
    while len(out) < count:
        out[(rng.choice(FIRST_OCTETS) << 24) | rng.randrange(1 << 16) << 8] = None
    return list(out)


def traffic(
    rng: random.Random, start: float, flows: int, dst_pool: np.ndarray
) -> list[FlowColumns]:
    """One interval's flows as column batches, to addresses of ``dst_pool``."""
    addresses = len(dst_pool)
    out = []
    nprng = np.random.default_rng(rng.randrange(1 << 30))
    for first in range(0, flows, BATCH):
        n = min(BATCH, flows - first)
        times = start + nprng.random(n) * 290.0
        src = (10 << 24 | 20 << 16) + nprng.integers(0, 1000, n).astype(np.uint64)
        dst = dst_pool[nprng.integers(0, addresses, n)]
        mark = np.uint64(0xFFFF_0000_0000)
        zeros = np.zeros(n, dtype=np.uint64)
        out.append(
            FlowColumns(
                times,
                times,
                zeros,
                src | mark,
                zeros.copy(),
                dst | mark,
                nprng.integers(1000, 100_000, n).astype(np.uint64),
                np.full(n, 3, dtype=np.uint64),
            )
        )
    return out


def config_text(keys: int, state: Path) -> str:
    return CONFIG.format(keys=keys + keys // 10, state=state, regions=state.parent / "regions.csv")


def addresses(rng: random.Random, count: int) -> np.ndarray:
    return np.array(
        [(rng.choice(FIRST_OCTETS) << 24) | rng.randrange(1, 1 << 24) for _ in range(count)],
        dtype=np.uint64,
    )


def build(keys: int, state: Path) -> None:
    daemon = Daemon(parse_config(config_text(keys, state)), environ={}, sources=[])
    daemon.restore_state()
    names = [
        (f"g{i % 20:02d}", f"{COUNTRIES[i // 20 % len(COUNTRIES)]}||{i // 240 + 1}")
        for i in range(keys)
    ]
    for step in range(3):
        daemon.engine.baselines.observe_interval(
            T0 + 300 * step, [(key, 1000.0 + step) for key in names]
        )
    rng = random.Random(1)
    pool = addresses(rng, 200_000)
    for step in range(3, 6):
        for batch in traffic(rng, T0 + 300 * step, 50_000, pool):
            daemon.engine.process_columns(batch)
    save_state(state, daemon.engine.snapshot())


def measure(
    keys: int, state: Path, variant: str, intervals: int, save_every: int, open_keys: int
) -> dict[str, Any]:
    pauses: list[float] = []
    began = 0.0

    def on_gc(phase: str, info: dict[str, int]) -> None:
        nonlocal began
        if info["generation"] != 2:
            return
        # CPU time of this thread: what the collection costs, not what other processes on
        # a busy machine add to it (the loop waits for at least this long)
        if phase == "start":
            began = time.thread_time()
        else:
            pauses.append(time.thread_time() - began)

    daemon = Daemon(parse_config(config_text(keys, state)), environ={}, sources=[])
    started = time.perf_counter()
    daemon.restore_state()
    daemon.collector.warm()
    restore = time.perf_counter() - started
    if variant == "daemon":
        daemon.settle_heap()
    elif variant == "freeze-only":  # what settling does without its threshold
        gc.collect()
        gc.freeze()
    elif variant == "threshold-only":
        gc.set_threshold(GEN0_THRESHOLD, *gc.get_threshold()[1:])
    gc.callbacks.append(on_gc)
    for _ in range(3):
        gc.collect()
    explicit = list(pauses)
    pauses.clear()
    rng = random.Random(2)
    if open_keys:
        pool = np.array(networks(open_keys), dtype=np.uint64) + np.uint64(1)
        flows = 2 * open_keys
    else:
        pool, flows = addresses(rng, 200_000), 50_000
    started = time.perf_counter()
    for step in range(intervals):
        for batch in traffic(rng, T0 + 300 * (6 + step), flows, pool):
            daemon.engine.process_columns(batch)
        if (step + 1) % save_every == 0:
            asyncio.run(daemon.save())
    busy = time.perf_counter() - started
    gc.callbacks.remove(on_gc)
    tracked = len(gc.get_objects())
    frozen = gc.get_freeze_count()
    # What a full collection frees once everything frozen is scanned again: cyclic garbage
    # that freezing kept alive (a leak if it grows with time).
    gc.unfreeze()
    kept = gc.collect()
    return {
        "keys": len(daemon.engine.baselines),
        "open_keys": open_keys,
        "variant": variant,
        "restore_s": round(restore, 2),
        "explicit_ms": [round(p * 1000, 1) for p in explicit],
        "natural": len(pauses),
        "natural_max_ms": round(max(pauses, default=0.0) * 1000, 1),
        "natural_median_ms": round(statistics.median(pauses) * 1000, 1) if pauses else 0.0,
        "natural_total_ms": round(sum(pauses) * 1000, 1),
        "traffic_s": round(busy, 1),
        "tracked": tracked,
        "frozen": frozen,
        "cyclic_garbage_kept": kept,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--intervals", type=int, default=12)
    parser.add_argument("--save-every", type=int, default=4)
    parser.add_argument(
        "--open-keys",
        type=int,
        nargs="+",
        default=[0, 100_000],
        help="keys the traffic reaches in each interval (0: ~1,000 country keys)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["unfrozen", "daemon"],
        help="unfrozen | daemon | freeze-only | threshold-only (each run twice, interleaved)",
    )
    parser.add_argument("--measure", nargs=4, metavar=("KEYS", "STATE", "VARIANT", "OPEN"))
    args = parser.parse_args()
    if args.measure:
        keys, state, variant, open_keys = args.measure
        result = measure(
            int(keys), Path(state), variant, args.intervals, args.save_every, int(open_keys)
        )
        print(json.dumps(result))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        top = max(args.open_keys)
        with open(Path(tmp) / "regions.csv", "w") as out:
            out.write("cidr,label\n")
            for i, net in enumerate(networks(max(top, 1))):
                out.write(f"{net >> 24}.{net >> 16 & 255}.{net >> 8 & 255}.0/24,r{i}\n")
        for keys in args.keys:
            state = Path(tmp) / f"state-{keys}.json"
            build(keys, state)
            size = state.stat().st_size
            print(f"{keys} keys: state file {size / 1e6:.0f} MB", flush=True)
            runs = [(o, v) for o in args.open_keys for v in args.variants * 2]
            for open_keys, variant in runs:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--intervals",
                        str(args.intervals),
                        "--save-every",
                        str(args.save_every),
                        "--measure",
                        str(keys),
                        str(state),
                        variant,
                        str(open_keys),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                print("  " + out.strip(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
