"""The NetFlow v5/v9 and IPFIX UDP collector: one socket per configured listen address.

When the socket is readable, a burst of datagrams (until it would block, at most
:data:`_BURST`) is read, filtered by exporter and queued (one exporter fills at most three
quarters of the queue), each exporter's in a lane of its own; a decoder task reads the socket
the same way before each batch of :data:`BATCH_DATAGRAMS` it takes off the bounded queue (an
equal turn to each exporter waiting, in rotation), decodes what it took into columns
(the sets of one template read together) and submits them to the engine as one batch once
:data:`_SUBMIT_FLOWS` flows are decoded and no more datagrams wait (else up to
:data:`_SUBMIT_BUSY_FLOWS`), or :data:`_SUBMIT_DELAY` seconds passed. A full queue
drops datagrams and counts them.

The queue is plain deques (one per exporter) with an event that wakes the decoder task, not an
``asyncio.Queue``: at tens of thousands of datagrams a second its put, get and task_done
(Python calls each, per datagram) cost as much as a tenth of the daemon's time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

from egressd.cache import BoundedCache
from egressd.columns import FlowColumns
from egressd.config import IPNetwork, NetflowSourceConfig, split_host_port
from egressd.decode.netflow import NetflowDecoder
from egressd.errors import DecodeError, SourceError
from egressd.sources.base import RecordSink, columns_submitter
from egressd.stats import SourceStats

log = logging.getLogger("egressd.netflow")

#: submit once this many flows are decoded and the socket has nothing more right now ...
_SUBMIT_FLOWS = 1024
#: ... or once this many are, while datagrams keep coming: the engine's fixed cost per batch
#: (numpy calls, the talker backlog's bookkeeping) was ~0.3 us/flow in 1,024-flow batches
#: in a busy collector's worst case; a batch this size holds the loop ~5 ms ...
_SUBMIT_BUSY_FLOWS = 8192
#: ... or this many seconds after the first of them came off the queue: the engine's cost
#: per batch (a fixed part per call) is paid per thousand flows, not per datagram, even at
#: low rates, and flows wait at most this long
_SUBMIT_DELAY = 0.1
#: decode at most this many queued datagrams before reading the socket again (and yielding)
BATCH_DATAGRAMS = 64
#: read at most this many datagrams per readiness of the socket before yielding to the loop
_BURST = 256
#: bursts read at most between two decode batches: the socket is read far faster than its
#: datagrams are decoded, so a flood waits (or is dropped) in the queue, by its share, and
#: not in the kernel's buffer, which drops whatever arrives when full, from any exporter
_DRAIN_BURSTS = 16
#: a queued datagram takes a slot of the queue per this many bytes (one for most): the queue
#: holds at most ``queue_size`` x this many bytes (90 MB at the default), whatever their sizes
SLOT_BYTES = 9_000
#: the largest UDP payload
_MAX_DATAGRAM = 65535
_EXPORTER_CACHE = 4096
_ERROR_LOG_EVERY = 30.0

Datagram = tuple[bytes, str, float]


def kernel_drops(udp_table: str, inode: int) -> int | None:
    """Datagrams the kernel dropped because the socket's receive buffer was full.

    They never reach the socket callback, so only the kernel knows: the last column of the
    socket's line in /proc/net/udp (or udp6). None when the table or the socket is not there.
    """
    wanted = str(inode)
    try:
        with open(udp_table, encoding="ascii") as table:
            next(table, None)
            for line in table:
                fields = line.split()
                if len(fields) >= 13 and fields[9] == wanted:
                    return int(fields[12])
    except (OSError, ValueError):
        return None
    return None


def _exporter_text(host: str) -> str:
    """Canonical exporter address: IPv4-mapped IPv6 (dual-stack sockets) becomes IPv4."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host.partition("%")[0]


def _address_ranges(
    networks: tuple[IPNetwork, ...],
) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """(first, last) address numbers of ``networks``: the IPv4 ones, the IPv6 ones."""
    v4 = tuple(
        (int(n.network_address), int(n.broadcast_address)) for n in networks if n.version == 4
    )
    v6 = tuple(
        (int(n.network_address), int(n.broadcast_address)) for n in networks if n.version == 6
    )
    return v4, v6


def resolve_listen(name: str, listen: str) -> tuple[int, int, int, Any]:
    """Family, socket type, protocol and address to bind the UDP listener ``listen`` to."""
    host, port = split_host_port(listen)
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )
    except socket.gaierror as exc:
        raise SourceError(f"{name}: cannot resolve {host!r}: {exc}", retriable=False) from exc
    family, kind, proto, _canon, address = infos[0]
    return family, kind, proto, address


