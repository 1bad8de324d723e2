"""``egressd run`` in the ingest or detect role: the component, HTTP, alert sinks, signals.

Components start in order (alert log, Alertmanager, HTTP, the role) and stop in reverse;
SIGTERM/SIGINT stop the process, a dying component ends it with status 1.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from collections.abc import Hashable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from egressd.app import EXIT_ERROR, EXIT_OK, generator_url, log_alerts
from egressd.cluster.detect import Detect
from egressd.cluster.ingest import Ingest
from egressd.config import Config
from egressd.control import ControlServer
from egressd.detect.alerts import Alert
from egressd.errors import ConfigError, EgressdError
from egressd.gctune import settle_long_lived
from egressd.replay import build_labeler
from egressd.sinks.alertlog import AlertLog
from egressd.sinks.alertmanager import AlertmanagerSink
from egressd.sinks.http import HttpServer
from egressd.sinks.metrics import PREFIX, _extra_families
from egressd.systemd import Notifier

log = logging.getLogger("egressd.cluster")

#: as egressd.cli's: an invalid configuration
EXIT_INVALID = 2


class _RoleCollector:
    """The role's own counters as Prometheus families."""

    def __init__(self, node: RoleNode) -> None:
        self._node = node

    def collect(self) -> Iterable[Metric]:
        extras: dict[str, list[tuple[dict[str, str], float]]] = {}
        for name, labels, value in self._node.component.metrics():
            extras.setdefault(name, []).append((labels, value))
        am = self._node.alertmanager
        if am is not None:
            none: dict[str, str] = {}
            stats = am.stats
            extras[PREFIX + "alertmanager_pushes_total"] = [(none, float(stats.pushes))]
            extras[PREFIX + "alertmanager_push_errors_total"] = [(none, float(stats.push_errors))]
            extras[PREFIX + "alertmanager_alerts_sent_total"] = [(none, float(stats.alerts_sent))]
            extras[PREFIX + "alertmanager_outbox_dropped_total"] = [
                (none, float(stats.outbox_dropped))
            ]
        alert_log = self._node.alert_log
        if alert_log is not None:
            extras[PREFIX + "alert_log_errors_total"] = [({}, float(alert_log.errors))]
        yield from _extra_families(extras)


