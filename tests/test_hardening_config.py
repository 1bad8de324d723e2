"""Hardening of the configuration loader: arbitrary and mutated TOML only ever yields ConfigError.

Documents are generated as nested values, written out by a tiny TOML writer below (independent
of the loader), so most of them parse as TOML and reach the typed readers behind it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import re
import signal
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egressd import config as config_module
from egressd.config import Config, parse_config
from egressd.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CONFIG = REPO / "config" / "egressd.toml"
#: an example taking longer than this is a hang, not slowness (the loader is linear)
EXAMPLE_TIMEOUT_S = 5

SETTINGS = settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# --------------------------------------------------------------------------- vocabulary

# Every section and key the loader knows, read from the typed config classes, so generated
# documents hit real readers (and stay in step when keys are added).
_SECTIONS: dict[str, type[Any]] = {
    "networks": config_module.NetworksConfig,
    "groups": config_module.GroupConfig,
    "detection": config_module.DetectionConfig,
    "state": config_module.StateConfig,
    "http": config_module.HttpConfig,
    "geo": config_module.GeoConfig,
    "alertmanager": config_module.AlertmanagerConfig,
    "sources.netflow": config_module.NetflowSourceConfig,
    "sources.kafka": config_module.KafkaSourceConfig,
    "sources.capture": config_module.CaptureSourceConfig,
    "geo.region_maps": config_module.RegionMapConfig,
}
if hasattr(config_module, "AlertsConfig"):
    _SECTIONS["alerts"] = config_module.AlertsConfig
_KEYS = sorted({f.name for cls in _SECTIONS.values() for f in dataclasses.fields(cls)})
_ARRAY_SECTIONS = ("groups", "sources.netflow", "sources.kafka", "sources.capture")

# Plausible strings: what the converters parse, near misses and hostile ones.
_WORDS = [
    "5m", "0s", "-1s", "1h30m", "3d", "1w", "500ms", "9" * 400 + "d", "1e3s", "m", "",
    "100MB", "1GiB", "0B", "9" * 400 + "GB", "-5MB", "1.5kB", "12 parsecs",
    "10.0.0.0/8", "fd00::/8", "10.0.0.1/33", "::/0", "not-a-net", "1.2.3.4",
    "127.0.0.1:2055", "[::1]:9108", ":80", "host:99999", "host:",
    "UTC", "Europe/London", "+02:00", "Mars/Olympus", "../../etc/passwd", "\x00",
    "GB", "gb", "ZZZ", "aws", "gcp", "azure", "csv", "AS13335", "13335", "ASx",
    "goflow2-json", "pmacct-json", "PLAINTEXT", "SASL_SSL", "SCRAM-SHA-256", "PLAIN",
    "http://127.0.0.1:9093", "ftp://x", "$2b$12$abcdefghijklmnopqrstuv", "other", "research",
    "/nonexistent/file", "a" * 300, "/" + "b" * 5000,
]  # fmt: skip

scalars = st.one_of(
    st.sampled_from(_WORDS),
    st.text(max_size=20),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.dates(),
    st.times(),
)
keys = st.one_of(st.sampled_from(_KEYS), st.sampled_from(_KEYS), st.text(max_size=12))


def _values(depth: int) -> st.SearchStrategy[Any]:
    if depth <= 0:
        return scalars
    inner = _values(depth - 1)
    return st.one_of(
        scalars,
        st.lists(scalars, max_size=5),
        st.dictionaries(keys, inner, max_size=5),
        st.lists(st.dictionaries(keys, inner, max_size=4), min_size=1, max_size=3),
    )


def _section_body() -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(keys, _values(1), max_size=8)


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A document shaped like a configuration: known sections with known and random keys."""
    doc: dict[str, Any] = {}
    for section in draw(st.lists(st.sampled_from(sorted(_SECTIONS)), max_size=6, unique=True)):
        head, _, tail = section.partition(".")
        target = doc.setdefault(head, {}) if tail else doc
        name = tail or head
        if not isinstance(target, dict):
            continue
        if section in _ARRAY_SECTIONS or section == "geo.region_maps":
            target[name] = draw(st.lists(_section_body(), min_size=1, max_size=3))
        else:
            target[name] = draw(_section_body())
    # Now and then a wrong shape at the top: a scalar where a table belongs, random keys.
    doc.update(draw(st.dictionaries(keys, _values(1), max_size=2)))
    return doc


# --------------------------------------------------------------------------- TOML writer


