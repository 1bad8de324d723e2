"""Configuration loading (contract 3): every documented key accepted, every problem reported
with its key path, file and line, and ``egressd check-config`` exit codes."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from egressd.config import Config, load_config, parse_config
from egressd.errors import ConfigError


def _full_config(tmp: Path) -> str:
    for name in ("country.mmdb", "asn.mmdb", "ip-ranges.json"):
        (tmp / name).write_bytes(b"")
    return f"""\
[networks]
local = ["10.0.0.0/8", "fd00::/8"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16", "fd00:20::/32"]
expected_countries = ["GB", "US", "IE"]

[[groups]]
name = "office"
sources = ["10.30.0.0/16"]

[detection]
interval = "5m"
learning = "3d"
unexpected_min_bytes = "100MB"
unexpected_window = "1h"

[state]
path = "{tmp / "state.json"}"

[http]
listen = "127.0.0.1:9108"

[[sources.netflow]]
listen = "127.0.0.1:2055"
allowed_exporters = ["192.0.2.0/24"]

[[sources.kafka]]
bootstrap_servers = ["127.0.0.1:9092"]
topics = ["flows"]
group_id = "egressd"
format = "goflow2-json"

[[sources.capture]]
interface = "eth0"
bpf = "ip or ip6"

[geo]
country_mmdb = "{tmp / "country.mmdb"}"
asn_mmdb = "{tmp / "asn.mmdb"}"
[[geo.region_maps]]
format = "aws"
path = "{tmp / "ip-ranges.json"}"

[alertmanager]
urls = ["http://127.0.0.1:9093"]
resend_interval = "1m"
"""


def test_every_contract_key_is_accepted_with_its_meaning(tmp_path: Path) -> None:
    path = tmp_path / "egressd.toml"
    path.write_text(_full_config(tmp_path))
    config = load_config(path)
    assert config.networks.local == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::/8"),
    )
    research, office = config.groups
    assert research.name == "research"
    assert research.sources == (
        ipaddress.ip_network("10.20.0.0/16"),
        ipaddress.ip_network("fd00:20::/32"),
    )
    assert research.expected_countries == frozenset({"GB", "US", "IE"})
    assert office.expected_countries is None  # learned
    d = config.detection
    assert (d.interval, d.learning, d.unexpected_window) == (300.0, 3 * 86400.0, 3600.0)
    assert d.unexpected_min_bytes == 100 * 1000**2
    assert config.state.path == tmp_path / "state.json"
    assert config.http.listen == "127.0.0.1:9108"
    (netflow,) = config.sources.netflow
    assert netflow.listen == "127.0.0.1:2055"
    assert netflow.allowed_exporters == (ipaddress.ip_network("192.0.2.0/24"),)
    (kafka,) = config.sources.kafka
    assert (kafka.bootstrap_servers, kafka.topics) == (("127.0.0.1:9092",), ("flows",))
    assert (kafka.group_id, kafka.format) == ("egressd", "goflow2-json")
    (capture,) = config.sources.capture
    assert (capture.interface, capture.bpf) == ("eth0", "ip or ip6")
    assert config.geo.country_mmdb == tmp_path / "country.mmdb"
    assert config.geo.asn_mmdb == tmp_path / "asn.mmdb"
    (region_map,) = config.geo.region_maps
    assert (region_map.format, region_map.path) == ("aws", tmp_path / "ip-ranges.json")
    assert config.alertmanager.urls == ("http://127.0.0.1:9093",)
    assert config.alertmanager.resend_interval == 60.0
    assert config.source_path == str(path)


def test_defaults_match_the_documented_ones() -> None:
    d = parse_config("").detection
    assert d == Config().detection
    assert (d.interval, d.learning, d.unexpected_window, d.resolve_after) == (
        300.0,
        3 * 86400.0,
        3600.0,
        900.0,
    )
    assert (d.unexpected_min_bytes, d.spike_min_bytes) == (100_000_000, 100_000_000)
    assert (d.spike_ratio, d.spike_deviations, d.spike_min_observations) == (4.0, 4.0, 12)
    assert d.spike_floors_scale_above == 1_500_000_000
    assert parse_config("").http.listen.startswith("127.0.0.1:")


BAD = """\
[networks]
local = ["10.0.0.0/8", "bogus"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16"]
expected_countries = ["GB", "USA"]
colour = "blue"

[[groups]]
name = "research"
sources = ["10.21.0.0/16"]

[detection]
interval = "5 minutes"
unexpected_min_bytes = "lots"
spike_ratio = 0.5

[http]
listen = "nowhere"

[alertmanager]
urls = ["ftp://127.0.0.1:9093"]

[surprise]
x = 1
"""

# (key path, line) of every problem planted in BAD
BAD_PROBLEMS = [
    ("networks.local", 2),
    ("groups[0].expected_countries", 7),
    ("groups[0].colour", 8),
    ("groups[1].name", 11),
    ("detection.interval", 15),
    ("detection.unexpected_min_bytes", 16),
    ("detection.spike_ratio", 17),
    ("http.listen", 20),
    ("alertmanager.urls", 23),
]


def test_every_problem_names_key_file_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BAD, "/etc/egressd/bad.toml")
    problems = info.value.problems
    for key, line in BAD_PROBLEMS:
        prefix = f"/etc/egressd/bad.toml:{line}: {key}: "
        assert any(p.startswith(prefix) for p in problems), (key, line, problems)
    # The unknown [surprise] table is reported too (at its header: see the test below).
    assert any(
        p.startswith("/etc/egressd/bad.toml") and ": surprise: unknown key" in p for p in problems
    ), problems
    assert len(problems) == len(BAD_PROBLEMS) + 1, problems


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            '[detection]\nintervall = "5m"\n',
            "t.toml:2: detection.intervall: unknown key (did you mean interval?)",
        ),
        (
            "[detection]\nSpike_Ratio = 3.0\n",
            "t.toml:2: detection.Spike_Ratio: unknown key (did you mean spike_ratio?)",
        ),
        (
            '[[groups]]\nname = "a"\nsources = ["10.0.0.0/8"]\nexpected_country = ["GB"]\n',
            "t.toml:4: groups[0].expected_country: unknown key (did you mean expected_countries?)",
        ),
        (
            '[htttp]\nlisten = "127.0.0.1:9108"\n',
            "t.toml:1: htttp: unknown key (did you mean http?)",
        ),
        (
            '[[sources.netflows]]\nlisten = "127.0.0.1:2055"\n',
            "t.toml:1: sources.netflows: unknown key (did you mean netflow?)",
        ),
        ("[detection]\nbogus = 1\n", "t.toml:2: detection.bogus: unknown key"),
    ],
)
def test_an_unknown_key_close_to_a_known_one_names_it(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.toml")
    assert problem in info.value.problems


def test_unknown_table_names_its_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(BAD, "bad.toml")
    assert "bad.toml:25: surprise: unknown key" in info.value.problems


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("name = 1\n\n[[surprise]]\nx = 1\n", "t.toml:3: surprise: unknown key"),
        ('[detection]\ninterval = "5m"\n\n[detection.extra]\nx = 1\n', "t.toml:4: detection.extra"),
        (
            '[[groups]]\nname = "a"\nsources = ["10.0.0.0/8"]\n'
            '[[groups]]\nname = "b"\nsources = ["10.1.0.0/16"]\n[groups.extra]\ny = 1\n',
            "t.toml:7: groups[1].extra",
        ),
    ],
)
def test_unknown_tables_are_located_at_their_headers(text: str, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "t.toml")
    assert any(p.startswith(problem) for p in info.value.problems), info.value.problems


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[detection]\nlearning = "three days"\n', "detection.learning"),
        ("[detection]\ninterval = 0\n", "detection.interval"),
        ('[detection]\nunexpected_window = "1m"\n', "detection.unexpected_window"),
        ("[detection]\nspike_min_observations = -1\n", "detection.spike_min_observations"),
        ("[detection]\nspike_floors_scale_above = -1\n", "detection.spike_floors_scale_above"),
        ('[detection]\ntimezone = "Mars/Olympus"\n', "detection.timezone"),
        ("[networks]\nlocal = []\n", "networks.local"),
        ('[[groups]]\nname = "x"\n', "groups[0].sources"),
        ('[[groups]]\nname = "other"\nsources = ["10.0.0.0/8"]\n', "groups[0].name"),
        ('[[sources.kafka]]\ntopics = ["t"]\n', "sources.kafka[0].bootstrap_servers"),
        (
            '[[sources.kafka]]\nbootstrap_servers = ["k:9092"]\ntopics = ["t"]\nformat = "csv"\n',
            "sources.kafka[0].format",
        ),
        ('[geo]\ncountry_mmdb = "/nonexistent/x.mmdb"\n', "geo.country_mmdb"),
        ('[[geo.region_maps]]\nformat = "oracle"\npath = "x"\n', "geo.region_maps[0].format"),
        ('[alertmanager]\nresend_interval = "soon"\n', "alertmanager.resend_interval"),
        ("[state]\nunknown = 1\n", "state.unknown"),
        ('networks = "10.0.0.0/8"\n', "networks"),
        ("[[sources.netflow]]\nworkers = 0\n", "sources.netflow[0].workers"),
        ("[[sources.netflow]]\nworkers = 65\n", "sources.netflow[0].workers"),
        ('[[sources.netflow]]\nworkers = "many"\n', "sources.netflow[0].workers"),
    ],
)
def test_bad_values_are_rejected_with_their_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.toml")
    assert any(f": {key}: " in p for p in info.value.problems), info.value.problems


def test_netflow_workers_default_to_one_and_auto_means_one_per_cpu() -> None:
    (default,) = parse_config("[[sources.netflow]]\n").sources.netflow
    assert default.workers == 1
    (three,) = parse_config("[[sources.netflow]]\nworkers = 3\n").sources.netflow
    assert three.workers == 3
    (auto,) = parse_config('[[sources.netflow]]\nworkers = "auto"\n').sources.netflow
    assert auto.workers == min(os.cpu_count() or 1, 64)


def test_invalid_toml_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"c\.toml"):
        parse_config("[detection\n", "c.toml")


def _check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egressd.cli", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_check_config_exit_codes_and_all_problems(tmp_path: Path) -> None:
    good = tmp_path / "good.toml"
    good.write_text(_full_config(tmp_path))
    result = _check_config(good)
    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout

    bad = tmp_path / "bad.toml"
    bad.write_text(BAD)
    result = _check_config(bad)
    assert result.returncode == 2
    for key, line in BAD_PROBLEMS:
        assert f"{bad}:{line}: {key}: " in result.stderr, (key, result.stderr)
    assert "surprise: unknown key" in result.stderr

    result = _check_config(tmp_path / "missing.toml")
    assert result.returncode == 2
    assert "missing.toml" in result.stderr


def test_check_config_says_when_alerts_page_no_one(tmp_path: Path) -> None:
    import subprocess
    import sys

    config = tmp_path / "egressd.toml"
    config.write_text('[[sources.netflow]]\nlisten = "127.0.0.1:0"\n')

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "egressd.cli", "check-config", "--config", str(config)],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
        )

    alone = check()
    assert alone.returncode == 0, alone.stderr
    assert "no [alertmanager] urls: alerts page no one" in alone.stdout
    config.write_text(config.read_text() + '[alertmanager]\nurls = ["http://127.0.0.1:9093"]\n')
    paged = check()
    assert paged.returncode == 0 and "page no one" not in paged.stdout
