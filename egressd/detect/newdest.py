"""EgressNewDestinationVolume: bulk egress to address prefixes a group has not used lately.

An allowed country (or region, or ASN) is a large place. A group's uploads to it normally go
to the same few networks (its cloud, its backup target, its partners); gigabytes within an
hour to a /24 (IPv4) or /48 (IPv6) the group has not sent to for ``new_destination_unseen``
(a fresh VPS in an allowed country) are worth a page even when the volume hides inside the
destination's usual spread, such as a busy nightly-backup hour.

A slow transfer pages on a day window too: ``new_destination_day_min_bytes`` within a day to
networks first used within that day (same churn rules, learned over a day; armed two days
after the group began counting; bytes that paged on the hour do not page again on the day).
The day window's evidence is one merged sketch per key, not one per interval.

"Not used for" counts the group's active days only: whole days on which it used no network at
all (a holiday, a shutdown, a daemon that saw nothing) do not age what it knows.

For the bytes to networks in address blocks the group had not used either, both floors (and
with them the least an address must carry to count as used) shrink for a small group: times
its busy-interval egress (:class:`GroupRates`, per 5 minutes) over
``new_destination_floors_scale_below`` when it carries less, down to a fifth, and more slowly
(the square root) below, at least ``new_destination_floors_lowest_factor``; asked once per
group and interval. A fresh network
of a provider the group uses (a laptop syncing to another /24 of the office's cloud storage)
is judged by the configured floors.

Prefixes come from each interval's top-destination sketch (the addresses that carried at
least a tenth of the floor's per-interval share in the interval: 8.3 MB by default, times the
group's factor, at least 1 MB), so the cost is per interval, not per record. A window that only
waits out its day (no hour entries, no alert, day sums under the day floors whatever its
group's factor) is parked: brought up to date, as if looked at every interval, only when
something can change for it.
Each group remembers at most ``new_destination_max_prefixes`` prefixes (least recently used
go first, a tenth at a time, counted in :attr:`NewDestinationDetector.evicted`; as many address
blocks at most, likewise). Keys whose
traffic moves between networks all the time (CDN-fronted services) learn their own churn: new-prefix
volume must also be :data:`CHURN_RATIO` times the most the key has sent to new prefixes in
an hour before (halving every :data:`CHURN_HALF_LIFE`). The bytes to new networks in address
blocks (/16 IPv4, /32 IPv6) the group had not used either are judged apart, against the churn
of such blocks alone: a cloud whose addresses rotate over its own blocks learns a high churn
of networks but hardly any of blocks, so a fresh VPS in another provider's block still pages.
A group that sends GBs to new blocks in several of its destinations (a research grid) learns
that too (the third largest of its destinations' new-block volumes, paged or not): bytes to new
blocks must also be :data:`CHURN_RATIO` times it, at most ``new_destination_group_churn_max``,
which bounds the key's own new-block bar too: a destination whose past fresh blocks took GBs
(a grid transfer while learning, or fresh blocks each a little under three times the last) cannot
hide a fresh network taking more than that within the hour.
For :data:`PAGED_BLOCK_QUIET` after a page resolves, other networks in the address blocks it
named are that transfer's, not new (someone has just looked at that block); so are, for a day
after it was judged, those of a fresh block whose bytes within the hour reached the floor and were
held back by the churn bars, once that block went unused for an hour (the transfer that was judged
ended: a new collaborator's test transfer, then its bulk). While a page fires,
a fresh block it is not about that clears the bar for fresh blocks on its own bytes gets an
alert of its own (label ``dst_block``): one alert per group and destination would hide it.
"""

from __future__ import annotations

import heapq
import ipaddress
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from egressd.aggregate import Accum, AggregateKey, Bucket, value_text
from egressd.baseline.grouprate import GroupRates
from egressd.cache import BoundedCache
from egressd.config import DetectionConfig
from egressd.detect.alerts import FIRING, RESOLVED, Alert, AlertBook, AlertKey, rfc3339
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
#: the slow window: bytes within a day to networks first used within that day
DAY = 86400.0
#: a window total that paged, or that only the group's churn held back: it teaches the key
#: no churn (a key's churn has no bound), only the group's
PAGING = 1
#: a group's novelty is routine when this many of its destinations sent that much to new
#: address blocks within a window (one transfer, one page, one churning cloud is not routine)
GROUP_CHURN_KEYS = 3
#: destinations remembered per group for that (the least recently raised go first)
GROUP_CHURN_KEPT = 256
#: after a page resolves, networks in the address blocks it named are not new for this long:
#: a person has just looked at that block (a new collaborator's test transfer, then its bulk
#: to the site's other endpoints), and a new page would tell them what they know
PAGED_BLOCK_QUIET = DAY
#: blocks remembered per group for that (the least recently paged go first)
PAGED_BLOCKS_KEPT = 256
#: a fresh block whose transfer reached the hour floor on its own bytes and was judged the
#: key's or the group's routine novelty (held back by a churn bar, no page), and that then
#: went unused for a window's length (the transfer ended): for this long after that judgement
#: its networks are that site's, not new (a new collaborator's test transfer, then its bulk)
ROUTINE_BLOCK_QUIET = DAY
_PREFIX_CACHE = 65_536
_K = TypeVar("_K")
_V = TypeVar("_V")
#: (a day churn's insertion rank if it had none: last)
_UNRANKED = (1 << 62, 0)


def destinations_at_least(accum: Accum, least: float) -> list[tuple[str, int]]:
    """``accum``'s destinations' sketch's (address, count) pairs of at least ``least``, in
    its order.

    While the talkers wait and their distinct destinations fit the sketch (it would hold
    their exact sums in first-flow order), those are summed by address value, a run of one
    destination at a time (the same sums in the same first-flow order), and only the pairs
    kept get their text; the sketches are left to be made when read. (Here, not a method of
    the accumulator: this module is compiled in the compiled build, the accumulators' is
    not; their own fields are read, not through a Python property.)
    """
    talkers = accum.talkers
    if talkers is not None and accum._sources is None and accum._destinations is None:
        count = len(talkers)
        if count == 3:
            size = talkers[2]
            return [(value_text(talkers[1]), size)] if size >= least else []
        sums: dict[int, int] = {}
        dst = talkers[1]
        run = 0
        for index in range(1, count, 3):
            value = talkers[index]
            if value == dst:
                run += talkers[index + 1]
            else:
                sums[dst] = sums.get(dst, 0) + run
                dst = value
                run = talkers[index + 1]
        sums[dst] = sums.get(dst, 0) + run
        if len(sums) <= accum.capacity:
            return [(value_text(value), size) for value, size in sums.items() if size >= least]
    return [item for item in accum.destinations.counts.items() if item[1] >= least]


