"""Alerts and their state machine: pending → firing → resolved, with hysteresis.

An alert fires when its condition holds (for ``pending_for``, default at once) and resolves
only after its weaker "keep" condition stayed false for ``resolve_after``, so a transfer
that pauses for an interval does not flap. Events follow Alertmanager's v2 alert shape.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

PENDING = "pending"
FIRING = "firing"
RESOLVED = "resolved"
ZERO_TIME = "0001-01-01T00:00:00Z"

AlertKey = tuple[str, str, str]  # (alertname, group, destination key)


def rfc3339(event_time: float) -> str:
    moment = datetime.fromtimestamp(event_time, UTC)
    if moment.microsecond:
        return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


#: what makes two alerts equal, in the order ``repr`` shows them
_ALERT_FIELDS = (
    "key",
    "labels",
    "annotations",
    "state",
    "pending_since",
    "starts_at",
    "ends_at",
    "last_true",
    "updated",
)
_alert_fields = attrgetter(*_ALERT_FIELDS)


class Alert:
    """One alert instance and where it stands in its life.

    A firing alert's annotations may be held as a rendering of evidence captured when they
    were last brought up to date (:meth:`defer_annotations`): reading ``annotations`` renders
    them once. A page whose bytes grow every interval is read only when it is sent, resolved
    or saved, so the intervals between do not each format (and merge) its evidence.
    """

    __slots__ = (
        "_annotations",
        "_render",
        "_render_bytes",
        "ends_at",
        "key",
        "labels",
        "last_true",
        "pending_since",
        "starts_at",
        "state",
        "updated",
    )

    def __init__(
        self,
        key: AlertKey,
        labels: dict[str, str],
        annotations: dict[str, str],
        state: str,
        pending_since: float,
        starts_at: float = 0.0,
        ends_at: float | None = None,
        last_true: float = 0.0,
        updated: float = 0.0,
    ) -> None:
        self.key = key
        self.labels = labels
        self._annotations = annotations
        #: renders the annotations last brought up to date, when they are not yet
        self._render: Callable[[], dict[str, str]] | None = None
        #: the ``bytes`` annotation those will carry
        self._render_bytes = 0
        self.state = state
        self.pending_since = pending_since
        self.starts_at = starts_at
        self.ends_at = ends_at
        self.last_true = last_true
        #: last event time the alert was evaluated
        self.updated = updated

    @property
    def annotations(self) -> dict[str, str]:
        render = self._render
        if render is not None:
            self._annotations = render()
            self._render = None
        return self._annotations

    @annotations.setter
    def annotations(self, value: dict[str, str]) -> None:
        self._annotations = value
        self._render = None

    def defer_annotations(self, render: Callable[[], dict[str, str]], size: int) -> None:
        """Take annotations carrying ``bytes`` = ``size`` that ``render`` builds when read
        (``render`` holds the evidence as it is now, not as it will be)."""
        self._render = render
        self._render_bytes = size

    def described_bytes(self) -> int:
        """The ``bytes`` annotation, without rendering deferred annotations."""
        if self._render is not None:
            return self._render_bytes
        return _as_int(self._annotations.get("bytes"))

    def _fields(self) -> tuple[Any, ...]:
        return _alert_fields(self)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, Alert)
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value

    def __repr__(self) -> str:
        values = self._fields()
        inner = ", ".join(f"{n}={v!r}" for n, v in zip(_ALERT_FIELDS, values, strict=True))
        return f"Alert({inner})"

    def copy(self) -> Alert:
        """A snapshot that later transitions of this alert do not change."""
        return Alert(
            self.key,
            dict(self.labels),
            dict(self.annotations),
            self.state,
            self.pending_since,
            self.starts_at,
            self.ends_at,
            self.last_true,
            self.updated,
        )

    def event(self, status: str | None = None) -> dict[str, Any]:
        """The alert as a contract-2 event (the Alertmanager body plus ``status``)."""
        status = status or (RESOLVED if self.state == RESOLVED else FIRING)
        return {
            "status": status,
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": rfc3339(self.starts_at),
            "endsAt": rfc3339(self.ends_at) if self.ends_at is not None else ZERO_TIME,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "key": list(self.key),
            "labels": self.labels,
            "annotations": self.annotations,
            "state": self.state,
            "pending_since": self.pending_since,
            "starts_at": self.starts_at,
            "last_true": self.last_true,
            "updated": self.updated,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Alert:
        key = data["key"]
        if not (isinstance(key, list) and len(key) == 3):
            raise ValueError("malformed alert key")
        return cls(
            key=(str(key[0]), str(key[1]), str(key[2])),
            labels={str(k): str(v) for k, v in data["labels"].items()},
            annotations={str(k): str(v) for k, v in data["annotations"].items()},
            state=str(data["state"]),
            pending_since=float(data["pending_since"]),
            starts_at=float(data["starts_at"]),
            last_true=float(data["last_true"]),
            updated=float(data.get("updated", data["last_true"])),
        )


def _as_int(text: str | None) -> int:
    try:
        return int(text or 0)
    except ValueError:
        return 0


class AlertBook:
    """Every active (pending or firing) alert, and the transitions between states."""

    __slots__ = ("active", "pending_for", "resolve_after", "transitions")

    def __init__(self, pending_for: float, resolve_after: float) -> None:
        self.pending_for = pending_for
        self.resolve_after = resolve_after
        self.active: dict[AlertKey, Alert] = {}
        #: counts by transition name, for metrics
        self.transitions: dict[str, int] = {"pending": 0, "firing": 0, "resolved": 0}

    def firing(self) -> list[Alert]:
        return [a for a in self.active.values() if a.state == FIRING]

    def evaluate(
        self,
        key: AlertKey,
        now: float,
        fire: bool,
        keep: bool,
        describe: Callable[[], tuple[dict[str, str], dict[str, str]]],
        strength: int | None = None,
        later: Callable[[], tuple[int, Callable[[], dict[str, str]]]] | None = None,
    ) -> Alert | None:
        """Advance ``key``'s alert at event time ``now``.

        ``fire``: the condition to start (or continue) alerting holds. ``keep``: the weaker
        condition that holds a firing alert open. ``describe`` builds labels and annotations
        (only called when needed). ``strength`` (the bytes behind this evaluation), when
        given, spares rebuilding a firing alert's evidence unless it grew. ``later``, when
        given, brings a firing alert's annotations up to date without building them: it
        captures the evidence now and returns (the ``bytes`` they carry, their rendering), which
        the alert runs when its annotations are read (see :class:`Alert`). Returns the alert
        when it changed to firing or resolved.
        """
        alert = self.active.get(key)
        if alert is None:
            if not fire:
                return None
            labels, annotations = describe()  # once: it goes on pending (or firing) below
            alert = Alert(key, labels, annotations, PENDING, pending_since=now, updated=now)
            self.active[key] = alert
            self.transitions["pending"] += 1
        elif alert.state == PENDING:
            if not fire:
                del self.active[key]
                return None
            alert.labels, alert.annotations = describe()
        alert.updated = now
        if alert.state == PENDING:
            if now - alert.pending_since >= self.pending_for:
                alert.state = FIRING
                alert.starts_at = now
                alert.last_true = now
                self.transitions["firing"] += 1
                return alert.copy()
            return None
        # FIRING
        if fire or keep:
            alert.last_true = now
            # Keep the strongest evidence seen so the resolved event still tells the story.
            current = alert.described_bytes()
            if strength is not None and strength < current:
                return None
            if later is not None:
                size, render = later()
                if size >= current:
                    alert.defer_annotations(render, size)
                return None
            _labels, annotations = describe()
            if _as_int(annotations.get("bytes")) >= current:
                alert.annotations = annotations
            return None
        if now - alert.last_true >= self.resolve_after:
            alert.state = RESOLVED
            alert.ends_at = now
            del self.active[key]
            self.transitions["resolved"] += 1
            return alert.copy()
        return None

    def hold(self, key: AlertKey, now: float, strength: int) -> bool:
        """What :meth:`evaluate` does for a firing alert whose condition (or its keep) holds
        and whose evidence is not rebuilt (``strength`` under its ``bytes``): its times move
        to ``now``. True when that is all there is to do; False when :meth:`evaluate` must be
        asked (no such alert, not firing, or evidence at least as strong). The caller asks
        only when fire or keep holds: an alert held open interval after interval (most of a
        long transfer's) then costs no descriptions built to be left unused."""
        alert = self.active.get(key)
        if alert is None or alert.state != FIRING or strength >= alert.described_bytes():
            return False
        alert.updated = now
        alert.last_true = now
        return True

    def to_json(self) -> list[dict[str, Any]]:
        return [a.to_json() for a in self.active.values()]

    def load_json(
        self,
        data: list[dict[str, Any]],
        until: float = math.inf,
        names: Collection[str] | None = None,
        max_per_name: int | None = None,
    ) -> int:
        """Restore what :meth:`to_json` wrote, held to what the book itself keeps; returns
        how many alerts were left out.

        Left out: alerts whose state is not pending or firing, whose times are not finite
        or lie after ``until`` (the saved event time: a pending alert dated in the future
        would never have waited ``pending_for`` and so never fire, holding its key silent;
        a firing one would never resolve), whose alertname is not among ``names`` (nothing
        would ever evaluate them), and beyond ``max_per_name`` alerts of one name (one per
        key, ``detection.max_keys``) the least recently updated.
        """
        kept: dict[AlertKey, Alert] = {}
        dropped = 0
        for item in data:
            alert = Alert.from_json(item)
            times = (alert.pending_since, alert.starts_at, alert.last_true, alert.updated)
            if (
                alert.state not in (PENDING, FIRING)
                or (names is not None and alert.key[0] not in names)
                or not all(math.isfinite(t) and t <= until for t in times)
            ):
                dropped += 1
                continue
            kept.pop(alert.key, None)  # (a key saved twice: the later stands)
            kept[alert.key] = alert
        if max_per_name is not None:
            by_name: dict[str, list[Alert]] = {}
            for alert in kept.values():
                by_name.setdefault(alert.key[0], []).append(alert)
            for alerts in by_name.values():
                if len(alerts) > max_per_name:
                    alerts.sort(key=attrgetter("updated"))
                    for alert in alerts[: len(alerts) - max_per_name]:
                        del kept[alert.key]
                        dropped += 1
        self.active = kept
        return dropped
