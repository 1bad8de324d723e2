"""NetFlow v5 datagrams: a fixed header and fixed 48-byte records, sampling in the header.

Stateless; the whole datagram is rejected when its record count does not fit its length.
"""

from __future__ import annotations

from struct import Struct

from egressd.decode.netflow.templated import AddressCache, remember_address, uptime_bases
from egressd.errors import DecodeError
from egressd.model import FlowRecord

HEADER = Struct("!HHIIIIBBH")
# srcaddr dstaddr (nexthop input output) dPkts dOctets First Last srcport dstport
# (pad1 tcp_flags) prot (tos src_as dst_as src_mask dst_mask pad2)
RECORD = Struct("!4s4s8xIIIIHHxxBx8x")


def decode_v5(buf: bytes, exporter: str, cache: AddressCache) -> list[FlowRecord]:
    if len(buf) < HEADER.size:
        raise DecodeError("truncated_header", f"{len(buf)} bytes")
    _, count, uptime, secs, nsecs, _, _, _, sampling = HEADER.unpack_from(buf)
    end = HEADER.size + count * RECORD.size
    if count == 0 or end > len(buf):
        raise DecodeError("bad_count", f"{count} records in {len(buf)} bytes")
    # Top two bits are the sampling mode; the interval is the lower 14 (0 = unsampled).
    rate = sampling & 0x3FFF or 1
    export_time = secs + nsecs / 1e9
    below, cut, above = uptime_bases(uptime)
    get = cache.get
    out: list[FlowRecord] = []
    append = out.append
    for src, dst, packets, octets, first, last, sport, dport, proto in RECORD.iter_unpack(
        memoryview(buf)[HEADER.size : end]
    ):
        append(
            FlowRecord(
                export_time + (first - (below if first < cut else above)) / 1000.0,
                export_time + (last - (below if last < cut else above)) / 1000.0,
                get(src) or remember_address(src, cache),
                get(dst) or remember_address(dst, cache),
                octets * rate,
                packets * rate,
                proto,
                sport,
                dport,
                exporter,
            )
        )
    return out