def _use(table: dict[str, tuple[float, float]], key: str, clock: float, unseen: float) -> float:
    """Record a use of ``key`` (a network or block) at ``clock``; returns its first use.

    Unused for longer than ``unseen``, it counts as first used now; its last use is moved on
    at most once per :data:`REFRESH`.
    """
    seen = table.get(key)
    if seen is None or clock - seen[1] > unseen:
        table[key] = (clock, clock)
        return clock
    if clock - seen[1] >= REFRESH:
        table[key] = (seen[0], clock)
    return seen[0]


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
    __slots__ = (
        "blocks",
        "counting_from",
        "day",
        "idle",
        "known",
        "paged",
        "prefixes",
        "routine",
        "since",
    )

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
        #: the group's clock when it began counting new networks: for the day window only
        #: networks first used since then are new (not everything the warm-up saw first)
        self.counting_from: float | None = None
        #: address block -> event time a page that named it resolved: for
        #: :data:`PAGED_BLOCK_QUIET` after, its other networks are that transfer's, not new
        self.paged: dict[str, float] = {}
        #: address block -> (the last time its transfer was judged routine, its last use
        #: since, whether it is quiet now): see :data:`ROUTINE_BLOCK_QUIET`
        self.routine: dict[str, tuple[float, float, bool]] = {}

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
    __slots__ = ("block_bytes", "blocks", "bytes", "destinations", "sources", "start")

    def __init__(
        self,
        start: float,
        size: int,
        block_bytes: int,
        destinations: TopK,
        sources: TopK,
        blocks: dict[str, int] | None = None,
    ) -> None:
        self.start = start
        self.bytes = size
        #: of ``size``, the bytes to networks in blocks the group had not used either
        self.block_bytes = block_bytes
        #: those per address block
        self.blocks = blocks
        self.destinations = destinations
        self.sources = sources


class _Window:
    __slots__ = (
        "alert_key",
        "covered",
        "day_block",
        "day_bytes",
        "day_destinations",
        "day_entries",
        "day_history",
        "day_paged",
        "day_sources",
        "entries",
        "history",
        "named",
        "parked_at",
        "seq",
        "spike_key",
        "token",
    )

    def __init__(self, key: AggregateKey, seq: int = 0) -> None:
        #: the key's own alert, and the spike alert that covers it
        self.alert_key: AlertKey = (NEW_DESTINATION, key[0], key[1].key)
        self.spike_key: AlertKey = (SPIKE, key[0], key[1].key)
        self.entries: deque[_Entry] = deque()
        #: (start, bytes, new-block bytes) per interval of the day window, whose evidence is
        #: kept merged (since the day window last emptied)
        self.day_entries: deque[tuple[float, int, int]] = deque()
        #: their sums
        self.day_bytes = 0
        self.day_block = 0
        self.day_destinations = TopK(16)
        self.day_sources = TopK(16)
        #: as ``history``, for the day window
        self.day_history: deque[tuple[float, int, int, int]] = deque()
        #: the last time the key's alert was active: for a day after, the day window holds
        #: what paged, which is no churn to learn
        self.day_paged = -math.inf
        #: a spike alert on the destination told this transfer already
        self.covered = False
        #: the fresh address blocks the key's firing alert is about (those in its window when
        #: it fired, and those with alerts of their own since); None when it is not firing
        #: (or was restored firing: then those it names and those in the window)
        self.named: set[str] | None = None
        #: (event time, window total, its new-block part, :data:`PAGING` or 0) of recent
        #: evaluations: once a window length old, totals that did not page tell what the
        #: key's churn is
        self.history: deque[tuple[float, int, int, int]] = deque()
        #: the order the window was opened in (the detector's windows are looked at in it)
        self.seq = seq
        #: parked (see :meth:`NewDestinationDetector._park`): the last interval its day
        #: history took (an index into the detector's intervals); -1 when not parked
        self.parked_at = -1
        #: which parking a due time in the detector's heap is for
        self.token = 0


