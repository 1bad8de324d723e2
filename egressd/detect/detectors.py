"""Volume spikes over seasonal baselines (EgressVolumeSpike).

Runs once per closed interval (event time) and drives the shared :class:`AlertBook`; each
finding carries its evidence: bytes, baseline, peak, top sources and top destinations. The
unexpected-destination rule lives in :mod:`egressd.detect.unexpected` and the new-network rule
in :mod:`egressd.detect.newdest`; both are re-exported here with the labels helpers.
"""

from __future__ import annotations

import math

from egressd.aggregate import Accum, AggregateKey, Bucket
from egressd.baseline.grouprate import GroupRates
from egressd.baseline.seasonal import PEAK_HALF_LIFE, Expectation, SeasonalBaselines, to_level
from egressd.config import DetectionConfig
from egressd.detect.alerts import Alert, AlertBook, AlertKey, rfc3339
from egressd.detect.base import Detector
from egressd.detect.labels import LabelOptions, alert_labels, top, top_with_bytes
from egressd.detect.policy import ExpectedDestinations
from egressd.detect.unexpected import (
    FANOUT_COUNTRY,
    UNEXPECTED,
    UnexpectedDestinationDetector,
)
from egressd.enrich import DestinationLabels
from egressd.units import format_bytes, format_duration

SPIKE = "EgressVolumeSpike"

__all__ = [
    "FANOUT_COUNTRY",
    "SPIKE",
    "UNEXPECTED",
    "LabelOptions",
    "UnexpectedDestinationDetector",
    "VolumeSpikeDetector",
    "alert_labels",
]


#: the quantile of large intervals' ratio to their seasonal level that marks a usual burst
BURST_QUANTILE = 0.99
#: a spike must be this many times that usual burst ratio above its seasonal level
BURST_MARGIN = 2.0
#: below this many samples the network's burst ratio is unknown (no constraint)
BURST_MIN_SAMPLES = 500
#: the rate of large intervals is measured over at most about this span (then halved)
BURST_RATE_SPAN = 14 * 86400.0
#: a spike must go this many times further beyond its key's peak than the group's keys lately
#: went beyond theirs without paging (:class:`PeakExcesses`)
EXCESS_MARGIN = 1.5
#: an interval's excess over its key's peak is learned this long after it (a transfer in
#: progress cannot raise its own bar), unless a spike of its group pages meanwhile
EXCESS_LAG = 86400.0
#: the most excesses a group holds back while their lag runs (the largest kept)
_EXCESS_PENDING = 16
_DAY = 86400.0
_RATIO_STEPS = 8  # histogram bins per doubling
_RATIO_LOW = -8  # log2 of the smallest ratio kept apart
_RATIO_BINS = 32 * _RATIO_STEPS


