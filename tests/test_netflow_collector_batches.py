"""The live NetFlow collector reads its socket in bursts and hands the engine column batches.

Datagrams sent over loopback must all arrive as flows, in far fewer ``submit_columns`` calls
than datagrams, each call a well-formed batch; a sink without ``submit_columns`` gets the
same flows as records with their exporter; stopping submits what is held.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from egressd.columns import FlowColumns
from egressd.config import NetflowSourceConfig
from egressd.errors import SourceError
from egressd.model import FlowRecord
from egressd.sources.netflow import NetflowSource
from tests.netflow_builders import data_set, template_set, v9_datagram

FIELDS = [(8, 4), (12, 4), (1, 4), (2, 4), (22, 4), (21, 4)]
SECS = 1_773_064_800
DATAGRAMS = 60
FLOWS = 20  # per datagram


def datagram(index: int) -> bytes:
    rows = [
        [bytes([10, 0, index % 250, i]), bytes([93, 184, index % 250, i]), 100 + i, 1, 5, 9]
        for i in range(FLOWS)
    ]
    sets = [data_set(256, FIELDS, rows)]  # type: ignore[arg-type]
    if index == 0:
        sets.insert(0, template_set({256: FIELDS}, ipfix=False))  # type: ignore[dict-item]
    return v9_datagram(sets, uptime_ms=10, unix_secs=SECS, seq=index)


class ColumnsSink:
    def __init__(self) -> None:
        self.batches: list[FlowColumns] = []

    def submit(self, records: list[FlowRecord]) -> None:
        raise AssertionError("the collector hands a column sink columns")

    def submit_columns(self, columns: FlowColumns) -> None:
        columns.check()
        self.batches.append(columns)


class RecordsSink:
    def __init__(self) -> None:
        self.records: list[FlowRecord] = []

    def submit(self, records: list[FlowRecord]) -> None:
        self.records.extend(records)


async def _send_all(source: NetflowSource) -> None:
    assert source.bound is not None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for index in range(DATAGRAMS):
            sock.sendto(datagram(index), source.bound)


async def _until(predicate: object, timeout: float = 5.0) -> None:
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_bursts_become_few_column_batches_with_every_flow() -> None:
    source = NetflowSource(NetflowSourceConfig(listen="127.0.0.1:0"))
    sink = ColumnsSink()
    await source.start(sink)
    try:
        await _send_all(source)
        await _until(lambda: source.stats.records == DATAGRAMS * FLOWS)
    finally:
        await source.stop()
    assert source.stats.units == DATAGRAMS
    assert sum(len(b) for b in sink.batches) == DATAGRAMS * FLOWS
    assert len(sink.batches) < DATAGRAMS // 4  # batched, not one call per datagram
    flows = FlowColumns.concat(sink.batches)
    assert flows.exporter == "127.0.0.1"
    # every flow once, in the order sent
    expected = [(index % 250, i) for index in range(DATAGRAMS) for i in range(FLOWS)]
    third, fourth = ((flows.src_lo >> 8) & 0xFF).tolist(), (flows.src_lo & 0xFF).tolist()
    got = list(zip(third, fourth, strict=True))
    assert got == expected
    assert set(flows.bytes.tolist()) == {100 + i for i in range(FLOWS)}


async def test_a_record_sink_gets_records_with_their_exporter() -> None:
    source = NetflowSource(NetflowSourceConfig(listen="127.0.0.1:0"))
    sink = RecordsSink()
    await source.start(sink)
    try:
        await _send_all(source)
        await _until(lambda: len(sink.records) == DATAGRAMS * FLOWS)
    finally:
        await source.stop()
    assert {r.exporter for r in sink.records} == {"127.0.0.1"}
    assert sink.records[0].src == "10.0.0.0" and sink.records[-1].dst == f"93.184.59.{FLOWS - 1}"


async def test_stop_submits_what_is_held() -> None:
    """Flows held for a bigger batch are submitted by stop(), not lost."""
    source = NetflowSource(NetflowSourceConfig(listen="127.0.0.1:0"))
    sink = ColumnsSink()
    await source.start(sink)
    await _send_all(source)
    await _until(lambda: source.stats.units == DATAGRAMS)
    await source.stop()
    assert sum(len(b) for b in sink.batches) == DATAGRAMS * FLOWS


def _queue_length(source: NetflowSource) -> float:
    return next(
        value for name, _, value in source.extra_metrics() if name == "egressd_netflow_queue_length"
    )


async def test_datagrams_held_for_a_batch_count_as_queued_until_the_engine_has_them(
    monkeypatch: object,
) -> None:
    """The queue-length gauge is what the engine has not seen yet: a few datagrams waiting
    for more to fill a batch are still queued, so "queue empty" means "every flow counted"."""
    import egressd.sources.netflow as netflow

    assert hasattr(monkeypatch, "setattr")
    monkeypatch.setattr(netflow, "_SUBMIT_DELAY", 3.0)
    source = NetflowSource(NetflowSourceConfig(listen="127.0.0.1:0"))
    sink = ColumnsSink()
    await source.start(sink)
    try:
        assert source.bound is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for index in range(3):  # 60 flows: far from a full batch
                sock.sendto(datagram(index), source.bound)
        await _until(lambda: source.stats.units == 3)
        await asyncio.sleep(0.2)
        assert not sink.batches, "a small burst waits for more within the delay"
        assert _queue_length(source) == 3
        await _until(lambda: bool(sink.batches), timeout=6.0)
        assert _queue_length(source) == 0
        assert source.stats.records == 3 * FLOWS
    finally:
        await source.stop()


async def test_a_second_collector_on_a_port_in_use_is_refused_not_handed_the_datagrams() -> None:
    """A second egressd started on the running one's port (a test run by hand beside the
    service) must fail to start: had it bound, the kernel would hand it every datagram and
    the running daemon would go blind without a word."""
    first = NetflowSource(NetflowSourceConfig(listen="127.0.0.1:0"))
    sink = ColumnsSink()
    await first.start(sink)
    assert first.bound is not None
    port = first.bound[1]
    try:
        second = NetflowSource(NetflowSourceConfig(listen=f"127.0.0.1:{port}"))
        with pytest.raises(SourceError, match=f"cannot listen on 127.0.0.1:{port}: .*in use"):
            await second.start(ColumnsSink())
        await _send_all(first)
        await _until(lambda: first.stats.records == DATAGRAMS * FLOWS)
    finally:
        await first.stop()
    # A restart binds the port again at once (UDP keeps no TIME_WAIT).
    again = NetflowSource(NetflowSourceConfig(listen=f"127.0.0.1:{port}"))
    await again.start(ColumnsSink())
    await again.stop()


def test_a_second_worker_group_on_a_port_in_use_is_refused() -> None:
    """Worker sockets share their port by SO_REUSEPORT: a second egressd with workers must
    not join the running one's group (and take part of its datagrams)."""
    from egressd.config import Config
    from egressd.sources.netflow_workers import NetflowWorkers

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    config = NetflowSourceConfig(listen=f"127.0.0.1:{port}", workers=2)
    running = NetflowWorkers(config, "netflow:a", Config())
    sockets = running._bind_group()
    try:
        second = NetflowWorkers(config, "netflow:b", Config())
        with pytest.raises(SourceError, match=f"cannot listen on 127.0.0.1:{port} .*in use"):
            second._bind_group()
    finally:
        for sock, _inode in sockets:
            sock.close()


