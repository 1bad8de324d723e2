"""Plain counters that every stage keeps: in, out, dropped and failed, with bounded reasons.

Counters are plain ints bumped on the hot path; the metrics sink reads them on scrape, so
counting costs no more than an attribute increment.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass(slots=True)
class SourceStats:
    """What one input (a socket, a topic, a file) has seen. Reasons are bounded labels."""

    name: str
    units: int = 0  # datagrams, lines, messages or packets received
    records: int = 0  # flow records decoded
    decode_errors: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)

    def failed(self, reason: str) -> None:
        self.decode_errors[reason] += 1

    def drop(self, reason: str, count: int = 1) -> None:
        self.dropped[reason] += count
