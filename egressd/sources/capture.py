"""Live packet capture for ``[[sources.capture]]``: sniffed packets summarised into flow records.

A reader thread pulls raw frames from a scapy AF_PACKET socket and hands parsed headers to the
event loop in batches; the loop owns the flow table and submits the records it emits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Final, Protocol

from egressd.config import CaptureSourceConfig
from egressd.decode.flowtable import FlowTable
from egressd.decode.frames import (
    LINKTYPE_ETHERNET,
    LINKTYPE_RAW,
    LINKTYPE_RAW_DLT,
    SUPPORTED_LINKTYPES,
    PacketHeader,
    parse_frame,
)
from egressd.errors import DecodeError, SourceError
from egressd.model import FlowRecord
from egressd.sources.base import RecordSink
from egressd.stats import SourceStats

log = logging.getLogger("egressd.sources.capture")

#: Linux <linux/if_packet.h>: getsockopt(SOL_PACKET, PACKET_STATISTICS) → struct tpacket_stats
SOL_PACKET: Final = 263
PACKET_STATISTICS: Final = 6
_TPACKET_STATS: Final = struct.Struct("II")  # tp_packets, tp_drops (both reset by each read)

# Ancillary data the socket is set up (by scapy) to deliver with each frame.
_PACKET_AUXDATA: Final = 8
_SO_TIMESTAMPNS: Final = 35
_AUXDATA: Final = struct.Struct("=I12xHH")  # tp_status, (len, snaplen, mac, net), vlan tci, tpid
_TIMESPEC: Final = struct.Struct("=qq")
_VLAN_TAG: Final = struct.Struct("!HH")
_ANCILLARY_SIZE: Final = socket.CMSG_SPACE(_AUXDATA.size) + socket.CMSG_SPACE(_TIMESPEC.size)
_TP_STATUS_VLAN_VALID: Final = 0x10
_TP_STATUS_VLAN_TPID_VALID: Final = 0x40
_ETH_P_8021Q: Final = 0x8100

#: the reader wakes this often to notice ``stop`` (and to hand over a partial batch)
_POLL_TIMEOUT: Final = 0.2
#: a batch goes to the loop when it holds this many packets or is this old
_BATCH_MAX: Final = 512
_BATCH_DELAY: Final = 0.05
#: packets handed over but not yet counted by the loop; beyond it, batches are dropped
QUEUE_LIMIT: Final = 65_536
#: wall-clock housekeeping: idle/active expiry, kernel counters, reopening a lost socket
_HOUSEKEEPING_INTERVAL: Final = 1.0
_REOPEN_BACKOFF_MAX: Final = 30.0
#: kernel receive buffer asked for; the kernel caps it at net.core.rmem_max
_RCVBUF: Final = 4 << 20

_ARPHRD_ETHER: Final = 1
_ARPHRD_LOOPBACK: Final = 772
_ARPHRD_NONE: Final = 0xFFFE


class CaptureSocket(Protocol):
    """What the reader thread needs from a capture socket; the unit-test seam."""

    #: pcap link type of the frames ``recv_frame`` returns
    linktype: int

    def recv_frame(self, size: int) -> tuple[bytes, float] | None:
        """(frame cut to ``size`` bytes, timestamp), or None when nothing came within the
        poll timeout or the frame is to be ignored; raises OSError when the socket fails."""
        ...

    def kernel_stats(self) -> tuple[int, int] | None:
        """(packets, drops) the kernel counted since the last call, or None if unknown."""
        ...

    def close(self) -> None: ...


#: (interface, BPF filter) → an open, filtered, bound capture socket
SocketFactory = Callable[[str, str], CaptureSocket]


def _linktype_of(arphrd: int) -> int | None:
    """The pcap link type of frames an AF_PACKET SOCK_RAW socket reads on this device type."""
    if arphrd in (_ARPHRD_ETHER, _ARPHRD_LOOPBACK):
        # Linux gives loopback frames a zeroed Ethernet header.
        return LINKTYPE_ETHERNET
    if arphrd == _ARPHRD_NONE:
        return LINKTYPE_RAW  # tun, WireGuard: bare IP packets
    from scapy.data import ARPHRD_TO_DLT

    dlt = ARPHRD_TO_DLT.get(arphrd)
    if dlt is None:
        return None
    linktype = int(dlt)
    return LINKTYPE_RAW if linktype == LINKTYPE_RAW_DLT else linktype


class _DropDissectorGuess(logging.Filter):
    """Hides scapy's "Unable to guess type" warning: frames here never reach its dissectors."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Unable to guess type" not in record.getMessage()


