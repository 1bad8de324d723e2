"""The two detectors: unexpected destinations and volume spikes over seasonal baselines.

Both run once per closed interval (event time) and drive the shared :class:`AlertBook`;
each finding carries its evidence: bytes, baseline, top sources and top destinations.
"""

from __future__ import annotations

import heapq
import math
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
    """One interval of one (group, destination): egress, its small-packet part, ingress."""

    __slots__ = ("bytes", "destinations", "ingress", "small", "sources", "start")

    def __init__(self, start: float, accum: Accum) -> None:
        self.start = start
        self.bytes = accum.bytes
        self.small = accum.small
        self.ingress = accum.ingress
        self.sources = accum.sources
        self.destinations = accum.destinations


class _Span:
    """The entries of one window length, with running sums."""

    __slots__ = ("bytes", "entries", "ingress", "small")

    def __init__(self) -> None:
        self.entries: deque[_WindowEntry] = deque()
        self.bytes = 0
        self.small = 0
        self.ingress = 0

    def append(self, entry: _WindowEntry) -> None:
        self.entries.append(entry)
        self.bytes += entry.bytes
        self.small += entry.small
        self.ingress += entry.ingress

    def expire(self, horizon: float) -> None:
        entries = self.entries
        while entries and entries[0].start < horizon:
            entry = entries.popleft()
            self.bytes -= entry.bytes
            self.small -= entry.small
            self.ingress -= entry.ingress

    def effective(self, return_fraction: float) -> int:
        """Egress that counts: bulk always; small packets beyond a share of the ingress."""
        allowance = int(return_fraction * self.ingress)
        return self.bytes - self.small + max(self.small - allowance, 0)


class _Window:
    """One (group, destination)'s recent intervals: one span per configured window length."""

    __slots__ = ("destinations", "sources", "spans")

    def __init__(self, count: int) -> None:
        self.spans = [_Span() for _ in range(count)]
        #: evidence over the window's whole life (the long windows keep no sketches per entry)
        self.sources = TopK(64)
        self.destinations = TopK(64)

    @property
    def entries(self) -> deque[_WindowEntry]:
        """Entries of the longest window (every entry any window still holds)."""
        return self.spans[-1].entries

    @property
    def total(self) -> int:
        return self.spans[0].bytes

    def append(self, entry: _WindowEntry) -> None:
        for span in self.spans:
            span.append(entry)
        if entry.bytes:
            self.sources.merge(entry.sources)
            self.destinations.merge(entry.destinations)


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


#: the destination key of a group's summed unexpected egress (fan-out)
FANOUT_COUNTRY = "multiple"


