"""Seasonal rolling baselines per (source group x destination), in bounded memory.

Each key keeps, in log2(bytes) space, a robust running level and spread for every hour of
day on weekdays and on weekends, plus an overall level. Updates are clipped so a single
outlier cannot drag a baseline, and the level follows organic growth. A key costs one
small ``bytearray`` (about 330 bytes), so a million keys fit in a few hundred megabytes.
"""

from __future__ import annotations

import base64
import heapq
import math
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import numpy as np

from egressd.cache import BoundedCache

# header: first_seen, last_seen (event time s), overall level, overall spread, observations
_HEADER = struct.Struct("<ddffI")
# per slot: level, spread (float16, log2 bytes: ~2% resolution), observations (capped at 255)
_SLOT = struct.Struct("<eeB")
SLOTS = 48  # 24 hours x (weekday, weekend)
# trailer: the key's peak interval level (log2(1 + bytes), decaying) and when it was last
# raised (float32 event time: two-minute resolution, plenty for a half-life of two weeks)
_PEAK = struct.Struct("<ff")
_PEAK_OFFSET = _HEADER.size + SLOTS * _SLOT.size
# the header and the peak read at once (the slots between skipped)
_HEADER_PEAK = struct.Struct(f"{_HEADER.format}{SLOTS * _SLOT.size}x{_PEAK.format[1:]}")
#: records written before the peak existed (read with a zero peak)
OLD_RECORD_SIZE = _PEAK_OFFSET
RECORD_SIZE = _PEAK_OFFSET + _PEAK.size
#: the peak halves every two weeks: a weekly job is remembered at 70% a week later
PEAK_HALF_LIFE = 14 * 86400.0

#: spread never counts as smaller than this (log2 units: a factor of about 1.4)
MIN_SPREAD = 0.5
#: clip updates to level ± CLIP x spread so one outlier moves a baseline only a little
CLIP = 3.0
SLOT_ALPHA = 0.15
OVERALL_ALPHA = 0.05
#: a slot speaks for its hour once it has this many observations
MIN_SLOT_OBSERVATIONS = 2

BaselineKey = tuple[str, str]  # (group, destination key)

# The same layout as a numpy record, to evaluate many baselines at once (metrics).
_RECORD_DTYPE = np.dtype(
    [
        ("first", "<f8"),
        ("last", "<f8"),
        ("level", "<f4"),
        ("spread", "<f4"),
        ("n", "<u4"),
        ("slots", [("level", "<f2"), ("spread", "<f2"), ("n", "u1")], (SLOTS,)),
        ("peak", "<f4"),
        ("peak_time", "<f4"),
    ]
)
assert _RECORD_DTYPE.itemsize == RECORD_SIZE


@dataclass(frozen=True, slots=True)
class Expectation:
    """What a baseline expects for one interval."""

    level: float  # log2(1 + bytes)
    spread: float  # log2 units
    observations: int
    first_seen: float
    basis: str  # "slot", "other-day-type", "overall"

    @property
    def bytes(self) -> float:
        return max(float(2.0**self.level) - 1.0, 0.0)


def to_level(byte_count: float) -> float:
    return math.log2(1.0 + max(byte_count, 0.0))


