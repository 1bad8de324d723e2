"""The engine's cost per flow: ``Engine.process`` of records against ``process_columns``.

Two corpora of IPv4 egress flows over an hour of event time (intervals close as they go),
fed in batches of 1,000, both paths in alternating rounds on fresh engines, best round of
each: "worst" has a new source and a new destination in every flow (scans, CDNs, P2P);
"realistic" has ~1,000 sources and Zipf-distributed destinations among 20,000. Decoding is
not timed (records and columns are built beforehand): this is the engine alone, with the
garbage collector tuned as replay tunes it.
Run: ``python benchmarks/engine_bench.py [--flows N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable

import iptocc
import numpy as np

from egressd.columns import FlowColumns
from egressd.config import parse_config
from egressd.enrich.labeler import build_labeler
from egressd.gctune import engine_gc
from egressd.model import FlowRecord
from egressd.pipeline import Engine

CONFIG = """
[networks]
local = ["10.0.0.0/8"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16"]
expected_countries = ["US", "GB", "DE"]

[[groups]]
name = "office"
sources = ["10.30.0.0/16"]
expected_countries = ["US"]

[detection]
interval = "5m"
allowed_lateness = "1m"
"""
START = 1_773_000_000.0
SPAN = 600.0
BATCH = 1_000
FIRST_OCTETS = (2, 5, 8, 13, 23, 31, 37, 41, 46, 47, 52, 62, 77, 81, 85, 91, 95, 101, 103, 104)


def _public(rng: random.Random, count: int) -> list[int]:
    """``count`` distinct public IPv4 addresses (as integers) with a known country."""
    out: dict[int, None] = {}
    while len(out) < count:
        values = [
            (rng.choice(FIRST_OCTETS) << 24) | rng.randrange(1, 1 << 24) for _ in range(count)
        ]
        texts = [f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}" for v in values]
        for value, country in zip(values, iptocc.country_code(texts), strict=True):
            if country and len(out) < count:
                out[value] = None
    return list(out)


def corpus(kind: str, flows: int, seed: int = 11) -> FlowColumns:
    rng = random.Random(seed)
    if kind == "worst":
        sources = [(10 << 24) | ((20 + i % 2 * 10) << 16) | (i // 2 + 1) for i in range(flows)]
        destinations = _public(rng, flows)
    else:
        hosts = [(10 << 24) | ((20 + i % 2 * 10) << 16) | (i + 1) for i in range(1_000)]
        pool = _public(rng, 20_000)
        sources = [hosts[rng.randrange(len(hosts))] for _ in range(flows)]
        destinations = [pool[min(int(rng.paretovariate(0.6)), len(pool)) - 1] for _ in range(flows)]
    ends = np.sort(START + np.array([rng.random() * SPAN for _ in range(flows)]))
    sizes = [int(rng.lognormvariate(9, 2)) for _ in range(flows)]
    mark = 0xFFFF_0000_0000
    return FlowColumns(
        ends - 1.0,
        ends,
        np.zeros(flows, dtype=np.uint64),
        np.array([mark | s for s in sources], dtype=np.uint64),
        np.zeros(flows, dtype=np.uint64),
        np.array([mark | d for d in destinations], dtype=np.uint64),
        np.array(sizes, dtype=np.uint64),
        np.array([max(s // 1200, 1) for s in sizes], dtype=np.uint64),
    )


def _engine() -> Engine:
    config = parse_config(CONFIG)
    return Engine(config, build_labeler(config.geo))


def _timed(run: Callable[[Engine], None]) -> tuple[float, Engine]:
    engine = _engine()
    with engine_gc():  # as replay runs the engine
        began = time.process_time()
        run(engine)
        return time.process_time() - began, engine


def measure(kind: str, flows: int, rounds: int) -> tuple[float, float]:
    columns = corpus(kind, flows)
    batches = [columns.take(slice(i, i + BATCH)) for i in range(0, flows, BATCH)]
    records: list[list[FlowRecord]] = [b.to_records() for b in batches]

    def by_records(engine: Engine) -> None:
        for batch in records:
            engine.process(batch)
        engine.flush()

    def by_columns(engine: Engine) -> None:
        for batch in batches:
            engine.process_columns(batch)
        engine.flush()

    best_records = best_columns = float("inf")
    for _ in range(rounds):
        seconds, a = _timed(by_records)
        best_records = min(best_records, seconds)
        seconds, b = _timed(by_columns)
        best_columns = min(best_columns, seconds)
        if a.stats.egress_bytes != b.stats.egress_bytes or a.stats.records != b.stats.records:
            sys.exit(f"{kind}: the two paths disagree: {a.stats} / {b.stats}")
    return flows / best_records, flows / best_columns


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.flows} flows in batches of {BATCH}, best of {args.rounds} rounds (CPU time)")
    print(f"{'corpus':<10} {'process':>14} {'process_columns':>16} {'µs/flow':>9} {'ratio':>7}")
    for kind in ("worst", "realistic"):
        records_rate, columns_rate = measure(kind, args.flows, args.rounds)
        print(
            f"{kind:<10} {records_rate:>12,.0f}/s {columns_rate:>14,.0f}/s "
            f"{1e6 / columns_rate:>9.2f} {columns_rate / records_rate:>6.1f}x"
        )


if __name__ == "__main__":
    main()
