"""Template cache for NetFlow v9 / IPFIX: templates compiled once into fast record layouts.

Keyed by (exporter, version, source id / observation domain, template id), bounded by a
count cap (oldest evicted) and an idle timeout; identical field lists share one layout.
"""

from __future__ import annotations

import struct
from collections.abc import Container
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final

from egressd.cache import BoundedCache
from egressd.decode.netflow import fields as F
from egressd.decode.netflow.stats import NetflowStats

# (exporter address, version, source id / observation domain, template id)
TemplateKey = tuple[str, int, int, int]
# (element id, length, private enterprise number or 0)
FieldSpec = tuple[int, int, int]

_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}

# Value a slot takes when the template does not carry it.
DEFAULTS: tuple[Any, ...] = (
    None,  # SRC4
    None,  # SRC6
    None,  # DST4
    None,  # DST6
    0,  # BYTES
    0,  # PACKETS
    0,  # PROTO
    0,  # SRC_PORT
    0,  # DST_PORT
    None,  # START
    None,  # END
    0,  # OWN_RATE
    None,  # SAMPLER_ID
    None,  # FRAME
    0,  # FRAME_SIZE
)
assert len(DEFAULTS) == F.SLOT_COUNT


@dataclass(slots=True)
class Layout:
    """How to pull FlowRecord slots out of records of one field list.

    Fixed-length layouts unpack whole sets with one precompiled ``struct.Struct`` whose
    output, extended by ``tail`` (defaults of absent slots), ``getter`` reorders into the
    canonical slot order. Variable-length layouts walk ``walk`` field by field.
    """

    fixed: bool
    record_len: int  # exact length when fixed, minimum length otherwise
    struct: struct.Struct | None
    getter: itemgetter[Any]
    tail: tuple[Any, ...]
    odd_slots: tuple[int, ...]  # int slots read as bytes (reduced-size encodings: 3, 5, 6, 7)
    walk: tuple[tuple[int, int], ...]  # (length or VARIABLE_LENGTH, slot or -1 to skip)
    start_kind: int
    end_kind: int
    per_record_rate: bool  # records carry their own sampling rate or sampler id
    has_address: bool
    has_frame: bool
    option_walk: tuple[tuple[int, int], ...]  # (length, element id or -1) for options data
    order: tuple[int, ...] = ()  # slot of each struct output, in struct order
    # ``struct`` with IPv4 addresses read as 32-bit ints: cheaper to hash as cache keys.
    fast_format: str = ""
    fast: Any = None  # generated per-layout set decoder (templated.py), built on first use
    #: numpy reading of whole sets (columnar.py), built on first use; False: records only
    columns: Any = None


@dataclass(slots=True)
class Template:
    """One template as received, with its compiled layout and when it was last refreshed."""

    template_id: int
    fields: tuple[FieldSpec, ...]
    scope_count: int  # leading scope fields of an options template; -1 for data templates
    layout: Layout
    seen: float
    #: the template record as received (a record equal to it is a refresh, not read again)
    raw: bytes = b""


def _offers_of() -> dict[int, tuple[tuple[int, int, int], ...]]:
    """Per element id of an integer or time field: the (slot, priority, time kind or -1)
    it offers, in the order :func:`_choose_slots` weighs them."""
    offers: dict[int, list[tuple[int, int, int]]] = {}
    for slot, ids in F.INT_FIELDS.items():
        for eid in dict.fromkeys(ids):
            offers.setdefault(eid, []).append((slot, ids.index(eid), -1))
    for slot, table in ((F.START, F.START_FIELDS), (F.END, F.END_FIELDS)):
        for priority, (eid, kind) in enumerate(table):
            offers.setdefault(eid, []).append((slot, priority, kind))
    return {eid: tuple(each) for eid, each in offers.items()}


#: looked up once per field: a template's fields are weighed in time linear in their number
#: (templates are attacker input; a loop over every slot table per field cost ~5 us a field)
_OFFERS: Final = _offers_of()


