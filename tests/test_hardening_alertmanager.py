"""Alertmanager down while alerts fire and resolve, then up on the same port: nothing is lost.

A real ``egressd run`` fed IPFIX over loopback, and a real Alertmanager that starts only after
egressd has fired five alerts and resolved two of them.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.integration_support import (
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
        "interval": "10s",
        "allowed_lateness": "1s",
        "unexpected_min_bytes": "1MB",
        "unexpected_window": "5m",
        "resolve_after": "30s",
    },
    http="127.0.0.1:{http}",
    netflow="127.0.0.1:{udp}",
    tail="""
[alertmanager]
urls = ["http://127.0.0.1:{am}"]
resend_interval = "1s"
timeout = "2s"

[alerts]
log_path = "{alert_log}"
""",
)

ALERTMANAGER_CONFIG = """
route:
  receiver: blackhole
receivers:
  - name: blackhole
"""

#: destinations that keep receiving (their alerts stay firing) and that stop (theirs resolve)
KEEP = {"CN": "47.100.23.45", "RU": "77.88.55.60", "BR": "200.147.67.142"}
STOP = {"JP": "133.242.0.3", "ZA": "196.25.1.1"}
BENIGN = "81.2.69.160"  # GB, expected
FIELDS = [(8, 4), (12, 4), (1, 8), (2, 8), (150, 4), (151, 4)]
STEP = 10
#: event time the replay covers: longer than window (5m) + resolve_after (30s) + an interval
SPAN = 420


def ipfix(records: list[tuple[str, int, int]]) -> bytes:
    rows: list[list[int | bytes]] = [
        [socket.inet_aton("10.20.0.17"), socket.inet_aton(dst), size, 1, end - 5, end]
        for dst, size, end in records
    ]
    sets = [template_set({300: FIELDS}, ipfix=True), data_set(300, FIELDS, rows)]
    return ipfix_datagram(sets, export_secs=int(time.time()))


def replay(udp: int) -> None:
    """Every destination gets 5 MB at first; then only KEEP and a benign one, for SPAN seconds."""
    now = int(time.time())
    start = now - SPAN - 15
    start -= start % STEP
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        first = [(dst, 5_000_000, start + 5) for dst in (*KEEP.values(), *STOP.values())]
        sock.sendto(ipfix(first), ("127.0.0.1", udp))
        for moment in range(start + 5 + STEP, start + SPAN, STEP):
            records = [(dst, 5_000_000, moment) for dst in KEEP.values()]
            records.append((BENIGN, 10_000, moment))
            sock.sendto(ipfix(records), ("127.0.0.1", udp))
            time.sleep(0.005)


def alert_log_events(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture
def alertmanager_program() -> str:
    return require_program("prometheus-alertmanager", "alertmanager")


@pytest.fixture
def egressd_with_dead_alertmanager(tmp_path: Path) -> Iterator[tuple[EgressdProcess, int, int]]:
    udp, http, am = free_udp_port(), free_port(), free_port()
    config = tmp_path / "egressd.toml"
    alert_log = tmp_path / "alerts.jsonl"
    config.write_text(CONFIG.format(udp=udp, http=http, am=am, alert_log=alert_log))
    egressd = EgressdProcess(config, f"127.0.0.1:{http}", tmp_path / "egressd.log")
    egressd.start()
    yield egressd, udp, am
    if egressd.alive():
        egressd.stop()


def test_alerts_fired_and_resolved_while_alertmanager_was_down_arrive(
    tmp_path: Path,
    alertmanager_program: str,
    egressd_with_dead_alertmanager: tuple[EgressdProcess, int, int],
) -> None:
    egressd, udp, am_port = egressd_with_dead_alertmanager
    replay(udp)

    # egressd itself: five fired, the two that stopped have resolved, three still fire.
    alert_log = tmp_path / "alerts.jsonl"

    def transitions() -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for event in alert_log_events(alert_log):
            labels = event["labels"]
            assert isinstance(labels, dict)
            out.setdefault(labels["dst_country"], []).append(str(event["status"]))
        return out

    expected = {**{c: ["firing"] for c in KEEP}, **{c: ["firing", "resolved"] for c in STOP}}
    wait_until(lambda: transitions() == expected, 20, what=f"alert log {expected}")

    def push_errors() -> float:
        return metric_value(egressd.metrics(), "egressd_alertmanager_push_errors_total") or 0.0

    wait_until(lambda: push_errors() >= 2, 10, what="failed pushes counted")
    text = egressd.metrics()
    assert (metric_value(text, "egressd_alertmanager_pushes_total") or 0.0) == 0
    assert (metric_value(text, "egressd_alertmanager_outbox_dropped_total") or 0.0) == 0
    # The latest state of each alert waits in the outbox, one entry per alert.
    assert metric_value(text, "egressd_alertmanager_outbox") == len(KEEP) + len(STOP)

    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(ALERTMANAGER_CONFIG)
    am_args = [
        alertmanager_program,
        f"--config.file={am_config}",
        f"--storage.path={tmp_path / 'am-data'}",
        f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",
    ]
    am = f"http://127.0.0.1:{am_port}"
    with running_program(am_args, tmp_path / "alertmanager.log"):
        wait_for_http(f"{am}/-/ready", timeout=30)

        def active_countries() -> list[str]:
            status, body = http_get(f"{am}/api/v2/alerts")
            if status != 200:
                return []
            return sorted(
                a["labels"]["dst_country"]
                for a in orjson.loads(body)
                if a["labels"].get("alertname") == "EgressUnexpectedDestination"
                and a["labels"].get("group") == "research"
                and a["status"]["state"] == "active"
            )

        wait_until(lambda: active_countries() == sorted(KEEP), 20, what="firing alerts arrive")

        def received(status: str) -> float:
            code, body = http_get(f"{am}/metrics")
            assert code == 200
            return (
                metric_value(body.decode(), "alertmanager_alerts_received_total", status=status)
                or 0.0
            )

        # Alertmanager's own count of what it was sent: each resolved alert once, as resolved.
        wait_until(lambda: received("resolved") == len(STOP), 10, what="resolved alerts arrive")
        assert received("firing") >= len(KEEP)
        # The v2 API leaves out alerts whose endsAt has passed even when asked for every
        # kind: the resolved ones are stored but no longer listed.
        status, body = http_get(
            f"{am}/api/v2/alerts?active=true&silenced=true&inhibited=true&unprocessed=true"
        )
        assert status == 200
        listed = {a["labels"]["dst_country"] for a in orjson.loads(body)}
        assert listed == set(KEEP), listed
        # Firing alerts carry an endsAt ahead of now, so Alertmanager keeps them active
        # between resends.
        for alert in orjson.loads(body):
            assert alert["endsAt"] > alert["updatedAt"], alert

    text = egressd.metrics()
    assert (metric_value(text, "egressd_alertmanager_pushes_total") or 0.0) >= 1
    assert egressd.stop() == 0, egressd.log()
