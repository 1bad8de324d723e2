"""The daemon's composition root: builds every component from the configuration and runs them.

Constructors are inert; components start in order (alert log, Alertmanager, HTTP, sources)
and stop in reverse. Signals drive shutdown (TERM/INT) and reload (HUP, or ``egressd reload``
over the control socket, which waits for the outcome); a dying task ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable, Coroutine, Hashable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from egressd.baseline.statefile import (
    foreign_state,
    load_state,
    move_aside,
    save_state,
    saved_too_large,
)
from egressd.build_info import describe
from egressd.clock import SteadyWall
from egressd.columns import FlowColumns
from egressd.config import (
    Config,
    NetflowSourceConfig,
    SourcesConfig,
    config_warnings,
    load_config,
    split_host_port,
)
from egressd.control import ControlServer
from egressd.detect.alerts import FIRING, Alert
from egressd.enrich import DestinationLabeler
from egressd.enrich.labeler import CompositeLabeler, LoadedFile
from egressd.errors import ConfigError, EgressdError, StateError, StateTooLarge
from egressd.gctune import settle_long_lived
from egressd.model import FlowRecord
from egressd.pipeline import WORKER_COUNTERS, Engine, Partial, Progress
from egressd.replay import build_labeler
from egressd.sinks.alertlog import AlertLog
from egressd.sinks.alertmanager import AlertmanagerSink
from egressd.sinks.http import HttpServer
from egressd.sinks.metrics import BaselineGauge, DaemonStats, EgressdCollector, build_registry
from egressd.sources.base import Source
from egressd.systemd import Notifier
from egressd.units import format_bytes, format_utc

log = logging.getLogger("egressd")

EXIT_OK = 0
EXIT_ERROR = 1

#: how often the idle watermark, the status line and readiness are looked at
TICK = 2.0
#: flows sources may deliver while the state is restored, kept to be judged once it is in
#: place (about 100 bytes each as columns): a million-baseline state takes seconds
HELD_RECORDS = 1_000_000
#: how far each notice to systemd moves its start timeout on while the state is restored
RESTORE_EXTEND = 30.0


def default_config() -> Config:
    """The built-in configuration of ``egressd run`` without ``--config``."""
    return Config(sources=SourcesConfig(netflow=(NetflowSourceConfig(),)))


def state_path_of(config: Config, environ: Mapping[str, str]) -> Path | None:
    """Configured state path, else systemd's StateDirectory, else None (no persistence)."""
    if config.state.path is not None:
        return config.state.path
    directory = environ.get("STATE_DIRECTORY", "").split(":")[0]
    if directory:
        return Path(directory) / "state.json"
    return None


def generator_url(config: Config) -> str:
    """Where an alert's "source" link in Alertmanager points: this daemon's alert API."""
    if config.http.external_url:
        return config.http.external_url.rstrip("/") + "/api/v1/alerts"
    host, port = split_host_port(config.http.listen)
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.http.tls_cert_file is not None else "http"
    return f"{scheme}://{host}:{port}/api/v1/alerts"


def build_sources(config: Config) -> list[Source]:
    """One source per configured input; names are unique and stable (used in metrics, state)."""
    sources: list[Source] = []
    names: set[str] = set()

    def unique(name: str) -> str:
        candidate, n = name, 1
        while candidate in names:
            n += 1
            candidate = f"{name}#{n}"
        names.add(candidate)
        return candidate

    if config.sources.netflow:
        from egressd.sources.netflow import NetflowSource
        from egressd.sources.netflow_workers import NetflowWorkers

        for netflow in config.sources.netflow:
            name = unique(f"netflow:{netflow.listen}")
            if netflow.workers > 1:
                sources.append(NetflowWorkers(netflow, name, config))
            else:
                sources.append(NetflowSource(netflow, name))
    if config.sources.kafka:
        from egressd.sources.kafka import KafkaSource

        for kafka in config.sources.kafka:
            sources.append(KafkaSource(kafka, unique(f"kafka:{','.join(kafka.topics)}")))
    if config.sources.capture:
        from egressd.sources.capture import CaptureSource

        for capture in config.sources.capture:
            sources.append(CaptureSource(capture, unique(f"capture:{capture.interface}")))
    return sources


