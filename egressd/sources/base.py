"""What every live source is to the daemon: a component that feeds record batches to a sink.

Sources own their sockets, consumers and threads; the daemon owns the engine. Sources with
replayable positions (Kafka offsets) take part in checkpoints so delivery is at-least-once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from egressd.columns import FlowColumns
from egressd.model import FlowRecord
from egressd.stats import SourceStats


class RecordSink(Protocol):
    """Where sources deliver records. ``submit`` processes them before it returns."""

    def submit(self, records: Sequence[FlowRecord]) -> None: ...


class ColumnSink(RecordSink, Protocol):
    """A sink that also takes batches as columns (the daemon's engine feed does)."""

    def submit_columns(self, columns: FlowColumns) -> None: ...


def columns_submitter(sink: RecordSink) -> Callable[[list[FlowColumns]], None]:
    """How to hand ``sink`` batches of columns: concatenated into one ``submit_columns``
    call, or, for a sink without it, as records (with their batch's exporter: "" when
    it mixes several)."""
    submit_columns: Callable[[FlowColumns], None] | None = getattr(sink, "submit_columns", None)
    if submit_columns is not None:
        take = submit_columns

        def as_columns(batches: list[FlowColumns]) -> None:
            take(FlowColumns.concat(batches))

        return as_columns

    def as_records(batches: list[FlowColumns]) -> None:
        sink.submit([record for batch in batches for record in batch.to_records()])

    return as_records


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
