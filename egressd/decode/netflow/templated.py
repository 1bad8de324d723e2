"""NetFlow v9 (RFC 3954) and IPFIX (RFC 7011) set decoding: template, options and data sets.

The two formats differ only in header, set ids, enterprise bits and variable-length fields;
everything after the header is walked by the functions here, with per-datagram context.
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import repeat
from operator import add
from socket import inet_ntoa
from struct import Struct
from typing import Any

from egressd.cache import BoundedCache
from egressd.decode.netflow import fields as F
from egressd.decode.netflow.templates import DEFAULTS, FieldSpec, Layout, Template
from egressd.errors import DecodeError
from egressd.model import FlowRecord

_U16 = Struct("!H")
_U16x2 = Struct("!HH")
_U16x3 = Struct("!HHH")
_U32 = Struct("!I")

_ZERO4 = b"\x00\x00\x00\x00"
_ZERO16 = b"\x00" * 16
_MAPPED = b"\x00" * 10 + b"\xff\xff"
#: addresses whose text a decoder remembers (per decoder, across its exporters)
ADDR_CACHE_SIZE = 65536
_HALF = 0x80000000
_WRAP = 0x100000000  # 2^32 ms: one sysUpTime counter wrap
_MASK = 0xFFFFFFFF
# Address text per raw address: 4- or 16-byte strings, or IPv4 addresses read as ints by
# the generated decoders (ints and bytes never compare equal, so one bounded cache holds both).
AddressCache = BoundedCache[bytes | int, str]
#: how far a boot time or sysUptime may move back (clock adjustment, reordering) before it
#: means the exporter restarted
RESTART_SLACK_MS = 60_000
_MAX_SAMPLERS = 256  # per exporter domain; sampler ids beyond this are not remembered
#: sampler ids remembered in all, shared out between the domains known when each opens
SAMPLER_BUDGET = 16_384
_MIN_SAMPLERS = 8


def sampler_cap(domains: int) -> int:
    """Sampler ids a domain opened while ``domains`` are known may remember: 256 while few
    are, at least 8, so thousands of domains hold about 100,000 in all, not 256 each."""
    return max(_MIN_SAMPLERS, min(_MAX_SAMPLERS, SAMPLER_BUDGET // max(1, domains)))


@dataclass(slots=True)
class ExporterOptions:
    """What options records told us about one exporter domain."""

    default_rate: int = 0  # 0 = unknown
    sampler_rates: dict[int, int] = field(default_factory=dict)
    system_init_ms: int | None = None  # epoch of IPFIX flowStart/EndSysUpTime
    #: an options record announced a system init time far from the one before (a restart)
    init_moved: bool = False
    # The latest header facts, to notice a restart (see NetflowDecoder): v9 sysUptime and
    # export seconds, IPFIX sequence number and export seconds.
    last_uptime: int = -1
    last_sequence: int = -1
    last_secs: int = 0
    #: sampler ids this domain may remember (see :func:`sampler_cap`)
    sampler_cap: int = _MAX_SAMPLERS


@dataclass(slots=True)
class DatagramContext:
    """Header facts every set of one datagram is decoded against."""

    exporter: str
    version: int
    domain: int
    export_time: float
    uptime_ms: int | None  # exporter uptime at export time, for *SysUpTime fields
    options: ExporterOptions
    addr_cache: AddressCache


def remember_address(raw: bytes, cache: AddressCache) -> str:
    """Text of address bytes not in ``cache`` yet, stored there; IPv4-mapped IPv6 as IPv4."""
    if len(raw) == 4:
        text = inet_ntoa(raw)
    elif raw[:12] == _MAPPED:
        text = inet_ntoa(raw[12:])
    else:
        text = socket.inet_ntop(socket.AF_INET6, raw)
    return cache.store(raw, text)


_OCTETS = tuple(str(i) for i in range(256))


def remember_v4(value: int, cache: AddressCache) -> str:
    """Dotted text of an IPv4 address read as an int, stored in ``cache`` under that int.

    Octet table lookups joined by one f-string beat ``inet_ntoa`` on the bytes; every fresh
    address of a new exporter comes through here once.
    """
    o = _OCTETS
    text = f"{o[value >> 24]}.{o[value >> 16 & 255]}.{o[value >> 8 & 255]}.{o[value & 255]}"
    return cache.store(value, text)


def uptime_bases(uptime_ms: int) -> tuple[int, int, int]:
    """Per-datagram constants for reading sysUpTime ms values ``t`` against the header's uptime.

    ``t - (below if t < cut else above)`` is the signed 32-bit difference ``t - uptime``
    (a ``t`` more than 2^31 ms away lies across a counter wrap): one comparison per record
    instead of the masked arithmetic, and the very same integer, so the same float time.
    """
    if uptime_ms < _HALF:
        return uptime_ms, uptime_ms + _HALF, uptime_ms + _WRAP
    return uptime_ms - _WRAP, uptime_ms - _HALF, uptime_ms


def _time(kind: int, value: int, ctx: DatagramContext) -> float:
    """Seconds since the epoch of one flow time element (the rarer kinds)."""
    if kind == F.TIME_MILLIS:
        return value / 1000.0
    if kind == F.TIME_SECONDS:
        return float(value)
    if kind == F.TIME_NTP:
        return (value >> 32) - F.NTP_UNIX_OFFSET + (value & _MASK) / 4294967296.0
    if kind == F.TIME_DELTA_US:
        return ctx.export_time - value / 1_000_000.0
    if kind == F.TIME_UPTIME_MS and ctx.uptime_ms is not None:
        below, cut, above = uptime_bases(ctx.uptime_ms)
        return ctx.export_time + (value - (below if value < cut else above)) / 1000.0
    return ctx.export_time


def _parse_frame(frame: bytes) -> tuple[bytes, bytes, int, int, int] | None:
    """Addresses, protocol and ports of a sampled Ethernet frame (IE 315), if it holds IP."""
    n = len(frame)
    if n < 14:
        return None
    ethertype = _U16.unpack_from(frame, 12)[0]
    pos = 14
    while ethertype in (0x8100, 0x88A8, 0x9100) and pos + 4 <= n:  # VLAN tags
        ethertype = _U16.unpack_from(frame, pos + 2)[0]
        pos += 4
    if ethertype in (0x8847, 0x8848):  # MPLS: pop labels, then guess the payload by nibble
        while pos + 4 <= n:
            bottom = frame[pos + 2] & 1
            pos += 4
            if bottom:
                break
        if pos >= n:
            return None
        ethertype = {4: 0x0800, 6: 0x86DD}.get(frame[pos] >> 4, 0)
    if ethertype == 0x0800:
        return _parse_ip(frame, pos, 4)
    if ethertype == 0x86DD:
        return _parse_ip(frame, pos, 6)
    return None


_IPV6_EXTENSIONS = frozenset({0, 43, 60})  # hop-by-hop, routing (SRv6 SRH), destination options


def _parse_ip(frame: bytes, pos: int, version: int) -> tuple[bytes, bytes, int, int, int] | None:
    """Innermost IP header of a sampled packet: tunnels (IP-in-IP, SRv6) hide the real flow."""
    n = len(frame)
    for _ in range(4):  # bounded decapsulation
        if version == 4:
            if pos + 20 > n:
                return None
            ihl = (frame[pos] & 0x0F) * 4
            proto = frame[pos + 9]
            src, dst = frame[pos + 12 : pos + 16], frame[pos + 16 : pos + 20]
            if _U16.unpack_from(frame, pos + 6)[0] & 0x1FFF:
                return src, dst, proto, 0, 0  # later fragment: no ports in it
            pos += max(ihl, 20)
        else:
            if pos + 40 > n:
                return None
            proto = frame[pos + 6]
            src, dst = frame[pos + 8 : pos + 24], frame[pos + 24 : pos + 40]
            pos += 40
            while proto in _IPV6_EXTENSIONS and pos + 8 <= n:
                proto, ext_len = frame[pos], frame[pos + 1]
                pos += (ext_len + 1) * 8
        if proto == 4 and pos < n and frame[pos] >> 4 == 4:
            version = 4
        elif proto == 41 and pos < n and frame[pos] >> 4 == 6:
            version = 6
        else:
            break
    if proto in (6, 17, 132) and pos + 4 <= n:
        sport, dport = _U16x2.unpack_from(frame, pos)
        return src, dst, proto, sport, dport
    return src, dst, proto, 0, 0


def _lying_length() -> DecodeError:
    return DecodeError("bad_variable_length", "a variable-length field overruns its set")


def _walk_rows(buf: bytes, pos: int, end: int, layout: Layout) -> Iterator[tuple[Any, ...]]:
    """Canonical rows of a variable-length (or odd-width) set, one field at a time.

    A record needs at least ``record_len`` bytes, so only a variable-length field can make
    one overrun its set: that field's length is a lie, and DecodeError ends the set.
    """
    walk = layout.walk
    minimum = max(layout.record_len, 1)
    while end - pos >= minimum:
        row: list[Any] = list(DEFAULTS)
        for length, slot in walk:
            if length == F.VARIABLE_LENGTH:
                if pos >= end:
                    raise _lying_length()
                length = buf[pos]
                pos += 1
                if length == 255:
                    if pos + 2 > end:
                        raise _lying_length()
                    length = _U16.unpack_from(buf, pos)[0]
                    pos += 2
            if pos + length > end:
                raise _lying_length()
            if slot >= 0 and length:
                raw = buf[pos : pos + length]
                if slot in F.INT_SLOTS:
                    if length <= 8:
                        row[slot] = int.from_bytes(raw)
                elif slot == F.FRAME or length in (4, 16):
                    row[slot] = raw
            pos += length
        yield tuple(row)


def _fix_odd(rows: Iterable[tuple[Any, ...]], odd: tuple[int, ...]) -> Iterator[tuple[Any, ...]]:
    """Turn reduced-size integers (3, 5, 6 or 7 bytes) read as bytes into ints."""
    for row in rows:
        values = list(row)
        for slot in odd:
            value = values[slot]
            if isinstance(value, bytes):
                values[slot] = int.from_bytes(value)
        yield tuple(values)


_SLOT_NAMES = {
    F.SRC4: "s4", F.SRC6: "s6", F.DST4: "d4", F.DST6: "d6", F.BYTES: "nbytes",
    F.PACKETS: "npackets", F.PROTO: "proto", F.SRC_PORT: "sport", F.DST_PORT: "dport",
    F.START: "t0", F.END: "t1", F.OWN_RATE: "own", F.SAMPLER_ID: "sid",
    F.FRAME: "frame", F.FRAME_SIZE: "fsize",
}  # fmt: skip


def _time_expr(kind: int, var: str) -> str:
    if kind == F.TIME_UPTIME_MS:
        return f"export_time + ({var} - (below if {var} < cut else above)) / 1000.0"
    if kind == F.TIME_MILLIS:
        return f"{var} / 1000.0"
    if kind == F.TIME_SECONDS:
        return f"float({var})"
    return f"_time({kind}, {var}, ctx)"


def _address_code(v4: bool, v6: bool, v4_name: str, v6_name: str) -> str:
    """Expression giving one address's text; ``or`` skips the miss call on a cache hit."""
    text4 = f"(get({v4_name}) or remember_v4({v4_name}, cache))"
    text6 = f"(get({v6_name}) or remember({v6_name}, cache))"
    if v4 and v6:
        return f"{text4} if {v4_name} else {text6}"  # 0.0.0.0 means "see the IPv6 field"
    return text4 if v4 else text6


