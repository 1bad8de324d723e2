"""Seasonal rolling baselines per (source group x destination), in bounded memory.

Each key keeps, in log2(bytes) space, a robust running level and spread for every hour of
day on weekdays and on weekends, plus an overall level. Updates are clipped so a single
outlier cannot drag a baseline, and the level follows organic growth. A key costs a
276-byte record in one shared array, 24 bytes beside it (learn order, metric labels), its
dictionary entry and its destination text: about 450 bytes in all, so a million keys fit
in well under 512 MB.
"""

from __future__ import annotations

import base64
import math
import mmap
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import numpy as np
import numpy.typing as npt

from egressd.baseline.statefile import Base64Records, decode_base64
from egressd.cache import BoundedCache

# header: first_seen, last_seen (event time s), overall level, overall spread, observations
_HEADER = struct.Struct("<ddffI")
#: the header after first_seen (an update leaves first_seen alone unless it goes back in time)
_HEADER_TAIL = struct.Struct("<dffI")
# per slot: level, spread (float16, log2 bytes: ~2% resolution), observations (capped at 255)
_SLOT = struct.Struct("<eeB")
SLOTS = 48  # 24 hours x (weekday, weekend)
# trailer: the key's peak interval level (log2(1 + bytes), decaying) and when it was last
# raised (float32 event time: two-minute resolution, plenty for a half-life of two weeks)
_PEAK = struct.Struct("<ff")
_PEAK_OFFSET = _HEADER.size + SLOTS * _SLOT.size
#: a whole record read at once, header, the hour slot ``i`` and peak (the other slots skipped)
_RECORD_AT_SLOT = tuple(
    struct.Struct(
        f"{_HEADER.format}{i * _SLOT.size}x{_SLOT.format[1:]}"
        f"{(SLOTS - 1 - i) * _SLOT.size}x{_PEAK.format[1:]}"
    )
    for i in range(SLOTS)
)
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


def _rates(alpha: float, count: int) -> tuple[float, ...]:
    """The rate an update moves a level by after n observations, for n below ``count``:
    1 / (n + 1), but at least ``alpha``."""
    return tuple(max(alpha, 1.0 / (n + 1)) for n in range(count))


#: by n: the overall rates until 1 / (n + 1) falls below the alpha, and a slot's (it counts
#: to 255)
_OVERALL_RATES = _rates(OVERALL_ALPHA, int(1 / OVERALL_ALPHA) + 1)
_SLOT_RATES = _rates(SLOT_ALPHA, 256)

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
_LEVEL_OFFSET: int = _RECORD_DTYPE.fields["level"][1]  # type: ignore[index]
#: one hour slot of a record, as the numpy view reads it
_CELL_DTYPE = np.dtype([("level", "<f2"), ("spread", "<f2"), ("n", "u1")])
assert _CELL_DTYPE.itemsize == _SLOT.size
_EMPTY_RECORD = bytes(RECORD_SIZE)
assert RECORD_SIZE % 3 == 0
_RECORD_BASE64 = RECORD_SIZE // 3 * 4


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


def _zeroed(size: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """``size`` zero bytes in a private anonymous mapping of their own.

    Its pages cost memory only once written, and it is returned to the system whole when
    the storage grows (a heap block of this size could stay with the process).
    """
    if size == 0:
        return np.zeros(0, np.uint8)
    return np.frombuffer(mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS), np.uint8)


#: what the index keeps per slot besides the record: the number its key was learned as
#: (from 1; 0 while the slot is free), and its metric labels: group, country and region
#: (numbers of their texts) and ASN, so the metrics view sums many keys by label at once
_EXTRA = struct.Struct("<qIIII")
_EXTRA_DTYPE = np.dtype([("seq", "<i8"), ("labels", "<u4", (4,))])
assert _EXTRA_DTYPE.itemsize == _EXTRA.size


#: the index of a group without keys (never written to)
_NO_KEYS: dict[str, int] = {}


