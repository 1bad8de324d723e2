"""The gateway install without booting anything: the package data is the deploy/ files,
``egressd install-units`` into a directory, the two units' shared identity and ordering, and
``egressd reload`` (the units' ExecReload) against a real daemon.

tests/test_gateway_nspawn.py runs the same install under a real systemd.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from egressd import install
from tests.integration_support import (
    REPO,
    EgressdProcess,
    free_port,
    free_udp_port,
    metric_value,
)

SOURCES = {
    "egressd.service": REPO / "deploy" / "egressd.service",
    "egressd-capture.service": REPO / "deploy" / "egressd-capture.service",
    "egressd.sysusers": REPO / "deploy" / "egressd.sysusers",
    "deploy-README.md": REPO / "deploy" / "README.md",
    "egressd.toml": REPO / "config" / "egressd.toml",
}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egressd.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        check=False,
    )


def directives(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values, in file order (a unit file's repeated keys kept)."""
    found: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found.setdefault(section, {}).setdefault(key, []).append(value)
    return found


# -- package data: one source of truth --------------------------------------------------------


def test_package_data_is_the_deploy_and_config_files() -> None:
    shipped = {placed.resource for placed in (*install.MANAGED, install.EXAMPLE_CONFIG)}
    assert shipped == set(SOURCES)
    for resource, source in SOURCES.items():
        link = REPO / "egressd" / "data" / resource
        # A symlink, not a copy: the wheel gets the file's content, nobody edits two files.
        assert link.is_symlink(), f"{link} must link to {source}"
        assert link.resolve() == source.resolve()
        assert install.resource_bytes(resource) == source.read_bytes()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "data/*" in pyproject["tool"]["setuptools"]["package-data"]["egressd"]


# -- install-units into a directory -------------------------------------------------------------


def test_install_units_places_every_file_and_keeps_the_admins_config(tmp_path: Path) -> None:
    result = run_cli("install-units", "--root", str(tmp_path))
    assert result.returncode == 0, result.stderr
    for placed in (*install.MANAGED, install.EXAMPLE_CONFIG):
        target = tmp_path / placed.target.relative_to("/")
        assert target.read_bytes() == SOURCES[placed.resource].read_bytes(), target
        assert target.stat().st_mode & 0o777 == 0o644
    assert "warning: the units run /opt/egressd/bin/egressd" in result.stdout

    # An upgrade: units replaced, the admin's configuration never.
    unit = tmp_path / "etc/systemd/system/egressd.service"
    unit.write_text("[Service]\nExecStart=/usr/bin/egressd run\n")
    config = tmp_path / "etc/egressd/egressd.toml"
    config.write_text('[networks]\nlocal = ["10.0.0.0/8"]\n')
    (tmp_path / "opt/egressd/bin").mkdir(parents=True)
    (tmp_path / "opt/egressd/bin/egressd").write_text("")
    again = run_cli("install-units", "--root", str(tmp_path))
    assert again.returncode == 0, again.stderr
    assert f"updated {unit}" in again.stdout
    assert f"unchanged {tmp_path}/etc/systemd/system/egressd-capture.service" in again.stdout
    assert unit.read_bytes() == SOURCES["egressd.service"].read_bytes()
    assert config.read_text() == '[networks]\nlocal = ["10.0.0.0/8"]\n'
    assert "warning" not in again.stdout


def test_uninstall_removes_units_and_keeps_config_and_state(tmp_path: Path) -> None:
    assert run_cli("install-units", "--root", str(tmp_path)).returncode == 0
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "egressd.service").symlink_to("/etc/systemd/system/egressd.service")
    state = tmp_path / "var/lib/egressd/state.json"
    state.parent.mkdir(parents=True)
    state.write_text("{}")
    dropin = tmp_path / "etc/systemd/system/egressd.service.d/local.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[Service]\nLimitNOFILE=4096\n")

    result = run_cli("install-units", "--root", str(tmp_path), "--uninstall")
    assert result.returncode == 0, result.stderr
    for placed in install.MANAGED:
        assert not (tmp_path / placed.target.relative_to("/")).exists(), placed.target
    assert not (wants / "egressd.service").is_symlink()
    assert not (tmp_path / "usr/local/share/doc/egressd").exists()
    assert (tmp_path / "etc/egressd/egressd.toml").exists()
    assert state.read_text() == "{}" and dropin.exists()
    assert "kept" in result.stdout


