"""A process in the ingest or detect role under systemd: READY, watchdog, SIGHUP, SIGTERM."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

from integration_support import free_port

from egressd.cluster.node import RoleNode
from egressd.config import parse_config
from egressd.control import request_reload
from egressd.detect.alerts import FIRING, Alert

CONFIG = """
[http]
listen = "127.0.0.1:{http}"

[[sources.kafka]]
bootstrap_servers = ["127.0.0.1:{kafka}"]
topics = ["flows"]

[cluster]
role = "{role}"
state_directory = "{states}"
"""


async def datagrams_until(sock: socket.socket, wanted: str, timeout: float = 20.0) -> str:
    loop = asyncio.get_running_loop()
    seen = ""
    async with asyncio.timeout(timeout):
        while wanted not in seen:
            seen += (await loop.sock_recv(sock, 4096)).decode() + "\n"
    return seen


async def test_a_role_process_notifies_systemd_and_survives_sighup(tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.setblocking(False)
    # No broker listens: the process is up (and says so) while it keeps trying to connect.
    config = parse_config(
        CONFIG.format(http=free_port(), kafka=free_port(), role="detect", states=tmp_path)
    )
    node = RoleNode(config, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    run = asyncio.get_running_loop().create_task(node.run())
    try:
        assert "READY=1" in await datagrams_until(sock, "READY=1")
        await datagrams_until(sock, "WATCHDOG=1")
        # A reload is refused with a warning; the process goes on.
        os.kill(os.getpid(), signal.SIGHUP)
        await asyncio.sleep(0.3)
        assert not run.done()
        # `egressd reload` (the unit's ExecReload) is told so, and fails.
        applied, reason = await asyncio.to_thread(request_reload, os.getpid(), 10.0)
        assert not applied and "not supported in the detect role" in reason, reason
        await datagrams_until(sock, "WATCHDOG=1")
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(run, 30) == 0
        assert "STOPPING=1" in await datagrams_until(sock, "STOPPING=1")
    finally:
        if not run.done():
            run.cancel()
        sock.close()


async def test_a_detect_process_counts_alert_log_writes_that_fail(tmp_path: Path) -> None:
    # /dev/full opens for appending and fails every write with ENOSPC: a full disk.
    config = parse_config(
        CONFIG.format(http=free_port(), kafka=free_port(), role="detect", states=tmp_path)
        + '\n[alerts]\nlog_path = "/dev/full"\n'
    )
    node = RoleNode(config, {})
    assert node.alert_log is not None
    await node.alert_log.start()
    try:
        alert = Alert(
            key=("EgressUnexpectedDestination", "research", "CN"),
            labels={"alertname": "EgressUnexpectedDestination", "group": "research"},
            annotations={"summary": "s"},
            state=FIRING,
            pending_since=0.0,
        )
        node.publish([alert])
        node.publish([alert])
    finally:
        await node.alert_log.stop()
    assert node.registry.get_sample_value("egressd_alert_log_errors_total") == 2.0
    assert node.registry.get_sample_value("egressd_alertmanager_outbox_dropped_total") is None


async def test_a_role_process_keeps_what_it_is_built_of_out_of_full_collections(
    tmp_path: Path,
) -> None:
    # As the all-in-one daemon (tests/test_hardening_faults.py): a full garbage collection
    # stops the event loop and scanned everything the process holds. Once running, and
    # again when partitions (engines loaded from snapshots) come or go, it freezes them.
    import gc

    def scanned(*objects: object) -> list[bool]:
        ids = {id(o) for o in gc.get_objects()}
        return [id(o) in ids for o in objects]

    config = parse_config(
        CONFIG.format(http=free_port(), kafka=free_port(), role="detect", states=tmp_path)
    )
    threshold = gc.get_threshold()
    node = RoleNode(config, {})
    run = asyncio.get_running_loop().create_task(node.run())
    try:
        async with asyncio.timeout(30):
            while not gc.get_freeze_count():
                await asyncio.sleep(0.01)
        built = [node.component, node.labeler, node.http, node.config]
        assert scanned(*built) == [False] * len(built)
        assert gc.get_threshold()[0] > threshold[0]
        loaded = [object()]  # as an engine loaded at an assignment: settled with it
        assert scanned(loaded) == [True]
        node._owned_alerts([])
        assert scanned(loaded, *built) == [False] * (len(built) + 1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert await asyncio.wait_for(run, 30) == 0
    finally:
        if not run.done():
            run.cancel()
    assert gc.get_threshold() == threshold and gc.get_freeze_count() == 0
    assert scanned(node.component) == [True]
