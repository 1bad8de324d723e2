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
``--profile`` prints where one restore spends its time; ``--live`` also starts each tree's
``egressd run`` (HTTP and a NetFlow listener on loopback) on the file and reports when its
HTTP server listened, when ``/readyz`` first answered, and the slowest answer of
``/healthz`` asked without pause meanwhile. ``loop_pause_s`` is the longest an event loop
stood still while :meth:`~egressd.app.Daemon.restore_state_off_loop` restored the file in
a thread beside it (the lock the thread holds through one long call: a parse, a decode);
``after_pause_s`` the longest it stood still after, while what ``egressd run`` does next
ran: judging the ``--held`` flows (100,000 by default, in batches of 1,000, stamped an
interval after the state's last, or ``--held-at`` seconds after it: 5400 takes the event
time to an hour of day neither the state's nor wall time's) delivered while the state was
restored, and the metrics view's first evaluation (``warm_s`` is how long both took).
``--reload`` then reloads the configuration without its region map (the label names
change: every baseline's label set and expectation are evaluated again) with scrapes of
``/metrics`` every 50 ms until one shows the new names' expectations: ``reload_pause_s``
is the longest the loop stood still from the reload's start to that scrape,
``reload_s`` how long that took. ``--save`` then saves the state once as the daemon does:
``save_snapshot_s`` is the snapshot taken on the event loop (it stands still that long),
``save_write_pause_s`` the longest the loop stood still while a thread encoded and wrote
the file, ``save_peak_rss_mb`` the process's peak memory after it.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import inspect
import json
import os
import pstats
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
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


def measure(
    repo: Path,
    keys: int,
    state: Path,
    profile: bool,
    held: int,
    held_at: float = 0.0,
    reload: bool = False,
    save: bool = False,
) -> dict[str, object]:
    bench = _tree(repo)
    from egressd.app import Daemon
    from egressd.config import parse_config

    daemon = Daemon(parse_config(bench.config_text(keys, state)), environ={}, sources=[])
    rng = random.Random(5)
    start = bench.T0 + 300 * 6 + held_at
    flows = bench.traffic(rng, start, held, bench.addresses(rng, 200_000))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    profiler = cProfile.Profile() if profile else None
    started, cpu = time.perf_counter(), time.process_time()
    if profiler is not None:
        profiler.enable()
    timed: dict[str, float] = {}
    if profiler is not None:  # (it sees only this thread: restored here, no loop beside)
        daemon.feed.hold()
        for batch in flows:
            daemon.feed.submit_columns(batch)
        daemon.restore_state()
        timed["restored"], timed["restored_cpu"] = time.perf_counter(), time.process_time()
        daemon.feed.release()
        daemon.collector.warm()
        pause = after = float("nan")
    else:
        # (the configuration without its region map, for --reload)
        changed = bench.config_text(keys, state).split("[[geo.region_maps]]")[0]
        pause, after = asyncio.run(
            _restore_beside_loop(daemon, flows, timed, changed if reload else None, state, save)
        )
    restored, restored_cpu = timed["restored"], timed["restored_cpu"]
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
        "loop_pause_s": round(pause, 3),
        "after_pause_s": round(after, 3),
        "total_cpu_s": round(warmed_cpu - cpu, 2),
        "rss_before_mb": round(before),
        "peak_rss_mb": round(peak),
        **{
            name: round(value, 3)
            for name, value in timed.items()
            if name.startswith(("reload", "save"))
        },
    }


