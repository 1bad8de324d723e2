"""``egressd run`` as a real process with real neighbours: softflowd exports, Alertmanager
receives, signals restart and reload it. Skipped (with the reason) when a program is missing.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration_support import (
    REPO,
    EgressdProcess,
    free_port,
    free_udp_port,
    http_get,
    metric_value,
    require_program,
    research_config,
    running_program,
    wait_for_http,
    wait_until,
)
from tests.netflow_builders import data_set, ipfix_datagram, template_set

pytestmark = pytest.mark.integration

CONFIG = research_config(
    {
        "interval": "1m",
        "allowed_lateness": "10s",
        "unexpected_min_bytes": "100KB",
        "unexpected_window": "10m",
        "resolve_after": "1h",
    },
    state="{state}",
    save_interval="1h",
    http="127.0.0.1:{http}",
    netflow="127.0.0.1:{udp}",
)

ALERTMANAGER_CONFIG = """
route:
  receiver: blackhole
receivers:
  - name: blackhole
"""


class Setup:
    def __init__(self, tmp_path: Path, alertmanager: str = "") -> None:
        self.tmp = tmp_path
        self.udp = free_udp_port()
        self.http = free_port()
        self.state = tmp_path / "state.json"
        self.config = tmp_path / "egressd.toml"
        text = CONFIG.format(state=self.state, http=self.http, udp=self.udp)
        if alertmanager:
            text += f'\n[alertmanager]\nurls = ["{alertmanager}"]\nresend_interval = "2s"\n'
        self.text = text
        self.config.write_text(text)
        self.egressd = EgressdProcess(
            self.config, f"127.0.0.1:{self.http}", tmp_path / "egressd.log"
        )

    def send(self, datagram: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(datagram, ("127.0.0.1", self.udp))

    def get_json(self, path: str) -> object:
        status, body = http_get(f"{self.egressd.base}{path}")
        assert status == 200, (status, body)
        return orjson.loads(body)


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    yield s
    if s.egressd.alive():
        s.egressd.stop()


FIELDS = [(8, 4), (12, 4), (1, 8), (2, 8), (150, 4), (151, 4)]


def ipfix(records: list[tuple[str, str, int, float]]) -> bytes:
    rows = [
        [socket.inet_aton(src), socket.inet_aton(dst), size, 1, int(end) - 10, int(end)]
        for src, dst, size, end in records
    ]
    sets = [template_set({300: FIELDS}, ipfix=True), data_set(300, FIELDS, rows)]
    return ipfix_datagram(sets, export_secs=int(time.time()))


def exfiltrate(s: Setup, size: int = 5_000_000) -> float:
    """An unexpected-country transfer two minutes ago, and a flow now closing its interval."""
    now = time.time()
    s.send(ipfix([("10.20.0.17", "47.100.23.45", size, now - 120)]))
    s.send(ipfix([("10.20.0.17", "81.2.69.160", 10_000, now)]))
    return now


def firing_countries(s: Setup) -> list[str]:
    alerts = s.get_json("/api/v1/alerts")
    assert isinstance(alerts, list)
    return sorted(a["labels"]["dst_country"] for a in alerts)


# -- (a) softflowd -> egressd -> Alertmanager ----------------------------------------------


def test_softflowd_export_reaches_metrics_and_alertmanager(tmp_path: Path) -> None:
    softflowd = require_program("softflowd")
    softflowctl = require_program("softflowctl")
    alertmanager = require_program("prometheus-alertmanager", "alertmanager")
    from scapy.all import IP, TCP, Ether, Raw, wrpcap

    now = time.time()
    packets = []
    for i in range(300):
        packet = Ether() / IP(src="10.20.0.5", dst="47.100.23.45") / TCP(sport=40000, dport=443)
        packet = packet / Raw(b"x" * 1400)
        packet.time = now - 300 + i * 0.5
        packets.append(packet)
    closer = Ether() / IP(src="10.20.0.6", dst="81.2.69.160") / TCP(sport=40001, dport=443)
    closer.time = now
    packets.append(closer)
    pcap = tmp_path / "exfil.pcap"
    wrpcap(str(pcap), packets)
    # Independent expectation: IP bytes of the packets to CN, as scapy sees them.
    expected_cn = sum(len(p[IP]) for p in packets if p[IP].dst == "47.100.23.45")

    am_port = free_port()
    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(ALERTMANAGER_CONFIG)
    am_args = [
        alertmanager,
        f"--config.file={am_config}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",
    ]
    with running_program(am_args, tmp_path / "alertmanager.log"):
        wait_for_http(f"http://127.0.0.1:{am_port}/-/ready", timeout=30)
        s = Setup(tmp_path, alertmanager=f"http://127.0.0.1:{am_port}")
        s.egressd.start()
        try:
            control = tmp_path / "softflowd.ctl"
            sf_args = [
                softflowd,
                "-d",
                "-r",
                str(pcap),
                "-n",
                f"127.0.0.1:{s.udp}",
                "-v",
                "9",
                "-c",
                str(control),
            ]
            with running_program(sf_args, tmp_path / "softflowd.log") as exporter:
                wait_until(
                    lambda: control.exists() or exporter.poll() is not None,
                    10,
                    what="softflowd control socket",
                )
                # Reading a file, softflowd may wait for a control command before each read,
                # or read to the end and exit (exporting every flow) on its own. A shutdown
                # sent before it has read the file exports nothing, and a command can be
                # refused while the control socket is bound but not yet listening: ask for
                # statistics until they count every packet, then shut it down.
                statistics = ""

                def read_everything() -> bool:
                    nonlocal statistics
                    if exporter.poll() is not None:
                        return True
                    statistics = subprocess.run(
                        [softflowctl, "-c", str(control), "statistics"],
                        capture_output=True,
                        text=True,
                        check=False,
                    ).stdout
                    return f"Packets processed: {len(packets)}\n" in statistics

                wait_until(
                    read_everything,
                    15,
                    interval=0.2,
                    what=f"softflowd to read all {len(packets)} packets",
                    describe=lambda: statistics,
                )
                if exporter.poll() is None:
                    # It may exit at the end of the file meanwhile: ignore the status.
                    subprocess.run(
                        [softflowctl, "-c", str(control), "shutdown"],
                        capture_output=True,
                        check=False,
                    )
                exporter.wait(15)

            def cn_bytes() -> float | None:
                return metric_value(
                    s.egressd.metrics(),
                    "egressd_egress_bytes_total",
                    group="research",
                    dst_country="CN",
                )

            def accounting() -> str:
                text = s.egressd.metrics()
                counters = {
                    name: metric_value(text, f"egressd_{name}_total")
                    for name in ("engine_records", "egress_records", "late_records", "late_bytes")
                }
                return f"CN bytes {cn_bytes()} (expected {expected_cn}), {counters}"

            wait_until(
                lambda: cn_bytes() == expected_cn,
                20,
                what="CN egress bytes in /metrics",
                describe=accounting,
            )
            wait_until(
                lambda: firing_countries(s) == ["CN"],
                20,
                what="alert in egressd API",
                describe=lambda: firing_countries(s),
            )

            def in_alertmanager() -> bool:
                status, body = http_get(f"http://127.0.0.1:{am_port}/api/v2/alerts")
                if status != 200:
                    return False
                return any(
                    a["labels"].get("alertname") == "EgressUnexpectedDestination"
                    and a["labels"].get("dst_country") == "CN"
                    and a["labels"].get("group") == "research"
                    and a["status"]["state"] == "active"
                    for a in orjson.loads(body)
                )

            wait_until(in_alertmanager, 20, what="alert listed by Alertmanager")
            text = s.egressd.metrics()
            assert metric_value(text, "egressd_alertmanager_pushes_total") >= 1  # type: ignore[operator]
            assert metric_value(text, "egressd_records_total") >= 2  # type: ignore[operator]
        finally:
            assert s.egressd.stop() == 0, s.egressd.log()


# -- (b) restart: baselines and firing alerts come back ------------------------------------


def test_restart_restores_baselines_and_alerts(setup: Setup) -> None:
    s = setup
    s.egressd.start()
    exfiltrate(s)
    wait_until(lambda: firing_countries(s) == ["CN"], 15, what="alert before restart")
    baselines = s.get_json("/api/v1/baselines?group=research")
    alerts = s.get_json("/api/v1/alerts")
    assert baselines
    assert s.egressd.stop() == 0, s.egressd.log()
    assert s.state.exists()

    s.egressd.start()
    assert s.get_json("/api/v1/baselines?group=research") == baselines
    assert s.get_json("/api/v1/alerts") == alerts
    text = s.egressd.metrics()
    assert metric_value(text, "egressd_state_restored") == 1


# -- (c) SIGHUP with a broken configuration -------------------------------------------------


def test_sighup_with_broken_config_keeps_running(setup: Setup) -> None:
    s = setup
    s.egressd.start()
    s.config.write_text(s.text + '\n[detection]\nbogus_key = "yes"\n')
    s.egressd.signal(signal.SIGHUP)

    def reload_errors() -> float | None:
        return metric_value(s.egressd.metrics(), "egressd_config_reload_errors_total")

    wait_until(lambda: reload_errors() == 1, 10, what="reload error counted")
    assert s.egressd.alive()
    assert http_get(f"{s.egressd.base}/readyz")[0] == 200
    # The running configuration still works: an exfiltration still alerts.
    exfiltrate(s)
    wait_until(lambda: firing_countries(s) == ["CN"], 15, what="alert after failed reload")
    # A good configuration is then applied without a restart.
    s.config.write_text(s.text.replace('["GB", "US"]', '["GB", "US", "CN"]'))
    s.egressd.signal(signal.SIGHUP)
    wait_until(
        lambda: metric_value(s.egressd.metrics(), "egressd_config_reloads_total") == 1,
        10,
        what="reload applied",
    )
    assert s.egressd.stop() == 0, s.egressd.log()


# -- (e) malformed datagrams -----------------------------------------------------------------


def test_malformed_datagrams_are_counted_and_harmless(setup: Setup) -> None:
    s = setup
    s.egressd.start()
    garbage = [b"", b"\x00", b"\x00\x09" + b"\xff" * 40, b"\x00\x0a\x00\x05", b"\x12\x34" * 700]
    for datagram in garbage:
        s.send(datagram)
    source = f"netflow:127.0.0.1:{s.udp}"

    def errors() -> float:
        return metric_value(s.egressd.metrics(), "egressd_decode_errors_total", source=source) or 0

    wait_until(lambda: errors() == len(garbage), 10, what="decode errors counted")
    assert s.egressd.alive()
    exfiltrate(s)
    wait_until(lambda: firing_countries(s) == ["CN"], 15, what="decoding after garbage")
    assert s.egressd.stop() == 0, s.egressd.log()


# -- egressd demo against the built-in defaults ----------------------------------------------


def test_demo_fires_on_default_configuration(tmp_path: Path) -> None:
    # The built-in defaults, only on free ports: no groups, so "other" learns its countries.
    udp, http = free_udp_port(), free_port()
    config = tmp_path / "egressd.toml"
    config.write_text(
        f'[http]\nlisten = "127.0.0.1:{http}"\n[[sources.netflow]]\nlisten = "127.0.0.1:{udp}"\n'
    )
    egressd = EgressdProcess(config, f"127.0.0.1:{http}", tmp_path / "egressd.log")
    egressd.start()
    try:
        started = time.monotonic()
        demo = subprocess.run(
            [
                sys.executable,
                "-m",
                "egressd.cli",
                "demo",
                "--target",
                f"127.0.0.1:{udp}",
                "--http",
                f"127.0.0.1:{http}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert demo.returncode == 0, demo.stderr

        def fired() -> bool:
            status, body = http_get(f"{egressd.base}/api/v1/alerts")
            return status == 200 and any(
                a["labels"]["alertname"] == "EgressUnexpectedDestination"
                and a["labels"]["dst_country"] == "CN"
                and a["annotations"]["top_destinations"].startswith("47.100.23.45")
                for a in orjson.loads(body)
            )

        wait_until(fired, 60 - (time.monotonic() - started), what="demo alert")
    finally:
        assert egressd.stop() == 0, egressd.log()