@contextlib.contextmanager
def _quiet_dissector_guess() -> Iterator[None]:
    scapy_log = logging.getLogger("scapy.runtime")
    quiet = _DropDissectorGuess()
    scapy_log.addFilter(quiet)
    try:
        yield
    finally:
        scapy_log.removeFilter(quiet)


def apply_ancillary(frame: bytes, ancillary: list[tuple[int, int, bytes]]) -> tuple[bytes, float]:
    """(frame with the VLAN tag the kernel stripped put back, kernel timestamp or now)."""
    ts = 0.0
    for level, kind, data in ancillary:
        if level == SOL_PACKET and kind == _PACKET_AUXDATA and len(data) >= _AUXDATA.size:
            status, tci, tpid = _AUXDATA.unpack_from(data)
            if tci or status & _TP_STATUS_VLAN_VALID:
                if not status & _TP_STATUS_VLAN_TPID_VALID:
                    tpid = _ETH_P_8021Q
                frame = frame[:12] + _VLAN_TAG.pack(tpid, tci) + frame[12:]
        elif level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(data) == 16:
            seconds, nanoseconds = _TIMESPEC.unpack(data)
            ts = seconds + nanoseconds * 1e-9
    return frame, ts or time.time()


def open_scapy_socket(interface: str, bpf: str) -> CaptureSocket:
    """A scapy AF_PACKET listening socket on ``interface`` with ``bpf`` attached in the kernel.

    Raises what scapy and the kernel raise (PermissionError, ValueError for an unknown
    interface, Scapy_Exception for a filter that does not compile); the source maps them.
    """
    from scapy.arch.linux import L2ListenSocket

    class ScapyCaptureSocket(L2ListenSocket):
        """L2ListenSocket that returns raw frames and drops loopback's duplicate copies."""

        linktype: int
        loopback: bool

        def recv_frame(self, size: int) -> tuple[bytes, float] | None:
            # A lean recvmsg instead of scapy's receive (ctypes per packet) and dissection:
            # about half the cost per frame.
            try:
                frame, ancillary, _, address = self.ins.recvmsg(size, _ANCILLARY_SIZE)
            except TimeoutError:
                return None
            if not frame:
                return None
            if self.loopback and address[2] == socket.PACKET_OUTGOING:
                # Every loopback packet is seen leaving and arriving; count it once.
                return None
            return apply_ancillary(frame, ancillary)

        def kernel_stats(self) -> tuple[int, int] | None:
            try:
                raw = self.ins.getsockopt(SOL_PACKET, PACKET_STATISTICS, _TPACKET_STATS.size)
            except (OSError, ValueError):
                return None
            packets, drops = _TPACKET_STATS.unpack(raw)
            return int(packets), int(drops)

    # Promiscuous mode (a packet-socket membership, released on close) lets a mirror port
    # see traffic not addressed to it; it needs CAP_NET_RAW only, like the socket itself.
    with _quiet_dissector_guess():
        sock = ScapyCaptureSocket(iface=interface, filter=bpf or None, promisc=True)
    try:
        arphrd = sock.ins.getsockname()[3]
        linktype = _linktype_of(arphrd)
        if linktype is None or linktype not in SUPPORTED_LINKTYPES:
            raise SourceError(
                f"capturing on {interface}: device type {arphrd} has no supported link layer",
                retriable=False,
            )
        sock.linktype = linktype
        sock.loopback = arphrd == _ARPHRD_LOOPBACK
        with contextlib.suppress(OSError):
            sock.ins.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        sock.ins.settimeout(_POLL_TIMEOUT)
        # Reading the counters resets them: forget drops of unfiltered traffic from the
        # moment between creating the socket and attaching the filter.
        sock.kernel_stats()
    except BaseException:
        sock.close()
        raise
    result: CaptureSocket = sock
    return result


