"""Live capture source: real AF_PACKET sniffing of the test's own loopback traffic, and the
reader thread → event loop handoff, sampling, drops and error mapping with a fake socket."""

from __future__ import annotations

import asyncio
import collections
import ctypes.util
import errno
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Raw

from egressd.config import CaptureSourceConfig
from egressd.decode.frames import LINKTYPE_ETHERNET
from egressd.errors import SourceError
from egressd.model import FlowRecord
from egressd.sources.capture import CaptureSource, apply_ancillary
from tests.integration_support import REPO, free_udp_port, missing


class CollectingSink:
    def __init__(self) -> None:
        self.records: list[FlowRecord] = []
        self.calls = 0

    def submit(self, records: Sequence[FlowRecord]) -> None:
        self.calls += 1
        self.records.extend(records)


async def wait_for(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


# --------------------------------------------------------------------------- live, on lo


def require_live_capture() -> None:
    """Skip (or fail under EGRESSD_REQUIRE_INTEGRATION=1) when sniffing cannot work here."""
    try:
        socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0).close()
    except PermissionError:
        missing("live capture needs CAP_NET_RAW: run the tests as root")
    except (AttributeError, OSError) as exc:
        missing(f"AF_PACKET sockets are not available here: {exc}")
    if ctypes.util.find_library("pcap") is None:
        missing("libpcap is not installed (Debian libpcap0.8): scapy compiles BPF filters with it")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def live_config(port: int, **overrides: object) -> CaptureSourceConfig:
    # The filter keeps only this test's own datagrams; other traffic on lo is not ours.
    return CaptureSourceConfig(interface="lo", bpf=f"udp and port {port}", **overrides)  # type: ignore[arg-type]


