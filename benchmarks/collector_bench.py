"""The live collector against nfcapd (nfdump) and nfacctd (pmacct) on the same UDP datagrams.

Starts ``egressd run``, nfcapd and nfacctd on loopback ports, then sends each the same
softflowd-style NetFlow v9 datagrams (30 IPv4 flows each) in interleaved rounds, for two
corpora: every flow a new source and destination (the worst case: scans, CDNs, P2P), and a
realistic one (1,000 sources, Zipf-distributed destinations). For each collector it prints:

- the highest rate (flows/s) sustained with < 1% lost and < 1% still queued when sending
  stops (kernel socket drops and receive queue from /proc/net/udp for all three; egressd's
  own queue drops and not-yet-processed records from its /metrics as well, less the batch
  it holds on purpose: up to 0.1 s of flows, at most 8,192, which alone failed a collector
  keeping up at 1% of a short trial at low rates);
- CPU µs per flow at a fixed 20k flows/s (utime + stime of the process and its children);

and the ratios against nfacctd and nfcapd measured in the same run, with the targets. The
machine is shared: the spread of the repeated CPU rounds and the load average are printed.
Run: ``python benchmarks/collector_bench.py [--seconds 2.5] [--quick]`` (a few minutes).

``--exporters N`` (N > 1) sends every flow from N loopback exporters, as a core and an edge
router would report the same traffic: the same 5-tuples and bytes, each exporter its own
datagrams (its own sysUptime, sequence numbers, switched times a few milliseconds apart) and
sent :data:`LAG` datagrams after the previous exporter's copy. egressd runs twice in the
same run, ``duplicate_exports = "count_once"`` (the duplicate stage engaged: every record
looked up, half of them taken out) and ``"sum"`` (the stage off), interleaved with nfcapd and
nfacctd on the same datagrams. Rates count records received (each exporter's copy one).

``--workers N`` compares instead egressd with ``workers = 1`` and ``workers = N`` (the
NetFlow worker processes) on the realistic corpus sent from :data:`EXPORTERS` loopback
addresses (the workers split exporters, so one exporter would reach one worker; each
exporter sends distinct flows) and prints the ratio of their highest sustained rates,
measured in the same run. Each runs with ``duplicate_exports = "count_once"`` and ``"sum"``:
a process that receives several exporters engages the duplicate stage even when their flows
are distinct, so the pairs show what it costs there.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from egressd.sources.netflow import _SUBMIT_BUSY_FLOWS, _SUBMIT_DELAY  # noqa: E402
from tests.netflow_builders import data_set, template_set, v9_datagram  # noqa: E402

RECORDS_PER_DATAGRAM = 30
TEMPLATE_ID = 1024
# softflowd's NetFlow v9 template: addresses, switched times, counters, interfaces, ports,
# protocol, TCP flags, IP version, ToS.
FIELDS = [(8, 4), (12, 4), (21, 4), (22, 4), (1, 4), (2, 4), (10, 4), (14, 4), (7, 2), (11, 2),
          (4, 1), (6, 1), (60, 1), (5, 1)]  # fmt: skip
UPTIME_MS = 86_400_000
CPU_RATE = 20_000  # flows/s for the CPU-per-flow measurement
MAX_RATE = 4_000_000
LOSS_LIMIT = 0.01
QUEUE_LIMIT = 0.01
TARGET_RATE_VS_NFACCTD = 0.3
TARGET_CPU_VS_NFACCTD = 4.0
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
#: exporter addresses the --workers comparison sends from (loopback only)
EXPORTERS = tuple(f"127.0.0.{n}" for n in range(2, 10))
#: --exporters: datagrams each exporter's copy of a datagram is sent after the previous
#: exporter's (at 30 flows a datagram, a few hundred flows of the other exporters between)
LAG = 7
#: --exporters: each further exporter's sysUptime is this much longer (a router booted
#: earlier), its switched times shifted with it
UPTIME_STEP_MS = 7_200_000
#: duplicate_exports settings compared when the stage can engage
DUPLICATE_MODES = ("count_once", "sum")

# Public /8s: destinations that are foreign to every local network and not special-purpose.
PUBLIC_FIRST_OCTETS = (3, 4, 8, 13, 17, 20, 23, 31, 34, 35, 41, 45, 46, 47, 52, 54, 62, 77, 78,
                       80, 81, 82, 84, 85, 88, 91, 93, 94, 95, 101, 103, 104, 109, 110, 112,
                       113, 114, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 128, 129,
                       130, 131, 133, 134, 136, 139, 141, 142, 143, 144, 146, 147, 148, 151,
                       152, 154, 155, 157, 158, 159, 161, 162, 163, 164, 165, 166, 168, 170,
                       171, 173, 174, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186,
                       187, 188, 189, 190, 193, 194, 195, 196, 197, 198, 199, 200, 201, 202,
                       203, 204, 205, 206, 207, 208, 209, 210, 211, 212, 213, 216, 217, 218,
                       219, 220, 221, 222)  # fmt: skip

EGRESSD_CONFIG = """
[networks]
local = ["10.0.0.0/8"]
[[groups]]
name = "hosts"
sources = ["10.0.0.0/8"]
expected_countries = ["GB", "US"]
[http]
listen = "127.0.0.1:{http}"
[[sources.netflow]]
listen = "127.0.0.1:{udp}"
receive_buffer = "4MiB"
workers = {workers}
"""
DETECTION_CONFIG = """
[detection]
duplicate_exports = "{mode}"
"""

NFACCTD_CONFIG = """
daemonize: false
nfacctd_ip: 127.0.0.1
nfacctd_port: {udp}
nfacctd_pipe_size: 4194304
plugins: print
aggregate: src_host, dst_host
print_output: csv
print_output_file: {directory}/flows.csv
print_refresh_time: 300
"""


# -- corpora ----------------------------------------------------------------------------------


def _public(value: int) -> int:
    first = PUBLIC_FIRST_OCTETS[value % len(PUBLIC_FIRST_OCTETS)]
    return (first << 24) | ((value * 2654435761) & 0xFFFFFF)


def _datagrams(flows: list[tuple[int, int, int, int]], exporters: int = 1) -> list[list[bytes]]:
    """The datagrams of ``flows``, one list per exporter: the same flows (5-tuples, bytes,
    packets) in the same datagrams, each exporter with its own sysUptime, sequence numbers
    and switched times up to 50 ms after the first exporter's."""
    rng = random.Random(7)
    jitter = random.Random(8)
    out: list[list[bytes]] = [[] for _ in range(exporters)]
    for at in range(0, len(flows), RECORDS_PER_DATAGRAM):
        records = []
        for src, dst, size, packets in flows[at : at + RECORDS_PER_DATAGRAM]:
            last = UPTIME_MS - rng.randrange(0, 2000)
            first = last - rng.randrange(0, 30_000)
            records.append(
                [
                    src,
                    dst,
                    last,
                    first,
                    size,
                    packets,
                    1,
                    2,
                    rng.randrange(1024, 65535),
                    rng.choice((443, 80, 53)),
                    rng.choice((6, 17)),
                    0x18,
                    4,
                    0,
                ]
            )
        for exporter, pool in enumerate(out):
            shift = exporter * UPTIME_STEP_MS
            copies = []
            for record in records:
                late = jitter.randrange(0, 50) if exporter else 0
                copies.append([*record[:2], record[2] + shift + late, record[3] + shift + late,
                               *record[4:]])  # fmt: skip
            sets = [data_set(TEMPLATE_ID, FIELDS, copies)]
            pool.append(
                v9_datagram(
                    sets,
                    uptime_ms=UPTIME_MS + shift,
                    unix_secs=0,
                    seq=len(pool) + 1000 * exporter,
                    source_id=exporter,
                )
            )
    return out


