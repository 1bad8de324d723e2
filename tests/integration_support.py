"""Helpers for integration tests that drive real programs (egressd itself, Alertmanager, ...).

A missing program skips the test with the reason, unless ``EGRESSD_REQUIRE_INTEGRATION=1``
asks for it to fail instead (CI images that are supposed to have everything installed).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from egressd.enrich import DestinationLabels

REPO = Path(__file__).resolve().parents[1]


class FixedLabeler:
    """Every destination is in one country (for tests about state, not geography)."""

    has_regions = False
    has_asn = False

    def __init__(self, country: str = "JP") -> None:
        self._labels = DestinationLabels(country)

    def label(self, address: str) -> DestinationLabels:
        return self._labels

    def label_many(self, addresses: Any) -> list[DestinationLabels]:
        return [self._labels for _ in addresses]


def research_config(
    detection: Mapping[str, str] | None = None,
    *,
    countries: Sequence[str] = ("GB", "US"),
    state: str | None = None,
    save_interval: str | None = None,
    http: str | None = None,
    netflow: str | None = None,
    tail: str = "",
) -> str:
    """Config text of a daemon that watches one group, ``research`` (10.20.0.0/16 in 10.0.0.0/8).

    Each argument adds its table only when given: ``detection`` settings, a ``[state]`` path
    (and ``save_interval``), an ``[http]`` listen address and one ``[[sources.netflow]]`` listen
    address; ``tail`` (more tables) goes last, as written. Values are written as given, so a
    ``{placeholder}`` in one is left for the caller's ``str.format``.
    """
    expected = ", ".join(f'"{country}"' for country in countries)
    tables = [
        '[networks]\nlocal = ["10.0.0.0/8"]\n',
        '[[groups]]\nname = "research"\nsources = ["10.20.0.0/16"]\n'
        f"expected_countries = [{expected}]\n",
    ]
    if detection is not None:
        tables.append("[detection]\n" + "".join(f'{k} = "{v}"\n' for k, v in detection.items()))
    if state is not None:
        save = f'save_interval = "{save_interval}"\n' if save_interval is not None else ""
        tables.append(f'[state]\npath = "{state}"\n{save}')
    if http is not None:
        tables.append(f'[http]\nlisten = "{http}"\n')
    if netflow is not None:
        tables.append(f'[[sources.netflow]]\nlisten = "{netflow}"\n')
    if tail:
        tables.append(tail.strip("\n") + "\n")
    return "\n" + "\n".join(tables)


def integration_required() -> bool:
    return os.environ.get("EGRESSD_REQUIRE_INTEGRATION", "") == "1"


def missing(reason: str) -> None:
    """Skip the test with ``reason`` (or fail when integration tests are required)."""
    if integration_required():
        pytest.fail(f"{reason} (EGRESSD_REQUIRE_INTEGRATION=1)")
    pytest.skip(reason)


def require_program(name: str, *candidates: str) -> str:
    """Absolute path of program ``name`` (or one of ``candidates``), else skip/fail."""
    for program in (name, *candidates):
        found = shutil.which(program) or (
            program if os.path.isabs(program) and os.access(program, os.X_OK) else None
        )
        if found:
            return found
    missing(f"{name} is not installed")
    raise AssertionError("unreachable")


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (TCP by default, UDP with SOCK_DGRAM)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_udp_port(host: str = "127.0.0.1") -> int:
    return free_port(socket.SOCK_DGRAM, host)


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    """(status, body) of a GET; connection errors give status 0."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()
    except (OSError, urllib.error.URLError):
        return 0, b""


def wait_until(
    predicate: Callable[[], object],
    timeout: float,
    interval: float = 0.1,
    what: str = "",
    describe: Callable[[], object] | None = None,
) -> None:
    """Poll ``predicate()`` until it is true; fail the test after ``timeout`` seconds.

    The failure names what was awaited and, when ``describe`` is given, what it returns at
    that moment (the last observed state), so a timeout explains itself.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    message = f"timed out after {timeout}s waiting for {what or predicate}"
    if describe is not None:
        try:
            observed = describe()
        except Exception as exc:  # the state may be unreadable (a dead process, say)
            observed = f"<{type(exc).__name__}: {exc}>"
        message += f"; last observed: {observed}"
    pytest.fail(message)


def wait_for_http(url: str, timeout: float = 20.0, status: int = 200) -> None:
    wait_until(lambda: http_get(url, 1.0)[0] == status, timeout, what=f"{url} -> {status}")


class EgressdProcess:
    """``egressd run`` as a subprocess with a given config; logs go to a file for debugging."""

    def __init__(self, config_path: Path | None, http: str, log_path: Path) -> None:
        self.config_path = config_path
        self.http = http
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://{self.http}"

    def start(
        self, *extra: str, wait_ready: bool = True, env: dict[str, str] | None = None
    ) -> None:
        args = [sys.executable, "-m", "egressd.cli", "run", "--log-level", "debug"]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        if os.geteuid() == 0:
            args.append("--allow-root")
        args += list(extra)
        environment = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
        environment.pop("NOTIFY_SOCKET", None)
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(args, stdout=log, stderr=log, env=environment, cwd=REPO)
        log.close()
        if wait_ready:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    pytest.fail(f"egressd exited with {self.process.returncode}:\n{self.log()}")
                if http_get(f"{self.base}/readyz", 1.0)[0] == 200:
                    return
                time.sleep(0.1)
            pytest.fail(f"egressd did not become ready:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            pytest.fail(f"egressd did not stop on SIGTERM:\n{self.log()}")
            raise

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def metrics(self) -> str:
        status, body = http_get(f"{self.base}/metrics")
        assert status == 200, status
        return body.decode()


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """Sum of the samples of ``name`` whose labels include ``labels`` (None when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total: float | None = None
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name != name:
                continue
            if all(sample.labels.get(k) == v for k, v in labels.items()):
                total = (total or 0.0) + sample.value
    return total


@contextlib.contextmanager
def running_program(args: list[str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run an outside program for the duration of a block; terminated (then killed) after."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(args, stdout=log, stderr=log)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
