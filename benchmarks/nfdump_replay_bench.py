"""``egressd replay --format nfdump`` against nfdump itself and against egressd's own JSON.

Builds an nfcapd archive of a seeded scenario (tests/scenarios.py) by sending its flows as
NetFlow v9 to a real nfcapd on loopback, then times, in the same run:

- ``nfdump -R DIR -o json`` to /dev/null: what reading the archive costs at all;
- ``egressd replay --format nfdump DIR``: nfdump's reading plus egressd's split, decode and
  engine;
- ``egressd replay --format egressd-json`` of the same flows: egressd without nfdump;
- ``egressd replay --format nfdump DIR --report FILE``: with the HTML report;

and prints the ratios, with whether the replays agree on the alerts. nfdump prints records in
the order nfcapd stored them, IPv6 records after the IPv4 ones received with them; with days
of flows sent in seconds that is minutes of event time, so both replays run with
``allowed_lateness = "15m"`` (a live capture's disorder is seconds). Run:
``python benchmarks/nfdump_replay_bench.py [--days 30] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from scenarios import generate  # noqa: E402

from egressd.demo import DemoFlow, encode_datagram  # noqa: E402

PER_DATAGRAM = 30


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _archive(directory: Path, flows: list[DemoFlow]) -> None:
    port = _free_udp_port()
    log = open(directory / "nfcapd.log", "wb")  # noqa: SIM115 - closed below
    archive = directory / "nfcapd"
    archive.mkdir()
    capd = subprocess.Popen(
        ["nfcapd", "-w", str(archive), "-b", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    try:
        time.sleep(1.0)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            for sequence, i in enumerate(range(0, len(flows), PER_DATAGRAM)):
                chunk = flows[i : i + PER_DATAGRAM]
                # A whole second: the v9 header carries unix seconds, and a fraction dropped
                # there would shift every flow of the datagram.
                export = math.ceil(max(f.end for f in chunk)) + 1
                sock.sendto(encode_datagram(chunk, export, sequence), ("127.0.0.1", port))
                if sequence % 20 == 19:
                    time.sleep(0.002)  # a pace nfcapd keeps up with on a shared machine
        time.sleep(1.0)
    finally:
        capd.send_signal(signal.SIGTERM)
        capd.wait(30)
        log.close()


def _timed(args: list[str], **kwargs: object) -> tuple[float, subprocess.CompletedProcess[bytes]]:
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, check=False, **kwargs)  # type: ignore[call-overload]
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{args[:4]} failed: {done.stderr.decode()[-2000:]}")
    return elapsed, done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("nfcapd") is None or shutil.which("nfdump") is None:
        sys.exit("needs nfdump's nfcapd and nfdump (apt-get install nfdump)")
    scenario = generate(seed=args.seed, days=args.days)
    flows = [
        DemoFlow(f.src, f.dst, f.start, f.end, f.real_bytes, max(1, f.packets * f.sampling_rate))
        for f in scenario.flows
    ]
    egressd = [sys.executable, "-m", "egressd.cli", "replay"]
    env = dict(os.environ, PYTHONPATH=str(REPO), TZ="UTC")
    with tempfile.TemporaryDirectory(prefix="nfdump-bench-") as tmp:
        directory = Path(tmp)
        config = directory / "egressd.toml"
        config.write_text(
            scenario.config_text.replace("[detection]\n", '[detection]\nallowed_lateness = "15m"\n')
        )
        lines = scenario.write(directory / "flows.jsonl", "egressd-json")
        print(f"scenario seed {args.seed}, {args.days} days: {len(flows):,} flows")
        _archive(directory, flows)
        archive = directory / "nfcapd"
        common = ["-c", str(config), "-q"]
        report = directory / "report.html"
        commands = {
            "nfdump": ["nfdump", "-R", str(archive), "-o", "json", "-q"],
            "replay": [*egressd, *common, "-f", "nfdump", str(archive)],
            "json": [*egressd, *common, "-f", "egressd-json", str(lines)],
            "report": [*egressd, *common, "-f", "nfdump", "--report", str(report), str(archive)],
        }
        # Interleaved rounds, best of each: the machine is shared and noisy.
        best: dict[str, float] = {}
        outputs: dict[str, bytes] = {}
        for _round in range(args.rounds):
            for name, command in commands.items():
                elapsed, done = _timed(command, env=env)
                best[name] = min(best.get(name, elapsed), elapsed)
                outputs[name] = done.stdout
        counted = outputs["nfdump"].count(b'"type" : "FLOW"')
        print(f"nfcapd archive: {counted:,} flows of {len(flows):,} sent")
    t_nfdump, t_replay, t_json, t_report = (
        best["nfdump"],
        best["replay"],
        best["json"],
        best["report"],
    )
    by_nfdump, by_json = outputs["replay"], outputs["json"]
    print(f"best of {args.rounds} interleaved rounds; load average {os.getloadavg()[0]:.1f}")
    rate = counted / t_replay
    print(f"nfdump -o json alone:                 {t_nfdump:6.2f}s")
    print(f"egressd replay --format nfdump:       {t_replay:6.2f}s ({rate:,.0f} flows/s)")
    print(f"egressd replay --format egressd-json: {t_json:6.2f}s")
    print(f"  ... --format nfdump --report:       {t_report:6.2f}s")
    print(f"ratio nfdump replay / nfdump alone:   {t_replay / t_nfdump:5.2f}x")
    print(f"ratio nfdump replay / egressd-json:   {t_replay / t_json:5.2f}x")
    print(f"ratio with report / without:          {t_report / t_replay:5.2f}x")
    print(
        f"alert events: {by_nfdump.count(b'firing')} firing via nfdump, "
        f"{by_json.count(b'firing')} via egressd-json; identical: {by_nfdump == by_json}"
    )


if __name__ == "__main__":
    main()