_RECORD_FIELDS = tuple(f.name for f in dataclasses.fields(FlowRecord))
# Filling the slots of a bare instance is the constructor's whole work, as long as
# FlowRecord stays a plain slotted dataclass: every field set by __init__, nothing after it.
_FILL_SLOTS = (
    set(_RECORD_FIELDS) == set(FlowRecord.__slots__)
    and FlowRecord.__new__ is object.__new__
    and not hasattr(FlowRecord, "__post_init__")
)


def _record_code(layout: Layout, present: set[int], rated: bool) -> list[str]:
    """Loop body building one FlowRecord, everything inlined into its constructor call."""
    body: list[str] = []
    src = _address_code(F.SRC4 in present, F.SRC6 in present, "s4", "s6")
    dst = _address_code(F.DST4 in present, F.DST6 in present, "d4", "d6")
    if F.OWN_RATE in present and F.SAMPLER_ID in present:
        body.append("rate = own or sampler_rates.get(sid, 0) or default_rate")
    elif F.OWN_RATE in present:
        body.append("rate = own or default_rate")
    elif F.SAMPLER_ID in present:
        body.append("rate = sampler_rates.get(sid, 0) or default_rate")
    if F.START in present and F.END in present:
        start = _time_expr(layout.start_kind, "t0")
        end = _time_expr(layout.end_kind, "t1")
    elif F.END in present:
        body.append(f"time_end = {_time_expr(layout.end_kind, 't1')}")
        start = end = "time_end"
    elif F.START in present:
        body.append(f"time_start = {_time_expr(layout.start_kind, 't0')}")
        # Export time has whole seconds only: never end a flow before it starts.
        body.append("time_end = time_start if time_start > export_time else export_time")
        start, end = "time_start", "time_end"
    else:
        start = end = "export_time"

    def count(slot: int) -> str:
        if slot not in present:
            return repr(DEFAULTS[slot])
        return f"{_SLOT_NAMES[slot]} * rate" if rated else _SLOT_NAMES[slot]

    def plain(slot: int) -> str:
        return _SLOT_NAMES[slot] if slot in present else repr(DEFAULTS[slot])

    values = {
        "time_start": start, "time_end": end, "src": src, "dst": dst,
        "bytes": count(F.BYTES), "packets": count(F.PACKETS), "proto": plain(F.PROTO),
        "src_port": plain(F.SRC_PORT), "dst_port": plain(F.DST_PORT), "exporter": "exporter",
    }  # fmt: skip
    if _FILL_SLOTS:
        # Same object the constructor builds, without the call into its __init__.
        body.append("record = new(FlowRecord)")
        body += (f"record.{name} = {values[name]}" for name in _RECORD_FIELDS)
        body.append("append(record)")
    else:
        body.append(f"append(FlowRecord({', '.join(values[n] for n in _RECORD_FIELDS)}))")
    return body


