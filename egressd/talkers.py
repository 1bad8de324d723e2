"""Top-talker updates of the batch path, kept as columns until someone reads the sketches.

Adding every flow's source and destination to its key's Space-Saving sketch costs a text form
of each address and a dict or heap operation per flow: most of the engine's time when every
flow brings new addresses. The batch path appends its flows' addresses and bytes here instead
(one append per interval per block) and :meth:`TalkerBacklog.settle` sums them per (key,
address) in numpy and hands each sketch its heaviest addresses (:meth:`TopK.add_summed`),
making text only for those. The aggregator settles an interval before anything reads its
sketches (closing it, a state snapshot) and whenever its backlog reaches
:data:`SETTLE_ROWS` rows, which bounds the memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from egressd.columns import U64, address_text, address_texts

if TYPE_CHECKING:
    from egressd.aggregate import Accum

I64 = npt.NDArray[np.int64]

_LOW64 = 2**64 - 1

#: an interval's backlog is settled when it holds this many flows (~3 MB)
SETTLE_ROWS = 65_536
#: address texts a :class:`TextCache` keeps (cleared when past it; ~8 MB)
KNOWN_TEXTS = 65_536
#: a backlog of at most this many flows is summed in plain dicts: numpy's sorting and
#: grouping cost more than a dict update per flow below it (a sparse replay's intervals
#: hold a few hundred flows; replay_bench measured the crossover)
SMALL_ROWS = 2_048


#: an address's 128-bit value -> its text, kept between settles (the same talkers come back
#: interval after interval); cleared when it holds :data:`KNOWN_TEXTS`
TextCache = dict[int, str]


class TalkerBacklog:
    """Flows of one open interval whose talkers are not in their sketches yet."""

    __slots__ = ("_accums", "_chunks", "_codes", "_known", "rows")

    def __init__(self, known: TextCache | None = None) -> None:
        self._known: TextCache = {} if known is None else known
        #: the accumulators flows were counted in, by code
        self._accums: list[Accum] = []
        self._codes: dict[int, int] = {}
        self._chunks: list[tuple[I64, U64, U64, U64, U64, npt.NDArray[Any]]] = []
        self.rows = 0

    def add(
        self,
        accums: list[Accum],
        keys: I64,
        src_hi: U64,
        src_lo: U64,
        dst_hi: U64,
        dst_lo: U64,
        sizes: npt.NDArray[Any],
    ) -> None:
        """Flows (in order) counted in ``accums[keys[i]]``, with their addresses and bytes."""
        codes = self._codes
        mapping = list(map(codes.get, map(id, accums)))  # (C loops: most are known)
        if None in mapping:
            for i, accum in enumerate(accums):
                if mapping[i] is None:
                    code = codes.get(id(accum))  # (an accumulator twice in ``accums``)
                    if code is None:
                        code = codes[id(accum)] = len(self._accums)
                        self._accums.append(accum)
                    mapping[i] = code
        rows = np.array(mapping, dtype=np.int64)[keys]
        self._chunks.append((rows, src_hi, src_lo, dst_hi, dst_lo, sizes))
        self.rows += len(keys)

    def settle(self) -> None:
        """Add every flow kept here to its sketches; the backlog is empty afterwards."""
        if not self._chunks:
            return
        chunks = self._chunks
        if self.rows <= SMALL_ROWS:
            accums = self._accums
            self._chunks = []
            self._accums = []
            self._codes = {}
            self.rows = 0
            _settle_small(chunks, accums, self._known)
            return
        if len(chunks) == 1:
            keys, src_hi, src_lo, dst_hi, dst_lo, sizes = chunks[0]
        else:
            keys, src_hi, src_lo, dst_hi, dst_lo, sizes = (
                np.concatenate([chunk[i] for chunk in chunks]) for i in range(6)
            )
        accums = self._accums
        self._chunks = []
        self._accums = []
        self._codes = {}
        self.rows = 0
        if not accums:
            return
        capacity = accums[0].capacity
        for source, hi, lo in ((True, src_hi, src_lo), (False, dst_hi, dst_lo)):
            for code, (items, weights, rest, rest_weight) in _heaviest(
                keys, hi, lo, sizes, capacity, self._known
            ):
                accum = accums[code]
                sketch = accum.sources if source else accum.destinations
                sketch.add_summed(items, weights, rest, rest_weight)


def _heaviest(
    keys: I64,
    hi: U64,
    lo: U64,
    sizes: npt.NDArray[Any],
    capacity: int,
    known: TextCache | None = None,
) -> list[tuple[int, tuple[list[str], list[int], str | None, int]]]:
    """Per key: its addresses summed, in order of first appearance, the heaviest
    ``capacity`` of them apart and the rest as (heaviest of the rest, their total)."""
    rows = len(keys)
    with_rows = _packed_with_rows(keys, hi, lo)
    packed = None if with_rows is not None else _packed(keys, hi, lo)
    if with_rows is not None:
        # (key, address, row) as one number: a plain sort (several times faster than an
        # argsort) orders the rows, and each pair's first row comes first in its run.
        numbers, row_bits, address_bits, lowest = with_rows
        numbers.sort()
        order = numbers & ((1 << row_bits) - 1)
        ordered = numbers >> row_bits
        change = np.empty(rows, dtype=np.bool_)
        change[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=change[1:])
        heads = np.flatnonzero(change)
        pair_keys = ordered[heads] >> address_bits
        pair_lo = (ordered[heads] & ((1 << address_bits) - 1)).astype(np.uint64)
        pair_lo += np.uint64(lowest)
        pair_hi = None
        firsts = order[heads]
    elif packed is not None:
        # (key, address) as one number (IPv4 needs 48 bits): one sort, not three, and not
        # a stable one: where each pair first appeared is its rows' smallest index.
        order = np.argsort(packed)
        ordered = packed[order]
        change = np.empty(rows, dtype=np.bool_)
        change[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=change[1:])
        heads = np.flatnonzero(change)
        pair_keys = ordered[heads] >> _ADDRESS_BITS
        pair_lo = (ordered[heads] & _ADDRESS_MASK).astype(np.uint64)
        pair_hi = None
        firsts = np.minimum.reduceat(order, heads)
    else:
        # One number per distinct (key, address): rows sorted by it, stable, keep flow order.
        order = np.lexsort((lo, hi, keys)) if hi.any() else np.lexsort((lo, keys))
        k, h, low = keys[order], hi[order], lo[order]
        change = np.empty(rows, dtype=np.bool_)
        change[0] = True
        change[1:] = (k[1:] != k[:-1]) | (h[1:] != h[:-1]) | (low[1:] != low[:-1])
        heads = np.flatnonzero(change)
        pair_keys = k[heads]
        pair_lo = low[heads]
        pair_hi = h[heads]
        # stable sort: the first row of each run is where the pair first appeared
        firsts = order[heads]
    sums = np.add.reduceat(sizes[order], heads)
    pairs = len(heads)
    if not pairs:
        return []
    # Pairs are in (key, address) order: each key's pairs are together, keys ascending.
    bounds = np.flatnonzero(pair_keys[1:] != pair_keys[:-1]) + 1
    starts = np.concatenate(([0], bounds))
    ends = np.concatenate((bounds, [pairs]))
    # Which pairs the sketches receive: all of a key's when they fit, else its heaviest
    # ``capacity`` (ties to the one that came first) and the heaviest of the rest. Only
    # those get a text form: a key with many addresses would otherwise pay one per address.
    big = ends - starts > capacity
    rest_rows = np.zeros(0, dtype=np.intp)
    totals: list[int] = []
    chosen: npt.NDArray[np.intp]
    if big.any():
        # a key's pairs by weight, ascending, ties in order of first appearance: its
        # heaviest ``capacity`` end where its pairs end, the rest's heaviest is just before
        by_weight = _by_weight(bounds, sums, firsts)
        big_ends = ends[big]
        take = np.ones(pairs, dtype=np.bool_)
        take[np.repeat(big, ends - starts)] = False
        take[by_weight[(big_ends[:, None] - capacity + np.arange(capacity)).reshape(-1)]] = True
        rest_rows = by_weight[big_ends - capacity - 1]
        take[rest_rows] = True
        exact = sums.dtype != np.uint64 or int(sums.max()) < 2**64 // pairs
        totals = np.add.reduceat(sums if exact else sums.astype(object), starts)[big].tolist()
        chosen = np.flatnonzero(take)
        per_key = np.add.reduceat(take.astype(np.int64), starts)
    else:
        chosen = np.arange(pairs, dtype=np.intp)
        per_key = ends - starts
    # The chosen pairs by (key, first row) (distinct numbers; with the pair's position in
    # the low bits a plain sort gives the order where they fit in 63 bits): each key's
    # items go to its sketch in the order they first came.
    chosen_keys = pair_keys[chosen]
    chosen_firsts = firsts[chosen]
    row_bits = rows.bit_length()
    count = len(chosen)
    count_bits = count.bit_length()
    last_key = int(chosen_keys[-1])
    if last_key.bit_length() + row_bits + count_bits <= 63:
        numbers = chosen_keys.astype(np.int64) << (row_bits + count_bits)
        numbers |= chosen_firsts.astype(np.int64) << count_bits
        numbers |= np.arange(count, dtype=np.int64)
        numbers.sort()
        arrange = numbers & ((1 << count_bits) - 1)
    elif rows < 2**31 and last_key < 2**31:
        arrange = np.argsort((chosen_keys.astype(np.int64) << 32) | chosen_firsts)
    else:
        arrange = np.lexsort((chosen_firsts, chosen_keys))
    arranged = chosen[arrange]
    texts = _texts(
        None if pair_hi is None else pair_hi[arranged],
        pair_lo[arranged],
        {} if known is None else known,
    )
    weights = sums[arranged].tolist()
    # where each key's chosen pairs start and end among them, and where each rest is
    slots = np.concatenate(([0], np.cumsum(per_key)))
    if len(rest_rows):
        position = np.empty(pairs, dtype=np.int64)
        position[arranged] = np.arange(count, dtype=np.int64)
        rests = iter(position[rest_rows].tolist())
    else:
        rests = iter(())
    key_totals = iter(totals)
    out: list[tuple[int, tuple[list[str], list[int], str | None, int]]] = []
    for key, a, b, overflow in zip(
        pair_keys[starts].tolist(),
        slots[:-1].tolist(),
        slots[1:].tolist(),
        big.tolist(),
        strict=True,
    ):
        if not overflow:
            out.append((key, (texts[a:b], weights[a:b], None, 0)))
            continue
        r = next(rests)
        kept_weights = weights[a:r] + weights[r + 1 : b]
        rest_weight = next(key_totals) - sum(kept_weights)
        out.append((key, (texts[a:r] + texts[r + 1 : b], kept_weights, texts[r], rest_weight)))
    return out


def _by_weight(
    bounds: npt.NDArray[np.intp],
    sums: npt.NDArray[Any],
    ties: npt.NDArray[Any] | None = None,
) -> npt.NDArray[np.intp]:
    """Rows (grouped by key, the groups starting at 0 and ``bounds``) ordered by (key,
    weight), ties in row order, or by ``ties`` (distinct non-negative integers) when given:
    ``np.lexsort((ties, sums, groups))``, done as one unstable sort of distinct numbers
    (group, weight or its rank among the weights, tie) where they fit in 63 bits (lexsort
    is several times slower)."""
    rows = len(sums)
    group = np.zeros(rows, dtype=np.int64)
    group[bounds] = 1
    np.cumsum(group, out=group)
    tie_bits = rows.bit_length() if ties is None else int(ties.max()).bit_length()
    room = 63 - tie_bits - len(bounds).bit_length()
    order: npt.NDArray[np.intp]
    if sums.dtype == np.uint64 and room > 0 and not int(sums.max()) >> room:
        weights = sums.astype(np.int64)
    elif rows.bit_length() <= room:  # weights as their dense ranks: fewer than ``rows``
        by_sum = np.argsort(sums)
        ordered = sums[by_sum]
        dense = np.zeros(rows, dtype=np.int64)
        np.cumsum(ordered[1:] != ordered[:-1], out=dense[1:])
        weights = np.empty(rows, dtype=np.int64)
        weights[by_sum] = dense
        room = rows.bit_length()
    else:
        order = np.lexsort((sums, group) if ties is None else (ties, sums, group))
        return order
    numbers = (group << (room + tie_bits)) | (weights << tie_bits)
    if ties is None:
        numbers |= np.arange(rows, dtype=np.int64)
    else:
        numbers |= ties.astype(np.int64)
    # distinct numbers ending in their tie: sorted, their low bits say whose they are
    numbers.sort()
    low = numbers & ((1 << tie_bits) - 1)
    if ties is None:
        order = low
        return order
    row_of = np.empty(int(ties.max()) + 1, dtype=np.intp)
    row_of[ties] = np.arange(rows, dtype=np.intp)
    order = row_of[low]
    return order


#: a packed (key, address) keeps the address in its low bits (IPv4 as ::ffff:a.b.c.d: 48)
_ADDRESS_BITS = 48
_ADDRESS_MASK = (1 << _ADDRESS_BITS) - 1


def _packed_with_rows(keys: I64, hi: U64, lo: U64) -> tuple[I64, int, int, int] | None:
    """Each row's (key, address, row) as one int64 ordered that way, the address counted
    from the column's lowest, when the three fit in 63 bits (a gateway's IPv4 talkers of an
    interval); with the row and address widths and that lowest address. None otherwise."""
    if not len(keys) or hi.any() or int(keys.min()) < 0:
        return None
    low = int(lo.min())
    address_bits = (int(lo.max()) - low).bit_length()
    row_bits = (len(keys) - 1).bit_length()
    if int(keys.max()).bit_length() + address_bits + row_bits > 63:
        return None
    numbers: I64 = keys << (address_bits + row_bits)
    numbers |= (lo - np.uint64(low)).astype(np.int64) << row_bits
    numbers |= np.arange(len(keys), dtype=np.int64)
    return numbers, row_bits, address_bits, low


def _packed(keys: I64, hi: U64, lo: U64) -> I64 | None:
    """Each row's (key, address) as one int64 ordered as (key, address), when it fits: no
    address past 48 bits (IPv4, as at most gateways) and fewer than 2**15 keys."""
    if not len(keys) or hi.any() or int(lo.max()) > _ADDRESS_MASK or int(keys.max()) >= 2**15:
        return None
    if int(keys.min()) < 0:
        return None
    packed: I64 = (keys << _ADDRESS_BITS) | lo.astype(np.int64)
    return packed


def _texts(hi: U64 | None, lo: U64, known: TextCache) -> list[str]:
    """Text of each address: from ``known``, else made once per distinct address (they
    repeat across keys) and kept there."""
    if not len(lo):
        return []
    values = lo.tolist() if hi is None else _values(hi, lo)
    found: list[str | None] = list(map(known.get, values))
    # (all: texts are never empty, and a truth test costs a third of ``None not in``, which
    # compares each text with None through both types' comparisons)
    if all(found):
        return found  # type: ignore[return-value]
    if not any(found):  # all new (every flow a new address): no picking out the misses
        if len(known) + len(found) > KNOWN_TEXTS:
            known.clear()
        made = _made_texts(hi, lo)
        known.update(zip(values, made, strict=True))
        return made
    missing = [i for i, text in enumerate(found) if text is None]
    if len(known) + len(missing) > KNOWN_TEXTS:
        known.clear()
    made = _made_texts(None if hi is None else hi[missing], lo[missing])
    for i, text in zip(missing, made, strict=True):
        found[i] = known[values[i]] = text
    return found  # type: ignore[return-value]


def _made_texts(hi: U64 | None, lo: U64) -> list[str]:
    """Text of each address, made once per distinct address."""
    if hi is None or not hi.any():
        distinct, inverse = np.unique(lo, return_inverse=True)
        made = address_texts(np.zeros(len(distinct), dtype=np.uint64), distinct)
    else:
        values = (hi.astype(object) << 64) | lo.astype(object)
        distinct, inverse = np.unique(values, return_inverse=True)
        made = [address_text(value >> 64, value & _LOW64) for value in distinct.tolist()]
    return [made[index] for index in inverse.tolist()]


def _values(hi: U64, lo: U64) -> list[int]:
    """Each row's 128-bit address value, as Python integers."""
    if hi.any():
        return [(h << 64) | low for h, low in zip(hi.tolist(), lo.tolist(), strict=True)]
    values: list[int] = lo.tolist()
    return values


