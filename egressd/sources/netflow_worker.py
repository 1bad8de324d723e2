"""One NetFlow/IPFIX worker process: decode, classify, label and sum into interval partials.

Started by :class:`egressd.sources.netflow_workers.NetflowWorkers` as
``python -m egressd.sources.netflow_worker UDP_FD CONTROL_FD worker=INDEX``: the UDP socket
is one member of the parent's SO_REUSEPORT group (the parent keeps it open, so the exporters
it steers here stay here across a restart); the control socket is a stream to the parent.

Frames on the control stream are ``!IB`` (payload length, kind) then the payload. The parent
sends the configuration (a pickle of ``(Config, NetflowSourceConfig)``; a parent is trusted by
its own child) first and again on every reload, and a stop request at shutdown. The worker
sends, every :data:`FLUSH_EVERY` seconds, what it counted: a header (orjson: event time,
cumulative counters and, when they changed, its proven exporters) and an interval partials
batch (:func:`egressd.partials.encode_partials`). Right after the first configuration the
parent sends the exporters proven before (orjson list of address texts): those a state file
listed, or a previous process of this worker reported.
The worker exits when the parent asks, or when the control stream ends (the parent died).
"""

from __future__ import annotations

import gc
import logging
import math
import pickle
import selectors
import signal
import socket
import struct
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import orjson

from egressd.clock import SteadyWall
from egressd.columns import FlowColumns
from egressd.config import Config, NetflowSourceConfig
from egressd.enrich import DestinationLabeler
from egressd.enrich.labeler import CompositeLabeler, LoadedFile
from egressd.errors import DecodeError
from egressd.gctune import settle_long_lived
from egressd.partials import PartialCounter, encode_partials
from egressd.pipeline import WORKER_COUNTERS
from egressd.replay import build_labeler
from egressd.sources.netflow import BATCH_DATAGRAMS, NetflowSource

FRAME = struct.Struct("!IB")
HEADER = struct.Struct("!I")
#: parent -> worker: the configuration (pickle of (Config, NetflowSourceConfig))
KIND_CONFIG = 1
#: parent -> worker: send what is counted, then exit
KIND_STOP = 2
#: worker -> parent: header + partials batch
KIND_PARTIALS = 3
#: parent -> worker, once after the first configuration: the exporters proven before
KIND_PROVEN = 4
#: seconds between partials batches (event time reaches the parent at most this late)
FLUSH_EVERY = 0.25
#: seconds a stopping worker goes on reading what its socket holds
STOP_DRAIN = 2.0
#: flows decoded before they are counted (as one batch; a partials frame counts the rest)
_COUNT_FLOWS = 1024
#: metrics of the single-process source that belong to the daemon's sockets, not a worker
SOCKET_METRICS = frozenset(
    {
        "egressd_netflow_queue_length",
        "egressd_netflow_receive_buffer_bytes",
        "egressd_netflow_receive_buffer_drops_total",
    }
)


def write_frame(sock: socket.socket, kind: int, payload: bytes) -> None:
    sock.sendall(FRAME.pack(len(payload), kind) + payload)


