"""What a partials-topic message says besides its partials: Kafka headers and heartbeats.

A partials message carries the rows of one ingest batch that belong to the partition's
groups; its headers say which source partition and offsets the batch covers and how far
that partition's event time had come at its end. A heartbeat carries, per source partition
its sender owns, how far event time has come in what it has produced (and had acknowledged);
with ``partitions`` (how many partitions each source topic has) the detecting side knows
when it has heard from every source partition.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final

import orjson

from egressd.decode.common import check_depth
from egressd.errors import DecodeError

KIND: Final = "egressd-kind"
SOURCE: Final = "egressd-source"  # "topic:partition" of the raw flows
FIRST: Final = "egressd-first-offset"
LAST: Final = "egressd-last-offset"
TIME: Final = "egressd-event-time"
#: the ingest consumer group's generation when the sender was assigned the source partition
GENERATION: Final = "egressd-generation"

PARTIALS: Final = b"partials"
HEARTBEAT: Final = b"heartbeat"

Headers = list[tuple[str, bytes]]


def source_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def partials_headers(
    source: str, first: int, last: int, event_time: float, generation: int | None = None
) -> Headers:
    headers = [
        (KIND, PARTIALS),
        (SOURCE, source.encode()),
        (FIRST, str(first).encode()),
        (LAST, str(last).encode()),
        (TIME, repr(event_time).encode()),
    ]
    if generation is not None:
        headers.append((GENERATION, str(generation).encode()))
    return headers


@dataclass(slots=True)
class BatchInfo:
    """The headers of a partials message."""

    source: str
    first: int
    last: int
    event_time: float
    #: the sender's ingest group generation (None from senders that do not say: not fenced)
    generation: int | None = None


def read_headers(headers: object) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    if isinstance(headers, list | tuple):
        for item in headers:
            if isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], bytes):
                out[str(item[0])] = item[1]
    return out


def batch_info(headers: dict[str, bytes]) -> BatchInfo:
    """The batch a partials message covers; raises DecodeError (``bad_headers``)."""
    try:
        info = BatchInfo(
            headers[SOURCE].decode(),
            int(headers[FIRST]),
            int(headers[LAST]),
            float(headers[TIME]),
            int(headers[GENERATION]) if GENERATION in headers else None,
        )
    except (KeyError, ValueError, UnicodeDecodeError) as exc:
        raise DecodeError("bad_headers", f"partials message headers: {exc!r}") from exc
    # +inf would move the partition's event time past every interval for good
    if info.first < 0 or info.last < info.first or not info.event_time < math.inf:
        raise DecodeError("bad_headers", "partials message with an impossible offset range or time")
    return info


@dataclass(slots=True)
class Heartbeat:
    """How far event time has come per source partition, and how many partitions there are;
    ``generations``: the sender's ingest group generation per source partition it owns.

    ``quiet``: source partitions that had records, all read, none yet on the sender (it took
    them over) and none for this many seconds; the sender does not know their event time,
    so a receiver moves on the one it knows at wall-clock pace (``wall``: the sender's wall
    time, for a receiver that knows none)."""

    times: dict[str, float] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    quiet: dict[str, float] = field(default_factory=dict)
    wall: float = -math.inf

    def encode(self) -> bytes:
        data: dict[str, object] = {"v": 1, "times": self.times, "partitions": self.partitions}
        if self.generations:
            data["generations"] = self.generations
        if self.quiet:
            data["quiet"] = self.quiet
            data["wall"] = self.wall
        return orjson.dumps(data)

    @classmethod
    def decode(cls, blob: bytes) -> Heartbeat:
        try:
            check_depth(blob)  # before orjson, which crashes on it before 3.9.15
            data = orjson.loads(blob)
            if not isinstance(data, dict) or data.get("v") != 1:
                raise ValueError("unknown heartbeat version")
            times = {str(k): float(v) for k, v in dict(data["times"]).items()}
            partitions = {str(k): int(v) for k, v in dict(data["partitions"]).items()}
            generations = {str(k): int(v) for k, v in dict(data.get("generations", {})).items()}
            quiet = {str(k): float(v) for k, v in dict(data.get("quiet", {})).items()}
            wall = float(data.get("wall", -math.inf))
        except (orjson.JSONDecodeError, DecodeError, KeyError, TypeError, ValueError) as exc:
            raise DecodeError("bad_heartbeat", f"heartbeat: {exc}") from exc
        if (
            not all(t < math.inf for t in times.values())  # NaN or +inf: blind for good
            or any(n <= 0 for n in partitions.values())
            or not all(math.isfinite(q) and q >= 0 for q in quiet.values())
            or not wall < math.inf
        ):
            raise DecodeError("bad_heartbeat", "heartbeat with impossible values")
        return cls(times, partitions, generations, quiet, wall)


def heartbeat_headers() -> Headers:
    return [(KIND, HEARTBEAT)]


def watermark(times: dict[str, float], partitions: dict[str, int]) -> float:
    """The event time every source partition has passed: the slowest one's.

    -inf until every partition of every known source topic has been heard from: a partition
    not heard from may still hold flows of any time.
    """
    if not partitions:
        return -math.inf
    slowest = math.inf
    for topic, count in partitions.items():
        for partition in range(count):
            t = times.get(source_key(topic, partition))
            if t is None:
                return -math.inf
            slowest = min(slowest, t)
    return slowest