def _toml_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = (f"{_toml_string(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"no TOML form for {value!r}")


def to_toml(doc: dict[str, Any]) -> str:
    """TOML text for ``doc``: scalars first, then [tables] and [[arrays of tables]], 2 levels."""
    lines: list[str] = []

    def is_table_array(value: Any) -> bool:
        return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)

    def emit(prefix: list[str], table: dict[str, Any], depth: int) -> None:
        nested = []
        for key, value in table.items():
            if depth < 2 and (isinstance(value, dict) or is_table_array(value)):
                nested.append((key, value))
            else:
                lines.append(f"{_toml_string(key)} = {_toml_value(value)}")
        for key, value in nested:
            path = [*prefix, _toml_string(key)]
            if isinstance(value, dict):
                lines.append(f"[{'.'.join(path)}]")
                emit(path, value, depth + 1)
            else:
                for item in value:
                    lines.append(f"[[{'.'.join(path)}]]")
                    emit(path, item, depth + 1)

    emit([], doc, 0)
    return "\n".join(lines) + "\n"


def key_paths(doc: Any, prefix: str = "") -> Iterator[str]:
    """Every key path of ``doc`` as TOML writes keys: ``groups[0].name``, ``geo."a b"``."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            name = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _toml_string(key)
            path = f"{prefix}.{name}" if prefix else name
            yield path
            yield from key_paths(value, path)
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            path = f"{prefix}[{i}]"
            yield path
            yield from key_paths(value, path)


# --------------------------------------------------------------------------- checks


@contextmanager
def no_hang(seconds: int = EXAMPLE_TIMEOUT_S) -> Iterator[None]:
    """Fail (instead of hanging CI) when one example takes longer than ``seconds``."""

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"one parse_config call took more than {seconds}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


_WHERE = re.compile(r"^<config>(?::\d+)?: ")


def parse_or_problems(text: str) -> tuple[Config | None, list[str]]:
    """parse_config's result; anything but ConfigError propagates and fails the test."""
    with no_hang():
        try:
            return parse_config(text), []
        except ConfigError as exc:
            assert exc.problems, "ConfigError without problems"
            assert all(isinstance(p, str) and p for p in exc.problems)
            return None, exc.problems


def assert_problems_name_keys(problems: list[str], doc: dict[str, Any]) -> None:
    paths = set(key_paths(doc))
    for problem in problems:
        where = _WHERE.match(problem)
        assert where, f"problem does not say where: {problem!r}"
        rest = problem[where.end() :]
        assert any(rest.startswith((f"{p}: ", f"{p}.", f"{p}[")) for p in paths), (
            f"problem names no key path of the document: {problem!r}"
        )


@SETTINGS
@given(documents())
def test_generated_documents_raise_only_config_error(doc: dict[str, Any]) -> None:
    text = to_toml(doc)
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        # The writer is deliberately small; a document it cannot express is still an input.
        parse_or_problems(text)
        return
    _, problems = parse_or_problems(text)
    assert_problems_name_keys(problems, parsed)


@SETTINGS
@given(st.text(max_size=400))
def test_random_text_raises_only_config_error(text: str) -> None:
    parse_or_problems(text)


@SETTINGS
@given(st.binary(max_size=300))
def test_random_bytes_as_text_raise_only_config_error(blob: bytes) -> None:
    parse_or_problems(blob.decode("utf-8", errors="replace"))


# --------------------------------------------------------------------------- mutations


def _example() -> tuple[str, dict[str, Any]]:
    if not EXAMPLE_CONFIG.is_file():
        pytest.skip(f"example configuration not found at {EXAMPLE_CONFIG}")
    text = EXAMPLE_CONFIG.read_text(encoding="utf-8")
    return text, tomllib.loads(text)


