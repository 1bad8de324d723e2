"""The NetFlow v5 / v9 / IPFIX decoder: one datagram in, flow records out, state kept inside.

Holds the template cache, buffered template-less sets and per-exporter options (sampling);
time comes in as ``now`` so replay and live use behave the same.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from struct import Struct

from egressd.cache import BoundedCache
from egressd.columns import FlowColumns
from egressd.decode.netflow import fields as F
from egressd.decode.netflow.columnar import (
    HeldSet,
    held_columns,
    hold_set,
    set_columns,
    v5_columns,
)
from egressd.decode.netflow.pending import PendingSets
from egressd.decode.netflow.proven import ProvenExporters
from egressd.decode.netflow.stats import NetflowStats
from egressd.decode.netflow.templated import (
    ADDR_CACHE_SIZE,
    RESTART_SLACK_MS,
    AddressCache,
    DatagramContext,
    ExporterOptions,
    decode_data_set,
    parse_templates,
    read_options_set,
    sampler_cap,
)
from egressd.decode.netflow.templates import (
    FieldSpec,
    Layout,
    Template,
    TemplateCache,
    TemplateKey,
)
from egressd.decode.netflow.v5 import decode_v5
from egressd.errors import DecodeError
from egressd.model import FlowRecord

_V9_HEADER = Struct("!HHIIII")  # version count sysUptime unixSecs sequence sourceId
_IPFIX_HEADER = Struct("!HHIII")  # version length exportTime sequence observationDomainId
_SET_HEADER = Struct("!HH")
_MASK = 0xFFFFFFFF
#: an IPFIX sequence number (data records sent) below this, after one further above it,
#: means the exporter started counting again: it restarted
_SEQUENCE_RESTART = 10_000
_SEQUENCE_WRAP_GUARD = 2**32 - 2**24
#: a v9 sysUptime this close to 2**32 ms going back to near 0 is the counter wrapping
_WRAP_GUARD = 2**32 - 2 * RESTART_SLACK_MS
#: the most a record can take: a 65,535-byte message less the smallest header and a set header
MAX_RECORD_LEN = 65535 - 16 - 4
#: sets (and IPFIX messages) read at most per datagram, the rest skipped and counted: each
#: costs a few microseconds whatever its size, so a 64 kB datagram of 16,000 empty sets for
#: unknown templates took 74 ms of the decoder (385 times a 56 kB datagram of 1,400 flows).
#: Exporters send a set per template, a few per datagram.
MAX_SETS_PER_DATAGRAM = 256

#: template fields an exporter may have read per second when they are new or changed, and
#: at once: reading and compiling a template costs about 1.5 us a field, so before, one
#: exporter sending 64 kB datagrams of ever-changing templates cost ~50 ms of the decoder
#: each (150 data datagrams' worth) and starved every other exporter's data. A template
#: equal byte for byte to the one held is a refresh and costs nothing against this.
TEMPLATE_FIELDS_PER_SECOND = 4_096
TEMPLATE_FIELDS_BURST = 32_768
#: exporters whose template budget is remembered (one forgotten starts with a full one)
_BUDGET_EXPORTERS = 4_096
#: template fields all exporters together may have read per second and at once: a sender
#: forging ever-new source addresses got a full budget with each, so its changing templates
#: cost the decoder without bound. Exporters not proven (see ``proven.py``) may not take
#: this shared budget below :data:`SHARED_TEMPLATE_RESERVE`, which proven ones keep for
#: themselves. Each template counts :data:`TEMPLATE_COST_FIELDS` more than its fields
#: against it: reading one has a fixed cost of about that many fields.
SHARED_TEMPLATE_FIELDS_PER_SECOND = 32_768
SHARED_TEMPLATE_FIELDS_BURST = 131_072
SHARED_TEMPLATE_RESERVE = SHARED_TEMPLATE_FIELDS_BURST // 2
TEMPLATE_COST_FIELDS = 4

OptionsKey = tuple[str, int, int]


def _joined(parts: list[FlowColumns | HeldSet], exporter: str) -> FlowColumns:
    """One batch of ``parts`` in order, each run of held sets that join read at once."""
    batches: list[FlowColumns] = []
    run: list[HeldSet] = []
    for part in parts:
        if isinstance(part, HeldSet):
            if run and not run[0].joins(part):
                batches.append(held_columns(run))
                run = []
            run.append(part)
            continue
        if run:
            batches.append(held_columns(run))
            run = []
        batches.append(part)
    if run:
        batches.append(held_columns(run))
    if not batches:
        return FlowColumns.empty(exporter)
    return FlowColumns.concat(batches)


def template_problem(specs: tuple[FieldSpec, ...], scope_count: int) -> str:
    """Why a template can never give a record (a set error reason), or ``""``."""
    size = sum(1 if length == F.VARIABLE_LENGTH else length for _, length, _ in specs)
    if size == 0:
        return "empty_template"
    if size > MAX_RECORD_LEN:
        return "oversized_template"
    if scope_count < 0:
        for eid, length, pen in specs:
            address = F.ADDRESS_FIELDS.get(eid)
            if address is not None and not pen and length != address[1]:
                return "bad_address_template"
    return ""


class NetflowDecoder:
    """Decodes NetFlow v5, v9 and IPFIX datagrams from any number of exporters.

    ``decode`` raises :class:`DecodeError` only when nothing in the datagram is usable;
    damaged sets after usable ones are counted in ``stats.set_errors`` and skipped. Data
    sets whose template is unknown are buffered and decoded by the call that delivers it.
    ``decode_columns`` is the same decoding with the flows as one :class:`FlowColumns`.
    """

    __slots__ = (
        "_addr_cache",
        "_budgets",
        "_now",
        "_options",
        "_options_by_exporter",
        "_parts",
        "_pending",
        "_proven",
        "_sets_left",
        "_shared_budget",
        "_templates",
        "_unproven_domains",
        "stats",
    )

    def __init__(
        self,
        *,
        max_templates: int = 10_000,
        template_timeout: float = 3600.0,
        max_pending: int = 1_000,
        pending_timeout: float = 60.0,
    ) -> None:
        self.stats = NetflowStats()
        self._proven = ProvenExporters()
        proven = self._proven.held
        self._templates = TemplateCache(max_templates, template_timeout, self.stats, proven)
        self._pending = PendingSets(max_pending, pending_timeout, self.stats, proven)
        self._options: dict[OptionsKey, ExporterOptions] = {}
        #: each exporter's option domains, oldest first
        self._options_by_exporter: dict[str, dict[OptionsKey, None]] = {}
        #: the option domains of exporters not proven, oldest first
        self._unproven_domains: dict[OptionsKey, None] = {}
        self._addr_cache: AddressCache = BoundedCache(ADDR_CACHE_SIZE)
        #: exporter -> [template fields it may still have read, when that was worked out]
        self._budgets: BoundedCache[str, list[float]] = BoundedCache(_BUDGET_EXPORTERS)
        #: [template fields all exporters may still have read, when that was worked out]
        self._shared_budget = [float(SHARED_TEMPLATE_FIELDS_BURST), -math.inf]
        self._now = 0.0  # receive time of the datagram being decoded
        self._sets_left = 0  # sets (and IPFIX messages) the datagram being decoded may have
        #: while ``decode_columns`` runs: the flows so far, as column batches (or sets held
        #: to be read together) in order
        self._parts: list[FlowColumns | HeldSet] | None = None

    @property
    def proven_exporters(self) -> int:
        """Exporters proven (see ``proven.py``) and held."""
        return len(self._proven)

    def is_proven(self, exporter: str) -> bool:
        """Whether ``exporter`` is proven (see ``proven.py``)."""
        return exporter in self._proven.held

    def saved_proven(self) -> list[str]:
        """The proven exporters, for the state file (see :meth:`restore_proven`)."""
        return self._proven.saved()

    def restore_proven(self, exporters: object) -> int:
        """Hold the proven exporters a state file listed as proven (before any datagram is
        decoded: nothing they hold needs moving); how many were taken."""
        return self._proven.restore(exporters)

    def decode(self, datagram: bytes, exporter: str, now: float) -> list[FlowRecord]:
        """Flow records of one export datagram from ``exporter`` received at ``now``."""
        stats = self.stats
        stats.datagrams += 1
        self._now = now
        try:
            records = self._decode(bytes(datagram), exporter, now)
        except DecodeError as exc:
            stats.decode_errors[exc.reason] += 1
            raise
        finally:
            stats.template_count = len(self._templates)
            stats.pending_count = len(self._pending)
        stats.records += len(records)
        return records

    def decode_columns(self, datagram: bytes, exporter: str, now: float) -> FlowColumns:
        """:meth:`decode`, the flows as columns: ``decode_columns(d).to_records()`` equals
        ``FlowColumns.from_records(decode(d)).to_records()``, with the same counters.

        Data sets of fixed-length templates are read with numpy (see ``columnar.py``);
        the others go through the record path, in their place in the datagram.
        """
        parts: list[FlowColumns | HeldSet] = []
        self._decode_parts(datagram, exporter, now, parts)
        columns = _joined(parts, exporter)
        columns.exporter = exporter
        return columns

    def decode_columns_batch(
        self, datagrams: Iterable[tuple[bytes, str, float]]
    ) -> tuple[FlowColumns, list[tuple[int, Exception]]]:
        """The flows of many datagrams (``(bytes, exporter, now)`` each) as one batch, in
        order, and (index, exception) of each datagram that gave none because it raised.

        The same flows and counters as :meth:`decode_columns` of each in turn, but the
        sets of one template in consecutive datagrams are read with numpy together: the
        array operations are paid once per batch instead of once per datagram. An
        exception that is not a DecodeError (a decoder bug) loses only its datagram.
        """
        parts: list[FlowColumns | HeldSet] = []
        failed: list[tuple[int, Exception]] = []
        decode_parts = self._decode_parts
        for index, (datagram, exporter, now) in enumerate(datagrams):
            mark = len(parts)
            try:
                decode_parts(datagram, exporter, now, parts, False)
            except Exception as exc:  # counted by the caller, per datagram
                del parts[mark:]
                failed.append((index, exc))
        # What each datagram would have counted (a failed one left no parts): once per batch.
        self.stats.template_count = len(self._templates)
        self.stats.pending_count = len(self._pending)
        self._count_flows(parts, 0)
        return _joined(parts, ""), failed

    def _count_flows(self, parts: list[FlowColumns | HeldSet], mark: int) -> None:
        """Count the flows of ``parts[mark:]``."""
        self.stats.records += sum(
            part.n if isinstance(part, HeldSet) else len(part) for part in parts[mark:]
        )

    def _decode_parts(
        self,
        datagram: bytes,
        exporter: str,
        now: float,
        parts: list[FlowColumns | HeldSet],
        count: bool = True,
    ) -> None:
        """Append the flows of one datagram to ``parts``; the counters of :meth:`decode`
        (without ``count``, all but the table sizes and flows: a caller decoding many
        datagrams counts those once, after the last)."""
        stats = self.stats
        stats.datagrams += 1
        self._now = now
        mark = len(parts)
        try:
            buf = bytes(datagram)
            if len(buf) >= 2 and buf[0] == 0 and buf[1] == 5:
                columns = v5_columns(buf, exporter)
                parts.append(columns)
                if len(columns) and exporter not in self._proven.held:
                    self._saw_data(exporter, now)
            else:
                self._parts = parts
                records = self._decode(buf, exporter, now)
                if records:  # none unless the record path made them outside a walk
                    parts.append(FlowColumns.from_records(records))
        except DecodeError as exc:
            stats.decode_errors[exc.reason] += 1
            raise
        finally:
            self._parts = None
            if count:
                stats.template_count = len(self._templates)
                stats.pending_count = len(self._pending)
        if count:
            self._count_flows(parts, mark)

    def _flows(
        self,
        buf: bytes,
        start: int,
        end: int,
        layout: Layout,
        ctx: DatagramContext,
        out: list[FlowRecord],
    ) -> None:
        """The flows of one data set: as columns into ``_parts`` when numpy can read it
        (held, to be read with the sets of the same template after it; records decoded
        before it go there first, to keep the order), else records."""
        parts = self._parts
        if parts is not None:
            held = hold_set(buf, start, end, layout, ctx)
            columns = None if held is not None else set_columns(buf, start, end, layout, ctx)
            if held is not None or columns is not None:
                if out:
                    parts.append(FlowColumns.from_records(out))
                    out.clear()
                if held is not None:
                    parts.append(held)
                elif columns is not None and len(columns):
                    parts.append(columns)
                return
        decode_data_set(buf, start, end, layout, ctx, out)

    def _decode(self, buf: bytes, exporter: str, now: float) -> list[FlowRecord]:
        if len(buf) < 4:
            raise DecodeError("truncated_header", f"{len(buf)} bytes")
        version = (buf[0] << 8) | buf[1]
        if version == 5:
            records = decode_v5(buf, exporter, self._addr_cache)
            if records and exporter not in self._proven.held:
                self._saw_data(exporter, now)
            return records
        self._templates.sweep(now)
        self._pending.sweep(now)
        self._sets_left = MAX_SETS_PER_DATAGRAM
        if version == 9:
            if len(buf) < _V9_HEADER.size:
                raise DecodeError("truncated_header", f"{len(buf)} bytes")
            _, _, uptime, secs, sequence, domain = _V9_HEADER.unpack_from(buf)
            options = self._options.get((exporter, 9, domain)) or self._options_for(
                exporter, 9, domain
            )
            last = options.last_uptime
            if uptime >= last:
                options.last_uptime = uptime
                options.last_secs = secs
                options.last_sequence = sequence
            elif last - uptime > RESTART_SLACK_MS and secs + 60 >= options.last_secs:
                # sysUptime went back by more than reordering explains, in a datagram no
                # older than the last, and the packet sequence started again: a restart
                # (not the 32-bit uptime counter wrapping, nor a clock merely adjusted)
                if sequence < options.last_sequence and (
                    last < _WRAP_GUARD or uptime > RESTART_SLACK_MS
                ):
                    self._restarted(exporter, 9, domain, options, now)
                options.last_uptime = uptime
                options.last_secs = secs
                options.last_sequence = sequence
            ctx = DatagramContext(
                exporter, 9, domain, float(secs), uptime, options, self._addr_cache
            )
            return self._walk_sets(buf, _V9_HEADER.size, len(buf), ctx, now)
        if version == 10:
            return self._ipfix_messages(buf, exporter, now)
        raise DecodeError("bad_version", f"version {version}")

    def _ipfix_messages(self, buf: bytes, exporter: str, now: float) -> list[FlowRecord]:
        """Decode an IPFIX message and any whole messages concatenated after it."""
        if len(buf) < _IPFIX_HEADER.size:
            raise DecodeError("truncated_header", f"{len(buf)} bytes")
        out: list[FlowRecord] = []
        pos = 0
        while len(buf) - pos >= _IPFIX_HEADER.size:
            version, length, export_secs, sequence, domain = _IPFIX_HEADER.unpack_from(buf, pos)
            if pos and (version != 10 or length < _IPFIX_HEADER.size or pos + length > len(buf)):
                self.stats.set_errors["trailing_bytes"] += 1
                break  # what follows the first message is not a whole message: ignore it
            if length < _IPFIX_HEADER.size:
                raise DecodeError("bad_length", f"message length {length}")
            if length > len(buf):
                raise DecodeError("truncated_message", f"message length {length} > {len(buf)}")
            if self._sets_left <= 0:
                self.stats.set_errors["too_many_sets"] += 1
                break
            self._sets_left -= 1
            options = self._options_for(exporter, 10, domain)
            last = options.last_sequence
            if (
                sequence < _SEQUENCE_RESTART < last - _SEQUENCE_RESTART
                and last < _SEQUENCE_WRAP_GUARD
                and export_secs + 60 >= options.last_secs
            ):
                # The sequence (data records sent) started again from near zero.
                self._restarted(exporter, 10, domain, options, now)
                options.system_init_ms = None  # stale until announced again
            options.last_sequence = sequence
            options.last_secs = max(options.last_secs, export_secs)
            uptime_ms = None
            if options.system_init_ms is not None:
                uptime_ms = (export_secs * 1000 - options.system_init_ms) & _MASK
            ctx = DatagramContext(
                exporter, 10, domain, float(export_secs), uptime_ms, options, self._addr_cache
            )
            out += self._walk_sets(buf, pos + _IPFIX_HEADER.size, pos + length, ctx, now)
            pos += length
        return out

    def _restarted(
        self, exporter: str, version: int, domain: int, options: ExporterOptions, now: float
    ) -> None:
        """Templates not announced since the restart are suspect: drop them (their data
        waits for the announcement, as any data before its template does)."""
        self.stats.exporter_restarts += 1
        self._templates.drop_stale(exporter, version, domain, now)

    def _options_for(self, exporter: str, version: int, domain: int) -> ExporterOptions:
        key = (exporter, version, domain)
        options = self._options.get(key)
        if options is None:
            # Bounded like the templates (an options record needs a template to arrive), and
            # made room for as they are: an exporter holding at least its fair share drops its
            # own oldest domain, any other the oldest domain of an exporter not proven, else
            # the largest holder's. Dropping the oldest of all let one exporter opening
            # domains drop another's sampling rates; dropping the largest holder's let a
            # header from each of 10,000 forged addresses (one domain each) drop the first
            # holder's, a real exporter's, and cost a scan of every holder per header.
            holders = self._options_by_exporter
            unproven = self._unproven_domains
            while len(self._options) >= self._templates.max_templates:
                own = holders.get(exporter)
                if own is not None and len(own) * len(holders) >= len(self._options):
                    victim = next(iter(own))
                elif unproven:
                    victim = next(iter(unproven))
                else:
                    largest = max(holders.values(), key=len)
                    victim = next(iter(largest))
                victims = holders[victim[0]]
                del victims[victim]
                if not victims:
                    del holders[victim[0]]
                del self._options[victim]
                unproven.pop(victim, None)
                self.stats.option_domains_evicted += 1
            options = ExporterOptions(sampler_cap=sampler_cap(len(self._options)))
            self._options[key] = options
            holders.setdefault(exporter, {})[key] = None
            if exporter not in self._proven.held:
                unproven[key] = None
        return options

    def _saw_data(self, exporter: str, now: float) -> None:
        """Flows of ``exporter``, not proven yet, were decoded: it may be proven now,
        and its templates, buffered sets and options domains then make room last."""
        if self._proven.saw_data(exporter, now, self._templates.holds):
            self._templates.prove(exporter)
            self._pending.prove(exporter)
            for key in self._options_by_exporter.get(exporter, ()):
                self._unproven_domains.pop(key, None)

    def _walk_sets(
        self, buf: bytes, pos: int, end: int, ctx: DatagramContext, now: float
    ) -> list[FlowRecord]:
        ipfix = ctx.version == 10
        template_set, options_set = (2, 3) if ipfix else (0, 1)
        out: list[FlowRecord] = []
        usable = False
        error = ""
        decoded = False  # flows of a template held: what proves an exporter
        templates = self._templates
        sets_left = self._sets_left
        while end - pos >= 4:
            if not sets_left:
                if any(buf[pos:end]):  # (zero padding after the last set is no set)
                    error = "too_many_sets"
                break
            sets_left -= 1
            set_id, length = _SET_HEADER.unpack_from(buf, pos)
            if length < 4 or pos + length > end:
                if not any(buf[pos:end]):
                    break  # zero padding after the last set
                error = "bad_set_length" if length < 4 else "truncated_set"
                break
            start, pos = pos + 4, pos + length
            usable = True
            if set_id >= 256:
                key = (ctx.exporter, ctx.version, ctx.domain, set_id)
                template = templates.get(key, now)
                try:
                    if (
                        template is not None
                        and template.scope_count < 0
                        and template.layout.record_len
                    ):
                        decoded = True
                        parts = self._parts
                        if parts is None:
                            decode_data_set(buf, start, pos, template.layout, ctx, out)  # common
                        else:
                            # held for later (``_flows``'s first case, without its call)
                            held = hold_set(buf, start, pos, template.layout, ctx)
                            if held is None:
                                self._flows(buf, start, pos, template.layout, ctx, out)
                            else:
                                if out:
                                    parts.append(FlowColumns.from_records(out))
                                    out.clear()
                                parts.append(held)
                    else:
                        self._data_set(buf, start, pos, key, template, ctx, now, out)
                except DecodeError as exc:  # records before the damage are kept
                    self.stats.set_errors[exc.reason] += 1
            elif set_id in (template_set, options_set):
                self._template_set(buf, start, pos, ctx, now, out, set_id == options_set)
            else:
                self.stats.set_errors["reserved_set_id"] += 1
        self._sets_left = sets_left
        if decoded and ctx.exporter not in self._proven.held:
            self._saw_data(ctx.exporter, now)
        if error:
            self.stats.set_errors[error] += 1
            if not usable:
                raise DecodeError(error, f"first set at offset {pos} of {end}")
        if out and self._parts is not None:
            self._parts.append(FlowColumns.from_records(out))
            return []
        return out

    def _data_set(
        self,
        buf: bytes,
        start: int,
        end: int,
        key: TemplateKey,
        template: Template | None,
        ctx: DatagramContext,
        now: float,
        out: list[FlowRecord],
    ) -> None:
        if template is None:
            self._pending.add(key, buf[start:end], ctx, now)
            return
        self._decode_set(template, buf, start, end, ctx, out)

    def _decode_set(
        self,
        template: Template,
        buf: bytes,
        start: int,
        end: int,
        ctx: DatagramContext,
        out: list[FlowRecord],
    ) -> None:
        if template.layout.record_len == 0:
            self.stats.set_errors["empty_template"] += 1
        elif template.scope_count >= 0:
            self.stats.options_records += read_options_set(buf, start, end, template.layout, ctx)
            options = ctx.options
            if options.init_moved:  # a new system init time: the exporter restarted
                options.init_moved = False
                self._restarted(ctx.exporter, ctx.version, ctx.domain, options, self._now)
            if ctx.version == 10 and options.system_init_ms is not None:
                # the sets after this one in the message use the time base just announced
                ctx.uptime_ms = (int(ctx.export_time) * 1000 - options.system_init_ms) & _MASK
        else:
            self._flows(buf, start, end, template.layout, ctx, out)

    def _template_set(
        self,
        buf: bytes,
        start: int,
        end: int,
        ctx: DatagramContext,
        now: float,
        out: list[FlowRecord],
        options: bool,
    ) -> None:
        ipfix = ctx.version == 10
        cache = self._templates
        errors = self.stats.set_errors
        exporter, version, domain = ctx.exporter, ctx.version, ctx.domain
        held = cache.held

        def known(template_id: int) -> Template | None:
            template = held((exporter, version, domain, template_id))
            if template is None or (template.scope_count >= 0) != options:
                return None
            return template

        def afford(fields: int) -> bool:
            return self._afford(exporter, fields)

        empty = True
        try:
            for template_id, specs, scope_count, raw in parse_templates(
                buf, start, end, ipfix=ipfix, options=options, known=known, afford=afford
            ):
                empty = False
                if specs is None:
                    if template_id == (3 if options else 2):
                        cache.withdraw_all(exporter, version, domain, options)
                    else:
                        cache.withdraw((exporter, version, domain, template_id))
                    continue
                key = (exporter, version, domain, template_id)
                if raw:
                    template = held(key)
                    if template is not None and template.raw is raw:  # as held: a refresh
                        cache.refresh(key, template, now)
                        self.stats.templates += 1
                        continue
                if template_id < 256:
                    errors["bad_template_id"] += 1
                    continue
                problem = template_problem(specs, scope_count)
                if problem:
                    errors[problem] += 1
                    continue
                template = cache.put(key, specs, scope_count, now, raw)
                self.stats.templates += 1
                for pending in self._pending.take(key):
                    self.stats.pending_decoded += 1
                    body = pending.body
                    try:
                        self._decode_set(template, body, 0, len(body), pending.ctx, out)
                    except DecodeError as exc:
                        errors[exc.reason] += 1
        except ValueError as exc:
            errors[str(exc)] += 1
        else:
            if empty:
                errors["empty_template_set"] += 1

    def _afford(self, exporter: str, fields: int) -> bool:
        """Whether ``exporter`` may have a template of ``fields`` fields read now (its
        budget: :data:`TEMPLATE_FIELDS_PER_SECOND`, at most :data:`TEMPLATE_FIELDS_BURST`
        at once); if so, it is charged for them, and the shared budget too. Raises
        ValueError("shared_template_budget") when the shared budget cannot pay (for an
        exporter not proven: not without going below :data:`SHARED_TEMPLATE_RESERVE`)."""
        now = self._now
        budget = self._budgets.get(exporter)
        if budget is None:
            budget = self._budgets.store(exporter, [float(TEMPLATE_FIELDS_BURST), now])
        elif now > budget[1]:  # a clock going back refills nothing
            budget[0] = min(
                float(TEMPLATE_FIELDS_BURST),
                budget[0] + (now - budget[1]) * TEMPLATE_FIELDS_PER_SECOND,
            )
            budget[1] = now
        else:
            budget[1] = now
        if budget[0] < fields:
            return False
        shared = self._shared_budget
        if now > shared[1]:
            shared[0] = min(
                float(SHARED_TEMPLATE_FIELDS_BURST),
                shared[0] + (now - shared[1]) * SHARED_TEMPLATE_FIELDS_PER_SECOND,
            )
        # A clock going back refills nothing, and refills from then on: left at the later
        # time, an emptied budget stayed empty for as long as the clock had gone back.
        shared[1] = now
        cost = fields + TEMPLATE_COST_FIELDS
        floor = 0.0 if exporter in self._proven.held else SHARED_TEMPLATE_RESERVE
        if shared[0] - cost < floor:
            raise ValueError("shared_template_budget")
        shared[0] -= cost
        budget[0] -= fields
        return True
