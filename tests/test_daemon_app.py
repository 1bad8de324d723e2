"""The daemon's parts in process: state save/restore, reload, idle watermark, UDP collector."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time
from pathlib import Path
from unittest import mock

import orjson
import pytest

from egressd.app import Daemon, EngineFeed, default_config, run_daemon, state_path_of
from egressd.config import NetflowSourceConfig, parse_config
from egressd.model import FlowRecord
from egressd.pipeline import Engine
from egressd.sources.netflow import NetflowSource
from tests.integration_support import http_get, research_config
from tests.netflow_builders import data_set, ipfix_datagram, template_set

CONFIG = research_config(state="{state}")

T0 = 1_773_064_800.0


def flow(src: str, dst: str, size: int, end: float) -> FlowRecord:
    return FlowRecord(end - 10, end, src, dst, size, max(1, size // 1500))


def exfiltration(daemon: Daemon) -> None:
    daemon.feed.submit(
        [
            flow("10.20.0.17", "47.100.23.45", 300_000_000, T0 + 60),
            flow("10.20.0.17", "81.2.69.160", 2_000_000, T0 + 100),
            flow("10.20.0.17", "81.2.69.160", 1_000, T0 + 420),
        ]
    )


def test_default_config_listens_on_loopback() -> None:
    config = default_config()
    assert [s.listen for s in config.sources.netflow] == ["127.0.0.1:2055"]
    assert config.http.listen == "127.0.0.1:9108"
    assert not config.alertmanager.urls


def test_state_path_falls_back_to_systemd_state_directory(tmp_path: Path) -> None:
    config = default_config()
    assert state_path_of(config, {}) is None
    env = {"STATE_DIRECTORY": f"{tmp_path}/a:{tmp_path}/b"}
    assert state_path_of(config, env) == tmp_path / "a" / "state.json"


async def test_state_survives_a_restart(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    config = parse_config(CONFIG.format(state=state))
    first = Daemon(config, environ={}, sources=[])
    first.restore_state()
    exfiltration(first)
    assert len(first.engine.active_alerts()) == 1
    assert await first.save()
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    assert first.stats.state_saves == 1

    second = Daemon(config, environ={}, sources=[])
    second.restore_state()
    assert second.stats.state_restored
    assert second.firing_alerts() == first.firing_alerts()
    assert list(second.baselines("research")) == list(first.baselines("research"))

    # The open interval came back too: it still holds the 1000 bytes at T0+420.
    def open_bytes(daemon: Daemon) -> dict[tuple[str, str], int]:
        totals = daemon.engine.aggregator.open_totals()
        return {(group, dest.key): size for (group, dest), size in totals.items()}

    assert open_bytes(second) == open_bytes(first) == {("research", "GB"): 1000}


async def test_corrupt_state_is_moved_aside(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_bytes(b'{"version": not json')  # begins as a state file, damaged
    daemon = Daemon(parse_config(CONFIG.format(state=state)), environ={}, sources=[])
    daemon.restore_state()
    assert daemon.readiness() == (True, "")
    assert not state.exists()
    assert len(list(tmp_path.glob("state.json.bad-*"))) == 1
    # A state from another interval length is unusable too, and also set aside.
    state.write_bytes(orjson.dumps({"version": 1, "interval": 60.0}))
    daemon = Daemon(parse_config(CONFIG.format(state=state)), environ={}, sources=[])
    daemon.restore_state()
    assert not daemon.stats.state_restored


async def test_reload_applies_good_config_and_rejects_bad(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    path = tmp_path / "egressd.toml"
    path.write_text(CONFIG.format(state=state))
    daemon = Daemon(parse_config(path.read_text(), str(path)), path, environ={}, sources=[])
    daemon.restore_state()
    exfiltration(daemon)
    baselines = list(daemon.baselines(None))

    path.write_text(CONFIG.format(state=state) + "\n[detection]\nunexpected_min_bytes = 'huge'\n")
    assert not await daemon.reload()
    assert daemon.stats.config_reload_errors == 1
    assert daemon.engine.config.detection.unexpected_min_bytes == 100_000_000

    path.write_text(CONFIG.format(state=state).replace('["GB", "US"]', '["GB", "US", "CN"]'))
    assert await daemon.reload()
    assert daemon.stats.config_reloads == 1
    assert daemon.engine.config.groups[0].expected_countries == frozenset({"GB", "US", "CN"})
    assert list(daemon.baselines(None)) == baselines  # nothing learned was lost

    path.write_text(CONFIG.format(state=state) + "\n[detection]\ninterval = '1m'\n")
    assert not await daemon.reload()
    assert daemon.stats.config_reload_errors == 2
    # What `egressd reload` is answered: the outcome and, when refused, the key and why.
    applied, reason = await daemon.reload_outcome()
    assert not applied and reason.startswith("detection.interval cannot change"), reason
    path.write_text(CONFIG.format(state=state))
    applied, status = await daemon.reload_outcome()
    assert applied and "baselines" in status, status


async def test_a_reload_tells_systemd_it_started_and_how_it_ended(tmp_path: Path) -> None:
    """RELOADING=1 (with MONOTONIC_USEC), then READY=1 with the status, or with why the new
    file was refused (the old configuration stays)."""
    notify = tmp_path / "notify"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(5)
    state = tmp_path / "state.json"
    path = tmp_path / "egressd.toml"
    path.write_text(CONFIG.format(state=state))
    daemon = Daemon(
        parse_config(path.read_text(), str(path)),
        path,
        environ={"NOTIFY_SOCKET": str(notify)},
        sources=[],
    )
    daemon.restore_state()
    try:
        path.write_text(CONFIG.format(state=state) + "\n[detection]\ninterval = '1m'\n")
        assert not await daemon.reload()
        started, ended = sock.recv(4096).decode(), sock.recv(4096).decode()
        assert started.startswith("RELOADING=1\nMONOTONIC_USEC="), started
        assert ended.startswith("READY=1\nSTATUS=configuration reload rejected: ")
        assert "detection.interval cannot change" in ended
        path.write_text(CONFIG.format(state=state))
        assert await daemon.reload()
        assert sock.recv(4096).startswith(b"RELOADING=1\n")
        ended = sock.recv(4096).decode()
        assert ended.startswith("READY=1\nSTATUS=") and "baselines" in ended, ended
    finally:
        daemon.notifier.close()
        sock.close()


def test_idle_watermark_follows_wall_time(tmp_path: Path) -> None:
    daemon = Daemon(parse_config(CONFIG.format(state=tmp_path / "s.json")), environ={}, sources=[])
    daemon.restore_state()
    exfiltration(daemon)
    assert daemon.engine.event_time() == T0 + 420
    now = time.monotonic()
    daemon.feed.last_wall = now - 5
    daemon.idle_tick(now)  # not idle long enough
    assert daemon.engine.event_time() == T0 + 420
    daemon.feed.last_wall = now - 100
    daemon.idle_tick(now)
    assert daemon.engine.event_time() == pytest.approx(T0 + 520)
    assert daemon.stats.idle_advances == 1
    assert daemon.engine.aggregator.buckets  # [T0+300, T0+600) waits for T0+660
    daemon.feed.last_wall = now - 300
    daemon.idle_tick(now)
    assert daemon.engine.event_time() == pytest.approx(T0 + 720)
    # The interval holding T0+420 is now closed by the moved watermark.
    assert not daemon.engine.aggregator.buckets


@pytest.mark.skipif(os.geteuid() != 0, reason="only meaningful when the tests run as root")
def test_refuses_to_run_as_root() -> None:
    assert run_daemon(None, allow_root=False) == 1


# -- the UDP collector --------------------------------------------------------------------

FIELDS = [(8, 4), (12, 4), (1, 8), (2, 8), (150, 4), (151, 4)]


def ipfix(records: list[tuple[str, str, int, int, int]]) -> bytes:
    rows = [
        [socket.inet_aton(src), socket.inet_aton(dst), size, 1, start, end]
        for src, dst, size, start, end in records
    ]
    sets = [template_set({300: FIELDS}, ipfix=True), data_set(300, FIELDS, rows)]
    return ipfix_datagram(sets, export_secs=int(T0))


class Collect:
    def __init__(self) -> None:
        self.records: list[FlowRecord] = []

    def submit(self, records: list[FlowRecord]) -> None:
        self.records.extend(records)


async def wait_for(predicate: object, timeout: float = 5.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_collector_decodes_counts_errors_and_filters_exporters() -> None:
    source = NetflowSource(NetflowSourceConfig(listen="127.0.0.1:0"))
    sink = Collect()
    await source.start(sink)
    assert source.ready and source.bound is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(
            ipfix([("10.20.0.1", "47.100.23.45", 1234, int(T0), int(T0) + 5)]), source.bound
        )
        sock.sendto(b"\x00\x09garbage", source.bound)
        sock.sendto(b"", source.bound)
        sock.sendto(struct.pack("!H", 77) + b"\0" * 30, source.bound)
        await wait_for(lambda: source.stats.units == 4 and source.stats.decode_errors.total() == 3)
    await wait_for(lambda: sink.records)
    await source.stop()
    (record,) = sink.records
    assert (record.src, record.dst, record.bytes, record.time_end) == (
        "10.20.0.1",
        "47.100.23.45",
        1234,
        T0 + 5,
    )
    assert record.exporter == "127.0.0.1"
    assert source.stats.records == 1
    assert not source.ready


async def test_collector_drops_datagrams_from_unlisted_exporters() -> None:
    config = parse_config(
        '[[sources.netflow]]\nlisten = "127.0.0.1:0"\nallowed_exporters = ["192.0.2.0/24"]\n'
    ).sources.netflow[0]
    source = NetflowSource(config)
    sink = Collect()
    await source.start(sink)
    assert source.bound is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(3):
            sock.sendto(ipfix([("10.20.0.1", "47.100.23.45", 1, int(T0), int(T0))]), source.bound)
        await wait_for(lambda: source.stats.dropped["exporter_not_allowed"] == 3)
    await source.stop()
    assert not sink.records


async def test_collector_full_queue_drops_and_counts() -> None:
    source = NetflowSource(NetflowSourceConfig(listen="[::1]:0", queue_size=2))
    sink = Collect()
    await source.start(sink)
    assert source.bound is not None
    datagram = ipfix([("10.20.0.1", "47.100.23.45", 1, int(T0), int(T0))])
    # Five datagrams in the socket before the loop runs again: the socket callback reads
    # them in one burst, before the decoder task can take any off the queue.
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        for _ in range(5):
            sock.sendto(datagram, source.bound)
    await wait_for(lambda: source.stats.units == 5)
    assert source.stats.dropped["queue_full"] == 3
    await wait_for(lambda: len(sink.records) == 2)
    await source.stop()


async def test_daemon_runs_and_stops_cleanly(tmp_path: Path) -> None:
    config = parse_config(
        CONFIG.format(state=tmp_path / "state.json")
        + '\n[http]\nlisten = "127.0.0.1:0"\n[[sources.netflow]]\nlisten = "127.0.0.1:0"\n'
    )
    daemon = Daemon(config, environ={})
    task = asyncio.create_task(daemon.run())
    await wait_for(lambda: daemon.readiness()[0])
    source = daemon.sources[0]
    assert isinstance(source, NetflowSource) and source.bound is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(
            ipfix([("10.20.0.1", "47.100.23.45", 1234, int(T0), int(T0) + 5)]), source.bound
        )
    await wait_for(lambda: daemon.engine.stats.egress_bytes == 1234)
    assert daemon._stopping is not None
    daemon._stopping.set()
    assert await task == 0
    saved = orjson.loads((tmp_path / "state.json").read_bytes())
    assert saved["open_buckets"]  # the open interval is saved, not flushed


async def test_daemon_exits_non_zero_when_a_component_dies(tmp_path: Path) -> None:
    config = parse_config(
        CONFIG.format(state=tmp_path / "state.json")
        + '\n[http]\nlisten = "127.0.0.1:0"\n[[sources.netflow]]\nlisten = "127.0.0.1:0"\n'
    )
    daemon = Daemon(config, environ={})

    class BrokenFeed(EngineFeed):
        def submit(self, records: object) -> None:
            raise RuntimeError("engine bug")

        def submit_columns(self, columns: object) -> None:  # the NetFlow source's way in
            raise RuntimeError("engine bug")

    daemon.feed = BrokenFeed(daemon)
    task = asyncio.create_task(daemon.run())
    await wait_for(lambda: daemon.readiness()[0])
    source = daemon.sources[0]
    assert isinstance(source, NetflowSource) and source.bound is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(ipfix([("10.20.0.1", "47.100.23.45", 1, int(T0), int(T0))]), source.bound)
    assert await asyncio.wait_for(task, 10) == 1


async def test_the_daemon_serves_and_holds_flows_while_its_state_is_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A large state takes seconds to restore. Meanwhile HTTP answers (ready only once the
    state is in place) and the collector receives: what it receives is held, then judged
    against the restored state (its baselines, its firing alert), not against empty ones."""
    state = tmp_path / "state.json"
    first = Daemon(parse_config(CONFIG.format(state=state)), environ={}, sources=[])
    first.restore_state()
    exfiltration(first)
    assert await first.save()
    saved_bytes = first.engine.stats.egress_bytes

    gate = threading.Event()
    restore = Engine.restore

    def slow_restore(engine: Engine, data: dict[str, object]) -> None:
        assert gate.wait(30), "the test never opened the gate"
        restore(engine, data)

    monkeypatch.setattr(Engine, "restore", slow_restore)
    config = parse_config(
        CONFIG.format(state=state)
        + '\n[http]\nlisten = "127.0.0.1:0"\n[[sources.netflow]]\nlisten = "127.0.0.1:0"\n'
    )
    notify = tmp_path / "notify"
    told = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    told.bind(str(notify))
    told.setblocking(False)
    daemon = Daemon(config, environ={"NOTIFY_SOCKET": str(notify)})
    task = asyncio.create_task(daemon.run())
    source = daemon.sources[0]
    assert isinstance(source, NetflowSource)
    await wait_for(lambda: daemon.http.bound is not None and source.ready)
    # systemd is told the start goes on (its start timeout would end a slow restore).
    loop = asyncio.get_running_loop()
    first = (await asyncio.wait_for(loop.sock_recv(told, 4096), 5)).decode()
    assert first.startswith("EXTEND_TIMEOUT_USEC=30000000\nSTATUS=restoring"), first
    assert daemon.http.bound is not None and source.bound is not None
    base = f"http://127.0.0.1:{daemon.http.bound[1]}"
    assert await asyncio.to_thread(http_get, base + "/healthz") == (200, mock.ANY)
    status, body = await asyncio.to_thread(http_get, base + "/readyz")
    assert status == 503 and b"state not loaded yet" in body, body
    assert (await asyncio.to_thread(http_get, base + "/metrics"))[0] == 200
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(ipfix([("10.20.0.1", "81.2.69.160", 1234, int(T0) + 400, int(T0) + 430)]),
                    source.bound)  # fmt: skip
    await wait_for(lambda: daemon.stats.records_held_before_state == 1)
    assert daemon.engine.stats.records == 0 and not daemon.stats.state_restored
    gate.set()
    await wait_for(lambda: daemon.readiness()[0])
    assert daemon.stats.state_restored
    # The held flow went into the restored engine, on top of what the state held.
    assert daemon.engine.stats.egress_bytes == 1234
    totals = daemon.engine.aggregator.open_totals()
    assert {(g, d.key): size for (g, d), size in totals.items()} == {("research", "GB"): 2234}
    assert [a["labels"]["dst_country"] for a in daemon.firing_alerts()] == ["CN"]
    assert daemon.stats.records_dropped_before_state == 0
    assert saved_bytes > 0
    assert daemon._stopping is not None
    daemon._stopping.set()
    assert await task == 0
    told.close()


