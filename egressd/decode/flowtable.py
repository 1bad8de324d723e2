"""Sans-IO flow summariser: turns parsed packets into per-direction flow records.

A bounded, bidirectional flow table with idle/active timeouts and TCP close, driven by packet time.
"""

from __future__ import annotations

from heapq import heapify, heappop, heappush, heapreplace
from itertools import count

from egressd.decode.frames import TCP_FIN, TCP_RST, Frame, PacketHeader, parse_frame
from egressd.errors import DecodeError
from egressd.model import FlowRecord

#: canonical flow key: (lower address, higher address, protocol, lower's port, higher's port)
FlowKey = tuple[str, str, int, int, int]

_FIN_A = 1
_FIN_B = 2
_FIN_BOTH = _FIN_A | _FIN_B
# Closed TCP flows leave stale heap entries behind; rebuild once they outnumber live ones.
_HEAP_SLACK = 1024


class FlowTableStats:
    """Counters of one flow table; plain ints so the hot path pays an attribute increment."""

    __slots__ = (
        "flows_closed_tcp",
        "flows_created",
        "flows_evicted_full",
        "flows_expired_active",
        "flows_expired_idle",
        "flows_flushed",
        "malformed",
        "non_ip",
        "packets",
    )

    def __init__(self) -> None:
        self.packets = 0
        self.flows_created = 0
        self.flows_evicted_full = 0
        self.flows_expired_idle = 0
        self.flows_expired_active = 0
        self.flows_closed_tcp = 0
        self.flows_flushed = 0
        self.non_ip = 0
        self.malformed = 0


class _Flow:
    """One bidirectional flow; side "a" is the key's first endpoint, "b" the second."""

    __slots__ = (
        "a_bytes",
        "a_first",
        "a_last",
        "a_packets",
        "b_bytes",
        "b_first",
        "b_last",
        "b_packets",
        "done",
        "fin",
        "key",
        "last",
        "start",
    )

    def __init__(self, key: FlowKey, ts: float) -> None:
        self.key = key
        self.start = ts  # start of the current export period (reset by the active timeout)
        self.last = ts
        self.a_bytes = 0
        self.a_packets = 0
        self.a_first = ts
        self.a_last = ts
        self.b_bytes = 0
        self.b_packets = 0
        self.b_first = ts
        self.b_last = ts
        self.fin = 0
        self.done = False