class NewDestinationDetector(Detector):
    """Per (group x expected destination): bytes within a window to newly used prefixes."""

    __slots__ = (
        "_awake",
        "_block_cache",
        "_block_rank",
        "_due",
        "_factors",
        "_horizons",
        "_parked",
        "_parked_alerts",
        "_parks",
        "_prefix_cache",
        "_rank",
        "_restore_block_alerts",
        "_seq",
        "_tick_base",
        "_ticks",
        "block_alerts",
        "block_churn",
        "churn",
        "day_block_churn",
        "day_churn",
        "evicted",
        "group_block_churn",
        "groups",
        "rates",
        "windows",
    )

    def __init__(
        self,
        config: DetectionConfig,
        policy: ExpectedDestinations,
        book: AlertBook,
        labels: LabelOptions,
        rates: GroupRates | None = None,
    ) -> None:
        super().__init__(config, policy, book, labels)
        #: each group's busy-interval egress: the floors of a small group shrink with it
        self.rates = rates if rates is not None else GroupRates()
        #: this interval's factor per group (asked of the rates once per group and interval)
        self._factors: dict[str, float] = {}
        self.groups: dict[str, _GroupPrefixes] = {}
        self.windows: dict[AggregateKey, _Window] = {}
        #: per key: (most bytes sent to new prefixes within a window, when)
        self.churn: dict[AggregateKey, tuple[float, float]] = {}
        #: the same for the bytes to networks in blocks the group had not used
        self.block_churn: dict[AggregateKey, tuple[float, float]] = {}
        #: both again for the day window
        self.day_churn: dict[AggregateKey, tuple[float, float]] = {}
        self.day_block_churn: dict[AggregateKey, tuple[float, float]] = {}
        #: per group and destination: (most bytes sent within a window to networks in address
        #: blocks the group had not used, paging or not; when)
        self.group_block_churn: dict[str, dict[DestinationLabels, tuple[float, float]]] = {}
        #: prefixes forgotten to stay within new_destination_max_prefixes
        self.evicted = 0
        self._prefix_cache: BoundedCache[str, str] = BoundedCache(_PREFIX_CACHE)
        self._block_cache: BoundedCache[str, str] = BoundedCache(_PREFIX_CACHE)
        #: alerts of fresh blocks that paged on their own while their key's alert was firing:
        #: alert key -> (the key, the block)
        self.block_alerts: dict[AlertKey, tuple[AggregateKey, str]] = {}
        #: the alert book may hold some from a state file: find them at the next evaluation
        self._restore_block_alerts = False
        self._reset_windows()

    def _reset_windows(self) -> None:
        """No windows (a new detector, a restored state)."""
        self.windows = {}
        #: the windows looked at every interval (the others are parked), and how many were
        #: ever opened (their order)
        self._awake: dict[AggregateKey, _Window] = {}
        self._seq = 0
        #: parked windows: by key, by (group, destination key) for their alerts, and when
        #: each must be looked at again at the latest (a heap of (time, token, key))
        self._parked: dict[AggregateKey, _Window] = {}
        self._parked_alerts: dict[tuple[str, str], list[AggregateKey]] = {}
        self._due: list[tuple[float, int, AggregateKey]] = []
        self._parks = 0
        #: the intervals evaluated (ends, and those minus a day), from interval number
        #: ``_tick_base`` on: what a parked window's day history catches up with
        self._ticks: list[float] = []
        self._horizons: list[float] = []
        self._tick_base = 0
        #: per key of the day churns: (interval number, window order) of its insertion, the
        #: order evaluating every window every interval inserts them in (the state file's)
        self._rank: dict[AggregateKey, tuple[int, int]] = {}
        self._block_rank: dict[AggregateKey, tuple[int, int]] = {}

    def factor(self, group: str) -> float:
        """What ``group``'s floors are multiplied by this interval (at most 1)."""
        factor = self._factors.get(group)
        if factor is None:
            config = self._config
            factor = self._factors[group] = self.rates.shrink(
                group,
                config.new_destination_floors_scale_below,
                config.new_destination_floors_lowest_factor,
                config.interval,
            )
        return factor

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
        # A network is new for the day window for a day after its first use (when it is on).
        day_span = DAY if config.new_destination_day_min_bytes > 0 else 0.0
        # An address counts as used when it carried a tenth of the floor's per-interval share
        # (less could not bring a network to the floor within the window anyway), the group's
        # floor: a small group's is lower, and so is the least that counts as use.
        self._factors = {}
        configured_use = config.new_destination_min_bytes * config.interval / fresh_for / 10
        least = (
            config.new_destination_floors_lowest_factor
            if config.new_destination_floors_scale_below > 0
            else 1.0
        )
        least_use = max(SEEN_MIN_BYTES, configured_use * least)
        uses: dict[str, float] = {}
        policy = self.policy
        cache = self._prefix_cache
        for key, accum in bucket.items():
            if accum.bytes < least_use:
                continue  # no address in it can have carried enough to count as used
            group, dest = key
            use_min = uses.get(group)
            if use_min is None:
                use_min = uses[group] = max(SEEN_MIN_BYTES, configured_use * self.factor(group))
            if accum.bytes < use_min:
                continue
            if not policy.is_expected(group, dest, start):
                continue  # the unexpected-destination rule judges it
            tracked = self.groups.get(group)
            if tracked is None:
                tracked = self.groups[group] = _GroupPrefixes(start)
            prefixes = tracked.prefixes
            blocks = tracked.blocks
            known = tracked.known
            paged = tracked.paged
            holds = tracked.routine
            counting = start - tracked.since >= warm_up
            new_bytes = 0
            block_bytes = 0
            new_destinations: TopK | None = None
            new_blocks: dict[str, int] | None = None
            day_bytes = 0
            day_block = 0
            day_destinations: TopK | None = None
            clock = -math.inf  # the group's clock, read at its first used address
            for address, weight in destinations_at_least(accum, use_min):
                if clock == -math.inf:
                    clock = tracked.clock(start)
                    if counting and tracked.counting_from is None:
                        tracked.counting_from = clock
                if known.get(address, -math.inf) > clock:
                    continue
                prefix = cache.get(address)
                if prefix is None:
                    prefix = self._prefix(address)
                first_use = _use(prefixes, prefix, clock, unseen)
                block = self._block(prefix)
                block_first_use = _use(blocks, block, clock, unseen)
                if holds and counting and clock - first_use < max(fresh_for, day_span):
                    hold = holds.get(block)
                    if hold is not None:
                        if start - hold[0] >= ROUTINE_BLOCK_QUIET:
                            del holds[block]
                        elif hold[2] or start - hold[1] >= fresh_for:
                            holds[block] = (hold[0], start, True)
                            continue  # the site the group's routine took earlier today
                        else:
                            holds[block] = (hold[0], start, False)
                if (
                    paged
                    and counting
                    and clock - first_use < max(fresh_for, day_span)
                    and start - paged.get(block, -math.inf) < PAGED_BLOCK_QUIET
                ):
                    continue  # in a block a page just named: that transfer's other networks
                if counting and clock - first_use < fresh_for:
                    new_bytes += weight
                    if clock - block_first_use < fresh_for:
                        block_bytes += weight
                        if new_blocks is None:
                            new_blocks = {}
                        new_blocks[block] = new_blocks.get(block, 0) + weight
                    if new_destinations is None:
                        new_destinations = TopK(16)
                    new_destinations.add(address, weight)
                if counting and clock - first_use < day_span:
                    # (first used since counting began: a network the warm-up saw is not new)
                    since = tracked.counting_from
                    if day_span and (since is None or first_use >= since):
                        day_bytes += weight
                        if clock - block_first_use < day_span:
                            day_block += weight
                        if day_destinations is None:
                            day_destinations = TopK(16)
                        day_destinations.add(address, weight)
                elif counting and clock - first_use >= fresh_for:
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
            if new_destinations is not None or day_destinations is not None:
                window = self.windows.get(key)
                if window is None:
                    self._seq += 1
                    window = self.windows[key] = self._awake[key] = _Window(key, self._seq)
                elif window.parked_at >= 0:
                    self._wake(key, window)
                if new_destinations is not None:
                    window.entries.append(
                        _Entry(
                            start,
                            new_bytes,
                            block_bytes,
                            new_destinations,
                            accum.sources,
                            new_blocks,
                        )
                    )
                if day_destinations is not None:
                    window.day_entries.append((start, day_bytes, day_block))
                    window.day_bytes += day_bytes
                    window.day_block += day_block
                    window.day_destinations.merge(day_destinations)
                    window.day_sources.merge(accum.sources)
        return self._evaluate(now)

    def _evaluate(self, now: float) -> list[Alert]:
        config = self._config
        hour_floor = config.new_destination_min_bytes
        configured_day_floor = config.new_destination_day_min_bytes
        warm_up = min(config.learning / 2, 86400.0)
        horizon = now - config.new_destination_window
        day_horizon = now - DAY
        pace = DAY / config.new_destination_window
        group_cap = config.new_destination_group_churn_max
        changed: list[Alert] = []
        book_active = self.book.active
        factors = self._factors  # (what factor asked of the rates this interval)
        day_churns, day_block_churns = self.day_churn, self.day_block_churn
        decayed = self._decayed
        rank, block_rank = self._rank, self._block_rank
        tick = self._tick(now, day_horizon)
        # A window waiting out its day that cannot page whatever its group's floors become
        # (see _park) is parked: left alone until something can change for it.
        # (every factor lies in [least, 1])
        least = (
            min(config.new_destination_floors_lowest_factor, 1.0)
            if config.new_destination_floors_scale_below > 0
            else 1.0
        )
        parkable = hour_floor * least > 0
        least_day_floor = configured_day_floor * least
        awake = self._awake
        windows = self.windows
        if len(windows) != len(awake) + len(self._parked):
            # (windows put in place by hand, as tests do: looked at like new ones)
            for key, window in windows.items():
                if key not in awake and key not in self._parked:
                    awake[key] = window
        if self._restore_block_alerts:
            self._restore_block_alerts = False
            for restored in book_active:
                if restored[0] == NEW_DESTINATION and " " in restored[2]:
                    dest_key, _sep, block = restored[2].rpartition(" ")
                    aggregate = (restored[1], DestinationLabels.from_key(dest_key))
                    self.block_alerts[restored] = (aggregate, block)
        for key, window in sorted(awake.items(), key=_opened):
            entries = window.entries
            while entries and entries[0].start < horizon:
                entries.popleft()
            day_entries = window.day_entries
            while day_entries and day_entries[0][0] < day_horizon:
                _start, old_bytes, old_block = day_entries.popleft()
                window.day_bytes -= old_bytes
                window.day_block -= old_block
                if not day_entries:
                    window.day_destinations = TopK(16)
                    window.day_sources = TopK(16)
            alert_key = window.alert_key
            # The group's floors for networks in address blocks it never used either (a small
            # group's are lower; asked once per interval); a fresh network in a block it uses
            # (its cloud provider's) is judged by the configured ones.
            factor = factors.get(key[0])
            if factor is None:
                factor = self.factor(key[0])
            # An int when a configured floor is shown as it is (below), a float when scaled.
            floor: float | int = hour_floor * factor
            day_floor: float | int = configured_day_floor * factor
            total = sum(entry.bytes for entry in entries) if entries else 0
            block_total = sum(entry.block_bytes for entry in entries) if entries else 0
            # One page per transfer: a spike alert on the same destination already tells it.
            if window.spike_key in book_active:
                window.covered = True
                window.day_paged = now
            if alert_key not in book_active and (
                window.covered
                or (
                    total < hour_floor
                    and block_total < floor
                    and (day_floor <= 0 or (window.day_bytes < configured_day_floor
                                            and window.day_block < day_floor))
                )
            ):  # fmt: skip
                # No alert to keep or resolve, and no total at its floor: nothing can fire,
                # so the churns, the policy and the alert book need not be asked (what they
                # would answer changes nothing). The window's history still learns; with no
                # entries and no history it would take a zero total and give it up at once,
                # which raises no churn (a churn is never below zero, see _load_churn).
                if entries or window.history:
                    self._learn(key, now, horizon, window.history,
                                (now, total, block_total, 0),
                                not entries, self.churn, self.block_churn,
                                self.group_block_churn)  # fmt: skip
                # The day window's :meth:`_learn`, inlined: every window that is only
                # waiting out its day (most of them, most intervals) comes here each interval.
                history = window.day_history
                history.append((now, window.day_bytes, window.day_block,
                                PAGING if now - window.day_paged < DAY else 0))  # fmt: skip
                if not day_entries:
                    # The window closes: its whole history comes out now (runs of equal
                    # entries, most of it, learned at once).
                    out = list(history)
                    history.clear()
                    self._take_out(key, window.seq, out, [tick - self._tick_base] * len(out))
                elif history[0][0] <= day_horizon:
                    while history and history[0][0] <= day_horizon:
                        _when, old_total, old_block, paging = history.popleft()
                        if paging == PAGING:
                            continue
                        found = day_churns.get(key)
                        if old_total > (0.0 if found is None else decayed(found, now)):
                            if found is None:
                                rank[key] = (tick, window.seq)
                            day_churns[key] = (float(old_total), now)
                        found = day_block_churns.get(key)
                        if old_block > (0.0 if found is None else decayed(found, now)):
                            if found is None:
                                block_rank[key] = (tick, window.seq)
                            day_block_churns[key] = (float(old_block), now)
                if not entries:
                    window.covered = False  # that transfer is over
                    if not day_entries:
                        del windows[key], awake[key]
                    elif (
                        parkable
                        and not window.history
                        and window.spike_key not in book_active
                        and (
                            configured_day_floor <= 0
                            or (window.day_bytes < configured_day_floor
                                and window.day_block < least_day_floor)
                        )
                    ):  # fmt: skip
                        self._park(key, window, tick)
                continue
            group, dest = key
            churn = self._churn(self.churn, key, now)
            block_churn = self._churn(self.block_churn, key, now)
            tracked = self.groups[group]
            armed = now - tracked.since >= config.learning and self.policy.is_expected(
                group, dest, now - config.interval
            )
            # A key whose traffic moves between networks all the time (a cloud, a CDN) must
            # send several times its usual new-network volume; a network in an address block
            # the group never used is judged against the churn of such blocks alone, which
            # raises its bar to new_destination_group_churn_max at most, as the group's does:
            # a key that learned GBs of new blocks (a grid site's transfer during learning)
            # must not hide a fresh VPS taking more than that within the hour.
            block_bar = CHURN_RATIO * block_churn
            if group_cap > 0:
                block_bar = min(block_bar, group_cap * factor)
            fresh = (total >= hour_floor and total >= CHURN_RATIO * churn) or (
                block_total >= floor and block_total >= block_bar
            )
            # A group that routinely sends GBs to address blocks it never used, in several of
            # its destinations (a research grid's sites, a new collaborator each week), learns
            # that over them: bytes to new blocks must also clear three times that group churn,
            # up to new_destination_group_churn_max (a day floor's worth by default); the rest
            # (fresh networks in blocks it uses) must page on its own. What only this held
            # back teaches the key no churn: its own bar stays as if it had paged.
            group_bar = 0.0
            held = False
            if fresh and group_cap > 0:
                group_churn = self._group_churn(group, now)
                group_bar = min(CHURN_RATIO * group_churn, group_cap * factor)
                held = block_total < group_bar and total - block_total < max(
                    hour_floor, CHURN_RATIO * churn
                )
                fresh = not held
            # The day window: a slow transfer to a fresh network (same rules, a day's bytes).
            day_total = window.day_bytes
            day_block = window.day_block
            day_churn = self._churn(self.day_churn, key, now)
            day_block_churn = self._churn(self.day_block_churn, key, now)
            # Armed once a day of counting is a day old: the churn a day window learns lags
            # it by a day, and its first day's totals are still growing. Bytes that paged
            # (on the hour window) stay in the day window for a day: they page once.
            slow = (
                day_floor > 0
                and now - tracked.since >= warm_up + 2 * DAY
                and now - window.day_paged >= DAY
                and (
                    (day_total >= configured_day_floor and day_total >= CHURN_RATIO * day_churn)
                    or (day_block >= day_floor and day_block >= CHURN_RATIO * day_block_churn)
                )
            )
            fire = armed and not window.covered and (fresh or slow)
            if armed and not fire and block_total >= floor and alert_key not in book_active:
                self._judged(tracked, entries, floor, now)
            # Kept while the last hour's new-network bytes, at their pace, would bring the
            # day window to half its floor: a transfer that stopped resolves within the hour.
            recent = 0
            for entry in reversed(day_entries):
                if entry[0] < horizon:
                    break
                recent += entry[1]
            keep = (
                total >= hour_floor / 2
                or block_total >= floor / 2
                or (day_floor > 0 and recent * pace >= day_floor / 2)
            )
            # The floor shown: the configured one, or the group's when only the bytes to new
            # address blocks reached a floor (the group's).
            if total >= hour_floor:
                floor = hour_floor
            if day_total >= configured_day_floor:
                day_floor = configured_day_floor

            # The evidence is of the window that fired (a firing alert keeps its window's).
            firing = self.book.active.get(alert_key)
            day_alert = not fresh and (
                slow if firing is None else firing.annotations.get("window") == "1d"
            )
            describe: Callable[[], tuple[dict[str, str], dict[str, str]]]
            if not day_alert:

                def describe_hour(
                    window: deque[_Entry] = entries,
                    total: int = total,
                    group: str = group,
                    dest: DestinationLabels = dest,
                    churn: float = churn,
                    block_total: int = block_total,
                    floor: float = floor,
                    group_bar: float = group_bar,
                ) -> tuple[dict[str, str], dict[str, str]]:
                    sources, destinations = self._window_talkers(window)
                    first = window[0].start if window else now
                    return self._describe(
                        now, first, total, group, dest, churn, block_total,
                        config.new_destination_window, sources, destinations, floor,
                        group_bar,
                    )  # fmt: skip

                describe = describe_hour
            else:

                def describe_day(
                    window: _Window = window,
                    total: int = day_total,
                    group: str = group,
                    dest: DestinationLabels = dest,
                    churn: float = day_churn,
                    block_total: int = day_block,
                    day_floor: float = day_floor,
                ) -> tuple[dict[str, str], dict[str, str]]:
                    first = window.day_entries[0][0] if window.day_entries else now
                    return self._describe(
                        now, first, total, group, dest, churn, block_total, DAY,
                        window.day_sources, window.day_destinations, day_floor,
                    )  # fmt: skip

                describe = describe_day

            strength = day_total if day_alert else total
            alert = self.book.evaluate(alert_key, now, fire, keep, describe, strength=strength)
            if alert is not None:
                changed.append(alert)
                if alert.state == RESOLVED:
                    self._paged(tracked, alert, now)
                else:
                    # What the page is about: the fresh blocks in its window as it fired.
                    window.named = {b for entry in entries if entry.blocks for b in entry.blocks}
            current = self.book.active.get(alert_key)
            active = current is not None
            if current is not None and current.state == FIRING:
                if window.named is None:
                    # Restored firing: what it names and what its window holds are its own.
                    window.named = {b for entry in entries if entry.blocks for b in entry.blocks}
                    window.named.update(
                        self._block(p)
                        for p in current.annotations.get("new_prefixes", "").split(",")
                        if p
                    )
                if group_cap > 0 and not group_bar:
                    group_bar = min(CHURN_RATIO * self._group_churn(group, now), group_cap * factor)
                bar = max(floor, block_bar, group_bar)
                self._new_blocks(key, window, window.named, bar)
            elif not active:
                window.named = None
            if active:
                window.day_paged = now
            state = PAGING if active or held else 0
            self._learn(key, now, horizon, window.history, (now, total, block_total, state),
                        not entries, self.churn, self.block_churn,
                        self.group_block_churn)  # fmt: skip
            new_day = key not in day_churns
            new_block = key not in day_block_churns
            self._learn(key, now, day_horizon, window.day_history,
                        (now, day_total, day_block, PAGING if now - window.day_paged < DAY else 0),
                        not day_entries,
                        self.day_churn, self.day_block_churn)  # fmt: skip
            if new_day and key in day_churns:
                rank[key] = (tick, window.seq)
            if new_block and key in day_block_churns:
                block_rank[key] = (tick, window.seq)
            if not entries and not active:
                window.covered = False  # that transfer is over
                if not day_entries:
                    del windows[key], awake[key]
        if self.block_alerts:
            changed += self._evaluate_blocks(now)
        if len(self.day_churn) > config.max_keys or len(self.day_block_churn) > config.max_keys:
            # (in the order and with the values evaluating every window would have given)
            self._wake_all(tick)
            self._in_order()
        ranked: tuple[tuple[dict[AggregateKey, tuple[float, float]], dict[AggregateKey, Any]], ...]
        ranked = (
            (self.churn, {}),
            (self.block_churn, {}),
            (self.day_churn, self._rank),
            (self.day_block_churn, self._block_rank),
        )
        for churns, ranks in ranked:
            if len(churns) > config.max_keys:
                oldest = sorted(churns, key=lambda k: churns[k][1])[: config.max_keys // 10]
                for key in oldest:
                    del churns[key]
                    ranks.pop(key, None)
        return changed

    # -- parked windows ---------------------------------------------------------------------
    #
    # A window with no hour entries, no hour history and no alert, whose day sums stay under
    # the day floors whatever its group's factor (at least ``least``) becomes, only learns its
    # day history each interval: the same entry (its day sums) goes in, and an entry a day old
    # comes out into the day churns. It is parked instead: left alone, and brought up to date
    # (exactly those intervals' history, in the same order, at the same times) when it takes
    # an entry, when its oldest day entry is about to expire (its sums change, or it closes),
    # when an alert of its key or a spike on its destination is active, and before the churns
    # are read (a state snapshot, the eviction of churns). The day churns' insertion order is
    # kept apart (:attr:`_rank`), so the state file lists them as evaluating every window every
    # interval would have.

    def _tick(self, now: float, day_horizon: float) -> int:
        """Note the interval ending at ``now``; wake the windows due. Returns its number."""
        ticks, horizons = self._ticks, self._horizons
        if ticks and not now > ticks[-1]:
            # Event time went back (a clamped clock): catch up, and start the intervals anew.
            self._wake_all(self._tick_base + len(ticks) - 1)
            self._tick_base += len(ticks)
            ticks.clear()
            horizons.clear()
        elif len(ticks) >= 4096:
            first = min(
                (window.parked_at for window in self._parked.values()),
                default=self._tick_base + len(ticks),
            )
            drop = first - self._tick_base
            if drop >= 1024:
                del ticks[:drop], horizons[:drop]
                self._tick_base = first
        ticks.append(now)
        horizons.append(day_horizon)
        tick = self._tick_base + len(ticks) - 1
        due = self._due
        parked = self._parked
        while due and due[0][0] <= now:
            _when, token, key = heapq.heappop(due)
            window = parked.get(key)
            if window is not None and window.token == token:
                self._wake(key, window, tick - 1)
        if parked:
            by_alert = self._parked_alerts
            for name, group, dest_key in list(self.book.active):
                if name in (SPIKE, NEW_DESTINATION):
                    for key in list(by_alert.get((group, dest_key), ())):
                        self._wake(key, parked[key], tick - 1)
        return tick

    def _park(self, key: AggregateKey, window: _Window, tick: int) -> None:
        """Leave ``window`` alone from the interval after ``tick`` on (see above)."""
        window.parked_at = tick
        self._parks += 1
        window.token = self._parks
        del self._awake[key]
        self._parked[key] = window
        self._parked_alerts.setdefault((key[0], key[1].key), []).append(key)
        # Woken an interval early (at most): its oldest day entry expires after this.
        due = window.day_entries[0][0] + DAY - self._config.interval
        heapq.heappush(self._due, (due, window.token, key))

    def _wake(self, key: AggregateKey, window: _Window, upto: int | None = None) -> None:
        """Bring parked ``window`` up to date to interval ``upto`` (the last one noted by
        default) and look at it every interval again."""
        if upto is None:
            upto = self._tick_base + len(self._ticks) - 1
        self._sync(key, window, upto)
        window.parked_at = -1
        del self._parked[key]
        alert = (key[0], key[1].key)
        keys = self._parked_alerts[alert]
        keys.remove(key)
        if not keys:
            del self._parked_alerts[alert]
        self._awake[key] = window

    def _wake_all(self, upto: int) -> None:
        for key, window in list(self._parked.items()):
            self._wake(key, window, upto)
        self._due = []

    def _sync(self, key: AggregateKey, window: _Window, upto: int) -> None:
        """The day history of parked ``window`` through interval ``upto``: what evaluating it
        at each would have done (its day sums and alert did not change meanwhile).

        Each of those intervals appended the same entry (its time aside; paging or not as
        ``day_paged`` says) and took out the entries a day old, which the churns learn in
        order. Of a run of equal entries coming out, only up to the first that raises a churn
        need be looked at: the later ones raise it again to the same size (it decays between
        them), so it ends at the run's size and the time the last came out.
        """
        first = window.parked_at + 1
        if first > upto:
            return
        window.parked_at = upto
        base = self._tick_base
        ticks, horizons = self._ticks, self._horizons
        lo, hi = first - base, upto - base + 1
        size, block, paged = window.day_bytes, window.day_block, window.day_paged
        history = window.day_history
        # (paging while now - paged < DAY: the first intervals of the range, if any)
        cut = bisect_left(ticks, True, lo, hi, key=lambda now: not now - paged < DAY)
        history.extend([(now, size, block, PAGING) for now in ticks[lo:cut]])
        history.extend([(now, size, block, 0) for now in ticks[cut:hi]])
        last_horizon = horizons[hi - 1]
        if not history[0][0] <= last_horizon:
            return
        # What came out, and the interval each did (evaluating every interval takes out the
        # oldest entries while they are a day old, so never one before the one ahead of it).
        out: list[tuple[float, int, int, int]] = []
        at: list[int] = []
        index = lo
        while history and history[0][0] <= last_horizon:
            entry = history.popleft()
            index = max(index, bisect_left(horizons, entry[0], lo, hi))
            out.append(entry)
            at.append(index)
        self._take_out(key, window.seq, out, at)

    def _take_out(
        self, key: AggregateKey, seq: int, out: list[tuple[float, int, int, int]], at: list[int]
    ) -> None:
        """What the day history's entries ``out``, taken out in that order at the intervals
        ``at`` (indices into the intervals noted), teach ``key``'s day churns."""
        count = len(out)
        i = 0
        while i < count:
            _when, total, block_total, paging = out[i]
            j = i + 1
            while j < count and out[j][1:] == (total, block_total, paging):
                j += 1
            if paging != PAGING:
                self._learn_run(key, seq, total, at, i, j, self.day_churn, self._rank)
                self._learn_run(
                    key, seq, block_total, at, i, j, self.day_block_churn, self._block_rank
                )
            i = j

    def _learn_run(
        self,
        key: AggregateKey,
        seq: int,
        size: int,
        at: list[int],
        first: int,
        end: int,
        churns: dict[AggregateKey, tuple[float, float]],
        ranks: dict[AggregateKey, tuple[int, int]],
    ) -> None:
        """What taking out entries ``first``..``end`` (exclusive) of a run of ``size`` at the
        intervals ``at`` does to ``key``'s churn in ``churns``, as :meth:`_learn` would."""
        ticks = self._ticks
        found = churns.get(key)
        failed = -1  # (taken out in the same interval as one that raised nothing: nor does it)
        for index in range(first, end):
            tick = at[index]
            if tick == failed:
                continue
            now = ticks[tick]
            if size > (0.0 if found is None else self._decayed(found, now)):
                if found is None:
                    ranks[key] = (self._tick_base + tick, seq)
                if size > 0:  # (each later one raises it again: the last one's time stays)
                    now = ticks[at[end - 1]]
                churns[key] = (float(size), now)
                return
            failed = tick

    def _sync_all(self) -> None:
        """Every parked window up to date (they stay parked)."""
        last = self._tick_base + len(self._ticks) - 1
        for key, window in self._parked.items():
            self._sync(key, window, last)

    def _in_order(self) -> None:
        """The day churns in the order evaluating every window would have inserted them."""
        for churns, ranks in (
            (self.day_churn, self._rank),
            (self.day_block_churn, self._block_rank),
        ):
            items = sorted(churns.items(), key=lambda item: ranks.get(item[0], _UNRANKED))
            churns.clear()
            churns.update(items)

    def reconfigure(self, config: DetectionConfig, labels: LabelOptions) -> None:
        # (parking depends on the floors)
        if self._parked:
            self._wake_all(self._tick_base + len(self._ticks) - 1)
        super().reconfigure(config, labels)

    def _new_blocks(self, key: AggregateKey, window: _Window, named: set[str], bar: float) -> None:
        """While ``key``'s alert fires: a fresh block it is not about that clears ``bar`` (the
        key's bars for fresh blocks) on its own bytes is another transfer, with its own alert
        (label ``dst_block``), or the page already firing would hide it."""
        sums: dict[str, int] = {}
        for entry in window.entries:
            if entry.blocks:
                for block, size in entry.blocks.items():
                    if block not in named:
                        sums[block] = sums.get(block, 0) + size
        for block, size in sums.items():
            if size >= bar:
                named.add(block)
                group, dest = key
                self.block_alerts[(NEW_DESTINATION, group, f"{dest.key} {block}")] = (key, block)

    def _evaluate_blocks(self, now: float) -> list[Alert]:
        """Advance the alerts of :meth:`_new_blocks`: each fires on its block's bytes within
        the window at the key's floor, is kept at half of it, and resolves as a page does."""
        config = self._config
        changed: list[Alert] = []
        for alert_key, (key, block) in list(self.block_alerts.items()):
            group, dest = key
            window = self.windows.get(key)
            entries: deque[_Entry] = window.entries if window is not None else deque()
            size = sum(entry.blocks.get(block, 0) for entry in entries if entry.blocks)
            floor = config.new_destination_min_bytes * self.factor(group)
            firing = self.book.active.get(window.alert_key) if window is not None else None
            named = window.named if window is not None else None
            about = ", ".join(sorted(named - {block})) if named else ""

            def describe(
                entries: deque[_Entry] = entries,
                size: int = size,
                group: str = group,
                dest: DestinationLabels = dest,
                block: str = block,
                floor: float = floor,
                about: str = about,
                firing: Alert | None = firing,
            ) -> tuple[dict[str, str], dict[str, str]]:
                sources, destinations = self._window_talkers(entries, block)
                first = entries[0].start if entries else now
                churn = self._churn(self.block_churn, (group, dest), now)
                labels, annotations = self._describe(
                    now, first, size, group, dest, churn, size, config.new_destination_window,
                    sources, destinations, floor,
                )  # fmt: skip
                labels = {k: v for k, v in labels.items() if k != "severity"}
                labels["dst_block"] = block
                labels["severity"] = config.severity
                since = f" (since {rfc3339(firing.starts_at)})" if firing is not None else ""
                annotations["summary"] = (
                    f"{group} sent {format_bytes(size)} within "
                    f"{format_duration(config.new_destination_window)} to {block} in "
                    f"{dest.describe()}, an address block it had not used, while its page for "
                    f"{dest.describe()} about {about or 'other networks'} was firing{since}"
                )
                annotations["firing_with_blocks"] = about
                return labels, annotations

            alert = self.book.evaluate(
                alert_key, now, size >= floor, size >= floor / 2, describe, strength=size
            )
            if alert is not None:
                changed.append(alert)
                tracked = self.groups.get(group)
                if alert.state == RESOLVED and tracked is not None:
                    self._paged(tracked, alert, now)
            if alert_key not in self.book.active:
                del self.block_alerts[alert_key]
        return changed

    def _window_talkers(
        self, entries: deque[_Entry], block: str | None = None
    ) -> tuple[TopK, TopK]:
        """The top sources and new destinations of a window's ``entries``, for its page's
        text; of the destinations only those in address block ``block`` when it is given
        (a ``dst_block`` page is about that block alone)."""
        sources = TopK(64)
        destinations = TopK(64)
        for entry in entries:
            sources.merge(entry.sources)
            if block is None:
                destinations.merge(entry.destinations)
            else:
                for address, weight in entry.destinations.counts.items():
                    if self._block(self._prefix(address)) == block:
                        destinations.add(address, weight)
        return sources, destinations

    def _paged(self, tracked: _GroupPrefixes, alert: Alert, now: float) -> None:
        """Remember the address blocks of the networks a resolved page named (see
        :data:`PAGED_BLOCK_QUIET`), at most :data:`PAGED_BLOCKS_KEPT` a group."""
        paged = tracked.paged
        for prefix in alert.annotations.get("new_prefixes", "").split(","):
            if prefix:
                paged[self._block(prefix)] = now
        if len(paged) > PAGED_BLOCKS_KEPT:
            for block in [b for b, when in paged.items() if now - when >= PAGED_BLOCK_QUIET]:
                del paged[block]
            while len(paged) > PAGED_BLOCKS_KEPT:
                del paged[min(paged, key=paged.__getitem__)]

    def _judged(
        self, tracked: _GroupPrefixes, entries: deque[_Entry], floor: float, now: float
    ) -> None:
        """The fresh blocks of a window that reached ``floor`` on their own bytes and did not
        page: judged routine at ``now`` (see :data:`ROUTINE_BLOCK_QUIET`)."""
        sizes: dict[str, int] = {}
        used: dict[str, float] = {}
        for entry in entries:
            if entry.blocks:
                for block, size in entry.blocks.items():
                    sizes[block] = sizes.get(block, 0) + size
                    used[block] = entry.start
        holds = tracked.routine
        for block, size in sizes.items():
            if size >= floor:
                hold = holds.get(block)
                last = used[block] if hold is None else max(hold[1], used[block])
                holds[block] = (now, last, hold is not None and hold[2])
        if len(holds) > PAGED_BLOCKS_KEPT:
            for block in [b for b, h in holds.items() if now - h[0] >= ROUTINE_BLOCK_QUIET]:
                del holds[block]
            while len(holds) > PAGED_BLOCKS_KEPT:
                del holds[min(holds, key=lambda b: holds[b][0])]

    def _learn(
        self,
        key: AggregateKey,
        now: float,
        horizon: float,
        history: deque[tuple[float, int, int, int]],
        latest: tuple[float, int, int, int],
        empty: bool,
        churns: dict[AggregateKey, tuple[float, float]],
        block_churns: dict[AggregateKey, tuple[float, float]],
        group_block_churns: dict[str, dict[DestinationLabels, tuple[float, float]]] | None = None,
    ) -> None:
        """Totals a window length old, that did not page, are the key's ordinary churn: the
        lag keeps a transfer in progress from raising the bar it must clear. Their new-block
        parts, paging or not, are also the group's (``group_block_churns``, per destination:
        its churn is bounded, and takes several destinations)."""
        history.append(latest)
        while history and (history[0][0] <= horizon or empty):
            _when, old_total, old_block, paging = history.popleft()
            if group_block_churns is not None and old_block > 0:
                self._learn_group(group_block_churns, key, old_block, now)
            if paging == PAGING:
                continue
            # _churn inlined: most keys have none, and most old totals are zero.
            found = churns.get(key)
            if old_total > (0.0 if found is None else self._decayed(found, now)):
                churns[key] = (float(old_total), now)
            found = block_churns.get(key)
            if old_block > (0.0 if found is None else self._decayed(found, now)):
                block_churns[key] = (float(old_block), now)

    def _learn_group(
        self,
        churns: dict[str, dict[DestinationLabels, tuple[float, float]]],
        key: AggregateKey,
        size: int,
        now: float,
    ) -> None:
        group, dest = key
        per_dest = churns.get(group)
        if per_dest is None:
            per_dest = churns[group] = {}
        seen = per_dest.get(dest)
        if size > (0.0 if seen is None else self._decayed(seen, now)):
            per_dest[dest] = (float(size), now)
            if len(per_dest) > GROUP_CHURN_KEPT:
                del per_dest[min(per_dest, key=lambda d: per_dest[d][1])]

    def _group_churn(self, group: str, now: float) -> float:
        """The group's new-block churn: the least of its :data:`GROUP_CHURN_KEYS` destinations
        that sent the most to new address blocks within a window (0 with fewer)."""
        per_dest = self.group_block_churn.get(group)
        if per_dest is None or len(per_dest) < GROUP_CHURN_KEYS:
            return 0.0
        sizes = heapq.nlargest(
            GROUP_CHURN_KEYS, (self._decayed(seen, now) for seen in per_dest.values())
        )
        return sizes[-1]

    @staticmethod
    def _churn(
        churns: dict[AggregateKey, tuple[float, float]], key: AggregateKey, now: float
    ) -> float:
        found = churns.get(key)
        if found is None:
            return 0.0
        return NewDestinationDetector._decayed(found, now)

    @staticmethod
    def _decayed(found: tuple[float, float], now: float) -> float:
        """A churn (size, when) at ``now``: halving every :data:`CHURN_HALF_LIFE`."""
        size, when = found
        return size * math.pow(0.5, max(now - when, 0.0) / CHURN_HALF_LIFE)

    def _describe(
        self,
        now: float,
        first: float,
        total: int,
        group: str,
        dest: DestinationLabels,
        churn: float,
        block_total: int,
        length: float,
        sources: TopK,
        destinations: TopK,
        applied: float,
        group_bar: float = 0.0,
    ) -> tuple[dict[str, str], dict[str, str]]:
        """``applied``: the floor the page was judged by (the group's); ``group_bar``: what
        the bytes to new address blocks had to clear given the group's own churn."""
        config = self._config
        span = format_duration(length)
        slow = length != config.new_destination_window
        floor = config.new_destination_day_min_bytes if slow else config.new_destination_min_bytes
        floor_text = format_bytes(round(applied))
        if round(applied) < floor:
            floor_text += (
                f": {format_bytes(floor)} scaled to the group's size (its busy-interval egress "
                "under new_destination_floors_scale_below)"
            )
        unseen = format_duration(config.new_destination_unseen)
        group_text = ""
        if group_bar > applied:
            group_text = (
                f" (the group sends that much to new blocks routinely: it had to clear "
                f"{format_bytes(round(group_bar))}, three times the new-block volume of its "
                f"destinations, at most new_destination_group_churn_max)"
            )
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
                f"{floor_text} per {span}; usual "
                f"new-network volume {format_bytes(round(churn))}); "
                f"{format_bytes(block_total)} of it to address blocks (/16, /32) it had not "
                f"used either{group_text}. Top sources of the destination: "
                f"{_with_bytes(sources, n)}. "
                f"New destinations: {_with_bytes(destinations, n)}. Once this resolves, "
                f"other networks in {', '.join(sorted({self._block(p) for p in prefixes}))} "
                f"count as this transfer's, not as new, for {format_duration(PAGED_BLOCK_QUIET)}."
            ),
            "bytes": str(total),
            "new_block_bytes": str(block_total),
            "baseline_bytes": str(round(churn)),
            "window": span,
            "new_prefixes": ",".join(prefixes),
            "top_sources": ",".join(item for item, _ in sources.top(n)),
            "top_destinations": ",".join(item for item, _ in destinations.top(n)),
        }
        if group_bar > applied:
            annotations["group_new_block_bar_bytes"] = str(round(group_bar))
        if dest.as_org:
            annotations["dst_as_org"] = dest.as_org
        return labels, annotations

    # -- persistence ------------------------------------------------------------------------

    def to_json(self) -> dict[str, object]:
        self._sync_all()
        self._in_order()
        return {
            "groups": {
                group: {
                    "since": tracked.since,
                    "idle": tracked.idle,
                    "day": tracked.day,
                    "counting_from": tracked.counting_from,
                    "prefixes": [[p, first, last] for p, (first, last) in tracked.prefixes.items()],
                    "blocks": [[b, first, last] for b, (first, last) in tracked.blocks.items()],
                    "paged_blocks": [[b, when] for b, when in tracked.paged.items()],
                    "routine_blocks": [
                        [b, judged, used, quiet]
                        for b, (judged, used, quiet) in tracked.routine.items()
                    ],
                }
                for group, tracked in self.groups.items()
            },
            "churn": [[g, d.key, size, when] for (g, d), (size, when) in self.churn.items()],
            "block_churn": _churn_json(self.block_churn),
            "day_churn": _churn_json(self.day_churn),
            "day_block_churn": _churn_json(self.day_block_churn),
            "group_block_churn": [
                [group, dest.key, size, when]
                for group, per_dest in self.group_block_churn.items()
                for dest, (size, when) in per_dest.items()
            ],
        }

    def load_json(self, data: object, intern: dict[str, DestinationLabels]) -> None:
        """Restore what :meth:`to_json` wrote (windows start empty: an hour lost, a day for
        the day window)."""
        if not isinstance(data, dict):
            raise ValueError("malformed new-destination state")
        groups: dict[str, _GroupPrefixes] = {}
        for group, item in dict(data.get("groups", {})).items():
            tracked = _GroupPrefixes(float(item["since"]))
            # A state written before the group's clock: no idle days counted yet.
            tracked.idle = float(item.get("idle", 0.0))
            day = item.get("day")
            tracked.day = None if day is None else int(day)
            counting_from = item.get("counting_from")
            # (a state written before the day window counted long ago: everything may count)
            tracked.counting_from = -math.inf if counting_from is None else float(counting_from)
            limit = self._config.new_destination_max_prefixes
            tracked.prefixes = _load_uses(item["prefixes"], limit)
            if "blocks" in item:
                tracked.blocks = _load_uses(item["blocks"], limit)
            else:
                # A state written before blocks were kept: its networks' blocks, as used.
                for prefix, (first, last) in tracked.prefixes.items():
                    block = block_of(prefix)
                    seen = tracked.blocks.get(block, (first, last))
                    tracked.blocks[block] = (min(seen[0], first), max(seen[1], last))
            # (a state written before paged blocks were kept: none)
            paged = [(float(when), str(block)) for block, when in item.get("paged_blocks", [])]
            tracked.paged = {
                block: when
                for when, block in sorted(p for p in paged if math.isfinite(p[0]))[
                    -PAGED_BLOCKS_KEPT:
                ]
            }
            # (a state written before routine blocks were kept: none)
            routine = [
                (float(judged), float(used), bool(quiet), str(block))
                for block, judged, used, quiet in item.get("routine_blocks", [])
            ]
            tracked.routine = {
                block: (judged, used, quiet)
                for judged, used, quiet, block in sorted(
                    r for r in routine if math.isfinite(r[0]) and math.isfinite(r[1])
                )[-PAGED_BLOCKS_KEPT:]
            }
            groups[str(group)] = tracked
        self.groups = groups
        kept = self._config.max_keys
        self.churn = _load_churn(data.get("churn", []), intern, kept)
        self.block_churn = _load_churn(data.get("block_churn", []), intern, kept)
        self.day_churn = _load_churn(data.get("day_churn", []), intern, kept)
        self.day_block_churn = _load_churn(data.get("day_block_churn", []), intern, kept)
        # (a state written before the group's churn: none learned yet)
        self.group_block_churn = _load_group_churn(data.get("group_block_churn", []), intern, kept)
        self._reset_windows()
        # (a state file's churns, in its order, before any this process learns)
        self._rank = {key: (-1, i) for i, key in enumerate(self.day_churn)}
        self._block_rank = {key: (-1, i) for i, key in enumerate(self.day_block_churn)}
        self._restore_block_alerts = True
        self.block_alerts = {}


