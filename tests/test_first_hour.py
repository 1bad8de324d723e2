"""Rough edges a new user hits in the first hour, each pinned down.

Country codes are ISO 3166-1 alpha-2 as the geo data uses them; a network with host bits
set is refused with the network it is in; check-config lists problems in file order and warns
about a configuration without any source; ``run`` says which receive buffer it asked for and
which it got.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from egressd.config import config_warnings, parse_config
from egressd.countries import ISO_3166_ALPHA2
from egressd.enrich.embedded import EmbeddedCountryLabeler
from egressd.errors import ConfigError
from tests.integration_support import REPO, EgressdProcess, free_port, free_udp_port, wait_until


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "egressd.toml")
    return caught.value.problems


def _check_config(tmp_path: Path, text: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "egressd.toml"
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "egressd.cli", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )


GROUP = '[[groups]]\nname = "research"\nsources = ["10.20.0.0/16"]\n'


@pytest.mark.parametrize(
    ("code", "says"),
    [
        ("UK", "UK is not an ISO 3166-1 alpha-2 code: use GB"),
        ("EU", "the European Union is not a country"),
        ("ZZ", "ZZ labels destinations whose country is not known"),
        ("XK", "XK (Kosovo) is a user-assigned code, not ISO 3166-1"),
        ("QQ", "'QQ' is not an ISO 3166-1 alpha-2 country code"),
    ],
)
def test_expected_countries_must_be_iso_codes(code: str, says: str) -> None:
    (problem,) = _problems(GROUP + f'expected_countries = ["GB", "{code}"]\n')
    assert problem.startswith("egressd.toml:4: groups[0].expected_countries: ")
    assert says in problem


def test_expected_countries_accept_every_code_the_geo_data_gives() -> None:
    config = parse_config(GROUP + 'expected_countries = ["gb", "us", "IE"]\n')
    assert config.groups[0].expected_countries == {"GB", "US", "IE"}
    # Addresses the embedded data places in many countries: each label is an accepted code.
    labeler = EmbeddedCountryLabeler()
    seen = {
        labeler.label(f"{a}.{b}.1.1").country for a in range(1, 224, 3) for b in range(0, 256, 16)
    }
    assert len(seen) > 50
    assert seen - {"ZZ"} <= ISO_3166_ALPHA2
    assert len(ISO_3166_ALPHA2) == 249


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ('[networks]\nlocal = ["10.0.0.0/8", "192.168.1.5/16"]\n', "networks.local"),
        ('[[groups]]\nname = "lab"\nsources = ["192.168.1.5/16"]\n', "groups[0].sources"),
        ('[[groups]]\nname = "lab"\nsources = ["fd00:20::5/32"]\n', "groups[0].sources"),
    ],
)
def test_host_bits_are_an_error_that_names_the_network(section: str, key: str) -> None:
    (problem,) = _problems(section)
    assert f": {key}: " in problem
    assert "has host bits set" in problem
    network = "fd00:20::/32" if "fd00" in section else "192.168.0.0/16"
    assert f"the network is {network}" in problem


def test_single_addresses_and_clean_networks_are_fine() -> None:
    config = parse_config('[networks]\nlocal = ["10.0.0.0/8", "192.168.1.5", "fd00::/8"]\n')
    assert [str(n) for n in config.networks.local] == ["10.0.0.0/8", "192.168.1.5/32", "fd00::/8"]


def test_check_config_lists_problems_in_file_order(tmp_path: Path) -> None:
    text = (
        "[alertmanager]\n"  # 1
        'resend_interval = "often"\n'  # 2: read last by the loader, listed first
        "[detection]\n"  # 3
        'interval = "soon"\n'  # 4
        "[networks]\n"  # 5
        'local = ["192.168.1.5/16"]\n'  # 6
        "[[groups]]\n"  # 7
        'name = "research"\n'  # 8
        'sources = ["10.20.0.0/16"]\n'  # 9
        'expected_countries = ["UK"]\n'  # 10
    )
    done = _check_config(tmp_path, text)
    assert done.returncode == 2
    lines = [int(n) for n in re.findall(r"egressd\.toml:(\d+): ", done.stderr)]
    assert lines == [2, 4, 6, 10], done.stderr


def test_no_sources_warns_in_check_config(tmp_path: Path) -> None:
    done = _check_config(tmp_path, GROUP)
    assert done.returncode == 0
    assert "warning: no [[sources.netflow]], [[sources.kafka]] or [[sources.capture]]" in (
        done.stderr
    )
    with_source = _check_config(tmp_path, GROUP + '[[sources.netflow]]\nlisten = "127.0.0.1:0"\n')
    assert with_source.returncode == 0 and "warning" not in with_source.stderr
    assert config_warnings(parse_config(GROUP)) and not config_warnings(
        parse_config(GROUP + '[[sources.netflow]]\nlisten = "127.0.0.1:0"\n')
    )


def test_run_warns_without_sources_and_names_receive_buffers(tmp_path: Path) -> None:
    http = free_port()
    bare = tmp_path / "bare.toml"
    bare.write_text(f'[http]\nlisten = "127.0.0.1:{http}"\n')
    egressd = EgressdProcess(bare, f"127.0.0.1:{http}", tmp_path / "bare.log")
    egressd.start()
    try:
        wait_until(lambda: "egressd running" in egressd.log(), 10, what="startup log")
        assert "WARNING egressd: no [[sources.netflow]]" in egressd.log()
    finally:
        assert egressd.stop() == 0

    http, udp = free_port(), free_udp_port()
    config = tmp_path / "egressd.toml"
    config.write_text(
        f'[http]\nlisten = "127.0.0.1:{http}"\n'
        f'[[sources.netflow]]\nlisten = "127.0.0.1:{udp}"\nreceive_buffer = "256KiB"\n'
    )
    egressd = EgressdProcess(config, f"127.0.0.1:{http}", tmp_path / "egressd.log")
    egressd.start()
    try:
        wait_until(lambda: "receive buffer" in egressd.log(), 20, what="listening log line")
        line = next(x for x in egressd.log().splitlines() if "receive buffer" in x)
        found = re.search(r"configured (\d+) bytes, effective (\d+) bytes", line)
        assert found is not None, line
        assert int(found.group(1)) == 256 * 1024
        # Linux doubles what it is asked for (up to net.core.rmem_max): effective is not
        # configured, and the log names each.
        assert int(found.group(2)) != int(found.group(1))
        assert "no [[sources" not in egressd.log()
    finally:
        assert egressd.stop() == 0


def test_pretty_printed_json_input_says_one_object_per_line(tmp_path: Path) -> None:
    record = {"time_end": 1773064800, "src": "10.20.0.5", "dst": "47.100.23.45", "bytes": 100}
    flows = tmp_path / "flows.json"
    # One pretty-printed record, one proper JSON line, one truncated JSON line.
    flows.write_bytes(
        orjson.dumps(record, option=orjson.OPT_INDENT_2)
        + b"\n"
        + orjson.dumps(record)
        + b'\n{"time_end": 17730\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "egressd.cli", "replay", "-f", "egressd-json", str(flows)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "1 records from 8 units" in done.stderr
    assert "skipped 7 (bad_json=1, multi_line_json=6)" in done.stderr
    assert "each record must be one JSON object on one line" in done.stderr
    assert "jq -c" in done.stderr


def test_missing_shared_captures_are_summed_up_in_one_line(tmp_path: Path) -> None:
    # A fresh clone: the project's conftest in a tree with no ../shared beside it.
    tests = tmp_path / "clone" / "tests"
    tests.mkdir(parents=True)
    (tests / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tests / "test_uses_captures.py").write_text(
        "import pytest\n"
        "from conftest import CAPTURES\n"
        "@pytest.mark.parametrize('n', range(3))\n"
        "def test_capture(n):\n"
        "    if not CAPTURES.is_dir():\n"
        "        pytest.skip(f'shared captures not found at {CAPTURES}')\n"
        "def test_other_skip():\n"
        "    pytest.skip('softflowd is not installed')\n"
        "def test_runs():\n"
        "    assert True\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tests)],
        capture_output=True,
        text=True,
        cwd=tmp_path / "clone",
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    expected = f"3 tests skipped: shared captures not found at {tmp_path / 'shared' / 'captures'}"
    lines = [line for line in done.stdout.splitlines() if "tests skipped:" in line]
    assert len(lines) == 1 and lines[0].startswith(expected), done.stdout
    assert "1 passed, 4 skipped" in done.stdout
