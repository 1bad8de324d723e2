"""Detection quality on generated scenarios: recall, false pages and time to detect per seed.

Run: ``python benchmarks/detection_bench.py [--scenario KIND] [--seeds 1 2 3]``, KIND one of
month, nine-day, both, saas, campus, small-office, networks, all. ``both`` (the default) is
the month and the nine days; ``networks`` the three differently shaped months of
tests/network_scenarios.py (a cloud-heavy company, a university, a small office behind 1:1000
sampling); ``all`` is all five.
Each scenario is replayed with its own configuration (the months set only ``interval`` and
``learning`` under ``[detection]``: the defaults do the work). A page is an alert that fires;
it is true when it matches an injected exfiltration (alertname, group, destination country)
and starts within one interval after the exfiltration crossed its threshold; every other page
is false. Time to detect is ``startsAt`` minus the moment the threshold was crossed.
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from network_scenarios import GENERATORS
from scenarios import INTERVAL, Scenario, generate, generate_month

from egressd.config import parse_config
from egressd.replay import replay


def _time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def score(scenario: Scenario, directory: Path) -> dict[str, object]:
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
    for event in firing:
        labels = event["labels"]
        key = (labels["alertname"], labels["group"], labels["dst_country"])
        starts = _time(event["startsAt"])
        exfil = expected.get(key)
        if exfil is not None and exfil.crossing <= starts <= exfil.crossing + INTERVAL:
            detected.setdefault(exfil.name, starts - exfil.crossing)
        else:
            false_pages.append(f"{'/'.join(key)}@{event['startsAt']}")
    missed = [x.name for x in scenario.expected if x.name not in detected]
    return {
        "seed": scenario.seed,
        "recall": len(detected) / len(scenario.expected),
        "false_pages": false_pages,
        "detected": detected,
        "missed": missed,
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
    args = parser.parse_args()
    kinds = {
        "both": ("month", "nine-day"),
        "networks": tuple(GENERATORS),
        "all": ("month", "nine-day", *GENERATORS),
    }.get(args.scenario, (args.scenario,))
    with tempfile.TemporaryDirectory() as tmp:
        for kind in kinds:
            print(f"== {kind} ==")
            for seed in args.seeds:
                scenario = _generate(kind, seed)
                result = score(scenario, Path(tmp))
                detected = result["detected"]
                assert isinstance(detected, dict)
                ttd = ", ".join(f"{name} {seconds:.0f}s" for name, seconds in detected.items())
                false_pages = result["false_pages"]
                assert isinstance(false_pages, list)
                print(
                    f"seed {seed}: recall {result['recall']:.0%} "
                    f"({len(detected)}/{len(scenario.expected)}), "
                    f"false pages {len(false_pages)}, "
                    f"{result['records']:,} records replayed in {result['seconds']:.1f}s"
                )
                print(f"  time to detect: {ttd}")
                if result["missed"]:
                    print(f"  missed: {', '.join(result['missed'])}")  # type: ignore[arg-type]
                for page in false_pages:
                    print(f"  false page: {page}")


if __name__ == "__main__":
    main()