def _read_exact(sock: socket.socket, size: int) -> bytes | None:
    chunks: list[bytes] = []
    while size:
        chunk = sock.recv(min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> tuple[int, bytes] | None:
    """The next frame, or None when the stream ended."""
    head = _read_exact(sock, FRAME.size)
    if head is None:
        return None
    size, kind = FRAME.unpack(head)
    payload = _read_exact(sock, size) if size else b""
    return None if payload is None else (kind, payload)


def partials_frame(header: dict[str, Any], blob: bytes) -> bytes:
    encoded = orjson.dumps(header)
    return HEADER.pack(len(encoded)) + encoded + blob


def split_partials_frame(payload: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, partials batch) of a KIND_PARTIALS payload; ValueError when malformed."""
    if len(payload) < HEADER.size:
        raise ValueError("short partials frame")
    (size,) = HEADER.unpack_from(payload)
    header = orjson.loads(payload[HEADER.size : HEADER.size + size])
    if not isinstance(header, dict):
        raise ValueError("partials frame header is not an object")
    return header, payload[HEADER.size + size :]


log = logging.getLogger("egressd.netflow.worker")

#: loads changed geo files beside a worker's receive loop, one check at a time
_GEO_LOADER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="egressd-geo")


class Worker:
    """The worker's state: its decoder, its counter and what it has seen."""

    __slots__ = (
        "config",
        "counter",
        "decoder",
        "errors",
        "filter",
        "geo_loading",
        "labeler",
        "next_geo",
        "pending",
        "pending_flows",
        "proven_sent",
        "rebuilding",
        "records",
        "reload_errors",
        "wall",
    )

    def __init__(self, config: Config, netflow: NetflowSourceConfig) -> None:
        # The exporter filter, its cache and the queue with its per-exporter share are the
        # single-process source's own code.
        self.filter = NetflowSource(netflow, "worker")
        self.decoder = self.filter.decoder
        self.config = config
        self.labeler = build_labeler(config)
        self.counter = PartialCounter(config, self.labeler)
        self.pending: list[FlowColumns] = []
        self.pending_flows = 0
        self.records = 0
        #: what the bound on flows' stamps is read from (never stepping back)
        self.wall = SteadyWall()
        self.errors: dict[str, int] = {}
        self.next_geo = time.monotonic() + config.geo.watch_interval
        #: changed geo files being loaded beside the receive loop, and for which labeler
        self.geo_loading: tuple[CompositeLabeler, Future[list[LoadedFile]]] | None = None
        #: a new configuration whose labeler is being built beside the receive loop
        self.rebuilding: tuple[Config, Future[DestinationLabeler]] | None = None
        #: new configurations not taken because their labeler failed to build
        self.reload_errors = 0
        #: the proven exporters the parent last heard of (None: nothing sent yet)
        self.proven_sent: list[str] | None = None

    def reconfigure(self, config: Config) -> None:
        """Start using ``config``: its labeler (which reads every geo file: seconds for a
        large region map, in which the receive loop would not read its socket) is built in
        a thread; :meth:`reconfigure_tick` puts both in use once it is ready. A newer
        configuration arriving meanwhile replaces this one."""
        if self.rebuilding is not None:
            self.rebuilding[1].add_done_callback(_close_built)
        self.rebuilding = (config, _GEO_LOADER.submit(build_labeler, config))

    def reconfigure_tick(self) -> bool:
        """Put the configuration :meth:`reconfigure` was given in use once its labeler is
        built (between two batches); whether it did. A labeler that failed to build keeps
        the configuration in use, as a reload with a broken geo file does."""
        if self.rebuilding is None or not self.rebuilding[1].done():
            return False
        config, building = self.rebuilding
        self.rebuilding = None
        try:
            labeler = building.result()
        except Exception:
            self.reload_errors += 1
            log.exception(
                "reload: the new geo data could not be loaded; keeping the configuration and "
                "geo data in use"
            )
            return False
        self.counter.engine.reconfigure(config, labeler)
        old, self.labeler = self.labeler, labeler
        if isinstance(old, CompositeLabeler):
            old.close()
        self.config = config
        return True

    def geo_tick(self, now: float) -> bool:
        """Every ``geo.watch_interval``: load changed geo files in a thread (a large region
        map takes seconds, which the receive loop would spend not reading its socket); a
        later tick, once they are loaded, puts them in use between two batches. Whether
        this tick put new data in use."""
        changed = False
        if self.geo_loading is not None:
            labeler, loading = self.geo_loading
            if not loading.done():
                return False
            self.geo_loading = None
            try:
                loaded = loading.result()
            except Exception:  # a bug in loading: keep the data in use, check again later
                log.exception("geo data reload failed")
                loaded = []
            if labeler is not self.labeler:  # reconfigured meanwhile: a new labeler
                for item in loaded:
                    item.discard()
            elif labeler.apply_loaded(loaded):
                self.counter.engine.labels_changed()
                changed = True
        if now < self.next_geo:
            return changed
        self.next_geo = now + self.config.geo.watch_interval
        current = self.labeler
        if isinstance(current, CompositeLabeler):
            self.geo_loading = (current, _GEO_LOADER.submit(current.load_changed))
        return changed

    @property
    def units(self) -> int:
        """Datagrams read from the socket."""
        return self.filter.stats.units

    @property
    def dropped(self) -> dict[str, int]:
        """Datagrams read and dropped, by reason (not allowed, over its share, queue full)."""
        return dict(self.filter.stats.dropped)

    @property
    def backlog(self) -> int:
        """Datagrams read and not decoded yet."""
        return self.filter.queued

    def receive(self, sock: socket.socket) -> None:
        """Read what the socket holds into the queue (at most three quarters of it per
        exporter), then decode up to :data:`BATCH_DATAGRAMS` of it and count.

        Before, a worker read 256 datagrams and decoded them, so its socket's buffer was its
        queue: a flood from one exporter kept it full and the kernel dropped whatever came,
        from any exporter (half of a real exporter's datagrams, against one flooding sender
        on the same worker). Reading is ~50x cheaper than decoding, so now the flood waits in
        the queue by its share and its excess is dropped there, counted."""
        source = self.filter
        source._sock = sock
        source.drain()
        items = source.take(BATCH_DATAGRAMS)
        datagrams = [(data, _exporter_text(host), now) for data, host, now in items]
        if datagrams:
            # one decoding for the lot: sets of one template are read together
            columns, failed = self.decoder.decode_columns_batch(datagrams)
            for _index, exc in failed:  # a decoder bug loses its datagram, not the worker
                reason = exc.reason if isinstance(exc, DecodeError) else "internal_error"
                self.errors[reason] = self.errors.get(reason, 0) + 1
            if len(columns):
                self.pending.append(columns)
                self.pending_flows += len(columns)
        if self.pending_flows >= _COUNT_FLOWS:
            self.count()

    def count(self) -> None:
        if self.pending:
            future_limit = self.wall() + self.config.detection.max_clock_ahead
            self.records += self.pending_flows
            batch = FlowColumns.concat(self.pending)
            self.pending = []
            self.pending_flows = 0
            self.counter.count_columns("w", batch, future_limit)

    def frame(self) -> bytes:
        """Everything counted since the last frame, with the cumulative counters."""
        self.count()
        counter = self.counter
        event_time = counter.event_time("w")
        engine = counter.engine.stats
        header: dict[str, Any] = {
            "event_time": event_time if event_time > -math.inf else None,
            "units": self.units,
            "records": self.records,
            "errors": self.errors,
            "dropped": self.dropped,
            "engine": {name: getattr(engine, name) for name in WORKER_COUNTERS},
            # The single-process source's decoder metrics, but for those of its socket.
            "samples": [
                *(
                    [name, labels, value]
                    for name, labels, value in self.filter.extra_metrics()
                    if name not in SOCKET_METRICS
                ),
                ["egressd_netflow_worker_reload_errors_total", {}, float(self.reload_errors)],
            ],
        }
        # The parent saves them in the state file (and hands them to this worker's next
        # process), so a restart does not leave every exporter unproven for half a minute.
        proven = self.decoder.saved_proven()
        if proven != self.proven_sent:
            self.proven_sent = proven
            header["proven"] = proven
        blob = encode_partials(counter.take("w"), self.config.detection.interval)
        return partials_frame(header, blob)


def _close_built(building: Future[DestinationLabeler]) -> None:
    """Close the labeler of a configuration replaced before it was put in use."""
    if not building.cancelled() and building.exception() is None:
        labeler = building.result()
        if isinstance(labeler, CompositeLabeler):
            labeler.close()


def _exporter_text(host: str) -> str:
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return host.partition("%")[0]


def serve(udp: socket.socket, control: socket.socket) -> int:
    """The worker's loop; returns its exit status."""
    threshold = gc.get_threshold()
    try:
        return _serve(udp, control)
    finally:  # as it found them, for a worker run inside another program (tests)
        gc.unfreeze()
        gc.set_threshold(*threshold)


def _serve(udp: socket.socket, control: socket.socket) -> int:
    first = read_frame(control)
    if first is None or first[0] != KIND_CONFIG:
        return 1
    config, netflow = pickle.loads(first[1])
    worker = Worker(config, netflow)
    proven = read_frame(control)  # before any datagram is decoded
    if proven is None or proven[0] != KIND_PROVEN:
        return 1
    worker.decoder.restore_proven(orjson.loads(proven[1]))
    # Its code, configuration and labeler tables (~500,000 objects with a 100,000-network
    # region map) out of every full collection, which stops the receive loop while it runs
    # (see egressd.gctune).
    settle_long_lived()
    udp.setblocking(False)
    selector = selectors.DefaultSelector()
    selector.register(udp, selectors.EVENT_READ, "udp")
    selector.register(control, selectors.EVENT_READ, "control")
    write_frame(control, KIND_PARTIALS, worker.frame())  # "up": the parent counts it ready
    next_flush = time.monotonic() + FLUSH_EVERY
    while True:
        now = time.monotonic()
        # While datagrams are queued, a batch is decoded per turn, the socket read between.
        wait = 0.0 if worker.backlog else max(0.0, next_flush - now)
        readable = False
        for key, _events in selector.select(wait):
            if key.data == "udp":
                readable = True
                continue
            frame = read_frame(control)
            if frame is None:
                return 0  # the parent is gone: nobody to send to
            kind, payload = frame
            if kind == KIND_CONFIG:
                new_config, _netflow = pickle.loads(payload)
                worker.reconfigure(new_config)  # in use from a later flush
            elif kind == KIND_STOP:
                # What the kernel already holds belongs to this run (within a bound: a
                # flood would otherwise keep the worker reading for ever).
                deadline = time.monotonic() + STOP_DRAIN
                while time.monotonic() < deadline:
                    before = worker.units
                    worker.receive(udp)
                    if worker.units == before and not worker.backlog:
                        break
                write_frame(control, KIND_PARTIALS, worker.frame())
                return 0
        if readable or worker.backlog:
            worker.receive(udp)
        now = time.monotonic()
        if now >= next_flush:
            write_frame(control, KIND_PARTIALS, worker.frame())  # counted the old way
            next_flush = now + FLUSH_EVERY
            if worker.reconfigure_tick():
                settle_long_lived()  # the new labeler; the old one collected
            if worker.geo_tick(now):
                settle_long_lived()  # the new tables, out of full collections


def main(argv: list[str]) -> int:
    # The parent decides when a worker stops (it asks over the control stream); a signal
    # to the whole process group (Ctrl-C, systemd's stop) must not lose counted partials.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    udp_fd, control_fd = int(argv[1]), int(argv[2])
    udp = socket.socket(fileno=udp_fd)
    control = socket.socket(fileno=control_fd)
    try:
        return serve(udp, control)
    except (BrokenPipeError, ConnectionResetError):
        return 0
    finally:
        control.close()
        udp.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
