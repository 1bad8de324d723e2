"""A Debian 12 machine booted under ``systemd-nspawn`` (systemd as its PID 1), for tests of the
gateway install under a real service manager.

- The root filesystem comes from ``debootstrap`` (minbase plus :data:`PACKAGES`) against the
  Debian mirror apt uses on this host; it is cached in :data:`CACHE` (override with
  ``EGRESSD_ROOTFS_CACHE``) under a key of suite, mirror and package list, and every machine
  boots a fresh copy of it.
- The host needs no systemd of its own: the container runs with ``--register=no`` and commands
  enter it with ``nsenter`` into its leader's namespaces.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

SUITE = "bookworm"
#: Debian 12 with systemd 252 as init, Python 3.11 with venv, libpcap for capture; no procps
PACKAGES = ("systemd", "systemd-sysv", "dbus", "python3", "python3-venv", "libpcap0.8")
CACHE = Path(os.environ.get("EGRESSD_ROOTFS_CACHE", "/var/cache/egressd-test-rootfs"))
DEFAULT_MIRROR = "http://deb.debian.org/debian"
CONTAINER_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class NspawnError(RuntimeError):
    """The machine could not be built, booted or entered (the message says why)."""


def apt_mirror(sources_dir: Path = Path("/etc/apt/sources.list.d")) -> str:
    """The Debian archive URL apt uses here for ``SUITE`` (deb822 or one-line format)."""
    candidates: list[Path] = sorted(sources_dir.glob("*.sources")) + sorted(
        sources_dir.glob("*.list")
    )
    legacy = sources_dir.parent / "sources.list"
    if legacy.exists():
        candidates.append(legacy)
    for path in candidates:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(
                    (m.group(1).lower(), m.group(2).split())
                    for m in re.finditer(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M)
                )
                if SUITE in fields.get("suites", []) and "deb" in fields.get("types", []):
                    return fields["uris"][0]
        else:
            for line in text.splitlines():
                words = line.split("#")[0].split()
                if len(words) >= 3 and words[0] == "deb" and SUITE in words:
                    return next(w for w in words[1:] if "://" in w)
    return DEFAULT_MIRROR


def rootfs_key(mirror: str) -> str:
    blob = "\n".join([SUITE, "minbase", mirror, *sorted(PACKAGES)]).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cached_rootfs(log: Path) -> Path:
    """The pristine root filesystem, built with debootstrap when the cache lacks it."""
    debootstrap = shutil.which("debootstrap")
    mirror = apt_mirror()
    CACHE.mkdir(parents=True, exist_ok=True)
    target = CACHE / f"{SUITE}-{rootfs_key(mirror)}"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder at a time; the others wait and reuse it
        if (target / "usr/lib/systemd/systemd").exists():
            return target
        if debootstrap is None:
            raise NspawnError("debootstrap is not installed")
        work = CACHE / f".build-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        with open(log, "ab") as out:
            result = subprocess.run(
                [
                    debootstrap,
                    "--variant=minbase",
                    f"--include={','.join(PACKAGES)}",
                    SUITE,
                    str(work),
                    mirror,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=1200,
                check=False,
            )
        if result.returncode != 0:
            shutil.rmtree(work, ignore_errors=True)
            tail = log.read_text(errors="replace")[-2000:]
            raise NspawnError(f"debootstrap {SUITE} from {mirror} failed:\n{tail}")
        shutil.rmtree(target, ignore_errors=True)
        work.rename(target)
        return target


def copy_rootfs(source: Path, destination: Path, hostname: str) -> None:
    subprocess.run(["cp", "-a", "--reflink=auto", str(source), str(destination)], check=True)
    (destination / "etc/hostname").write_text(f"{hostname}\n")


class Machine:
    """One booted container; :meth:`run` executes a command inside it as root."""

    def __init__(
        self, rootfs: Path, log_path: Path, binds: Sequence[tuple[Path, str]] = ()
    ) -> None:
        self.rootfs = rootfs
        self.log_path = log_path
        self.binds = list(binds)
        self.process: subprocess.Popen[bytes] | None = None
        self.leader = 0

    # -- lifecycle ------------------------------------------------------------------------------

    def boot(self, timeout: float = 120.0) -> None:
        nspawn = shutil.which("systemd-nspawn")
        if nspawn is None:
            raise NspawnError("systemd-nspawn is not installed (Debian: systemd-container)")
        args = [
            nspawn,
            "--boot",
            "--keep-unit",
            "--register=no",
            "--private-network",
            "--console=read-only",
            f"--directory={self.rootfs}",
            f"--machine=egressd-test-{os.getpid()}",
        ]
        args += [f"--bind-ro={host}:{inside}" for host, inside in self.binds]
        with open(self.log_path, "ab") as out:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NspawnError(
                    f"systemd-nspawn exited with {self.process.returncode}:\n{self.console()}"
                )
            self.leader = self._find_leader()
            if self.leader:
                state = self.run(
                    ["systemctl", "is-system-running", "--wait"], check=False, timeout=timeout
                )
                if state.stdout.strip() in ("running", "degraded"):
                    return
            time.sleep(0.2)
        raise NspawnError(f"the container did not finish booting:\n{self.console()}")

    def _find_leader(self) -> int:
        assert self.process is not None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            pids = [int(p) for p in children.read_text().split()]
        except (OSError, ValueError):
            return 0
        for pid in pids:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
        return 0

    def poweroff(self, timeout: float = 90.0) -> int:
        """``systemctl poweroff`` inside; returns systemd-nspawn's exit status."""
        assert self.process is not None
        self.run(["systemctl", "--no-block", "poweroff"], check=False)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise NspawnError(f"no poweroff within {timeout}s:\n{self.console()}") from exc

    def terminate(self) -> None:
        """Stop the container whatever state it is in (SIGTERM = clean poweroff, then kill)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)

    def console(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    # -- inside ---------------------------------------------------------------------------------

    def run(
        self,
        command: Sequence[str],
        check: bool = True,
        timeout: float = 120.0,
        stdin: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the container (all its namespaces, root, a clean environment)."""
        if not self.leader:
            raise NspawnError("the container is not running")
        args = [
            "nsenter",
            f"--target={self.leader}",
            "--all",
            "--root",
            "--wd",
            "--",
            "env",
            "-i",
            f"PATH={CONTAINER_PATH}",
            "LANG=C.UTF-8",
            "SYSTEMD_PAGER=",
            "SYSTEMD_COLORS=0",
            *command,
        ]
        result = subprocess.run(
            args,
            input=stdin.decode() if stdin is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise NspawnError(
                f"{' '.join(command)} exited with {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        """Write a file inside the container (through its root, as root)."""
        target = self.rootfs / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        out = self.run(["systemctl", "show", unit, *(f"--property={p}" for p in properties)])
        return dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)

    def journal(self, unit: str, since: str = "") -> str:
        args = ["journalctl", "--no-pager", "-o", "short-monotonic", "-u", unit]
        if since:
            args += ["--since", since]
        return self.run(args, check=False).stdout


@contextlib.contextmanager
def booted(
    rootfs: Path, log_path: Path, binds: Sequence[tuple[Path, str]] = ()
) -> Iterator[Machine]:
    machine = Machine(rootfs, log_path, binds)
    try:
        machine.boot()
        yield machine
    finally:
        machine.terminate()
