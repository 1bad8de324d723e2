"""``egressd demo`` tells the truth: it exits 0 only when the running egressd fired.

It finds the collector and the API from ``--config`` (or ``--target``/``--http``), and
exits non-zero, saying why, when nothing receives its datagrams, when the API cannot be
reached, or when no alert appears in time.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import orjson

from tests.integration_support import REPO, EgressdProcess, free_port, free_udp_port


def _demo(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egressd.cli", "demo", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        check=False,
    )


def _config(tmp_path: Path, extra: str = "") -> tuple[Path, int, int]:
    udp, http = free_udp_port(), free_port()
    config = tmp_path / "egressd.toml"
    config.write_text(
        f'[http]\nlisten = "127.0.0.1:{http}"\n[[sources.netflow]]\nlisten = "127.0.0.1:{udp}"\n'
        + extra
    )
    return config, udp, http


def test_demo_reads_ports_from_config_and_shows_the_alert(tmp_path: Path) -> None:
    # Neither port is a default one: the demo can only find them through --config.
    config, _udp, http = _config(tmp_path)
    egressd = EgressdProcess(config, f"127.0.0.1:{http}", tmp_path / "egressd.log")
    egressd.start()
    try:
        demo = _demo("--config", str(config))
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "egressd fired" in demo.stdout
        assert f"curl -s http://127.0.0.1:{http}/api/v1/alerts" in demo.stdout
        shown = demo.stdout.split("egressd fired", 1)[1]
        alert = orjson.loads(shown[shown.index("{") : shown.rindex("}") + 1])
        assert alert["labels"]["dst_country"] == "CN"
        # (which detector answers first depends on the detectors configured by default)
        assert alert["labels"]["alertname"].startswith("Egress")
        # The README says annotations are the evidence when it fired, not a running total.
        assert 100_000_000 <= int(alert["annotations"]["bytes"]) < 6_000_000_000
        readme = (REPO / "README.md").read_text(encoding="utf-8")
        assert "evidence at the moment it fired, not a running total" in readme
    finally:
        assert egressd.stop() == 0, egressd.log()


def test_demo_fails_when_nothing_receives_the_datagrams(tmp_path: Path) -> None:
    started = time.monotonic()
    demo = _demo("--target", f"127.0.0.1:{free_udp_port()}", "--http", f"127.0.0.1:{free_port()}")
    assert demo.returncode == 1
    assert "nothing receives datagrams at 127.0.0.1:" in demo.stderr
    assert "sent" not in demo.stdout
    assert time.monotonic() - started < 30  # it says so at once, not after a timeout


def test_demo_fails_when_the_api_is_elsewhere(tmp_path: Path) -> None:
    config, udp, http = _config(tmp_path)
    egressd = EgressdProcess(config, f"127.0.0.1:{http}", tmp_path / "egressd.log")
    egressd.start()
    try:
        wrong = f"127.0.0.1:{free_port()}"
        demo = _demo("--target", f"127.0.0.1:{udp}", "--http", wrong)
        assert demo.returncode == 1
        assert f"cannot reach http://{wrong}/api/v1/alerts" in demo.stderr
        assert "--http HOST:PORT or --config FILE" in demo.stderr
    finally:
        assert egressd.stop() == 0, egressd.log()


def test_demo_fails_when_no_alert_appears_in_time(tmp_path: Path) -> None:
    # 1 MB is under every detector's floor: the datagrams arrive, nothing pages.
    config, _udp, http = _config(tmp_path)
    egressd = EgressdProcess(config, f"127.0.0.1:{http}", tmp_path / "egressd.log")
    egressd.start()
    try:
        demo = _demo("--config", str(config), "--bytes", "1MB", "--timeout", "3")
        assert demo.returncode == 1, demo.stdout + demo.stderr
        assert "sent" in demo.stdout
        assert "no alert naming 47.100.23.45 within 3s" in demo.stderr
    finally:
        assert egressd.stop() == 0, egressd.log()