def _leaves(doc: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield (*path, key)
            yield from _leaves(value, (*path, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            if isinstance(value, dict):
                yield from _leaves(value, (*path, i))


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


def test_example_configuration_is_valid() -> None:
    text, _ = _example()
    config, problems = parse_or_problems(text)
    assert config is not None, problems


@SETTINGS
@given(st.data())
def test_mutated_example_raises_only_config_error(data: st.DataObject) -> None:
    _, original = _example()
    doc = tomllib.loads(to_toml(original))  # a deep copy through the writer
    assert doc == original, "the test's TOML writer does not round-trip the example"
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        paths = list(_leaves(doc))
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = _parent(doc, path)
        action = data.draw(st.sampled_from(["drop", "retype", "rename", "wrap"]), label="action")
        if action == "drop":
            del parent[path[-1]]
        elif action == "retype":
            parent[path[-1]] = data.draw(_values(1), label="value")
        elif action == "rename":
            parent[data.draw(keys, label="key")] = parent.pop(path[-1])
        else:  # a value where a list belongs and the other way round
            value = parent[path[-1]]
            parent[path[-1]] = value[0] if isinstance(value, list) and value else [value]
    text = to_toml(doc)
    _, problems = parse_or_problems(text)
    assert_problems_name_keys(problems, tomllib.loads(text))


@SETTINGS
@given(st.data())
def test_duplicated_lines_of_example_raise_only_config_error(data: st.DataObject) -> None:
    text, _ = _example()
    lines = text.splitlines()
    assignments = [i for i, line in enumerate(lines) if re.match(r"^\s*[\w\"]+\s*=", line)]
    i = data.draw(st.sampled_from(assignments), label="line")
    j = data.draw(st.integers(0, len(lines)), label="insert at")
    mutated = [*lines[:j], lines[i], *lines[j:]]
    config, problems = parse_or_problems("\n".join(mutated))
    # A key assigned twice in one table is invalid TOML; moved elsewhere it may be valid.
    if config is None:
        assert problems


# --------------------------------------------------------------------------- check-config


BROKEN = """\
[networks]
local = ["10.0.0.0/8", "not-a-network"]

[[groups]]
name = "other"
sources = ["10.20.0.0/16"]
expected_countries = ["GBR"]

[detection]
interval = "5 fortnights"
spike_ratio = 0.5
flavour = "strawberry"

[http]
listen = "nowhere"
"""

EXPECTED_PROBLEMS = [
    (2, "networks.local"),
    (5, "groups[0].name"),
    (7, "groups[0].expected_countries"),
    (10, "detection.interval"),
    (11, "detection.spike_ratio"),
    (12, "detection.flavour"),
    (15, "http.listen"),
]


def test_check_config_exits_2_and_prints_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN, encoding="utf-8")
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from egressd.cli import main; sys.exit(main())",
            "check-config",
            "--config",
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    reported = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    for line_number, key in EXPECTED_PROBLEMS:
        hits = [r for r in reported if r.startswith(f"{path}:{line_number}: {key}: ")]
        assert hits, f"no problem for {key} at line {line_number} in:\n{result.stderr}"
    assert len(reported) == len(EXPECTED_PROBLEMS), result.stderr


# --------------------------------------------------------------------------- every key


_HOSTILE: list[Any] = [
    *_WORDS,
    math.nan,
    math.inf,
    -math.inf,
    1e308,
    -1,
    0,
    2**63 - 1,
    -(2**63),
    True,
    dt.datetime(2026, 3, 9, 14, 5),
    dt.time(12, 0),
    [],
    [""],
    [1, "a"],
    {},
    {"x": 1},
]


def _section_documents() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for section, cls in sorted(_SECTIONS.items()):
        head, _, tail = section.partition(".")
        for f in dataclasses.fields(cls):
            for value in _HOSTILE:
                body = {f.name: value}
                if section == "groups":
                    body = {"name": "g", "sources": ["10.1.0.0/16"], **body}
                elif section == "sources.kafka":
                    body = {"bootstrap_servers": ["127.0.0.1:9092"], "topics": ["t"], **body}
                elif section == "sources.capture":
                    body = {"interface": "lo", **body}
                elif section == "geo.region_maps":
                    body = {"format": "csv", "path": "/dev/null", **body}
                table: Any = [body] if section in (*_ARRAY_SECTIONS, "geo.region_maps") else body
                doc = {head: {tail: table}} if tail else {head: table}
                yield section, f.name, doc


def test_every_key_with_hostile_values_raises_only_config_error() -> None:
    """Each known key set to each hostile value, one at a time (about 2,000 documents)."""
    tried = 0
    for _section, _key, doc in _section_documents():
        text = to_toml(doc)
        _, problems = parse_or_problems(text)
        assert_problems_name_keys(problems, tomllib.loads(text))
        tried += 1
    assert tried > 1000


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[detection]\ninterval = nan", "detection.interval"),
        ("[detection]\nlearning = inf", "detection.learning"),
        ("[detection]\nspike_ratio = nan", "detection.spike_ratio"),
        (f'[detection]\nunexpected_min_bytes = "{"9" * 400}GB"', "detection.unexpected_min_bytes"),
        (f'[detection]\nresolve_after = "{"9" * 400}d"', "detection.resolve_after"),
        (f'[geo]\nasn_mmdb = "{"a" * 300}"', "geo.asn_mmdb"),
        (f'[[geo.region_maps]]\nformat = "csv"\npath = "{"b" * 300}"', "geo.region_maps[0].path"),
    ],
)
def test_non_finite_and_unrepresentable_values_are_named_problems(text: str, key: str) -> None:
    """NaN/infinite numbers, sizes beyond any float and unusable paths are errors, not crashes."""
    config, problems = parse_or_problems(text)
    assert config is None
    assert any(p.split(": ", 2)[1] == key for p in problems), problems