async def test_flows_held_during_the_restore_are_judged_a_batch_at_a_time_in_order(
    tmp_path: Path,
) -> None:
    """Judging what was held while a large state was restored takes seconds (a million
    flows); it goes a batch at a time with a turn of the event loop between, and what
    arrives meanwhile is held behind, so flows are judged in the order they came."""
    daemon = Daemon(parse_config(CONFIG.format(state=tmp_path / "s.json")), environ={}, sources=[])
    daemon.restore_state()
    feed = daemon.feed
    feed.hold()
    for n in range(3):
        feed.submit([flow("10.20.0.17", "81.2.69.160", 1_000, T0 + 10 + n)])
    seen: list[int] = []
    judged: list[tuple[int, int]] = []  # (records, egress bytes) after each turn
    ready: list[bool] = []

    async def watch() -> None:
        while True:
            seen.append(daemon.engine.stats.records)
            judged.append((seen[-1], daemon.engine.stats.egress_bytes))
            ready.append(daemon.readiness()[0])
            if seen[-1] == 1 and seen.count(1) == 1:  # arrives meanwhile
                feed.submit([flow("10.20.0.17", "81.2.69.160", 5_000, T0 + 5)])
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    await feed.drain()
    watcher.cancel()
    assert {1, 2, 3} <= set(seen)  # the loop ran between the batches
    # In the order they came: the three held first (1 kB each), the late arrival (5 kB) last.
    assert sorted(set(judged)) == [(0, 0), (1, 1_000), (2, 2_000), (3, 3_000), (4, 8_000)]
    assert daemon.engine.stats.egress_bytes == 8_000
    assert not any(ready)  # not ready until what was held is judged
    assert daemon.stats.records_held_before_state == 4 and daemon.engine.stats.records == 4
    assert not feed.holding and daemon.readiness()[0]
    feed.submit([flow("10.20.0.17", "81.2.69.160", 1_000, T0 + 20)])
    assert daemon.stats.records_held_before_state == 4 and daemon.engine.stats.records == 5


