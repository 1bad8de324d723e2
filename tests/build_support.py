"""Marks for tests that only the pure-Python build can run.

A test that replaces a method of a compiled class (monkeypatch) changes nothing the compiled
code calls natively; such tests run where the module is Python (every editable install, and
the pure-Python pass of ``.ci/run``) and skip, saying why, where it is compiled.
"""

from __future__ import annotations

import pytest

from egressd.build_info import compiled_modules


def pure_python_only(module: str) -> pytest.MarkDecorator:
    """Skip when ``module`` is compiled: the test patches what its compiled code calls."""
    return pytest.mark.skipif(
        module in compiled_modules(),
        reason=(
            f"patches methods of {module}, which is compiled here and calls them natively "
            "(runs on the pure-Python build: .ci/run's second pass)"
        ),
    )
