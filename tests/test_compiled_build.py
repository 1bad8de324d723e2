"""The compiled build (mypyc, setup.py) and the pure-Python one are the same program.

setup.py compiles the hot modules from copies without ``__slots__``; these tests check that
transform, that setup.py and :mod:`egressd.build_info` name the same modules, and, when the
modules under test are compiled (CI builds them in place: ``EGRESSD_COMPILE=1``), that a
replay of a month of generated traffic gives byte-identical alerts and saved state with the
compiled modules and with their Python sources.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import orjson
import pytest
from scenarios import generate_month

from egressd.build_info import GROUP_LIBRARY, HOT_MODULES, compiled_modules

REPO = Path(__file__).resolve().parents[1]


def _setup_module() -> ModuleType:
    """setup.py as a module (its ``setup()`` call runs only as a script)."""
    spec = importlib.util.spec_from_file_location("egressd_setup", REPO / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_setup_compiles_the_modules_build_info_reports() -> None:
    compiled = _setup_module().COMPILED
    # The compiled code's library, whose build time says whether a module is stale.
    assert (
        f'group_name="{GROUP_LIBRARY.removesuffix("__mypyc")}"' in (REPO / "setup.py").read_text()
    )
    names = tuple(path.removesuffix(".py").replace("/", ".") for path in compiled)
    assert names == HOT_MODULES
    for path in compiled:
        assert (REPO / path).is_file(), path


def test_the_compiled_copies_lose_their_slots_and_nothing_else() -> None:
    source = (
        "from dataclasses import dataclass\n"
        "\n"
        "@dataclass(frozen=True, slots=True)\n"
        "class Point:\n"
        "    x: int\n"
        "    y: int\n"
        "\n"
        "class Window:\n"
        "    __slots__ = (\n"
        '        "start",\n'
        '        "bytes",\n'
        "    )\n"
        "\n"
        "    def __init__(self) -> None:\n"
        "        self.start = 0\n"
        "        self.bytes = 0\n"
        "        note = '__slots__ = (\"kept\",)'\n"
        "\n"
        "class Plain:\n"
        '    __slots__ = ("a",)\n'
        "    kind = 'slots=True'\n"
    )
    setup = _setup_module()
    result = setup._without_slots(source)
    assert result.count("\n") == source.count("\n")  # line numbers kept for tracebacks
    namespace: dict[str, object] = {}
    exec(compile(result, "<copy>", "exec"), namespace)
    assert not hasattr(namespace["Window"], "__slots__")
    assert not hasattr(namespace["Plain"], "__slots__")
    assert not hasattr(namespace["Point"], "__slots__")
    assert "note = '__slots__ = (\"kept\",)'" in result  # strings are left alone
    assert "kind = 'slots=True'" in result
    assert "@dataclass(frozen=True, slots=False)" in result
    # Every module setup.py compiles: the same lines, and no class keeps a __slots__.
    for path in setup.COMPILED:
        text = (REPO / path).read_text()
        copy = setup._without_slots(text)
        assert copy.count("\n") == text.count("\n"), path
        for node in ast.walk(ast.parse(copy)):
            if isinstance(node, ast.ClassDef):
                names = [
                    target.id
                    for statement in node.body
                    if isinstance(statement, ast.Assign)
                    for target in statement.targets
                    if isinstance(target, ast.Name)
                ]
                assert "__slots__" not in names, (path, node.name)


def _replay(pythonpath: Path, config: Path, flows: Path, out: Path) -> tuple[bytes, bytes, str]:
    state = out / "state.json"
    alerts = out / "alerts.jsonl"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "PYTHONHASHSEED": "0"}
    code = (
        "import sys; from egressd.build_info import compiled_modules; "
        "from egressd.cli import main; "
        "print(len(compiled_modules()), file=sys.stderr); sys.exit(main())"
    )
    args = ["replay", "-c", str(config), "-f", "goflow2-json", "-q", "-o", str(alerts)]
    result = subprocess.run(
        [sys.executable, "-c", code, *args, "--state", str(state), str(flows)],
        env=env,
        cwd=out,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return alerts.read_bytes(), state.read_bytes(), result.stderr.splitlines()[0]


def test_compiled_and_pure_modules_give_the_same_alerts_and_state(tmp_path: Path) -> None:
    if not compiled_modules():
        if os.environ.get("EGRESSD_REQUIRE_COMPILED", "") == "1":
            pytest.fail("egressd's hot modules are not compiled (EGRESSD_REQUIRE_COMPILED=1)")
        pytest.skip("pure-Python build: nothing to compare (EGRESSD_COMPILE=1 builds in place)")
    package = Path(sys.modules["egressd"].__file__ or "").parent
    pure = tmp_path / "pure"
    shutil.copytree(package, pure / "egressd", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    scenario = generate_month(seed=3)
    config = scenario.write_config(tmp_path / "egressd.toml")
    flows = scenario.write(tmp_path / "flows.jsonl")
    compiled_alerts, compiled_state, compiled_count = _replay(
        package.parent, config, flows, tmp_path / "compiled"
    )
    pure_alerts, pure_state, pure_count = _replay(pure, config, flows, tmp_path / "pure-out")
    assert (compiled_count, pure_count) == (str(len(HOT_MODULES)), "0")
    assert compiled_alerts.count(b"\n") > 0  # the month pages: there is something to compare
    assert compiled_alerts == pure_alerts
    compiled_saved, pure_saved = orjson.loads(compiled_state), orjson.loads(pure_state)
    compiled_saved.pop("saved_at")  # the wall-clock time of each save
    pure_saved.pop("saved_at")
    assert compiled_saved == pure_saved
