"""The README's two commands are the ones CI and a newcomer actually run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [line.strip() for line in quick.splitlines() if line.startswith("    python3 -m pip")]


def test_readme_opens_with_install_run_and_install_test_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2, commands
    run, test = commands
    assert "egressd run" in run
    assert "pytest" in test and "[test]" in test


def test_ci_runs_the_readme_test_command_word_for_word() -> None:
    test_command = _readme_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = [line.strip() for line in ci.splitlines()]
    assert test_command in lines
    assert re.search(r"EGRESSD_REQUIRE_INTEGRATION=1", ci)
    # pytest's "no tests collected" (exit 5) must fail CI.
    assert '"$rc" -eq 5' in ci


def test_example_config_is_valid_and_names_every_section() -> None:
    from egressd.config import load_config

    config = load_config(ROOT / "config" / "egressd.toml")
    assert config.groups and config.sources.netflow
    text = (ROOT / "config" / "egressd.toml").read_text(encoding="utf-8")
    for section in (
        "[networks]",
        "[[groups]]",
        "[detection]",
        "[state]",
        "[http]",
        "[[sources.netflow]]",
        "# [[sources.kafka]]",
        "# [[sources.capture]]",
        "[geo]",
        "# [[geo.region_maps]]",
        "[alertmanager]",
    ):
        assert section in text, section