class SeasonalBaselines:
    """All baselines, keyed by (group, destination key), with a cap and idle eviction.

    The records live side by side in one byte array, a slot per key (reused once its key is
    forgotten), rather than one ``bytearray`` each; the index maps group, then destination
    text, to a slot, so no (group, destination) tuple is kept per key either; a list names
    each slot's destination (its group's text number is in the slot's labels), so evictions
    and saves find keys with numpy rather than by walking the index. The metrics
    view evaluates many baselines on the array at once. It grows by doubling up to
    ``max_keys``, and its pages cost memory only once a slot in them is used.
    """

    __slots__ = (
        "_buf",
        "_capacity",
        "_count",
        "_dest_of",
        "_extra",
        "_extra_buf",
        "_free",
        "_index",
        "_labels",
        "_learned",
        "_raw",
        "_seq",
        "_table",
        "_text_ids",
        "_texts",
        "_used",
        "changed",
        "dropped_on_load",
        "epoch",
        "evicted_capacity",
        "evicted_idle",
        "max_keys",
        "season",
        "version",
    )

    def __init__(self, max_keys: int = 100_000, season: SeasonKeyer | None = None) -> None:
        self.max_keys = max_keys
        self.season = season or SeasonKeyer()
        #: group -> destination key -> slot
        self._index: dict[str, dict[str, int]] = {}
        self._count = 0
        #: slots ever used (the highest slot + 1)
        self._used = 0
        #: slots whose key was forgotten, reused first
        self._free: list[int] = []
        #: the destination of the key in each slot ("" in a free one); with the group's text
        #: number in the slot's labels, a slot names its key without walking the index
        self._dest_of: list[str] = []
        #: keys learned so far: a key's number orders keys the way they were first learned
        #: (the state file keeps that order; eviction breaks ties by it)
        self._learned = 0
        #: texts of the metric labels of keys (groups, countries, regions), numbered
        self._texts: list[str] = []
        self._text_ids: dict[str, int] = {}
        self._set_storage(_zeroed(0), _zeroed(0))
        self.evicted_capacity = 0
        self.evicted_idle = 0
        #: keys a state file held that learning would not (see :meth:`load_json`)
        self.dropped_on_load = 0
        #: slots whose key learned an interval, was forgotten or was first learned since a
        #: reader (the metrics view) last emptied it; None, and not kept, until a reader
        #: asks for it with :meth:`track_changes`
        self.changed: set[int] | None = None
        #: bumped when every record is replaced at once (a restored state)
        self.epoch = 0
        #: bumped at every change of any baseline (learned interval, key forgotten, load)
        self.version = 0

    # -- storage ----------------------------------------------------------------------------

    def _set_storage(
        self, raw: np.ndarray[Any, np.dtype[np.uint8]], extra: np.ndarray[Any, np.dtype[np.uint8]]
    ) -> None:
        self._raw = raw
        #: the records as bytes (struct reads and writes them in place) and as numpy records
        self._buf = raw.data
        self._table: np.ndarray[Any, np.dtype[np.void]] = raw.view(_RECORD_DTYPE)
        #: per slot: _EXTRA as bytes, and as numpy columns
        self._extra = extra
        self._extra_buf = extra.data
        self._seq: np.ndarray[Any, np.dtype[np.int64]] = extra.view(_EXTRA_DTYPE)["seq"]
        self._labels: np.ndarray[Any, np.dtype[np.uint32]] = extra.view(_EXTRA_DTYPE)["labels"]
        self._capacity = len(raw) // RECORD_SIZE

    def _grow(self, need: int) -> None:
        capacity = max(need, min(max(self.max_keys, need), max(1024, 2 * self._capacity)))
        raw = _zeroed(capacity * RECORD_SIZE)
        extra = _zeroed(capacity * _EXTRA.size)
        used = self._used
        raw[: used * RECORD_SIZE] = self._raw[: used * RECORD_SIZE]
        extra[: used * _EXTRA.size] = self._extra[: used * _EXTRA.size]
        self._set_storage(raw, extra)

    def _allocate(self, group: str, dest: str) -> int:
        """A zeroed slot for a new key."""
        if self._free:
            slot = self._free.pop()
            offset = slot * RECORD_SIZE
            self._buf[offset : offset + RECORD_SIZE] = _EMPTY_RECORD
            self._dest_of[slot] = dest
        else:
            slot = self._used
            if slot >= self._capacity:
                self._grow(slot + 1)
            self._used = slot + 1
            self._dest_of.append(dest)
        inner = self._index.get(group)
        if inner is None:
            inner = self._index[group] = {}
        inner[dest] = slot
        self._count += 1
        self._learned += 1
        _EXTRA.pack_into(
            self._extra_buf, slot * _EXTRA.size, self._learned, *self._label_numbers(group, dest)
        )
        return slot

    def _text_id(self, text: str) -> int:
        number = self._text_ids.get(text)
        if number is None:
            number = self._text_ids[text] = len(self._texts)
            self._texts.append(text)
        return number

    def _label_numbers(self, group: str, dest: str) -> tuple[int, int, int, int]:
        g = self._text_ids.get(group)
        return (self._text_id(group) if g is None else g, *self._dest_label_numbers(dest))

    def _dest_label_numbers(self, dest: str) -> tuple[int, int, int]:
        # The destination key's text is "country|region|asn" (DestinationLabels.key).
        country, _, rest = dest.partition("|")
        region, _, number = rest.partition("|")
        try:
            asn = int(number) if number else 0
        except ValueError:
            asn = 0
        if not 0 <= asn < 2**32:
            asn = 0
        ids = self._text_ids
        c, r = ids.get(country), ids.get(region)
        return (
            self._text_id(country) if c is None else c,
            self._text_id(region) if r is None else r,
            asn,
        )

    def _release(self, keys: Iterable[BaselineKey]) -> None:
        self.version += 1
        index, seq, free, dest_of = self._index, self._seq, self._free, self._dest_of
        for group, dest in keys:
            inner = index[group]
            slot = inner.pop(dest)
            if not inner:
                del index[group]
            seq[slot] = 0
            dest_of[slot] = ""
            free.append(slot)
            if self.changed is not None:
                self.changed.add(slot)
            self._count -= 1

    def _slot(self, key: BaselineKey) -> int | None:
        inner = self._index.get(key[0])
        return None if inner is None else inner.get(key[1])

    def _live_slots(self, ordered: bool = False) -> np.ndarray[Any, np.dtype[np.intp]]:
        """The slots that hold a key (a free slot's learned number is 0), in slot order, or
        in the order their keys were learned if ``ordered``. Numpy alone: at a million keys
        walking the index instead held the event loop for half a second."""
        slots = np.flatnonzero(self._seq[: self._used])
        if ordered:
            slots = slots[np.argsort(self._seq[slots], kind="stable")]
        return slots

    def _keys_at(self, slots: np.ndarray[Any, np.dtype[np.intp]]) -> list[BaselineKey]:
        """The key in each of ``slots`` (each holding one)."""
        texts, dest_of = self._texts, self._dest_of
        groups = self._labels[slots, 0].tolist()
        return [(texts[g], dest_of[s]) for g, s in zip(groups, slots.tolist(), strict=True)]

    def _items(self, ordered: bool = False) -> tuple[list[BaselineKey], np.ndarray[Any, Any]]:
        """Every key and its slot; in the order the keys were learned if ``ordered``."""
        slots = self._live_slots(ordered)
        return self._keys_at(slots), slots

    def record(self, key: BaselineKey) -> bytes | None:
        """The stored record of ``key`` (the state file's bytes), or None."""
        slot = self._slot(key)
        if slot is None:
            return None
        offset = slot * RECORD_SIZE
        return bytes(self._buf[offset : offset + RECORD_SIZE])

    # -- what the metrics view reads ---------------------------------------------------------

    def slots_of(self, keys: Iterable[BaselineKey]) -> list[int | None]:
        """The slot of each key (None when unknown)."""
        index = self._index
        return [
            None if (inner := index.get(group)) is None else inner.get(dest) for group, dest in keys
        ]

    def held(self, slots: np.ndarray[Any, np.dtype[np.intp]]) -> np.ndarray[Any, np.dtype[np.intp]]:
        """Those of ``slots`` a key holds."""
        held: np.ndarray[Any, np.dtype[np.intp]] = slots[self._seq[slots] > 0]
        return held

    def live_slots(self) -> np.ndarray[Any, np.dtype[np.intp]]:
        """Every slot that holds a key, in slot order."""
        return np.flatnonzero(self._seq[: self._used])

    def label_numbers(
        self, slots: np.ndarray[Any, np.dtype[np.intp]]
    ) -> tuple[np.ndarray[Any, np.dtype[np.uint32]], Sequence[str]]:
        """The metric labels of the keys in ``slots``: one row of (group, country, region,
        ASN) each, the first three numbering the texts returned beside them."""
        return self._labels[slots], self._texts

    @property
    def slot_count(self) -> int:
        """Slots ever used: every slot number is below it."""
        return self._used

    def track_changes(self) -> set[int]:
        """Start (or keep) collecting the slots that change; the reader empties the set."""
        if self.changed is None:
            self.changed = set()
        return self.changed

    def __len__(self) -> int:
        return self._count

    def __contains__(self, key: BaselineKey) -> bool:
        return self._slot(key) is not None

    def observe(self, key: BaselineKey, event_time: float, byte_count: float) -> None:
        """Learn one interval's bytes for ``key`` at ``event_time`` (the interval start)."""
        self.observe_interval(event_time, ((key, byte_count),))

    def observe_interval(
        self, event_time: float, items: Iterable[tuple[BaselineKey, float]]
    ) -> None:
        """Learn one closed interval (starting at ``event_time``): bytes for each key.

        Batched because it runs for every key of every interval: the season slot is found
        once, a record's header, hour slot and peak are read in one unpack, and the two
        running updates are written out inline.
        """
        self.version += 1
        index = self._index
        buf = self._buf
        season = self.season.slot(event_time)
        slot_offset = _HEADER.size + season * _SLOT.size
        record_unpack = _RECORD_AT_SLOT[season].unpack_from
        header_pack = _HEADER.pack_into
        tail_pack = _HEADER_TAIL.pack_into
        slot_pack = _SLOT.pack_into
        peak_pack = _PEAK.pack_into
        log2 = math.log2
        changed = self.changed
        size, peak_offset, half_life = RECORD_SIZE, _PEAK_OFFSET, PEAK_HALF_LIFE
        min_spread, clip = MIN_SPREAD, CLIP
        overall_alpha, overall_rates, slot_rates = OVERALL_ALPHA, _OVERALL_RATES, _SLOT_RATES
        settled = len(overall_rates)
        # Keys come grouped by group, mostly: the group's index is looked up once per run.
        group: str | None = None
        inner: dict[str, int] = {}
        # The record's fields as the numbers they are: compiled, a name left to the unpack's
        # (untyped) tuple makes every comparison and sum below a generic object operation.
        first: float
        last: float
        level: float
        spread: float
        n: int
        s_level: float
        s_spread: float
        s_n: int
        peak: float
        raised: float
        for (key_group, dest), byte_count in items:
            if key_group is not group:
                group = key_group
                inner = index.get(group, _NO_KEYS)
            try:
                slot = inner[dest]
            except KeyError:
                if self._count >= self.max_keys:
                    self._evict_for_room()
                slot = self._allocate(key_group, dest)
                inner = index[key_group]  # eviction may have dropped (this re-created) it
                buf = self._buf  # the storage may have grown
                header_pack(buf, slot * size, event_time, event_time, 0.0, min_spread, 0)
            base = slot * size
            if changed is not None:
                changed.add(slot)
            (first, last, level, spread, n, s_level, s_spread, s_n, peak, raised) = record_unpack(
                buf, base
            )
            x = log2(1.0 + byte_count) if byte_count > 0 else 0.0
            # The overall level and spread: the first observation sets them; then x, clipped
            # to level ± CLIP x spread, moves them by a rate of 1/(n+1), at least the alpha
            # (both rates from tables). min, max and abs are spelt out, picking as the
            # builtins do.
            if n == 0:
                level, spread = x, min_spread
            else:
                bound = clip * (min_spread if min_spread > spread else spread)
                low = level - bound
                clipped = low if low > x else x
                high = level + bound
                if high < clipped:
                    clipped = high
                rate = overall_rates[n] if n < settled else overall_alpha
                error = clipped - level
                level += rate * error
                spread += rate * ((-error if error < 0.0 else error) - spread)
            if first > event_time:
                header_pack(
                    buf, base, event_time, last if last > event_time else event_time, level,
                    spread, n + 1,
                )  # fmt: skip
            else:
                tail_pack(
                    buf, base + 8, last if last > event_time else event_time, level, spread, n + 1
                )
            # The same for the hour slot, with its own alpha.
            if s_n == 0:
                s_level, s_spread = x, min_spread
            else:
                bound = clip * (min_spread if min_spread > s_spread else s_spread)
                low = s_level - bound
                clipped = low if low > x else x
                high = s_level + bound
                if high < clipped:
                    clipped = high
                rate = slot_rates[s_n]
                error = clipped - s_level
                s_level += rate * error
                s_spread += rate * ((-error if error < 0.0 else error) - s_spread)
            slot_pack(
                buf,
                base + slot_offset,
                s_level,
                s_spread if s_spread < 60000.0 else 60000.0,
                s_n + 1 if s_n < 255 else 255,
            )
            # The peak is kept as a level (log2 bytes), so halving is a subtraction.
            if x >= peak - (event_time - raised) / half_life:
                peak_pack(buf, base + peak_offset, x, event_time)

    def expect(self, key: BaselineKey, event_time: float) -> Expectation | None:
        """The seasonal expectation for ``key`` at ``event_time``; None if never seen.

        Uses the busiest of the three neighbouring hour slots (so a job that starts a little
        early or late is still "usual") of the same day type, of both day types when these
        hours have no history on this day type yet, and else the overall level.
        """
        slot_index = self._slot(key)
        if slot_index is None:
            return None
        buf = self._buf
        base = slot_index * RECORD_SIZE
        first, _last, level, spread, n = _HEADER.unpack_from(buf, base)
        slot = self.season.slot(event_time)
        hour, weekend = slot % 24, slot // 24
        slots_at = base + _HEADER.size
        # The same day type speaks alone only when all three hours it compares have history
        # on it; otherwise both day types do. Checking the centre hour alone is not enough:
        # ten minutes into the first weekend night the centre hour holds only the quiet
        # minutes before a nightly job started, and the job's weekday history in the next
        # hour would be ignored, so a routine backup would page.
        if all(
            _SLOT.unpack_from(buf, slots_at + (weekend * 24 + (hour + dh) % 24) * _SLOT.size)[2]
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
                s_level, s_spread, s_n = _SLOT.unpack_from(buf, slots_at + index * _SLOT.size)
                if s_n >= MIN_SLOT_OBSERVATIONS and (best is None or s_level > best[0]):
                    best = (s_level, s_spread, s_n)
        if best is not None:
            return Expectation(best[0], max(best[1], MIN_SPREAD), n, first, basis)
        return Expectation(level, max(spread, MIN_SPREAD), n, first, "overall")

    def expected_bytes(
        self, keys: Sequence[BaselineKey], event_time: float
    ) -> np.ndarray[Any, np.dtype[np.float64]]:
        """``expect(key, event_time).bytes`` for every key (NaN when unknown), all at once."""
        found = self.slots_of(keys)
        if None not in found:
            return self.expected_bytes_at(np.array(found, dtype=np.intp), event_time)
        slots = np.array([-1 if slot is None else slot for slot in found], dtype=np.intp)
        known = slots >= 0
        result = np.full(len(slots), np.nan)
        result[known] = self.expected_bytes_at(slots[known], event_time)
        return result

    def expected_bytes_at(
        self, slots: np.ndarray[Any, np.dtype[np.intp]], event_time: float
    ) -> np.ndarray[Any, np.dtype[np.float64]]:
        """:meth:`expected_bytes` of the keys in ``slots`` (every one held by a key).

        The same rules as :meth:`expect`, on the records as numpy arrays: the metrics view
        evaluates up to max_keys baselines when the hour changes, which costs ~5 µs a key one
        by one and well under 1 µs this way.
        """
        slot = self.season.slot(event_time)
        hour, weekend = slot % 24, slot // 24
        count = len(slots)
        # The six hour slots compared (three of the same day type, three of the other), each
        # gathered as bytes from the records' rows (not the rows whole), then read as cells.
        rows = self._raw.reshape(-1, RECORD_SIZE)
        sides = []
        for day_type in (weekend, 1 - weekend):
            starts = [
                _HEADER.size + (day_type * 24 + (hour + dh) % 24) * _SLOT.size for dh in (-1, 0, 1)
            ]
            if starts[2] - starts[0] == 2 * _SLOT.size:  # adjacent (not midnight): one gather
                block = rows[:, starts[0] : starts[0] + 3 * _SLOT.size][slots]
            else:
                block = np.concatenate([rows[:, a : a + _SLOT.size][slots] for a in starts], axis=1)
            sides.append(block.view(_CELL_DTYPE))
        cells = [side[:, k] for side in sides for k in range(3)]
        levels = [cell["level"] for cell in cells]
        usable = [cell["n"] >= MIN_SLOT_OBSERVATIONS for cell in cells]
        other_day_type = ~(usable[0] & usable[1] & usable[2])
        best = np.full(count, -np.inf)
        found = np.zeros(count, np.bool_)
        for k in range(6):
            take = usable[k] if k < 3 else usable[k] & other_day_type
            best = np.where(take, np.maximum(best, levels[k]), best)
            found |= take
        overall = rows[:, _LEVEL_OFFSET : _LEVEL_OFFSET + 4][slots].view("<f4")[:, 0]
        level = np.where(found, best, overall.astype(np.float64))
        result: np.ndarray[Any, np.dtype[np.float64]] = np.maximum(np.exp2(level) - 1.0, 0.0)
        return result

    def peak(self, key: BaselineKey, event_time: float) -> float:
        """The largest interval ``key`` has sent, halving every :data:`PEAK_HALF_LIFE`."""
        slot = self._slot(key)
        if slot is None:
            return 0.0
        peak, raised = _PEAK.unpack_from(self._buf, slot * RECORD_SIZE + _PEAK_OFFSET)
        if peak <= 0:
            return 0.0
        level = peak - max(event_time - raised, 0.0) / PEAK_HALF_LIFE
        return max(float(2.0**level) - 1.0, 0.0)

    def summary(self, key: BaselineKey) -> dict[str, object] | None:
        """A JSON-friendly view of one baseline (for the HTTP API)."""
        slot = self._slot(key)
        if slot is None:
            return None
        buf = self._buf
        base = slot * RECORD_SIZE
        first, last, level, _spread, n = _HEADER.unpack_from(buf, base)
        hourly = []
        for index in range(SLOTS):
            s_level, _s_spread, s_n = _SLOT.unpack_from(
                buf, base + _HEADER.size + index * _SLOT.size
            )
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
        """Every key, in the order they were first learned."""
        return iter(self._items(ordered=True)[0])

    def __iter__(self) -> Iterator[BaselineKey]:
        return self.keys()

    def summaries(self, group: str | None = None) -> list[dict[str, object]]:
        """:meth:`summary` of every baseline (of ``group`` alone, if given), in key order."""
        return list(self.iter_summaries(group))

    def iter_summaries(self, group: str | None = None) -> Iterator[dict[str, object]]:
        """:meth:`summaries` one at a time: the keys are taken now, each summary when it
        is asked for (a key forgotten meanwhile is left out), so a caller may interleave
        other work, and changes to the baselines, between them."""
        if group is None:
            keys = sorted(self._items()[0])
        else:
            keys = [(group, dest) for dest in sorted(self._index.get(group, ()))]
        for key in keys:
            summary = self.summary(key)
            if summary is not None:
                yield summary

    def evict_idle(self, now: float, idle_timeout: float) -> int:
        """Forget keys not seen for ``idle_timeout``; returns how many."""
        horizon = now - idle_timeout
        slots = self._live_slots()
        stale = self._keys_at(slots[self._table["last"][slots] < horizon])
        self._release(stale)
        self.evicted_idle += len(stale)
        return len(stale)

    def _evict_for_room(self) -> None:
        # Evict the least recently seen tenth at once so eviction cost is amortised; among
        # keys last seen at the same time, the first learned go first.
        count = max(1, self.max_keys // 10)
        slots = self._live_slots()
        order = np.lexsort((self._seq[slots], self._table["last"][slots]))[:count]
        oldest = self._keys_at(slots[order])
        self._release(oldest)
        self.evicted_capacity += len(oldest)

    # -- persistence ------------------------------------------------------------------------

    def to_json(self, *, records_text: bool = True) -> dict[str, object]:
        """The baselines in the state file's compact form (:data:`STATE_FORMAT`).

        Keys in the order they were learned, as parallel lists (the group of each, as a
        number into ``groups``, and its destination text) and the records side by side in
        one base64 text: a million keys are a few list items each, not a JSON object and a
        string apiece, so restoring them costs a fraction of what the per-key form did.
        Without ``records_text`` (a save's snapshot), the records are a copy of their rows
        (:class:`~egressd.baseline.statefile.Base64Records`), whose text the save's thread
        encodes as it writes it.
        """
        groups = list(self._index)
        slots = self._live_slots(ordered=True)
        # A group's number in the file is its place in ``groups``; its slots hold its text's.
        place = np.zeros(len(self._texts), np.intp)
        place[[self._text_ids[group] for group in groups]] = np.arange(len(groups))
        group_of = place[self._labels[slots, 0]]
        dest_of = self._dest_of
        rows = self._raw.reshape(-1, RECORD_SIZE)[slots]
        return {
            "format": STATE_FORMAT,
            "groups": groups,
            "group": group_of.tolist(),
            "dests": [dest_of[slot] for slot in slots.tolist()],
            "records": base64.b64encode(rows.tobytes()).decode()
            if records_text
            else Base64Records(rows),
        }

    def load_json(self, data: dict[str, Any]) -> None:
        """Restore what :meth:`to_json` wrote, or the per-key form of earlier versions
        (``{"group\tdestination": base64 record}``), which loses nothing: the next save
        writes the compact form.

        What learning would never hold is left out, counted in :attr:`dropped_on_load`:
        records with a value that is not finite or below zero (a NaN level would compare
        false with every interval: a key nothing could page on), and beyond ``max_keys``
        the least recently seen keys (learning evicts those first). Raises ValueError when
        the form itself is broken.
        """
        if data.get("format") == STATE_FORMAT:
            groups, group_of, dests, raw = _compact_parts(data)
        else:
            groups, group_of, dests, raw = _per_key_parts(data)
        count = len(dests)
        table = np.frombuffer(raw, _RECORD_DTYPE)
        keep = _usable(table)
        if int(keep.sum()) > self.max_keys:
            # The most recently seen, as the cap's eviction would have left them (ties: the
            # later learned).
            kept = np.flatnonzero(keep)
            newest = np.lexsort((kept, table["last"][kept]))[-self.max_keys :]
            keep = np.zeros(count, np.bool_)
            keep[kept[newest]] = True
        if not keep.all():
            picked = np.flatnonzero(keep)
            table = table[picked]
            group_of = group_of[picked]
            dests = [dests[i] for i in picked.tolist()]
            self.dropped_on_load += count - len(picked)
            count = len(picked)
        # Label numbers per group and per distinct destination text, not per key. (A
        # slice of keys at a time: one call over a million holds the interpreter's lock,
        # and the event loop beside a restore, for a tenth of a second or more.)
        pieces = range(0, count, _LOAD_PIECE)
        # Untrusted until checked (the compiled build checks declared types as it reads).
        distinct: dict[object, None] = {}
        try:
            for at in pieces:
                distinct.update(dict.fromkeys(dests[at : at + _LOAD_PIECE]))
        except TypeError:  # a list or an object where a text belongs
            distinct = {}
        if (count and not distinct) or not all(type(dest) is str for dest in distinct):
            raise ValueError("malformed baselines: destinations")
        codes = {str(dest): code for code, dest in enumerate(distinct)}
        dest_code = np.empty(count, np.intp)
        for at in pieces:
            part = dests[at : at + _LOAD_PIECE]
            dest_code[at : at + len(part)] = np.fromiter(map(codes.__getitem__, part), np.intp)
        index = _index_of(groups, group_of, dests)
        self.version += 1
        # Room to grow as the first new key would make it (doubling, up to max_keys): its
        # pages cost nothing until used, and growing later copies every record on the event
        # loop (0.6 s at a million keys, at the first key learned after the restore).
        capacity = max(count, min(self.max_keys, max(1024, 2 * count)))
        storage = _zeroed(capacity * RECORD_SIZE)
        storage[: count * RECORD_SIZE] = np.ascontiguousarray(table).view(np.uint8)
        self._index = index
        self._count = self._used = self._learned = count
        self._free = []
        self._dest_of = list(dests)
        self._texts, self._text_ids = [], {}
        extra = _zeroed(capacity * _EXTRA.size)
        columns = extra.view(_EXTRA_DTYPE)
        columns["seq"][:count] = np.arange(1, count + 1)
        group_ids = np.array([self._text_id(group) for group in groups], np.uint32)
        numbers = np.array([self._dest_label_numbers(dest) for dest in codes], np.uint32)
        numbers = numbers.reshape(-1, 3)
        labels = columns["labels"]
        labels[:count, 0] = group_ids[group_of] if count else 0
        labels[:count, 1:] = numbers[dest_code]
        self._set_storage(storage, extra)
        self.epoch += 1


#: keys a restore handles in one call (see :meth:`SeasonalBaselines.load_json`)
_LOAD_PIECE = 1 << 16

#: the form :meth:`SeasonalBaselines.to_json` writes (the per-key form before it had none)
STATE_FORMAT = 2


def stored_keys(data: dict[str, Any]) -> list[BaselineKey]:
    """The keys a state file's baselines hold, in the order they were learned (either form)."""
    if data.get("format") == STATE_FORMAT:
        groups, group_of, dests, _raw = _compact_parts(data)
        return [(groups[g], dest) for g, dest in zip(group_of.tolist(), dests, strict=True)]
    return [(group, dest) for group, _sep, dest in (text.partition("\t") for text in data)]


def _compact_parts(
    data: dict[str, Any],
) -> tuple[list[str], np.ndarray[Any, np.dtype[np.intp]], list[str], bytes | npt.NDArray[np.uint8]]:
    """Groups, each key's group number, each key's destination and the records, checked."""
    groups, group_of, dests, text = (data.get(k) for k in ("groups", "group", "dests", "records"))
    if not (isinstance(groups, list) and all(isinstance(g, str) for g in groups)):
        raise ValueError("malformed baselines: groups")
    if len(set(groups)) != len(groups):
        raise ValueError("malformed baselines: a group named twice")
    if not isinstance(dests, list):  # (their type is checked once per text, when numbered)
        raise ValueError("malformed baselines: destinations")
    if not (isinstance(group_of, list) and len(group_of) == len(dests)):
        raise ValueError("malformed baselines: group numbers")
    numbers = np.array(group_of) if group_of else np.zeros(0, np.int64)
    if numbers.dtype.kind not in "iu" or numbers.ndim != 1:
        raise ValueError("malformed baselines: group numbers")
    if len(numbers) and not (numbers.min() >= 0 and numbers.max() < len(groups)):
        raise ValueError("malformed baselines: group numbers")
    raw: bytes | npt.NDArray[np.uint8]
    if isinstance(text, np.ndarray):
        raw = text  # decoded as the file was parsed (statefile.parse_state)
    elif isinstance(text, str):
        try:
            raw = decode_base64(text)  # (in pieces: a thread decoding it lets the loop run)
        except ValueError as exc:
            raise ValueError(f"malformed baselines: records: {exc}") from None
    else:
        raise ValueError("malformed baselines: records")
    if len(raw) != len(dests) * RECORD_SIZE:
        raise ValueError(f"malformed baselines: {len(raw)} bytes of records for {len(dests)} keys")
    return groups, numbers.astype(np.intp), dests, raw


def _per_key_parts(
    data: dict[str, Any],
) -> tuple[list[str], np.ndarray[Any, np.dtype[np.intp]], list[str], bytes]:
    """:func:`_compact_parts` of the per-key form (``{"group\tdest": record}``)."""
    group_numbers: dict[str, int] = {}
    group_of: list[int] = []
    dests: list[str] = []
    for text in data:
        group, sep, dest = str(text).partition("\t")
        if not sep:
            raise ValueError(f"malformed baseline entry {text!r}")
        group_of.append(group_numbers.setdefault(group, len(group_numbers)))
        dests.append(dest)
    blobs = list(data.values())
    raw = b""
    if all(isinstance(blob, str) and len(blob) == _RECORD_BASE64 for blob in blobs):
        # Records of today's size (no padding): decoded all at once.
        try:
            raw = base64.b64decode("".join(blobs), validate=True)
        except ValueError:
            raw = b""
    if len(raw) != len(dests) * RECORD_SIZE:
        raw = b"".join(_decode_record(str(text), blob) for text, blob in data.items())
    return list(group_numbers), np.array(group_of, np.intp), dests, raw


def _usable(table: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.bool_]]:
    """Which records hold only what learning writes: finite values, none below zero."""
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(table["first"]) & np.isfinite(table["last"])
        for name in ("level", "spread", "peak", "peak_time"):
            column = table[name]
            ok &= np.isfinite(column) & (column >= 0)
    # The hour slots' float16 levels and spreads by their high bytes (sign, exponent, top
    # of the mantissa), all at once: one of 0x7C or more is not finite (the exponent all
    # ones) or below zero (the sign set), and learning writes neither (nor a negative zero).
    rows = np.ascontiguousarray(table).view(np.uint8).reshape(len(table), RECORD_SIZE)
    end = _HEADER.size + SLOTS * _SLOT.size
    for byte in (1, 3):  # the level's, the spread's
        high = rows[:, _HEADER.size + byte : end : _SLOT.size]
        ok &= high.max(axis=1, initial=0) < 0x7C
    result: np.ndarray[Any, np.dtype[np.bool_]] = ok
    return result


def _index_of(
    groups: list[str], group_of: np.ndarray[Any, np.dtype[np.intp]], dests: list[str]
) -> dict[str, dict[str, int]]:
    """group -> destination -> slot, slots numbered in key order; ValueError on a key twice."""
    index: dict[str, dict[str, int]] = {}
    order = np.argsort(group_of, kind="stable")
    bounds = np.searchsorted(group_of[order], np.arange(len(groups) + 1))
    for number, group in enumerate(groups):
        slots = order[bounds[number] : bounds[number + 1]].tolist()
        if not slots:
            continue
        inner = dict(zip(map(dests.__getitem__, slots), slots, strict=True))
        if len(inner) != len(slots):
            raise ValueError(f"malformed baselines: a destination of {group!r} twice")
        index[group] = inner
    return index


def _decode_record(text: str, blob: object) -> bytes:
    """One stored record, checked; records written before the peak existed get a zero one."""
    if not isinstance(blob, str):
        raise ValueError(f"malformed baseline entry {text!r}")
    raw = base64.b64decode(blob, validate=True)
    if len(raw) == OLD_RECORD_SIZE:
        raw += bytes(_PEAK.size)  # no peak yet: it starts with the next interval
    if len(raw) != RECORD_SIZE:
        raise ValueError(f"malformed baseline entry {text!r}")
    return raw


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
