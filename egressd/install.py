"""``egressd install-units``: put the systemd units, the system user and an example
configuration where the documented layout expects them (or take them away again).

The layout (deploy/README.md): egressd in a virtual environment at ``/opt/egressd`` (the units
run ``/opt/egressd/bin/egressd``), its configuration in ``/etc/egressd/egressd.toml``, the units in
``/etc/systemd/system``, the user ``egressd`` from ``/etc/sysusers.d/egressd.conf``. Every file
comes from the installed package (``egressd/data``), so no source checkout is needed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

#: where the units expect egressd (their ExecStart= and ExecReload=)
PREFIX = Path("/opt/egressd")
CONFIG = Path("/etc/egressd/egressd.toml")
UNITS = ("egressd.service", "egressd-capture.service")


@dataclass(frozen=True, slots=True)
class Placed:
    """One file install-units owns: its package resource, where it goes, its mode."""

    resource: str
    target: Path
    mode: int


#: replaced on every install (an upgrade brings new units); local changes belong in drop-ins
MANAGED = (
    Placed("egressd.service", Path("/etc/systemd/system/egressd.service"), 0o644),
    Placed("egressd-capture.service", Path("/etc/systemd/system/egressd-capture.service"), 0o644),
    Placed("egressd.sysusers", Path("/etc/sysusers.d/egressd.conf"), 0o644),
    # the units' Documentation=
    Placed("deploy-README.md", Path("/usr/local/share/doc/egressd/README.md"), 0o644),
)
#: written only when absent: it is the admin's file from then on
EXAMPLE_CONFIG = Placed("egressd.toml", CONFIG, 0o644)

Runner = Callable[[Sequence[str]], int]


def resource_bytes(name: str) -> bytes:
    """A file shipped in the package's ``data`` directory."""
    return resources.files("egressd").joinpath("data", name).read_bytes()


def _under(root: Path, path: Path) -> Path:
    return root / path.relative_to("/")


def _run(args: Sequence[str]) -> int:
    return subprocess.run(list(args), check=False).returncode


def _systemd_running(root: Path) -> bool:
    """True when installing into the running system and systemd is its init."""
    return root == Path("/") and Path("/run/systemd/system").is_dir()


def _write(target: Path, data: bytes, mode: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    tmp = target.with_name(f".{target.name}.egressd-new")
    tmp.write_bytes(data)
    tmp.chmod(mode)
    os.replace(tmp, target)


def install(root: Path, out: TextIO, run: Runner = _run) -> int:
    """Install units, sysusers entry, documentation and (when absent) the example config."""
    for placed in MANAGED:
        target = _under(root, placed.target)
        data = resource_bytes(placed.resource)
        if target.is_file() and target.read_bytes() == data:
            print(f"unchanged {target}", file=out)
            continue
        verb = "updated" if target.exists() else "installed"
        _write(target, data, placed.mode)
        print(f"{verb} {target}", file=out)
    config = _under(root, EXAMPLE_CONFIG.target)
    if config.exists():
        print(f"kept {config} (yours: never replaced)", file=out)
    else:
        _write(config, resource_bytes(EXAMPLE_CONFIG.resource), EXAMPLE_CONFIG.mode)
        print(f"installed {config} (the example: edit [networks] and [[groups]])", file=out)
    binary = _under(root, PREFIX / "bin" / "egressd")
    if not binary.exists():
        print(
            f"warning: the units run {PREFIX}/bin/egressd, which does not exist: install "
            f"egressd into a virtual environment at {PREFIX} (deploy/README.md)",
            file=out,
        )
    if _systemd_running(root):
        status = run(["systemd-sysusers", str(MANAGED[2].target)])
        status |= run(["systemctl", "daemon-reload"])
        if status:
            print("error: systemd-sysusers or systemctl daemon-reload failed", file=out)
            return 1
    else:
        print(
            "systemd is not running here: the user egressd is created at the next boot "
            "(systemd-sysusers), units are read at the next daemon-reload",
            file=out,
        )
    print(
        f"next: egressd check-config --config {CONFIG} && systemctl enable --now egressd "
        "(or egressd-capture for [[sources.capture]])",
        file=out,
    )
    return 0


def uninstall(root: Path, out: TextIO, run: Runner = _run) -> int:
    """Stop and disable the units, remove what install() placed; config and state stay."""
    status = 0
    if _systemd_running(root):
        status |= run(["systemctl", "disable", "--now", *UNITS])
    for placed in MANAGED:
        target = _under(root, placed.target)
        if target.exists():
            target.unlink()
            print(f"removed {target}", file=out)
    doc_dir = _under(root, MANAGED[3].target).parent
    if doc_dir.is_dir() and not any(doc_dir.iterdir()):
        doc_dir.rmdir()
    for unit in UNITS:
        # what `systemctl enable` made; disable removed them already on a running system
        wants = _under(root, Path("/etc/systemd/system/multi-user.target.wants") / unit)
        if wants.is_symlink():
            wants.unlink()
            print(f"removed {wants}", file=out)
    if _systemd_running(root):
        status |= run(["systemctl", "daemon-reload"])
    for unit in UNITS:
        dropins = _under(root, Path("/etc/systemd/system") / f"{unit}.d")
        if dropins.is_dir():
            print(f"kept {dropins} (your drop-ins)", file=out)
    print(
        f"kept {_under(root, CONFIG.parent)} (configuration), "
        f"{_under(root, Path('/var/lib/egressd'))} (what egressd learned) and the user egressd; "
        f"remove them and {PREFIX} to forget everything",
        file=out,
    )
    return 1 if status else 0


def install_units_main(root: Path, remove: bool, out: TextIO = sys.stdout) -> int:
    if root == Path("/") and os.geteuid() != 0:
        print("egressd install-units: needs root (or --root DIR for an image)", file=sys.stderr)
        return 1
    if not root.is_dir():
        # A mistyped image path would otherwise become a new tree holding only egressd.
        print(
            f"egressd install-units: --root {root} is not a directory (an image's root "
            "must exist); nothing installed",
            file=sys.stderr,
        )
        return 1
    if _systemd_running(root) and shutil.which("systemctl") is None:
        print("egressd install-units: systemctl not found", file=sys.stderr)
        return 1
    try:
        return uninstall(root, out) if remove else install(root, out)
    except OSError as exc:
        where = f" {exc.filename}" if exc.filename else ""
        print(f"egressd install-units: cannot write{where}: {exc.strerror or exc}", file=sys.stderr)
        return 1
