"""The metrics view's large evaluations (every baseline's label set and expectation) run in a
thread beside the event loop: after a restore whose flows took the event time to an hour of
day nobody evaluated ahead, after a reload that changed the label names, at a scrape that
finds an hour not evaluated ahead. Meanwhile the loop judges flows, in order, and answers;
the view then holds what evaluating it at once on the loop would have."""

from __future__ import annotations

import asyncio
import socket
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from egressd.app import Daemon
from egressd.baseline.seasonal import SeasonalBaselines
from egressd.config import parse_config
from egressd.sinks import metrics
from egressd.sinks.metrics import BaselineGauge
from egressd.sources.netflow import NetflowSource
from tests.integration_support import http_get, research_config
from tests.test_daemon_app import T0, flow, ipfix, wait_for

CONFIG = research_config(state="{state}")
LIVE = '\n[http]\nlisten = "127.0.0.1:0"\n[[sources.netflow]]\nlisten = "127.0.0.1:0"\n'
REGIONS = '\n[[geo.region_maps]]\nformat = "csv"\npath = "{regions}"\n'
DESTINATIONS = ("81.2.69.160", "47.100.23.45", "8.8.8.8", "1.1.1.1", "9.9.9.9")


class Evaluations:
    """``SeasonalBaselines.expected_bytes_at`` watched: the thread and size of each call,
    and a gate that holds calls of at least ``hold_from`` keys (after the first ``let``
    such) until the test opens it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[int, int]] = []
        self.hold_from: int | None = None
        self.let = 0
        #: calls not watched (the test's own evaluations)
        self.paused = False
        self.entered = threading.Event()
        self.gate = threading.Event()
        original = SeasonalBaselines.expected_bytes_at

        def watched(
            baselines: SeasonalBaselines, slots: np.ndarray[Any, Any], event_time: float
        ) -> np.ndarray[Any, Any]:
            if self.paused:
                return original(baselines, slots, event_time)
            self.calls.append((threading.get_ident(), len(slots)))
            if self.hold_from is not None and len(slots) >= self.hold_from:
                if self.let:
                    self.let -= 1
                else:
                    self.entered.set()
                    assert self.gate.wait(20), "the test never opened the gate"
            return original(baselines, slots, event_time)

        monkeypatch.setattr(SeasonalBaselines, "expected_bytes_at", watched)
        # (a handful of keys here stands for a million: every full evaluation is large)
        monkeypatch.setattr(metrics, "EVALUATE_ON_LOOP", 0)

    def of(self, keys: int) -> list[int]:
        """The threads that evaluated ``keys`` keys at once."""
        return [thread for thread, size in self.calls if size >= keys]


def learn(daemon: Daemon) -> None:
    """Baselines for five destinations, the event time in T0's hour."""
    for step in range(4):
        daemon.feed.submit(
            [
                flow("10.20.0.17", dst, 2_000_000 + 1_000 * step, T0 + 300 * step + 100)
                for dst in DESTINATIONS
            ]
        )


def gauge(daemon: Daemon) -> dict[tuple[str, ...], float]:
    """What a scrape shows as egressd_egress_baseline_bytes."""
    for family in daemon.collector.collect():
        if family.name == "egressd_egress_baseline_bytes":
            return {
                tuple(value for _name, value in sorted(s.labels.items())): s.value
                for s in family.samples
            }
    raise AssertionError("no egressd_egress_baseline_bytes")


def evaluated_at_once(daemon: Daemon, watch: Evaluations) -> dict[tuple[str, ...], float]:
    """What a view evaluating every baseline now gives (as the scrape shows it)."""
    watch.paused = True
    try:
        return _evaluated_at_once(daemon)
    finally:
        watch.paused = False


def _evaluated_at_once(daemon: Daemon) -> dict[tuple[str, ...], float]:
    engine = daemon.engine
    labeler = engine.labeler
    names = ["group", "dst_country"] + ["dst_region"] * labeler.has_regions
    names += ["dst_asn"] * labeler.has_asn
    sums = BaselineGauge().expected(
        engine.baselines, engine.event_time(), labeler.has_regions, labeler.has_asn
    )
    return {
        tuple(value for _name, value in sorted(zip(names, labels, strict=True))): round(size)
        for labels, size in sums.items()
    }


async def test_an_hour_not_evaluated_ahead_is_evaluated_beside_the_loop_while_it_serves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scrape that finds the event time in an hour of day not evaluated ahead (flows jumped
    to it) starts the evaluation in a thread and shows the hour before meanwhile; flows go on
    being judged, in order; the scrape after it shows the new hour's expectations."""
    watch = Evaluations(monkeypatch)
    daemon = Daemon(parse_config(CONFIG.format(state=tmp_path / "s.json")), environ={}, sources=[])
    learn(daemon)
    keys = len(daemon.engine.baselines)
    assert keys >= 3
    await daemon.collector.settle()
    before = gauge(daemon)
    assert before == evaluated_at_once(daemon, watch) and before

    watch.hold_from = keys
    loop_thread = threading.get_ident()
    daemon.feed.submit([flow("10.20.0.17", "81.2.69.160", 1_000, T0 + 3600 + 100)])
    shown = gauge(daemon)  # starts the evaluation of the new hour; shows the last
    assert await asyncio.to_thread(watch.entered.wait, 10)
    assert shown == before
    # The loop goes on while the thread evaluates: scrapes (no second evaluation), flows.
    calls = len(watch.calls)
    assert gauge(daemon) == before and len(watch.calls) == calls
    records = daemon.engine.stats.records
    for n, size in enumerate((111, 222, 333)):
        daemon.feed.submit([flow("10.20.0.17", "5.9.0.1", size, T0 + 3600 + 200 + n)])
    assert daemon.engine.stats.records == records + 3
    opened = daemon.engine.aggregator.open_totals()
    assert sum(opened.values()) == 1_000 + 111 + 222 + 333
    # An interval closes meanwhile: a key learned first (tracked, evaluated after).
    daemon.feed.submit([flow("10.20.0.17", "8.8.8.8", 5_000_000, T0 + 3600 + 700)])
    assert daemon.engine.aggregator.buckets.keys() == {T0 + 3600 + 600}
    assert len(daemon.engine.baselines) == keys + 1
    assert gauge(daemon) == before

    watch.gate.set()
    await daemon.collector.settle()
    assert watch.of(keys) and loop_thread not in watch.of(keys)
    after = gauge(daemon)
    assert after == evaluated_at_once(daemon, watch)
    assert ("DE", "research") in after and ("DE", "research") not in before


