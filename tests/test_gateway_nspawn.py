"""The gateway install under a real systemd: a Debian 12 container (systemd 252 as PID 1)
booted with systemd-nspawn, egressd installed the way deploy/README.md says (a venv at
/opt/egressd from local wheels, ``egressd install-units``), then driven with systemctl.

The tests share one booted machine and run in file order (each one leaves egressd running);
every test also stands alone after the install fixture.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.integration_support import REPO, missing, wait_until
from tests.nspawn_support import (
    Machine,
    NspawnError,
    cached_rootfs,
    copy_rootfs,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

WHEELS_INSIDE = "/run/egressd-wheels"
CONFIG = "/etc/egressd/egressd.toml"
STATE = "var/lib/egressd/state.json"
API = "http://127.0.0.1:9108"
#: state file entries that are not learned data (when it was written, source positions)
VOLATILE = frozenset({"saved_at", "sources"})

#: a group the reload adds: its alerts carry group="lab" only once the new file is in force
LAB_GROUP = """
[[groups]]
name = "lab"
sources = ["10.40.0.0/16"]
expected_countries = ["GB", "US"]
"""
#: capture needs CAP_NET_RAW (the capture unit's); the filter matches nothing this test sends,
#: so the test's own HTTP and NetFlow packets on lo do not move event time
CAPTURE_SOURCE = """
[[sources.capture]]
interface = "lo"
bpf = "udp port 9"
"""

GET = """
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        status, body = r.status, r.read()
except urllib.error.HTTPError as e:
    status, body = e.code, e.read()
except OSError:
    status, body = 0, b""
