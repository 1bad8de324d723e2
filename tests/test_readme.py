"""The README's two commands are the ones CI and a newcomer actually run."""

from __future__ import annotations

import argparse
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


def _commands_table() -> dict[str, str]:
    """README "Commands": subcommand → its synopsis cell."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Commands", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in section.splitlines():
        found = re.match(r"\| `egressd ([a-z-]+)([^`]*)`", line)
        if found and not found.group(1).startswith("-"):
            rows[found.group(1)] = found.group(2)
    return rows


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    from egressd.cli import _parser

    (action,) = [a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_readme_commands_are_the_programs_with_their_options() -> None:
    """Every subcommand has a row in README "Commands"; every option a row names exists, and
    every option of a subcommand is named in the README (in its row, or in the text)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = _commands_table()
    parsers = _subparsers()
    assert sorted(rows) == sorted(parsers)
    for name, parser in parsers.items():
        options = {
            option
            for action in parser._actions
            for option in action.option_strings
            if option.startswith("--") and option != "--help"
        }
        named = set(re.findall(r"--[a-z-]+", rows[name]))
        assert sorted(named - options) == [], f"egressd {name}: README names options it lacks"
        unnamed = [o for o in sorted(options) if not re.search(rf"`[^`]*{o}\b[^`]*`", readme)]
        assert unnamed == [], f"egressd {name}: options the README never names"