class RoleNode:
    """One ingest or detect process. Inert until :meth:`run`; also the HTTP API's view."""

    def __init__(self, config: Config, environ: Mapping[str, str] | None = None) -> None:
        self.config = config
        self.notifier = Notifier(environ)
        self.labeler = build_labeler(config)
        self.alertmanager = (
            AlertmanagerSink(config.alertmanager, generator_url(config))
            if config.alertmanager.urls and config.cluster.role == "detect"
            else None
        )
        self.alert_log = (
            AlertLog(config.alerts.log_path)
            if config.alerts.log_path and config.cluster.role == "detect"
            else None
        )
        self.component: Ingest | Detect
        if config.cluster.role == "ingest":
            self.component = Ingest(config, self.labeler)
        else:
            detect = Detect(config, self.labeler, self.publish)
            detect.on_ownership = self._owned_alerts
            self.component = detect
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_RoleCollector(self))
        self.http = HttpServer(config.http, self.registry, self)
        #: the garbage collector's thresholds before :meth:`run` settled the heap
        self._gc_threshold: tuple[int, int, int] | None = None

    # -- DaemonView -------------------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        if not self.component.ready:
            return False, f"{self.component.name} not connected"
        return True, ""

    def firing_alerts(self) -> list[dict[str, Any]]:
        if isinstance(self.component, Detect):
            return [alert.event() for alert in self.component.firing()]
        return []

    def baselines(self, group: str | None) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if isinstance(self.component, Detect):
            for engine in self.component.engines():
                out.extend(engine.baselines.summaries(group))
        return out

    def baselines_version(self) -> Hashable:
        if not isinstance(self.component, Detect):
            return ()
        return tuple(
            (id(engine), id(engine.baselines), engine.baselines.version)
            for engine in self.component.engines()
        )

    # -- alerts -------------------------------------------------------------------------------

    def publish(self, alerts: list[Alert]) -> None:
        log_alerts(alerts)
        if self.alertmanager is not None:
            self.alertmanager.publish(alerts)
        if self.alert_log is not None:
            self.alert_log.publish(alerts)

    def _owned_alerts(self, firing: list[Alert]) -> None:
        # Firing alerts of the partitions this process owns now are the ones it resends;
        # those of partitions that moved away are their new owner's to resend or resolve.
        if self.alertmanager is not None:
            self.alertmanager.replace_firing(firing)
        if self._gc_threshold is not None:
            # Engines loaded from their snapshots live as long as their partitions stay:
            # out of full collections, as the all-in-one daemon's restored state (those of
            # partitions that moved away are collected first).
            settle_long_lived()

    # -- run ------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        started: list[Any] = []
        exit_code = EXIT_OK
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_refused)
        watchdog: asyncio.Task[None] | None = None
        try:
            for component in (self.alert_log, self.alertmanager, self.http, self.component):
                if component is not None:
                    await component.start()
                    started.append(component)
            control = ControlServer(self._reload_refused_outcome)
            try:
                await control.start()
            except OSError as unbound:
                log.warning("no control socket (%s): `egressd reload` cannot reach it", unbound)
            else:
                started.append(control)
            log.info(
                "egressd running in the %s role, HTTP on %s",
                self.config.cluster.role,
                self.config.http.listen,
            )
            # What the process is built of, out of every full collection (egressd.gctune).
            self._gc_threshold = gc.get_threshold()
            settle_long_lived()
            self.notifier.ready(f"{self.config.cluster.role} role running")
            if self.notifier.watchdog_interval:
                watchdog = loop.create_task(
                    self.notifier.keep_alive(self.notifier.watchdog_interval)
                )
            waits = [loop.create_task(stopping.wait())]
            waits += [
                loop.create_task(c.wait()) for c in started if callable(getattr(c, "wait", None))
            ]
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()
            if waits[0] not in done:
                exit_code = EXIT_ERROR
                for task in done:
                    error = task.exception()
                    if isinstance(error, ConfigError):
                        # Found only once the brokers answered (cluster.transactions):
                        # exit as for any invalid configuration, which a restart cannot mend.
                        log.error("invalid configuration: %s; egressd exits", error)
                        exit_code = EXIT_INVALID
                    else:
                        log.error("stopped unexpectedly: %r; egressd exits", error)
            else:
                log.info("stopping on signal")
        except (EgressdError, OSError) as exc:
            log.error("cannot start: %s", exc)
            exit_code = EXIT_ERROR
        finally:
            self.notifier.stopping()
            if watchdog is not None:
                watchdog.cancel()
            for component in reversed(started):
                try:
                    await component.stop()
                except Exception:
                    log.exception("stopping %s failed", type(component).__name__)
                    exit_code = EXIT_ERROR
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            self.notifier.close()
            if self._gc_threshold is not None:  # as it found them (tests run roles inside)
                gc.unfreeze()
                gc.set_threshold(*self._gc_threshold)
                self._gc_threshold = None
        return exit_code

    def _reload_refused(self) -> str:
        # Partitions, engines and snapshots are built from the configuration at start: a
        # changed one is applied by a restart, which moves the partitions cleanly.
        reason = (
            f"configuration reload is not supported in the {self.config.cluster.role} role: "
            "restart egressd to apply a changed configuration"
        )
        log.warning("%s", reason)
        return reason

    async def _reload_refused_outcome(self) -> tuple[bool, str]:
        return False, self._reload_refused()


def run_role(config: Config) -> int:
    """``egressd run`` with ``[cluster] role`` ingest or detect."""
    from egressd.app import _new_event_loop

    node = RoleNode(config)
    with asyncio.Runner(loop_factory=_new_event_loop) as runner:
        return runner.run(node.run())
