"""The two detectors: unexpected destinations and volume spikes over seasonal baselines.

Both run once per closed interval (event time) and drive the shared :class:`AlertBook`;
each finding carries its evidence: bytes, baseline, top sources and top destinations.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

from egressd.aggregate import Accum, AggregateKey, Bucket
from egressd.baseline.seasonal import Expectation, SeasonalBaselines, to_level
from egressd.config import DetectionConfig
from egressd.detect.alerts import Alert, AlertBook, AlertKey, rfc3339
from egressd.detect.policy import ExpectedDestinations
from egressd.enrich import DestinationLabels
from egressd.sketch import TopK
from egressd.units import format_bytes, format_duration

UNEXPECTED = "EgressUnexpectedDestination"
SPIKE = "EgressVolumeSpike"


@dataclass(frozen=True, slots=True)
class LabelOptions:
    """Which destination labels alerts carry (only those configured, to bound cardinality)."""

    regions: bool = False
    asn: bool = False


def alert_labels(
    alertname: str, group: str, dest: DestinationLabels, severity: str, options: LabelOptions
) -> dict[str, str]:
    labels = {"alertname": alertname, "group": group, "dst_country": dest.country}
    if options.regions and dest.region:
        labels["dst_region"] = dest.region
    if options.asn and dest.asn:
        labels["dst_asn"] = f"AS{dest.asn}"
    labels["severity"] = severity
    return labels


def _top(sketch: TopK, n: int) -> str:
    return ",".join(item for item, _ in sketch.top(n))


def _top_with_bytes(sketch: TopK, n: int) -> str:
    return ", ".join(f"{item} ({format_bytes(weight)})" for item, weight in sketch.top(n))


class _WindowEntry:
    __slots__ = ("bytes", "destinations", "sources", "start")

    def __init__(self, start: float, accum: Accum) -> None:
        self.start = start
        self.bytes = accum.bytes
        self.sources = accum.sources
        self.destinations = accum.destinations


class _Window:
    """One (group, destination)'s recent intervals, with their running byte total."""

    __slots__ = ("entries", "total")

    def __init__(self) -> None:
        self.entries: deque[_WindowEntry] = deque()
        self.total = 0

    def append(self, entry: _WindowEntry) -> None:
        self.entries.append(entry)
        self.total += entry.bytes

    def expire(self, horizon: float) -> None:
        entries = self.entries
        while entries and entries[0].start < horizon:
            self.total -= entries.popleft().bytes


class _Detector:
    """What both detectors share: settings, the expected-destination policy, the alert book."""

    __slots__ = ("_config", "_labels", "book", "policy")

    def __init__(
        self,
        config: DetectionConfig,
        policy: ExpectedDestinations,
        book: AlertBook,
        labels: LabelOptions,
    ) -> None:
        self._config = config
        self._labels = labels
        self.policy = policy
        self.book = book

    def reconfigure(self, config: DetectionConfig, labels: LabelOptions) -> None:
        self._config = config
        self._labels = labels


