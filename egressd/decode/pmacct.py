"""pmacct JSON-line decoder, for the print and Kafka plugins of nfacctd/sfacctd/pmacctd.

Sans-IO: one line in, one FlowRecord out, None for purge markers; malformed lines raise DecodeError.
"""

from __future__ import annotations

from orjson import JSONDecodeError, loads

from egressd.decode.common import (
    as_count,
    as_port,
    as_protocol,
    as_sampling_rate,
    as_time,
    optional_address,
    required_address,
)
from egressd.errors import DecodeError
from egressd.model import FlowRecord


def decode_pmacct_json(line: bytes) -> FlowRecord | None:
    """One pmacct JSON record as a FlowRecord; None for lines that carry no flow.

    ``event_type`` other than ``"purge"`` (``purge_init``/``purge_close`` markers, BGP/BMP
    log and dump events) gives None. Times come from ``timestamp_end``/``timestamp_start``
    (text or epoch), else from ``stamp_inserted`` — the start of pmacct's history bucket,
    which is event time — and only as a last resort from ``stamp_updated``, which is the
    wall-clock time of the write and would misdate replayed or delayed data.
    """
    try:
        obj = loads(line)
    except JSONDecodeError as exc:
        raise DecodeError("bad_json", str(exc)[:120]) from exc
    if type(obj) is not dict:
        raise DecodeError("not_object", f"JSON {type(obj).__name__}, not an object")
    get = obj.get
    event = get("event_type")
    if event is not None and event != "purge":
        return None
    src = required_address(get("ip_src"), "ip_src")
    dst = required_address(get("ip_dst"), "ip_dst")
    raw_bytes = get("bytes")
    if raw_bytes is None:
        raise DecodeError("missing_field", "bytes is absent")
    rate = as_sampling_rate(get("sampling_rate"))
    raw_packets = get("packets")
    start = as_time(get("timestamp_start"))
    end = as_time(get("timestamp_end"))
    if end is None:
        end = start
        if end is None:
            end = as_time(get("timestamp_arrival"))
            if end is None:
                end = as_time(get("stamp_inserted"))
                if end is None:
                    end = as_time(get("stamp_updated"))
                    if end is None:
                        raise DecodeError("missing_field", "no timestamp or stamp field")
    return FlowRecord(
        end if start is None else start,
        end,
        src,
        dst,
        as_count(raw_bytes, "bytes") * rate,
        0 if raw_packets is None else as_count(raw_packets, "packets") * rate,
        as_protocol(get("ip_proto")),
        as_port(get("port_src"), "port_src"),
        as_port(get("port_dst"), "port_dst"),
        optional_address(get("peer_ip_src")),
    )