def fixed_decoder_source(layout: Layout) -> str:
    """Source of a set decoder specialised to one fixed layout.

    Per-record work is then only what this template needs: no slot shuffling, no branches
    on absent fields, absent values folded into constants, sysUpTime arithmetic reduced to
    one comparison, and no multiplication at all for unsampled exporters. Built once per
    distinct layout. The function returns False, having done nothing, when the set needs
    what it does not handle (sysUpTime times without a known uptime).
    """
    assert layout.struct is not None
    present = set(layout.order)
    names = [_SLOT_NAMES[slot] for slot in layout.order]
    target = ", ".join(names) + ("," if len(names) == 1 else "")
    uses_uptime = (F.START in present and layout.start_kind == F.TIME_UPTIME_MS) or (
        F.END in present and layout.end_kind == F.TIME_UPTIME_MS
    )
    lines = [
        "def decode(chunk, ctx, out):",
        "    export_time = ctx.export_time",
        "    cache = ctx.addr_cache",
        "    get = cache.get",
        "    exporter = ctx.exporter",
        "    options = ctx.options",
        "    default_rate = options.default_rate or 1",
        "    sampler_rates = options.sampler_rates",
        "    append = out.append",
    ]
    if uses_uptime:
        lines += [
            "    if ctx.uptime_ms is None:",
            "        return False",
            "    below, cut, above = uptime_bases(ctx.uptime_ms)",
        ]
    loop = f"    for {target} in unpack(chunk):"
    if layout.per_record_rate:
        lines += [loop, *("        " + line for line in _record_code(layout, present, True))]
    else:
        lines += ["    if default_rate == 1:", "    " + loop]
        lines += ("            " + line for line in _record_code(layout, present, False))
        lines += ["        return True", "    rate = default_rate", loop]
        lines += ("        " + line for line in _record_code(layout, present, True))
    lines.append("    return True")
    return "\n".join(lines)


