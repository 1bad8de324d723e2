"""egressd's own JSON-lines flow format: the simplest way to feed or record flows by hand.

Sans-IO: decode_egressd_json reads one line (DecodeError when malformed); encode writes one.
"""

from __future__ import annotations

from orjson import dumps

from egressd.decode.common import (
    as_port,
    as_protocol,
    as_sampling_rate,
    as_time,
    load_object,
    required_address,
    sampled_counts,
)
from egressd.errors import DecodeError
from egressd.model import FlowRecord


def decode_egressd_json(line: bytes) -> FlowRecord:
    """One egressd JSON record as a FlowRecord.

    Required: ``time_end`` (epoch seconds or RFC 3339 text), ``src``, ``dst``, ``bytes``.
    Optional: ``time_start`` (default ``time_end``), ``packets`` (0), ``proto`` (0, number
    or name), ``src_port``/``dst_port`` (0), ``sampling_rate`` (1), ``exporter`` ("", any
    text: an exporter address, a topic or an interface name).
    """
    get = load_object(line).get
    end = as_time(get("time_end"))
    if end is None:
        raise DecodeError("missing_field", "time_end is absent")
    start = as_time(get("time_start"))
    src = required_address(get("src"), "src")
    dst = required_address(get("dst"), "dst")
    nbytes, packets = sampled_counts(
        get("bytes"), get("packets"), as_sampling_rate(get("sampling_rate")), "bytes", "packets"
    )
    exporter = get("exporter", "")
    if type(exporter) is not str:
        raise DecodeError("bad_address", "exporter must be text")
    return FlowRecord(
        end if start is None else start,
        end,
        src,
        dst,
        nbytes,
        packets,
        as_protocol(get("proto")),
        as_port(get("src_port"), "src_port"),
        as_port(get("dst_port"), "dst_port"),
        exporter,
    )


def encode_egressd_json(record: FlowRecord) -> bytes:
    """One line (without newline) that :func:`decode_egressd_json` reads back as ``record``.

    Counts are already sampled, so no ``sampling_rate`` is written.
    """
    return dumps(
        {
            "time_start": record.time_start,
            "time_end": record.time_end,
            "src": record.src,
            "dst": record.dst,
            "bytes": record.bytes,
            "packets": record.packets,
            "proto": record.proto,
            "src_port": record.src_port,
            "dst_port": record.dst_port,
            "exporter": record.exporter,
        }
    )