def log_alerts(alerts: list[Alert]) -> None:
    """One warning line per alert transition, labels in order."""
    for alert in alerts:
        log.warning(
            "alert %s: %s %s",
            "firing" if alert.state == FIRING else "resolved",
            alert.labels.get("alertname", "?"),
            " ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()) if k != "alertname"),
        )


class EngineFeed:
    """The RecordSink sources deliver to: runs the engine, forwards alert transitions.

    It also remembers when flows last moved event time on (its :class:`Progress`): whenever
    event time stops moving for ``IDLE_AFTER``, because sources went quiet or because the
    only exporter's clock stalled or stepped back, wall time takes over
    (:meth:`Daemon.idle_tick`) and intervals keep closing.
    """

    __slots__ = ("_daemon", "_held", "_held_count", "monotonic", "now", "progress", "wall")

    def __init__(
        self,
        daemon: Daemon,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._daemon = daemon
        self.wall = wall
        #: wall time as the bounds on event time read it: never stepping back (a host clock
        #: set back would count every flow late, and nothing would page until it caught up)
        self.now = SteadyWall(lambda: self.wall(), lambda: self.monotonic())
        self.monotonic = monotonic
        self.progress = Progress(monotonic())
        #: what sources delivered while the state was being restored (see :meth:`hold`)
        self._held: deque[tuple[Sequence[FlowRecord] | None, FlowColumns | None]] | None = None
        self._held_count = 0

    @property
    def last_event_time(self) -> float:
        """The event time flows last moved to."""
        return self.progress.event_time

    @last_event_time.setter
    def last_event_time(self, value: float) -> None:
        self.progress.event_time = value

    @property
    def last_wall(self) -> float:
        """When (on the monotonic clock) flows last moved event time on."""
        return self.progress.since

    @last_wall.setter
    def last_wall(self, value: float) -> None:
        self.progress.since = value

    def hold(self) -> None:
        """Keep what is submitted from now on, in order, until :meth:`release`: records that
        arrive before the state is restored are judged against it, not against empty
        baselines. At most :data:`HELD_RECORDS` are kept; later ones are dropped and counted."""
        if self._held is None:
            self._held = deque()
            self._held_count = 0

    @property
    def holding(self) -> bool:
        """Whether what is submitted is held (from :meth:`hold` until drained)."""
        return self._held is not None

    def release(self) -> None:
        """Run what was held through the engine and stop holding."""
        held, self._held = self._held, None
        for records, columns in held or ():
            self._account(records, columns)

    async def drain(self) -> None:
        """:meth:`release`, a held batch at a time with a turn of the event loop between:
        judging a million held flows takes seconds (labelling destinations the cache does not
        know yet, closing intervals), which stopped the loop at once. What arrives meanwhile
        is held behind them, so flows are judged in the order they came."""
        held = self._held
        while held:
            records, columns = held.popleft()
            self._held_count -= len(columns) if columns is not None else len(records or ())
            self._account(records, columns)
            await asyncio.sleep(0)
        self._held = None

    def _keep(self, records: Sequence[FlowRecord] | None, columns: FlowColumns | None) -> None:
        assert self._held is not None
        count = len(columns) if columns is not None else len(records or ())
        stats = self._daemon.stats
        if self._held_count + count > HELD_RECORDS:
            stats.records_dropped_before_state += count
            return
        self._held.append((records, columns))
        self._held_count += count
        stats.records_held_before_state += count

    def submit(self, records: Sequence[FlowRecord]) -> None:
        if self._held is not None:
            self._keep(list(records), None)
            return
        self._account(records, None)

    def submit_columns(self, columns: FlowColumns) -> None:
        """:meth:`submit` of a batch given as columns (the NetFlow hot path)."""
        if self._held is not None:
            self._keep(None, columns)
            return
        self._account(None, columns)

    def _account(self, records: Sequence[FlowRecord] | None, columns: FlowColumns | None) -> None:
        daemon = self._daemon
        engine = daemon.engine
        engine.future_limit = self.now() + daemon.config.detection.max_clock_ahead
        before = engine.event_time()
        if columns is not None:
            alerts = engine.process_columns(columns)
        else:
            assert records is not None
            alerts = engine.process(records)
        after = engine.event_time()
        # Only flows that move event time on are progress: flows stamped behind it (a clock
        # stepped back) arrive steadily yet would hold every interval open.
        if after > before:
            self.progress.note(after, self.monotonic())
        if alerts:
            daemon.publish(alerts)

    def apply_partials(
        self, partials: Sequence[Partial], event_time: float | None, counts: Mapping[str, int]
    ) -> None:
        """What NetFlow workers counted: ``partials`` up to their ``event_time``, and their
        per-record engine counters (``counts``: increments by :class:`EngineStats` field)."""
        daemon = self._daemon
        engine = daemon.engine
        stats = engine.stats
        for name, delta in counts.items():
            if name in WORKER_COUNTERS and delta > 0:
                setattr(stats, name, getattr(stats, name) + delta)
        if event_time is not None:
            # A worker's clock cannot push event time past what a record could claim.
            event_time = min(event_time, self.now() + daemon.config.detection.max_clock_ahead)
        before = engine.event_time()
        alerts = engine.apply_partials(partials, event_time)
        after = engine.event_time()
        if after > before:
            self.progress.note(after, self.monotonic())
        if alerts:
            daemon.publish(alerts)


class Daemon:
    """Everything ``egressd run`` is. Inert until :meth:`run`."""

    def __init__(
        self,
        config: Config,
        config_path: Path | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        sources: list[Source] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.config = config
        self.config_path = config_path
        self.state_path = state_path_of(config, env)
        self.stats = DaemonStats(started=time.time())
        self.labeler: DestinationLabeler = build_labeler(config)
        self.engine = Engine(config, self.labeler)
        self.sources = build_sources(config) if sources is None else sources
        self.alertmanager = (
            AlertmanagerSink(config.alertmanager, generator_url(config))
            if config.alertmanager.urls
            else None
        )
        self.alert_log = AlertLog(config.alerts.log_path) if config.alerts.log_path else None
        self.collector = collector = EgressdCollector(
            lambda: self.engine,
            lambda: self.sources,
            self.stats,
            self.alertmanager.stats if self.alertmanager is not None else None,
        )
        self.registry = build_registry(collector)
        self.http = HttpServer(config.http, self.registry, self)
        self.stats.http_connections = self.http.connections
        if self.http.auth is not None:
            self.stats.http_auth = self.http.auth.outcomes
        self.notifier = Notifier(env)
        self.feed = EngineFeed(self)
        self._positions: dict[str, Any] = {}
        self._state_loaded = False
        self._save_lock: asyncio.Lock | None = None
        self._stopping: asyncio.Event | None = None
        self._reloads: set[asyncio.Task[bool]] = set()
        self._reload_lock: asyncio.Lock | None = None
        #: the garbage collector's thresholds before :meth:`settle_heap` first changed them
        self._gc_threshold: tuple[int, int, int] | None = None

    # -- what the HTTP API shows (DaemonView) -------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if not self._state_loaded:
            return False, "state not loaded yet"
        if self.feed.holding:
            return False, "judging the flows held while the state was restored"
        waiting = [s.name for s in self.sources if not s.ready]
        if waiting:
            return False, "sources not ready: " + ", ".join(waiting)
        return True, ""

    def firing_alerts(self) -> list[dict[str, Any]]:
        return [alert.event() for alert in self.engine.active_alerts()]

    def baselines(self, group: str | None) -> Iterator[dict[str, Any]]:
        return self.engine.baselines.iter_summaries(group)

    def baselines_version(self) -> Hashable:
        # Every change of a baseline bumps its version; a restored state is a new engine.
        engine = self.engine
        return id(engine), id(engine.baselines), engine.baselines.version

    # -- alerts -------------------------------------------------------------------------------

    def publish(self, alerts: list[Alert]) -> None:
        log_alerts(alerts)
        if self.alertmanager is not None:
            self.alertmanager.publish(alerts)
        if self.alert_log is not None:
            self.alert_log.publish(alerts)
            self.stats.alert_log_errors = self.alert_log.errors

    # -- state ----------------------------------------------------------------------------------

    def restore_state(self) -> None:
        """Load learned state (a corrupt file is moved aside and learning starts again)."""
        self._apply_restored(self._read_state())

    def _read_state(self) -> tuple[Engine, dict[str, Any], BaselineGauge] | None:
        """The state file read into an engine of its own, with the metrics view's first
        evaluation of its baselines, or None (no file, or an unusable one, moved aside).
        Touches nothing the event loop uses but counters, so :meth:`run` calls it in a
        thread while HTTP and the collector serve."""
        path = self.state_path
        if path is None:
            return None
        self.refuse_foreign_state()  # (again: the file may have changed since the start)
        try:
            data = load_state(path, self.config.state.max_size, decode_records=True)
        except StateError as exc:
            if isinstance(exc, StateTooLarge):
                self.stats.state_too_large += 1
            else:
                self.stats.state_corrupt += 1
            move_aside(path, str(exc))
            return None
        if data is None:
            return None
        engine = Engine(self.config, self.labeler)
        try:
            engine.restore(data)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.stats.state_corrupt += 1
            move_aside(path, f"{type(exc).__name__}: {exc}")
            return None
        return engine, data, self.collector.view_for(engine, self.feed.wall())

    def refuse_foreign_state(self) -> None:
        """Stop the start when the state path names something that is no state file of
        egressd's (:func:`~egressd.baseline.statefile.foreign_state`): it would be moved
        aside like a damaged state and the daemon's own written in its place."""
        path = self.state_path
        problem = foreign_state(path) if path is not None else None
        if problem is not None:
            key = "state.path" if self.config.state.path is not None else "$STATE_DIRECTORY"
            raise StateError(f"{key}: {str(path)!r}: {problem}")

    def _apply_restored(
        self, restored: tuple[Engine, dict[str, Any], BaselineGauge] | None
    ) -> None:
        path = self.state_path
        if path is None:
            log.warning(
                "no state.path configured and no $STATE_DIRECTORY: what egressd learns "
                "is lost when it stops"
            )
        elif restored is not None:
            self.engine, data, view = restored
            self.collector.adopt(view)
            positions = data.get("sources")
            self._positions = positions if isinstance(positions, dict) else {}
            self.stats.state_restored = True
            log.info(
                "restored state from %s: %d baselines, %d active alerts",
                path,
                len(self.engine.baselines),
                len(self.engine.book.active),
            )
            self._count_dropped_on_load(path)
            self._clamp_restored_time(path)
        self.feed.last_event_time = self.engine.event_time()
        self._state_loaded = True

    def _count_dropped_on_load(self, path: Path) -> None:
        """One warning for everything the restored state held beyond the engine's bounds."""
        dropped = {part: n for part, n in self.engine.dropped_on_load.items() if n}
        if not dropped:
            return
        counted = self.stats.state_entries_dropped
        for part, n in dropped.items():
            counted[part] = counted.get(part, 0) + n
        log.warning(
            "state from %s: entries left out on load (values learning never writes, times "
            "after the saved event time, or beyond detection.max_keys and the like): %s",
            path,
            ", ".join(f"{part} {n}" for part, n in dropped.items()),
        )

    async def restore_state_off_loop(self) -> None:
        """:meth:`restore_state`, the file read and the engine rebuilt in a thread: a large
        state takes seconds, during which HTTP answers (``/readyz`` says the state is not
        loaded yet) and sources started early are held (:meth:`EngineFeed.hold`). No reload
        runs meanwhile: it would change the engine being replaced."""
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            extending = asyncio.get_running_loop().create_task(self._extend_start_timeout())
            try:
                restored = await asyncio.to_thread(self._read_state)
            finally:
                extending.cancel()
            self._apply_restored(restored)

    async def _extend_start_timeout(self) -> None:
        """Tell systemd the start goes on while the state is restored (its start timeout,
        90 s by default, would otherwise end a daemon restoring a large state slowly)."""
        while True:
            self.notifier.notify(
                f"EXTEND_TIMEOUT_USEC={int(RESTORE_EXTEND * 1e6)}",
                f"STATUS=restoring learned state from {self.state_path}",
            )
            await asyncio.sleep(RESTORE_EXTEND / 3)

    def _clamp_restored_time(self, path: Path) -> None:
        """A state saved by a clock far ahead must not freeze detection until time catches up."""
        limit = self.feed.now() + self.config.detection.max_clock_ahead
        ahead = self.engine.clamp_event_time(limit)
        if ahead is None:
            return
        self.stats.state_time_clamped += 1
        log.warning(
            "state from %s reaches event time %s, more than detection.max_clock_ahead past "
            "wall time: event time set back to %s",
            path,
            format_utc(ahead),
            format_utc(self.engine.event_time()),
        )

    async def save(self) -> bool:
        """Save the engine's state (and source positions) atomically; True when saved."""
        if self.state_path is None:
            return False
        if self._save_lock is None:
            self._save_lock = asyncio.Lock()
        async with self._save_lock:
            positions = {s.name: s.checkpoint_position() for s in self.sources}
            # (the baselines' records a copy of their rows: their text is encoded in the
            # thread, a piece at a time, so the loop does not stand still for it)
            snapshot = self.engine.snapshot(records_text=False)
            try:
                # orjson keeps the GIL while it serialises the rest, so the loop cannot change
                # the snapshot underneath; the records' text, the write and fsync run beside
                # the loop.
                size = await asyncio.to_thread(
                    save_state,
                    self.state_path,
                    snapshot,
                    extra={"sources": positions},
                    on_clamped=self._count_clamped,
                )
            except StateError as exc:
                self.stats.state_save_errors += 1
                log.error("%s", exc)
                return False
            self.stats.state_saves += 1
            self.stats.state_last_save = time.time()
            self.stats.state_last_save_bytes = size
            if size > self.config.state.max_size:
                # Saved whole (nothing is lost now), but a restart would move it aside.
                self.stats.state_saved_too_large += 1
                log.error("%s", saved_too_large(self.state_path, size, self.config.state.max_size))
            for source in self.sources:
                position = positions.get(source.name)
                if position is not None:
                    await source.checkpoint_saved(position)
            return True

    def settle_heap(self, *, rescan: bool = True) -> None:
        """Keep what the daemon is built of out of the garbage collector's full scans
        (:func:`egressd.gctune.settle_long_lived`): once it is running, after each reload
        (``rescan=False`` after a geo data change: only the new tables are scanned)."""
        if self._gc_threshold is None:
            self._gc_threshold = gc.get_threshold()
        settle_long_lived(rescan=rescan)

    def _unsettle_heap(self) -> None:
        """Give the garbage collector back as :meth:`settle_heap` found it."""
        if self._gc_threshold is not None:
            gc.unfreeze()
            gc.set_threshold(*self._gc_threshold)
            self._gc_threshold = None

    def _count_clamped(self, values: int) -> None:
        self.stats.state_values_clamped += values

    # -- reload ---------------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Re-read the configuration and geo data; a bad one is rejected, the old one kept."""
        applied, _ = await self.reload_outcome()
        return applied

    async def reload_outcome(self) -> tuple[bool, str]:
        """:meth:`reload`, one at a time (SIGHUP or ``egressd reload``): whether the new
        configuration is in force, and the status line or the reason it was refused."""
        if self._reload_lock is None:
            self._reload_lock = asyncio.Lock()
        async with self._reload_lock:
            return await self._reload()

    async def _reload(self) -> tuple[bool, str]:
        self.notifier.reloading()
        try:
            path = self.config_path
            new = await asyncio.to_thread(load_config, path) if path else self.config
            if new.detection.interval != self.config.detection.interval:
                raise ConfigError(
                    "detection.interval cannot change while egressd runs (baselines are "
                    "per interval); restart egressd to use a new interval"
                )
            labeler = await asyncio.to_thread(build_labeler, new)
        except (EgressdError, OSError, ValueError) as exc:
            self.stats.config_reload_errors += 1
            log.error("configuration reload rejected, keeping the running one: %s", exc)
            reason = " ".join(str(exc).split())
            self.notifier.notify("READY=1", f"STATUS=configuration reload rejected: {reason}")
            return False, reason
        for section in ("sources", "http", "state", "alertmanager", "alerts"):
            if getattr(new, section) != getattr(self.config, section):
                log.warning("[%s] changed: restart egressd to apply it", section)
        self.engine.reconfigure(new, labeler)
        self.config = dataclasses.replace(
            new,
            sources=self.config.sources,
            http=self.config.http,
            state=self.config.state,
            alertmanager=self.config.alertmanager,
            alerts=self.config.alerts,
        )
        for source in self.sources:
            # NetFlow workers classify and label: they count with the new policy too.
            reconfigure = getattr(source, "reconfigure", None)
            if callable(reconfigure):
                reconfigure(self.config)
        old, self.labeler = self.labeler, labeler
        if isinstance(old, CompositeLabeler):
            old.close()  # the new labeler opened its own copies of the files
        # Label names changed (a region map or an ASN database added or removed): every
        # baseline's label set and expectation again, in a thread beside the event loop.
        await self.collector.settle()
        self.stats.config_reloads += 1
        self.stats.config_last_reload_success = time.time()
        if self._gc_threshold is not None:  # a running daemon (not a test's bare one)
            self.settle_heap()  # the new configuration and labeler live as long as it
        log.info("configuration reloaded from %s", path or "built-in defaults")
        status = self._status()
        self.notifier.notify("READY=1", f"STATUS={status}")
        return True, status

    def reload_geo(self) -> bool:
        """Pick up changed mmdb and region-map files; True when labels may have changed.

        A broken file keeps the data loaded before it (counted and logged once per version).
        Loads on the calling thread; the daemon's watcher uses :meth:`reload_geo_off_loop`.
        """
        labeler = self.labeler
        if not isinstance(labeler, CompositeLabeler):
            return False  # embedded data changes only with egressd itself
        return self._apply_geo(labeler, labeler.load_changed())

    async def reload_geo_off_loop(self) -> bool:
        """:meth:`reload_geo`, the files read and parsed in a thread (a large region map
        takes seconds, which on the event loop would stop the collector, HTTP and the
        watchdog). Only the swap runs on the loop, between lookups: the labeler answers them
        from the loop and closes a replaced database, which elsewhere could close it under a
        lookup."""
        labeler = self.labeler
        if not isinstance(labeler, CompositeLabeler):
            return False
        loaded = await asyncio.to_thread(labeler.load_changed)
        if labeler is not self.labeler:  # a configuration reload replaced it meanwhile
            for item in loaded:
                item.discard()
            return False
        return self._apply_geo(labeler, loaded)

    def _apply_geo(self, labeler: CompositeLabeler, loaded: list[LoadedFile]) -> bool:
        failures = labeler.reload_failures
        changed = labeler.apply_loaded(loaded)
        self.stats.geo_reload_errors += labeler.reload_failures - failures
        if changed:
            # The engine caches labels per address in front of the labeler; baselines stay.
            self.engine.labels_changed()
            self.stats.geo_reloads += 1
            if self._gc_threshold is not None:  # a running daemon (not a test's bare one)
                # The new tables (a region map: ~5 objects a network); the replaced ones
                # hold no cycles, so reference counting has freed them already.
                self.settle_heap(rescan=False)
        return changed

    def _schedule_reload(self) -> None:
        task = asyncio.get_running_loop().create_task(self.reload(), name="egressd-reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    # -- background tasks -----------------------------------------------------------------------

    async def _saver(self) -> None:
        while True:
            await asyncio.sleep(self.config.state.save_interval)
            await self.save()

    async def _geo_watcher(self) -> None:
        # Reads the interval each time: a SIGHUP may change it, or swap the labeler.
        while True:
            await asyncio.sleep(self.config.geo.watch_interval)
            await self.reload_geo_off_loop()

    async def _ticker(self) -> None:
        """Idle watermark and status line: wall time moves event time while it stands still."""
        while True:
            await asyncio.sleep(TICK)
            self.idle_tick(self.feed.monotonic())
            self.notifier.status(self._status())

    def idle_tick(self, now: float) -> None:
        """Move event time on at wall-clock pace from where flows last moved it, once they
        have not for IDLE_AFTER, up to wall time (``now`` is the feed's monotonic clock)."""
        target = self.feed.progress.idle_target(now, self.feed.now())
        if target is None or target <= self.engine.event_time():
            return
        self.stats.idle_advances += 1
        alerts = self.engine.advance(target)
        if alerts:
            self.publish(alerts)

    def _status(self) -> str:
        stats = self.engine.stats
        firing = len(self.engine.active_alerts())
        return (
            f"{stats.records} records, egress {format_bytes(stats.egress_bytes)}, "
            f"{len(self.engine.baselines)} baselines, {firing} alert(s) firing"
        )

    # -- run ------------------------------------------------------------------------------------

    async def run(self) -> int:
        """Start everything, serve until a signal or a failure, stop in reverse, save state."""
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        started: list[Any] = []
        background: list[asyncio.Task[Any]] = []
        exit_code = EXIT_OK
        handled: list[signal.Signals] = []
        try:
            self.refuse_foreign_state()  # before anything starts
            for signum, handler in (
                (signal.SIGTERM, self._stopping.set),
                (signal.SIGINT, self._stopping.set),
                (signal.SIGHUP, self._schedule_reload),
            ):
                loop.add_signal_handler(signum, handler)
                handled.append(signum)
            if self.alert_log is not None:
                await self.alert_log.start()
                started.append(self.alert_log)
            # HTTP first: health, readiness ("state not loaded yet") and metrics answer while
            # a large state is restored. Sources whose position the state does not decide
            # (UDP) start too, and what they deliver is held until the state is in place,
            # so neither the socket buffer fills nor do records meet empty baselines.
            await self.http.start()
            started.append(self.http)
            control = ControlServer(self.reload_outcome)
            try:
                await control.start()
            except OSError as error:
                log.warning(
                    "no control socket (%s): `egressd reload` cannot reach this process; "
                    "SIGHUP still reloads",
                    error,
                )
            else:
                started.append(control)
            early = [s for s in self.sources if getattr(s, "starts_before_state", False)]
            self.feed.hold()
            try:
                for source in early:
                    await source.start(self.feed)
                    started.append(source)
                await self.restore_state_off_loop()
                for source in early:
                    source.restore_position(self._positions.get(source.name))
                await self.feed.drain()
            finally:
                self.feed.release()  # (nothing left once drained)
            # (in a thread when the held flows took the event time to an hour the restore's
            # thread did not evaluate: a million baselines took a second of the loop)
            await self.collector.settle()
            if self.alertmanager is not None:
                self.alertmanager.replace_firing(self.engine.active_alerts())
                await self.alertmanager.start()
                started.append(self.alertmanager)
            for source in self.sources:
                if source in early:
                    continue
                source.restore_position(self._positions.get(source.name))
                if hasattr(source, "request_checkpoint"):
                    source.request_checkpoint = self.save
                await source.start(self.feed)
                started.append(source)
            self.feed.last_wall = self.feed.monotonic()

            def spawn(name: str, coro: Coroutine[Any, Any, Any]) -> None:
                background.append(loop.create_task(coro, name=name))

            spawn("egressd-stop", self._stopping.wait())
            spawn("egressd-state-saver", self._saver())
            spawn("egressd-ticker", self._ticker())
            spawn("egressd-geo-watcher", self._geo_watcher())
            if self.notifier.watchdog_interval:
                spawn("egressd-watchdog", self.notifier.keep_alive(self.notifier.watchdog_interval))
            for component in started:
                wait: Callable[[], Coroutine[Any, Any, Any]] | None = getattr(
                    component, "wait", None
                )
                if wait is not None:
                    spawn(
                        f"egressd-watch-{getattr(component, 'name', type(component).__name__)}",
                        wait(),
                    )
            self.settle_heap()  # state restored, sources started: the long-lived heap
            self.notifier.ready(self._status())
            log.info(
                "egressd running (%s): %d source(s), HTTP on %s, state %s",
                describe(),
                len(self.sources),
                self.config.http.listen,
                self.state_path or "not persisted",
            )
            for warning in config_warnings(self.config):
                log.warning("%s", warning)
            done, _pending = await asyncio.wait(background, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is background[0]:
                    log.info("stopping on signal")
                    continue
                exit_code = EXIT_ERROR
                exc = task.exception() if not task.cancelled() else None
                log.error("%s stopped unexpectedly: %r; egressd exits", task.get_name(), exc)
        except (EgressdError, OSError) as exc:
            log.error("cannot start: %s", exc)
            exit_code = EXIT_ERROR
        finally:
            self.notifier.stopping()
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            exit_code = await self._shutdown(started, exit_code)
            for signum in handled:
                loop.remove_signal_handler(signum)
            self.notifier.close()
            self._unsettle_heap()
        return exit_code

    async def _shutdown(self, started: list[Any], exit_code: int) -> int:
        """Stop sources first (they drain into the engine), save state, then the sinks."""
        sources = [c for c in started if c in self.sources]
        sinks = [c for c in started if c not in self.sources]
        for component in reversed(sources):
            try:
                await component.stop()
            except Exception:
                log.exception("stopping %s failed", component.name)
                exit_code = EXIT_ERROR
        # Open intervals are not closed here: they are part of the saved state and go on
        # after the restart, so a restart neither invents nor loses an interval.
        if self._state_loaded and self.state_path is not None and not await self.save():
            exit_code = EXIT_ERROR
        for component in reversed(sinks):
            try:
                await component.stop()
            except Exception:
                log.exception("stopping %s failed", type(component).__name__)
                exit_code = EXIT_ERROR
        return exit_code


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


def run_daemon(config_path: Path | None, allow_root: bool = False) -> int:
    """``egressd run``: the exit status (0 after a clean stop on SIGTERM/SIGINT)."""
    if hasattr(os, "geteuid") and os.geteuid() == 0 and not allow_root:
        log.error(
            "egressd refuses to run as root: it needs no privileges for NetFlow, Kafka or "
            "HTTP (run it as a dedicated user, as the systemd units do) or pass --allow-root"
        )
        return EXIT_ERROR
    config = default_config() if config_path is None else load_config(config_path)
    if config.cluster.role != "all-in-one":
        from egressd.cluster.node import run_role

        return run_role(config)
    daemon = Daemon(config, config_path)
    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        return runner.run(daemon.run())
