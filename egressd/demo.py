"""``egressd demo``: plays a synthetic exfiltration to a running egressd as real NetFlow v9.

Four days of ordinary egress (so a group without configured countries has learned what
is usual) and then gigabytes to an unexpected country, stamped so the interval closes now.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from egressd.config import split_host_port
from egressd.units import format_bytes, parse_size

#: NetFlow v9 field types (RFC 3954 section 8) of the two templates the demo uses
_IN_BYTES, _IN_PKTS, _PROTOCOL, _SRC_PORT, _DST_PORT = 1, 2, 4, 7, 11
_IPV4_SRC, _IPV4_DST, _IPV6_SRC, _IPV6_DST = 8, 12, 27, 28
_LAST_SWITCHED, _FIRST_SWITCHED = 21, 22
_TEMPLATE_V4, _TEMPLATE_V6 = 256, 257

_HEADER = struct.Struct("!HHIIII")  # version count sysUptime unixSecs sequence sourceId
_COUNTERS = struct.Struct("!QQBHH")  # bytes packets protocol srcPort dstPort
_SWITCHED = struct.Struct("!II")  # lastSwitched firstSwitched (ms of sysUptime)
_RECORDS_PER_DATAGRAM = 30
#: the exporter pretends to have been up ten days, so four days of history fit in sysUptime
_UPTIME_MS = 10 * 86400 * 1000

#: ordinary destinations of the history: United States and United Kingdom addresses
_USUAL_DESTINATIONS = ("3.5.140.2", "81.2.69.160")
_USUAL_BYTES = 50_000_000
_HISTORY = 4 * 86400
_HISTORY_STEP = 3 * 3600
_INTERVAL = 300
_LATENESS = 60
_EXFIL_STEP = 15


@dataclass(frozen=True, slots=True)
class DemoFlow:
    src: str
    dst: str
    start: float
    end: float
    bytes: int
    packets: int
    dst_port: int = 443


def _fields(v6: bool) -> list[tuple[int, int]]:
    addr = (_IPV6_SRC, 16) if v6 else (_IPV4_SRC, 4)
    dst = (_IPV6_DST, 16) if v6 else (_IPV4_DST, 4)
    return [
        (_IN_BYTES, 8),
        (_IN_PKTS, 8),
        (_PROTOCOL, 1),
        (_SRC_PORT, 2),
        (_DST_PORT, 2),
        addr,
        dst,
        (_LAST_SWITCHED, 4),
        (_FIRST_SWITCHED, 4),
    ]


def template_flowset() -> bytes:
    """Flowset 0 declaring the IPv4 and the IPv6 template."""
    body = b""
    for template_id, v6 in ((_TEMPLATE_V4, False), (_TEMPLATE_V6, True)):
        fields = _fields(v6)
        body += struct.pack("!HH", template_id, len(fields))
        body += b"".join(struct.pack("!HH", kind, length) for kind, length in fields)
    return struct.pack("!HH", 0, 4 + len(body)) + body


def _record(flow: DemoFlow, export_time: float) -> tuple[int, bytes]:
    src = ipaddress.ip_address(flow.src)
    dst = ipaddress.ip_address(flow.dst)
    if src.version != dst.version:
        raise ValueError("source and destination must both be IPv4 or both IPv6")

    def uptime_at(moment: float) -> int:
        return max(0, _UPTIME_MS - round((export_time - moment) * 1000))

    body = _COUNTERS.pack(flow.bytes, flow.packets, 6, 40000 + flow.dst_port % 1000, flow.dst_port)
    body += src.packed + dst.packed + _SWITCHED.pack(uptime_at(flow.end), uptime_at(flow.start))
    return (_TEMPLATE_V6 if src.version == 6 else _TEMPLATE_V4), body


def encode_datagram(flows: list[DemoFlow], export_time: float, sequence: int) -> bytes:
    """One NetFlow v9 export datagram: the templates, then the flows as data flowsets."""
    sets = template_flowset()
    count = 2
    by_template: dict[int, list[bytes]] = {}
    for flow in flows:
        template_id, record = _record(flow, export_time)
        by_template.setdefault(template_id, []).append(record)
    for template_id, records in by_template.items():
        body = b"".join(records)
        body += b"\0" * (-(len(body) + 4) % 4)
        sets += struct.pack("!HH", template_id, 4 + len(body)) + body
        count += len(records)
    header = _HEADER.pack(9, count, _UPTIME_MS, int(export_time), sequence, 0)
    return header + sets


def demo_flows(source: str, destination: str, size: int, now: float) -> list[DemoFlow]:
    """History to usual destinations, then ``size`` bytes to ``destination`` ending ``now``.

    The exfiltration starts in an interval the watermark (now minus the default allowed
    lateness) has already passed, so the flow stamped ``now`` closes it at once.
    """
    flows: list[DemoFlow] = []
    usual = _USUAL_DESTINATIONS
    if ipaddress.ip_address(source).version == 6:
        usual = ("2600:1f18::1", "2a00:1098::1")
    moment = now - _HISTORY
    while moment < now - 2 * 3600:
        for dst in usual:
            flows.append(DemoFlow(source, dst, moment - 60, moment, _USUAL_BYTES, 40_000))
        moment += _HISTORY_STEP
    closing_edge = (now - _LATENESS) - (now - _LATENESS) % _INTERVAL
    first = closing_edge - 270
    ends = [first + i * _EXFIL_STEP for i in range(int((now - first) // _EXFIL_STEP) + 1)]
    if ends[-1] < now:
        ends.append(now)
    share, rest = divmod(size, len(ends))
    for i, end in enumerate(ends):
        part = share + (rest if i == len(ends) - 1 else 0)
        flows.append(
            DemoFlow(source, destination, end - _EXFIL_STEP, end, part, max(1, part // 1400))
        )
    return flows


def _chunks(flows: list[DemoFlow]) -> Iterator[list[DemoFlow]]:
    for i in range(0, len(flows), _RECORDS_PER_DATAGRAM):
        yield flows[i : i + _RECORDS_PER_DATAGRAM]


class NothingListening(OSError):
    """The collector address answered that nothing receives datagrams there."""


def send_demo(target: str, flows: list[DemoFlow], now: float) -> int:
    """Send ``flows`` to the collector at ``target``; returns the number of datagrams.

    The socket is connected, so the ICMP "port unreachable" a host answers when nothing
    listens comes back as an error instead of the datagrams vanishing silently.
    """
    host, port = split_host_port(target)
    family, kind, proto, _canon, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sent = 0
    with socket.socket(family, kind, proto) as sock:
        sock.connect(address)
        try:
            for sequence, chunk in enumerate(_chunks(flows)):
                sock.send(encode_datagram(chunk, now, sequence))
                sent += 1
                time.sleep(0.002)  # a gentle pace: a loopback burst can outrun a small rcvbuf
            # An ICMP error to the last datagram arrives a moment later: ask once more.
            time.sleep(0.05)
            sock.send(encode_datagram([], now, sent))
        except ConnectionRefusedError as exc:
            raise NothingListening(f"nothing receives datagrams at {target}") from exc
    return sent


class ApiUnreachable(OSError):
    """egressd's HTTP API did not answer (or refused the request)."""


