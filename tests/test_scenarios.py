"""Multi-day scenarios through ``egressd replay``: every injected exfiltration pages, in time,
with its evidence, and none of the benign traps (backups, ingress, east-west, growth) does."""

from __future__ import annotations

import io
import ipaddress
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from scenarios import (
    INTERVAL,
    SPIKE_RATIO,
    Scenario,
    generate,
    generate_month,
    least_page_bytes,
)

from egressd.config import parse_config
from egressd.replay import ReplaySummary, replay

SEEDS = (1, 2, 3)
LOCAL = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _is_local(address: str) -> bool:
    parsed = ipaddress.ip_address(address)
    return any(parsed in net for net in LOCAL)


class Replayed:
    """A generated scenario, its goflow2 file and what ``replay()`` made of it."""

    def __init__(self, scenario: Scenario, path: Path) -> None:
        self.scenario = scenario
        self.path = path
        self.events, self.summary = _replay(scenario, path, "goflow2-json")


def _replay(scenario: Scenario, path: Path, fmt: str) -> tuple[list[dict[str, Any]], ReplaySummary]:
    out = io.BytesIO()
    summary = replay(parse_config(scenario.config_text), fmt, [str(path)], out)
    return [orjson.loads(line) for line in out.getvalue().splitlines()], summary


def _seed_id(seed: int) -> str:
    return f"seed{seed}"


@pytest.fixture(scope="module")
def replays(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[int, Replayed]]:
    """Each seed is replayed once per module, whichever tests ask for it and in whatever order."""
    built: dict[int, Replayed] = {}
    yield built
    built.clear()


@pytest.fixture(params=SEEDS, ids=_seed_id)
def replayed(
    request: pytest.FixtureRequest,
    replays: dict[int, Replayed],
    tmp_path_factory: pytest.TempPathFactory,
) -> Replayed:
    # Keyed by seed rather than module-scoped and parametrised: tests narrowed to one seed by
    # indirect parametrisation would otherwise be reordered among the other seeds' tests and
    # replay that seed a second time.
    seed: int = request.param
    if seed not in replays:
        scenario = generate(seed=seed, days=9)
        directory = tmp_path_factory.mktemp(f"scenario{seed}")
        replays[seed] = Replayed(scenario, scenario.write(directory / "flows.goflow2.jsonl"))
    return replays[seed]


def _key(event: dict[str, Any]) -> tuple[str, str, str]:
    labels = event["labels"]
    return labels["alertname"], labels["group"], labels["dst_country"]