def map_open_error(exc: BaseException, interface: str, bpf: str) -> SourceError:
    """A failure to open the capture socket as a SourceError that says what to do."""
    if isinstance(exc, SourceError):
        return exc
    if isinstance(exc, PermissionError):
        return SourceError(
            f"capturing on {interface} needs CAP_NET_RAW (run as root or grant the"
            " capability: see deploy/egressd-capture.service)",
            retriable=False,
        )
    text = str(exc)
    if isinstance(exc, ValueError) and "not found" in text:
        return SourceError(f"capturing on {interface}: no such network interface", retriable=False)
    if isinstance(exc, OSError) and exc.errno in (errno.ENODEV, errno.ENXIO):
        return SourceError(f"capturing on {interface}: no such network interface", retriable=False)
    if "libpcap is not available" in text:
        return SourceError(
            f"capturing on {interface}: compiling the BPF filter needs libpcap"
            " (Debian package libpcap0.8)",
            retriable=False,
        )
    if "filter" in text.lower():
        return SourceError(f"capturing on {interface}: bad bpf {bpf!r}: {text}", retriable=False)
    return SourceError(f"capturing on {interface}: {type(exc).__name__}: {exc}")


class CaptureSource:
    """Sniffs ``config.interface`` through ``config.bpf`` and submits summarised flow records.

    A dedicated thread reads frames (so the event loop never waits on the socket), keeps one
    in ``config.sampling`` of them, parses their headers and hands batches to the loop with
    ``call_soon_threadsafe``. At most ``queue_limit`` packets wait for the loop; beyond
    that whole batches are dropped and counted as ``queue_full``, so a stalled loop never
    stalls the socket. The loop feeds the flow table, expires idle flows by wall time once a
    second, and flushes the table on stop. Kernel drops are read from PACKET_STATISTICS.
    """

    __slots__ = (
        "_clock",
        "_housekeeping",
        "_lock",
        "_loop",
        "_queue_limit",
        "_queued",
        "_ready",
        "_reopen_at",
        "_reopen_backoff",
        "_sink",
        "_socket",
        "_socket_factory",
        "_stop",
        "_table",
        "_thread",
        "config",
        "kernel_drops",
        "kernel_packets",
        "last_error",
        "name",
        "non_ip",
        "sampled_out",
        "stats",
    )

    def __init__(
        self,
        config: CaptureSourceConfig,
        name: str,
        *,
        socket_factory: SocketFactory | None = None,
        clock: Callable[[], float] = time.time,
        queue_limit: int = QUEUE_LIMIT,
    ) -> None:
        self.config = config
        self.name = name
        self.stats = SourceStats(name)
        self._socket_factory: SocketFactory = socket_factory or open_scapy_socket
        self._clock = clock
        self._queue_limit = queue_limit
        self._table = self._new_table()
        self._socket: CaptureSocket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._queued = 0  # packets handed to the loop, not yet counted; guarded by _lock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sink: RecordSink | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._ready = False
        self._reopen_at = 0.0
        self._reopen_backoff = _HOUSEKEEPING_INTERVAL
        # Written by the reader thread only (units, decode_errors and queue_full drops too),
        # so no counter has two writers.
        self.sampled_out = 0
        self.non_ip = 0
        # Written by the loop only.
        self.kernel_packets = 0
        self.kernel_drops = 0
        self.last_error = ""

    def _new_table(self) -> FlowTable:
        cfg = self.config
        return FlowTable(
            cfg.idle_timeout,
            cfg.active_timeout,
            cfg.max_flows,
            sampling=cfg.sampling,
            exporter=f"capture:{cfg.interface}",
        )

    # -- Source protocol --------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready

    async def start(self, sink: RecordSink) -> None:
        """Opens the socket (errors are raised here, mapped) and starts the reader thread."""
        if self._housekeeping is not None:
            raise RuntimeError(f"{self.name} already started")
        self._loop = asyncio.get_running_loop()
        self._sink = sink
        self._stop.clear()
        self._open()
        self._housekeeping = self._loop.create_task(
            self._housekeep(), name=f"egressd-{self.name}-housekeeping"
        )
        log.info(
            "%s: capturing on %s (bpf %r, 1 in %d packets)",
            self.name,
            self.config.interface,
            self.config.bpf,
            self.config.sampling,
        )

    async def stop(self) -> None:
        """Stops the reader, closes the socket and submits every flow still open."""
        self._stop.set()
        task, self._housekeeping = self._housekeeping, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        # The thread notices the stop flag within one poll timeout; joining off the loop
        # keeps the loop serving the batches it hands over meanwhile.
        thread, self._thread = self._thread, None
        if thread is not None:
            await asyncio.to_thread(thread.join)
        await asyncio.sleep(0)  # run batch callbacks scheduled before the thread ended
        self._close_socket()
        self._submit(self._table.flush())

    def checkpoint_position(self) -> None:
        return None

    async def checkpoint_saved(self, position: Any) -> None:
        return None

    def restore_position(self, position: Any) -> None:
        return None

    # -- metrics ------------------------------------------------------------------------------

    def extra_metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """(name, labels, value) samples; names ending in ``_total`` are counters, others gauges."""
        source = {"source": self.name}
        table = self._table.stats
        return [
            ("egressd_capture_kernel_packets_total", source, float(self.kernel_packets)),
            ("egressd_capture_kernel_drops_total", source, float(self.kernel_drops)),
            ("egressd_capture_sampled_out_total", source, float(self.sampled_out)),
            ("egressd_capture_non_ip_total", source, float(self.non_ip)),
            ("egressd_capture_flows_created_total", source, float(table.flows_created)),
            ("egressd_capture_flows_evicted_total", source, float(table.flows_evicted_full)),
            ("egressd_capture_flows", source, float(len(self._table))),
            ("egressd_capture_queued_packets", source, float(self._queued)),
        ]

    # -- the socket and its thread --------------------------------------------------------------

    def _open(self) -> None:
        cfg = self.config
        try:
            sock = self._socket_factory(cfg.interface, cfg.bpf)
        except Exception as exc:
            error = map_open_error(exc, cfg.interface, cfg.bpf)
            self.last_error = str(error)
            raise error from exc
        loop = self._loop
        assert loop is not None
        self._socket = sock
        self._thread = threading.Thread(
            target=self._read_frames,
            args=(sock, loop),
            name=f"egressd-{self.name}",
            daemon=True,  # never keeps a dying process alive; stop() joins it normally
        )
        self._thread.start()
        self._ready = True
        self._reopen_backoff = _HOUSEKEEPING_INTERVAL

    def _close_socket(self) -> None:
        self._ready = False
        sock, self._socket = self._socket, None
        if sock is None:
            return
        self._read_kernel_stats(sock)
        try:
            sock.close()
        except OSError as exc:  # closing is best effort
            log.debug("%s: closing the capture socket: %s", self.name, exc)

    def _read_frames(self, sock: CaptureSocket, loop: asyncio.AbstractEventLoop) -> None:
        """The reader thread: frames → sampled, parsed headers → batches for the loop."""
        stats = self.stats
        stopping = self._stop
        recv = sock.recv_frame
        linktype = sock.linktype
        snaplen = self.config.snaplen
        sampling = self.config.sampling
        skip = 0
        monotonic = time.monotonic
        batch: list[tuple[float, PacketHeader]] = []
        deadline = 0.0
        while not stopping.is_set():
            try:
                got = recv(snaplen)
            except OSError as exc:
                if stopping.is_set():
                    break
                if exc.errno == errno.ENETDOWN:
                    # The socket outlives the interface going down; it reads again once up.
                    loop.call_soon_threadsafe(self._interface_down, str(exc))
                    stopping.wait(_POLL_TIMEOUT)  # never spin should the error repeat
                    continue
                loop.call_soon_threadsafe(self._reader_failed, sock, f"{type(exc).__name__}: {exc}")
                break
            if got is not None:
                stats.units += 1
                if sampling > 1:
                    # Deterministic 1-in-N before parsing: unsampled packets cost one recv.
                    skip += 1
                    if skip < sampling:
                        self.sampled_out += 1
                        continue
                    skip = 0
                frame, ts = got
                try:
                    header = parse_frame(linktype, frame)
                except DecodeError as exc:
                    stats.failed(exc.reason)
                    continue
                if header is None:
                    self.non_ip += 1
                    continue
                if not batch:
                    deadline = monotonic() + _BATCH_DELAY
                batch.append((ts, header))
                if len(batch) < _BATCH_MAX and monotonic() < deadline:
                    continue
            elif not batch:
                continue
            self._hand_over(loop, batch)
            batch = []
        if batch:
            self._hand_over(loop, batch)

    def _hand_over(
        self, loop: asyncio.AbstractEventLoop, batch: list[tuple[float, PacketHeader]]
    ) -> None:
        """Queue a batch for the loop, or drop and count it when the loop is too far behind."""
        size = len(batch)
        with self._lock:
            if self._queued + size > self._queue_limit:
                self.stats.drop("queue_full", size)
                return
            self._queued += size
        try:
            loop.call_soon_threadsafe(self._count_batch, batch)
        except RuntimeError:  # the loop is closed: nobody will count these
            with self._lock:
                self._queued -= size
            self.stats.drop("loop_closed", size)

    # -- the loop side ----------------------------------------------------------------------------

    def _count_batch(self, batch: list[tuple[float, PacketHeader]]) -> None:
        with self._lock:
            self._queued -= len(batch)
        if not self._ready and self._socket is not None:
            self._ready = True  # frames flow again after the interface came back
        add = self._table.add
        records: list[FlowRecord] = []
        for ts, header in batch:
            emitted = add(ts, header)
            if emitted:
                records.extend(emitted)
        self._submit(records)

    def _submit(self, records: list[FlowRecord]) -> None:
        if not records:
            return
        self.stats.records += len(records)
        sink = self._sink
        if sink is None:
            self.stats.drop("no_sink", len(records))
            return
        try:
            sink.submit(records)
        except Exception:
            # A callback's exception would only reach the loop's handler; count it here.
            self.stats.drop("sink_failed", len(records))
            log.exception("%s: submitting %d records failed", self.name, len(records))

    def _interface_down(self, message: str) -> None:
        if self._ready:
            log.warning("%s: %s is down (%s); waiting", self.name, self.config.interface, message)
        self._ready = False
        self.last_error = message

    def _reader_failed(self, sock: CaptureSocket, message: str) -> None:
        if sock is not self._socket:
            return
        log.error("%s: capture socket failed: %s; reopening", self.name, message)
        self.last_error = message
        self._close_socket()
        self._reopen_at = time.monotonic()

    def _read_kernel_stats(self, sock: CaptureSocket) -> None:
        got = sock.kernel_stats()
        if got is None:
            return
        packets, drops = got
        self.kernel_packets += packets
        if drops:
            self.kernel_drops += drops
            self.stats.drop("kernel", drops)

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(_HOUSEKEEPING_INTERVAL)
            # Wall time closes idle flows when no packet arrives to move the table's clock.
            self._submit(self._table.expire(self._clock()))
            sock = self._socket
            if sock is not None:
                self._read_kernel_stats(sock)
            elif not self._stop.is_set() and time.monotonic() >= self._reopen_at:
                self._reopen()

    def _reopen(self) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            return  # the failed reader is still leaving; try on the next round
        try:
            self._open()
        except SourceError as exc:
            self._reopen_at = time.monotonic() + self._reopen_backoff
            log.warning(
                "%s: reopening failed: %s; next try in %.0fs", self.name, exc, self._reopen_backoff
            )
            self._reopen_backoff = min(self._reopen_backoff * 2, _REOPEN_BACKOFF_MAX)
            return
        log.info("%s: capturing on %s again", self.name, self.config.interface)