def _opened(item: tuple[AggregateKey, _Window]) -> int:
    return item[1].seq


def _churn_json(churns: dict[AggregateKey, tuple[float, float]]) -> list[list[object]]:
    return [[g, d.key, size, when] for (g, d), (size, when) in churns.items()]


def _load_uses(data: object, limit: int) -> dict[str, tuple[float, float]]:
    """A group's networks or blocks as :meth:`NewDestinationDetector.to_json` wrote them,
    held to what learning keeps: finite times, at most ``limit`` (the most recently used)."""
    uses: dict[str, tuple[float, float]] = {}
    if not isinstance(data, list):
        raise ValueError("malformed new-destination networks")
    for name, first, last in data:
        seen = (float(first), float(last))
        if math.isfinite(seen[0]) and math.isfinite(seen[1]):
            uses[str(name)] = seen
    return _newest(uses, limit, lambda seen: seen[1])


def _load_churn(
    data: object, intern: dict[str, DestinationLabels], kept: int
) -> dict[AggregateKey, tuple[float, float]]:
    """A churn as :meth:`NewDestinationDetector.to_json` wrote it, held to what learning
    writes: positive finite sizes at finite times (a NaN or infinite churn would hold a key's
    bar above anything it sends), for at most ``kept`` keys (``detection.max_keys``, the most
    recently raised)."""
    churn: dict[AggregateKey, tuple[float, float]] = {}
    if not isinstance(data, list):
        raise ValueError("malformed new-destination churn")
    for group, dest_key, size, when in data:
        seen = (float(size), float(when))
        if not (seen[0] > 0.0 and math.isfinite(seen[0]) and math.isfinite(seen[1])):
            continue
        dest = intern.get(str(dest_key)) or DestinationLabels.from_key(str(dest_key))
        churn[(str(group), dest)] = seen
    return _newest(churn, kept, lambda seen: seen[1])


