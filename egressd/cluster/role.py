"""What the ingest and detect roles share: a Kafka consumer loop that starts again, after a
growing delay, whenever the brokers fail it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from egressd.errors import ConfigError, SourceError
from egressd.sources.kafka import Backoff, map_kafka_error


class _Resets(Protocol):
    resets: int  # connections started again after an error


class KafkaRole:
    """The connect / consume / start-again loop; subclasses supply the three steps."""

    name: str
    stats: _Resets
    log: logging.Logger
    _consumer: Any
    _stopping: bool
    _ready: bool

    @property
    def ready(self) -> bool:
        return self._ready

    async def _connect(self) -> None:
        raise NotImplementedError

    def _connected(self) -> str:
        """What the role does once connected, for the log."""
        raise NotImplementedError

    async def _consume(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    async def _run(self) -> None:
        backoff = Backoff()
        while not self._stopping:
            try:
                if self._consumer is None:
                    await self._connect()
                    self.log.info("%s: %s", self.name, self._connected())
                self._ready = True
                backoff.reset()
                await self._consume()
            except (asyncio.CancelledError, ConfigError):
                raise  # a configuration the brokers cannot serve: starting again cannot help
            except Exception as exc:
                error = exc if isinstance(exc, SourceError) else map_kafka_error(exc, self.name)
                delay = backoff.next_delay()
                self.log.warning("%s: %s; starting again in %.1fs", self.name, error, delay)
                # What the clients held goes with them (see each role's _close).
                self.stats.resets += 1
                await self._close()
                await asyncio.sleep(delay)
