"""``egressd replay --report/--summary/--json``: what each group sent where, and the alerts.

The report's numbers are checked against an independent count of the scenario's flows; the
HTML page is opened in a real headless Chromium (Debian's ``chromium``) with every host
name unresolvable, so it must render from what it carries.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import pty
import re
import shutil
import struct
import subprocess
import sys
import termios
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import iptocc
import orjson
import pytest
from scenarios import Scenario, generate, least_page_bytes

from egressd.aggregate import Accum
from egressd.config import Config, GeoConfig, load_config
from egressd.enrich import DestinationLabels
from egressd.replay import replay
from egressd.report.collect import MAX_DAY_DESTINATIONS, MAX_POINTS, ReportCollector
from egressd.report.html import chart_figure, render_html
from egressd.report.text import render_text
from egressd.units import format_bytes
from tests.enrich_mmdb_factory import maxmind_asn, write_mmdb
from tests.integration_support import REPO, missing

GROUPS = [
    ("research", ["10.20.0.0/16", "fd00:20::/32"]),
    ("office", ["10.30.0.0/16"]),
    ("servers", ["10.40.0.0/16", "fd00:40::/32"]),
    ("lab", ["10.60.0.0/16"]),
]


@pytest.fixture(scope="module")
def scenario_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Scenario, Path, Path]:
    scenario = generate(seed=3, days=8)
    directory = tmp_path_factory.mktemp("report")
    flows = scenario.write(directory / "flows.goflow2.jsonl")
    config = scenario.write_config(directory / "egressd.toml")
    return scenario, flows, config


def _group_of(address: str) -> str:
    ip = ipaddress.ip_address(address)
    for name, networks in GROUPS:
        if any(ip in ipaddress.ip_network(n) for n in networks):
            return name
    return "other"


def _independent_totals(scenario: Scenario) -> Counter[tuple[str, str, str]]:
    """(group, UTC day, country) → bytes, from the flows themselves and iptocc."""
    totals: Counter[tuple[str, str, str]] = Counter()
    for flow in scenario.flows:
        if not flow.src.startswith(("10.", "fd00:")) or flow.dst.startswith(("10.", "fd00:")):
            continue
        day = datetime.fromtimestamp(flow.end, UTC).strftime("%Y-%m-%d")
        country = iptocc.country_code(flow.dst)
        totals[_group_of(flow.src), day, country] += flow.real_bytes
    return totals


def _egressd(*args: str, stderr: int = subprocess.PIPE) -> subprocess.CompletedProcess[bytes]:
    environment = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "egressd.cli", *args],
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=environment,
        cwd=REPO,
        timeout=300,
        check=False,
    )


def test_report_totals_match_the_flows_and_alerts_match_the_events(
    scenario_files: tuple[Scenario, Path, Path], tmp_path: Path
) -> None:
    scenario, flows, config_path = scenario_files
    config = load_config(config_path)
    collector = ReportCollector(config.detection.interval)
    events_path = tmp_path / "alerts.jsonl"
    with open(events_path, "wb") as out:
        summary = replay(config, "goflow2-json", [str(flows)], out, report=collector)
    data = collector.data
    assert summary.late_records == 0
    got = Counter({(t.group, t.day, t.country): t.bytes for t in data.totals()})
    assert +got == +_independent_totals(scenario)
    assert sum(got.values()) == summary.egress_bytes
    # The chart series hold the same bytes as the day table.
    for group in data.groups():
        assert sum(data.country_totals(group).values()) == sum(t.bytes for t in data.totals(group))
    # Top talkers of a day are real sources of that group and destinations in that country.
    for total in data.totals():
        for address, _size in total.sources.top(3):
            assert _group_of(address) == total.group
        for address, _size in total.destinations.top(3):
            assert iptocc.country_code(address) == total.country

    events = [orjson.loads(line) for line in events_path.read_bytes().splitlines()]
    firing = [e for e in events if e["status"] == "firing"]
    assert len(firing) == len(data.alerts) >= len(scenario.expected)
    for span, event in zip(data.alerts, firing, strict=True):
        assert span.labels == event["labels"]
        assert span.annotations == event["annotations"]
    resolved = {tuple(sorted(e["labels"].items())): e["endsAt"] for e in events[len(firing) :]}
    for span in data.alerts:
        ends = resolved.get(tuple(sorted(span.labels.items())))
        if ends is not None:
            assert span.ends_at is not None
            assert datetime.fromtimestamp(span.ends_at, UTC) == datetime.fromisoformat(ends)
    # Every injected exfiltration shows in its group's chart as a marked alert.
    for expected in scenario.expected:
        figure = chart_figure(data, expected.group)
        notes = [n["text"] for n in figure["layout"]["annotations"]]
        assert f"{expected.alertname} {expected.dst_country}" in notes
        assert expected.dst_country in {t["name"] for t in figure["data"]} or any(
            t["name"].startswith("other") for t in figure["data"]
        )


def test_summary_and_json_on_stdout(scenario_files: tuple[Scenario, Path, Path]) -> None:
    scenario, flows, config = scenario_files
    args = ["replay", "--config", str(config), "--format", "goflow2-json", str(flows)]
    text = _egressd(*args, "--summary")
    assert text.returncode == 0, text.stderr.decode()
    table = text.stdout.decode()
    assert not table.lstrip().startswith("{")  # the table, not alert events
    doc = _egressd(*args, "--json")
    assert doc.returncode == 0, doc.stderr.decode()
    data = orjson.loads(doc.stdout)
    totals = _independent_totals(scenario)
    sections = {
        part.split(":", 1)[0]: part for part in re.split(r"^group ", table, flags=re.M) if part
    }
    for (group, day, country), size in totals.items():
        (row,) = [
            r for r in data["groups"][group]["days"] if r["day"] == day and r["country"] == country
        ]
        assert row["bytes"] == size
        line = re.search(rf"^  {day}\s+{country}\s+(\S+ \S+)\s+\d+\s", sections[group], re.M)
        assert line is not None and line.group(1) == format_bytes(size), (day, country)
    for expected in scenario.expected:
        alerts = data["groups"][expected.group]["alerts"]
        assert any(
            a["labels"]["alertname"] == expected.alertname
            and a["labels"]["dst_country"] == expected.dst_country
            and int(a["annotations"]["bytes"]) >= least_page_bytes(expected)
            for a in alerts
        )
        assert f"{expected.alertname} {expected.dst_country}: " in sections[expected.group]
        # Each alert line is followed by its evidence: who sent how much where.
        evidence = re.findall(
            rf"{expected.alertname} {expected.dst_country}: .*\n      (bytes .*)",
            sections[expected.group],
        )
        assert evidence and all("top sources " in e for e in evidence), evidence
        assert all("top destinations " in e for e in evidence), evidence
    # Both together are refused: stdout carries one of them.
    both = _egressd(*args, "--json", "--summary")
    assert both.returncode == 2 and b"not allowed with" in both.stderr


def test_report_without_the_extra_says_how_to_install_it(
    scenario_files: tuple[Scenario, Path, Path], tmp_path: Path
) -> None:
    _scenario, flows, config = scenario_files
    code = (
        "import sys; sys.modules['plotly'] = None; from egressd.cli import main; "
        f"sys.exit(main(['replay', '-c', {str(config)!r}, '-f', 'goflow2-json', "
        f"'--report', {str(tmp_path / 'r.html')!r}, {str(flows)!r}]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        check=False,
    )
    assert done.returncode == 1
    assert "pip install 'egressd[report]'" in done.stderr.decode()
    assert not (tmp_path / "r.html").exists()
    assert not done.stdout  # refused before replaying anything
    nowhere = _egressd(
        "replay", "-c", str(config), "-f", "goflow2-json", "--report",
        str(tmp_path / "absent" / "r.html"), str(flows),
    )  # fmt: skip
    assert nowhere.returncode == 1
    assert b"its directory does not exist" in nowhere.stderr
    assert b"replay:" not in nowhere.stderr  # before the replay, not after it


def test_labels_cannot_break_out_of_the_page() -> None:
    collector = ReportCollector(300.0)
    hostile = "</script><script>alert(1)</script>"
    collector.alert(
        {
            "status": "firing",
            "labels": {"alertname": "EgressUnexpectedDestination", "group": hostile},
            "annotations": {"summary": hostile},
            "startsAt": "2026-03-09T14:05:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
        }
    )
    page = render_html(collector.data)
    assert hostile not in page
    assert "&lt;/script&gt;&lt;script&gt;alert(1)" in page


def test_progress_on_a_terminal_only(scenario_files: tuple[Scenario, Path, Path]) -> None:
    _scenario, flows, config = scenario_files
    args = ["replay", "-c", str(config), "-f", "goflow2-json", "--summary", str(flows)]
    quiet = _egressd(*args)
    assert quiet.returncode == 0
    assert b"records/s]" not in quiet.stderr and b"\r" not in quiet.stderr
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    try:
        done = _egressd(*args, stderr=terminal)
    finally:
        os.close(terminal)
    seen = b""
    try:
        while chunk := os.read(controller, 65536):
            seen += chunk
    except OSError:  # the terminal's other end is closed: everything is read
        pass
    finally:
        os.close(controller)
    assert done.returncode == 0
    assert re.search(rb"replay .*flows\.goflow2\.jsonl: [0-9.]+k? records", seen), seen[-500:]
    assert b"replay: alerts" in seen  # the summary follows the bar


def _one_interval() -> ReportCollector:
    collector = ReportCollector(300.0)
    start = datetime(2026, 3, 9, 14, 0, tzinfo=UTC).timestamp()
    bucket = _bucket([("research", DestinationLabels("CN"), 2_923_076_907)])
    collector.observe_interval(start, bucket)  # type: ignore[arg-type]
    return collector


def _one_alert(annotations: dict[str, str]) -> ReportCollector:
    collector = _one_interval()
    collector.alert(
        {
            "status": "firing",
            "labels": {
                "alertname": "EgressUnexpectedDestination",
                "group": "research",
                "dst_country": "CN",
            },
            "annotations": annotations,
            "startsAt": "2026-03-09T14:05:00Z",
            "endsAt": "0001-01-01T00:00:00Z",
        }
    )
    return collector


def test_top_destinations_over_the_whole_input() -> None:
    collector = ReportCollector(300.0)
    start = datetime(2026, 3, 9, 14, 0, tzinfo=UTC).timestamp()
    for day in range(3):  # the same address on three days, another on one
        bucket = _bucket([("research", DestinationLabels("CN"), 2_000_000_000)])
        if day == 1:
            gb = DestinationLabels("GB")
            bucket[("research", gb)] = Accum(8)  # type: ignore[index]
            bucket[("research", gb)].add("10.20.0.5", "81.2.69.160", 500_000_000, 1)  # type: ignore[index]
        collector.observe_interval(start + day * 86400, bucket)  # type: ignore[arg-type]
    data = collector.data
    assert data.top_destinations("research") == [
        ("47.100.23.45", "CN", 6_000_000_000),
        ("81.2.69.160", "GB", 500_000_000),
    ]
    assert (
        "  top destinations over the whole input: 47.100.23.45 (CN, 6.00 GB), "
        "81.2.69.160 (GB, 500.00 MB)\n"
    ) in render_text(data)
    page = render_html(data)
    assert '<td>47.100.23.45</td><td>CN</td><td class="num">6.00 GB</td>' in page
    assert data.to_json()["groups"]["research"]["top_destinations"][0] == [
        "47.100.23.45",
        "CN",
        6_000_000_000,
    ]


def test_a_chart_of_one_interval_shows_it_in_bytes() -> None:
    figure = chart_figure(_one_interval().data, "research")
    (trace,) = figure["data"]
    assert trace["y"] == [2_923_076_907] and "markers" in trace["mode"]  # a lone point shows
    layout = figure["layout"]
    low, high = layout["xaxis"]["range"]  # an interval wide, not a millisecond
    assert low < trace["x"][0] < high and high[:13] != low[:13]
    assert layout["showlegend"] is True  # one country is still named
    # 2.9GB, not plotly's default 2.9B (billions, read as bytes)
    assert layout["yaxis"]["exponentformat"] == "SI" and layout["yaxis"]["ticksuffix"] == "B"
    assert "(bytes per 5m)" in layout["title"]["text"]


def test_many_alerts_are_shaded_without_names_covering_the_chart() -> None:
    collector = _one_interval()
    for minute in range(0, 60, 4):
        collector.alert(
            {
                "status": "firing",
                "labels": {"alertname": "EgressUnexpectedDestination", "group": "research"},
                "annotations": {"summary": "..."},
                "startsAt": f"2026-03-09T15:{minute:02d}:00Z",
                "endsAt": "0001-01-01T00:00:00Z",
            }
        )
    figure = chart_figure(collector.data, "research")
    assert len(figure["layout"]["shapes"]) == 2 * 15  # every alert shaded and marked
    assert figure["layout"]["annotations"] == []
    assert "15 alerts shaded" in figure["layout"]["title"]["text"]
    # The list under it: the first twelve open with their evidence, the rest one line each
    # that names what happened.
    page = render_html(collector.data)
    alerts = re.findall(r'<details class="alert"[^>]*>', page)
    assert len(alerts) == 15 and sum(a.endswith(" open>") for a in alerts) == 12
    assert len(re.findall(r"still firing: \.\.\.</summary>", page)) == 3


def test_an_alert_shows_what_happened_before_its_other_evidence() -> None:
    collector = _one_alert(
        {
            "baseline_bytes": "0",
            "bytes": "2923076907",
            "description": "Group research sent 2.92 GB to CN ...",
            "expected_countries": "GB, US",
            "summary": "research sent 2.92 GB to CN",
            "top_destinations": "47.100.23.45",
            "top_sources": "10.20.0.17",
            "window": "1h",
        }
    )
    page = render_html(collector.data)
    names = re.findall(r"<dt>([a-z_]+)</dt>", page)
    assert names[:5] == ["summary", "description", "bytes", "baseline_bytes", "window"]
    assert sorted(names) == sorted(collector.data.alerts[0].annotations)
    text = render_text(collector.data)
    assert (
        "      bytes 2.92 GB; baseline 0 B; top sources 10.20.0.17; "
        "top destinations 47.100.23.45\n" in text
    ), text


# -- the page in a real browser ---------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    missing("chromium is not installed (Debian: apt-get install chromium)")
    raise AssertionError("unreachable")


def _browse(browser: str, page: Path, profile: Path, *extra: str) -> tuple[str, str]:
    """(DOM after scripts ran, browser log) of ``page`` in headless Chromium, offline."""
    done = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            # Every host name fails to resolve: the page has only what it carries.
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={profile}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=10000",
            *extra,
            page.as_uri(),
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    return done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")


def _console(log: str) -> list[str]:
    return [line for line in log.splitlines() if ":CONSOLE" in line]


@pytest.mark.integration
@pytest.mark.slow
def test_report_renders_in_headless_chromium(
    scenario_files: tuple[Scenario, Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    browser = _chromium()
    scenario, flows, config = scenario_files
    work = tmp_path_factory.mktemp("chromium")
    report = work / "report.html"
    done = _egressd(
        "replay", "-c", str(config), "-f", "goflow2-json", "--report", str(report), str(flows)
    )
    assert done.returncode == 0, done.stderr.decode()
    assert f"report written to {report}" in done.stderr.decode()
    html = report.read_text(encoding="utf-8")
    # Nothing to fetch: no script, style or image from elsewhere.
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?(https?:)?//""", html)

    # The console check can fail: a page with an error is seen as such.
    canary = work / "canary.html"
    canary.write_text("<script>undefinedFunction()</script>", encoding="utf-8")
    _dom, log = _browse(browser, canary, work / "profile-canary", "--dump-dom")
    assert any("undefinedFunction" in line for line in _console(log)), log[-2000:]

    dom, log = _browse(browser, report, work / "profile-dom", "--dump-dom")
    assert _console(log) == [], _console(log)
    groups = sorted({_group_of(f.src) for f in scenario.flows if f.src.startswith("10.")})
    sections = re.findall(r'<section class="group"[^>]*data-group="([^"]+)"', dom)
    assert sorted(sections) == groups
    # plotly drew one chart per group: its SVG, a stacked trace per country, alert notes.
    assert dom.count('class="chart js-plotly-plot"') == len(groups)
    assert dom.count('class="main-svg"') >= len(groups)
    assert len(re.findall(r'class="trace scatter', dom)) >= len(groups)
    notes = re.findall(r'class="annotation-text"[^>]*data-unformatted="([^"]+)"', dom)
    for expected in scenario.expected:
        assert f"{expected.alertname} {expected.dst_country}" in notes
    assert dom.count('class="alert"') >= len(scenario.expected)
    assert '<table class="totals">' in dom
    overview = re.findall(r'<a href="#group-\d+">([^<]+)</a>', dom)
    assert sorted(overview) == groups
    # The day row of each alert's destination is highlighted in its group's table.
    alerted = re.findall(r'<tr class="alerted"><td>(\d{4}-\d\d-\d\d)</td><td>(\w\w)</td>', dom)
    for expected in scenario.expected:
        day = datetime.fromtimestamp(expected.crossing, UTC).strftime("%Y-%m-%d")
        assert (day, expected.dst_country) in alerted, (day, expected.dst_country)

    screenshot = work / "report.png"
    _dom, log = _browse(
        browser,
        report,
        work / "profile-shot",
        f"--screenshot={screenshot}",
        "--window-size=1280,1600",
        "--hide-scrollbars",
    )
    assert _console(log) == []
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 20_000  # a drawn page, not a blank one
    print(f"report screenshot: {screenshot}")