class SeasonKeyer:
    """Maps an event time to its seasonal slot (hour of day x weekday/weekend) in a timezone."""

    __slots__ = ("_cache", "_tz")

    def __init__(self, tz: tzinfo = UTC) -> None:
        self._tz = tz
        self._cache: BoundedCache[int, int] = BoundedCache(100_000)

    def slot(self, event_time: float) -> int:
        hour_index = int(event_time // 3600)
        slot = self._cache.get(hour_index)
        if slot is None:
            moment = datetime.fromtimestamp(hour_index * 3600, self._tz)
            slot = int(moment.hour) + (24 if moment.weekday() >= 5 else 0)
            self._cache.store(hour_index, slot)
        return slot


def _update(level: float, spread: float, n: int, x: float, alpha: float) -> tuple[float, float]:
    if n == 0:
        return x, MIN_SPREAD
    bound = CLIP * max(spread, MIN_SPREAD)
    clipped = min(max(x, level - bound), level + bound)
    rate = max(1.0 / (n + 1), alpha)
    error = clipped - level
    level += rate * error
    spread += rate * (abs(error) - spread)
    return level, spread


class SeasonalBaselines:
    """All baselines, keyed by (group, destination key), with a cap and idle eviction."""

    __slots__ = (
        "changed",
        "epoch",
        "evicted_capacity",
        "evicted_idle",
        "max_keys",
        "records",
        "season",
    )

    def __init__(self, max_keys: int = 100_000, season: SeasonKeyer | None = None) -> None:
        self.max_keys = max_keys
        self.season = season or SeasonKeyer()
        self.records: dict[BaselineKey, bytearray] = {}
        self.evicted_capacity = 0
        self.evicted_idle = 0
        #: keys learned or forgotten since a reader (the metrics view) last emptied it;
        #: None, and not kept, until a reader asks for it with :meth:`track_changes`
        self.changed: set[BaselineKey] | None = None
        #: bumped when every record is replaced at once (a restored state)
        self.epoch = 0

    def track_changes(self) -> set[BaselineKey]:
        """Start (or keep) collecting the keys that change; the reader empties the set."""
        if self.changed is None:
            self.changed = set()
        return self.changed

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, key: BaselineKey) -> bool:
        return key in self.records

    def observe(self, key: BaselineKey, event_time: float, byte_count: float) -> None:
        """Learn one interval's bytes for ``key`` at ``event_time`` (the interval start)."""
        self.observe_interval(event_time, ((key, byte_count),))

    def observe_interval(
        self, event_time: float, items: Iterable[tuple[BaselineKey, float]]
    ) -> None:
        """Learn one closed interval (starting at ``event_time``): bytes for each key.

        Batched because it runs for every key of every interval: the season slot is found
        once, and the lookups the loop needs are bound to locals.
        """
        records = self.records
        offset = _HEADER.size + self.season.slot(event_time) * _SLOT.size
        header_pack = _HEADER.pack_into
        slot_unpack, slot_pack = _SLOT.unpack_from, _SLOT.pack_into
        header_peak_unpack, peak_pack = _HEADER_PEAK.unpack_from, _PEAK.pack_into
        log2 = math.log2
        changed = self.changed
        for key, byte_count in items:
            if changed is not None:
                changed.add(key)
            record = records.get(key)
            if record is None:
                if len(records) >= self.max_keys:
                    self._evict_for_room()
                record = bytearray(RECORD_SIZE)
                header_pack(record, 0, event_time, event_time, 0.0, MIN_SPREAD, 0)
                records[key] = record
            first, last, level, spread, n, peak, raised = header_peak_unpack(record, 0)
            x = log2(1.0 + byte_count) if byte_count > 0 else 0.0
            level, spread = _update(level, spread, n, x, OVERALL_ALPHA)
            header_pack(
                record,
                0,
                first if first < event_time else event_time,
                last if last > event_time else event_time,
                level,
                spread,
                n + 1,
            )
            s_level, s_spread, s_n = slot_unpack(record, offset)
            s_level, s_spread = _update(s_level, s_spread, s_n, x, SLOT_ALPHA)
            slot_pack(
                record,
                offset,
                s_level,
                s_spread if s_spread < 60000.0 else 60000.0,
                s_n + 1 if s_n < 255 else 255,
            )
            # The peak is kept as a level (log2 bytes), so halving is a subtraction.
            if x >= peak - (event_time - raised) / PEAK_HALF_LIFE:
                peak_pack(record, _PEAK_OFFSET, x, event_time)

    def expect(self, key: BaselineKey, event_time: float) -> Expectation | None:
        """The seasonal expectation for ``key`` at ``event_time``; None if never seen.

        Uses the busiest of the three neighbouring hour slots (so a job that starts a little
        early or late is still "usual") of the same day type, of both day types when these
        hours have no history on this day type yet, and else the overall level.
        """
        record = self.records.get(key)
        if record is None:
            return None
        first, _last, level, spread, n = _HEADER.unpack_from(record, 0)
        slot = self.season.slot(event_time)
        hour, weekend = slot % 24, slot // 24
        # The same day type speaks alone only when all three hours it compares have history
        # on it; otherwise both day types do. Checking the centre hour alone is not enough:
        # ten minutes into the first weekend night the centre hour holds only the quiet
        # minutes before a nightly job started, and the job's weekday history in the next
        # hour would be ignored, so a routine backup would page.
        if all(
            _SLOT.unpack_from(
                record, _HEADER.size + (weekend * 24 + (hour + dh) % 24) * _SLOT.size
            )[2]
            >= MIN_SLOT_OBSERVATIONS
            for dh in (-1, 0, 1)
        ):
            day_types: tuple[int, ...] = (weekend,)
            basis = "slot"
        else:
            day_types = (weekend, 1 - weekend)
            basis = "either-day-type"
        best: tuple[float, float, int] | None = None
        for day_type in day_types:
            for dh in (-1, 0, 1):
                index = day_type * 24 + (hour + dh) % 24
                s_level, s_spread, s_n = _SLOT.unpack_from(
                    record, _HEADER.size + index * _SLOT.size
                )
                if s_n >= MIN_SLOT_OBSERVATIONS and (best is None or s_level > best[0]):
                    best = (s_level, s_spread, s_n)
        if best is not None:
            return Expectation(best[0], max(best[1], MIN_SPREAD), n, first, basis)
        return Expectation(level, max(spread, MIN_SPREAD), n, first, "overall")

    def expected_bytes(
        self, keys: Sequence[BaselineKey], event_time: float
    ) -> np.ndarray[Any, np.dtype[np.float64]]:
        """``expect(key, event_time).bytes`` for every key (NaN when unknown), all at once.

        The same rules as :meth:`expect`, on the records viewed as one numpy array: the
        metrics view evaluates up to max_keys baselines when the hour changes, which costs
        ~5 µs a key one by one and well under 1 µs this way.
        """
        records = self.records
        found = list(map(records.get, keys))
        known: np.ndarray[Any, np.dtype[np.bool_]] | None = None
        raw: list[bytes | bytearray]
        if None in found:
            known = np.fromiter((record is not None for record in found), bool, len(found))
            empty = bytes(RECORD_SIZE)
            raw = [empty if record is None else record for record in found]
        else:
            raw = found  # type: ignore[assignment]
        table = np.frombuffer(b"".join(raw), dtype=_RECORD_DTYPE)
        slot = self.season.slot(event_time)
        hour, weekend = slot % 24, slot // 24
        same = [weekend * 24 + (hour + dh) % 24 for dh in (-1, 0, 1)]
        other = [(1 - weekend) * 24 + (hour + dh) % 24 for dh in (-1, 0, 1)]
        slots = table["slots"][:, same + other]
        usable = slots["n"] >= MIN_SLOT_OBSERVATIONS
        same_only = np.all(usable[:, :3], axis=1, keepdims=True)
        usable[:, 3:] &= ~same_only
        best = np.where(usable, slots["level"].astype(np.float64), -np.inf).max(axis=1)
        level = np.where(usable.any(axis=1), best, table["level"].astype(np.float64))
        result = np.maximum(np.exp2(level) - 1.0, 0.0)
        if known is not None:
            result[~known] = np.nan
        return result

    def peak(self, key: BaselineKey, event_time: float) -> float:
        """The largest interval ``key`` has sent, halving every :data:`PEAK_HALF_LIFE`."""
        record = self.records.get(key)
        if record is None:
            return 0.0
        peak, raised = _PEAK.unpack_from(record, _PEAK_OFFSET)
        if peak <= 0:
            return 0.0
        level = peak - max(event_time - raised, 0.0) / PEAK_HALF_LIFE
        return max(float(2.0**level) - 1.0, 0.0)

    def summary(self, key: BaselineKey) -> dict[str, object] | None:
        """A JSON-friendly view of one baseline (for the HTTP API)."""
        record = self.records.get(key)
        if record is None:
            return None
        first, last, level, _spread, n = _HEADER.unpack_from(record, 0)
        hourly = []
        for index in range(SLOTS):
            s_level, _s_spread, s_n = _SLOT.unpack_from(record, _HEADER.size + index * _SLOT.size)
            hourly.append(round(max(2.0**s_level - 1.0, 0.0)) if s_n else None)
        return {
            "group": key[0],
            "destination": key[1],
            "first_seen": first,
            "last_seen": last,
            "observations": n,
            "typical_bytes": round(max(2.0**level - 1.0, 0.0)),
            "weekday_hourly_bytes": hourly[:24],
            "weekend_hourly_bytes": hourly[24:],
        }

    def keys(self) -> Iterator[BaselineKey]:
        return iter(self.records)

    def summaries(self, group: str | None = None) -> list[dict[str, object]]:
        """:meth:`summary` of every baseline (of ``group`` alone, if given), in key order."""
        out = []
        for key in sorted(self.records):
            if group is None or key[0] == group:
                summary = self.summary(key)
                if summary is not None:
                    out.append(summary)
        return out

    def evict_idle(self, now: float, idle_timeout: float) -> int:
        """Forget keys not seen for ``idle_timeout``; returns how many."""
        horizon = now - idle_timeout
        stale = [k for k, r in self.records.items() if _HEADER.unpack_from(r, 0)[1] < horizon]
        for key in stale:
            del self.records[key]
        if self.changed is not None:
            self.changed.update(stale)
        self.evicted_idle += len(stale)
        return len(stale)

    def _evict_for_room(self) -> None:
        # Evict the least recently seen tenth at once so eviction cost is amortised.
        count = max(1, self.max_keys // 10)
        oldest = heapq.nsmallest(
            count, self.records.items(), key=lambda kv: _HEADER.unpack_from(kv[1], 0)[1]
        )
        for key, _record in oldest:
            del self.records[key]
        if self.changed is not None:
            self.changed.update(key for key, _record in oldest)
        self.evicted_capacity += len(oldest)

    # -- persistence ------------------------------------------------------------------------

    def to_json(self) -> dict[str, str]:
        return {
            f"{group}\t{dest}": base64.b64encode(bytes(record)).decode("ascii")
            for (group, dest), record in self.records.items()
        }

    def load_json(self, data: dict[str, str]) -> None:
        records: dict[BaselineKey, bytearray] = {}
        for text, blob in data.items():
            group, sep, dest = text.partition("\t")
            raw = base64.b64decode(blob, validate=True)
            if len(raw) == OLD_RECORD_SIZE:
                raw += bytes(_PEAK.size)  # no peak yet: it starts with the next interval
            if not sep or len(raw) != RECORD_SIZE:
                raise ValueError(f"malformed baseline entry {text!r}")
            records[(group, dest)] = bytearray(raw)
        self.records = records
        self.epoch += 1


def timezone_named(name: str) -> tzinfo:
    """A timezone by IANA name ("UTC", "Europe/London") or fixed offset ("+02:00")."""
    if name.upper() in ("UTC", "Z"):
        return UTC
    if name[:1] in "+-" and len(name) == 6 and name[3] == ":":
        sign = 1 if name[0] == "+" else -1
        return timezone(sign * timedelta(hours=int(name[1:3]), minutes=int(name[4:6])))
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown timezone {name!r} (use an IANA name such as 'Europe/London')"
        ) from None
