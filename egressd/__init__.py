"""egressd: watches what leaves a network and pages when data flows where it should not."""

__version__ = "0.1.0"
