"""Records that flow through egressd's core: plain, slotted, no I/O.

A :class:`FlowRecord` is one unidirectional flow as any source reports it, after the
decoder has applied the sampling rate. Every decoder yields these and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class FlowRecord:
    """One unidirectional flow.

    Addresses are text (IPv4 dotted quad or IPv6 as written by the source; IPv4-mapped
    IPv6 is given as plain IPv4 by the decoders). Times are event time in seconds since
    the Unix epoch (UTC). ``bytes`` and ``packets`` are already multiplied by the
    sampling rate. ``exporter`` names where the record came from (exporter address,
    Kafka topic, capture interface) and may be empty.
    """

    time_start: float
    time_end: float
    src: str
    dst: str
    bytes: int
    packets: int
    proto: int = 0
    src_port: int = 0
    dst_port: int = 0
    exporter: str = ""