async def test_the_metrics_views_first_evaluation_is_done_by_the_restore_beside_the_loop(
    tmp_path: Path,
) -> None:
    """Evaluating every restored baseline for the metrics view took a million keys about a
    second of the event loop after the restore. The restore's thread does it, for the
    restored event time and ahead for wall time's hour (where flows arriving after a stop
    take the event time), so the loop then evaluates only keys changed since; the values are
    those a fresh evaluation gives."""
    from egressd.sinks.metrics import BaselineGauge

    state = tmp_path / "state.json"
    first = Daemon(parse_config(CONFIG.format(state=state)), environ={}, sources=[])
    first.restore_state()
    for step in range(4):
        first.feed.submit(
            [
                flow("10.20.0.17", dst, 2_000_000 + 1_000 * step, T0 + 300 * step + 100)
                for dst in ("81.2.69.160", "47.100.23.45", "8.8.8.8", "1.1.1.1", "9.9.9.9")
            ]
        )
    # The last intervals the state holds open reach one key alone.
    first.feed.submit(
        [flow("10.20.0.17", "81.2.69.160", 1_000, T0 + 1200 + 300 * n) for n in range(3)]
    )
    assert await first.save()
    keys = len(first.engine.baselines)
    assert keys >= 3

    daemon = Daemon(parse_config(CONFIG.format(state=state)), environ={}, sources=[])
    later = T0 + 3 * 3600  # another hour of the day than the state's event time
    daemon.feed.wall = lambda: later
    await daemon.restore_state_off_loop()
    assert len(daemon.engine.baselines) == keys
    assert daemon.collector.warm() == 0  # all evaluated in the restore's thread
    regions, asn = daemon.labeler.has_regions, daemon.labeler.has_asn
    baselines = daemon.engine.baselines

    def expected() -> dict[tuple[str, ...], float]:
        view = daemon.collector._baseline_view
        return dict(view.expected(baselines, daemon.engine.event_time(), regions, asn))

    assert expected() == BaselineGauge().expected(
        baselines, daemon.engine.event_time(), regions, asn
    )
    # Flows at wall time: the event time enters the hour evaluated ahead; only the key an
    # interval changed is evaluated again.
    daemon.feed.submit([flow("10.20.0.17", "81.2.69.160", 3_000_000, later + 100 + 300 * n)
                        for n in range(2)])  # fmt: skip
    assert daemon.engine.baselines.season.slot(daemon.engine.event_time()) != (
        daemon.engine.baselines.season.slot(T0 + 1000)
    )
    assert 0 < daemon.collector.warm() < keys
    assert expected() == BaselineGauge().expected(
        baselines, daemon.engine.event_time(), regions, asn
    )