def _generate_fixed_decoder(layout: Layout) -> Any:
    assert layout.struct is not None
    namespace: dict[str, Any] = {
        "FlowRecord": FlowRecord,
        "new": object.__new__,
        "remember": remember_address,
        "remember_v4": remember_v4,
        "uptime_bases": uptime_bases,
        "unpack": Struct(layout.fast_format).iter_unpack,
        "_time": _time,
    }
    source = fixed_decoder_source(layout)
    exec(compile(source, f"<netflow layout {id(layout):x}>", "exec"), namespace)
    return namespace["decode"]


def decode_data_set(
    buf: bytes, pos: int, end: int, layout: Layout, ctx: DatagramContext, out: list[FlowRecord]
) -> int:
    """Append the flow records of one data set to ``out``; return how many were appended."""
    if layout.fixed and layout.has_address and not layout.has_frame and not layout.odd_slots:
        count = (end - pos) // layout.record_len
        if count == 0:
            return 0
        fast = layout.fast
        if fast is None:
            fast = layout.fast = _generate_fixed_decoder(layout)
        before = len(out)
        if fast(memoryview(buf)[pos : pos + count * layout.record_len], ctx, out):
            return len(out) - before
    return decode_data_set_generic(buf, pos, end, layout, ctx, out)


def decode_data_set_generic(
    buf: bytes, pos: int, end: int, layout: Layout, ctx: DatagramContext, out: list[FlowRecord]
) -> int:
    """``decode_data_set`` for any layout, without the generated per-layout code."""
    if not (layout.has_address or layout.has_frame) or layout.record_len == 0:
        return 0
    if layout.fixed:
        assert layout.struct is not None
        record_len = layout.record_len
        count = (end - pos) // record_len
        if count == 0:
            return 0
        it = layout.struct.iter_unpack(memoryview(buf)[pos : pos + count * record_len])
        tail = layout.tail
        rows: Iterable[tuple[Any, ...]] = map(
            layout.getter, map(add, it, repeat(tail)) if tail else it
        )
        if layout.odd_slots:
            rows = _fix_odd(rows, layout.odd_slots)
    else:
        rows = _walk_rows(buf, pos, end, layout)

    options = ctx.options
    default_rate = options.default_rate or 1
    sampler_rates = options.sampler_rates
    per_record_rate = layout.per_record_rate
    export_time = ctx.export_time
    uptime = ctx.uptime_ms
    up_kind = -1
    below = cut = above = 0
    if uptime is not None:
        up_kind = F.TIME_UPTIME_MS
        below, cut, above = uptime_bases(uptime)
    start_kind = layout.start_kind
    end_kind = layout.end_kind
    cache = ctx.addr_cache
    exporter = ctx.exporter
    zero4 = _ZERO4
    before = len(out)
    append = out.append
    rate = default_rate
    for (
        s4,
        s6,
        d4,
        d6,
        nbytes,
        npackets,
        proto,
        sport,
        dport,
        t0,
        t1,
        own,
        sid,
        frame,
        fsize,
    ) in rows:
        src = s4 if s4 is not None and (s6 is None or s4 != zero4) else s6
        dst = d4 if d4 is not None and (d6 is None or d4 != zero4) else d6
        if src is None or dst is None:
            if frame is None:
                continue
            parsed = _parse_frame(frame)
            if parsed is None:
                continue
            src, dst, proto, sport, dport = parsed
            if not nbytes:
                nbytes = fsize or len(frame)
            if not npackets:
                npackets = 1
        if per_record_rate:
            rate = own or (sampler_rates.get(sid, 0) if sid is not None else 0) or default_rate
        if t1 is None:
            time_end = export_time
        elif end_kind == up_kind:
            time_end = export_time + (t1 - (below if t1 < cut else above)) / 1000.0
        else:
            time_end = _time(end_kind, t1, ctx)
        if t0 is None:
            time_start = time_end
        else:
            if start_kind == up_kind:
                time_start = export_time + (t0 - (below if t0 < cut else above)) / 1000.0
            else:
                time_start = _time(start_kind, t0, ctx)
            if t1 is None and time_start > time_end:
                time_end = time_start  # export time has whole seconds only
        src_text = cache.get(src) or remember_address(src, cache)
        dst_text = cache.get(dst) or remember_address(dst, cache)
        append(
            FlowRecord(
                time_start,
                time_end,
                src_text,
                dst_text,
                nbytes * rate,
                npackets * rate,
                proto,
                sport,
                dport,
                exporter,
            )
        )
    return len(out) - before