class UnexpectedDestinationDetector(_Detector):
    """Bytes from a group to a destination outside its expected set, over sliding windows.

    Each configured window (``detection.unexpected_windows``) has its own floor; a
    destination pages when any window reaches its floor. Small-packet egress counts only
    beyond ``ingress_return_fraction`` of the ingress from the same destination in that
    window. A group's unexpected egress summed over the destinations that do not page on
    their own pages too, at ``fanout_factor`` times a window's floor (fan-out).
    """

    __slots__ = ("_fanout_last", "evicted", "windows")

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
        #: groups with an active fan-out alert
        self._fanout_last: set[str] = set()

    def reconfigure(self, config: DetectionConfig, labels: LabelOptions) -> None:
        if config.unexpected_windows != self._config.unexpected_windows:
            self.windows = {}  # other window lengths: start afresh
        super().reconfigure(config, labels)

    def collect(self, start: float, bucket: Bucket) -> None:
        """Remember this interval's bytes to every destination unexpected for its group."""
        policy = self.policy
        windows = self.windows
        count = len(self._config.unexpected_windows)
        for key, accum in bucket.items():
            window = windows.get(key)
            if window is None:
                if not accum.bytes:
                    continue  # ingress alone: nothing to set it against
                group, dest = key
                if policy.is_expected(group, dest, start):
                    continue
                window = windows[key] = _Window(count)
            elif not accum.bytes and not accum.ingress:
                continue
            window.append(_WindowEntry(start, accum))
        if len(windows) > self._config.max_keys:
            self._evict_for_room()

    def _evict_for_room(self) -> None:
        """Drop the lightest tenth of the windows without an active alert.

        Each window holds an interval's evidence sketches; a flood of distinct unexpected
        destinations would otherwise keep a window-length of them for every one. The
        lightest are the furthest from the floor, so they are the ones that cannot page.
        """
        active = self.book.active
        candidates = [
            (window.spans[-1].bytes, key)
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
        spans = config.unexpected_windows
        fraction = config.ingress_return_fraction
        changed = []
        active = self.book.active
        # per group: per window length, the summed effective bytes of destinations that do
        # not page on their own, and how many such destinations there are
        fanout: dict[str, list[int]] = {}
        fanout_count: dict[str, int] = {}
        for key, window in list(self.windows.items()):
            group, dest = key
            totals = []
            fire_index = -1
            for index, (length, floor) in enumerate(spans):
                span = window.spans[index]
                span.expire(now - length)
                total = span.effective(fraction)
                totals.append(total)
                if fire_index < 0 and total >= floor:
                    fire_index = index
            alert_key: AlertKey = (UNEXPECTED, group, dest.key)
            is_active = alert_key in active
            if not is_active and group in self._fanout_last:
                # The group's fan-out page already covers this destination: one page, not
                # one per country, while it lasts.
                fire_index = -1
            if fire_index < 0 and not is_active:
                if not window.entries:
                    del self.windows[key]
                    continue
                sums = fanout.get(group)
                if sums is None:
                    sums = fanout[group] = [0] * len(spans)
                for index, total in enumerate(totals):
                    sums[index] += total
                if totals[-1] > 0:
                    fanout_count[group] = fanout_count.get(group, 0) + 1
                continue
            keep = fire_index >= 0 or totals[0] >= spans[0][1] / 2
            shown = fire_index if fire_index >= 0 else 0

            def describe(
                window: _Window = window,
                total: int = totals[shown],
                index: int = shown,
                group: str = group,
                dest: DestinationLabels = dest,
            ) -> tuple[dict[str, str], dict[str, str]]:
                return self._describe(now, window, total, index, group, dest, baselines)

            alert = self.book.evaluate(
                alert_key,
                now,
                fire=fire_index >= 0,
                keep=keep,
                describe=describe,
                strength=totals[shown],
            )
            if alert is not None:
                changed.append(alert)
            if not window.entries and alert_key not in active:
                del self.windows[key]
        changed.extend(self._evaluate_fanout(now, fanout, fanout_count))
        return changed

    def _evaluate_fanout(
        self, now: float, fanout: dict[str, list[int]], counts: dict[str, int]
    ) -> list[Alert]:
        config = self._config
        spans = config.unexpected_windows
        factor = config.fanout_factor
        changed = []
        for group in set(fanout) | self._fanout_last:
            sums = fanout.get(group, [0] * len(spans))
            fire_index = next(
                (i for i, (_l, floor) in enumerate(spans) if sums[i] >= factor * floor), -1
            )
            keep = fire_index >= 0 or sums[0] >= factor * spans[0][1] / 2
            shown = fire_index if fire_index >= 0 else 0
            alert_key: AlertKey = (UNEXPECTED, group, FANOUT_COUNTRY)

            def describe(
                group: str = group,
                total: int = sums[shown],
                index: int = shown,
                count: int = counts.get(group, 0),
            ) -> tuple[dict[str, str], dict[str, str]]:
                return self._describe_fanout(now, group, total, index, count)

            alert = self.book.evaluate(
                alert_key, now, fire_index >= 0, keep, describe, strength=sums[shown]
            )
            if alert is not None:
                changed.append(alert)
            if alert_key in self.book.active:
                self._fanout_last.add(group)
            else:
                self._fanout_last.discard(group)
        return changed

    def _describe_fanout(
        self, now: float, group: str, total: int, index: int, count: int
    ) -> tuple[dict[str, str], dict[str, str]]:
        config = self._config
        length, floor = config.unexpected_windows[index]
        span = format_duration(length)
        n = config.top_talkers
        sources = TopK(64)
        destinations = TopK(64)
        countries: dict[str, int] = {}
        for (g, dest), window in self.windows.items():
            if g != group or not window.entries:
                continue
            sources.merge(window.sources)
            destinations.merge(window.destinations)
            countries[dest.country] = countries.get(dest.country, 0) + window.spans[index].bytes
        top_countries = sorted(countries.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
        expected = self.policy.expected_countries(group)
        expected_text = ", ".join(sorted(expected)) if expected else "none"
        labels = {
            "alertname": UNEXPECTED,
            "group": group,
            "dst_country": FANOUT_COUNTRY,
            "severity": config.severity,
        }
        annotations = {
            "summary": (
                f"{group} sent {format_bytes(total)} within {span} to {count} destinations it "
                "is not expected to send to, each under its own floor"
            ),
            "description": (
                f"Group {group} sent {format_bytes(total)} to {count} unexpected destinations "
                f"within {span} up to {rfc3339(now)} (floor for the sum "
                f"{format_bytes(int(config.fanout_factor * floor))} per {span}). "
                f"Countries: {', '.join(c for c, _ in top_countries)}. "
                f"Expected countries: {expected_text}. "
                f"Top sources: {_top_with_bytes(sources, n)}. "
                f"Top destinations: {_top_with_bytes(destinations, n)}."
            ),
            "bytes": str(total),
            "baseline_bytes": "0",
            "window": span,
            "destinations": str(count),
            "dst_countries": ",".join(c for c, _ in top_countries),
            "expected_countries": expected_text,
            "top_sources": _top(sources, n),
            "top_destinations": _top(destinations, n),
        }
        return labels, annotations

    def _describe(
        self,
        now: float,
        window: _Window,
        total: int,
        index: int,
        group: str,
        dest: DestinationLabels,
        baselines: SeasonalBaselines,
    ) -> tuple[dict[str, str], dict[str, str]]:
        config = self._config
        length, floor = config.unexpected_windows[index]
        span_data = window.spans[index]
        expectation = baselines.expect((group, dest.key), now - config.interval)
        baseline = round(expectation.bytes) if expectation is not None else 0
        expected = self.policy.expected_countries(group)
        expected_text = ", ".join(sorted(expected)) if expected else "none"
        span = format_duration(length)
        first = span_data.entries[0].start if span_data.entries else now
        labels = alert_labels(UNEXPECTED, group, dest, config.severity, self._labels)
        n = config.top_talkers
        sources, destinations = window.sources, window.destinations
        set_against = ""
        if span_data.small:
            set_against = (
                f" Of it, small-packet egress {format_bytes(span_data.small)} was set against "
                f"{format_bytes(span_data.ingress)} of ingress from {dest.describe()}."
            )
        annotations = {
            "summary": (
                f"{group} sent {format_bytes(total)} to {dest.describe()} within {span}, "
                "a destination it is not expected to send to"
            ),
            "description": (
                f"Group {group} sent {format_bytes(total)} to {dest.describe()} between "
                f"{rfc3339(first)} and {rfc3339(now)} "
                f"(floor {format_bytes(floor)} per {span}).{set_against} "
                f"Expected countries: {expected_text}. "
                f"Top sources: {_top_with_bytes(sources, n)}. "
                f"Top destinations: {_top_with_bytes(destinations, n)}."
            ),
            "bytes": str(total),
            "baseline_bytes": str(baseline),
            "window": span,
            "ingress_bytes": str(span_data.ingress),
            "small_packet_bytes": str(span_data.small),
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
                    "entries": [[e.start, e.bytes, e.small, e.ingress] for e in window.entries],
                    "sources": window.sources.to_json(),
                    "destinations": window.destinations.to_json(),
                }
            )
        return out

    def load_json(
        self, data: list[dict[str, object]], intern: dict[str, DestinationLabels]
    ) -> None:
        windows: dict[AggregateKey, _Window] = {}
        count = len(self._config.unexpected_windows)
        for item in data:
            dest_key = str(item["dest"])
            dest = intern.get(dest_key)
            if dest is None:
                base = DestinationLabels.from_key(dest_key)
                dest = DestinationLabels(
                    base.country, base.region, base.asn, str(item.get("as_org", "")), "state"
                )
                intern[dest_key] = dest
            window = _Window(count)
            entries = item["entries"]
            if not isinstance(entries, list):
                raise ValueError("malformed window")
            for row in entries:
                accum = Accum(32)
                accum.bytes = int(row[1])
                if len(row) == 4 and isinstance(row[2], int):
                    accum.small, accum.ingress = int(row[2]), int(row[3])
                else:  # an older state: [start, bytes, sources, destinations]
                    window.sources.merge(TopK.from_json(row[2]))
                    window.destinations.merge(TopK.from_json(row[3]))
                window.append(_WindowEntry(float(row[0]), accum))
            sources, destinations = item.get("sources"), item.get("destinations")
            if isinstance(sources, dict) and isinstance(destinations, dict):
                window.sources = TopK.from_json(sources, 64)
                window.destinations = TopK.from_json(destinations, 64)
            windows[(str(item["group"]), dest)] = window
        self.windows = windows
        # Spans shorter than the longest drop what they no longer cover at the next evaluate.


#: the quantile of large intervals' ratio to their seasonal level that marks a usual burst
BURST_QUANTILE = 0.99
#: a spike must be this many times that usual burst ratio above its seasonal level
BURST_MARGIN = 2.0
#: below this many samples the network's burst ratio is unknown (no constraint)
BURST_MIN_SAMPLES = 500
_RATIO_STEPS = 8  # histogram bins per doubling
_RATIO_LOW = -8  # log2 of the smallest ratio kept apart
_RATIO_BINS = 32 * _RATIO_STEPS


class BurstRatios:
    """A histogram of log2(bytes / seasonal expectation) of large intervals, all keys.

    It says how bursty this network is: with heavy-tailed volumes, bursts several times a
    key's level are routine, and a key that has not shown one yet is no exception. Counts
    halve when they grow large, so the histogram follows the network over weeks.
    """

    __slots__ = ("bins", "samples")

    def __init__(self) -> None:
        self.bins = [0] * _RATIO_BINS
        self.samples = 0

    def add(self, size: float, expected: float) -> None:
        if size <= 0 or expected <= 0:
            return
        index = int((math.log2(size / expected) - _RATIO_LOW) * _RATIO_STEPS)
        self.bins[min(max(index, 0), _RATIO_BINS - 1)] += 1
        self.samples += 1
        if self.samples >= 200_000:
            self.bins = [n // 2 for n in self.bins]
            self.samples = sum(self.bins)

    def quantile(self, q: float) -> float:
        """The ratio below which ``q`` of the samples fall (0 while there are too few)."""
        if self.samples < BURST_MIN_SAMPLES:
            return 0.0
        target = q * self.samples
        running = 0
        for index, count in enumerate(self.bins):
            running += count
            if running >= target:
                return float(2.0 ** ((index + 1) / _RATIO_STEPS + _RATIO_LOW))
        return float(2.0 ** (_RATIO_BINS / _RATIO_STEPS + _RATIO_LOW))

    def to_json(self) -> list[int]:
        return list(self.bins)

    @classmethod
    def from_json(cls, data: object) -> BurstRatios:
        ratios = cls()
        if isinstance(data, list) and len(data) == _RATIO_BINS:
            ratios.bins = [max(int(n), 0) for n in data]
            ratios.samples = sum(ratios.bins)
        return ratios


class VolumeSpikeDetector(_Detector):
    """Bytes to an expected destination in one interval far above its seasonal baseline."""

    __slots__ = ("_last", "ratios")

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
        #: how far above their seasonal level this network's large intervals go
        self.ratios = BurstRatios()

    def eligible(self, expectation: Expectation | None, start: float) -> bool:
        """A key at least a learning period old can call a spike (a young key cannot)."""
        return expectation is not None and start - expectation.first_seen >= self._config.learning

    def evaluate(self, start: float, bucket: Bucket, baselines: SeasonalBaselines) -> list[Alert]:
        """Compare every key of the closed interval at ``start`` with its baseline."""
        config = self._config
        now = start + config.interval
        changed = []
        seen: set[AlertKey] = set()
        # Bursts this network's large transfers show (before this interval adds its own).
        burst = self.ratios.quantile(BURST_QUANTILE)
        for key, accum in bucket.items():
            group, dest = key
            alert_key: AlertKey = (SPIKE, group, dest.key)
            active = alert_key in self.book.active
            if accum.bytes < config.spike_min_bytes / 2 and not active:
                continue
            if not self.policy.is_expected(group, dest, start):
                continue
            expectation = baselines.expect((group, dest.key), start)
            if expectation is None:
                continue
            if expectation.observations >= config.spike_min_observations:
                self.ratios.add(accum.bytes, expectation.bytes)
            if not self.eligible(expectation, start):
                continue
            peak = baselines.peak((group, dest.key), start)
            fire, keep = self._conditions(accum.bytes, expectation, peak, burst)
            seen.add(alert_key)

            def describe(
                accum: Accum = accum,
                group: str = group,
                dest: DestinationLabels = dest,
                expectation: Expectation = expectation,
                peak: float = peak,
            ) -> tuple[dict[str, str], dict[str, str]]:
                return self._describe(start, accum, group, dest, expectation, peak)

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

    def _conditions(
        self, size: int, expectation: Expectation, peak: float, burst: float
    ) -> tuple[bool, bool]:
        """Fire: far above the seasonal level AND far beyond the key's own peak.

        Heavy-tailed traffic bursts: a burst the size of one the key has already shown
        (its decaying peak) never pages, however far above the seasonal level it is; a
        transfer several times beyond the peak and at least ``spike_min_excess`` more
        does. Nor does a burst no larger, relative to its seasonal level, than
        :data:`BURST_MARGIN` times what this network's large intervals reach
        (``burst``: their :data:`BURST_QUANTILE` quantile), though this key has not shown
        one yet. A key with too little history for a seasonal level (fewer than
        ``spike_min_observations`` intervals) is judged by its peak alone.
        """
        config = self._config
        expected = expectation.bytes
        beyond_peak = size >= config.spike_peak_ratio * peak and (
            size - peak >= config.spike_min_excess
        )
        if expectation.observations >= config.spike_min_observations:
            deviation = to_level(size) - expectation.level
            seasonal = (
                size >= config.spike_ratio * expected
                and size >= BURST_MARGIN * burst * expected
                and deviation >= config.spike_deviations * expectation.spread
            )
        else:
            seasonal = True
        fire = size >= config.spike_min_bytes and beyond_peak and seasonal
        keep = size >= config.spike_min_bytes / 2 and size >= (config.spike_ratio / 2) * expected
        return fire, keep

    def _describe(
        self,
        start: float,
        accum: Accum,
        group: str,
        dest: DestinationLabels,
        expectation: Expectation,
        peak: float,
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
                f"{expectation.observations} intervals of history) is {format_bytes(baseline)}; "
                f"its largest interval lately was {format_bytes(round(peak))}. "
                f"Top sources: {_top_with_bytes(accum.sources, n)}. Top destinations: "
                f"{_top_with_bytes(accum.destinations, n)}."
            ),
            "bytes": str(accum.bytes),
            "baseline_bytes": str(baseline),
            "ratio": f"{ratio:.2f}" if ratio != float("inf") else "inf",
            "peak_bytes": str(round(peak)),
            "window": span,
            "top_sources": _top(accum.sources, n),
            "top_destinations": _top(accum.destinations, n),
        }
        if dest.as_org:
            annotations["dst_as_org"] = dest.as_org
        return labels, annotations

    def to_json(self) -> dict[str, object]:
        return {"last": [[k[0], k[1], k[2]] for k in self._last], "ratios": self.ratios.to_json()}

    def load_json(self, data: object, intern: dict[str, DestinationLabels]) -> None:
        self._last = {}
        if isinstance(data, dict):
            self.ratios = BurstRatios.from_json(data.get("ratios"))
            data = data.get("last", [])
        if not isinstance(data, list):
            raise ValueError("malformed spike state")
        for alertname, group, dest_key in data:
            dest = intern.get(dest_key) or DestinationLabels.from_key(dest_key)
            self._last[(alertname, group, dest_key)] = (group, dest)


def _no_description() -> tuple[dict[str, str], dict[str, str]]:
    raise AssertionError("a silent key never starts an alert")