def test_install_units_needs_root_for_the_running_system(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Run as any user other than root (CI is root, so the user id is what is changed): nothing
    # is written and the refusal says why.
    monkeypatch.setattr(install.os, "geteuid", lambda: 1000)

    def no_install(root: Path, out: object) -> int:
        raise AssertionError(f"install-units installed into {root} without root")

    monkeypatch.setattr(install, "install", no_install)
    monkeypatch.setattr(install, "uninstall", no_install)
    for remove in (False, True):
        assert install.install_units_main(Path("/"), remove) == 1
        assert "needs root" in capsys.readouterr().err


def test_install_units_into_a_root_that_is_no_directory_writes_nothing(tmp_path: Path) -> None:
    mistyped = tmp_path / "imgae"
    result = run_cli("install-units", "--root", str(mistyped))
    assert result.returncode == 1
    assert f"--root {mistyped} is not a directory" in result.stderr
    assert not mistyped.exists()
    # A root where a file cannot be written: the file is named, no traceback.
    root = tmp_path / "image"
    (root / "etc").mkdir(parents=True)
    (root / "etc/systemd").write_text("a file where a directory belongs")
    blocked = run_cli("install-units", "--root", str(root))
    assert blocked.returncode == 1
    assert blocked.stderr.startswith("egressd install-units: cannot write "), blocked.stderr
    assert "etc/systemd/system" in blocked.stderr and "Traceback" not in blocked.stderr


# -- the units: one identity, ordered switching, no /bin/kill -----------------------------------


def test_both_units_run_as_the_sysusers_user_from_the_install_prefix() -> None:
    sysusers = [
        line.split()
        for line in SOURCES["egressd.sysusers"].read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [(fields[0], fields[1]) for fields in sysusers] == [("u", "egressd")]
    binary = f"{install.PREFIX}/bin/egressd"
    for name in install.UNITS:
        unit = directives(SOURCES[name])
        service = unit["Service"]
        assert service["User"] == ["egressd"] and service["Group"] == ["egressd"], name
        assert "DynamicUser" not in service, name  # a second dynamic user broke switching
        assert service["StateDirectory"] == ["egressd"]
        assert service["ExecStart"] == [f"{binary} run --config {install.CONFIG}"]
        assert service["ExecReload"] == [
            f"{binary} reload --config {install.CONFIG} --pid $MAINPID"
        ]
        docs = unit["Unit"]["Documentation"]
        assert docs == [f"file://{install.MANAGED[3].target}"], name


def test_switching_units_is_a_conflict_with_an_order() -> None:
    plain = directives(SOURCES["egressd.service"])["Unit"]
    capture = directives(SOURCES["egressd-capture.service"])["Unit"]
    assert "egressd-capture.service" in plain["Conflicts"]
    assert "egressd.service" in capture["Conflicts"]
    # One ordering relation between them (declared from both sides, the same direction): the
    # stop job of one then runs before the start job of the other, whichever way one switches.
    assert "egressd-capture.service" in plain["Before"]
    assert "egressd.service" in " ".join(capture["After"])
    assert "egressd-capture.service" not in " ".join(plain.get("After", []))
    assert "egressd.service" not in " ".join(capture.get("Before", []))


def test_the_capture_unit_differs_from_the_plain_one_where_the_guide_says() -> None:
    plain = directives(SOURCES["egressd.service"])["Service"]
    capture = directives(SOURCES["egressd-capture.service"])["Service"]
    differ = {key for key in plain.keys() | capture.keys() if plain.get(key) != capture.get(key)}
    guide = SOURCES["deploy-README.md"].read_text(encoding="utf-8")
    variant = guide.split("## Capture variant", 1)[1].split("\n## ", 1)[0]
    bullets = re.findall(r"^- (.*)$", variant, re.M)
    listed = {
        name
        for bullet in bullets
        for name in re.findall(r"`([A-Za-z]+)=[^`]*`", bullet.split(":")[0])
    }
    assert sorted(differ) == sorted(listed)
    count = ["no", "one", "two", "three", "four", "five", "six"][len(bullets)]
    assert f"same sandbox with {count} differences" in variant


# -- egressd reload -------------------------------------------------------------------------------


DAEMON_CONFIG = """
[networks]
local = ["10.0.0.0/8"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16"]
expected_countries = {countries}

[http]
listen = "127.0.0.1:{http}"

[[sources.netflow]]
listen = "127.0.0.1:{udp}"
"""


def test_reload_command_returns_once_the_daemon_applied_or_refused_the_file(
    tmp_path: Path,
) -> None:
    """``systemctl reload`` must tell whether the file is in force: the command answers only
    after the daemon has applied it, fails when the daemon refuses what the file check
    cannot judge alone (a changed interval, known only to the running daemon), and fails
    without asking the daemon when the file itself is invalid."""
    config = tmp_path / "egressd.toml"
    http, udp = free_port(), free_udp_port()
    config.write_text(DAEMON_CONFIG.format(countries='["GB"]', http=http, udp=udp))
    daemon = EgressdProcess(config, f"127.0.0.1:{http}", tmp_path / "egressd.log")
    daemon.start()
    try:
        assert daemon.process is not None
        pid = str(daemon.process.pid)

        def counts() -> tuple[float | None, float | None]:
            text = daemon.metrics()
            return (
                metric_value(text, "egressd_config_reloads_total"),
                metric_value(text, "egressd_config_reload_errors_total"),
            )

        for round_ in (1, 2):  # twice: the first must not have been a lucky race
            countries = '["GB", "US"]' if round_ == 1 else '["GB"]'
            config.write_text(DAEMON_CONFIG.format(countries=countries, http=http, udp=udp))
            result = run_cli("reload", "--config", str(config), "--pid", pid)
            assert result.returncode == 0, result.stderr
            assert counts() == (float(round_), 0.0)  # in force when the command returned

        changed = DAEMON_CONFIG.format(countries='["GB"]', http=http, udp=udp)
        config.write_text(changed + '\n[detection]\ninterval = "10m"\n')
        refused = run_cli("reload", "--config", str(config), "--pid", pid)
        assert refused.returncode == 2, refused
        assert "detection.interval" in refused.stderr and "nothing reloaded" in refused.stderr
        assert counts() == (2.0, 1.0)
        assert daemon.alive()

        # A file the command's own check refuses: the daemon is not asked (no error counted).
        config.write_text('[detection]\ninterval = "banana"\n')
        broken = run_cli("reload", "--config", str(config), "--pid", pid)
        assert broken.returncode == 2, broken
        assert "detection.interval" in broken.stderr and "nothing reloaded" in broken.stderr
        assert counts() == (2.0, 1.0)
        assert daemon.alive()
    finally:
        assert daemon.stop() == 0


def test_reload_command_checks_the_file_the_daemon_reads_not_another(tmp_path: Path) -> None:
    running = tmp_path / "egressd.toml"
    running.write_text('[networks]\nlocal = ["10.0.0.0/8"]\n')
    other = tmp_path / "new.toml"
    other.write_text('[networks]\nlocal = ["10.0.0.0/8"]\n')
    # A process whose command line is a daemon's with a relative --config (not egressd).
    code = "import time; time.sleep(30)"
    argv = [sys.executable, "-c", code, "run", "--config", running.name]
    with subprocess.Popen(argv, cwd=tmp_path) as child:
        try:
            wrong = run_cli("reload", "--config", str(other), "--pid", str(child.pid))
            assert wrong.returncode == 2, wrong
            assert f"process {child.pid} reads {running}, not {other}" in wrong.stderr
            assert "nothing reloaded" in wrong.stderr
            # Its own file passes the check: the process is then asked (and is no egressd).
            right = run_cli("reload", "--config", str(running), "--pid", str(child.pid))
            assert right.returncode == 1 and "is it egressd" in right.stderr, right
        finally:
            child.kill()


def test_reload_command_does_not_signal_when_the_file_is_broken(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[networks\n")
    # A process that SIGHUP would end at once, and that is not egressd.
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as child:
        try:
            assert (
                run_cli("reload", "--config", str(broken), "--pid", str(child.pid)).returncode == 2
            )
            # Not egressd: nothing answers on its control socket, and it is not signalled.
            result = run_cli("reload", "--pid", str(child.pid))
            assert result.returncode == 1 and "is it egressd" in result.stderr, result
            with pytest.raises(subprocess.TimeoutExpired):
                child.wait(1.0)
        finally:
            child.kill()


def test_reload_command_reports_a_missing_process() -> None:
    result = run_cli("reload", "--pid", "999999999")
    assert result.returncode == 1 and "cannot ask process 999999999" in result.stderr
    for pid in ("1", "0", "-5"):  # init and process groups: never signalled or asked
        refused = run_cli("reload", "--pid", pid)
        assert refused.returncode == 1 and f"--pid {pid} cannot be egressd" in refused.stderr
