"""Detection quality on generated scenarios: recall, false pages and time to detect per seed.

Run: ``python benchmarks/detection_bench.py [--scenario KIND] [--seeds 1 2 3]``, KIND one of
month, nine-day, both, saas, campus, small-office, enterprise, tiny-office, institute, networks,
all. ``both`` (the default) is the month and the nine days; ``networks`` the six differently
shaped networks of tests/network_scenarios.py (a cloud-heavy company, a university, a small
office behind 1:1000 sampling, an enterprise of eighteen groups and ~4,400 hosts, three weeks of
a tiny office of thirteen hosts whose incidents are tens to hundreds of MB, and a research
institute whose HPC cluster two routers export, one with a 30 min active timeout and its clock
behind); ``all`` is all eight. Each scenario is replayed with its own configuration (the months
set only ``interval`` and ``learning`` under ``[detection]``: the defaults do the work; the
institute's also maps cloud regions). The institute's week-long drip pages on the default
week window (1 GB within 7 d); an incident under the default floors would be listed in
tests/network_scenarios.py's ``BELOW_DEFAULT_FLOORS``. A page is an alert that fires;
it is true when it matches an injected exfiltration (alertname, group, destination country)
and starts between the exfiltration's first flow and one interval after its last flow (or after
the moment it crossed the configured floor, whichever is later); every other page is false.
Floors follow a group's size (a small group's shrink), so a page may come before the configured
floor's crossing. Time to detect is ``startsAt`` minus the moment the configured threshold was
crossed: negative when a small group's lower floor paged earlier.

``--scale 0.25 0.5 1 2 4`` replays each scenario at each factor: every generated flow's bytes
and packets (background, traps and injected transfers alike) are multiplied by it, so the same
traffic shape stands for a smaller or larger (or faster-linked) network, with the same
configuration. A summary line per factor follows. ``--strict`` scores x1 the older way: a page
counts only within one interval after the configured floor's crossing (a page that a scaled
floor moved counts there as a miss and a false page). ``--explain`` adds, under each
EgressVolumeSpike page (true or false), what the rule compared: the interval's bytes, its
seasonal baseline, the key's peak, how far beyond their own peaks the group's keys lately went
(``group_excess_bytes``) and the page's bytes beyond the peak as a multiple of that, and how
many source hosts and destination addresses carried it (up to ``top_talkers``, 5).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from network_scenarios import GENERATORS
from scenarios import INTERVAL, ExpectedAlert, Scenario, generate, generate_month

from egressd.config import parse_config
from egressd.replay import replay


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _matches(exfil: ExpectedAlert, starts: float, strict: bool) -> bool:
    if strict or exfil.begin is None or exfil.end is None:
        return exfil.crossing <= starts <= exfil.crossing + INTERVAL
    return exfil.begin <= starts <= max(exfil.end, exfil.crossing) + INTERVAL


def explain(event: dict[str, object]) -> str:
    """One line of what an EgressVolumeSpike page was judged on (its annotations)."""
    notes = event["annotations"]
    assert isinstance(notes, dict)
    size, peak = int(notes["bytes"]), int(notes["peak_bytes"])
    excess = int(notes.get("group_excess_bytes", 0))
    beyond = f"{(size - peak) / excess:.1f}x" if excess > 0 else "-"
    sources = notes["top_sources"].split(",") if notes["top_sources"] else []
    hosts = notes["top_destinations"].split(",") if notes["top_destinations"] else []
    return (
        f"{size / 1e9:.2f} GB, baseline {int(notes['baseline_bytes']) / 1e9:.3f} GB, "
        f"peak {peak / 1e9:.2f} GB, group excess {excess / 1e9:.2f} GB (beyond peak {beyond} "
        f"it), {len(sources)} sources, {len(hosts)} destinations"
    )


def score(
    scenario: Scenario, directory: Path, factor: float = 1.0, strict: bool = False
) -> dict[str, object]:
    """Replay ``scenario``; ``strict``: at x1 only the crossing's interval counts."""
    strict = factor == 1 and strict
    path = scenario.write(directory / f"flows-{scenario.seed}.jsonl")
    out = io.BytesIO()
    began = time.perf_counter()
    replay(parse_config(scenario.config_text), "goflow2-json", [str(path)], out)
    seconds = time.perf_counter() - began
    events = [orjson.loads(line) for line in out.getvalue().splitlines()]
    firing = [e for e in events if e["status"] == "firing"]
    expected = {(x.alertname, x.group, x.dst_country): x for x in scenario.expected}
    detected: dict[str, float] = {}
    false_pages: list[str] = []
    explained: list[str] = []
    for event in firing:
        labels = event["labels"]
        key = (labels["alertname"], labels["group"], labels["dst_country"])
        starts = _time(event["startsAt"])
        exfil = expected.get(key)
        true = exfil is not None and _matches(exfil, starts, strict)
        if exfil is not None and true:
            detected.setdefault(exfil.name, starts - exfil.crossing)
        else:
            false_pages.append(f"{'/'.join(key)}@{event['startsAt']}")
        if key[0] == "EgressVolumeSpike":
            what = f"{exfil.name} (true)" if exfil is not None and true else "false"
            explained.append(f"{'/'.join(key[1:])} {what}: {explain(event)}")
    missed = [x.name for x in scenario.expected if x.name not in detected]
    return {
        "seed": scenario.seed,
        "recall": len(detected) / len(scenario.expected),
        "false_pages": false_pages,
        "detected": detected,
        "missed": missed,
        "explained": explained,
        "seconds": seconds,
        "records": len(scenario.flows),
    }


