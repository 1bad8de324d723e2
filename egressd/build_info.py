"""Which build of egressd is running: the hot modules compiled (mypyc) or pure Python.

A wheel compiles the modules listed in setup.py's ``COMPILED`` (:data:`HOT_MODULES` here); an
editable install or a machine without a C compiler runs them as Python. Both give the same
alerts and state; the compiled build is faster. ``egressd --version`` and the daemon's start
line say which one runs, and name compiled modules older than their source (an in-place build
not rebuilt after an edit).
"""

from __future__ import annotations

import importlib
import importlib.util
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

#: The modules setup.py compiles (tests/test_compiled_build.py keeps the two lists equal).
HOT_MODULES = (
    "egressd.baseline.grouprate",
    "egressd.baseline.seasonal",
    "egressd.cache",
    "egressd.classify",
    "egressd.columnar",
    "egressd.decode.columnar",
    "egressd.dedupe",
    "egressd.detect.alerts",
    "egressd.detect.base",
    "egressd.detect.detectors",
    "egressd.detect.newdest",
    "egressd.detect.policy",
    "egressd.detect.unexpected",
    "egressd.partials",
    "egressd.pipeline",
    "egressd.talkers",
)


#: The library holding the compiled modules' code (setup.py's ``group_name``).
GROUP_LIBRARY = "egressd__mypyc"


def compiled_modules() -> list[str]:
    """The hot modules that were imported from a compiled extension."""
    compiled = []
    for name in HOT_MODULES:
        path = getattr(importlib.import_module(name), "__file__", None) or ""
        if path.endswith(tuple(EXTENSION_SUFFIXES)):
            compiled.append(name)
    return compiled


def stale_modules() -> list[str]:
    """Compiled hot modules whose ``.py`` source is newer than the compiled code: an in-place
    build (``EGRESSD_COMPILE=1 pip install -e .``) that runs old code after an edit.

    The code of every compiled module is in one library (``egressd__mypyc``), rebuilt whenever
    one of them changes; the per-module files are small stubs the build may leave as they were.
    """
    stale: list[str] = []
    if not (Path(__file__).resolve().parents[1] / "setup.py").exists():
        return stale  # an installed wheel: its files' times say when pip wrote them
    spec = importlib.util.find_spec(GROUP_LIBRARY)
    if spec is None or not spec.origin:
        return stale
    built = Path(spec.origin).stat().st_mtime
    for name in compiled_modules():
        stub = Path(importlib.import_module(name).__file__ or "")
        source = stub.with_name(stub.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > built:
            stale.append(name)
    return stale


def describe() -> str:
    """``compiled: 17 of 17 hot modules``, ``pure Python``, plus any stale modules."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    text = f"compiled: {len(compiled)} of {len(HOT_MODULES)} hot modules"
    stale = stale_modules()
    if stale:
        text += "; source newer than the compiled module, rebuild: " + ", ".join(stale)
    return text
