"""Checked conversions shared by the JSON-line and protobuf flow decoders.

Each helper turns one loosely typed field into what a FlowRecord holds, or raises DecodeError.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton
from typing import Any, Final

import msgspec
from orjson import JSONDecodeError, loads

from egressd.cache import BoundedCache
from egressd.errors import DecodeError

#: reasons a JSON line or protobuf message can fail with; metrics label them, so keep it fixed
REASONS: Final = (
    "bad_json",
    "not_object",
    "missing_field",
    "bad_address",
    "bad_number",
    "bad_time",
    "bad_protobuf",
    "too_deep",
)

#: a JSON line with more opening brackets than this is checked for its nesting depth first
_BRACKETS_CHECKED: Final = 256

#: event times outside [epoch, year 10000) cannot be formatted as RFC 3339 downstream
MAX_EPOCH: Final = 253402300800.0

#: caches are memos of pure functions; clearing them changes speed, never results
CACHE_LIMIT: Final = 200_000

#: counters are unsigned 64-bit in every flow protocol; JSON floats beyond that are garbage
_COUNT_LIMIT: Final = 2**64

_MAPPED_PREFIX: Final = b"\x00" * 10 + b"\xff\xff"

# Names as goflow2 (upper case) and pmacct (lower case) print them, plus common IANA names,
# so a record's protocol resolves with one dict lookup on the hot path.
_PROTOCOL_NAMES: Final = {
    "hopopt": 0,
    "icmp": 1,
    "igmp": 2,
    "ggp": 3,
    "ipencap": 4,
    "ipip": 4,
    "tcp": 6,
    "egp": 8,
    "igp": 9,
    "udp": 17,
    "mux": 18,
    "ipv6": 41,
    "ipv6-route": 43,
    "ipv6-frag": 44,
    "rsvp": 46,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "mobile": 55,
    "tlsp": 56,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "ipv6-nonxt": 59,
    "ipv6-opts": 60,
    "iso-ip": 80,
    "vines": 83,
    "eigrp": 88,
    "ospf": 89,
    "larp": 91,
    "ax.25": 93,
    "encap": 98,
    "pnni": 102,
    "pim": 103,
    "ipcomp": 108,
    "ipx-in-ip": 111,
    "vrrp": 112,
    "l2tp": 115,
    "isis": 124,
    "sctp": 132,
    "fc": 133,
    "udplite": 136,
    # goflow2 renders a protocol it has no name for as "" and some tools write "unknown"
    "": 0,
    "unknown": 0,
}


def _protocol_table() -> dict[object, int]:
    table: dict[object, int] = {}
    for name, number in _PROTOCOL_NAMES.items():
        table[name] = number
        table[name.upper()] = number
    table.update({"ICMPv6": 58, "IPcomp": 108})
    for number in range(256):
        table[number] = number
        table[str(number)] = number
    return table


#: protocol name, number or numeric string → protocol number, in one lookup
PROTOCOLS: Final[dict[object, int]] = _protocol_table()

#: ports as JSON numbers → themselves; a failed lookup means "not a valid port"
PORTS: Final[dict[object, int]] = {port: port for port in range(65536)}

#: address text as sources write it → the text a FlowRecord carries
ADDRESS_CACHE: BoundedCache[str, str] = BoundedCache(CACHE_LIMIT)

#: address text as sources write it → its 128-bit column value as 16 bytes, big-endian (IPv4
#: as ``::ffff:a.b.c.d``): the columnar decoders join these and read them as two uint64 halves
PACKED_CACHE: BoundedCache[str, bytes] = BoundedCache(CACHE_LIMIT)

#: time text as sources write it → seconds since the epoch
TIME_CACHE: BoundedCache[str, float] = BoundedCache(CACHE_LIMIT)


def normalize_address(value: object) -> str:
    """Canonical text of an IPv4/IPv6 address; IPv4-mapped IPv6 becomes plain IPv4.

    Results are memoised in :data:`ADDRESS_CACHE` (flows repeat the same few thousand
    addresses), so the checked parse runs once per distinct string.
    """
    if type(value) is not str:
        raise DecodeError("bad_address", f"address must be a string, not {type(value).__name__}")
    cached = ADDRESS_CACHE.get(value)
    if cached is not None:
        return cached
    try:
        if ":" in value:
            packed = inet_pton(AF_INET6, value)
            text = (
                inet_ntop(AF_INET, packed[12:])
                if packed.startswith(_MAPPED_PREFIX)
                else inet_ntop(AF_INET6, packed)
            )
        else:
            text = inet_ntop(AF_INET, inet_pton(AF_INET, value))
    except (OSError, ValueError) as exc:
        raise DecodeError("bad_address", f"not an IP address: {value[:64]!r}") from exc
    return ADDRESS_CACHE.store(value, text)


def packed_address(value: object) -> bytes:
    """The column value of an address as 16 bytes (IPv4 mapped into IPv6), memoised.

    Accepts exactly what :func:`normalize_address` accepts, with the same errors, and
    ``address_text`` of the result is its canonical text.
    """
    if type(value) is not str:
        raise DecodeError("bad_address", f"address must be a string, not {type(value).__name__}")
    cached = PACKED_CACHE.get(value)
    if cached is not None:
        return cached
    try:
        if ":" in value:
            packed = inet_pton(AF_INET6, value)
        else:
            packed = _MAPPED_PREFIX + inet_pton(AF_INET, value)
    except (OSError, ValueError) as exc:
        raise DecodeError("bad_address", f"not an IP address: {value[:64]!r}") from exc
    return PACKED_CACHE.store(value, packed)


def format_packed_address(packed: bytes) -> str:
    """Text of a 4- or 16-byte packed address; IPv4-mapped IPv6 becomes plain IPv4."""
    size = len(packed)
    if size == 4:
        return inet_ntop(AF_INET, packed)
    if size == 16:
        if packed.startswith(_MAPPED_PREFIX):
            return inet_ntop(AF_INET, packed[12:])
        return inet_ntop(AF_INET6, packed)
    raise DecodeError("bad_address", f"packed address of {size} bytes")


def required_address(value: object, name: str) -> str:
    """A source or destination address: absent or empty is ``missing_field``."""
    if value is None or value == "":
        raise DecodeError("missing_field", f"{name} is absent")
    return normalize_address(value)


def optional_address(value: object) -> str:
    """An exporter address: absent, null or empty gives ``""``."""
    if not value:
        return ""
    return normalize_address(value)


def as_count(value: object, name: str) -> int:
    """A count (bytes, packets, rate) below 2**64; integral floats and digit strings too."""
    # JSON true/false count as 1/0, as they do in the goflow2 fast path's integer arithmetic
    if isinstance(value, int):
        if 0 <= value < _COUNT_LIMIT:
            return int(value)
    elif type(value) is float:
        if 0 <= value < _COUNT_LIMIT and value.is_integer():
            return int(value)
    elif type(value) is str and value.isdecimal() and value.isascii() and len(value) < 21:
        return int(value)
    raise DecodeError("bad_number", f"{name} is not a non-negative integer: {str(value)[:32]!r}")


def check_depth(blob: bytes) -> None:
    """DecodeError ``too_deep`` when ``blob`` nests arrays or objects deeper than Python's
    recursion limit (1,000 by default).

    orjson before 3.9.15 (CVE-2024-27454) has no depth limit: a few hundred kilobytes of
    ``[`` overflow the native stack and kill the process (SIGSEGV), so one Kafka message
    would stop the daemon at every start. msgspec stops at the recursion limit; it parses
    only lines with more than :data:`_BRACKETS_CHECKED` brackets, which flows never have.
    """
    if len(blob) > _BRACKETS_CHECKED and blob.count(b"[") + blob.count(b"{") > _BRACKETS_CHECKED:
        try:
            msgspec.json.decode(blob)
        except RecursionError:
            raise DecodeError("too_deep", "arrays or objects nested too deep") from None
        except msgspec.DecodeError:
            pass  # not JSON: orjson names the problem


class _Skipped(msgspec.Struct):
    """A JSON object whose every field is skipped (nothing is built)."""


_OBJECT_START: Final = re.compile(rb"[ \t\r\n]*\{")


def check_object_depth(blob: bytes) -> None:
    """For a whole file that must hold one JSON object (a state file, a snapshot, a region
    map): DecodeError ``not_object`` when it does not start with one, ``too_deep`` when it
    nests deeper than Python's recursion limit, before orjson (which crashes on that before
    3.9.15) parses it. Skipping the object costs about a hundredth of parsing it; a
    malformed one passes, for orjson to name the problem."""
    if _OBJECT_START.match(blob) is None:
        raise DecodeError("not_object", "the JSON does not hold an object")
    try:
        msgspec.json.decode(blob, type=_Skipped)
    except RecursionError:
        raise DecodeError("too_deep", "arrays or objects nested too deep") from None
    except msgspec.DecodeError:
        pass


def load_object(line: bytes) -> dict[str, Any]:
    """One JSON line that must hold an object."""
    check_depth(line)
    try:
        obj = loads(line)
    except JSONDecodeError as exc:
        raise DecodeError("bad_json", str(exc)[:120]) from exc
    if type(obj) is not dict:
        raise DecodeError("not_object", f"JSON {type(obj).__name__}, not an object")
    return obj


def sampled_counts(
    raw_bytes: object, raw_packets: object, rate: int, bytes_name: str, packets_name: str
) -> tuple[int, int]:
    """Bytes (required) and packets (absent: 0), each multiplied by the sampling ``rate``."""
    if raw_bytes is None:
        raise DecodeError("missing_field", f"{bytes_name} is absent")
    packets = 0 if raw_packets is None else as_count(raw_packets, packets_name) * rate
    return as_count(raw_bytes, bytes_name) * rate, packets


def as_sampling_rate(value: object) -> int:
    """Sampling rate as a multiplier; absent, null, 0 or "" (exporters' "unknown") mean 1."""
    if not value:
        return 1
    return as_count(value, "sampling_rate") or 1


def as_port(value: object, name: str) -> int:
    """A transport port; absent means 0."""
    if value is None:
        return 0
    try:
        return PORTS[value]
    except (KeyError, TypeError):
        pass
    if type(value) is str:
        try:
            return PORTS[int(value)]
        except (KeyError, ValueError):
            pass
    raise DecodeError("bad_number", f"{name} is not a port: {str(value)[:32]!r}")


def as_protocol(value: object) -> int:
    """IP protocol number from a number, numeric string or name (any case); absent means 0.

    A name outside the table gives 0 ("unknown") rather than an error: the protocol only
    annotates a flow, and tools differ in the names they print.
    """
    if value is None:
        return 0
    try:
        return PROTOCOLS[value]
    except (KeyError, TypeError):
        pass
    if type(value) is str:
        if value.isdecimal():
            raise DecodeError("bad_number", f"protocol out of range: {value[:32]!r}")
        return PROTOCOLS.get(value.lower(), 0)
    raise DecodeError("bad_number", f"protocol is not a number or name: {str(value)[:32]!r}")


def check_epoch(seconds: float) -> float:
    """``seconds`` if it is a finite event time between the epoch and year 10000."""
    if 0.0 <= seconds < MAX_EPOCH:
        return seconds
    raise DecodeError("bad_time", f"time out of range: {seconds!r}")


def parse_time_text(text: str) -> float:
    """Seconds since the epoch from epoch text (``"1501508283.209"``) or a date-time.

    Date-times may use ``T`` or a space, fractions and an offset or ``Z``; without an
    offset they are UTC. Memoised in :data:`TIME_CACHE`: flows share their timestamps.
    """
    cached = TIME_CACHE.get(text)
    if cached is not None:
        return cached
    if len(text) > 64:
        raise DecodeError("bad_time", "time text too long")
    if text.startswith("0000-00-00"):
        # pmacct's rendering of a zero timestamp, e.g. timestamp_end from pmacctd
        return 0.0
    try:
        seconds = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text)
        except ValueError as exc:
            raise DecodeError("bad_time", f"not a time: {text!r}") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        try:
            seconds = moment.timestamp()
        except (OverflowError, ValueError) as exc:
            raise DecodeError("bad_time", f"not a time: {text!r}") from exc
    check_epoch(seconds)
    return TIME_CACHE.store(text, seconds)


def as_time(value: object, divisor: float = 1.0) -> float | None:
    """Event time in seconds from a number of ``1/divisor`` seconds, or from text.

    Returns None when absent, zero (exporters write 0 for "not known") or otherwise empty,
    so callers can fall back to the next candidate field.
    """
    if not value:
        return None
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise DecodeError("bad_time", "time is not finite")
        return check_epoch(value / divisor)
    if type(value) is str:
        if divisor != 1.0 and _is_number_text(value):
            # numeric text is in the field's own unit; date-time text is absolute
            seconds = check_epoch(float(value) / divisor)
        else:
            seconds = parse_time_text(value)
        return seconds or None
    raise DecodeError("bad_time", f"time is not a number or text: {type(value).__name__}")


def _is_number_text(text: str) -> bool:
    return text.isascii() and text[:1].isdigit() and text.replace(".", "", 1).isdigit()
