"""nfdump's JSON rendering of one flow (``nfdump -o json``): one object as a FlowRecord.

Sans-IO: :func:`decode_nfdump_object` reads one parsed object; :class:`NfdumpJsonSplitter`
cuts nfdump's pretty-printed array into one object per record without holding the array.
"""

from __future__ import annotations

from typing import Any

import orjson

from egressd.decode.common import (
    as_port,
    as_protocol,
    as_time,
    optional_address,
    required_address,
    sampled_counts,
)
from egressd.errors import DecodeError
from egressd.model import FlowRecord


def decode_nfdump_object(obj: dict[str, Any]) -> FlowRecord | None:
    """One nfdump record as a FlowRecord; None for records that are not flows.

    nfdump prints ``first``/``last`` as local date-times without an offset: the reader runs it
    with ``TZ=UTC`` so they are UTC. Bytes and packets are stored already scaled by the
    sampling rate nfcapd knew, so no rate is applied here.
    """
    get = obj.get
    if get("type", "FLOW") != "FLOW":
        return None
    end = as_time(get("last")) or as_time(get("received"))
    if end is None:
        raise DecodeError("missing_field", "last is absent")
    start = as_time(get("first"))
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
    """nfdump prints ``[`` then each record as a ``{`` line, field lines and a ``}`` line.

    Feed it lines; it returns each record's object once its closing line arrives, so a
    month of flows never sits in memory as one array.
    """

    __slots__ = ("_lines",)

    def __init__(self) -> None:
        self._lines: list[bytes] | None = None

    def feed(self, line: bytes) -> dict[str, Any] | None:
        """The object a line completes, else None; raises DecodeError for a bad object."""
        text = line.strip()
        if self._lines is None:
            if text.endswith(b"{"):
                self._lines = [b"{"]
            return None
        if text.startswith(b"}"):
            lines, self._lines = self._lines, None
            lines.append(b"}")
            try:
                value = orjson.loads(b"".join(lines))
            except orjson.JSONDecodeError as exc:
                raise DecodeError("bad_json", str(exc)) from None
            if not isinstance(value, dict):
                raise DecodeError("not_object", "record is not an object")
            return value
        self._lines.append(text)
        return None