class NetflowSource:
    """Receives export datagrams on ``config.listen``; inert until :meth:`start`."""

    #: the daemon starts it before the state is restored (UDP cannot wait in the kernel's
    #: buffer for seconds; the proven exporters come back once the state is in place)
    starts_before_state = True

    __slots__ = (
        "_allowed",
        "_clock",
        "_exporters",
        "_held",
        "_inode",
        "_lanes",
        "_last_error_log",
        "_queue_size",
        "_queued_by",
        "_ready",
        "_ready_event",
        "_sink",
        "_slots",
        "_sock",
        "_task",
        "_wake_slots",
        "bound",
        "config",
        "decoder",
        "decoder_stats",
        "kernel_drops",
        "name",
        "queued",
        "receive_buffer",
        "stats",
    )

    def __init__(
        self,
        config: NetflowSourceConfig,
        name: str | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.name = name or f"netflow:{config.listen}"
        self.stats = SourceStats(self.name)
        self.decoder = NetflowDecoder(
            max_templates=config.max_templates,
            template_timeout=config.template_timeout,
            max_pending=config.max_pending_datagrams,
            pending_timeout=config.pending_timeout,
        )
        self.decoder_stats = self.decoder.stats
        self._clock = clock
        #: the allowed exporters as (first, last) address numbers, IPv4 and IPv6; None: any
        self._allowed: tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]] | None = (
            _address_ranges(config.allowed_exporters)
            if config.allowed_exporters is not None
            else None
        )
        #: exporter address text -> allowed (bounded cache; parsing per datagram is costly)
        self._exporters: BoundedCache[str, bool] = BoundedCache(_EXPORTER_CACHE)
        #: datagrams read and not yet decoded (at most ``config.queue_size`` slots), in a lane
        #: per exporter address, in the order the lanes are served (see :meth:`take`); a lane
        #: leaves when empty, so the dict is empty exactly when nothing waits
        self._lanes: dict[str, collections.deque[Datagram]] = {}
        #: datagrams in the lanes
        self.queued = 0
        self._queue_size = max(1, config.queue_size)
        #: queue slots taken in all and per exporter address (see :meth:`_readable`)
        self._slots = 0
        self._queued_by: dict[str, int] = {}
        #: set when datagrams are queued for the decoder task (when at least this many
        #: queue slots are taken: more than one while it gathers a batch, see _decode_loop)
        self._ready_event: asyncio.Event | None = None
        self._wake_slots = 1
        #: datagrams taken off the queue and decoded but not yet handed to the engine (they
        #: wait for more up to _SUBMIT_DELAY): still queued as far as anyone outside can tell
        self._held = 0
        self._sock: socket.socket | None = None
        self._task: asyncio.Task[None] | None = None
        self._sink: RecordSink | None = None
        self._ready = False
        self._last_error_log = 0.0
        #: the address actually bound (port 0 picks one) and the kernel's receive buffer
        self.bound: tuple[str, int] | None = None
        self.receive_buffer = 0
        #: (udp table, socket inode) for reading the kernel's drop counter
        self._inode: tuple[str, int] | None = None
        #: receive-buffer overflows the kernel counted for our socket (read on scrape)
        self.kernel_drops = 0

    # -- Source protocol --------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready and self._task is not None and not self._task.done()

    async def start(self, sink: RecordSink) -> None:
        if self._task is not None:
            raise RuntimeError(f"{self.name} already started")
        self._sink = sink
        self._ready_event = asyncio.Event()
        loop = asyncio.get_running_loop()
        sock = self._bind()
        try:
            loop.add_reader(sock.fileno(), self._readable)
        except (OSError, ValueError) as exc:
            sock.close()
            raise SourceError(f"{self.name}: {exc}", retriable=False) from exc
        self._sock = sock
        self._task = loop.create_task(self._decode_loop(), name=f"egressd-{self.name}")
        self._ready = True
        configured = self.config.receive_buffer
        log.info(
            "%s: listening on %s:%d (receive buffer: configured %d bytes, effective %d bytes "
            "as the kernel reports it; Linux doubles the size asked for, for its bookkeeping)",
            self.name,
            *(self.bound or ("?", 0)),
            configured,
            self.receive_buffer,
        )
        if self.receive_buffer < configured:
            log.warning(
                "%s: receive buffer: effective %d bytes is below the configured %d bytes: "
                "the kernel caps it at net.core.rmem_max (raise that sysctl to get it)",
                self.name,
                self.receive_buffer,
                configured,
            )

    def _bind(self) -> socket.socket:
        family, kind, proto, address = resolve_listen(self.name, self.config.listen)
        sock = socket.socket(family, kind, proto)
        try:
            # No SO_REUSEADDR: for UDP it lets a second process bind the same port, and the
            # kernel then hands that one every datagram (a second egressd started by hand
            # would blind the running one). UDP has no TIME_WAIT: a restart rebinds at once.
            if family == socket.AF_INET6 and ipaddress.ip_address(address[0]).is_unspecified:
                # "[::]:2055" takes IPv4 exporters too (they arrive IPv4-mapped).
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            with contextlib.suppress(OSError):
                # The kernel caps this at net.core.rmem_max; what we got is logged.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.receive_buffer)
            self.receive_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            sock.bind(address)
            sock.setblocking(False)
        except OSError as exc:
            sock.close()
            raise SourceError(
                f"{self.name}: cannot listen on {self.config.listen}: {exc.strerror or exc}",
                retriable=False,
            ) from exc
        bound = sock.getsockname()
        self.bound = (str(bound[0]), int(bound[1]))
        table = "/proc/net/udp6" if family == socket.AF_INET6 else "/proc/net/udp"
        self._inode = (table, os.fstat(sock.fileno()).st_ino)
        return sock

    async def stop(self) -> None:
        """Close the socket, decode and submit what is already queued, then stop."""
        self._ready = False
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                asyncio.get_running_loop().remove_reader(sock.fileno())
            sock.close()
        task, self._task = self._task, None
        if task is None:
            return
        if not task.done():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    while (self._lanes or self._held) and not task.done():
                        await asyncio.sleep(0.005)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def wait(self) -> None:
        """Returns or raises only when the decoder task died; the daemon then exits."""
        if self._task is None:
            return
        task = self._task
        await asyncio.wait([task])
        if task is self._task:
            task.result()
            raise SourceError(f"{self.name}: decoder stopped", retriable=False)

    def checkpoint_position(self) -> dict[str, list[str]]:
        """UDP cannot be replayed; what the state file keeps is which exporters are proven,
        so a restart does not leave every exporter unproven for half a minute."""
        return {"proven_exporters": self.decoder.saved_proven()}

    async def checkpoint_saved(self, position: Any) -> None:
        return None

    def restore_position(self, position: Any) -> None:
        if isinstance(position, dict):
            taken = self.decoder.restore_proven(position.get("proven_exporters"))
            if taken:
                log.info("%s: %d exporters proven before the restart", self.name, taken)

    def extra_metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """(name, labels, value) samples; names ending in ``_total`` are counters."""
        source = {"source": self.name}
        stats = self.decoder_stats
        if self._inode is not None and self._sock is not None:
            # A closed socket leaves the table: keep the last value read.
            drops = kernel_drops(*self._inode)
            if drops is not None:
                self.kernel_drops = drops
        samples: list[tuple[str, dict[str, str], float]] = [
            ("egressd_netflow_templates", source, float(stats.template_count)),
            ("egressd_netflow_template_records_total", source, float(stats.templates)),
            ("egressd_netflow_exporter_restarts_total", source, float(stats.exporter_restarts)),
            ("egressd_netflow_proven_exporters", source, float(self.decoder.proven_exporters)),
            (
                "egressd_netflow_option_domains_evicted_total",
                source,
                float(stats.option_domains_evicted),
            ),
            ("egressd_netflow_pending_sets", source, float(stats.pending_count)),
            (
                "egressd_netflow_queue_length",
                source,
                float(self.queued + self._held),
            ),
            ("egressd_netflow_receive_buffer_bytes", source, float(self.receive_buffer)),
            ("egressd_netflow_receive_buffer_drops_total", source, float(self.kernel_drops)),
        ]
        for outcome, count in (
            ("buffered", stats.pending_sets),
            ("decoded", stats.pending_decoded),
            ("dropped", stats.pending_dropped),
            ("expired", stats.pending_expired),
        ):
            samples.append(
                ("egressd_netflow_pending_total", {**source, "outcome": outcome}, float(count))
            )
        for event, count in (
            ("expired", stats.templates_expired),
            ("evicted", stats.templates_evicted),
            ("withdrawn", stats.templates_withdrawn),
            ("restart", stats.templates_restart),
        ):
            samples.append(
                (
                    "egressd_netflow_templates_removed_total",
                    {**source, "reason": event},
                    float(count),
                )
            )
        for reason, count in sorted(stats.set_errors.items()):
            samples.append(
                ("egressd_netflow_set_errors_total", {**source, "reason": reason}, float(count))
            )
        return samples

    # -- receive path (socket callback) -------------------------------------------------------

    def _readable(self) -> int:
        """Read what the socket holds, up to :data:`_BURST` datagrams (the loop's callback);
        how many were read."""
        sock = self._sock
        if sock is None:
            return 0
        recvfrom = sock.recvfrom
        lanes = self._lanes
        lane_of = lanes.get
        room = self._queue_size - self._slots
        allowed_of = self._exporters.get
        stats = self.stats
        # The queue's last quarter goes only to exporters holding less than an equal share
        # of the rest: one exporter (a looping one, or a flood from an allowed address) can
        # fill no more than three quarters, and the others' datagrams still get in. Once
        # some exporters are proven (see the decoder), only to those: a flood from many
        # forged addresses, each holding little, would fill it too.
        queued_by = self._queued_by
        decoder = self.decoder
        reserve = self._queue_size // 4
        alone = self._queue_size - reserve
        now = self._clock()  # one receive time for the burst: it is read in microseconds
        read = added = 0
        try:
            for _ in range(_BURST):
                data, addr = recvfrom(_MAX_DATAGRAM)
                read += 1
                host = str(addr[0])
                allowed = allowed_of(host)
                if allowed is None:
                    allowed = self._check_exporter(host)
                size = len(data)
                slots = 1 if size <= SLOT_BYTES else -(-size // SLOT_BYTES)
                if not allowed:
                    stats.drop("exporter_not_allowed")
                elif room - slots >= reserve:
                    lane = lane_of(host)
                    if lane is None:
                        lane = lanes[host] = collections.deque()
                    lane.append((data, host, now))
                    added += 1
                    room -= slots
                    queued_by[host] = queued_by.get(host, 0) + slots
                elif room >= slots:
                    held = queued_by.get(host, 0)
                    holders = len(queued_by)
                    proven = decoder.proven_exporters
                    if proven:  # (an equal share among those that may be proven)
                        if not decoder.is_proven(_exporter_text(host)):
                            stats.drop("exporter_not_proven")
                            continue
                        holders = min(holders, proven)
                    if held * holders >= alone:
                        stats.drop("exporter_over_share")
                    else:
                        lane = lane_of(host)
                        if lane is None:
                            lane = lanes[host] = collections.deque()
                        lane.append((data, host, now))
                        added += 1
                        room -= slots
                        queued_by[host] = held + slots
                else:
                    stats.drop("queue_full")
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self.stats.drop("socket_error")
        finally:
            stats.units += read
            self._slots = self._queue_size - room
            self.queued += added
            if lanes and self._slots >= self._wake_slots and self._ready_event is not None:
                self._ready_event.set()
        return read

    def drain(self) -> None:
        """Read what the socket holds (up to :data:`_DRAIN_BURSTS` bursts) into the queue."""
        readable = self._readable
        for _ in range(_DRAIN_BURSTS):
            if readable() < _BURST:
                return

    def take(self, count: int) -> list[Datagram]:
        """Up to ``count`` datagrams off the queue: each exporter waiting gets an equal turn
        (its oldest first), and the lanes served go to the back of the rotation.

        Before, the queue was one line, first in, first out: while one exporter flooded, every
        other exporter's datagram waited behind the flood's three quarters of the queue
        (7,500 datagrams at the default, about a second on loopback). Now it waits for one
        turn of the exporters waiting: the next batch, while a single exporter floods."""
        lanes = self._lanes
        queued_by = self._queued_by
        items: list[Datagram] = []
        taken = 0
        while count > 0 and lanes:
            turn = count // len(lanes) or 1
            for host in list(itertools.islice(lanes, count)):
                lane = lanes.pop(host)
                if len(lane) <= turn:
                    served = list(lane)
                else:
                    popleft = lane.popleft
                    served = [popleft() for _ in range(turn)]
                    lanes[host] = lane  # to the back of the rotation
                items += served
                count -= len(served)
                slots = 0
                for data, _host, _received in served:
                    size = len(data)
                    slots += 1 if size <= SLOT_BYTES else -(-size // SLOT_BYTES)
                taken += slots
                left = queued_by[host] - slots
                if left:
                    queued_by[host] = left
                else:
                    del queued_by[host]
                if count <= 0:
                    break
        self._slots -= taken
        self.queued -= len(items)
        return items

    def _check_exporter(self, host: str) -> bool:
        """Whether ``host`` (not in the cache) is allowed; cached. Each address of a flood
        from forged ones comes here: parsed with ``inet_pton`` and compared as a number, it
        costs ~1 us (``ipaddress`` and its networks' ``in``: ~6 us, 13 times a cached one)."""
        allowed = True
        if self._allowed is not None:
            exporter = _exporter_text(host)
            try:
                value = int.from_bytes(socket.inet_pton(socket.AF_INET, exporter), "big")
                ranges = self._allowed[0]
            except OSError:
                try:
                    value = int.from_bytes(socket.inet_pton(socket.AF_INET6, exporter), "big")
                    ranges = self._allowed[1]
                except OSError:
                    ranges = ()
            allowed = False
            for first, last in ranges:
                if first <= value <= last:
                    allowed = True
                    break
        return self._exporters.store(host, allowed)

    # -- decoder task ------------------------------------------------------------------------

    async def _decode_loop(self) -> None:
        queue = self._lanes  # empty when nothing waits
        ready = self._ready_event
        sink = self._sink
        assert ready is not None and sink is not None
        take = self.take
        drain = self.drain
        decode = self.decoder.decode_columns_batch
        submit = columns_submitter(sink)
        stats = self.stats
        batch: list[FlowColumns] = []
        flows = 0
        held = 0  # datagrams decoded into ``batch`` (done once it is submitted)
        due = 0.0  # when ``batch`` goes to the sink even if it stays small
        # datagrams gathered before decoding (queue slots: a quarter of a small queue)
        gather = max(1, min(BATCH_DATAGRAMS, self._queue_size // 4))
        gathering = False  # waited for more datagrams since the last decode

        def flush() -> None:
            nonlocal batch, flows, held
            if batch:
                stats.records += flows
                submitted, batch, flows = batch, [], 0
                submit(submitted)
            held = self._held = 0

        while True:
            if not queue:
                ready.clear()
                if held:
                    wait = due - time.monotonic()
                    if wait <= 0:
                        flush()
                        continue
                    try:
                        await asyncio.wait_for(ready.wait(), wait)
                    except TimeoutError:
                        flush()
                        continue
                else:
                    await ready.wait()
                continue
            now = time.monotonic()
            if not held and not gathering:
                due = now + _SUBMIT_DELAY
            if self._slots < gather and now < due and not gathering:
                # A few datagrams wait: gather up to a batch of them (or until the flows
                # are due) before decoding. Decoding and waking this task per datagram, as
                # a collector keeping up with a modest rate did, cost more than the flows'
                # own decoding (numpy's fixed cost a call). One wait per decode: what is
                # queued when it ends is decoded, whatever the clock says.
                gathering = True
                self._wake_slots = gather
                ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), due - now)
                self._wake_slots = 1
                continue
            gathering = False
            # What came since the last batch goes to the queue, by its share, before the
            # kernel's buffer fills (the loop's callback runs only once the queue is empty)
            drain()
            items = take(BATCH_DATAGRAMS)
            held += len(items)
            self._held = held
            # one decoding for the lot: sets of one template are read together
            columns, failed = decode(
                [(data, _exporter_text(host), received) for data, host, received in items]
            )
            for index, exc in failed:
                host = items[index][1]
                if isinstance(exc, DecodeError):
                    stats.failed(exc.reason)
                    self._log_error("cannot decode a datagram from %s: %s", host, exc)
                else:  # a decoder bug loses its datagram, never the collector
                    stats.failed("internal_error")
                    self._log_error("decoder failed on a datagram from %s: %r", host, exc)
            if len(columns):
                batch.append(columns)
                flows += len(columns)
            if flows >= _SUBMIT_BUSY_FLOWS:
                flush()
            if queue:
                # Reading the socket between batches keeps the queue from emptying under a
                # flood: flows decoded wait at most _SUBMIT_DELAY all the same (a flood of
                # datagrams giving none held them for as long as it lasted), and a turn of
                # the loop per batch for everything else on it (HTTP, state saves, watchdog)
                if held and time.monotonic() >= due:
                    flush()
                await asyncio.sleep(0)
            elif flows >= _SUBMIT_FLOWS:
                # Enough for a batch: let the socket callback run once; when nothing more
                # came (a collector keeping up), submit now, else decode on into a bigger one
                await asyncio.sleep(0)
                if not queue or time.monotonic() >= due:
                    flush()

    def _log_error(self, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_EVERY:
            self._last_error_log = now
            log.warning(
                "%s: " + message + " (further errors counted, logged every %ds)",
                self.name,
                *args,
                int(_ERROR_LOG_EVERY),
            )
