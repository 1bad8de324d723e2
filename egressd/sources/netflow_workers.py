"""NetFlow/IPFIX on every core: ``[[sources.netflow]] workers = N`` (N > 1).

The daemon binds N UDP sockets on the listen address as one SO_REUSEPORT group and attaches a
classic BPF program that picks the socket from a hash of the exporter's address, so an
exporter (and its templates) always lands on the same socket. Each socket is handed to a
worker process (:mod:`egressd.sources.netflow_worker`) that decodes, classifies, labels and
sums into interval partials; the daemon applies them to its engine in arrival order, which
gives the sums one process would have (see :meth:`egressd.pipeline.Engine.apply_partials`).

The daemon keeps every socket open: a worker that dies is started again on the same socket,
so its exporters do not move and what arrived meanwhile waits in the socket's buffer. The new
worker has no templates: data sets wait (``max_pending_datagrams``, ``pending_timeout``)
until each exporter re-sends its templates, as after an egressd restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import pickle
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import orjson

from egressd.config import Config, NetflowSourceConfig
from egressd.decode.netflow.proven import MAX_PROVEN, saved_exporters
from egressd.enrich import DestinationLabels
from egressd.errors import DecodeError, SourceError
from egressd.model import FlowRecord
from egressd.partials import decode_partials
from egressd.pipeline import Partial
from egressd.sources.netflow import kernel_drops, resolve_listen
from egressd.sources.netflow_worker import (
    FRAME,
    KIND_CONFIG,
    KIND_PARTIALS,
    KIND_PROVEN,
    KIND_STOP,
    split_partials_frame,
)
from egressd.stats import SourceStats

log = logging.getLogger("egressd.netflow")

#: Linux: attach a classic BPF program that picks the socket of a SO_REUSEPORT group
SO_ATTACH_REUSEPORT_CBPF = 51
#: classic BPF offset of the network header (SKF_NET_OFF) in the program's packet view
_NET = 0xFFF00000
#: restart delays after a worker died: doubling from the first to the last
_RESTART_DELAYS = (0.2, 10.0)
#: a worker that sent nothing for this long (it reports every 0.25 s) is killed and restarted
SILENT_LIMIT = 20.0
#: a worker that ran this long before dying starts again without delay
_HEALTHY_RUN = 30.0
_INTERN_LIMIT = 100_000
#: a decoder metric sample: (name, label items but ``source``)
_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


class PartialsSink(Protocol):
    """Where the workers' counts go (the daemon's engine feed)."""

    def submit(self, records: Sequence[FlowRecord]) -> None: ...

    def apply_partials(
        self, partials: Sequence[Partial], event_time: float | None, counts: Mapping[str, int]
    ) -> None: ...


def steering_program(sockets: int) -> bytes:
    """Classic BPF: the index of the socket for the datagram's source address.

    IPv4: the source address; IPv6: its last 32 bits. A multiplicative hash spreads
    addresses that differ only in their low bits (10.0.0.4, 10.0.0.8, ...) over the group.
    """
    program = [
        (0x30, 0, 0, _NET),  # ldb [net + 0]        version and header length
        (0x74, 0, 0, 4),  # rsh #4                 the IP version
        (0x15, 0, 2, 6),  # jeq #6, next, +2
        (0x20, 0, 0, _NET + 20),  # ld [net + 20]  IPv6 source, last word
        (0x05, 0, 0, 1),  # ja +1
        (0x20, 0, 0, _NET + 12),  # ld [net + 12]  IPv4 source
        (0x24, 0, 0, 0x9E3779B1),  # mul #golden ratio
        (0x74, 0, 0, 16),  # rsh #16               the well mixed upper half
        (0x94, 0, 0, sockets),  # mod #sockets
        (0x16, 0, 0, 0),  # ret a
    ]
    return b"".join(struct.pack("HBBI", *instruction) for instruction in program)


def steered_socket(exporter: str, sockets: int) -> int | None:
    """The index :func:`steering_program` picks for datagrams from ``exporter`` (an address
    text), or None when it is not one."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            packed = socket.inet_pton(family, exporter)
        except OSError:
            continue
        word = int.from_bytes(packed[-4:], "big")
        return (((word * 0x9E3779B1) & 0xFFFF_FFFF) >> 16) % sockets
    return None