def _poll_alerts(url: str, destination: str, timeout: float) -> dict[str, object] | None:
    """The firing alert whose evidence names ``destination``; None when none came in time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                alerts = orjson.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise ApiUnreachable(f"{url} answered HTTP {exc.code}") from None
        except (OSError, urllib.error.URLError) as exc:
            raise ApiUnreachable(f"cannot reach {url}: {exc}") from None
        except orjson.JSONDecodeError:
            raise ApiUnreachable(f"{url} did not answer with JSON") from None
        for alert in alerts:
            if destination in alert.get("annotations", {}).get("top_destinations", ""):
                return dict(alert)
        if time.monotonic() >= deadline:
            return None
        time.sleep(1)


def _api_host(listen: str) -> str:
    host, port = split_host_port(listen)
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def demo_main(
    target: str, source: str, destination: str, size: str, http: str, timeout: float = 30.0
) -> int:
    """Entry point of ``egressd demo``: 0 when egressd fired, 1 when it did not, 2 bad usage."""
    try:
        byte_count = parse_size(size)
        split_host_port(target)
        url = f"http://{_api_host(http)}/api/v1/alerts"
        for address in (source, destination):
            ipaddress.ip_address(address)
    except ValueError as exc:
        print(f"egressd demo: {exc}", file=sys.stderr)
        return 2
    now = time.time()
    flows = demo_flows(source, destination, byte_count, now)
    try:
        datagrams = send_demo(target, flows, now)
    except NothingListening as exc:
        print(
            f"egressd demo: {exc}: is egressd running with a [[sources.netflow]] listening "
            "there? (--target HOST:PORT or --config FILE names it)",
            file=sys.stderr,
        )
        return 1
    except (OSError, ValueError) as exc:
        print(f"egressd demo: cannot send to {target}: {exc}", file=sys.stderr)
        return 1
    exfil = [f for f in flows if f.dst == destination]
    usual = ", ".join(sorted({f.dst for f in flows} - {destination}))
    print(
        f"egressd demo: sent {datagrams} NetFlow v9 datagrams ({len(flows)} flows) to {target}:\n"
        f"  4 days of usual egress from {source} to {usual}\n"
        f"  then {format_bytes(byte_count)} from {source} to {destination} "
        f"in {len(exfil)} flows over the last {int(now - exfil[0].start)}s",
        flush=True,
    )
    try:
        alert = _poll_alerts(url, destination, timeout)
    except ApiUnreachable as exc:
        print(
            f"egressd demo: {exc}: cannot see whether egressd fired "
            "(--http HOST:PORT or --config FILE names its API)",
            file=sys.stderr,
        )
        return 1
    if alert is None:
        print(
            f"egressd demo: no alert naming {destination} within {timeout:g}s at {url}: "
            "did egressd receive the datagrams (its log, egressd_records_total on /metrics), "
            "and is the source inside networks.local and the destination unexpected for its "
            "group?",
            file=sys.stderr,
        )
        return 1
    print(f"egressd demo: egressd fired (from {url}):")
    print(orjson.dumps(alert, option=orjson.OPT_INDENT_2).decode())
    print(f"egressd demo: see it again with: curl -s {url}")
    return 0
