"""What every detector shares: its settings, the expected-destination policy, the alert book.

Detectors turn closed intervals into findings for the one :class:`AlertBook`; this base holds
the parts they are built from, so a configuration reload reaches each of them the same way.
"""

from __future__ import annotations

from egressd.config import DetectionConfig
from egressd.detect.alerts import AlertBook
from egressd.detect.labels import LabelOptions
from egressd.detect.policy import ExpectedDestinations


class Detector:
    """Settings, policy and alert book of one detector; subclasses add their own state."""

    __slots__ = ("_config", "_labels", "book", "policy")

    def __init__(
        self,
        config: DetectionConfig,
        policy: ExpectedDestinations,
        book: AlertBook,
        labels: LabelOptions,
    ) -> None:
        self._config = config
        self._labels = labels
        self.policy = policy
        self.book = book

    def reconfigure(self, config: DetectionConfig, labels: LabelOptions) -> None:
        self._config = config
        self._labels = labels
