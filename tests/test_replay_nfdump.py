"""``egressd replay --format nfdump``: nfcapd archives read through nfdump's own reader.

The archive is made here by the real programs: softflowd exports a packet capture as NetFlow
v9 to nfcapd on loopback. A relay in the middle keeps every datagram it forwards, so the
same flows can be replayed a second way (``netflow-pcap``, egressd's own decoder) and the two
replays must agree on totals and alerts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pytest

from egressd.decode.nfdump_json import (
    NfdumpJsonSplitter,
    decode_nfdump_object,
    load_record,
    nfdump_time,
)
from egressd.errors import DecodeError
from egressd.units import format_bytes
from tests.integration_support import (
    REPO,
    free_udp_port,
    require_program,
    running_program,
    wait_until,
)

CONFIG = """
[networks]
local = ["10.0.0.0/8", "fd00::/8"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16", "fd00:20::/32"]
expected_countries = ["GB", "US"]

[detection]
interval = "5m"
unexpected_min_bytes = "200KB"
unexpected_window = "1h"
"""

CN = "47.100.23.45"
GB = "81.2.69.160"


def _egressd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    environment = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "egressd.cli", *args],
        capture_output=True,
        env=environment,
        cwd=REPO,
        timeout=120,
        check=False,
    )


def _packets(start: float) -> list[object]:
    from scapy.all import IP, TCP, Ether, IPv6, Raw

    packets = []
    for i in range(240):  # 20 minutes of an upload to CN
        packet = Ether() / IP(src="10.20.0.5", dst=CN) / TCP(sport=40000, dport=443)
        packet = packet / Raw(b"x" * 1400)
        packet.time = start + i * 5
        packets.append(packet)
    for i in range(40):  # expected traffic to GB from another host
        packet = Ether() / IP(src="10.20.0.6", dst=GB) / TCP(sport=40001, dport=443)
        packet = packet / Raw(b"y" * 1000)
        packet.time = start + i * 30
        packets.append(packet)
    packet = Ether() / IPv6(src="fd00:20::5", dst="2a00:1450:4009::1") / TCP(sport=4, dport=443)
    packet.time = start + 3
    packets.append(packet / Raw(b"z" * 100))
    packets.sort(key=lambda p: float(p.time))
    return packets


def _udp_port_taken(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class _Relay:
    """UDP relay: forwards each datagram to nfcapd and keeps a copy for a pcap."""

    def __init__(self, target: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.target = ("127.0.0.1", target)
        self.datagrams: list[tuple[float, bytes]] = []
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        out = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with out:
            while self.running:
                try:
                    data, _ = self.sock.recvfrom(65535)
                except TimeoutError:
                    continue
                self.datagrams.append((time.time(), data))
                out.sendto(data, self.target)

    def close(self) -> None:
        self.running = False
        self.thread.join(5)
        self.sock.close()

    def write_pcap(self, path: Path) -> None:
        from scapy.all import IP, UDP, Ether, Raw, wrpcap

        frames = []
        for received, data in self.datagrams:
            frame = Ether() / IP(src="127.0.0.1", dst="127.0.0.1")
            frame = frame / UDP(sport=9995, dport=self.target[1]) / Raw(data)
            frame.time = received
            frames.append(frame)
        wrpcap(str(path), frames)


def _make_archive(tmp_path: Path, packets: list[object]) -> tuple[Path, Path]:
    """(nfcapd directory, pcap of the same export datagrams)."""
    softflowd = require_program("softflowd")
    nfcapd = require_program("nfcapd")
    require_program("nfdump")
    from scapy.all import wrpcap

    source = tmp_path / "traffic.pcap"
    wrpcap(str(source), packets)
    archive = tmp_path / "nfcapd"
    archive.mkdir()
    collector = free_udp_port()
    relay = _Relay(collector)
    try:
        nfcapd_args = [nfcapd, "-w", str(archive), "-b", "127.0.0.1", "-p", str(collector)]
        with running_program(nfcapd_args, tmp_path / "nfcapd.log") as capd:
            # Datagrams relayed before nfcapd has bound its socket would be lost.
            wait_until(
                lambda: _udp_port_taken(collector) or capd.poll() is not None,
                20,
                what="nfcapd to bind its port",
            )
            assert capd.poll() is None, (tmp_path / "nfcapd.log").read_text()
            args = [softflowd, "-d", "-r", str(source), "-n", f"127.0.0.1:{relay.port}", "-v", "9"]
            with running_program(args, tmp_path / "softflowd.log") as exporter:
                exporter.wait(30)
            wait_until(lambda: relay.datagrams, 10, what="softflowd's datagrams at the relay")
            time.sleep(0.5)  # the relay forwards what is still in flight
            capd.send_signal(signal.SIGTERM)  # nfcapd writes its file out when it stops
            capd.wait(20)
    finally:
        relay.close()
    assert any(archive.iterdir()), (tmp_path / "nfcapd.log").read_text()
    exported = tmp_path / "export.pcap"
    relay.write_pcap(exported)
    return archive, exported


def _replay(tmp_path: Path, fmt: str, *inputs: Path) -> tuple[list[dict[str, object]], str]:
    config = tmp_path / "egressd.toml"
    config.write_text(CONFIG)
    done = _egressd("replay", "--config", str(config), "--format", fmt, *map(str, inputs))
    assert done.returncode == 0, done.stderr.decode()
    events = [orjson.loads(line) for line in done.stdout.splitlines()]
    return events, done.stderr.decode()


def _egress_line(summary: str) -> str:
    return next(line for line in summary.splitlines() if line.startswith("replay: egress"))


@pytest.mark.integration
def test_nfcapd_archive_replays_like_the_export_datagrams(tmp_path: Path) -> None:
    from scapy.all import IP, IPv6

    # softflowd counts flow times in ms from its own start: packets stamped before it started
    # wrap that 32-bit uptime (nfdump then reads them 49.7 days late), so they come after.
    packets = _packets(time.time() + 60)
    archive, exported = _make_archive(tmp_path, packets)
    by_nfdump, summary_nfdump = _replay(tmp_path, "nfdump", archive)
    by_datagrams, summary_datagrams = _replay(tmp_path, "netflow-pcap", exported)

    # The upload to CN pages, and its evidence is the packets' own IP bytes.
    firing = [e for e in by_nfdump if e["status"] == "firing"]
    assert [e["labels"]["dst_country"] for e in firing] == ["CN"]
    expected_cn = sum(len(p[IP]) for p in packets if IP in p and p[IP].dst == CN)
    assert int(firing[0]["annotations"]["bytes"]) == expected_cn
    egress = sum(len(p[layer]) for p in packets for layer in (IP, IPv6) if layer in p)
    assert f"egress 3 records, {format_bytes(egress)};" in summary_nfdump
    # nfdump's reading and egressd's own decoding of the same datagrams agree exactly.
    assert by_nfdump == by_datagrams, (by_nfdump, by_datagrams)
    assert _egress_line(summary_nfdump) == _egress_line(summary_datagrams)
    assert "skipped 0" in summary_nfdump

    # A file and a directory read the same; "-R DIR" takes every file in it.
    (capture,) = [p for p in archive.iterdir() if p.name.startswith("nfcapd.")]
    by_file, summary_file = _replay(tmp_path, "nfdump", capture)
    assert by_file == by_nfdump
    assert _egress_line(summary_file) == _egress_line(summary_nfdump)


def test_missing_nfdump_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "nfcapd.202601010000").write_bytes(b"")
    done = _egressd(
        "replay",
        "--format",
        "nfdump",
        str(tmp_path),
        env={"EGRESSD_NFDUMP": "no-such-nfdump-program"},
    )
    assert done.returncode == 1
    message = done.stderr.decode()
    assert "nfdump" in message and "not installed" in message, message
    assert "Traceback" not in message


def test_unreadable_nfcapd_file_is_counted_and_named(tmp_path: Path) -> None:
    require_program("nfdump")
    bad = tmp_path / "nfcapd.202601010000"
    bad.write_bytes(b"not an nfcapd file at all" * 10)
    done = _egressd("replay", "--format", "nfdump", str(bad))
    message = done.stderr.decode()
    assert done.returncode == 0, message
    assert "skipped 1 (nfdump_error=1)" in message
    assert "bad magic" in message  # nfdump's own words about the file


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    require_program("nfdump")
    done = _egressd("replay", "--format", "nfdump", str(tmp_path / "absent"))
    assert done.returncode == 1
    assert "absent: no such file or directory" in done.stderr.decode()


def test_splitter_reads_nfdumps_pretty_array() -> None:
    text = b"""[
{
\t"type" : "FLOW",
\t"first" : "2026-03-09T14:00:00.250",
\t"last" : "2026-03-09T14:04:59.750",
\t"in_packets" : 3,
\t"in_bytes" : 4500,
\t"proto" : 6,
\t"src_port" : 40000,
\t"dst_port" : 443,
\t"src4_addr" : "10.20.0.5",
\t"dst4_addr" : "47.100.23.45",
\t"ip4_router" : "192.0.2.1"
},
{
\t"type" : "FLOW",
\t"last" : "2026-03-09T14:06:00.000",
\t"in_bytes" : 60,
\t"src6_addr" : "fd00:20::5",
\t"dst6_addr" : "2a00:1450:4009::1"
},
{
\t"type" : "FLOW",
\t"last" : "2026-03-09T14:06:00.000",
\t"in_bytes" : -5,
\t"src4_addr" : "10.20.0.5",
\t"dst4_addr" : "47.100.23.45"
}]
"""
    # Whole, and cut into pieces of every size from one byte: the same records.
    whole = NfdumpJsonSplitter().feed(text)
    for size in range(1, 40):
        splitter = NfdumpJsonSplitter()
        pieces = [text[i : i + size] for i in range(0, len(text), size)]
        assert [r for piece in pieces for r in splitter.feed(piece)] == whole
    objects = [load_record(r) for r in whole]
    assert len(objects) == 3
    first = decode_nfdump_object(objects[0])
    assert first is not None
    assert (first.src, first.dst, first.bytes, first.packets, first.proto) == (
        "10.20.0.5",
        CN,
        4500,
        3,
        6,
    )
    # UTC, because nfdump runs with TZ=UTC: 2026-03-09T14:04:59.750Z
    assert first.time_end == pytest.approx(1773065099.75, abs=1e-3)
    assert first.time_start == pytest.approx(1773064800.25, abs=1e-3)
    assert first.exporter == "192.0.2.1"
    second = decode_nfdump_object(objects[1])
    assert (
        second is not None and second.src == "fd00:20::5" and second.time_start == second.time_end
    )
    with pytest.raises(DecodeError) as bad:
        decode_nfdump_object(objects[2])
    assert bad.value.reason == "bad_number"
    assert decode_nfdump_object({"type": "EVENT"}) is None


@pytest.mark.parametrize(
    "text",
    [
        "2026-03-09T14:04:59.750",
        "1970-01-01T00:00:00.001",
        "2026-12-31T23:59:59.999",
        "2028-02-29T12:00:00.000",
        "2026-03-09T14:04:59",  # other layouts go the general way
        "2026-03-09 14:04:59.750",
    ],
)
def test_nfdump_time_reads_like_the_general_parser(text: str) -> None:
    from egressd.decode.common import parse_time_text

    assert nfdump_time(text) == pytest.approx(parse_time_text(text), abs=1e-6)


@pytest.mark.parametrize("text", ["2026-13-09T14:04:59.750", "2026-03-09T25:04:59.750", "x" * 23])
def test_nfdump_time_refuses_what_is_not_a_time(text: str) -> None:
    with pytest.raises(DecodeError) as bad:
        nfdump_time(text)
    assert bad.value.reason == "bad_time"