def _newest(table: dict[_K, _V], kept: int, when: Callable[[_V], float]) -> dict[_K, _V]:
    """``table`` with at most ``kept`` entries, the latest by ``when``, in their order."""
    if len(table) <= kept:
        return table
    newest = {k for k, _v in heapq.nlargest(kept, table.items(), key=lambda kv: when(kv[1]))}
    return {k: v for k, v in table.items() if k in newest}


def _load_group_churn(
    data: object, intern: dict[str, DestinationLabels], kept: int
) -> dict[str, dict[DestinationLabels, tuple[float, float]]]:
    """A group churn as :meth:`NewDestinationDetector.to_json` wrote it, held to what learning
    keeps: positive finite sizes at finite times, at most :data:`GROUP_CHURN_KEPT` destinations
    a group (the most recently raised), so that a state file cannot make every evaluation of a
    group's fresh blocks scan an unbounded list."""
    churns: dict[str, dict[DestinationLabels, tuple[float, float]]] = {}
    for (group, dest), seen in _load_churn(data, intern, kept).items():
        churns.setdefault(group, {})[dest] = seen
    return {
        group: _newest(per_dest, GROUP_CHURN_KEPT, lambda seen: seen[1])
        for group, per_dest in churns.items()
    }


def _with_bytes(sketch: TopK, n: int) -> str:
    return ", ".join(f"{item} ({format_bytes(weight)})" for item, weight in sketch.top(n))
