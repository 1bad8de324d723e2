"""The control socket ``egressd reload`` talks to: one answer per request, credentials checked
on both sides (the daemon answers root and its own user; the command only the process it was
given)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys

import pytest

from egressd.control import ControlServer, control_address, request_reload


class Reloads:
    def __init__(self, answer: tuple[bool, str]) -> None:
        self.answer = answer
        self.calls = 0

    async def __call__(self) -> tuple[bool, str]:
        self.calls += 1
        await asyncio.sleep(0.2)  # the answer waits for the reload to finish
        return self.answer


async def _ask(pid: int, timeout: float = 5.0) -> tuple[bool, str]:
    return await asyncio.to_thread(request_reload, pid, timeout)


async def test_the_answer_comes_after_the_reload_and_carries_its_outcome() -> None:
    handler = Reloads((True, "3 records, 1 baselines"))
    server = ControlServer(handler)
    await server.start()
    try:
        assert await _ask(os.getpid()) == (True, "3 records, 1 baselines")
        handler.answer = (False, "detection.interval cannot change\n while egressd runs")
        assert await _ask(os.getpid()) == (
            False,
            "detection.interval cannot change while egressd runs",
        )
        assert handler.calls == 2
    finally:
        await server.stop()
    with pytest.raises(OSError):  # stopped: nobody listens any more
        await _ask(os.getpid())


async def test_a_socket_held_by_another_process_is_not_trusted() -> None:
    # This process squats on the name of another process's socket.
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as other:
        try:
            handler = Reloads((True, "fine"))
            server = ControlServer(handler, pid=other.pid)
            await server.start()
            try:
                with pytest.raises(OSError, match=f"held by process {os.getpid()}"):
                    await _ask(other.pid)
            finally:
                await server.stop()
            assert handler.calls == 0
        finally:
            other.kill()


#: a Python another user may run (the test's own may live under /root)
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to ask as another user")
@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason=f"no {SYSTEM_PYTHON}")
async def test_other_users_get_no_reload() -> None:
    handler = Reloads((True, "fine"))
    server = ControlServer(handler)
    await server.start()
    script = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "s.settimeout(5)\n"
        f"s.connect({control_address(os.getpid())!r})\n"
        "try:\n"
        "    s.sendall(b'reload\\n')\n"
        "    answer = s.recv(100)\n"
        "except (BrokenPipeError, ConnectionResetError):\n"
        "    answer = b''\n"
        "sys.stdout.write(repr(answer))\n"
    )
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [SYSTEM_PYTHON, "-c", script],
            user=65534,
            group=65534,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        await server.stop()
    assert (done.returncode, done.stdout) == (0, "b''"), done
    assert handler.calls == 0


def test_the_name_is_abstract_and_per_process() -> None:
    assert control_address(42).startswith("\0") and control_address(42) != control_address(43)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(control_address(os.getpid()))  # no file needed anywhere