def worst_case(datagrams: int, exporters: int = 1) -> list[list[bytes]]:
    """Every flow a new source (10/8) and a new public destination (one list of datagrams
    per exporter)."""
    rng = random.Random(1)
    flows = []
    for i in range(datagrams * RECORDS_PER_DATAGRAM):
        size = rng.randrange(40, 1_500_000)
        flows.append(((10 << 24) | (i + 1), _public(i), size, max(1, size // 1200)))
    return _datagrams(flows, exporters)


def realistic(datagrams: int, exporters: int = 1) -> list[list[bytes]]:
    """1,000 sources; 20,000 destinations drawn with Zipf weights (a few very popular); one
    list of datagrams per exporter."""
    rng = random.Random(2)
    sources = [(10 << 24) | (20 << 16) | rng.randrange(1, 65535) for _ in range(1000)]
    destinations = [_public(rng.randrange(1 << 30)) for _ in range(20_000)]
    weights = [1.0 / rank for rank in range(1, len(destinations) + 1)]
    count = datagrams * RECORDS_PER_DATAGRAM
    chosen = rng.choices(destinations, weights, k=count)
    flows = []
    for dst in chosen:
        size = rng.randrange(40, 200_000)
        flows.append((rng.choice(sources), dst, size, max(1, size // 1200)))
    return _datagrams(flows, exporters)


def template_datagram(source_id: int = 0) -> bytes:
    sets = [template_set({TEMPLATE_ID: FIELDS}, ipfix=False)]
    return v9_datagram(
        sets,
        uptime_ms=UPTIME_MS + source_id * UPTIME_STEP_MS,
        unix_secs=int(time.time()),
        source_id=source_id,
    )


def stamped(pools: list[list[bytes]], unix_secs: int) -> list[list[bytes]]:
    """The pools with their export time set to now (flows end within the last seconds)."""
    stamp = struct.pack("!I", unix_secs)
    return [[datagram[:8] + stamp + datagram[12:] for datagram in pool] for pool in pools]


# -- the kernel's view of a socket --------------------------------------------------------------


def udp_socket_state(port: int) -> tuple[int, int]:
    """(receive queue bytes, drops) of the IPv4 UDP sockets bound to ``port`` on loopback
    (summed: egressd's workers share the port in a SO_REUSEPORT group)."""
    wanted = f"0100007F:{port:04X}"
    found = False
    queued = drops = 0
    with open("/proc/net/udp") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == wanted:
                found = True
                queued += int(fields[4].split(":")[1], 16)
                drops += int(fields[12])
    if not found:
        raise RuntimeError(f"no UDP socket on 127.0.0.1:{port}")
    return queued, drops


def truesize_per_datagram(size: int) -> float:
    """Receive-queue bytes one datagram of ``size`` takes (the kernel counts buffer truesize)."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as source,
    ):
        sink.bind(("127.0.0.1", 0))
        port = sink.getsockname()[1]
        for _ in range(50):
            source.sendto(b"x" * size, ("127.0.0.1", port))
        time.sleep(0.05)
        queued, _ = udp_socket_state(port)
    return queued / 50


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` alone (not its children)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICK


def child_pids(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (nfacctd runs plugins as children)."""
    children = []
    try:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as stat:
                        fields = stat.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == pid:
                    children.append(int(entry))
    except OSError:
        pass
    return children


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its child processes (nfacctd runs plugins as children)."""
    total = 0
    pids = [pid, *child_pids(pid)]
    for each in pids:
        try:
            with open(f"/proc/{each}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICK


# -- collectors -------------------------------------------------------------------------------


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Collector:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    #: seconds to wait after sending before counting what is still queued (workers report
    #: what they counted every 0.25 s: that delay is reporting, not a backlog)
    settle: float = 0.0
    #: source addresses to send from (one exporter each)
    exporters: tuple[str, ...] = ("127.0.0.1",)
    #: flows processed so far, when the collector can tell (egressd's /metrics)
    processed: Callable[[], float] | None = None
    #: whether flows decoded wait for a batch (egressd: up to _SUBMIT_DELAY seconds' worth,
    #: at most _SUBMIT_BUSY_FLOWS), which then do not count as queued when sending stops
    batches: bool = False
    #: datagrams the collector itself dropped after reading them (egressd's queue)
    own_drops: Callable[[], float] | None = None
    #: its /metrics, summed by name (egressd)
    metrics: Callable[[], dict[str, float]] | None = None
    rates: list[float] = field(default_factory=list)


def stop_all(collectors: list[Collector]) -> None:
    """Stop every collector and the processes it started (nfacctd's plugins outlive it)."""
    children = [pid for collector in collectors for pid in child_pids(collector.process.pid)]
    for collector in collectors:
        collector.process.send_signal(signal.SIGTERM)
    for collector in collectors:
        try:
            collector.process.wait(20)
        except subprocess.TimeoutExpired:
            collector.process.kill()
            collector.process.wait()
    for pid in children:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)


def _metrics(base: str) -> dict[str, float]:
    with urllib.request.urlopen(base + "/metrics", timeout=30) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        name, _, value = line.rpartition(" ")
        metric = name.split("{", 1)[0]
        values[metric] = values.get(metric, 0.0) + float(value)
    return values


def start_egressd(
    directory: Path,
    workers: int = 1,
    exporters: tuple[str, ...] = ("127.0.0.1",),
    duplicates: str | None = None,
    name: str = "egressd",
    repo: Path = REPO,
) -> Collector:
    """egressd (the code in ``repo``) with ``workers`` NetFlow processes and
    ``duplicate_exports = duplicates`` (None: the default)."""
    udp, http = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    config = directory / f"{name}.toml"
    text = EGRESSD_CONFIG.format(udp=udp, http=http, workers=workers)
    if duplicates is not None:
        text += DETECTION_CONFIG.format(mode=duplicates)
    config.write_text(text)
    command = [sys.executable, "-m", "egressd.cli", "run", "--config", str(config)]
    if os.geteuid() == 0:
        command.append("--allow-root")
    env = dict(os.environ, PYTHONPATH=str(repo))
    process = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(base + "/readyz", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("egressd did not start")
        time.sleep(0.1)
    return Collector(
        name,
        udp,
        process,
        exporters=exporters,
        processed=lambda: _metrics(base).get("egressd_engine_records_total", 0.0),
        batches=True,
        own_drops=lambda: _metrics(base).get("egressd_dropped_total", 0.0),
        metrics=lambda: _metrics(base),
    )


def start_nfcapd(directory: Path, exporters: tuple[str, ...] = ("127.0.0.1",)) -> Collector:
    udp = _free_port(socket.SOCK_DGRAM)
    flows = directory / "nfcapd"
    flows.mkdir()
    command = ["nfcapd", "-b", "127.0.0.1", "-p", str(udp), "-w", str(flows), "-B", "4194304"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_bound(udp, process)
    return Collector("nfcapd", udp, process, exporters=exporters)


def start_nfacctd(directory: Path, exporters: tuple[str, ...] = ("127.0.0.1",)) -> Collector:
    udp = _free_port(socket.SOCK_DGRAM)
    output = directory / "nfacctd"
    output.mkdir()
    config = directory / "nfacctd.conf"
    config.write_text(NFACCTD_CONFIG.format(udp=udp, directory=output))
    command = ["nfacctd", "-f", str(config)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_bound(udp, process)
    return Collector("nfacctd", udp, process, exporters=exporters)


def _wait_bound(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            udp_socket_state(port)
            time.sleep(0.3)  # plugins start after the socket is bound
            return
        except RuntimeError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{process.args!r} did not start") from None
            time.sleep(0.05)


# -- trials -----------------------------------------------------------------------------------


@dataclass
class Trial:
    rate: float  # flows/s asked for
    achieved: float  # flows/s sent
    loss: float
    queued: float
    cpu: float  # seconds, from the first datagram until drained

    @property
    def ok(self) -> bool:
        return self.loss < LOSS_LIMIT and self.queued < QUEUE_LIMIT


def send(
    port: int,
    pools: list[list[bytes]],
    rate: float,
    seconds: float,
    exporters: tuple[str, ...] = ("127.0.0.1",),
) -> int:
    """Send datagrams at ``rate`` flows/s, taking turns between the ``exporters`` source
    addresses; returns data datagrams sent. One pool: the exporters share it, each sending
    the next datagram in turn (distinct flows). A pool per exporter (copies of the same
    flows): each exporter sends its copy of a datagram :data:`LAG` datagrams after the
    previous exporter sent its own."""
    per_second = rate / RECORDS_PER_DATAGRAM
    copies = len(pools) > 1
    if copies and len(pools) != len(exporters):
        raise ValueError("a pool per exporter, or one for all")
    with contextlib.ExitStack() as stack:
        senders = []
        for index, exporter in enumerate(exporters):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
            sock.bind((exporter, 0))
            sock.connect(("127.0.0.1", port))
            sock.send(template_datagram(index if copies else 0))
            senders.append(sock.send)
        turns = len(senders)
        size = len(pools[0])
        pool = pools[0]
        sent = 0
        clock = time.perf_counter
        started = clock()
        while True:
            elapsed = clock() - started
            if elapsed >= seconds:
                break
            due = min(int(elapsed * per_second) + 1, sent + 256)
            while sent < due:
                turn = sent % turns
                if copies:
                    datagram = pools[turn][(sent // turns - turn * LAG) % size]
                else:
                    datagram = pool[sent % size]
                # ENOBUFS: the loopback queue is full; the datagram is lost (counted as sent)
                with contextlib.suppress(OSError):
                    senders[turn](datagram)
                sent += 1
            if sent >= elapsed * per_second:
                time.sleep(0.0005)
    return sent


def drain(collector: Collector, expected: float | None, timeout: float = 60.0) -> None:
    """Wait until the collector has emptied its socket (and, for egressd, its queue)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        queued, _ = udp_socket_state(collector.port)
        if queued == 0:
            if collector.processed is None or expected is None:
                time.sleep(0.3)
                return
            if collector.processed() >= expected:
                return
        time.sleep(0.1)


def trial(
    collector: Collector, pools: list[list[bytes]], rate: float, seconds: float, truesize: float
) -> Trial:
    pools = stamped(pools, int(time.time()))
    _, drops_before = udp_socket_state(collector.port)
    own_before = collector.own_drops() if collector.own_drops else 0.0
    processed_before = collector.processed() if collector.processed else 0.0
    cpu_before = cpu_seconds(collector.process.pid)
    started = time.perf_counter()
    datagrams = send(collector.port, pools, rate, seconds, collector.exporters)
    elapsed = time.perf_counter() - started
    if collector.settle:
        time.sleep(collector.settle)
    queued_bytes, drops_after = udp_socket_state(collector.port)
    processed_now = collector.processed() if collector.processed else None
    lost = drops_after - drops_before
    if collector.own_drops:
        lost += collector.own_drops() - own_before
    lost = min(lost, datagrams)
    if processed_now is not None:
        # Everything sent and not lost nor processed yet is still queued, inside or outside.
        flows_queued = datagrams * RECORDS_PER_DATAGRAM - lost * RECORDS_PER_DATAGRAM
        flows_queued -= processed_now - processed_before
        if collector.batches:  # the batch held on purpose (at low rates, up to 0.1 s)
            flows_queued -= min(rate * _SUBMIT_DELAY, _SUBMIT_BUSY_FLOWS)
        queued = max(flows_queued, 0.0) / (datagrams * RECORDS_PER_DATAGRAM)
    else:
        queued = queued_bytes / truesize / datagrams
    flows_delivered = (datagrams - lost) * RECORDS_PER_DATAGRAM
    drain(collector, processed_before + flows_delivered if collector.processed else None)
    cpu = cpu_seconds(collector.process.pid) - cpu_before
    return Trial(rate, datagrams * RECORDS_PER_DATAGRAM / elapsed, lost / datagrams, queued, cpu)


@dataclass
class Search:
    """Doubling, then bisection, of the highest rate passing the loss and queue limits."""

    low: float = 0.0
    high: float | None = None
    next: float = 50_000.0
    trials: int = 0
    sender_limited: bool = False

    def done(self, max_trials: int) -> bool:
        if self.trials >= max_trials or self.sender_limited:
            return True
        return self.high is not None and self.low > 0 and self.high / self.low < 1.2

    def record(self, result: Trial) -> None:
        self.trials += 1
        if result.achieved < 0.93 * result.rate:
            # The sender (one Python process on a shared core) cannot go faster.
            if result.ok:
                self.low = max(self.low, result.achieved)
            self.sender_limited = True
            return
        if result.ok:
            self.low = max(self.low, result.rate)
            self.next = result.rate * 2 if self.high is None else (self.low + self.high) / 2
        else:
            self.high = result.rate
            self.next = (self.low + self.high) / 2 if self.low else result.rate / 2
        if self.next > MAX_RATE:
            self.sender_limited = True


def max_rates(
    collectors: list[Collector],
    pools: list[list[bytes]],
    seconds: float,
    truesize: float,
    trials: int,
) -> dict[str, Search]:
    searches = {collector.name: Search() for collector in collectors}
    while not all(search.done(trials) for search in searches.values()):
        for collector in collectors:
            search = searches[collector.name]
            if search.done(trials):
                continue
            result = trial(collector, pools, search.next, seconds, truesize)
            verdict = "ok" if result.ok else "FAIL"
            print(
                f"    {collector.name:14s} {result.rate:>11,.0f}/s asked, "
                f"{result.achieved:>11,.0f}/s sent: lost {result.loss:6.2%}, "
                f"queued {result.queued:6.2%}  {verdict}",
                flush=True,
            )
            search.record(result)
    return searches


def cpu_per_flow(
    collectors: list[Collector],
    pools: list[list[bytes]],
    seconds: float,
    truesize: float,
    rounds: int,
) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {collector.name: [] for collector in collectors}
    for round_number in range(rounds):
        order = (
            collectors[round_number % len(collectors) :]
            + collectors[: round_number % len(collectors)]
        )
        for collector in order:
            result = trial(collector, pools, CPU_RATE, seconds, truesize)
            flows = result.achieved * seconds * (1 - result.loss)
            out[collector.name].append(result.cpu / max(flows, 1.0) * 1e6)
    return out


def loadavg() -> str:
    with open("/proc/loadavg") as stream:
        return " ".join(stream.read().split()[:3])


def duplicate_stage(collector: Collector) -> str:
    """What egressd's duplicate stage did, from its /metrics (the daemon's engine only: with
    workers the stage runs in the worker processes, which these do not show)."""
    if collector.metrics is None:
        return ""
    values = collector.metrics()
    keys = values.get("egressd_duplicate_flow_keys", 0.0)
    records = values.get("egressd_duplicate_records_total", 0.0)
    gone = values.get("egressd_duplicate_bytes_total", 0.0)
    total = values.get("egressd_engine_records_total", 0.0)
    return (
        f"duplicate stage: {keys:,.0f} flow keys held, {records:,.0f} of {total:,.0f} records "
        f"and {gone:,.0f} bytes taken out"
    )


def egressd_pairs(
    directory: Path, workers: tuple[int, ...], exporters: tuple[str, ...]
) -> list[Collector]:
    """egressd for each of ``workers`` with each of :data:`DUPLICATE_MODES`."""
    collectors = []
    for count in workers:
        for mode in DUPLICATE_MODES:
            name = "egressd" if count == 1 else f"workers={count}"
            if mode != DUPLICATE_MODES[0]:
                name += f" {mode}"
            collectors.append(start_egressd(directory, count, exporters, mode, name))
    return collectors


def compare_workers(workers: int, seconds: float, trials: int) -> int:
    """egressd with one process against ``workers`` worker processes, same datagrams, each
    with the duplicate stage and without."""
    pools = realistic(2_000)
    truesize = truesize_per_datagram(len(pools[0][0]))
    print(f"load average at start: {loadavg()} ({os.cpu_count()} cores, shared)")
    print(
        f"realistic corpus, {len(EXPORTERS)} exporters (distinct flows), "
        f"{RECORDS_PER_DATAGRAM} flows per datagram; trials of {seconds}s\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        collectors = egressd_pairs(directory, (1, workers), EXPORTERS)
        for collector in collectors:  # the same grace for all: the workers' report interval
            collector.settle = 0.3
        cpu: dict[str, list[tuple[float, float]]] = {c.name: [] for c in collectors}
        try:
            searches = max_rates(collectors, pools, seconds, truesize, trials)
            for round_number in range(3):
                turn = round_number % len(collectors)
                for collector in collectors[turn:] + collectors[:turn]:
                    own_before = process_cpu_seconds(collector.process.pid)
                    result = trial(collector, pools, CPU_RATE, 3.0, truesize)
                    own = process_cpu_seconds(collector.process.pid) - own_before
                    flows = max(result.achieved * 3.0 * (1 - result.loss), 1.0)
                    cpu[collector.name].append((result.cpu / flows * 1e6, own / flows * 1e6))
            stages = {collector.name: duplicate_stage(collector) for collector in collectors}
        finally:
            stop_all(collectors)
    for name, search in searches.items():
        limited = " (sender-limited)" if search.sender_limited else ""
        total = statistics.median(total for total, _own in cpu[name])
        own = statistics.median(own for _total, own in cpu[name])
        print(
            f"  {name:18s} max rate {search.low:>12,.0f} flows/s{limited}; CPU at "
            f"{CPU_RATE // 1000}k flows/s: {total:.2f} us/flow, of which the daemon process "
            f"{own:.2f} us/flow"
        )
        if stages[name]:
            print(f"  {'':18s} {stages[name]}")
    rates = {name: search.low for name, search in searches.items()}
    cpus = {name: statistics.median(total for total, _own in cpu[name]) for name in cpu}
    names = list(rates)
    for once, summed in zip(names[::2], names[1::2], strict=True):
        print(
            f"  {once} / {summed}: max rate {_ratio(rates[once], rates[summed]):.2f}x, "
            f"CPU per flow {_ratio(cpus[once], cpus[summed]):.2f}x"
        )
    print(
        f"  workers={workers} / workers=1 (count_once): max rate "
        f"{_ratio(rates[names[2]], rates[names[0]]):.2f}x"
    )
    print(f"load average at end: {loadavg()}")
    return 0


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=2.5, help="sending time per trial")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved CPU rounds")
    parser.add_argument("--trials", type=int, default=7, help="max-rate trials per collector")
    parser.add_argument("--quick", action="store_true", help="one corpus-pass, fewer trials")
    parser.add_argument(
        "--workers", type=int, default=0, help="compare egressd workers = 1 with this many"
    )
    parser.add_argument(
        "--exporters",
        type=int,
        default=1,
        help="exporters reporting the same flows (>1: egressd with duplicate_exports = "
        "count_once and sum)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="with --exporters: also run the egressd in this source tree (count_once)",
    )
    parser.add_argument(
        "--corpus", choices=("both", "worst", "realistic"), default="both", help="corpora to run"
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds, args.trials = 1.5, 2, 5
    if args.workers > 1:
        return compare_workers(args.workers, args.seconds, args.trials)
    missing = [program for program in ("nfcapd", "nfacctd") if shutil.which(program) is None]
    if missing:
        print(f"missing programs: {', '.join(missing)} (Debian: nfdump, pmacct)", file=sys.stderr)
        return 2
    if not 1 <= args.exporters <= len(EXPORTERS):
        print(f"--exporters: 1 to {len(EXPORTERS)}", file=sys.stderr)
        return 2
    copies = args.exporters
    exporters = EXPORTERS[:copies] if copies > 1 else ("127.0.0.1",)
    corpora = {}
    if args.corpus in ("both", "worst"):
        corpora["worst case (every flow a new source and destination)"] = worst_case(10_000, copies)
    if args.corpus in ("both", "realistic"):
        corpora["realistic (1,000 sources, Zipf destinations)"] = realistic(2_000, copies)
    truesize = truesize_per_datagram(len(next(iter(corpora.values()))[0][0]))
    print(f"load average at start: {loadavg()} (2 shared cores; other work adds noise)")
    print(f"{RECORDS_PER_DATAGRAM} flows per datagram; trials of {args.seconds}s")
    if copies > 1:
        print(
            f"{copies} exporters report every flow (each its own copy, {LAG} datagrams "
            "apart); rates count every exporter's records"
        )
    print()
    for title, pools in corpora.items():
        print(f"== {title}")
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            if copies > 1:
                egressd = egressd_pairs(directory, (1,), exporters)
                if args.baseline:
                    egressd.append(
                        start_egressd(
                            directory, 1, exporters, "count_once", "baseline", args.baseline
                        )
                    )
            else:
                egressd = [start_egressd(directory)]
            collectors = [
                *egressd,
                start_nfcapd(directory, exporters),
                start_nfacctd(directory, exporters),
            ]
            try:
                searches = max_rates(collectors, pools, args.seconds, truesize, args.trials)
                cpu = cpu_per_flow(collectors, pools, 3.0, truesize, args.rounds)
                stages = {collector.name: duplicate_stage(collector) for collector in egressd}
            finally:
                stop_all(collectors)
        header = f"{'max rate (flows/s)':>22s} {'CPU µs/flow @20k/s':>20s} {'spread':>8s}"
        print(f"  {'collector':14s} {header}")
        medians = {}
        for name, search in searches.items():
            median = statistics.median(cpu[name])
            spread = (max(cpu[name]) - min(cpu[name])) / median if median else 0.0
            medians[name] = median
            limited = " (sender-limited)" if search.sender_limited else ""
            print(f"  {name:14s} {search.low:>22,.0f} {median:>20.2f} {spread:>8.0%}{limited}")
        for collector in egressd:
            if copies > 1:
                print(f"  {collector.name:14s} {stages[collector.name]}")
        for collector in egressd:
            ours = collector.name
            rate = searches[ours].low
            for other in ("nfacctd", "nfcapd"):
                rate_ratio = _ratio(rate, searches[other].low)
                cpu_ratio = _ratio(medians[ours], medians[other])
                print(
                    f"  {ours} / {other}: max rate {rate_ratio:.3f}x, CPU per flow {cpu_ratio:.2f}x"
                )
            rate_ratio = rate / searches["nfacctd"].low if searches["nfacctd"].low else 0.0
            cpu_ratio = medians[ours] / medians["nfacctd"] if medians["nfacctd"] else 1e9
            rate_met = rate_ratio >= TARGET_RATE_VS_NFACCTD
            cpu_met = cpu_ratio <= TARGET_CPU_VS_NFACCTD
            print(
                f"  {ours}: target max rate >= {TARGET_RATE_VS_NFACCTD}x nfacctd: "
                f"{'met' if rate_met else 'missed'}; "
                f"target CPU per flow <= {TARGET_CPU_VS_NFACCTD}x nfacctd: "
                f"{'met' if cpu_met else 'missed'}"
            )
        if copies > 1:
            once, summed, *others = (collector.name for collector in egressd)
            rate_ratio = _ratio(searches[once].low, searches[summed].low)
            print(
                f"  {once} / {summed}: max rate {rate_ratio:.2f}x, "
                f"CPU per flow {_ratio(medians[once], medians[summed]):.2f}x"
            )
            for other in others:
                print(
                    f"  {once} / {other}: max rate "
                    f"{_ratio(searches[once].low, searches[other].low):.2f}x, "
                    f"CPU per flow {_ratio(medians[once], medians[other]):.2f}x"
                )
        print()
    print(f"load average at end: {loadavg()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