def _generate(kind: str, seed: int) -> Scenario:
    if kind == "month":
        return generate_month(seed)
    if kind == "nine-day":
        return generate(seed, days=9)
    return GENERATORS[kind](seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    choices = ("month", "nine-day", *GENERATORS, "both", "networks", "all")
    parser.add_argument("--scenario", choices=choices, default="both")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--scale",
        type=float,
        nargs="+",
        default=[1.0],
        help="replay each scenario with every byte count multiplied by each factor",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="at x1 count a page only within an interval of the configured floor's crossing "
        "(default: anywhere from a transfer's first flow to an interval after its end)",
    )
    parser.add_argument(
        "--explain",
        action="store_true",
        help="under each EgressVolumeSpike page, print what the rule compared",
    )
    parser.add_argument(
        "--window",
        action="store_true",
        help="the default scoring (kept so older command lines still run)",
    )
    args = parser.parse_args()
    if any(factor <= 0 for factor in args.scale):
        parser.error("--scale factors must be positive")
    scales: list[float] = args.scale
    several = scales != [1.0]
    totals = {factor: _Totals() for factor in scales}
    kinds = {
        "both": ("month", "nine-day"),
        "networks": tuple(GENERATORS),
        "all": ("month", "nine-day", *GENERATORS),
    }.get(args.scenario, (args.scenario,))
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            # Each seed is generated once and replayed at every factor; the report keeps the
            # order kind, factor, seed.
            reports: dict[float, list[str]] = {factor: [] for factor in scales}
            for seed in args.seeds:
                generated = _generate(kind, seed)
                for factor in scales:
                    scenario = generated.scaled(factor)
                    result = score(scenario, Path(tmp), factor, args.strict)
                    reports[factor] += _report(seed, scenario, result, args.explain)
                    totals[factor].add(kind, scenario, result)
            for factor in scales:
                print(f"== {kind} x{factor:g} ==" if several else f"== {kind} ==")
                print("\n".join(reports[factor]))
    if several:
        seeds = " ".join(map(str, args.seeds))
        for factor, total in totals.items():
            per_kind = ", ".join(f"{kind} {n}" for kind, n in total.false_per_kind.items())
            print(
                f"scale x{factor:g}: recall {total.detected}/{total.expected}, "
                f"false pages {sum(total.false_per_kind.values())} ({per_kind}), seeds {seeds}"
            )


@dataclass(slots=True)
class _Totals:
    """One scale factor's results over every scenario and seed."""

    detected: int = 0
    expected: int = 0
    false_per_kind: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, scenario: Scenario, result: dict[str, object]) -> None:
        detected = result["detected"]
        false_pages = result["false_pages"]
        assert isinstance(detected, dict) and isinstance(false_pages, list)
        self.detected += len(detected)
        self.expected += len(scenario.expected)
        self.false_per_kind[kind] = self.false_per_kind.get(kind, 0) + len(false_pages)


def _report(
    seed: int, scenario: Scenario, result: dict[str, object], explain: bool = False
) -> list[str]:
    detected = result["detected"]
    assert isinstance(detected, dict)
    ttd = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in detected.items())
    false_pages = result["false_pages"]
    assert isinstance(false_pages, list)
    lines = [
        f"seed {seed}: recall {result['recall']:.0%} "
        f"({len(detected)}/{len(scenario.expected)}), "
        f"false pages {len(false_pages)}, "
        f"{result['records']:,} records replayed in {result['seconds']:.1f}s",
        f"  time to detect: {ttd}",
    ]
    if result["missed"]:
        lines.append(f"  missed: {', '.join(result['missed'])}")  # type: ignore[arg-type]
    lines += [f"  false page: {page}" for page in false_pages]
    if explain:
        explained = result["explained"]
        assert isinstance(explained, list)
        lines += [f"  spike {line}" for line in explained]
    return lines


if __name__ == "__main__":
    main()
