"""The alert state machine: pending → firing → resolved with hysteresis, no flapping when a
transfer pauses, pending_for, and the contract-2 event shape."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from egressd.detect.alerts import FIRING, PENDING, RESOLVED, ZERO_TIME, Alert, AlertBook

KEY = ("EgressUnexpectedDestination", "research", "CN")
T0 = 1_772_409_600.0
STEP = 300.0


def describe_with(total: int) -> Callable[[], tuple[dict[str, str], dict[str, str]]]:
    def describe() -> tuple[dict[str, str], dict[str, str]]:
        labels = {"alertname": KEY[0], "group": KEY[1], "dst_country": KEY[2], "severity": "page"}
        return labels, {"bytes": str(total), "summary": f"{total} bytes"}

    return describe


def run(book: AlertBook, steps: list[tuple[bool, bool, int]]) -> list[tuple[int, Alert]]:
    """Evaluate one condition per interval; return (step index, alert) for each transition."""
    out = []
    for i, (fire, keep, total) in enumerate(steps):
        alert = book.evaluate(KEY, T0 + i * STEP, fire, keep, describe_with(total))
        if alert is not None:
            out.append((i, alert))
    return out


def test_fires_at_once_and_resolves_after_resolve_after() -> None:
    book = AlertBook(pending_for=0.0, resolve_after=900.0)
    steps = [(True, True, 200), (True, True, 300)] + [(False, False, 0)] * 4
    transitions = run(book, steps)
    assert [(i, a.state) for i, a in transitions] == [(0, FIRING), (4, RESOLVED)]
    firing, resolved = transitions[0][1], transitions[1][1]
    assert firing.starts_at == T0
    # resolved 900 s after the condition last held (step 1)
    assert resolved.ends_at == T0 + STEP + 900
    # the resolved event carries the strongest evidence seen
    assert resolved.annotations["bytes"] == "300"
    assert KEY not in book.active
    assert book.transitions == {"pending": 1, "firing": 1, "resolved": 1}


def test_a_pause_of_one_interval_does_not_flap() -> None:
    book = AlertBook(pending_for=0.0, resolve_after=900.0)
    steps = [
        (True, True, 500),
        (False, False, 0),  # the transfer pauses for one interval
        (True, True, 500),
        (False, True, 60),  # below the fire threshold but above the keep threshold
        (False, True, 60),
        (False, False, 0),
        (False, False, 0),
        (False, False, 0),
    ]
    transitions = run(book, steps)
    assert [a.state for _, a in transitions] == [FIRING, RESOLVED]
    assert transitions[1][0] == 7  # 900 s after the keep condition last held (step 4)


def test_pending_for_delays_firing_and_a_lapse_cancels_it() -> None:
    book = AlertBook(pending_for=600.0, resolve_after=900.0)
    transitions = run(book, [(True, True, 1), (False, False, 0)])
    assert transitions == []
    assert KEY not in book.active  # pending dropped when the condition lapsed
    book = AlertBook(pending_for=600.0, resolve_after=900.0)
    assert book.evaluate(KEY, T0, True, True, describe_with(1)) is None
    assert book.active[KEY].state == PENDING
    assert book.evaluate(KEY, T0 + 300, True, True, describe_with(2)) is None
    alert = book.evaluate(KEY, T0 + 600, True, True, describe_with(3))
    assert alert is not None and alert.state == FIRING
    assert alert.starts_at == T0 + 600
    assert alert.pending_since == T0


def test_keep_alone_does_not_start_an_alert() -> None:
    book = AlertBook(pending_for=0.0, resolve_after=900.0)
    assert run(book, [(False, True, 60)] * 5) == []
    assert not book.active


def test_event_has_the_contract_shape() -> None:
    book = AlertBook(pending_for=0.0, resolve_after=300.0)
    fired = book.evaluate(KEY, T0, True, True, describe_with(6_012_000_000))
    assert fired is not None
    event = fired.event()
    assert set(event) == {"status", "labels", "annotations", "startsAt", "endsAt"}
    assert event["status"] == "firing"
    assert event["labels"] == {
        "alertname": "EgressUnexpectedDestination",
        "group": "research",
        "dst_country": "CN",
        "severity": "page",
    }
    assert event["startsAt"] == "2026-03-02T00:00:00Z"
    assert event["endsAt"] == ZERO_TIME
    resolved = book.evaluate(KEY, T0 + 600, False, False, describe_with(0))
    assert resolved is not None
    event = resolved.event()
    assert event["status"] == "resolved"
    assert event["labels"] == fired.labels
    ends = datetime.fromisoformat(event["endsAt"].replace("Z", "+00:00")).timestamp()
    assert ends == T0 + 600
    # the firing copy handed out earlier is a snapshot
    assert fired.state == FIRING


def test_json_round_trip_keeps_state() -> None:
    book = AlertBook(pending_for=0.0, resolve_after=900.0)
    book.evaluate(KEY, T0, True, True, describe_with(10))
    again = AlertBook(pending_for=0.0, resolve_after=900.0)
    again.load_json(book.to_json())
    assert again.active[KEY].state == FIRING
    assert again.active[KEY].starts_at == T0
    # continuity: no second firing; resolves on schedule
    assert again.evaluate(KEY, T0 + 300, True, True, describe_with(10)) is None
    transitions = [
        again.evaluate(KEY, T0 + 300 * i, False, False, describe_with(0)) for i in range(2, 6)
    ]
    assert [a.state for a in transitions if a is not None] == [RESOLVED]


def test_each_evaluation_describes_the_alert_at_most_once() -> None:
    """Describing an alert builds its evidence (top talkers, texts): a new alert is described
    once, not once for "pending" and again for "firing" in the same evaluation."""
    calls: list[int] = []

    def counted(total: int) -> Callable[[], tuple[dict[str, str], dict[str, str]]]:
        describe = describe_with(total)

        def wrapper() -> tuple[dict[str, str], dict[str, str]]:
            calls.append(total)
            return describe()

        return wrapper

    for pending_for in (0.0, STEP):
        book = AlertBook(pending_for=pending_for, resolve_after=900.0)
        states = []
        for i, total in enumerate((200, 300, 400)):
            calls.clear()
            alert = book.evaluate(KEY, T0 + i * STEP, True, True, counted(total))
            states.append((alert.state if alert else book.active[KEY].state, calls.copy()))
            assert book.active[KEY].annotations["bytes"] == str(total)
        if pending_for == 0.0:
            assert states == [(FIRING, [200]), (FIRING, [300]), (FIRING, [400])]
        else:
            assert states == [(PENDING, [200]), (FIRING, [300]), (FIRING, [400])]


def test_hold_is_evaluate_for_an_alert_kept_open_with_weaker_evidence() -> None:
    """``hold`` moves a firing alert's times as ``evaluate`` does when its evidence is not
    rebuilt, and declines (False, nothing changed) wherever ``evaluate`` would do more: no
    alert, a pending one, or evidence at least as strong."""
    for pending_for in (0.0, STEP):
        held = AlertBook(pending_for=pending_for, resolve_after=900.0)
        asked = AlertBook(pending_for=pending_for, resolve_after=900.0)
        # (step, fire, strength): starts, grows, is kept with less, then with as much
        steps = [(0, True, 300), (1, True, 500), (2, False, 100), (3, True, 400), (4, False, 500)]
        outcomes = []
        for i, fire, strength in steps:
            now = T0 + i * STEP
            before = held.active[KEY].copy() if KEY in held.active else None
            if held.hold(KEY, now, strength):
                outcomes.append(i)
            else:
                assert (held.active[KEY].copy() if KEY in held.active else None) == before
                held.evaluate(KEY, now, fire, True, describe_with(strength), strength)
            asked.evaluate(KEY, now, fire, True, describe_with(strength), strength)
            assert held.active == asked.active
            assert held.transitions == asked.transitions
        # held where the alert fired already and the evidence was weaker than what it shows
        # (declined while pending: the pending alert is described again as it fires)
        assert outcomes == [2, 3]
