"""EgressNewDestinationVolume: bulk egress to address prefixes a group has not used lately.

An allowed country (or region, or ASN) is a large place. A group's uploads to it normally go
to the same few networks (its cloud, its backup target, its partners); gigabytes within an
hour to a /24 (IPv4) or /48 (IPv6) the group has not sent to for ``new_destination_unseen``
(a fresh VPS in an allowed country) are worth a page even when the volume hides inside the
destination's usual spread, such as a busy nightly-backup hour.

"Not used for" counts the group's active days only: whole days on which it used no network at
all (a holiday, a shutdown, a daemon that saw nothing) do not age what it knows.

Prefixes come from each interval's top-destination sketch (the addresses that carried at
least a tenth of the floor's per-interval share in the interval: 8.3 MB by default), so the
cost is per interval, not per record.
Each group remembers at most ``new_destination_max_prefixes`` prefixes (least recently used
go first, a tenth at a time, counted in :attr:`NewDestinationDetector.evicted`; as many address
blocks at most, likewise). Keys whose
traffic moves between networks all the time (CDN-fronted services) learn their own churn: new-prefix
volume must also be :data:`CHURN_RATIO` times the most the key has sent to new prefixes in
an hour before (halving every :data:`CHURN_HALF_LIFE`). The bytes to new networks in address
blocks (/16 IPv4, /32 IPv6) the group had not used either are judged apart, against the churn
of such blocks alone: a cloud whose addresses rotate over its own blocks learns a high churn
of networks but hardly any of blocks, so a fresh VPS in another provider's block still pages.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from collections import deque

from egressd.aggregate import AggregateKey, Bucket
from egressd.cache import BoundedCache
from egressd.config import DetectionConfig
from egressd.detect.alerts import Alert, AlertBook, AlertKey, rfc3339
from egressd.detect.base import Detector
from egressd.detect.labels import LabelOptions, alert_labels
from egressd.detect.policy import ExpectedDestinations
from egressd.enrich import DestinationLabels
from egressd.sketch import TopK
from egressd.units import format_bytes, format_duration

NEW_DESTINATION = "EgressNewDestinationVolume"
SPIKE = "EgressVolumeSpike"  # as egressd.detect.detectors names it
#: an address counts as used in an interval when it carried at least this much (and a tenth
#: of the floor's per-interval share: 8.3 MB with the defaults)
SEEN_MIN_BYTES = 1_000_000
CHURN_RATIO = 3.0
#: a prefix's last use is written again only this much later (the unseen horizon is days)
REFRESH = 3600.0
CHURN_HALF_LIFE = 14 * 86400.0
_PREFIX_CACHE = 65_536


def block_of(prefix: str) -> str:
    """The /16 (IPv4) or /32 (IPv6) address block of a :func:`prefix_of` network."""
    if ":" not in prefix:
        first, second, _rest = prefix.split(".", 2)
        return f"{first}.{second}.0.0/16"
    try:
        return str(ipaddress.IPv6Network(prefix, strict=False).supernet(new_prefix=32))
    except ValueError:
        return prefix


def prefix_of(address: str) -> str:
    """The /24 (IPv4) or /48 (IPv6) network of ``address``, as text."""
    if ":" not in address:
        head, _sep, _tail = address.rpartition(".")
        return f"{head}.0/24"
    try:
        return str(ipaddress.IPv6Network(f"{address}/48", strict=False))
    except ValueError:
        return address


class _GroupPrefixes:
    __slots__ = ("blocks", "day", "idle", "known", "prefixes", "since")

    def __init__(self, since: float) -> None:
        self.since = since
        #: whole days (in seconds) on which the group used no network at all, and the last
        #: day (days since the epoch) on which it did: a prefix ages by the group's clock
        #: (event time minus its idle days), so a holiday does not make every network new
        self.idle = 0.0
        self.day: int | None = None
        #: address -> until when its prefix is known to be neither new nor stale (a lookup
        #: per busy address and interval instead of the prefix bookkeeping)
        self.known: dict[str, float] = {}
        #: prefix -> (first use in its current run of use, last use); refreshed at most
        #: once per :data:`REFRESH` so a busy prefix costs one lookup per interval
        self.prefixes: dict[str, tuple[float, float]] = {}
        #: the same for the address blocks (/16, /32) the prefixes lie in
        self.blocks: dict[str, tuple[float, float]] = {}

    def clock(self, start: float) -> float:
        """The group's clock at ``start``, an interval in which it uses a network.

        Event time minus the whole days since the last such interval on which it used none:
        an office closed for ten days (or a daemon that saw nothing) comes back to networks
        it knew, not to ten days of forgetting.
        """
        day = int(start // 86400.0)
        last = self.day
        if last is None or day > last:
            if last is not None:
                self.idle += (day - last - 1) * 86400.0
            self.day = day
        return start - self.idle


class _Entry:
    __slots__ = ("block_bytes", "bytes", "destinations", "sources", "start")

    def __init__(
        self, start: float, size: int, block_bytes: int, destinations: TopK, sources: TopK
    ) -> None:
        self.start = start
        self.bytes = size
        #: of ``size``, the bytes to networks in blocks the group had not used either
        self.block_bytes = block_bytes
        self.destinations = destinations
        self.sources = sources


class _Window:
    __slots__ = ("covered", "entries", "history")

    def __init__(self) -> None:
        self.entries: deque[_Entry] = deque()
        #: a spike alert on the destination told this transfer already
        self.covered = False
        #: (event time, window total, its new-block part, paging then) of recent
        #: evaluations: once a window length old, totals that did not page tell what the
        #: key's churn is
        self.history: deque[tuple[float, int, int, bool]] = deque()


class NewDestinationDetector(Detector):
    """Per (group x expected destination): bytes within a window to newly used prefixes."""

    __slots__ = (
        "_block_cache",
        "_prefix_cache",
        "block_churn",
        "churn",
        "evicted",
        "groups",
        "windows",
    )

    def __init__(
        self,
        config: DetectionConfig,
        policy: ExpectedDestinations,
        book: AlertBook,
        labels: LabelOptions,
    ) -> None:
        super().__init__(config, policy, book, labels)
        self.groups: dict[str, _GroupPrefixes] = {}
        self.windows: dict[AggregateKey, _Window] = {}
        #: per key: (most bytes sent to new prefixes within a window, when)
        self.churn: dict[AggregateKey, tuple[float, float]] = {}
        #: the same for the bytes to networks in blocks the group had not used
        self.block_churn: dict[AggregateKey, tuple[float, float]] = {}
        #: prefixes forgotten to stay within new_destination_max_prefixes
        self.evicted = 0
        self._prefix_cache: BoundedCache[str, str] = BoundedCache(_PREFIX_CACHE)
        self._block_cache: BoundedCache[str, str] = BoundedCache(_PREFIX_CACHE)

    def prefixes(self) -> dict[str, int]:
        """Prefixes remembered per group (for metrics)."""
        return {group: len(g.prefixes) for group, g in self.groups.items()}

    def _prefix(self, address: str) -> str:
        prefix = self._prefix_cache.get(address)
        if prefix is None:
            prefix = self._prefix_cache.store(address, prefix_of(address))
        return prefix

    def _block(self, prefix: str) -> str:
        block = self._block_cache.get(prefix)
        if block is None:
            block = self._block_cache.store(prefix, block_of(prefix))
        return block

    def evaluate(self, start: float, bucket: Bucket) -> list[Alert]:
        """Account the closed interval at ``start`` (egress keys only) and evaluate."""
        config = self._config
        now = start + config.interval
        unseen = config.new_destination_unseen
        fresh_for = config.new_destination_window
        limit = config.new_destination_max_prefixes
        warm_up = min(config.learning / 2, 86400.0)
        # An address counts as used when it carried a tenth of the floor's per-interval share
        # (less could not bring a network to the floor within the window anyway).
        use_min = max(
            SEEN_MIN_BYTES,
            config.new_destination_min_bytes * config.interval / fresh_for / 10,
        )
        policy = self.policy
        cache = self._prefix_cache
        for key, accum in bucket.items():
            if accum.bytes < use_min:
                continue  # no address in it can have carried enough to count as used
            group, dest = key
            if not policy.is_expected(group, dest, start):
                continue  # the unexpected-destination rule judges it
            tracked = self.groups.get(group)
            if tracked is None:
                tracked = self.groups[group] = _GroupPrefixes(start)
            prefixes = tracked.prefixes
            blocks = tracked.blocks
            known = tracked.known
            counting = start - tracked.since >= warm_up
            new_bytes = 0
            block_bytes = 0
            new_destinations: TopK | None = None
            clock = -math.inf  # the group's clock, read at its first used address
            for address, weight in accum.destinations.counts.items():
                if weight < use_min:
                    continue
                if clock == -math.inf:
                    clock = tracked.clock(start)
                if known.get(address, -math.inf) > clock:
                    continue
                prefix = cache.get(address)
                if prefix is None:
                    prefix = self._prefix(address)
                seen = prefixes.get(prefix)
                if seen is None or clock - seen[1] > unseen:
                    seen = prefixes[prefix] = (clock, clock)
                elif clock - seen[1] >= REFRESH:
                    prefixes[prefix] = (seen[0], clock)
                block = self._block(prefix)
                used = blocks.get(block)
                if used is None or clock - used[1] > unseen:
                    used = blocks[block] = (clock, clock)
                elif clock - used[1] >= REFRESH:
                    blocks[block] = (used[0], clock)
                if counting and clock - seen[0] < fresh_for:
                    new_bytes += weight
                    if clock - used[0] < fresh_for:
                        block_bytes += weight
                    if new_destinations is None:
                        new_destinations = TopK(16)
                    new_destinations.add(address, weight)
                elif counting:
                    # Known for good: skip it until its last use needs writing again.
                    if len(known) >= 4 * limit:
                        known.clear()
                    known[address] = prefixes[prefix][1] + REFRESH
            if len(prefixes) > limit:
                # Forget the least recently used tenth at once (amortised).
                count = len(prefixes) - limit + limit // 10
                for prefix, _seen in heapq.nsmallest(
                    count, prefixes.items(), key=lambda item: item[1][1]
                ):
                    del prefixes[prefix]
                tracked.known.clear()
                self.evicted += count
            if len(blocks) > limit:
                count = len(blocks) - limit + limit // 10
                for block, _seen in heapq.nsmallest(
                    count, blocks.items(), key=lambda item: item[1][1]
                ):
                    del blocks[block]
            if new_destinations is not None:
                window = self.windows.get(key)
                if window is None:
                    window = self.windows[key] = _Window()
                window.entries.append(
                    _Entry(start, new_bytes, block_bytes, new_destinations, accum.sources)
                )
        return self._evaluate(now)

    def _evaluate(self, now: float) -> list[Alert]:
        config = self._config
        floor = config.new_destination_min_bytes
        horizon = now - config.new_destination_window
        changed: list[Alert] = []
        for key, window in list(self.windows.items()):
            entries = window.entries
            while entries and entries[0].start < horizon:
                entries.popleft()
            group, dest = key
            alert_key: AlertKey = (NEW_DESTINATION, group, dest.key)
            total = sum(entry.bytes for entry in entries)
            block_total = sum(entry.block_bytes for entry in entries)
            churn = self._churn(self.churn, key, now)
            block_churn = self._churn(self.block_churn, key, now)
            tracked = self.groups[group]
            armed = now - tracked.since >= config.learning and self.policy.is_expected(
                group, dest, now - config.interval
            )
            # One page per transfer: a spike alert on the same destination already tells it.
            if (SPIKE, group, dest.key) in self.book.active:
                window.covered = True
            # A key whose traffic moves between networks all the time (a cloud, a CDN) must
            # send several times its usual new-network volume; a network in an address block
            # the group never used is judged against the churn of such blocks alone.
            fresh = (total >= floor and total >= CHURN_RATIO * churn) or (
                block_total >= floor and block_total >= CHURN_RATIO * block_churn
            )
            fire = armed and not window.covered and fresh
            keep = total >= floor / 2

            def describe(
                window: deque[_Entry] = entries,
                total: int = total,
                group: str = group,
                dest: DestinationLabels = dest,
                churn: float = churn,
                block_total: int = block_total,
            ) -> tuple[dict[str, str], dict[str, str]]:
                return self._describe(now, window, total, group, dest, churn, block_total)

            alert = self.book.evaluate(alert_key, now, fire, keep, describe, strength=total)
            if alert is not None:
                changed.append(alert)
            history = window.history
            history.append((now, total, block_total, alert_key in self.book.active))
            # Totals a window length old, that did not page, are the key's ordinary churn:
            # the lag keeps a transfer in progress from raising the bar it must clear.
            while history and (history[0][0] <= horizon or not entries):
                _when, old_total, old_block, paging = history.popleft()
                if paging:
                    continue
                if old_total > self._churn(self.churn, key, now):
                    self.churn[key] = (float(old_total), now)
                if old_block > self._churn(self.block_churn, key, now):
                    self.block_churn[key] = (float(old_block), now)
            if not entries and alert_key not in self.book.active:
                del self.windows[key]
        for churns in (self.churn, self.block_churn):
            if len(churns) > config.max_keys:
                oldest = sorted(churns, key=lambda k: churns[k][1])[: config.max_keys // 10]
                for key in oldest:
                    del churns[key]
        return changed

    @staticmethod
    def _churn(
        churns: dict[AggregateKey, tuple[float, float]], key: AggregateKey, now: float
    ) -> float:
        found = churns.get(key)
        if found is None:
            return 0.0
        size, when = found
        return size * math.pow(0.5, max(now - when, 0.0) / CHURN_HALF_LIFE)

    def _describe(
        self,
        now: float,
        window: deque[_Entry],
        total: int,
        group: str,
        dest: DestinationLabels,
        churn: float,
        block_total: int,
    ) -> tuple[dict[str, str], dict[str, str]]:
        config = self._config
        sources = TopK(64)
        destinations = TopK(64)
        for entry in window:
            sources.merge(entry.sources)
            destinations.merge(entry.destinations)
        first = window[0].start if window else now
        span = format_duration(config.new_destination_window)
        unseen = format_duration(config.new_destination_unseen)
        prefixes = sorted({self._prefix(a) for a, _ in destinations.top(config.top_talkers)})
        n = config.top_talkers
        labels = alert_labels(NEW_DESTINATION, group, dest, config.severity, self._labels)
        annotations = {
            "summary": (
                f"{group} sent {format_bytes(total)} within {span} to networks in "
                f"{dest.describe()} it had not used for {unseen}"
            ),
            "description": (
                f"Group {group} sent {format_bytes(total)} between {rfc3339(first)} and "
                f"{rfc3339(now)} to {', '.join(prefixes)} in {dest.describe()}, networks it "
                f"had not sent to for {unseen} (floor "
                f"{format_bytes(config.new_destination_min_bytes)} per {span}; usual "
                f"new-network volume {format_bytes(round(churn))}); "
                f"{format_bytes(block_total)} of it to address blocks (/16, /32) it had not "
                f"used either. Top sources of the destination: {_with_bytes(sources, n)}. "
                f"New destinations: {_with_bytes(destinations, n)}."
            ),
            "bytes": str(total),
            "new_block_bytes": str(block_total),
            "baseline_bytes": str(round(churn)),
            "window": span,
            "new_prefixes": ",".join(prefixes),
            "top_sources": ",".join(item for item, _ in sources.top(n)),
            "top_destinations": ",".join(item for item, _ in destinations.top(n)),
        }
        if dest.as_org:
            annotations["dst_as_org"] = dest.as_org
        return labels, annotations

    # -- persistence ------------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        return {
            "groups": {
                group: {
                    "since": tracked.since,
                    "idle": tracked.idle,
                    "day": tracked.day,
                    "prefixes": [[p, first, last] for p, (first, last) in tracked.prefixes.items()],
                    "blocks": [[b, first, last] for b, (first, last) in tracked.blocks.items()],
                }
                for group, tracked in self.groups.items()
            },
            "churn": [[g, d.key, size, when] for (g, d), (size, when) in self.churn.items()],
            "block_churn": [
                [g, d.key, size, when] for (g, d), (size, when) in self.block_churn.items()
            ],
        }

    def load_json(self, data: object, intern: dict[str, DestinationLabels]) -> None:
        """Restore what :meth:`to_json` wrote (windows start empty: at most an hour lost)."""
        if not isinstance(data, dict):
            raise ValueError("malformed new-destination state")
        groups: dict[str, _GroupPrefixes] = {}
        for group, item in dict(data.get("groups", {})).items():
            tracked = _GroupPrefixes(float(item["since"]))
            # A state written before the group's clock: no idle days counted yet.
            tracked.idle = float(item.get("idle", 0.0))
            day = item.get("day")
            tracked.day = None if day is None else int(day)
            for prefix, first, last in item["prefixes"]:
                tracked.prefixes[str(prefix)] = (float(first), float(last))
            if "blocks" in item:
                for block, first, last in item["blocks"]:
                    tracked.blocks[str(block)] = (float(first), float(last))
            else:
                # A state written before blocks were kept: its networks' blocks, as used.
                for prefix, (first, last) in tracked.prefixes.items():
                    block = block_of(prefix)
                    seen = tracked.blocks.get(block, (first, last))
                    tracked.blocks[block] = (min(seen[0], first), max(seen[1], last))
            groups[str(group)] = tracked
        self.groups = groups
        self.churn = _load_churn(data.get("churn", []), intern)
        self.block_churn = _load_churn(data.get("block_churn", []), intern)
        self.windows = {}


def _load_churn(
    data: object, intern: dict[str, DestinationLabels]
) -> dict[AggregateKey, tuple[float, float]]:
    churn: dict[AggregateKey, tuple[float, float]] = {}
    if not isinstance(data, list):
        raise ValueError("malformed new-destination churn")
    for group, dest_key, size, when in data:
        dest = intern.get(str(dest_key)) or DestinationLabels.from_key(str(dest_key))
        churn[(str(group), dest)] = (float(size), float(when))
    return churn


def _with_bytes(sketch: TopK, n: int) -> str:
    return ", ".join(f"{item} ({format_bytes(weight)})" for item, weight in sketch.top(n))