sys.stdout.write(f"{status}\\n")
sys.stdout.flush()
sys.stdout.buffer.write(body)
"""


def _require_host() -> None:
    if sys.platform != "linux":
        missing("systemd-nspawn needs Linux")
    if os.geteuid() != 0:
        missing("booting a container with systemd-nspawn needs root")
    for program, package in (
        ("systemd-nspawn", "systemd-container"),
        ("nsenter", "util-linux"),
        ("debootstrap", "debootstrap"),
    ):
        if shutil.which(program) is None:
            missing(f"{program} is not installed (Debian package {package})")


@pytest.fixture(scope="session")
def rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_host()
    log = tmp_path_factory.mktemp("debootstrap") / "debootstrap.log"
    try:
        return cached_rootfs(log)
    except (NspawnError, OSError, subprocess.SubprocessError) as exc:
        missing(f"cannot build a Debian rootfs with debootstrap: {exc}")
        raise


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """egressd's wheel and its dependencies' wheels, built on this host (the container has
    no index: it installs from these files only)."""
    out = tmp_path_factory.mktemp("wheels")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if result.returncode != 0:
        missing(f"pip wheel failed (needs the package index):\n{result.stderr[-2000:]}")
    assert list(out.glob("egressd-*.whl")), result.stdout
    return out


class Gateway:
    """The booted machine plus what the tests ask of egressd inside it."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    @property
    def root(self) -> Path:
        return self.machine.rootfs

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.machine.run(list(command), check=check)

    def http(self, path: str) -> tuple[int, bytes]:
        out = subprocess.run(
            [
                "nsenter",
                f"--target={self.machine.leader}",
                "--all",
                "--root",
                "--wd",
                "--",
                "/usr/bin/python3",
                "-c",
                GET,
                API + path,
            ],
            capture_output=True,
            timeout=30,
            check=False,
        ).stdout
        status, _, body = out.partition(b"\n")
        return int(status or 0), body

    def metric(self, name: str, labels: str = "") -> float | None:
        """The first sample of ``name`` whose label text contains ``labels``."""
        status, body = self.http("/metrics")
        if status != 200:
            return None
        pattern = rf"^{re.escape(name)}(?:{{[^}}]*{re.escape(labels)}[^}}]*}})? (\S+)$"
        match = re.search(pattern, body.decode(), re.M)
        return float(match.group(1)) if match else None

    def baselines(self) -> dict[tuple[str, str], int]:
        status, body = self.http("/api/v1/baselines")
        assert status == 200, (status, body[:500])
        return {(b["group"], b["destination"]): int(b["observations"]) for b in orjson.loads(body)}

    def show(self, unit: str) -> dict[str, str]:
        return self.machine.show(
            unit, "ActiveState", "SubState", "Result", "MainPID", "NRestarts", "WatchdogUSec"
        )

    def describe(self, unit: str = "egressd.service") -> str:
        status = self.run("systemctl", "status", "--lines=0", unit, check=False).stdout
        return status + "\n" + self.machine.journal(unit)[-5000:]

    def wait_active(self, unit: str, timeout: float = 60.0) -> None:
        def running() -> bool:
            return self.show(unit).get("SubState") == "running" and self.http("/readyz")[0] == 200

        wait_until(running, timeout, 0.5, f"{unit} running and ready", lambda: self.describe(unit))

    def write_config(self, *extra: str, interval: str = "5m") -> None:
        """The installed example with periodic saves off (only stops save), plus ``extra``."""
        example = (REPO / "config" / "egressd.toml").read_text()
        text, n = re.subn(r'(?m)^save_interval = "[^"]*"', 'save_interval = "1h"', example)
        assert n == 1
        text, n = re.subn(r'(?m)^interval = "5m"', f'interval = "{interval}"', text)
        assert n == 1
        self.machine.write(CONFIG, text + "".join(extra))

    def demo(self, source: str, destination: str, pages: bool = False) -> str:
        """``egressd demo`` from ``source``: history, then 2 GB to ``destination`` ending now.

        Only the first demo in a machine pages: later ones find their history and the
        interval they close already past the watermark; their last minutes stay in the open
        interval (what a stop must save). Those are interrupted once sent instead of waiting
        for an alert that will not come.
        """
        command = [
            "/opt/egressd/bin/egressd",
            "demo",
            "--group-source",
            source,
            "--destination",
            destination,
            "--bytes",
            "2GB",
        ]
        if not pages:
            command = ["timeout", "--signal=INT", "8", *command]
        out = self.run(*command, check=pages).stdout
        assert "egressd demo: sent" in out, out
        if pages:
            assert "EgressUnexpectedDestination" in out, out + self.describe()
        return out

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = orjson.loads((self.root / STATE).read_bytes())
        return state

    def stop_and_compare(self, unit: str, saved: dict[str, Any]) -> None:
        """Stop ``unit`` at once: what it saves must be what it restored from ``saved``.

        Nothing moves event time within seconds of a start (no records, no idle advance
        yet), so every learned part of the file comes back unchanged: not a byte lost.
        """
        self.run("systemctl", "stop", unit)
        again = self.state()
        assert again["saved_at"] != saved["saved_at"], "the stop did not save"
        for section in sorted(set(saved) | set(again)):
            if section in VOLATILE:
                continue
            assert again.get(section) == saved.get(section), f"state section {section!r} changed"

    def assert_clean_stop(self, unit: str, since: float) -> None:
        """``unit`` is stopped, not failed, and its final save (after ``since``) worked."""
        shown = self.show(unit)
        assert (shown["ActiveState"], shown["Result"]) == ("inactive", "success"), (
            shown,
            self.describe(unit),
        )
        journal = self.machine.journal(unit, since=f"@{int(since)}")
        assert "Stopped " in journal, journal
        assert "Permission denied" not in journal, journal
        assert "ERROR" not in journal, journal


