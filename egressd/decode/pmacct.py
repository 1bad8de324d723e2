"""pmacct JSON-line decoder, for the print and Kafka plugins of nfacctd/sfacctd/pmacctd.

Sans-IO: one line in, one FlowRecord out, None for purge markers; malformed lines raise DecodeError.
"""

from __future__ import annotations

from egressd.decode.common import (
    as_port,
    as_protocol,
    as_sampling_rate,
    as_time,
    load_object,
    optional_address,
    required_address,
    sampled_counts,
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
    get = load_object(line).get
    event = get("event_type")
    if event is not None and event != "purge":
        return None
    src = required_address(get("ip_src"), "ip_src")
    dst = required_address(get("ip_dst"), "ip_dst")
    nbytes, packets = sampled_counts(
        get("bytes"), get("packets"), as_sampling_rate(get("sampling_rate")), "bytes", "packets"
    )
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
        nbytes,
        packets,
        as_protocol(get("ip_proto")),
        as_port(get("port_src"), "port_src"),
        as_port(get("port_dst"), "port_dst"),
        optional_address(get("peer_ip_src")),
    )