def _choose_slots(
    fields: tuple[FieldSpec, ...], interpretable: list[bool]
) -> tuple[dict[int, int], int, int]:
    """Pick, per slot, the index of the best field carrying it; also the time kinds."""
    best: dict[int, tuple[int, int]] = {}  # slot -> (priority, field index)
    start_kind = end_kind = 0

    def offer(slot: int, priority: int, index: int) -> None:
        if slot not in best or priority < best[slot][0]:
            best[slot] = (priority, index)

    kinds: dict[int, int] = {}
    for index, (eid, length, pen) in enumerate(fields):
        if pen or not interpretable[index] or length == 0:
            continue
        addr = F.ADDRESS_FIELDS.get(eid)
        if addr is not None:
            if addr[1] == length:
                offer(addr[0], 0, index)
            continue
        if eid == F.FRAME_SECTION:
            offer(F.FRAME, 0, index)
            continue
        if length > 8:
            continue
        for slot, priority, kind in _OFFERS.get(eid, ()):
            offer(slot, priority, index)
            if kind >= 0:
                kinds[index] = kind
    chosen = {slot: index for slot, (_, index) in best.items()}
    if F.START in chosen:
        start_kind = kinds[chosen[F.START]]
    if F.END in chosen:
        end_kind = kinds[chosen[F.END]]
    return chosen, start_kind, end_kind


def compile_layout(fields: tuple[FieldSpec, ...], scope_count: int, version: int) -> Layout:
    """Compile a field list once; the result serves every record of every set using it."""
    # NetFlow v9 scope fields use their own small type space (1 = system, 2 = interface...),
    # which collides with element ids, so they are never read as elements.
    interpretable = [
        not (version == 9 and scope_count > 0 and i < scope_count) for i in range(len(fields))
    ]
    slot_of_field: dict[int, int] = {}
    start_kind = end_kind = 0
    if scope_count < 0:  # options records describe the exporter, not flows: no slots
        by_slot, start_kind, end_kind = _choose_slots(fields, interpretable)
        slot_of_field = {index: slot for slot, index in by_slot.items()}

    fixed = all(length != F.VARIABLE_LENGTH for _, length, _ in fields)
    parts: list[str] = []
    fast_parts: list[str] = []
    skip = 0
    order: list[int] = []  # slot of each struct output, in struct order
    odd: list[int] = []
    walk: list[tuple[int, int]] = []
    option_walk: list[tuple[int, int]] = []
    record_len = 0
    for index, (eid, length, pen) in enumerate(fields):
        slot = slot_of_field.get(index, -1)
        walk.append((length, slot))
        wanted_option = pen == 0 and interpretable[index] and eid in F.OPTION_FIELDS
        option_walk.append((length, eid if wanted_option else -1))
        if length == F.VARIABLE_LENGTH:
            record_len += 1  # at least the one-byte length prefix
            continue
        record_len += length
        if slot < 0:
            skip += length
            continue
        if skip:
            parts.append(f"{skip}x")
            fast_parts.append(f"{skip}x")
            skip = 0
        if slot in F.INT_SLOTS:
            code = _INT_CODES.get(length)
            if code is None:
                code = f"{length}s"
                odd.append(slot)
        else:
            code = f"{length}s"
        parts.append(code)
        fast_parts.append("I" if slot in (F.SRC4, F.DST4) else code)
        order.append(slot)
    if skip:
        parts.append(f"{skip}x")
        fast_parts.append(f"{skip}x")

    present = set(slot_of_field.values())
    tail = tuple(DEFAULTS[slot] for slot in range(F.SLOT_COUNT) if slot not in present)
    if fixed:
        position = {slot: i for i, slot in enumerate(order)}
    else:
        position = {slot: slot for slot in present}  # walked rows are already canonical
    missing_at = len(order) if fixed else F.SLOT_COUNT
    indexes: list[int] = []
    for slot in range(F.SLOT_COUNT):
        if slot in position:
            indexes.append(position[slot])
        else:
            indexes.append(missing_at)
            missing_at += 1
    return Layout(
        fixed=fixed,
        record_len=record_len,
        struct=struct.Struct("!" + "".join(parts)) if fixed else None,
        getter=itemgetter(*indexes),
        tail=tail,
        odd_slots=tuple(odd),
        walk=tuple(walk),
        start_kind=start_kind,
        end_kind=end_kind,
        per_record_rate=F.OWN_RATE in present or F.SAMPLER_ID in present,
        has_address=bool(present & {F.SRC4, F.SRC6}) and bool(present & {F.DST4, F.DST6}),
        has_frame=F.FRAME in present,
        option_walk=tuple(option_walk),
        order=tuple(order),
        fast_format="!" + "".join(fast_parts),
    )