# -- bounds and finer labels ------------------------------------------------------------------


def _bucket(entries: list[tuple[str, DestinationLabels, int]]) -> dict[object, Accum]:
    bucket: dict[object, Accum] = {}
    for group, dest, size in entries:
        accum = bucket.setdefault((group, dest), Accum(8))
        accum.add("10.20.0.5", "47.100.23.45", size, 1)
    return bucket


@pytest.mark.parametrize(("days", "step"), [(5, 300.0), (30, 3600.0), (100, 86400.0)])
def test_long_inputs_are_summed_into_coarser_steps(days: int, step: float) -> None:
    collector = ReportCollector(300.0)
    start = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
    cn, us = DestinationLabels("CN"), DestinationLabels("US")
    for i in range(days * 288):
        bucket = _bucket([("research", cn, 1000), ("research", us, 7)])
        collector.observe_interval(start + i * 300, bucket)  # type: ignore[arg-type]
    data = collector.data
    assert data.step == step
    assert data.country_totals("research") == {"CN": days * 288 * 1000, "US": days * 288 * 7}
    assert len(data.series["research"]["CN"]) <= MAX_POINTS
    assert all(moment % step == 0 for moment in data.series["research"]["CN"])
    figure = chart_figure(data, "research")
    assert sum(figure["data"][0]["y"]) == days * 288 * 1000
    assert len(data.totals("research")) == 2 * days  # one row per country and day