def read_options_set(buf: bytes, pos: int, end: int, layout: Layout, ctx: DatagramContext) -> int:
    """Learn sampling rates and system init time from options data; return records read.

    Raises DecodeError as :func:`_walk_rows` does when a variable-length field overruns.
    """
    walk = layout.option_walk
    minimum = max(layout.record_len, 1)
    options = ctx.options
    count = 0
    while end - pos >= minimum:
        values: dict[int, int] = {}
        for length, eid in walk:
            if length == F.VARIABLE_LENGTH:
                if pos >= end:
                    raise _lying_length()
                length = buf[pos]
                pos += 1
                if length == 255:
                    if pos + 2 > end:
                        raise _lying_length()
                    length = _U16.unpack_from(buf, pos)[0]
                    pos += 2
            if pos + length > end:
                raise _lying_length()
            if eid >= 0 and 0 < length <= 8:
                values[eid] = int.from_bytes(buf[pos : pos + length])
            pos += length
        count += 1
        _apply_options(values, options)
    return count


def _apply_options(values: dict[int, int], options: ExporterOptions) -> None:
    rate = values.get(F.OPT_SAMPLING_INTERVAL) or values.get(F.OPT_SAMPLER_RANDOM_INTERVAL) or 0
    if not rate:
        taken = values.get(F.OPT_PACKET_INTERVAL)
        if taken:
            rate = (taken + values.get(F.OPT_PACKET_SPACE, 0)) // taken
        else:
            size = values.get(F.OPT_SAMPLING_SIZE)
            if size:
                rate = values.get(F.OPT_SAMPLING_POPULATION, 0) // size
    init = values.get(F.OPT_SYSTEM_INIT_MS)
    if init:
        old = options.system_init_ms
        if old is not None and abs(init - old) > RESTART_SLACK_MS:
            options.init_moved = True
        options.system_init_ms = init
    if not rate:
        return
    sampler = values.get(F.OPT_SAMPLER_ID, values.get(F.OPT_SELECTOR_ID))
    if sampler is None:
        options.default_rate = rate
    elif sampler in options.sampler_rates or len(options.sampler_rates) < options.sampler_cap:
        options.sampler_rates[sampler] = rate