class BurstRatios:
    """A histogram of log2(bytes / seasonal expectation) of large intervals, all keys.

    It says how bursty this network is: with heavy-tailed volumes, bursts several times a
    key's level are routine, and a key that has not shown one yet is no exception. Counts
    halve when they grow large, so the histogram follows the network over weeks.

    It also counts how many large intervals the network has a day (``rate_samples`` since
    ``rate_since``, halved with the span past :data:`BURST_RATE_SPAN`), for
    :meth:`daily`: the more keys a network has, the more of them are tested every interval,
    and the higher the ratio its ordinary bursts reach every day.
    """

    __slots__ = ("_cached", "_top", "bins", "rate_samples", "rate_since", "samples")

    def __init__(self) -> None:
        self.bins = [0] * _RATIO_BINS
        self.samples = 0
        #: large intervals counted since ``rate_since`` (event time; None before the first)
        self.rate_samples = 0
        self.rate_since: float | None = None
        #: (samples, q, answer) of the last quantile asked
        self._cached: tuple[int, float, float] = (-1, 0.0, 0.0)
        #: no bin above this one holds a sample (where :meth:`daily` starts looking)
        self._top = 0

    def add(self, size: float, expected: float, event_time: float) -> None:
        if size <= 0 or expected <= 0:
            return
        index = min(
            max(int((math.log2(size / expected) - _RATIO_LOW) * _RATIO_STEPS), 0), _RATIO_BINS - 1
        )
        self.bins[index] += 1
        if index > self._top:
            self._top = index
        self.samples += 1
        if self.samples >= 200_000:
            self.bins = [n // 2 for n in self.bins]
            self.samples = sum(self.bins)
        since = self.rate_since
        if since is None or event_time < since:
            self.rate_since = since = event_time
        self.rate_samples += 1
        if event_time - since > BURST_RATE_SPAN:
            self.rate_samples //= 2
            self.rate_since = event_time - (event_time - since) / 2

    def daily(self, event_time: float) -> float:
        """The ratio this network's large intervals reach about once a day (0: too few yet).

        The quantile ``1 - 1/n`` of the histogram, ``n`` the large intervals a day (over a
        day at least, so the first day asks for its largest).
        """
        since = self.rate_since
        if since is None or self.rate_samples <= 0:
            return 0.0
        per_day = self.rate_samples / max((event_time - since) / _DAY, 1.0)
        if per_day <= 1.0 or self.samples < BURST_MIN_SAMPLES:
            return 0.0
        # :meth:`_quantile`'s answer (not through quantile's cache, which keeps the 1%
        # quantile's answer between calls), found from the top: it lies a few bins below it.
        target = (1.0 - 1.0 / per_day) * self.samples
        bins = self.bins
        index = self._top
        below = self.samples - bins[index]  # the samples in the bins below ``index``
        while index > 0 and below >= target:
            index -= 1
            below -= bins[index]
        return float(2.0 ** ((index + 1) / _RATIO_STEPS + _RATIO_LOW))

    def quantile(self, q: float) -> float:
        """The ratio below which ``q`` of the samples fall (0 while there are too few)."""
        if self.samples < BURST_MIN_SAMPLES:
            return 0.0
        samples, asked, answer = self._cached
        # A quantile moves little while the samples grow by under 1%: reuse it until then.
        if asked == q and samples <= self.samples < samples + max(samples // 100, 1):
            return answer
        answer = self._quantile(q)
        self._cached = (self.samples, q, answer)
        return answer

    def _quantile(self, q: float) -> float:
        target = q * self.samples
        running = 0
        for index, count in enumerate(self.bins):
            running += count
            if running >= target:
                return float(2.0 ** ((index + 1) / _RATIO_STEPS + _RATIO_LOW))
        return float(2.0 ** (_RATIO_BINS / _RATIO_STEPS + _RATIO_LOW))

    def to_json(self) -> dict[str, object]:
        return {"bins": list(self.bins), "rate": [self.rate_samples, self.rate_since]}

    @classmethod
    def from_json(cls, data: object) -> BurstRatios:
        """Read :meth:`to_json`'s form, or the bare bins of a state from before the rate."""
        ratios = cls()
        rate: object = None
        if isinstance(data, dict):
            rate = data.get("rate")
            data = data.get("bins")
        if isinstance(data, list) and len(data) == _RATIO_BINS:
            ratios.bins = [max(int(n), 0) for n in data]
            ratios.samples = sum(ratios.bins)
            ratios._top = max((i for i, n in enumerate(ratios.bins) if n), default=0)
        if isinstance(rate, list) and len(rate) == 2:
            samples, since = rate
            if isinstance(samples, int) and isinstance(since, int | float) and samples > 0:
                ratios.rate_samples = samples
                ratios.rate_since = float(since)
        return ratios


class PeakExcesses:
    """Per group: how far beyond their own peak its keys lately went without paging, in bytes.

    Some groups spread their traffic over many keys that each carry little and seldom, such
    as peer-to-peer traffic from a student network over sixty countries: a key's peak then
    stands on few intervals, and ordinary bursts go several times beyond it, somewhere in the
    group, every few days. What the group's keys have gone beyond their peaks lately says how
    far a key of the group goes beyond its peak as a matter of course; a spike must go
    :data:`EXCESS_MARGIN` times further. A steady group (an office's few keys) learns little
    and keeps the configured floors.

    Each group holds the largest excess learned (halving every :data:`PEAK_HALF_LIFE`, as the
    peaks do). An excess is learned :data:`EXCESS_LAG` after its interval, and forgotten
    unlearned if a spike of the group pages first: a transfer that is working up to a page
    cannot raise the bar it must clear.
    """

    __slots__ = ("learned", "pending")

    def __init__(self) -> None:
        #: group -> (largest excess learned, when)
        self.learned: dict[str, tuple[float, float]] = {}
        #: group -> [(interval start, excess)] waiting for their lag, oldest first
        self.pending: dict[str, list[tuple[float, float]]] = {}

    def excess(self, group: str, event_time: float) -> float:
        """The group's largest learned excess at ``event_time`` (0: none), its lag run out."""
        waiting = self.pending.get(group)
        if waiting and event_time - waiting[0][0] >= EXCESS_LAG:
            due = [(t, x) for t, x in waiting if event_time - t >= EXCESS_LAG]
            rest = [(t, x) for t, x in waiting if event_time - t < EXCESS_LAG]
            if rest:
                self.pending[group] = rest
            else:
                del self.pending[group]
            for when, size in due:
                if _decay(size, when, event_time) > self._decayed(group, event_time):
                    self.learned[group] = (size, when)
        return self._decayed(group, event_time)

    def _decayed(self, group: str, event_time: float) -> float:
        found = self.learned.get(group)
        return 0.0 if found is None else _decay(*found, event_time)

    def note(self, group: str, start: float, excess: float) -> None:
        """An interval at ``start`` went ``excess`` bytes beyond its key's peak, not paging."""
        if excess <= self._decayed(group, start):
            return
        waiting = self.pending.setdefault(group, [])
        waiting.append((start, excess))
        if len(waiting) > _EXCESS_PENDING:
            waiting.remove(min(waiting, key=lambda item: item[1]))

    def paged(self, group: str) -> None:
        """A spike of ``group`` pages: what its keys did lately is not learned."""
        self.pending.pop(group, None)

    def to_json(self) -> dict[str, object]:
        return {
            group: [
                *self.learned.get(group, (0.0, 0.0)),
                [list(p) for p in self.pending.get(group, [])],
            ]
            for group in self.learned.keys() | self.pending.keys()
        }

    @classmethod
    def from_json(cls, data: object) -> PeakExcesses:
        """Read :meth:`to_json`'s form; malformed entries are skipped (a state from before
        the excesses has none)."""
        excesses = cls()
        if not isinstance(data, dict):
            return excesses
        for group, entry in data.items():
            if not (isinstance(group, str) and isinstance(entry, list) and len(entry) == 3):
                continue
            size, when, waiting = entry
            if _finite(size) and _finite(when) and size > 0:
                excesses.learned[group] = (float(size), float(when))
            if isinstance(waiting, list):
                kept = [
                    (float(item[0]), float(item[1]))
                    for item in waiting[-_EXCESS_PENDING:]
                    if isinstance(item, list) and len(item) == 2 and all(map(_finite, item))
                ]
                if kept:
                    excesses.pending[group] = sorted(kept)
        return excesses


def _decay(size: float, when: float, event_time: float) -> float:
    """``size`` learned at ``when``, halved every :data:`PEAK_HALF_LIFE` until ``event_time``."""
    return size * math.pow(0.5, max(event_time - when, 0.0) / PEAK_HALF_LIFE)


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class VolumeSpikeDetector(Detector):
    """Bytes to an expected destination in one interval far above its seasonal baseline.

    A spike pages at once when its busiest destination address alone passes the same tests
    (a transfer goes to somewhere). A rise spread over the key's addresses that no address
    carries alone, which is what more of the key's usual traffic looks like, is held for one
    interval and pages if the next is a spike too, against the key's peak from before it.
    """

    __slots__ = ("_held", "_last", "excesses", "rates", "ratios")

    def __init__(
        self,
        config: DetectionConfig,
        policy: ExpectedDestinations,
        book: AlertBook,
        labels: LabelOptions,
        rates: GroupRates | None = None,
    ) -> None:
        super().__init__(config, policy, book, labels)
        #: each group's busy-interval egress: the byte floors grow with it (the engine's own)
        self.rates = rates if rates is not None else GroupRates()
        # the destination labels of keys with an active spike alert, to evaluate them when idle
        self._last: dict[AlertKey, AggregateKey] = {}
        #: keys whose last interval was a spike spread over their addresses (no address alone
        #: a spike), held for a second interval: key -> (that interval's start, the key's peak
        #: before it, which the held interval itself has raised since)
        self._held: dict[AlertKey, tuple[float, float]] = {}
        #: how far above their seasonal level this network's large intervals go
        self.ratios = BurstRatios()
        #: how far beyond their own peaks each group's keys lately went
        self.excesses = PeakExcesses()

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
        burst = max(BURST_MARGIN * self.ratios.quantile(BURST_QUANTILE), self.ratios.daily(start))
        # Each group's floor factor and learned excess, asked once per group and interval.
        factors: dict[str, float] = {}
        excesses: dict[str, float] = {}
        rates, scale_above = self.rates, config.spike_floors_scale_above
        learned = self.excesses
        held, self._held = self._held, {}
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
                self.ratios.add(accum.bytes, expectation.bytes, start)
            if not self.eligible(expectation, start):
                continue
            peak = baselines.peak((group, dest.key), start)
            prior = held.get(alert_key)
            second = prior is not None and prior[0] == start - config.interval
            if second:
                # Judged against the peak before the held interval, not the one it raised.
                peak = min(peak, prior[1])  # type: ignore[index]
            factor = factors.get(group)
            if factor is None:
                factor = factors[group] = rates.factor(group, scale_above)
            excess = excesses.get(group)
            if excess is None:
                excess = excesses[group] = learned.excess(group, start)
            fire, keep = self._conditions(accum.bytes, expectation, peak, burst, factor, excess)
            seen.add(alert_key)
            if fire and not active and not second:
                # A transfer goes somewhere: its busiest address alone is a spike. A rise
                # spread over the key's addresses (more of its usual traffic) must hold for a
                # second interval.
                carried = max(accum.destinations.counts.values(), default=0)
                alone = self._conditions(carried, expectation, peak, burst, factor, excess)[0]
                if not alone:
                    fire = False
                    self._held[alert_key] = (start, peak)
            if fire:
                learned.paged(group)
            elif accum.bytes > peak and not active and alert_key not in self._held:
                learned.note(group, start, accum.bytes - peak)

            def describe(
                accum: Accum = accum,
                group: str = group,
                dest: DestinationLabels = dest,
                expectation: Expectation = expectation,
                peak: float = peak,
                excess: float = excess,
            ) -> tuple[dict[str, str], dict[str, str]]:
                return self._describe(start, accum, group, dest, expectation, peak, excess)

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
        self,
        size: int,
        expectation: Expectation,
        peak: float,
        burst: float,
        factor: float = 1.0,
        excess: float = 0.0,
    ) -> tuple[bool, bool]:
        """Fire: far above the seasonal level AND far beyond the key's own peak.

        Heavy-tailed traffic bursts: a burst the size of one the key has already shown
        (its decaying peak) never pages, however far above the seasonal level it is; a
        transfer several times beyond the peak and at least ``spike_min_excess`` more
        does. Nor does a burst no larger, relative to its seasonal level, than ``burst``:
        :data:`BURST_MARGIN` times what 1% of this network's large intervals reach (their
        :data:`BURST_QUANTILE` quantile), or what they reach about once a day (with many
        keys tested every interval, that is the higher), though this key has not shown one
        yet. A key with too little history for a seasonal level (fewer than
        ``spike_min_observations`` intervals) is judged by its peak alone.

        The byte floors (``spike_min_bytes``, ``spike_min_excess``) are multiplied by
        ``factor``, the group's busy-interval egress over ``spike_floors_scale_above`` (at
        least 1): a group many times that size bursts by that much more as a matter of course.
        And the bytes beyond the peak must be :data:`EXCESS_MARGIN` times ``excess``, the most
        the group's keys lately went beyond their own peaks without paging
        (:class:`PeakExcesses`).
        """
        config = self._config
        expected = expectation.bytes
        min_bytes = config.spike_min_bytes * factor
        beyond_peak = size >= config.spike_peak_ratio * peak and (
            size - peak >= max(config.spike_min_excess * factor, EXCESS_MARGIN * excess)
        )
        if expectation.observations >= config.spike_min_observations:
            deviation = to_level(size) - expectation.level
            seasonal = (
                size >= config.spike_ratio * expected
                and size >= burst * expected
                and deviation >= config.spike_deviations * expectation.spread
            )
        else:
            seasonal = True
        fire = size >= min_bytes and beyond_peak and seasonal
        keep = size >= min_bytes / 2 and size >= (config.spike_ratio / 2) * expected
        return fire, keep

    def _describe(
        self,
        start: float,
        accum: Accum,
        group: str,
        dest: DestinationLabels,
        expectation: Expectation,
        peak: float,
        excess: float = 0.0,
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Labels and annotations of a spike; ``excess`` is the most the group's keys lately
        went beyond their own peaks without paging (:class:`PeakExcesses`), what the bytes
        beyond this key's peak were measured against."""
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
                f"its largest interval lately was {format_bytes(round(peak))}; its group's "
                f"keys lately went at most {format_bytes(round(excess))} beyond their own. "
                f"Top sources: {top_with_bytes(accum.sources, n)}. Top destinations: "
                f"{top_with_bytes(accum.destinations, n)}."
            ),
            "bytes": str(accum.bytes),
            "baseline_bytes": str(baseline),
            "ratio": f"{ratio:.2f}" if ratio != float("inf") else "inf",
            "peak_bytes": str(round(peak)),
            "group_excess_bytes": str(round(excess)),
            "window": span,
            "top_sources": top(accum.sources, n),
            "top_destinations": top(accum.destinations, n),
        }
        if dest.as_org:
            annotations["dst_as_org"] = dest.as_org
        return labels, annotations

    def to_json(self) -> dict[str, object]:
        return {
            "last": [[k[0], k[1], k[2]] for k in self._last],
            "held": [[*k, when, peak] for k, (when, peak) in self._held.items()],
            "ratios": self.ratios.to_json(),
            "excesses": self.excesses.to_json(),
        }

    def load_json(
        self, data: object, intern: dict[str, DestinationLabels], until: float = math.inf
    ) -> int:
        """Restore what :meth:`to_json` wrote, held to what the detector itself keeps;
        returns how many held keys were left out.

        A held key is one of an interval's keys (at most ``max_keys``: the latest held are
        kept), held at a start not after ``until`` (the saved event time) with a finite peak
        not below zero. Keys to evaluate when idle are those of the restored active spike
        alerts (restore the alert book first); no others.
        """
        self._last = {}
        self._held = {}
        held: list[tuple[AlertKey, tuple[float, float]]] = []
        dropped = 0
        if isinstance(data, dict):
            self.ratios = BurstRatios.from_json(data.get("ratios"))
            self.excesses = PeakExcesses.from_json(data.get("excesses"))
            for entry in data.get("held") or []:
                if isinstance(entry, list) and len(entry) == 5 and all(map(_finite, entry[3:])):
                    alertname, group, dest_key, when, peak = entry
                    if (
                        all(isinstance(x, str) for x in (alertname, group, dest_key))
                        and when <= until
                        and peak >= 0
                    ):
                        held.append(((alertname, group, dest_key), (float(when), float(peak))))
                        continue
                dropped += 1
            data = data.get("last", [])
        if not isinstance(data, list):
            raise ValueError("malformed spike state")
        kept = self._config.max_keys
        if len(held) > kept:
            dropped += len(held) - kept
            held = sorted(held, key=lambda item: item[1][0])[-kept:]
        self._held = dict(held)
        active = self.book.active
        for alertname, group, dest_key in data:
            key = (str(alertname), str(group), str(dest_key))
            if key not in active:
                continue  # (a running detector forgets a key once its alert is gone)
            dest = intern.get(key[2]) or DestinationLabels.from_key(key[2])
            self._last[key] = (key[1], dest)
        return dropped


def _no_description() -> tuple[dict[str, str], dict[str, str]]:
    raise AssertionError("a silent key never starts an alert")