def attach_steering(sock: socket.socket, sockets: int) -> None:
    code = ctypes.create_string_buffer(steering_program(sockets))
    fprog = struct.pack("HL", len(code.raw) // 8, ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


class _Worker:
    __slots__ = (
        "base",
        "dead",
        "dropped",
        "index",
        "inode",
        "kernel_drops",
        "last",
        "process",
        "proven",
        "reader",
        "restarts",
        "seen",
        "sock",
        "started",
        "totals",
        "up",
        "writer",
    )

    def __init__(self, index: int, sock: socket.socket, inode: tuple[str, int]) -> None:
        self.index = index
        self.sock = sock
        self.inode = inode
        self.kernel_drops = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.restarts = 0
        self.started = 0.0
        self.up = False
        self.seen = False
        self.dead: asyncio.Event = asyncio.Event()
        #: the running process's cumulative counters (they start at 0 with each process)
        self.last: dict[str, Any] = {}
        #: counters over every process of this worker
        self.totals: dict[str, int] = {"units": 0, "records": 0, "errors": 0}
        #: decoder counters (``*_total`` samples) of the processes before the running one
        self.base: dict[_SampleKey, float] = {}
        self.dropped: dict[str, int] = {}
        #: the exporters proven in this worker (its process's last report, or restored)
        self.proven: list[str] = []


class NetflowWorkers:
    """One ``[[sources.netflow]]`` served by ``workers`` processes; inert until :meth:`start`."""

    __slots__ = (
        "_config",
        "_fatal",
        "_intern",
        "_ready",
        "_restored",
        "_sink",
        "_stopping",
        "_tasks",
        "_workers",
        "bound",
        "config",
        "name",
        "receive_buffer",
        "stats",
    )

    def __init__(self, config: NetflowSourceConfig, name: str, full: Config) -> None:
        self.config = config
        self.name = name
        self._config = full
        self.stats = SourceStats(name)
        self._workers: list[_Worker] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._sink: PartialsSink | None = None
        self._ready = False
        self._stopping = False
        self._fatal: asyncio.Future[None] | None = None
        self._intern: dict[str, DestinationLabels] = {}
        #: proven exporters a state file listed, until the workers exist
        self._restored: list[str] = []
        self.bound: tuple[str, int] | None = None
        self.receive_buffer = 0

    # -- Source protocol --------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready and all(w.seen for w in self._workers)

    async def start(self, sink: Any) -> None:
        if self._workers:
            raise RuntimeError(f"{self.name} already started")
        self._sink = sink
        self._fatal = asyncio.get_running_loop().create_future()
        sockets = self._bind_group()
        for index, (sock, inode) in enumerate(sockets):
            self._workers.append(_Worker(index, sock, inode))
        for exporter in self._restored:  # each to the worker its datagrams reach
            steered = steered_socket(exporter, len(self._workers))
            if steered is not None and len(self._workers[steered].proven) < MAX_PROVEN:
                self._workers[steered].proven.append(exporter)
        self._restored = []
        loop = asyncio.get_running_loop()
        for worker in self._workers:
            self._tasks.append(
                loop.create_task(
                    self._supervise(worker), name=f"egressd-{self.name}-w{worker.index}"
                )
            )
        self._ready = True
        log.info(
            "%s: listening on %s:%d with %d workers (receive buffer: %d bytes per worker)",
            self.name,
            *(self.bound or ("?", 0)),
            len(self._workers),
            self.receive_buffer,
        )

    def _bind_group(self) -> list[tuple[socket.socket, tuple[str, int]]]:
        count = self.config.workers
        family, kind, proto, address = resolve_listen(self.name, self.config.listen)
        table = "/proc/net/udp6" if family == socket.AF_INET6 else "/proc/net/udp"
        out: list[tuple[socket.socket, tuple[str, int]]] = []
        try:
            if self.bound is None and address[1] != 0:
                # A socket without SO_REUSEPORT cannot bind a port in use: this group would
                # otherwise join another process's group on it and take part of its datagrams.
                with socket.socket(family, kind, proto) as probe:
                    probe.bind(address)
            for _ in range(count):
                sock = socket.socket(family, kind, proto)
                out.append((sock, (table, os.fstat(sock.fileno()).st_ino)))
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6 and ipaddress.ip_address(address[0]).is_unspecified:
                    with contextlib.suppress(OSError):
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.receive_buffer)
                self.receive_buffer = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
                sock.bind(
                    address if self.bound is None else (address[0], self.bound[1], *address[2:])
                )
                if self.bound is None:
                    bound = sock.getsockname()
                    self.bound = (str(bound[0]), int(bound[1]))
            attach_steering(out[0][0], count)
        except OSError as exc:
            for sock, _inode in out:
                sock.close()
            raise SourceError(
                f"{self.name}: cannot listen on {self.config.listen} with {count} workers: "
                f"{exc.strerror or exc}",
                retriable=False,
            ) from exc
        return out

    async def stop(self) -> None:
        """Ask every worker for what it counted, apply it, then close the sockets."""
        self._ready = False
        self._stopping = True
        for worker in self._workers:
            if worker.writer is not None and worker.up:
                with contextlib.suppress(OSError, RuntimeError):
                    worker.writer.write(FRAME.pack(0, KIND_STOP))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(10.0):
                await asyncio.gather(*(w.dead.wait() for w in self._workers if w.up))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for worker in self._workers:
            self._reap(worker, kill=True)
            worker.sock.close()

    async def wait(self) -> None:
        """Returns or raises only when workers cannot be started; the daemon then exits."""
        if self._fatal is not None:
            await self._fatal

    def checkpoint_position(self) -> dict[str, list[str]]:
        """UDP cannot be replayed; the state file keeps which exporters the workers have
        proven, as the single-process source does (see there)."""
        if not self._workers:
            return {"proven_exporters": list(self._restored)}
        return {"proven_exporters": [e for worker in self._workers for e in worker.proven]}

    async def checkpoint_saved(self, position: Any) -> None:
        return None

    def restore_position(self, position: Any) -> None:
        """Hand each worker the proven exporters whose datagrams reach it (at most
        MAX_PROVEN each), before it decodes its first datagram."""
        if isinstance(position, dict):
            limit = MAX_PROVEN * self.config.workers
            self._restored = saved_exporters(position.get("proven_exporters"), limit)
            if self._restored:
                log.info(
                    "%s: %d exporters proven before the restart", self.name, len(self._restored)
                )

    def reconfigure(self, config: Config) -> None:
        """A reloaded configuration: every worker counts with it from now on."""
        self._config = config
        payload = pickle.dumps((config, self.config))
        for worker in self._workers:
            if worker.writer is not None and worker.up:
                with contextlib.suppress(OSError, RuntimeError):
                    worker.writer.write(FRAME.pack(len(payload), KIND_CONFIG) + payload)

    # -- workers --------------------------------------------------------------------------------

    async def _supervise(self, worker: _Worker) -> None:
        delay = _RESTART_DELAYS[0]
        while True:
            try:
                await self._run_once(worker)
            except OSError as exc:
                if self._fatal is not None and not self._fatal.done():
                    self._fatal.set_exception(
                        SourceError(f"{self.name}: cannot start worker {worker.index}: {exc}")
                    )
                return
            if self._stopping:
                return
            worker.restarts += 1
            ran = time.monotonic() - worker.started
            delay = _RESTART_DELAYS[0] if ran >= _HEALTHY_RUN else delay
            log.warning(
                "%s: worker %d stopped (exit status %s); starting it again in %.1fs on the "
                "same socket (its exporters' templates are learned again)",
                self.name,
                worker.index,
                worker.process.returncode if worker.process is not None else "?",
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RESTART_DELAYS[1])

    async def _run_once(self, worker: _Worker) -> None:
        parent, child = socket.socketpair()
        try:
            worker.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "egressd.sources.netflow_worker",
                    str(worker.sock.fileno()),
                    str(child.fileno()),
                    f"worker={worker.index}",
                ],
                pass_fds=(worker.sock.fileno(), child.fileno()),
                stdin=subprocess.DEVNULL,
            )
        except OSError:
            parent.close()
            raise
        finally:
            child.close()
        worker.started = time.monotonic()
        worker.dead.clear()
        for key, value in _samples(worker.last).items():  # the new process counts from 0
            if key[0].endswith("_total"):
                worker.base[key] = worker.base.get(key, 0.0) + value
        worker.last = {}
        reader, writer = await asyncio.open_unix_connection(sock=parent, limit=1 << 20)
        worker.reader, worker.writer = reader, writer
        payload = pickle.dumps((self._config, self.config))
        writer.write(FRAME.pack(len(payload), KIND_CONFIG) + payload)
        proven = orjson.dumps(worker.proven)
        writer.write(FRAME.pack(len(proven), KIND_PROVEN) + proven)
        worker.up = True
        try:
            while True:
                try:
                    async with asyncio.timeout(SILENT_LIMIT):
                        head = await reader.readexactly(FRAME.size)
                        size, kind = FRAME.unpack(head)
                        body = await reader.readexactly(size)
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                except TimeoutError:
                    # Stuck (or stopped): its exporters would be lost without a sign of it.
                    log.warning(
                        "%s: worker %d sent nothing for %ds: killed",
                        self.name,
                        worker.index,
                        int(SILENT_LIMIT),
                    )
                    with contextlib.suppress(OSError):
                        worker.process.kill()
                    break
                if kind == KIND_PARTIALS:
                    self._apply(worker, body)
        finally:
            worker.up = False
            worker.reader = worker.writer = None
            writer.close()
            await asyncio.to_thread(self._reap, worker, False)
            worker.dead.set()

    def _reap(self, worker: _Worker, kill: bool) -> None:
        process = worker.process
        if process is None or process.returncode is not None:
            return
        try:
            process.wait(0.5 if kill else 5.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def _apply(self, worker: _Worker, body: bytes) -> None:
        """One batch from a worker: its partials to the engine, its counters to ours."""
        try:
            header, blob = split_partials_frame(body)
            partials = decode_partials(blob, self._config.detection.interval, intern=self._intern)
        except (ValueError, DecodeError) as exc:
            self.stats.failed("bad_worker_batch")
            log.error("%s: worker %d sent an unusable batch: %s", self.name, worker.index, exc)
            return
        if len(self._intern) > _INTERN_LIMIT:
            self._intern.clear()
        worker.seen = True
        last = worker.last
        stats = self.stats
        for key in ("units", "records"):
            delta = int(header.get(key, 0)) - int(last.get(key, 0))
            worker.totals[key] += delta
        stats.units += int(header.get("units", 0)) - int(last.get("units", 0))
        stats.records += int(header.get("records", 0)) - int(last.get("records", 0))
        for field, counter in (("errors", stats.decode_errors), ("dropped", stats.dropped)):
            before = last.get(field, {})
            for reason, count in dict(header.get(field, {})).items():
                delta = int(count) - int(before.get(reason, 0))
                if delta:
                    counter[reason] += delta
                    if field == "errors":
                        worker.totals["errors"] += delta
                    else:
                        worker.dropped[reason] = worker.dropped.get(reason, 0) + delta
        engine_before = last.get("engine", {})
        counts = {
            name: int(value) - int(engine_before.get(name, 0))
            for name, value in dict(header.get("engine", {})).items()
        }
        worker.last = header
        if "proven" in header:  # sent when it changed
            worker.proven = saved_exporters(header["proven"])
        event_time = header.get("event_time")
        assert self._sink is not None
        self._sink.apply_partials(
            partials, float(event_time) if event_time is not None else None, counts
        )

    # -- metrics ----------------------------------------------------------------------------------

    def extra_metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """(name, labels, value) samples; names ending in ``_total`` are counters."""
        source = {"source": self.name}
        samples: list[tuple[str, dict[str, str], float]] = [
            ("egressd_netflow_workers", source, float(len(self._workers))),
            ("egressd_netflow_receive_buffer_bytes", source, float(self.receive_buffer)),
        ]
        buffer_drops = 0
        decoder: dict[_SampleKey, float] = {}
        for worker in self._workers:
            label = {**source, "worker": str(worker.index)}
            if worker.sock.fileno() != -1:
                drops = kernel_drops(*worker.inode)
                if drops is not None:
                    worker.kernel_drops = drops
            buffer_drops += worker.kernel_drops
            for key, value in worker.base.items():
                decoder[key] = decoder.get(key, 0.0) + value
            for key, value in _samples(worker.last).items():
                if worker.up or key[0].endswith("_total"):  # a dead worker holds nothing
                    decoder[key] = decoder.get(key, 0.0) + value
            samples += [
                ("egressd_netflow_worker_up", label, 1.0 if worker.up else 0.0),
                ("egressd_netflow_worker_restarts_total", label, float(worker.restarts)),
                ("egressd_netflow_worker_received_total", label, float(worker.totals["units"])),
                ("egressd_netflow_worker_records_total", label, float(worker.totals["records"])),
                (
                    "egressd_netflow_worker_decode_errors_total",
                    label,
                    float(worker.totals["errors"]),
                ),
                (
                    "egressd_netflow_worker_dropped_total",
                    {**label, "reason": "receive_buffer"},
                    float(worker.kernel_drops),
                ),
            ]
            for reason, count in sorted(worker.dropped.items()):
                samples.append(
                    ("egressd_netflow_worker_dropped_total", {**label, "reason": reason}, count)
                )
        samples.append(("egressd_netflow_receive_buffer_drops_total", source, float(buffer_drops)))
        for (name, labels), value in sorted(decoder.items()):
            samples.append((name, {**source, **dict(labels)}, value))
        return samples


def _samples(header: Mapping[str, Any]) -> dict[_SampleKey, float]:
    """A worker's decoder metric samples by (name, labels but ``source``)."""
    out: dict[_SampleKey, float] = {}
    for sample in header.get("samples", ()):
        try:
            name, labels, value = sample
            key = (
                str(name),
                tuple(sorted((str(k), str(v)) for k, v in dict(labels).items() if k != "source")),
            )
            out[key] = out.get(key, 0.0) + float(value)
        except (TypeError, ValueError):
            continue
    return out
