"""Session-wide pytest hooks.

Tests that read real captures skip one by one when ``../shared/captures`` is absent (a fresh
clone): the summary then says, in one line, how many did and where the captures were sought.
"""

from __future__ import annotations

from pathlib import Path

import pytest

CAPTURES = Path(__file__).resolve().parents[1].parent / "shared" / "captures"
#: the words every capture-reading test skips with
CAPTURES_MISSING = "shared captures not found"


def _reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    skipped = terminalreporter.stats.get("skipped", [])
    count = sum(1 for report in skipped if CAPTURES_MISSING in _reason(report))
    if count:
        terminalreporter.write_line(
            f"{count} tests skipped: {CAPTURES_MISSING} at {CAPTURES} "
            "(README, Development: what they are and where they come from)",
            yellow=True,
        )