#: fields held per allowed template on average: the cache holds at most ``max_templates``
#: templates and ``max_templates * FIELDS_PER_TEMPLATE`` fields in all (about 70 MB at the
#: default 10,000), so large templates cannot multiply the count bound's memory
FIELDS_PER_TEMPLATE = 32
#: layouts of at most this many fields are shared between templates with the same fields
_SHARED_LAYOUT_FIELDS = 64


class TemplateCache:
    """Templates per exporter, bounded in count, in fields held and in age.

    Insertion order doubles as refresh order (a refresh re-inserts), so the oldest entry is
    always first: expiry sweeps pop from the front in O(removed). When full (count or
    fields), an exporter holding at least its fair share (of the count, or of the fields)
    makes room from its own templates; any other from the oldest template of an exporter
    not proven (``proven``: see :mod:`.proven`), else from the largest holder's. One exporter
    flooding templates, small or large, evicts its own, never another's; a flood from many
    forged addresses evicts its own templates, never a proven exporter's, in O(1) each.
    """

    __slots__ = (
        "_by_exporter",
        "_fields",
        "_fields_by_exporter",
        "_layouts",
        "_proven",
        "_templates",
        "_unproven",
        "max_fields",
        "max_templates",
        "stats",
        "timeout",
    )

    _LAYOUT_CACHE_MAX = 4096

    def __init__(
        self,
        max_templates: int,
        timeout: float,
        stats: NetflowStats,
        proven: Container[str] = frozenset(),
    ) -> None:
        self.max_templates = max(1, max_templates)
        self.max_fields = self.max_templates * FIELDS_PER_TEMPLATE
        self.timeout = timeout
        self.stats = stats
        self._templates: dict[TemplateKey, Template] = {}
        #: each exporter's keys, oldest first
        self._by_exporter: dict[str, dict[TemplateKey, None]] = {}
        #: fields held, in all and per exporter
        self._fields = 0
        self._fields_by_exporter: dict[str, int] = {}
        #: exporters proven, and the keys of the others' templates, oldest first
        self._proven = proven
        self._unproven: dict[TemplateKey, None] = {}
        self._layouts: BoundedCache[tuple[tuple[FieldSpec, ...], int, int], Layout] = BoundedCache(
            self._LAYOUT_CACHE_MAX
        )

    def __len__(self) -> int:
        return len(self._templates)

    @property
    def fields(self) -> int:
        """Fields of the templates held."""
        return self._fields

    def _remove(self, key: TemplateKey) -> Template:
        """Remove ``key`` from the cache and from its exporter's keys and field count."""
        template = self._templates.pop(key)
        self._unproven.pop(key, None)
        exporter = key[0]
        own = self._by_exporter.get(exporter)
        if own is not None:
            own.pop(key, None)
            if not own:
                del self._by_exporter[exporter]
        weight = _weight(template.fields)
        self._fields -= weight
        left = self._fields_by_exporter.get(exporter, 0) - weight
        if left > 0:
            self._fields_by_exporter[exporter] = left
        else:
            self._fields_by_exporter.pop(exporter, None)
        return template

    def _add(self, key: TemplateKey, template: Template) -> None:
        self._templates[key] = template
        self._by_exporter.setdefault(key[0], {})[key] = None
        if key[0] not in self._proven:
            self._unproven[key] = None
        weight = _weight(template.fields)
        self._fields += weight
        self._fields_by_exporter[key[0]] = self._fields_by_exporter.get(key[0], 0) + weight

    def held(self, key: TemplateKey) -> Template | None:
        """The template held for ``key``, expired or not (:meth:`sweep` runs first)."""
        return self._templates.get(key)

    def refresh(self, key: TemplateKey, template: Template, now: float) -> None:
        """``template``, held for ``key``, was announced again unchanged at ``now``."""
        template.seen = now
        templates = self._templates
        del templates[key]  # re-inserted: insertion order is refresh order
        templates[key] = template
        own = self._by_exporter[key[0]]
        del own[key]
        own[key] = None
        unproven = self._unproven
        if unproven and key[0] not in self._proven and unproven.pop(key, 0) is None:
            unproven[key] = None  # (a proven exporter forgotten since has none there)

    def holds(self, exporter: str) -> bool:
        """Whether any template of ``exporter`` is held."""
        return exporter in self._by_exporter

    def prove(self, exporter: str) -> None:
        """``exporter`` was proven: its templates are no longer evicted before others'."""
        unproven = self._unproven
        for key in self._by_exporter.get(exporter, ()):
            unproven.pop(key, None)

    def get(self, key: TemplateKey, now: float) -> Template | None:
        template = self._templates.get(key)
        if template is not None and now - template.seen > self.timeout:
            self._remove(key)
            self.stats.templates_expired += 1
            return None
        return template

    def put(
        self,
        key: TemplateKey,
        fields: tuple[FieldSpec, ...],
        scope_count: int,
        now: float,
        raw: bytes = b"",
    ) -> Template:
        """Store (or refresh) a template; compile its layout unless an identical one exists.
        ``raw`` is the record it was read from."""
        old = self._templates.get(key)
        if old is not None:
            self._remove(key)
            if old.fields == fields and old.scope_count == scope_count:
                old.seen = now
                old.raw = raw
                self._add(key, old)
                return old
        layout_key = (fields, scope_count, key[1])
        layout = self._layouts.get(layout_key)
        if layout is None:
            layout = compile_layout(fields, scope_count, key[1])
            if len(fields) <= _SHARED_LAYOUT_FIELDS:
                # Rebuilt on demand past the bound; only a burst of odd templates gets there.
                self._layouts.store(layout_key, layout)
        weight = _weight(fields)
        while self._templates and (
            len(self._templates) >= self.max_templates or self._fields + weight > self.max_fields
        ):
            self._evict_for(key[0], len(self._templates) >= self.max_templates)
        template = Template(key[3], fields, scope_count, layout, now, raw)
        self._add(key, template)
        return template

    def _evict_for(self, exporter: str, by_count: bool) -> None:
        """Make room for one of ``exporter``'s templates (see the class docstring): by the
        count share when the count is at its bound, else by the share of fields."""
        holders = self._by_exporter
        own = holders.get(exporter)
        weights = self._fields_by_exporter
        if by_count:
            at_share = own is not None and len(own) * len(holders) >= len(self._templates)
        else:
            at_share = own is not None and weights.get(exporter, 0) * len(holders) >= self._fields
        if at_share and own is not None:
            victim = next(iter(own))
        elif self._unproven:
            # (before, the largest holder's: with thousands of forged addresses holding one
            # each, a scan of them all per template, and the first holder, a real exporter)
            victim = next(iter(self._unproven))
        elif by_count:
            largest = max(holders.values(), key=len)
            victim = next(iter(largest))
        else:
            victim = next(iter(holders[max(weights, key=weights.__getitem__)]))
        self._remove(victim)
        self.stats.templates_evicted += 1

    def withdraw(self, key: TemplateKey) -> None:
        if key in self._templates:
            self._remove(key)
            self.stats.templates_withdrawn += 1

    def withdraw_all(self, exporter: str, version: int, domain: int, options: bool) -> None:
        """IPFIX "all (options) templates withdrawn" for one observation domain."""
        doomed = [
            k
            for k in self._by_exporter.get(exporter, ())
            if k[1] == version
            and k[2] == domain
            and (self._templates[k].scope_count >= 0) == options
        ]
        for key in doomed:
            self._remove(key)
        self.stats.templates_withdrawn += len(doomed)

    def drop_stale(self, exporter: str, version: int, domain: int, now: float) -> None:
        """An exporter domain restarted: its templates not announced since ``now`` are
        suspect (template ids may mean other layouts now) until announced again."""
        doomed = [
            k
            for k in self._by_exporter.get(exporter, ())
            if k[1] == version and k[2] == domain and self._templates[k].seen < now
        ]
        for key in doomed:
            self._remove(key)
        self.stats.templates_restart += len(doomed)

    def sweep(self, now: float) -> None:
        """Drop templates idle for longer than the timeout, oldest first."""
        templates = self._templates
        while templates:
            key = next(iter(templates))
            if now - templates[key].seen <= self.timeout:
                break
            self._remove(key)
            self.stats.templates_expired += 1


def _weight(fields: tuple[FieldSpec, ...]) -> int:
    """What a template counts against the field bound: its fields, at least one."""
    return max(1, len(fields))