def _settle_small(
    chunks: list[tuple[I64, U64, U64, U64, U64, npt.NDArray[Any]]],
    accums: list[Accum],
    texts: TextCache,
) -> None:
    """:meth:`TalkerBacklog.settle` of a small backlog, summed per (key, address) in dicts;
    hands every sketch the same items, weights and rest as :func:`_heaviest` does."""
    if not accums:
        return
    capacity = accums[0].capacity
    if len(texts) > KNOWN_TEXTS:
        texts.clear()
    for source in (True, False):
        per: dict[int, dict[int, int]] = {}
        for keys, src_hi, src_lo, dst_hi, dst_lo, sizes in chunks:
            values = _values(src_hi, src_lo) if source else _values(dst_hi, dst_lo)
            for code, value, weight in zip(keys.tolist(), values, sizes.tolist(), strict=True):
                mine = per.get(code)
                if mine is None:
                    per[code] = {value: weight}
                else:
                    mine[value] = mine.get(value, 0) + weight
        for code, mine in per.items():
            accum = accums[code]
            sketch = accum.sources if source else accum.destinations
            names = list(mine)
            weights = list(mine.values())
            if len(names) > capacity:
                # as _heaviest: a stable ascending sort by weight, reversed
                by_weight = sorted(range(len(weights)), key=weights.__getitem__)[::-1]
                kept = sorted(by_weight[:capacity])
                rest = names[by_weight[capacity]]
                kept_weights = [weights[i] for i in kept]
                rest_weight = sum(weights) - sum(kept_weights)
                names = [names[i] for i in kept]
                weights = kept_weights
            else:
                rest = None
            add = sketch.add
            for value, weight in zip(names, weights, strict=True):
                text = texts.get(value)
                if text is None:
                    text = texts[value] = address_text(value >> 64, value & _LOW64)
                add(text, weight)
            if rest is not None:
                text = texts.get(rest)
                if text is None:
                    text = texts[rest] = address_text(rest >> 64, rest & _LOW64)
                add(text, rest_weight)