async def test_datagrams_arriving_one_by_one_are_decoded_together() -> None:
    """A collector keeping up with a modest rate gathers datagrams before decoding: it
    decoded each one alone as it came (numpy's fixed cost a call, and a wake-up of its task,
    per datagram), which cost more than the flows' own decoding."""
    source = NetflowSource(NetflowSourceConfig(listen="127.0.0.1:0"))
    calls: list[int] = []
    decoder = source.decoder

    class Counting:
        def decode_columns_batch(self, datagrams: list[tuple[bytes, str, float]]) -> object:
            calls.append(len(datagrams))
            return decoder.decode_columns_batch(datagrams)

        def __getattr__(self, name: str) -> object:
            return getattr(decoder, name)

    source.decoder = Counting()  # type: ignore[assignment]
    sink = ColumnsSink()
    await source.start(sink)
    try:
        assert source.bound is not None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for index in range(6):  # within the submit delay, each read on its own
                sock.sendto(datagram(index), source.bound)
                await _until(lambda sent=index + 1: source.stats.units == sent)
        await _until(lambda: source.stats.records == 6 * FLOWS)
    finally:
        await source.stop()
    assert sum(calls) == 6
    assert len(calls) <= 2, calls
    assert sum(len(b) for b in sink.batches) == 6 * FLOWS
