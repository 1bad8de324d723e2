"""deploy/ checked by the real tools: systemd-analyze, promtool, amtool, and Prometheus running
every Grafana panel query against a live egressd that received flows."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import orjson
import pytest

from tests.integration_support import (
    REPO,
    EgressdProcess,
    free_port,
    free_udp_port,
    http_get,
    require_program,
    research_config,
    running_program,
    wait_for_http,
    wait_until,
)
from tests.netflow_builders import data_set, ipfix_datagram, template_set

pytestmark = pytest.mark.integration

DEPLOY = REPO / "deploy"


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = require_program("systemd-analyze")
    # verify insists the ExecStart binary exists; point it at this checkout's egressd.
    unit = (DEPLOY / "egressd.service").read_text()
    local = tmp_path / "egressd.service"
    local.write_text(unit.replace("/opt/egressd/bin/egressd", f"{sys.executable} -m egressd.cli"))
    result = subprocess.run([analyze, "verify", str(local)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Type=notify" in unit and "WatchdogSec=" in unit and "StateDirectory=egressd" in unit


def test_unit_security_exposure_is_low() -> None:
    analyze = require_program("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=true", str(DEPLOY / "egressd.service")],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for egressd\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.5, result.stdout


def test_health_rules_pass_promtool() -> None:
    promtool = require_program("promtool")
    check = subprocess.run(
        [promtool, "check", "rules", "egressd-rules.yml"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", "egressd-rules.test.yml"],
        cwd=DEPLOY,
        capture_output=True,
        text=True,
    )
    assert test.returncode == 0, test.stdout + test.stderr


def test_alertmanager_route_example_is_valid() -> None:
    amtool = require_program("amtool")
    result = subprocess.run(
        [amtool, "check-config", str(DEPLOY / "alertmanager-route.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# -- every dashboard query returns data from a real Prometheus scraping a real egressd -----

EGRESSD_CONFIG = research_config(
    {
        "interval": "1m",
        "allowed_lateness": "10s",
        "unexpected_min_bytes": "100KB",
        "unexpected_window": "10m",
    },
    state="{state}",
    save_interval="1s",
    http="127.0.0.1:{http}",
    netflow="127.0.0.1:{udp}",
    tail="""
[[sources.netflow]]
listen = "127.0.0.1:{restricted}"
allowed_exporters = ["192.0.2.0/24"]

[alertmanager]
urls = ["http://127.0.0.1:{dead}"]
timeout = "1s"
""",
)

PROMETHEUS_CONFIG = """
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: egressd
    static_configs:
      - targets: ["127.0.0.1:{http}"]
"""

FIELDS = [(8, 4), (12, 4), (1, 8), (2, 8), (150, 4), (151, 4)]


def ipfix(records: list[tuple[str, str, int, float]]) -> bytes:
    rows = [
        [socket.inet_aton(src), socket.inet_aton(dst), size, 1, int(end) - 10, int(end)]
        for src, dst, size, end in records
    ]
    sets = [template_set({300: FIELDS}, ipfix=True), data_set(300, FIELDS, rows)]
    return ipfix_datagram(sets, export_secs=int(time.time()))


def panel_queries() -> list[tuple[str, str]]:
    dashboard = orjson.loads((DEPLOY / "grafana-dashboard.json").read_bytes())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    return out


def grafana_to_promql(expr: str) -> str:
    """Substitute what Grafana would: built-in intervals and 'All' template variables."""
    for name, value in (
        ("$__rate_interval", "1m"),
        ("$__interval", "15s"),
        ("$__range", "5m"),
    ):
        expr = expr.replace(name, value)
    return re.sub(r"\$(job|instance|group|country)\b", ".*", expr)


def test_every_dashboard_query_returns_data(tmp_path: Path) -> None:
    prometheus = require_program("prometheus")
    queries = panel_queries()
    assert len(queries) >= 10
    http, udp, restricted = free_port(), free_udp_port(), free_udp_port()
    config = tmp_path / "egressd.toml"
    config.write_text(
        EGRESSD_CONFIG.format(
            state=tmp_path / "state.json",
            http=http,
            udp=udp,
            restricted=restricted,
            dead=free_port(),
        )
    )
    egressd = EgressdProcess(config, f"127.0.0.1:{http}", tmp_path / "egressd.log")
    prom_port = free_port()
    prom_config = tmp_path / "prometheus.yml"
    prom_config.write_text(PROMETHEUS_CONFIG.format(http=http))
    prom_args = [
        prometheus,
        f"--config.file={prom_config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ]
    egressd.start()
    try:
        with running_program(prom_args, tmp_path / "prometheus.log"):
            base = f"http://127.0.0.1:{prom_port}"
            wait_for_http(f"{base}/-/ready", timeout=30)

            def scraped() -> bool:
                status, body = http_get(f"{base}/api/v1/query?query=up")
                return status == 200 and b'"1"' in body

            wait_until(scraped, 20, what="Prometheus scraping egressd")
            # Traffic for every panel: egress to an unexpected and an expected country,
            # ingress, east-west, garbage, and a datagram from an exporter not allowed.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for _ in range(4):
                    now = time.time()
                    sock.sendto(
                        ipfix(
                            [
                                ("10.20.0.17", "47.100.23.45", 3_000_000, now - 90),
                                ("10.20.0.17", "81.2.69.160", 500_000, now - 90),
                                ("8.8.8.8", "10.20.0.17", 20_000, now - 5),
                                ("10.1.0.1", "10.20.0.17", 30_000, now - 5),
                                ("10.20.0.18", "81.2.69.160", 1_000, now),
                            ]
                        ),
                        ("127.0.0.1", udp),
                    )
                    sock.sendto(b"\x00\x09broken", ("127.0.0.1", udp))
                    sock.sendto(
                        ipfix([("10.20.0.1", "81.2.69.160", 1, now)]), ("127.0.0.1", restricted)
                    )
                    time.sleep(1.5)
            time.sleep(3)  # a few more scrapes so every rate has two samples
            empty = []
            for title, expr in queries:
                promql = grafana_to_promql(expr)
                status, body = http_get(f"{base}/api/v1/query?query={urllib.parse.quote(promql)}")
                assert status == 200, (title, promql, body)
                result = orjson.loads(body)["data"]["result"]
                if not result:
                    empty.append(f"{title}: {promql}")
            assert not empty, "panels without data:\n" + "\n".join(empty)
    finally:
        assert egressd.stop() == 0, egressd.log()
