"""UDP floods of valid NetFlow v9 for load tests and ``benchmarks/flood.py``.

Sender processes (several, so the flood is not limited by one interpreter) stamp their flows
with the current time, stop by themselves after a deadline (or a datagram count), and report.
A sender and the daemon are each one CPU-bound process, so however loaded the machine, the
ratio of datagrams sent to datagrams the daemon processes stays about the same: the load test
asserts that ratio, measured from the daemon's own counters, not a rate timed apart from it.
"""

from __future__ import annotations

import multiprocessing
import random
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized

from egressd.decode.netflow import NetflowDecoder
from egressd.demo import DemoFlow, encode_datagram

#: records per datagram: about 6.8 KB of NetFlow v9, as exporters on 9000-byte-MTU links send.
#: Sending costs about the same per datagram whatever its size while decoding and detection grow
#: with its records, so large datagrams keep the flood far beyond what the daemon processes:
#: two senders offer 250-300 times the datagrams the daemon decodes and runs through its engine
#: (``benchmarks/flood.py`` prints the ratio), leaving room for a much faster daemon.
RECORDS = 180
#: distinct datagrams each sender cycles through (rebuilt every second with fresh times)
POOL = 64
#: ordinary, expected egress: United Kingdom and United States addresses
BENIGN_DESTINATIONS = ("81.2.69.160", "3.5.140.2")


def flood_flows(rng: random.Random, now: float) -> list[DemoFlow]:
    """One datagram's flows: mostly east-west (10.20/16 → 10.30/16), some benign egress."""
    flows = []
    for _ in range(RECORDS):
        src = f"10.20.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        if rng.random() < 0.8:
            dst = f"10.30.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        else:
            dst = rng.choice(BENIGN_DESTINATIONS)
        size = rng.randrange(100, 100_000)
        flows.append(DemoFlow(src, dst, now - 5, now, size, max(1, size // 1000)))
    return flows


def flood_pool(seed: int, now: float, count: int = POOL) -> list[bytes]:
    rng = random.Random(seed)
    return [encode_datagram(flood_flows(rng, now), now, i) for i in range(count)]


def decode_rate(seconds: float = 1.0) -> float:
    """Datagrams per second egressd's NetFlow decoder alone gets through on flood datagrams."""
    pool = flood_pool(1, time.time())
    decoder = NetflowDecoder()
    decode = decoder.decode
    decoded = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline:
        for data in pool:
            decode(data, "127.0.0.1", time.time())
        decoded += len(pool)
    return decoded / (time.perf_counter() - start)


def send_flood(
    target: tuple[str, int],
    seconds: float,
    max_datagrams: int | None,
    seed: int,
    sent: Synchronized,  # type: ignore[type-arg]
) -> None:
    """Send flood datagrams to ``target`` as fast as possible until time or count runs out."""
    deadline = time.monotonic() + seconds
    if max_datagrams is None:
        max_datagrams = 2**62
    count = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        # Connected: send() skips parsing the address on every call, a good share of its cost.
        sock.connect(target)
        send = sock.send
        base = flood_pool(seed, time.time())
        while count < max_datagrams:
            now = time.monotonic()
            if now >= deadline:
                break
            # NetFlow v9 flow times are relative to the header's export time: re-stamping the
            # header (bytes 8-12) moves every flow to now, far cheaper than encoding anew.
            stamp = struct.pack("!I", int(time.time()))
            pool = [data[:8] + stamp + data[12:] for data in base]
            # One second with this pool: its flows keep advancing event time.
            until = min(deadline, now + 1.0)
            while count < max_datagrams and time.monotonic() < until:
                for data in pool:
                    try:
                        send(data)
                    except BlockingIOError:
                        pass  # our own send buffer is full: the datagram is not sent
                    except ConnectionRefusedError:
                        pass  # an ICMP error from an earlier datagram: the next one goes
                    else:
                        count += 1
    with sent.get_lock():
        sent.value += count


@dataclass(slots=True)
class Flood:
    """Sender processes flooding ``target``; :meth:`join` returns the datagrams sent."""

    processes: Sequence[multiprocessing.process.BaseProcess]
    sent: Synchronized  # type: ignore[type-arg]

    def join(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join(5)
        return int(self.sent.value)


def start_flood(
    target: tuple[str, int], seconds: float, senders: int, max_datagrams: int | None = None
) -> Flood:
    """``senders`` processes flooding ``target`` for ``seconds`` (or ``max_datagrams`` in all)."""
    context = multiprocessing.get_context("spawn")
    sent = context.Value("q", 0)
    each = None if max_datagrams is None else max_datagrams // senders
    processes = [
        context.Process(
            target=send_flood,
            args=(target, seconds, each, 1000 * (i + 1), sent),
            daemon=True,
        )
        for i in range(senders)
    ]
    for process in processes:
        process.start()
    return Flood(processes, sent)


def rss_bytes(pid: int) -> tuple[int, int]:
    """(current, peak) resident set size of process ``pid``, from /proc/PID/status."""
    values = {"VmRSS": 0, "VmHWM": 0}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0]) * 1024
    return values["VmRSS"], values["VmHWM"]


def exfil_datagram(now: float, size: int, sequence: int) -> bytes:
    """``size`` bytes from research host 10.20.0.17 to a Chinese address, ending ``now``."""
    flow = DemoFlow("10.20.0.17", "47.100.23.45", now - 5, now, size, max(1, size // 1400))
    return encode_datagram([flow], now, sequence)
