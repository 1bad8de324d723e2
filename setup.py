"""egressd's build: the hot modules compiled to C with mypyc, from the same Python sources.

A wheel (``pip install .``, ``pip wheel .``) compiles the modules in :data:`COMPILED` with
mypyc, which turns their type annotations into native code: closing intervals (baselines,
detectors) takes about a third fewer instructions, a sparse replay about 10% fewer in all (its
JSON parsing and numpy work are native code already), and the rest of the package stays
Python. Nothing else changes:
the ``.py`` files ship beside the compiled modules, and the compiled and pure builds give the
same alerts and the same saved state (tests/test_compiled_build.py replays both).

When mypyc or a C compiler is missing, or the compile fails, the build says why and installs
the pure-Python package, which works the same, only slower. ``EGRESSD_PURE_PYTHON=1`` asks for
the pure package. An editable install (``pip install -e .``, the development setup) stays pure
Python so an edited module takes effect at once; ``EGRESSD_COMPILE=1`` compiles it in place
(then rebuild after every edit: ``egressd --version`` names modules whose source is newer than
their compiled form).

mypyc refuses classes with ``__slots__`` (its native classes have a fixed layout of their own,
which is what ``__slots__`` buys in Python), so the compiled modules are built from copies
without those declarations; the pure package keeps them.
"""

from __future__ import annotations

import ast
import os
import shutil
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent

#: The modules on the per-flow and per-interval paths (decode, classify, account, close,
#: detect, baselines); egressd/build_info.py lists the same names to report what is compiled.
COMPILED = (
    "egressd/baseline/grouprate.py",
    "egressd/baseline/seasonal.py",
    "egressd/cache.py",
    "egressd/classify.py",
    "egressd/columnar.py",
    "egressd/decode/columnar.py",
    "egressd/dedupe.py",
    "egressd/detect/alerts.py",
    "egressd/detect/base.py",
    "egressd/detect/detectors.py",
    "egressd/detect/newdest.py",
    "egressd/detect/policy.py",
    "egressd/detect/unexpected.py",
    "egressd/partials.py",
    "egressd/pipeline.py",
    "egressd/talkers.py",
)


def _say(message: str) -> None:
    print(f"egressd build: {message}", file=sys.stderr)


def _without_slots(source: str) -> str:
    """The module's source with every ``__slots__`` declaration blanked (line numbers kept)
    and ``dataclass(slots=True)`` turned into ``slots=False``."""
    lines = source.splitlines(keepends=True)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            for statement in node.body:
                if (
                    isinstance(statement, ast.Assign | ast.AnnAssign)
                    and any(
                        isinstance(target, ast.Name) and target.id == "__slots__"
                        for target in (
                            statement.targets
                            if isinstance(statement, ast.Assign)
                            else [statement.target]
                        )
                    )
                    and statement.end_lineno is not None
                ):
                    for number in range(statement.lineno, statement.end_lineno + 1):
                        lines[number - 1] = "\n"
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call):
                    for keyword in decorator.keywords:
                        value = keyword.value
                        if (
                            keyword.arg == "slots"
                            and isinstance(value, ast.Constant)
                            and value.value is True
                        ):
                            line = lines[value.lineno - 1]
                            lines[value.lineno - 1] = (
                                line[: value.col_offset] + "False" + line[value.end_col_offset :]
                            )
    return "".join(lines)


def _mypyc_sources(root: Path) -> list[str]:
    """Copy the package to ``root`` (the compiled modules without ``__slots__``) and return
    mypyc's arguments: its options and the compiled modules' paths there, relative to the
    working directory mypyc runs in."""
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(
        HERE / "egressd", root / "egressd", ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    for module in COMPILED:
        path = root / module
        path.write_text(_without_slots((HERE / module).read_text()))
    # pip builds in an environment of its own with only the build requirements (pyproject.toml:
    # mypy, and the libraries whose types the compiled modules use); what other modules import
    # is unknown there, and the strict checks are the development setup's job (mypy in CI).
    config = root / "mypyc.ini"
    config.write_text("[mypy]\nignore_missing_imports = True\nfollow_imports = silent\n")
    paths = [str((root / module).relative_to(HERE)) for module in COMPILED]
    return ["--config-file", str(config.relative_to(HERE)), *paths]


class OptionalBuildExt(build_ext):
    """Compile the modules in :data:`COMPILED`, or, when that cannot be done, leave the
    package pure Python. mypyc runs here, not when setup.py is read, so building metadata
    (which reads setup.py too) costs nothing."""

    def finalize_options(self) -> None:
        commands = set(self.distribution.commands)
        if commands and commands <= _METADATA_ONLY:
            # Building metadata finalizes this command too (to list sources): no mypyc then.
            self.distribution.ext_modules = []
        elif getattr(self, "editable_mode", False) and not _wanted("COMPILE"):
            _say("editable install: pure Python (EGRESSD_COMPILE=1 compiles in place)")
            self.distribution.ext_modules = []
        else:
            self.distribution.ext_modules = _mypyc_extensions()
        super().finalize_options()

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # compilers' and distutils' errors share no base class
            self._fall_back(exc)

    def _fall_back(self, exc: Exception) -> None:
        if _wanted("COMPILE"):
            raise exc
        _say(f"compiling failed ({exc}); installing the pure-Python package")
        for ext in self.extensions:
            built = Path(self.get_ext_fullpath(ext.name))
            if built.exists():
                built.unlink()
        self.extensions = []

    def get_outputs(self) -> list[str]:
        return super().get_outputs() if self.extensions else []


#: Commands that only describe the package (pip runs them before building).
_METADATA_ONLY = {"egg_info", "dist_info", "sdist", "check", "--name", "--version"}


def _wanted(name: str) -> bool:
    return os.environ.get(f"EGRESSD_{name}", "") not in ("", "0")


def _mypyc_extensions() -> list[Extension]:
    if _wanted("PURE_PYTHON"):
        _say("EGRESSD_PURE_PYTHON is set: pure Python")
        return []
    if sys.implementation.name != "cpython" or not sysconfig.get_config_var("CC"):
        _say("no C compiler configured for this Python: pure Python")
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _say("mypyc (part of mypy) is not installed: pure Python")
        return []
    os.chdir(HERE)
    sources = _mypyc_sources(HERE / "build" / "mypyc-src")
    try:
        return list(mypycify(sources, opt_level="1", debug_level="0", group_name="egressd"))
    except (Exception, SystemExit) as exc:  # mypyc reports type errors by exiting
        if _wanted("COMPILE"):
            raise
        _say(f"mypyc could not compile ({exc}); pure Python")
        return []


# One stand-in extension makes the wheel platform-specific and brings build_ext to run; it
# replaces the stand-in with mypyc's (or with none).
if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it
    setup(
        ext_modules=[Extension("egressd._compiled", sources=[])],
        cmdclass={"build_ext": OptionalBuildExt},
    )
