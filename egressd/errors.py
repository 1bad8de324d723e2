"""The one exception tree of egressd.

Every error egressd raises on purpose derives from :class:`EgressdError`::

    EgressdError
    ├── ConfigError           a configuration file or value is invalid; names key, file and line
    ├── DecodeError           one input unit (datagram, JSON line, packet) cannot be decoded;
    │   │                     ``reason`` is a short, bounded label used in metrics
    │   └── TemplateMissing   NetFlow v9 / IPFIX data set whose template is not (yet) known
    ├── StateError            the state file cannot be read, parsed or written
    ├── SourceError           an input (socket, broker, capture) failed; ``retriable`` says
    │                         whether trying again may help
    └── SinkError             an output (Alertmanager, HTTP) failed; ``retriable`` as above

Library exceptions are mapped to these at the edge with ``raise Ours(...) from exc`` so
callers never need to know which library sits underneath.
"""

from __future__ import annotations


class EgressdError(Exception):
    """Base of every error egressd raises on purpose."""


class ConfigError(EgressdError):
    """Invalid configuration. ``problems`` lists every problem found, each already formatted."""

    def __init__(self, problems: list[str] | str) -> None:
        if isinstance(problems, str):
            problems = [problems]
        self.problems: list[str] = list(problems)
        super().__init__("; ".join(self.problems))


class DecodeError(EgressdError):
    """One input unit could not be decoded. ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class TemplateMissing(DecodeError):
    """A data set refers to a template that has not been received (yet)."""

    def __init__(self, template_id: int, detail: str = "") -> None:
        self.template_id = template_id
        super().__init__("template_missing", detail or f"template {template_id} not known")


class StateError(EgressdError):
    """The state file could not be read, understood or written."""


class StateTooLarge(StateError):
    """The state file is larger than ``state.max_size``: it was not read."""


class SourceError(EgressdError):
    """An input failed. ``retriable`` is true when trying again later may succeed."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        self.retriable = retriable
        super().__init__(message)


class SinkError(EgressdError):
    """An output failed. ``retriable`` is true when trying again later may succeed."""

    def __init__(self, message: str, *, retriable: bool = True) -> None:
        self.retriable = retriable
        super().__init__(message)