@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
async def test_live_capture_counts_own_loopback_datagrams(family: str) -> None:
    require_live_capture()
    if family == "ipv6" and not ipv6_loopback():
        pytest.skip("no IPv6 on the loopback interface")
    host, af = ("127.0.0.1", socket.AF_INET) if family == "ipv4" else ("::1", socket.AF_INET6)
    port = free_udp_port() if family == "ipv4" else _free_udp6_port()
    payloads = [b"q" * size for size in (0, 1, 100, 512, 1400, 3000, 7, 64)]
    # Independent expectation: the IP datagram as scapy builds it (header + UDP + payload).
    ip_layer = IP if family == "ipv4" else IPv6
    expected_bytes = sum(len(ip_layer(src=host, dst=host) / UDP() / Raw(p)) for p in payloads)

    source = CaptureSource(live_config(port), "capture:lo")
    sink = CollectingSink()
    with (
        socket.socket(af, socket.SOCK_DGRAM) as receiver,
        socket.socket(af, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind((host, port))
        sender.bind((host, 0))
        sender_port = sender.getsockname()[1]
        await source.start(sink)
        try:
            assert source.ready
            before = time.time()
            for payload in payloads:
                sender.sendto(payload, (host, port))
            after = time.time()
            await wait_for(lambda: source.stats.units >= len(payloads), 5, "packets captured")
            await asyncio.sleep(0.1)  # anything more (duplicates) would show up by now
        finally:
            await source.stop()

    # Idle timeout is 15s, so the flow is still open and arrives with the flush on stop.
    assert source.stats.units == len(payloads), "loopback copies must be counted once"
    assert len(sink.records) == 1, sink.records
    record = sink.records[0]
    assert (record.src, record.dst) == (host, host)
    assert (record.proto, record.src_port, record.dst_port) == (17, sender_port, port)
    assert record.packets == len(payloads)
    assert record.bytes == expected_bytes
    assert record.exporter == "capture:lo"
    # Kernel timestamps, so within the sending window (with a little clock slack).
    assert before - 1 <= record.time_start <= record.time_end <= after + 1
    assert source.stats.dropped.get("kernel", 0) == 0
    assert not source.ready


def _free_udp6_port() -> int:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        return int(sock.getsockname()[1])


async def test_live_capture_expires_idle_flow_by_wall_clock() -> None:
    require_live_capture()
    port = free_udp_port()
    source = CaptureSource(live_config(port, idle_timeout=0.3), "capture:lo")
    sink = CollectingSink()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        await source.start(sink)
        try:
            sender.sendto(b"x" * 10, ("127.0.0.1", port))
            # No further packet moves the table's clock; the housekeeping tick must do it.
            await wait_for(lambda: sink.records, 5, "idle flow expired")
            expired = list(sink.records)
        finally:
            await source.stop()
    assert [(r.packets, r.bytes) for r in expired] == [(1, 20 + 8 + 10)]
    assert sink.records == expired, "the flush on stop must not repeat an expired flow"


async def test_live_capture_unknown_interface_is_a_clear_error() -> None:
    require_live_capture()
    source = CaptureSource(CaptureSourceConfig(interface="egressd-nonexistent0"), "capture:x")
    with pytest.raises(
        SourceError, match="egressd-nonexistent0: no such network interface"
    ) as info:
        await source.start(CollectingSink())
    assert info.value.retriable is False
    assert not source.ready


async def test_live_capture_bad_filter_is_a_clear_error() -> None:
    require_live_capture()
    source = CaptureSource(CaptureSourceConfig(interface="lo", bpf="udp and and"), "capture:lo")
    with pytest.raises(SourceError, match="bad bpf 'udp and and'") as info:
        await source.start(CollectingSink())
    assert info.value.retriable is False


def test_live_capture_without_cap_net_raw_says_what_to_do() -> None:
    """The real socket path in a process whose capability bounding set is empty."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("dropping capabilities needs root and setpriv (util-linux)")
    program = (
        "import asyncio\n"
        "from egressd.config import CaptureSourceConfig\n"
        "from egressd.errors import SourceError\n"
        "from egressd.sources.capture import CaptureSource\n"
        "async def main():\n"
        "    source = CaptureSource(CaptureSourceConfig(interface='lo'), 'capture:lo')\n"
        "    try:\n"
        "        await source.start(None)\n"
        "    except SourceError as exc:\n"
        "        print('retriable' if exc.retriable else 'fatal', exc)\n"
        "asyncio.run(main())\n"
    )
    result = subprocess.run(
        [setpriv, "--bounding-set", "-all", "--inh-caps", "-all", sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == (
        "fatal capturing on lo needs CAP_NET_RAW (run as root or grant the capability:"
        " see deploy/egressd-capture.service)"
    )


# --------------------------------------------------------------------------- fake socket


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    return bytes(Ether() / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / Raw(payload))


class FakeCaptureSocket:
    """Serves prepared frames, then reports nothing (like a poll timeout) until closed."""

    linktype = LINKTYPE_ETHERNET

    def __init__(
        self,
        frames: list[tuple[bytes, float]],
        *,
        kernel: tuple[int, int] | None = None,
        fail_after: OSError | None = None,
    ) -> None:
        self.frames = collections.deque(frames)
        self.kernel = kernel
        self.fail_after = fail_after
        self.closed = False
        self.drained = threading.Event()
        self.sizes: set[int] = set()

    def recv_frame(self, size: int) -> tuple[bytes, float] | None:
        self.sizes.add(size)
        if self.frames:
            frame, ts = self.frames.popleft()
            return frame[:size], ts
        self.drained.set()
        if self.fail_after is not None:
            error, self.fail_after = self.fail_after, None
            raise error
        time.sleep(0.01)
        return None

    def kernel_stats(self) -> tuple[int, int] | None:
        got, self.kernel = self.kernel, None
        return got

    def close(self) -> None:
        self.closed = True


def fake_source(
    sockets: list[FakeCaptureSocket], *, queue_limit: int = 65_536, **config: object
) -> CaptureSource:
    opened = iter(sockets)

    def factory(interface: str, bpf: str) -> FakeCaptureSocket:
        assert (interface, bpf) == ("eth9", "ip or ip6")
        return next(opened)

    return CaptureSource(
        CaptureSourceConfig(interface="eth9", **config),  # type: ignore[arg-type]
        "capture:eth9",
        socket_factory=factory,
        queue_limit=queue_limit,
    )


async def test_handoff_summarises_both_directions_and_counts_non_ip_and_malformed() -> None:
    t0 = time.time()
    out = udp_frame("10.0.0.5", "203.0.113.9", 40000, 53, b"a" * 30)
    back = udp_frame("203.0.113.9", "10.0.0.5", 53, 40000, b"b" * 200)
    arp = bytes(Ether() / ARP())
    cut = out[: 14 + 10]  # Ethernet + half an IPv4 header
    frames = [(out, t0), (back, t0 + 0.5), (arp, t0 + 0.6), (cut, t0 + 0.7), (out, t0 + 1.0)]
    fake = FakeCaptureSocket(frames, kernel=(9, 3))
    source = fake_source([fake])
    sink = CollectingSink()
    await source.start(sink)
    await asyncio.to_thread(fake.drained.wait, 5)
    await source.stop()

    assert fake.closed
    assert fake.sizes == {128}, "frames are read up to snaplen"
    by_direction = {(r.src, r.dst): r for r in sink.records}
    assert set(by_direction) == {("10.0.0.5", "203.0.113.9"), ("203.0.113.9", "10.0.0.5")}
    outbound = by_direction[("10.0.0.5", "203.0.113.9")]
    assert (outbound.packets, outbound.bytes) == (2, 2 * (20 + 8 + 30))
    assert (outbound.time_start, outbound.time_end) == (t0, t0 + 1.0)
    inbound = by_direction[("203.0.113.9", "10.0.0.5")]
    assert (inbound.packets, inbound.bytes) == (1, 20 + 8 + 200)
    assert source.stats.units == 5
    assert source.stats.records == 2
    assert source.non_ip == 1
    assert sum(source.stats.decode_errors.values()) == 1
    assert source.stats.dropped["kernel"] == 3
    assert source.kernel_packets == 9
    metrics = {name: value for name, _, value in source.extra_metrics()}
    assert metrics["egressd_capture_kernel_drops_total"] == 3
    assert metrics["egressd_capture_flows_created_total"] == 1


async def test_sampling_keeps_one_in_n_and_scales_counts() -> None:
    t0 = time.time()
    frame = udp_frame("10.0.0.5", "198.51.100.1", 1234, 443, b"z" * 72)
    fake = FakeCaptureSocket([(frame, t0 + i * 0.01) for i in range(12)])
    source = fake_source([fake], sampling=4)
    sink = CollectingSink()
    await source.start(sink)
    await asyncio.to_thread(fake.drained.wait, 5)
    await source.stop()
    # 3 of 12 packets are kept; each stands for 4.
    assert source.sampled_out == 9
    assert [(r.packets, r.bytes) for r in sink.records] == [(12, 12 * (20 + 8 + 72))]


async def test_full_queue_drops_whole_batches_and_counts_them() -> None:
    t0 = time.time()
    total = 6000
    per_port = [udp_frame("10.0.0.5", "198.51.100.1", 1000 + port, 443, b"p") for port in range(50)]
    frames = [(per_port[i % 50], t0 + i * 1e-4) for i in range(total)]
    fake = FakeCaptureSocket(frames)
    source = fake_source([fake], queue_limit=1000)
    sink = CollectingSink()
    await source.start(sink)
    # Block the event loop (as a stalled engine would) while the reader drains the socket.
    assert fake.drained.wait(20)
    await source.stop()

    dropped = source.stats.dropped["queue_full"]
    counted = sum(r.packets for r in sink.records)
    assert dropped > 0
    assert counted > 0
    assert counted + dropped == total == source.stats.units
    metrics = {name: value for name, _, value in source.extra_metrics()}
    assert metrics["egressd_capture_queued_packets"] == 0, "nothing left queued after stop"


async def test_permission_error_maps_to_fatal_capability_error() -> None:
    def factory(interface: str, bpf: str) -> FakeCaptureSocket:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    source = CaptureSource(
        CaptureSourceConfig(interface="eth0"), "capture:eth0", socket_factory=factory
    )
    with pytest.raises(SourceError) as info:
        await source.start(CollectingSink())
    assert str(info.value) == (
        "capturing on eth0 needs CAP_NET_RAW (run as root or grant the capability:"
        " see deploy/egressd-capture.service)"
    )
    assert info.value.retriable is False
    assert isinstance(info.value.__cause__, PermissionError)
    assert not source.ready
    await source.stop()  # stopping a source that never started is harmless


async def test_failed_socket_is_reopened_and_flows_continue() -> None:
    t0 = time.time()
    frame = udp_frame("10.0.0.5", "198.51.100.1", 1234, 443, b"z" * 10)
    first = FakeCaptureSocket([(frame, t0)], fail_after=OSError(errno.EIO, "I/O error"))
    second = FakeCaptureSocket([(frame, t0 + 1)])
    source = fake_source([first, second])
    sink = CollectingSink()
    await source.start(sink)
    await asyncio.to_thread(second.drained.wait, 10)
    assert first.closed
    assert source.ready
    assert "I/O error" in source.last_error
    await source.stop()
    assert second.closed
    assert [(r.packets, r.bytes) for r in sink.records] == [(2, 2 * (20 + 8 + 10))]


def test_ancillary_data_restores_stripped_vlan_tag_and_kernel_time() -> None:
    inner = (
        Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01")
        / IP(src="10.1.2.3", dst="192.0.2.7")
        / UDP(sport=5000, dport=53)
        / Raw(b"v" * 20)
    )
    stripped = bytes(inner)  # what the kernel hands over after VLAN offload
    # struct tpacket_auxdata: status, len, snaplen, mac, net, vlan_tci, vlan_tpid
    vlan_valid, tpid_valid = 0x10, 0x40
    aux = struct.pack("=IIIHHHH", vlan_valid | tpid_valid, 0, 0, 0, 0, 0x2064, 0x88A8)
    stamp = struct.pack("=qq", 1_700_000_123, 250_000_000)
    frame, ts = apply_ancillary(stripped, [(263, 8, aux), (socket.SOL_SOCKET, 35, stamp)])
    tagged = Ether(frame)
    assert tagged.type == 0x88A8
    assert tagged[Dot1AD].vlan == 0x064 and tagged[Dot1AD].prio == 1
    assert tagged[IP].dst == "192.0.2.7" and tagged[UDP].dport == 53
    assert ts == pytest.approx(1_700_000_123.25)
    # No VLAN flag: untouched; no timestamp: now.
    aux_plain = struct.pack("=IIIHHHH", 0, 0, 0, 0, 0, 0, 0)
    before = time.time()
    frame, ts = apply_ancillary(stripped, [(263, 8, aux_plain)])
    assert frame == stripped
    assert before <= ts <= time.time()
    # A tag without a valid TPID is 802.1Q.
    aux_q = struct.pack("=IIIHHHH", vlan_valid, 0, 0, 0, 0, 7, 0)
    frame, _ = apply_ancillary(stripped, [(263, 8, aux_q)])
    assert Ether(frame).type == 0x8100 and Ether(frame)[Dot1Q].vlan == 7