class FlowTable:
    """Summarises packets into flows and emits one :class:`FlowRecord` per direction.

    Time is the packets' own (event) time: ``add`` expires flows whose idle or active
    timeout has passed by the new packet's timestamp, ``expire`` does so for a given time
    (a live source calls it when idle), ``flush`` empties the table at the end of input.
    A flow ends after FIN from both sides or one RST. When the table holds ``max_flows``
    flows, the flow due to be exported soonest is exported early to make room.
    ``sampling`` (1-in-N) multiplies bytes and packets of every record.
    """

    __slots__ = (
        "_active",
        "_exporter",
        "_flows",
        "_heap",
        "_idle",
        "_max_flows",
        "_now",
        "_sampling",
        "_seq",
        "stats",
    )

    def __init__(
        self,
        idle_timeout: float,
        active_timeout: float,
        max_flows: int,
        sampling: int = 1,
        exporter: str = "",
    ) -> None:
        if idle_timeout <= 0 or active_timeout <= 0:
            raise ValueError("flow timeouts must be positive")
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        if sampling < 1:
            raise ValueError("sampling must be at least 1")
        self._idle = float(idle_timeout)
        self._active = float(active_timeout)
        self._max_flows = max_flows
        self._sampling = sampling
        self._exporter = exporter
        self._flows: dict[FlowKey, _Flow] = {}
        # (deadline, tie-breaker, flow). Each live flow has exactly one entry whose deadline
        # is never later than its real one; entries are refreshed lazily when popped, so a
        # packet never touches the heap unless it creates a flow.
        self._heap: list[tuple[float, int, _Flow]] = []
        self._seq = count()
        self._now = float("-inf")
        self.stats = FlowTableStats()

    def __len__(self) -> int:
        return len(self._flows)

    def add(self, ts: float, header: PacketHeader) -> list[FlowRecord]:
        """Count one packet; returns the records of flows that ended by its time (or by it)."""
        self.stats.packets += 1
        out: list[FlowRecord] = []
        if ts > self._now:
            self._now = ts
            heap = self._heap
            if heap and heap[0][0] <= ts:
                self._expire(ts, out)
        src = header.src
        dst = header.dst
        sport = header.sport
        dport = header.dport
        forward = src < dst or (src == dst and sport <= dport)
        key = (
            (src, dst, header.proto, sport, dport)
            if forward
            else (dst, src, header.proto, dport, sport)
        )
        flow = self._flows.get(key)
        if flow is None:
            if len(self._flows) >= self._max_flows:
                self._evict_one(out)
            flow = _Flow(key, ts)
            self._flows[key] = flow
            heappush(self._heap, (ts + min(self._idle, self._active), next(self._seq), flow))
            self.stats.flows_created += 1
        if forward:
            if not flow.a_packets:
                flow.a_first = flow.a_last = ts
            flow.a_packets += 1
            flow.a_bytes += header.length
            if ts > flow.a_last:
                flow.a_last = ts
        else:
            if not flow.b_packets:
                flow.b_first = flow.b_last = ts
            flow.b_packets += 1
            flow.b_bytes += header.length
            if ts > flow.b_last:
                flow.b_last = ts
        if ts > flow.last:
            flow.last = ts
        flags = header.tcp_flags
        if flags & (TCP_FIN | TCP_RST):
            if flags & TCP_RST:
                self._close(flow, out)
            else:
                flow.fin |= _FIN_A if forward else _FIN_B
                if flow.fin == _FIN_BOTH:
                    self._close(flow, out)
        return out

    def add_frame(self, ts: float, linktype: int, frame: Frame) -> list[FlowRecord]:
        """Parse and count one captured frame; non-IP and malformed frames are only counted."""
        try:
            header = parse_frame(linktype, frame)
        except DecodeError:
            self.stats.malformed += 1
            return []
        if header is None:
            self.stats.non_ip += 1
            return []
        return self.add(ts, header)

    def expire(self, now: float) -> list[FlowRecord]:
        """Records of flows whose idle or active timeout has passed by ``now``."""
        out: list[FlowRecord] = []
        if now > self._now:
            self._now = now
        self._expire(self._now, out)
        return out

    def flush(self) -> list[FlowRecord]:
        """Records of every flow still open; the table is empty afterwards."""
        out: list[FlowRecord] = []
        for flow in self._flows.values():
            flow.done = True
            self._emit(flow, out)
        self.stats.flows_flushed += len(self._flows)
        self._flows.clear()
        self._heap.clear()
        return out

    def _expire(self, now: float, out: list[FlowRecord]) -> None:
        heap = self._heap
        idle = self._idle
        active = self._active
        while heap and heap[0][0] <= now:
            flow = heap[0][2]
            if flow.done:
                heappop(heap)
                continue
            idle_deadline = flow.last + idle
            active_deadline = flow.start + active
            if idle_deadline <= now:
                heappop(heap)
                flow.done = True
                del self._flows[flow.key]
                self._emit(flow, out)
                self.stats.flows_expired_idle += 1
            elif active_deadline <= now:
                # Long-lived flow: report what it did so far and keep counting afresh.
                self._emit(flow, out)
                flow.a_bytes = flow.a_packets = flow.b_bytes = flow.b_packets = 0
                flow.start = now
                self.stats.flows_expired_active += 1
                heapreplace(heap, (min(idle_deadline, now + active), next(self._seq), flow))
            else:
                heapreplace(heap, (min(idle_deadline, active_deadline), next(self._seq), flow))

    def _evict_one(self, out: list[FlowRecord]) -> None:
        """Export and drop the live flow whose deadline comes first."""
        heap = self._heap
        idle = self._idle
        active = self._active
        while heap:
            deadline, _, flow = heap[0]
            if flow.done:
                heappop(heap)
                continue
            real = min(flow.last + idle, flow.start + active)
            if real > deadline:
                heapreplace(heap, (real, next(self._seq), flow))
                continue
            heappop(heap)
            flow.done = True
            del self._flows[flow.key]
            self._emit(flow, out)
            self.stats.flows_evicted_full += 1
            return

    def _close(self, flow: _Flow, out: list[FlowRecord]) -> None:
        flow.done = True
        del self._flows[flow.key]
        self._emit(flow, out)
        self.stats.flows_closed_tcp += 1
        if len(self._heap) > 2 * len(self._flows) + _HEAP_SLACK:
            self._heap = [entry for entry in self._heap if not entry[2].done]
            heapify(self._heap)

    def _emit(self, flow: _Flow, out: list[FlowRecord]) -> None:
        a, b, proto, a_port, b_port = flow.key
        sampling = self._sampling
        if flow.a_packets:
            out.append(
                FlowRecord(
                    flow.a_first,
                    flow.a_last,
                    a,
                    b,
                    flow.a_bytes * sampling,
                    flow.a_packets * sampling,
                    proto,
                    a_port,
                    b_port,
                    self._exporter,
                )
            )
        if flow.b_packets:
            out.append(
                FlowRecord(
                    flow.b_first,
                    flow.b_last,
                    b,
                    a,
                    flow.b_bytes * sampling,
                    flow.b_packets * sampling,
                    proto,
                    b_port,
                    a_port,
                    self._exporter,
                )
            )