def parse_templates(
    buf: bytes,
    pos: int,
    end: int,
    *,
    ipfix: bool,
    options: bool,
    known: Callable[[int], Template | None] | None = None,
    afford: Callable[[int], bool] | None = None,
) -> Iterator[tuple[int, tuple[FieldSpec, ...] | None, int, bytes]]:
    """Yield (template id, fields or None for a withdrawal, scope field count, the record's
    bytes) per record.

    ``known(template id)`` gives the template held for that id: a record equal to the one
    it was read from, byte for byte, is not read again (the held fields are yielded).
    ``afford(field count)`` is asked before the fields of any other record are read; when
    it says no, ValueError("template_budget") ends the set. Raises ValueError when a record
    overruns its set; records before it are still yielded.
    """
    while end - pos >= 4:
        if known is not None:
            template_id = _U16.unpack_from(buf, pos)[0]
            held = known(template_id)
            if held is not None:
                raw = held.raw
                if end - pos >= len(raw) and buf.startswith(raw, pos):
                    pos += len(raw)
                    yield template_id, held.fields, held.scope_count, raw
                    continue
        start = pos
        if options and not ipfix:
            if end - pos < 6:
                return
            template_id, scope_len, option_len = _U16x3.unpack_from(buf, pos)
            pos += 6
            if scope_len % 4 or option_len % 4:
                raise ValueError("bad_options_template")
            scope_count = scope_len // 4
            field_count = scope_count + option_len // 4
        else:
            template_id, field_count = _U16x2.unpack_from(buf, pos)
            pos += 4
            scope_count = -1
            if field_count == 0:
                if template_id == 0:
                    return  # zero padding up to the end of the set
                # IPFIX withdraws a template so; NetFlow v9 has no withdrawal
                yield template_id, None if ipfix else (), -1, b""
                continue
            if options:
                if end - pos < 2:
                    raise ValueError("truncated_template")
                scope_count = _U16.unpack_from(buf, pos)[0]
                pos += 2
                if scope_count == 0 or scope_count > field_count:
                    raise ValueError("bad_options_template")
        if template_id == 0 and field_count == 0:
            return  # zero padding up to the end of the set
        if field_count > F.MAX_TEMPLATE_FIELDS:
            raise ValueError("too_many_fields")  # before reading (and paying for) them
        if afford is not None and not afford(field_count):
            raise ValueError("template_budget")  # before reading (and paying for) them
        specs: list[FieldSpec] = []
        for _ in range(field_count):
            if end - pos < 4:
                raise ValueError("truncated_template")
            eid, length = _U16x2.unpack_from(buf, pos)
            pos += 4
            pen = 0
            if ipfix and eid & 0x8000:
                if end - pos < 4:
                    raise ValueError("truncated_template")
                pen = _U32.unpack_from(buf, pos)[0]
                pos += 4
                eid &= 0x7FFF
            specs.append((eid, length, pen))
        yield template_id, tuple(specs), scope_count if options else -1, buf[start:pos]
