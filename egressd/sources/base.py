"""What every live source is to the daemon: a component that feeds record batches to a sink.

Sources own their sockets, consumers and threads; the daemon owns the engine. Sources with
replayable positions (Kafka offsets) take part in checkpoints so delivery is at-least-once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from egressd.model import FlowRecord
from egressd.stats import SourceStats


class RecordSink(Protocol):
    """Where sources deliver records. ``submit`` processes them before it returns."""

    def submit(self, records: Sequence[FlowRecord]) -> None: ...


class Source(Protocol):
    """A live input. Constructors are inert; ``start`` binds/connects, ``stop`` drains."""

    #: unique, stable name ("netflow:127.0.0.1:2055", "kafka:flows"); used in metrics and state
    name: str
    stats: SourceStats

    @property
    def ready(self) -> bool:
        """True once bound / connected and consuming."""
        ...

    async def start(self, sink: RecordSink) -> None: ...

    async def stop(self) -> None: ...

    def checkpoint_position(self) -> Any:
        """Positions of what was submitted so far (JSON-friendly), or None if not replayable."""
        ...

    async def checkpoint_saved(self, position: Any) -> None:
        """Called after state including everything up to ``position`` was saved durably."""
        ...

    def restore_position(self, position: Any) -> None:
        """Called before ``start`` with the position from the last saved state, if any."""
        ...
