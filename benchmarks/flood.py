"""Floods a freshly started ``egressd run`` with loopback NetFlow v9 and reports what it took.

Prints datagrams sent per second, processed (decoded and run through the engine) per second,
the ratio of the two (the overload ``tests/test_hardening_load.py`` asserts), the decoder alone
for comparison, dropped (kernel receive buffer and queue) and the daemon's resident memory.
Run: ``python benchmarks/flood.py --duration 10``.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.flood_support import decode_rate, rss_bytes, start_flood  # noqa: E402
from tests.integration_support import research_config  # noqa: E402

CONFIG = research_config(http="127.0.0.1:{http}", netflow="127.0.0.1:{udp}")


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _metric(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status), response.read().decode()
    except OSError:
        return 0, ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=10.0, help="flood seconds")
    parser.add_argument("--senders", type=int, default=2, help="sender processes")
    args = parser.parse_args()

    rate = decode_rate(1.0)
    udp, http = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "egressd.toml"
        config.write_text(CONFIG.format(udp=udp, http=http))
        command = [sys.executable, "-m", "egressd.cli", "run", "--config", str(config)]
        if os.geteuid() == 0:
            command.append("--allow-root")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        daemon = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{http}"
            deadline = time.monotonic() + 30
            while _get(f"{base}/readyz")[0] != 200:
                if daemon.poll() is not None or time.monotonic() > deadline:
                    print("egressd did not start", file=sys.stderr)
                    return 1
                time.sleep(0.1)
            idle_rss, _ = rss_bytes(daemon.pid)
            started = time.monotonic()
            flood = start_flood(("127.0.0.1", udp), args.duration, args.senders)
            sent = flood.join(args.duration + 30)
            elapsed = time.monotonic() - started
            # Let the daemon drain its queue: what it takes counts as processed.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                queued = _metric(_get(f"{base}/metrics")[1], "egressd_netflow_queue_length")
                if queued == 0:
                    break
                time.sleep(0.5)
            rss, peak = rss_bytes(daemon.pid)
            text = _get(f"{base}/metrics")[1]
            source = f"netflow:127.0.0.1:{udp}"
            received = _metric(text, "egressd_received_total", source=source)
            kernel = _metric(text, "egressd_netflow_receive_buffer_drops_total", source=source)
            queue = _metric(text, "egressd_dropped_total", source=source)
            records = _metric(text, "egressd_records_total", source=source)
            alive = daemon.poll() is None
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(30)
    processed = received - queue
    print(f"sent:              {sent / elapsed:12,.0f} datagrams/s ({sent:,} in {elapsed:.1f}s)")
    print(f"processed:         {processed / elapsed:12,.0f} datagrams/s ({records:,.0f} records)")
    print(f"overload:          {sent / max(processed, 1):12,.1f}x what the daemon processed")
    print(f"decoder alone:     {rate:12,.0f} datagrams/s (before the flood)")
    print(f"dropped:           {kernel:12,.0f} by the kernel, {queue:,.0f} from the queue")
    print(f"RSS:               {idle_rss >> 20} MiB idle, {rss >> 20} MiB after, {peak >> 20} peak")
    print(f"daemon alive:      {alive}")
    return 0 if alive else 1


if __name__ == "__main__":
    sys.exit(main())