async def _restore_beside_loop(
    daemon: Any,
    flows: list[Any],
    timed: dict[str, float],
    reload: str | None,
    state: Path,
    save: bool = False,
) -> tuple[float, float]:
    """Restore as ``egressd run`` does (in a thread beside the event loop, ``flows`` held
        meanwhile), then judge what was held and evaluate the metrics view; returns the longest
        the loop stood still during the restore and after it (a task asking to wake every
        millisecond). With ``reload`` (a configuration), then the reload of :func:`measure`; with
    ``save``, then its save."""
    longest = 0.0
    done = False

    async def tick() -> None:
        nonlocal longest
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            longest = max(longest, now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0)
    daemon.feed.hold()
    for batch in flows:
        daemon.feed.submit_columns(batch)
    try:
        await daemon.restore_state_off_loop()
        timed["restored"], timed["restored_cpu"] = time.perf_counter(), time.process_time()
        await asyncio.sleep(0.002)  # the ticker's turn: what it saw so far was the restore
        during, longest = longest, 0.0
        drain = getattr(daemon.feed, "drain", None)  # (the code before: release at once)
        if drain is not None:
            await drain()
        else:
            daemon.feed.release()
        settle = getattr(daemon.collector, "settle", None)  # (the code before: on the loop)
        if settle is not None:
            await settle()
        else:
            daemon.collector.warm()
        await asyncio.sleep(0.002)
        after = longest
        if reload is not None:
            longest = 0.0
            timed["reload_s"] = await _reload_until_scraped(daemon, reload, state)
            await asyncio.sleep(0.002)
            timed["reload_pause_s"] = longest
        if save:
            from egressd.baseline.statefile import save_state

            # (as Daemon.save takes it: the records' text left to the thread, where the code
            # under test can)
            lazy = "records_text" in inspect.signature(daemon.engine.snapshot).parameters
            started = time.perf_counter()
            snapshot = (
                daemon.engine.snapshot(records_text=False) if lazy else daemon.engine.snapshot()
            )
            timed["save_snapshot_s"] = time.perf_counter() - started
            await asyncio.sleep(0.002)
            longest = 0.0
            saved = state.parent / f"saved-{os.getpid()}.json"
            try:
                await asyncio.to_thread(save_state, saved, snapshot)
            finally:
                saved.unlink(missing_ok=True)
            await asyncio.sleep(0.002)
            timed["save_write_pause_s"] = longest
            timed["save_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    finally:
        done = True
        await ticker
    return during, after


async def _reload_until_scraped(daemon: Any, text: str, state: Path) -> float:
    """Reload to the configuration ``text`` (no region map), scraping every 50 ms until a
    scrape shows baseline expectations without the region label; how long that took."""
    from prometheus_client import generate_latest

    config = state.parent / f"reload-{os.getpid()}.toml"
    config.write_text(text)
    daemon.config_path = config
    started = time.perf_counter()
    reloading = asyncio.create_task(daemon.reload_outcome())
    try:
        while True:
            await asyncio.sleep(0.05)
            text = generate_latest(daemon.registry).decode()
            lines = [line for line in text.splitlines() if line.startswith("egressd_egress_base")]
            if reloading.done() and lines and "dst_region" not in lines[0]:
                return time.perf_counter() - started
    finally:
        await reloading
        config.unlink()


def serve(repo: Path, keys: int, state: Path) -> dict[str, object]:
    """A live ``egressd run`` of ``repo`` on a copy of ``state``: when its HTTP server began
    to listen (its log says so: a port another process answers on is not taken for it) and
    when /readyz first answered 200 (seconds from the start of the process)."""
    bench = _tree(repo)
    with tempfile.TemporaryDirectory() as work:
        shutil.copy(state.parent / "regions.csv", Path(work) / "regions.csv")
        copy = Path(work) / "state.json"
        shutil.copy(state, copy)
        config = Path(work) / "egressd.toml"
        http, netflow = _free_port(socket.SOCK_STREAM), _free_port(socket.SOCK_DGRAM)
        config.write_text(
            bench.config_text(keys, copy)
            + f'\n[http]\nlisten = "127.0.0.1:{http}"\n'
            + f'[[sources.netflow]]\nlisten = "127.0.0.1:{netflow}"\n'
        )
        command = "import sys; from egressd.cli import main; sys.exit(main())"
        started = time.monotonic()
        process = subprocess.Popen(
            [sys.executable, "-c", command, "run", "--allow-root", "--config", str(config)],
            env={**os.environ, "PYTHONPATH": str(repo.resolve())},
            cwd=work,  # not a tree's root, whose egressd would come first on the path
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        first: dict[str, float] = {}

        def watch_log() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                if "HTTP listening" in line and "http" not in first:
                    first["http"] = round(time.monotonic() - started, 1)
                if "restored state from" in line and "restored" not in first:
                    first["restored"] = time.monotonic()

        reader = threading.Thread(target=watch_log, daemon=True)
        reader.start()
        # Until /readyz answers, /healthz is asked without pause: its slowest answer is
        # about the longest the daemon's event loop stood still (while the state was
        # restored in a thread, until its log says so, and after, the start's own work on
        # the loop: putting the engine in place, the first full collection).
        answers: list[tuple[float, float]] = []

        def probe() -> None:
            while "ready" not in first and time.monotonic() - started < 600:
                if "http" not in first:
                    time.sleep(0.01)
                    continue
                asked = time.monotonic()
                _answers(f"http://127.0.0.1:{http}/healthz", timeout=60)
                answers.append((asked, time.monotonic()))

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()
        try:
            while "ready" not in first and time.monotonic() - started < 600:
                if "http" in first and _answers(f"http://127.0.0.1:{http}/readyz"):
                    first["ready"] = round(time.monotonic() - started, 1)
                time.sleep(0.1)
        finally:
            prober.join(70)
            process.terminate()
            process.wait(300)
            reader.join(10)
    restored = first.get("restored", float("inf"))
    return {
        "http_s": first.get("http"),
        "readyz_s": first.get("ready"),
        "slowest_healthz_restoring_s": round(
            max((b - a for a, b in answers if b <= restored), default=0.0), 3
        ),
        "slowest_healthz_s": round(max((b - a for a, b in answers), default=0.0), 3),
    }


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers(url: str, timeout: float = 1) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return bool(response.status == 200)
    except OSError:
        return False


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
    parser.add_argument("--held", type=int, default=100_000, help="flows held while restoring")
    parser.add_argument(
        "--held-at", type=float, default=0.0, help="held flows this late after the state's end"
    )
    parser.add_argument(
        "--reload", action="store_true", help="then time a reload that changes label names"
    )
    parser.add_argument("--save", action="store_true", help="then time a save of the state")
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--build", nargs=2, metavar=("KEYS", "STATE"))
    parser.add_argument("--measure", nargs=2, metavar=("KEYS", "STATE"))
    parser.add_argument("--live", action="store_true", help="also time a live `egressd run`")
    parser.add_argument("--serve", nargs=2, metavar=("KEYS", "STATE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.build:
        build(args.tree, int(args.build[0]), Path(args.build[1]))
        return 0
    if args.serve:
        print(json.dumps(serve(args.tree, int(args.serve[0]), Path(args.serve[1]))))
        return 0
    if args.measure:
        result = measure(
            args.tree,
            int(args.measure[0]),
            Path(args.measure[1]),
            args.profile,
            args.held,
            args.held_at,
            args.reload,
            args.save,
        )
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
                    extra += ["--held", str(args.held), "--held-at", str(args.held_at)]
                    extra += ["--reload"] if args.reload else []
                    extra += ["--save"] if args.save else []
                    out = _run(repo, *extra, "--measure", str(keys), str(state))
                    print(f"  {repo.name} restores {state.name}: {out}", flush=True)
                    if args.live:
                        out = _run(repo, "--serve", str(keys), str(state))
                        print(f"  {repo.name} runs on {state.name}: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