async def test_flows_held_into_a_third_hour_are_evaluated_beside_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restored state's hour and wall time's are evaluated in the restore's thread; flows
    held meanwhile that reach a third hour of day had every baseline evaluated once more on
    the event loop. Now in a thread too: the daemon answers /healthz meanwhile."""
    state = tmp_path / "state.json"
    first = Daemon(parse_config(CONFIG.format(state=state)), environ={}, sources=[])
    first.restore_state()
    learn(first)
    assert await first.save()
    keys = len(first.engine.baselines)

    watch = Evaluations(monkeypatch)
    restored = threading.Event()
    restore = Daemon._read_state

    def slow_read(daemon: Daemon) -> Any:
        assert restored.wait(20), "the test never opened the gate"
        return restore(daemon)

    monkeypatch.setattr(Daemon, "_read_state", slow_read)
    daemon = Daemon(parse_config(CONFIG.format(state=state) + LIVE), environ={})
    later = T0 + 5 * 3600  # wall time: another hour than the state's
    daemon.feed.wall = lambda: later
    task = asyncio.create_task(daemon.run())
    try:
        source = daemon.sources[0]
        assert isinstance(source, NetflowSource)
        await wait_for(lambda: daemon.http.bound is not None and source.bound is not None)
        assert daemon.http.bound is not None and source.bound is not None
        third = int(T0) + 2 * 3600 + 100  # neither the state's hour nor wall time's
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(ipfix([("10.20.0.1", "81.2.69.160", 1234, third, third + 5)]), source.bound)
        await wait_for(lambda: daemon.stats.records_held_before_state == 1)
        watch.hold_from, watch.let = keys, 2  # (the restore's thread: the state's hour, wall's)
        restored.set()
        assert await asyncio.to_thread(watch.entered.wait, 10)  # the third hour's evaluation
        assert daemon.engine.stats.egress_bytes == 1234  # the held flow, judged
        base = f"http://127.0.0.1:{daemon.http.bound[1]}"
        assert (await asyncio.to_thread(http_get, base + "/healthz"))[0] == 200
        watch.gate.set()
        await wait_for(lambda: daemon.readiness()[0])
        running = daemon.collector._evaluating
        await wait_for(lambda: running is None or running.done())
        loop_thread = threading.get_ident()
        evaluations = watch.of(keys)
        # The restore's thread: the state's hour and wall time's; then the third hour's.
        assert len(evaluations) == 3 and loop_thread not in evaluations
        assert gauge(daemon) == evaluated_at_once(daemon, watch)
    finally:
        watch.gate.set()
        restored.set()
        assert daemon._stopping is not None
        daemon._stopping.set()
        assert await task == 0


async def test_a_reload_that_changes_the_label_names_evaluates_the_view_beside_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload that adds or drops a region map (or an ASN database) changes every key's label
    set: the view is evaluated again, in a thread, before the reload answers. Meanwhile flows
    are judged in order and scrapes answer (without the gauge: its label names changed)."""
    regions = tmp_path / "regions.csv"
    regions.write_text("cidr,label\n81.2.69.0/24,london\n")
    text = CONFIG.format(state=tmp_path / "state.json")
    config = tmp_path / "egressd.toml"
    config.write_text(text + REGIONS.format(regions=regions))
    daemon = Daemon(parse_config(config.read_text()), config, environ={}, sources=[])
    learn(daemon)
    keys = len(daemon.engine.baselines)
    await daemon.collector.settle()
    assert any("london" in labels for labels in gauge(daemon))

    watch = Evaluations(monkeypatch)
    watch.hold_from = keys
    config.write_text(text)  # the region map dropped
    reloading = asyncio.create_task(daemon.reload_outcome())
    assert await asyncio.to_thread(watch.entered.wait, 10)
    assert not reloading.done()
    assert gauge(daemon) == {}  # (the last sums have a region label: not shown)
    records = daemon.engine.stats.records
    daemon.feed.submit(
        [flow("10.20.0.17", "81.2.69.160", 100 + n, T0 + 1300 + n) for n in range(3)]
    )
    assert daemon.engine.stats.records == records + 3
    watch.gate.set()
    applied, _status = await reloading
    assert applied and not daemon.labeler.has_regions
    assert threading.get_ident() not in watch.of(keys)
    shown = gauge(daemon)
    assert shown == evaluated_at_once(daemon, watch) and not any("london" in v for v in shown)