@pytest.fixture(scope="module")
def gateway(
    rootfs: Path, wheels: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """A booted Debian 12 with egressd installed as deploy/README.md says."""
    base = tmp_path_factory.mktemp("gateway")
    copy_rootfs(rootfs, base / "rootfs", "gateway")
    machine = Machine(base / "rootfs", base / "console.log", [(wheels, WHEELS_INSIDE)])
    try:
        machine.boot()
    except NspawnError as exc:
        machine.terminate()
        missing(f"systemd-nspawn cannot boot a container here: {exc}")
    try:
        # The documented install, word for word (deploy/README.md "Install"), from local wheels.
        machine.run(["python3", "-m", "venv", "/opt/egressd"])
        machine.run(
            [
                "/opt/egressd/bin/pip",
                "install",
                "--no-index",
                "--find-links",
                WHEELS_INSIDE,
                "egressd",
            ],
            timeout=300,
        )
        machine.run(["/opt/egressd/bin/egressd", "install-units"])
        yield Gateway(machine)
    finally:
        machine.terminate()


# -- the install ---------------------------------------------------------------------------------


def test_install_units_places_the_package_files(gateway: Gateway) -> None:
    root = gateway.root
    # The wheel carried the units, the sysusers entry, the guide and the example: same bytes.
    for inside, source in (
        ("etc/systemd/system/egressd.service", "deploy/egressd.service"),
        ("etc/systemd/system/egressd-capture.service", "deploy/egressd-capture.service"),
        ("etc/sysusers.d/egressd.conf", "deploy/egressd.sysusers"),
        ("usr/local/share/doc/egressd/README.md", "deploy/README.md"),
        ("etc/egressd/egressd.toml", "config/egressd.toml"),
    ):
        assert (root / inside).read_bytes() == (REPO / source).read_bytes(), inside
    passwd = gateway.run("getent", "passwd", "egressd").stdout
    assert passwd.startswith("egressd:"), passwd
    # systemd 252 itself checks both units, with the real binaries in place.
    verify = gateway.run(
        "systemd-analyze",
        "verify",
        "/etc/systemd/system/egressd.service",
        "/etc/systemd/system/egressd-capture.service",
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "egressd" not in verify.stderr, verify.stderr
    docs = gateway.machine.show("egressd.service", "Documentation")["Documentation"]
    assert docs.startswith("file://"), docs
    assert (root / docs.removeprefix("file:///")).is_file(), docs
    check = gateway.run("/opt/egressd/bin/egressd", "check-config", "--config", CONFIG)
    assert "is valid" in check.stdout


# -- enable, run, page ---------------------------------------------------------------------------


def test_enable_now_runs_with_watchdog_and_pages(gateway: Gateway) -> None:
    gateway.write_config()
    gateway.run("systemctl", "enable", "--now", "egressd.service")
    gateway.wait_active("egressd.service")
    shown = gateway.show("egressd.service")
    assert shown["WatchdogUSec"] == "30s", shown
    user = gateway.machine.show("egressd.service", "User")["User"]
    assert user == "egressd"
    status = gateway.run("systemctl", "status", "egressd.service").stdout
    assert "active (running)" in status and "Status:" in status, status
    assert (gateway.root / "var/lib/egressd").stat().st_uid == int(
        gateway.run("id", "-u", "egressd").stdout
    )
    out = gateway.demo("10.20.0.17", "47.100.23.45", pages=True)
    assert '"group": "research"' in out, out
    status_code, body = gateway.http("/api/v1/alerts")
    assert status_code == 200 and b"47.100.23.45" in body, body[:1000]


# -- reload ---------------------------------------------------------------------------------------


def test_reload_applies_a_changed_config_and_refuses_a_broken_one(gateway: Gateway) -> None:
    gateway.write_config()
    gateway.run("systemctl", "start", "egressd.service")
    gateway.wait_active("egressd.service")
    pid = gateway.show("egressd.service")["MainPID"]
    reloads = gateway.metric("egressd_config_reloads_total") or 0.0

    # systemctl reload returns once the new file is in force, not once it was asked for.
    gateway.write_config(LAB_GROUP)
    gateway.run("systemctl", "reload", "egressd.service")
    assert gateway.metric("egressd_config_reloads_total") == reloads + 1, gateway.describe()
    assert gateway.show("egressd.service")["MainPID"] == pid  # reloaded, not restarted
    # 10.40.0.9 was in no group ("other") before: its bytes now count for "lab".
    gateway.demo("10.40.0.9", "47.100.23.99")
    lab = gateway.metric("egressd_egress_bytes_total", 'group="lab"')
    assert lab is not None and lab > 0, gateway.http("/metrics")[1].decode()

    # A broken file: systemctl reload fails, the daemon is not even signalled.
    errors = gateway.metric("egressd_config_reload_errors_total") or 0.0
    gateway.machine.write(CONFIG, '[detection]\ninterval = "banana"\n')
    _reload_fails_and_keeps_running(gateway, pid, "is invalid")
    assert gateway.metric("egressd_config_reloads_total") == reloads + 1
    assert gateway.metric("egressd_config_reload_errors_total") == errors

    # A valid file the running daemon refuses (a new interval): systemctl reload fails with
    # the daemon's reason, and the daemon goes on with the configuration it had.
    gateway.write_config(LAB_GROUP, interval="10m")
    _reload_fails_and_keeps_running(gateway, pid, "refused: detection.interval cannot change")
    assert gateway.metric("egressd_config_reload_errors_total") == errors + 1
    assert gateway.metric("egressd_config_reloads_total") == reloads + 1

    # SIGHUP straight to the daemon (no ExecReload check): it refuses and keeps running.
    gateway.machine.write(CONFIG, '[detection]\ninterval = "banana"\n')
    gateway.run("systemctl", "kill", "--kill-who=main", "--signal=HUP", "egressd.service")
    wait_until(
        lambda: gateway.metric("egressd_config_reload_errors_total") == errors + 2,
        30,
        0.5,
        "the daemon to refuse the broken file",
        gateway.describe,
    )
    assert gateway.show("egressd.service")["MainPID"] == pid
    assert gateway.metric("egressd_config_reloads_total") == reloads + 1
    gateway.write_config(LAB_GROUP)


def _reload_fails_and_keeps_running(gateway: Gateway, pid: str, reason: str) -> None:
    """``systemctl reload`` exits non-zero, the journal says why, and the same daemon runs on."""
    failed = gateway.run("systemctl", "reload", "egressd.service", check=False)
    assert failed.returncode != 0, failed
    assert reason in gateway.machine.journal("egressd.service")
    shown = gateway.show("egressd.service")
    assert (shown["ActiveState"], shown["MainPID"]) == ("active", pid), shown


# -- watchdog -------------------------------------------------------------------------------------


def test_watchdog_restarts_a_stopped_daemon(gateway: Gateway) -> None:
    gateway.run("systemctl", "start", "egressd.service")
    gateway.wait_active("egressd.service")
    before = gateway.show("egressd.service")
    gateway.run("systemctl", "kill", "--kill-who=main", "--signal=STOP", "egressd.service")
    wait_until(
        lambda: int(gateway.show("egressd.service")["NRestarts"]) > int(before["NRestarts"]),
        90,
        1.0,
        "systemd's watchdog to restart the stopped daemon",
        gateway.describe,
    )
    gateway.wait_active("egressd.service")
    assert gateway.show("egressd.service")["MainPID"] != before["MainPID"]
    assert "Watchdog timeout" in gateway.machine.journal("egressd.service")


# -- state: restart, switching units, poweroff ---------------------------------------------------


def test_restart_keeps_what_was_learned(gateway: Gateway) -> None:
    gateway.write_config(LAB_GROUP)
    gateway.run("systemctl", "start", "egressd.service")
    gateway.wait_active("egressd.service")
    gateway.demo("10.20.0.17", "47.100.23.50")
    before = gateway.baselines()
    assert before
    started = time.time()
    gateway.run("systemctl", "restart", "egressd.service")
    gateway.wait_active("egressd.service")
    saved = gateway.state()
    assert saved["saved_at"] >= started
    assert b"47.100.23.50" in (gateway.root / STATE).read_bytes()  # the open interval too
    assert set(gateway.baselines()) == set(before)
    gateway.stop_and_compare("egressd.service", saved)


def _switch(gateway: Gateway, old: str, new: str) -> dict[str, Any]:
    """Start ``new`` while ``old`` runs; ``old`` must stop cleanly and save before ``new``
    loads. Returns the state ``old`` saved."""
    started = time.time()
    gateway.run("systemctl", "start", new)
    gateway.wait_active(new)
    gateway.assert_clean_stop(old, started)
    saved = gateway.state()
    assert saved["saved_at"] >= started, "the stopped unit did not save on its way out"
    journal = gateway.machine.journal(new, since=f"@{int(started)}")
    assert "restored state from /var/lib/egressd/state.json" in journal, journal
    return saved


def test_switching_to_the_capture_unit_and_back_keeps_state(gateway: Gateway) -> None:
    gateway.write_config(LAB_GROUP)
    gateway.run("systemctl", "start", "egressd.service")
    gateway.wait_active("egressd.service")
    gateway.demo("10.20.0.17", "47.100.23.60")
    learned = set(gateway.baselines())

    gateway.write_config(LAB_GROUP, CAPTURE_SOURCE)
    saved = _switch(gateway, "egressd.service", "egressd-capture.service")
    assert b"47.100.23.60" in (gateway.root / STATE).read_bytes()
    assert set(gateway.baselines()) == learned
    assert gateway.metric("egressd_source_ready", 'source="capture:lo"') == 1.0
    gateway.stop_and_compare("egressd-capture.service", saved)
    gateway.run("systemctl", "start", "egressd-capture.service")
    gateway.wait_active("egressd-capture.service")
    gateway.demo("10.30.0.5", "47.100.23.70")  # sent while capture runs

    gateway.write_config(LAB_GROUP)
    saved = _switch(gateway, "egressd-capture.service", "egressd.service")
    assert b"47.100.23.70" in (gateway.root / STATE).read_bytes()
    assert set(gateway.baselines()) >= learned
    gateway.stop_and_compare("egressd.service", saved)
    owner = gateway.run("stat", "-c", "%U", "/var/lib/egressd", "/var/lib/egressd/state.json")
    assert owner.stdout.split() == ["egressd", "egressd"]
    gateway.run("systemctl", "start", "egressd.service")
    gateway.wait_active("egressd.service")


def test_poweroff_saves_and_the_next_boot_restores(gateway: Gateway) -> None:
    gateway.write_config(LAB_GROUP)
    gateway.run("systemctl", "start", "egressd.service")
    gateway.wait_active("egressd.service")
    gateway.demo("10.40.0.9", "47.100.23.80")
    learned = set(gateway.baselines())
    started = time.time()
    assert gateway.machine.poweroff() == 0, gateway.machine.console()
    saved = gateway.state()
    assert saved["saved_at"] >= started
    assert b"47.100.23.80" in (gateway.root / STATE).read_bytes()
    gateway.machine.boot()  # enabled: egressd starts with the machine
    gateway.wait_active("egressd.service")
    assert set(gateway.baselines()) == learned
    gateway.stop_and_compare("egressd.service", saved)


def test_upgrade_from_dynamic_user_units_keeps_state(gateway: Gateway) -> None:
    """Earlier units ran egressd as a DynamicUser= (state under /var/lib/private/egressd);
    installing these units over them must hand the state to the user egressd."""
    shipped = (REPO / "deploy" / "egressd.service").read_text()
    earlier = shipped.replace("User=egressd\nGroup=egressd\n", "DynamicUser=yes\n")
    assert earlier != shipped
    gateway.write_config(LAB_GROUP)
    gateway.run("systemctl", "stop", "egressd.service")
    gateway.machine.write("/etc/systemd/system/egressd.service", earlier)
    gateway.run("systemctl", "daemon-reload")
    gateway.run("systemctl", "start", "egressd.service")
    gateway.wait_active("egressd.service")
    assert (gateway.root / "var/lib/egressd").is_symlink()  # systemd's DynamicUser layout
    learned = set(gateway.baselines())
    gateway.run("systemctl", "stop", "egressd.service")
    saved = gateway.state()

    started = time.time()
    out = gateway.run("/opt/egressd/bin/egressd", "install-units").stdout
    assert "updated /etc/systemd/system/egressd.service" in out, out
    gateway.run("systemctl", "start", "egressd.service")
    gateway.wait_active("egressd.service")
    journal = gateway.machine.journal("egressd.service", since=f"@{int(started)}")
    assert "restored state from /var/lib/egressd/state.json" in journal, journal
    state_dir = gateway.root / "var/lib/egressd"
    assert not state_dir.is_symlink() and state_dir.is_dir()
    owner = gateway.run("stat", "-c", "%U", "/var/lib/egressd/state.json").stdout.strip()
    assert owner == "egressd"
    assert set(gateway.baselines()) == learned
    gateway.stop_and_compare("egressd.service", saved)
