"""The capture variant's systemd unit: systemd itself accepts it, and its sandbox stays tight
(exposure score from ``systemd-analyze security``) while granting CAP_NET_RAW alone."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.integration_support import REPO, require_program

UNIT = REPO / "deploy" / "egressd-capture.service"
INSTALLED_BINARY = "/opt/egressd/bin/egressd"
MAX_EXPOSURE = 4.0


def unit_with_existing_binary(tmp_path: Path) -> Path:
    """A copy whose ExecStart names a program that exists here, so verify checks the rest."""
    binary = shutil.which("egressd")
    if binary is None:
        stub = tmp_path / "egressd"
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
        binary = str(stub)
    text = UNIT.read_text()
    assert INSTALLED_BINARY in text
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(INSTALLED_BINARY, binary))
    return copy


def directives(section: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line.strip("[]")
        elif line and not line.startswith("#") and current == section:
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


def test_systemd_verify_accepts_capture_unit(tmp_path: Path) -> None:
    analyze = require_program("systemd-analyze")
    unit = unit_with_existing_binary(tmp_path)
    result = subprocess.run(
        [analyze, "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, SYSTEMD_LOG_LEVEL="notice"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "", result.stdout
    assert "egressd-capture.service" not in result.stderr, result.stderr


def test_capture_unit_exposure_score(tmp_path: Path) -> None:
    analyze = require_program("systemd-analyze")
    unit = unit_with_existing_binary(tmp_path)
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    match = re.search(r"Overall exposure level for egressd-capture\.service: (\d+\.\d+)", output)
    assert match, output
    assert float(match.group(1)) <= MAX_EXPOSURE, output


def test_capture_unit_grants_cap_net_raw_alone() -> None:
    service = directives("Service")
    assert service["AmbientCapabilities"] == ["CAP_NET_RAW"]
    assert service["CapabilityBoundingSet"] == ["CAP_NET_RAW"]
    assert set(service["RestrictAddressFamilies"][0].split()) == {
        "AF_INET",
        "AF_INET6",
        "AF_UNIX",
        "AF_PACKET",
        "AF_NETLINK",
    }
    assert service["Type"] == ["notify"]
    assert service["User"] == ["egressd"]
    assert "DynamicUser" not in service
    assert service["StateDirectory"] == ["egressd"]
    assert service["WatchdogSec"] == ["30s"]
    assert service["ExecStart"] == [f"{INSTALLED_BINARY} run --config /etc/egressd/egressd.toml"]
