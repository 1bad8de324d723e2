"""sd_notify against a real AF_UNIX datagram socket, both path and abstract namespace."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from egressd.systemd import Notifier


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    sock.bind(path)
    sock.settimeout(2)
    yield sock, path
    sock.close()


def test_ready_status_watchdog_stopping(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready("listening")
    assert sock.recv(4096) == b"READY=1\nSTATUS=listening"
    assert notifier.status("42 records")
    assert sock.recv(4096) == b"STATUS=42 records"
    assert notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    assert notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()


def test_abstract_namespace() -> None:
    name = f"egressd-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(2)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.ready()
        assert sock.recv(4096) == b"READY=1"
        notifier.close()
    finally:
        sock.close()


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert Notifier({"WATCHDOG_USEC": "30000000"}).watchdog_interval == 15.0
    assert Notifier({}).watchdog_interval is None
    # WATCHDOG_PID naming another process means the watchdog is not ours.
    other = str(os.getpid() + 1)
    assert Notifier({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": other}).watchdog_interval is None


def test_without_socket_is_inert() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert not notifier.ready()
    notifier.close()


def test_unreachable_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "nobody")})
    assert not notifier.ready()
    notifier.close()


def test_reloading_carries_the_monotonic_time(receiver: tuple[socket.socket, str]) -> None:
    sock, path = receiver
    notifier = Notifier({"NOTIFY_SOCKET": path})
    before = time.monotonic_ns() // 1000
    assert notifier.reloading()
    fields = sock.recv(4096).decode().split("\n")
    after = time.monotonic_ns() // 1000
    assert fields[0] == "RELOADING=1"
    name, _, value = fields[1].partition("=")
    assert name == "MONOTONIC_USEC" and before <= int(value) <= after
    notifier.close()