def test_day_rows_are_bounded_and_keep_every_byte() -> None:
    collector = ReportCollector(300.0)
    start = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
    entries = [
        ("research", DestinationLabels("CN", asn=64512 + i, as_org=f"AS {i}"), 10)
        for i in range(MAX_DAY_DESTINATIONS + 50)
    ]
    collector.observe_interval(start, _bucket(entries))  # type: ignore[arg-type]
    rows = collector.data.totals("research")
    assert len(rows) == MAX_DAY_DESTINATIONS + 1
    assert sum(r.bytes for r in rows) == 10 * len(entries)
    (folded,) = [r for r in rows if r.asn == 0]
    assert folded.bytes == 10 * 50 and folded.country == "CN"


def test_asn_rows_in_the_table_json_and_page(tmp_path: Path) -> None:
    asn = write_mmdb(
        tmp_path / "GeoLite2-ASN.mmdb",
        "GeoLite2-ASN",
        {
            "47.100.0.0/16": maxmind_asn(37963, "Hangzhou Alibaba"),
            "8.8.8.0/24": maxmind_asn(15169, "GOOGLE"),
        },
    )
    config = Config(geo=GeoConfig(asn_mmdb=asn))
    start = datetime(2026, 3, 9, 14, tzinfo=UTC).timestamp()
    flows = tmp_path / "flows.jsonl"
    flows.write_bytes(
        b"".join(
            orjson.dumps({"time_end": start + i * 60, "src": "10.1.0.5", "dst": dst, "bytes": size})
            + b"\n"
            for i in range(30)
            for dst, size in (("47.100.23.45", 1_000_000), ("8.8.8.8", 2_000))
        )
    )
    collector = ReportCollector(config.detection.interval)
    with open(os.devnull, "wb") as out:
        replay(config, "egressd-json", [str(flows)], out, report=collector)
    rows = {
        (r["country"], r["asn"], r["as_org"]): r["bytes"]
        for r in collector.data.to_json()["groups"]["other"]["days"]
    }
    assert rows == {
        (iptocc.country_code("47.100.23.45"), 37963, "Hangzhou Alibaba"): 30_000_000,
        (iptocc.country_code("8.8.8.8"), 15169, "GOOGLE"): 60_000,
    }
    assert "AS37963 Hangzhou Alibaba" in render_text(collector.data)
    page = render_html(collector.data)
    assert "<th>ASN</th>" in page and "AS37963 Hangzhou Alibaba" in page
