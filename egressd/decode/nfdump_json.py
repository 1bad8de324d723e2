"""nfdump's JSON rendering of one flow (``nfdump -o json``): one object as a FlowRecord.

Sans-IO: :class:`NfdumpJsonSplitter` cuts nfdump's pretty-printed array into one text per
record without holding the array; :func:`load_record` parses one, :func:`decode_nfdump_object`
makes it a record.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from egressd.decode.common import (
    as_port,
    as_protocol,
    as_time,
    check_depth,
    check_epoch,
    optional_address,
    required_address,
    sampled_counts,
)
from egressd.errors import DecodeError
from egressd.model import FlowRecord

#: epoch seconds of UTC midnight by "YYYY-MM-DD" (flows of an archive share few days)
_DAYS: dict[str, float] = {}


def nfdump_time(value: object) -> float | None:
    """nfdump's ``2026-03-09T14:04:59.750`` (UTC under TZ=UTC) in epoch seconds.

    The fixed layout is read by position, the day looked up once: parsing each time in full
    was the largest cost of an nfdump replay. Anything else goes the general way.
    """
    if type(value) is str and len(value) == 23 and value[10] == "T" and value[19] == ".":
        day = _DAYS.get(value[:10])
        try:
            if day is None:
                if len(_DAYS) >= 4096:
                    _DAYS.clear()
                day = _DAYS[value[:10]] = (
                    datetime.fromisoformat(value[:10]).replace(tzinfo=UTC).timestamp()
                )
            hours, minutes, seconds = int(value[11:13]), int(value[14:16]), int(value[17:19])
            if hours < 24 and minutes < 60 and seconds < 61 and value[13] == value[16] == ":":
                return check_epoch(
                    day + hours * 3600 + minutes * 60 + seconds + int(value[20:23]) / 1000
                )
        except ValueError:
            pass  # not the layout after all: the general parser says what is wrong
    return as_time(value)


def decode_nfdump_object(obj: dict[str, Any]) -> FlowRecord | None:
    """One nfdump record as a FlowRecord; None for records that are not flows.

    nfdump prints ``first``/``last`` as local date-times without an offset: the reader runs it
    with ``TZ=UTC`` so they are UTC. Bytes and packets are stored already scaled by the
    sampling rate nfcapd knew, so no rate is applied here.
    """
    get = obj.get
    if get("type", "FLOW") != "FLOW":
        return None
    end = nfdump_time(get("last")) or nfdump_time(get("received"))
    if end is None:
        raise DecodeError("missing_field", "last is absent")
    start = nfdump_time(get("first"))
    src = get("src4_addr") or get("src6_addr")
    dst = get("dst4_addr") or get("dst6_addr")
    nbytes, packets = sampled_counts(
        get("in_bytes"), get("in_packets"), 1, "in_bytes", "in_packets"
    )
    return FlowRecord(
        end if start is None else start,
        end,
        required_address(src, "src4_addr/src6_addr"),
        required_address(dst, "dst4_addr/dst6_addr"),
        nbytes,
        packets,
        as_protocol(get("proto")),
        as_port(get("src_port"), "src_port"),
        as_port(get("dst_port"), "dst_port"),
        optional_address(get("ip4_router") or get("ip6_router")),
    )


class NfdumpJsonSplitter:
    """nfdump prints ``[``, then each record as ``{``, one field per line and ``}``.

    Feed it the output in pieces of any size; it returns the text of every record completed
    so far (one ``orjson.loads`` away from its object), so a month of flows never sits in
    memory as one array. A record closes at the first line that starts with ``}``: field lines
    start with a quoted name and never do.
    """

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, data: bytes) -> list[bytes]:
        parts = (self._tail + data).split(b"\n}")
        self._tail = parts.pop()
        records = []
        for part in parts:
            start = part.find(b"{")
            if start >= 0:
                records.append(part[start:] + b"}")
        return records


def load_record(text: bytes) -> dict[str, Any]:
    """One record's object; DecodeError when it is not a JSON object."""
    check_depth(text)
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise DecodeError("bad_json", str(exc)) from None
    if not isinstance(value, dict):
        raise DecodeError("not_object", "record is not an object")
    return value
