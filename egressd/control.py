"""``egressd reload``: the units' ExecReload, and the control socket that answers it.

The command checks the configuration a running daemon would load, then asks the daemon to
reload over its control socket and waits for the answer: ``systemctl reload`` returns once the
new configuration is in force, and fails (the daemon's reason printed) when the daemon refused
it and kept the running one. No ``/bin/kill`` is needed (absent from minimal systems), and
systemd 252 (Debian 12) has no ``Type=notify-reload`` to wait for the daemon itself.

The control socket is a Unix stream socket in the abstract namespace, named after the daemon's
process id (:func:`control_address`): no file or directory to create under a read-only
sandbox. Either side checks the other's credentials (``SO_PEERCRED``): the daemon answers only
root and its own user, the command talks only to the process it was given. One request per
connection: ``reload`` and a newline; the answer is one line, ``ok <status>`` or
``refused <reason>``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TextIO

from egressd.config import load_config
from egressd.enrich.labeler import CompositeLabeler
from egressd.errors import ConfigError, EgressdError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_INVALID = 2

log = logging.getLogger("egressd.control")

#: the one request, and the longest answer line read back
REQUEST = b"reload\n"
_ANSWER_LIMIT = 64 * 1024
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid

#: what the daemon's reload returns: (applied, status line or reason refused)
ReloadHandler = Callable[[], Awaitable[tuple[bool, str]]]


def control_address(pid: int) -> str:
    """The abstract socket name of the egressd process ``pid``."""
    return f"\0egressd/control/{pid}"


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket."""
    pid, uid, gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return pid, uid, gid


class ControlServer:
    """The daemon's side: answers ``reload`` requests with the outcome of ``handler``.

    Plain sockets on the event loop: connections are accepted in a reader callback, and each
    is served by a task that closes it when done (or cancelled), so a stop leaves nothing
    open behind it.
    """

    __slots__ = ("_connections", "_handler", "_sock", "address")

    def __init__(self, handler: ReloadHandler, pid: int | None = None) -> None:
        self._handler = handler
        self.address = control_address(os.getpid() if pid is None else pid)
        self._sock: socket.socket | None = None
        #: the tasks serving open connections
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(self.address)
            sock.listen(8)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    async def stop(self) -> None:
        """Stop answering; a request under way is not waited for (its socket is closed)."""
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _accept(self) -> None:
        if self._sock is None:
            return
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # out of file descriptors, say: the next wake-up tries again
            log.warning("control socket: %s", exc)
            return
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        task.add_done_callback(_closer(conn))  # also when cancelled before it ran

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn.setblocking(False)
            _pid, uid, _gid = peer_credentials(conn)
            if uid not in (0, os.geteuid()):
                log.warning("control socket: request from uid %d refused", uid)
                return
            line = b""
            async with asyncio.timeout(10.0):
                while not line.endswith(b"\n") and len(line) <= len(REQUEST):
                    chunk = await loop.sock_recv(conn, 64)
                    if not chunk:
                        break
                    line += chunk
            if line != REQUEST:
                answer = "refused unknown request"
            else:
                applied, text = await self._handler()
                answer = ("ok " if applied else "refused ") + " ".join(text.split())
            await loop.sock_sendall(conn, answer.encode() + b"\n")
        except (OSError, TimeoutError) as exc:
            log.warning("control socket: %s", exc)
        finally:
            conn.close()


def _closer(conn: socket.socket) -> Callable[[asyncio.Task[None]], None]:
    def close(_task: asyncio.Task[None]) -> None:
        conn.close()

    return close


def request_reload(pid: int, timeout: float) -> tuple[bool, str]:
    """Ask the egressd process ``pid`` to reload and wait for its answer.

    Raises OSError when it cannot be asked (no such process, or not egressd) or does not
    answer within ``timeout`` seconds.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        sock.connect(control_address(pid))
        peer = peer_credentials(sock)[0]
        if peer != pid:
            raise OSError(f"the control socket of process {pid} is held by process {peer}")
        sock.sendall(REQUEST)
        answer = b""
        while not answer.endswith(b"\n") and len(answer) < _ANSWER_LIMIT:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    text = answer.decode(errors="replace").strip()
    verdict, _, detail = text.partition(" ")
    if verdict not in ("ok", "refused"):
        raise OSError(f"process {pid} gave no answer ({text!r})")
    return verdict == "ok", detail


def daemon_config_path(pid: int) -> Path | None:
    """The ``--config`` file of the egressd process ``pid`` as its command line names it (made
    absolute against its working directory), None when it has none or that cannot be read."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"run" not in argv:
        return None
    found: bytes | None = None
    for i, arg in enumerate(argv):
        if arg in (b"--config", b"-c") and i + 1 < len(argv):
            found = argv[i + 1]
        elif arg.startswith(b"--config="):
            found = arg.partition(b"=")[2]
    if not found:
        return None
    path = Path(os.fsdecode(found))
    if path.is_absolute():
        return path
    try:
        return Path(os.readlink(f"/proc/{pid}/cwd")) / path
    except OSError:
        return None


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


def reload_main(
    config_path: Path | None, pid: int, err: TextIO = sys.stderr, timeout: float = 60.0
) -> int:
    """Validate ``config_path`` (settings and geo files), then make ``pid`` reload and wait.

    Exit 0 once the daemon has the new configuration in force; 2 when it is not reloaded
    because the file is invalid (the daemon is not asked) or the daemon refused it (it keeps
    the running one; a changed ``detection.interval``, a cluster role); 1 when the daemon
    cannot be asked or does not answer within ``timeout`` seconds.
    """
    if pid <= 1:
        # 0 and negative ids name process groups, 1 is init: never the daemon.
        print(
            f"egressd reload: --pid {pid} cannot be egressd: give the daemon's process id "
            "($MAINPID in its unit); nothing reloaded",
            file=err,
        )
        return EXIT_ERROR
    if config_path is not None:
        running = daemon_config_path(pid)
        if running is not None and not _same_file(running, config_path):
            # The daemon re-reads its own file: checking another says nothing of it.
            print(
                f"egressd reload: process {pid} reads {running}, not {config_path}: a reload "
                f"makes it read {running} again; check that file (--config {running}), or "
                "restart it with the other; nothing reloaded",
                file=err,
            )
            return EXIT_INVALID
        from egressd.replay import build_labeler

        try:
            config = load_config(config_path)
            labeler = build_labeler(config)
        except ConfigError as exc:
            print(f"egressd reload: {config_path} is invalid, nothing reloaded:", file=err)
            for problem in exc.problems:
                print(f"  {problem}", file=err)
            return EXIT_INVALID
        except (EgressdError, OSError, ValueError) as exc:
            print(f"egressd reload: {config_path}: {exc}; nothing reloaded", file=err)
            return EXIT_INVALID
        if isinstance(labeler, CompositeLabeler):
            labeler.close()
    try:
        applied, detail = request_reload(pid, timeout)
    except TimeoutError:
        print(
            f"egressd reload: process {pid} did not answer within {timeout:g} s; "
            "its log says whether it reloaded",
            file=err,
        )
        return EXIT_ERROR
    except OSError as exc:
        print(
            f"egressd reload: cannot ask process {pid} to reload ({exc}): is it egressd? "
            "Nothing reloaded",
            file=err,
        )
        return EXIT_ERROR
    if not applied:
        print(f"egressd reload: process {pid} refused: {detail}; nothing reloaded", file=err)
        return EXIT_INVALID
    return EXIT_OK