class UnexpectedDestinationDetector(_Detector):
    """Bytes from a group to a destination outside its expected set, over a sliding window."""

    __slots__ = ("evicted", "windows")

    def __init__(
        self,
        config: DetectionConfig,
        policy: ExpectedDestinations,
        book: AlertBook,
        labels: LabelOptions,
    ) -> None:
        super().__init__(config, policy, book, labels)
        self.windows: dict[AggregateKey, _Window] = {}
        #: windows dropped to stay within detection.max_keys
        self.evicted = 0

    def collect(self, start: float, bucket: Bucket) -> None:
        """Remember this interval's bytes to every destination unexpected for its group."""
        policy = self.policy
        for key, accum in bucket.items():
            group, dest = key
            if policy.is_expected(group, dest, start):
                continue
            window = self.windows.get(key)
            if window is None:
                window = self.windows[key] = _Window()
            window.append(_WindowEntry(start, accum))
        if len(self.windows) > self._config.max_keys:
            self._evict_for_room()

    def _evict_for_room(self) -> None:
        """Drop the lightest tenth of the windows without an active alert.

        Each window holds an interval's evidence sketches; a flood of distinct unexpected
        destinations would otherwise keep a window-length of them for every one. The
        lightest are the furthest from the floor, so they are the ones that cannot page.
        """
        active = self.book.active
        candidates = [
            (window.total, key)
            for key, window in self.windows.items()
            if (UNEXPECTED, key[0], key[1].key) not in active
        ]
        excess = len(self.windows) - self._config.max_keys
        count = min(len(candidates), max(excess, self._config.max_keys // 10, 1))
        for _total, key in heapq.nsmallest(count, candidates, key=lambda item: item[0]):
            del self.windows[key]
        self.evicted += count

    def evaluate(self, now: float, baselines: SeasonalBaselines) -> list[Alert]:
        """Evaluate every window at event time ``now`` (the end of the closed interval)."""
        config = self._config
        horizon = now - config.unexpected_window
        floor = config.unexpected_min_bytes
        changed = []
        active = self.book.active
        for key, window in list(self.windows.items()):
            window.expire(horizon)
            total = window.total
            group, dest = key
            alert_key: AlertKey = (UNEXPECTED, group, dest.key)
            if total < floor and alert_key not in active:
                # Cannot start an alert and has none to keep open: nothing to evaluate.
                if not window.entries:
                    del self.windows[key]
                continue

            def describe(
                window: _Window = window,
                total: int = total,
                group: str = group,
                dest: DestinationLabels = dest,
            ) -> tuple[dict[str, str], dict[str, str]]:
                return self._describe(now, window, total, group, dest, baselines)

            alert = self.book.evaluate(
                alert_key,
                now,
                fire=total >= floor,
                keep=total >= floor / 2,
                describe=describe,
                strength=total,
            )
            if alert is not None:
                changed.append(alert)
            if not window.entries and alert_key not in active:
                del self.windows[key]
        return changed

    def _describe(
        self,
        now: float,
        window: _Window,
        total: int,
        group: str,
        dest: DestinationLabels,
        baselines: SeasonalBaselines,
    ) -> tuple[dict[str, str], dict[str, str]]:
        config = self._config
        sources = TopK(64)
        destinations = TopK(64)
        for entry in window.entries:
            sources.merge(entry.sources)
            destinations.merge(entry.destinations)
        expectation = baselines.expect((group, dest.key), now - config.interval)
        baseline = round(expectation.bytes) if expectation is not None else 0
        expected = self.policy.expected_countries(group)
        expected_text = ", ".join(sorted(expected)) if expected else "none"
        span = format_duration(config.unexpected_window)
        first = window.entries[0].start if window.entries else now
        labels = alert_labels(UNEXPECTED, group, dest, config.severity, self._labels)
        n = config.top_talkers
        annotations = {
            "summary": (
                f"{group} sent {format_bytes(total)} to {dest.describe()} within {span}, "
                "a destination it is not expected to send to"
            ),
            "description": (
                f"Group {group} sent {format_bytes(total)} to {dest.describe()} between "
                f"{rfc3339(first)} and {rfc3339(now)} "
                f"(floor {format_bytes(config.unexpected_min_bytes)} per {span}). "
                f"Expected countries: {expected_text}. "
                f"Top sources: {_top_with_bytes(sources, n)}. "
                f"Top destinations: {_top_with_bytes(destinations, n)}."
            ),
            "bytes": str(total),
            "baseline_bytes": str(baseline),
            "window": span,
            "expected_countries": expected_text,
            "top_sources": _top(sources, n),
            "top_destinations": _top(destinations, n),
        }
        if dest.as_org:
            annotations["dst_as_org"] = dest.as_org
        return labels, annotations

    def to_json(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for (group, dest), window in self.windows.items():
            out.append(
                {
                    "group": group,
                    "dest": dest.key,
                    "as_org": dest.as_org,
                    "entries": [
                        [e.start, e.bytes, e.sources.to_json(), e.destinations.to_json()]
                        for e in window.entries
                    ],
                }
            )
        return out

    def load_json(
        self, data: list[dict[str, object]], intern: dict[str, DestinationLabels]
    ) -> None:
        windows: dict[AggregateKey, _Window] = {}
        for item in data:
            dest_key = str(item["dest"])
            dest = intern.get(dest_key)
            if dest is None:
                base = DestinationLabels.from_key(dest_key)
                dest = DestinationLabels(
                    base.country, base.region, base.asn, str(item.get("as_org", "")), "state"
                )
                intern[dest_key] = dest
            window = _Window()
            entries = item["entries"]
            if not isinstance(entries, list):
                raise ValueError("malformed window")
            for start, size, sources, destinations in entries:
                accum = Accum(32)
                accum.bytes = int(size)
                accum.sources = TopK.from_json(sources)
                accum.destinations = TopK.from_json(destinations)
                window.append(_WindowEntry(float(start), accum))
            windows[(str(item["group"]), dest)] = window
        self.windows = windows


class VolumeSpikeDetector(_Detector):
    """Bytes to an expected destination in one interval far above its seasonal baseline."""

    __slots__ = ("_last",)

    def __init__(
        self,
        config: DetectionConfig,
        policy: ExpectedDestinations,
        book: AlertBook,
        labels: LabelOptions,
    ) -> None:
        super().__init__(config, policy, book, labels)
        # the destination labels of keys with an active spike alert, to evaluate them when idle
        self._last: dict[AlertKey, AggregateKey] = {}

    def eligible(self, expectation: Expectation | None, start: float) -> bool:
        config = self._config
        return (
            expectation is not None
            and expectation.observations >= config.spike_min_observations
            and start - expectation.first_seen >= config.learning
        )

    def evaluate(self, start: float, bucket: Bucket, baselines: SeasonalBaselines) -> list[Alert]:
        """Compare every key of the closed interval at ``start`` with its baseline."""
        config = self._config
        now = start + config.interval
        changed = []
        seen: set[AlertKey] = set()
        for key, accum in bucket.items():
            group, dest = key
            alert_key: AlertKey = (SPIKE, group, dest.key)
            active = alert_key in self.book.active
            if accum.bytes < config.spike_min_bytes / 2 and not active:
                continue
            if not self.policy.is_expected(group, dest, start):
                continue
            expectation = baselines.expect((group, dest.key), start)
            if not self.eligible(expectation, start):
                continue
            assert expectation is not None
            fire, keep = self._conditions(accum.bytes, expectation)
            seen.add(alert_key)

            def describe(
                accum: Accum = accum,
                group: str = group,
                dest: DestinationLabels = dest,
                expectation: Expectation = expectation,
            ) -> tuple[dict[str, str], dict[str, str]]:
                return self._describe(start, accum, group, dest, expectation)

            alert = self.book.evaluate(alert_key, now, fire, keep, describe, accum.bytes)
            if alert_key in self.book.active:
                self._last[alert_key] = key
            if alert is not None:
                changed.append(alert)
        # Active spikes whose destination was silent this interval: nothing keeps them open.
        for alert_key in list(self._last):
            if alert_key in seen:
                continue
            if alert_key not in self.book.active:
                del self._last[alert_key]
                continue
            alert = self.book.evaluate(alert_key, now, False, False, _no_description)
            if alert is not None:
                changed.append(alert)
                del self._last[alert_key]
        return changed

    def _conditions(self, size: int, expectation: Expectation) -> tuple[bool, bool]:
        config = self._config
        expected = expectation.bytes
        deviation = to_level(size) - expectation.level
        fire = (
            size >= config.spike_min_bytes
            and size >= config.spike_ratio * expected
            and deviation >= config.spike_deviations * expectation.spread
        )
        keep = size >= config.spike_min_bytes / 2 and size >= (config.spike_ratio / 2) * expected
        return fire, keep

    def _describe(
        self,
        start: float,
        accum: Accum,
        group: str,
        dest: DestinationLabels,
        expectation: Expectation,
    ) -> tuple[dict[str, str], dict[str, str]]:
        config = self._config
        baseline = round(expectation.bytes)
        ratio = accum.bytes / baseline if baseline > 0 else float("inf")
        ratio_text = f"{ratio:.1f}x" if ratio != float("inf") else "no usual traffic"
        span = format_duration(config.interval)
        n = config.top_talkers
        labels = alert_labels(SPIKE, group, dest, config.severity, self._labels)
        annotations = {
            "summary": (
                f"{group} sent {format_bytes(accum.bytes)} to {dest.describe()} in {span}, "
                f"{ratio_text} its usual {format_bytes(baseline)}"
            ),
            "description": (
                f"Group {group} sent {format_bytes(accum.bytes)} to {dest.describe()} in the "
                f"{span} from {rfc3339(start)}; its seasonal baseline ({expectation.basis}, "
                f"{expectation.observations} intervals of history) is {format_bytes(baseline)}. "
                f"Top sources: {_top_with_bytes(accum.sources, n)}. Top destinations: "
                f"{_top_with_bytes(accum.destinations, n)}."
            ),
            "bytes": str(accum.bytes),
            "baseline_bytes": str(baseline),
            "ratio": f"{ratio:.2f}" if ratio != float("inf") else "inf",
            "window": span,
            "top_sources": _top(accum.sources, n),
            "top_destinations": _top(accum.destinations, n),
        }
        if dest.as_org:
            annotations["dst_as_org"] = dest.as_org
        return labels, annotations

    def to_json(self) -> list[list[str]]:
        return [[k[0], k[1], k[2]] for k in self._last]

    def load_json(self, data: list[list[str]], intern: dict[str, DestinationLabels]) -> None:
        self._last = {}
        for alertname, group, dest_key in data:
            dest = intern.get(dest_key) or DestinationLabels.from_key(dest_key)
            self._last[(alertname, group, dest_key)] = (group, dest)


def _no_description() -> tuple[dict[str, str], dict[str, str]]:
    raise AssertionError("a silent key never starts an alert")
