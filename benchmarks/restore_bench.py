"""How long a daemon takes to restore its state file, and the memory it takes to do so.

Run: ``python benchmarks/restore_bench.py [--keys 100000 1000000] [--repos . /other/tree]``.
For each size and each source tree given (the code under test and, say, a checkout of the
code before a change), a state file of that many baselines is written by that tree's code
(20 groups x country x ASN keys, and the detectors' windows and open intervals from some
traffic, as ``gc_pause_bench.py`` builds it), then restored ``--runs`` times, interleaved
across trees, each in a fresh process: :meth:`~egressd.app.Daemon.restore_state` (read,
parse, rebuild the engine) and the metrics view's first evaluation of every baseline, which
the daemon does before it serves. With two trees, the last one also restores the first
one's file (a state written by older code: the migration). Peak memory is the process's
maximum resident set (``ru_maxrss``), with what it held before the restore beside it; times
are wall and CPU (the process's; on a loaded machine the wall time is mostly waiting);
``--profile`` prints where one restore spends its time.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()


def _tree(repo: Path) -> Any:
    """The tree's own ``gc_pause_bench`` (which puts the tree's egressd first on the path)."""
    sys.path.insert(0, str(repo / "benchmarks"))
    import gc_pause_bench

    return gc_pause_bench


def build(repo: Path, keys: int, state: Path) -> None:
    _tree(repo).build(keys, state)


def measure(repo: Path, keys: int, state: Path, profile: bool) -> dict[str, object]:
    bench = _tree(repo)
    from egressd.app import Daemon
    from egressd.config import parse_config

    daemon = Daemon(parse_config(bench.config_text(keys, state)), environ={}, sources=[])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    profiler = cProfile.Profile() if profile else None
    started, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    daemon.restore_state()
    restored, restored_cpu = time.perf_counter(), time.process_time()
    daemon.collector.warm()
    warmed, warmed_cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "keys": len(daemon.engine.baselines),
        "restored": daemon.stats.state_restored,
        "restore_s": round(restored - started, 2),
        "warm_s": round(warmed - restored, 2),
        "total_s": round(warmed - started, 2),
        "restore_cpu_s": round(restored_cpu - cpu, 2),
        "total_cpu_s": round(warmed_cpu - cpu, 2),
        "rss_before_mb": round(before),
        "peak_rss_mb": round(peak),
    }


def _run(repo: Path, *args: str) -> str:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(HERE), "--tree", str(repo), *args],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    ).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--repos", type=Path, nargs="+", default=[HERE.parents[1]])
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=2, metavar=("KEYS", "STATE"))
    parser.add_argument("--measure", nargs=2, metavar=("KEYS", "STATE"))
    args = parser.parse_args()
    if args.build:
        build(args.tree, int(args.build[0]), Path(args.build[1]))
        return 0
    if args.measure:
        result = measure(args.tree, int(args.measure[0]), Path(args.measure[1]), args.profile)
        print(json.dumps(result))
        return 0
    repos = [repo.resolve() for repo in args.repos]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "regions.csv").write_text("cidr,label\n2.0.0.0/24,r0\n")
        for keys in args.keys:
            files = []
            for number, repo in enumerate(repos):
                state = Path(tmp) / f"state-{number}-{keys}.json"
                _run(repo, "--build", str(keys), str(state))
                files.append(state)
                print(f"{keys} keys, {repo}: state file {state.stat().st_size / 1e6:.0f} MB")
            pairs = list(zip(repos, files, strict=True))
            if len(repos) > 1:
                pairs.append((repos[-1], files[0]))
            for _ in range(args.runs):
                for repo, state in pairs:
                    extra = ["--profile"] if args.profile else []
                    out = _run(repo, *extra, "--measure", str(keys), str(state))
                    print(f"  {repo.name} restores {state.name}: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