def false_pages(scenario: Scenario, events: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Pages (firing events) for no injected exfiltration: key, ``startsAt``, summary."""
    expected = {(x.alertname, x.group, x.dst_country) for x in scenario.expected}
    return [
        (_key(e), e["startsAt"], e["annotations"]["summary"])
        for e in events
        if e["status"] == "firing" and _key(e) not in expected
    ]


def check_events(scenario: Scenario, events: list[dict[str, Any]]) -> None:
    """Every exfiltration fires once, in time, with evidence; nothing else fires."""
    unexpected = false_pages(scenario, events)
    assert not unexpected, f"pages nobody should get: {unexpected}"
    check_detected(scenario, events)


def check_detected(scenario: Scenario, events: list[dict[str, Any]]) -> None:
    """Every exfiltration fires once, in time, with evidence, and resolves."""
    firing = [e for e in events if e["status"] == "firing"]
    resolved = {_key(e): e for e in events if e["status"] == "resolved"}
    expected = {(x.alertname, x.group, x.dst_country): x for x in scenario.expected}
    for key, exfil in expected.items():
        matches = [e for e in firing if _key(e) == key]
        assert len(matches) == 1, f"{exfil.name}: expected one page for {key}, got {matches}"
        event = matches[0]
        assert event["labels"]["severity"] == "page"
        starts = _parse_time(event["startsAt"])
        # ``crossing`` is the configured floor's. A small group's floors are lower (they
        # shrink with its busy-interval egress, never grow past the configured ones for these
        # rules): its page may come earlier, but not before the transfer began.
        earliest = exfil.begin if exfil.begin is not None else exfil.crossing
        assert earliest <= starts <= exfil.crossing + INTERVAL, (
            f"{exfil.name}: startsAt {event['startsAt']} is not between the transfer's start "
            f"and one interval after the threshold was crossed at "
            f"{datetime.fromtimestamp(exfil.crossing).isoformat()}"
        )
        annotations = event["annotations"]
        assert int(annotations["bytes"]) >= least_page_bytes(exfil)
        assert exfil.source in annotations["top_sources"].split(","), exfil.name
        if exfil.destination:  # a fan-out has no one destination
            assert exfil.destination in annotations["top_destinations"].split(","), exfil.name
        assert event["endsAt"] == "0001-01-01T00:00:00Z"
        if exfil.baseline is not None:
            baseline = int(annotations["baseline_bytes"])
            assert exfil.baseline / 2 <= baseline <= exfil.baseline * 2, (baseline, exfil)
            assert int(annotations["bytes"]) >= SPIKE_RATIO * baseline
        # Each exfiltration stops, so its alert resolves, later than it started.
        assert key in resolved, f"{exfil.name} never resolved"
        assert _parse_time(resolved[key]["endsAt"]) > starts


@pytest.mark.slow
def test_every_exfiltration_pages_and_nothing_else(replayed: Replayed) -> None:
    scenario, summary = replayed.scenario, replayed.summary
    check_events(scenario, replayed.events)
    # Independent accounting: egress = local source to a non-local destination.
    egress = [f for f in scenario.flows if _is_local(f.src) and not _is_local(f.dst)]
    assert summary.records == len(scenario.flows)
    assert summary.egress_records == len(egress)
    assert summary.egress_bytes == sum(f.real_bytes for f in egress)
    assert summary.late_records == 0
    assert not summary.skipped
    assert summary.firing == len(scenario.expected)


@pytest.mark.slow
# One seed is enough to compare formats.
@pytest.mark.parametrize("replayed", [SEEDS[0]], indirect=True, ids=_seed_id)
@pytest.mark.parametrize("fmt", ["egressd-json", "pmacct-json"])
def test_other_line_formats_give_the_same_alerts(
    replayed: Replayed, tmp_path: Path, fmt: str
) -> None:
    scenario = replayed.scenario
    events, summary = _replay(scenario, scenario.write(tmp_path / f"flows.{fmt}", fmt), fmt)
    assert not summary.skipped
    # pmacct writes microsecond timestamps: the same buckets, so the same events.
    assert events == replayed.events


@pytest.mark.slow
# The real command line is exercised on one seed.
@pytest.mark.parametrize("replayed", [SEEDS[-1]], indirect=True, ids=_seed_id)
def test_cli_replay_writes_the_same_alert_events(replayed: Replayed, tmp_path: Path) -> None:
    scenario, path = replayed.scenario, replayed.path
    config = scenario.write_config(tmp_path / "egressd.toml")
    alerts = tmp_path / "alerts.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "egressd.cli",
            "replay",
            "--config",
            str(config),
            "--format",
            "goflow2-json",
            "--alerts-out",
            str(alerts),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"{len(scenario.expected)} firing" in result.stderr
    events = [orjson.loads(line) for line in alerts.read_bytes().splitlines()]
    check_events(scenario, events)
    assert events == replayed.events


def test_scenarios_are_reproducible() -> None:
    a = generate(seed=11, days=8)
    b = generate(seed=11, days=8)
    assert a.flows == b.flows
    assert a.expected == b.expected
    assert generate(seed=12, days=8).flows != a.flows
    ends = [f.end for f in a.flows]
    assert ends == sorted(ends)


@pytest.fixture(scope="module")
def months() -> Iterator[dict[int, Replayed]]:
    built: dict[int, Replayed] = {}
    yield built
    built.clear()


@pytest.fixture(params=SEEDS, ids=_seed_id)
def month(
    request: pytest.FixtureRequest,
    months: dict[int, Replayed],
    tmp_path_factory: pytest.TempPathFactory,
) -> Replayed:
    seed: int = request.param
    if seed not in months:
        scenario = generate_month(seed=seed)
        directory = tmp_path_factory.mktemp(f"month{seed}")
        months[seed] = Replayed(scenario, scenario.write(directory / "flows.goflow2.jsonl"))
    return months[seed]


@pytest.mark.slow
def test_a_realistic_month_pages_every_exfiltration_and_nothing_else(month: Replayed) -> None:
    """28 days with default detection settings (the config sets only interval and learning):
    log-normal noise with recurring 5-8x bursts, nightly backups of varying size, a Sunday-only
    full backup, downloads whose ACKs go to a country the group never sends to, a DST shift, a
    sampling-rate change, a second collector minutes behind, a new host and a permanent 2x step.
    Every exfiltration (burst, IPv6, sampled, slow drip, learning poison, far-beyond-history
    spike, 8 GB to a fresh network in the backup hour, fan-out) pages in time; nothing else."""
    scenario, summary = month.scenario, month.summary
    assert {e.name for e in scenario.expected} == {
        "burst", "ipv6", "sampled", "slow-drip", "learning-poison", "far-spike",
        "backup-hour", "fan-out",
    }  # fmt: skip
    check_events(scenario, month.events)
    assert summary.records == len(scenario.flows)
    assert not summary.skipped
    # The lagging collector's records arrive late and are still counted.
    assert summary.late_records > 0
    egress = [f for f in scenario.flows if _is_local(f.src) and not _is_local(f.dst)]
    assert summary.egress_bytes == sum(f.real_bytes for f in egress)


def test_the_month_config_sets_only_interval_and_learning() -> None:
    scenario = generate_month(seed=5)
    detection = scenario.config_text.split("[detection]")[1]
    keys = sorted(line.split("=")[0].strip() for line in detection.splitlines() if "=" in line)
    assert keys == ["interval", "learning"]
    assert parse_config(scenario.config_text).detection.unexpected_windows == (
        (3600.0, 100_000_000),
        (86400.0, 1_000_000_000),
        (7 * 86400.0, 1_000_000_000),
    )
