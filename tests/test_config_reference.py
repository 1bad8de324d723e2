"""config/egressd.toml, the configuration reference, names every key the loader reads, and
the loader knows every key it names.

The reference shows optional keys commented out (``# tls_cert_file = ...``,
``# [[sources.kafka]]``); uncommenting every such line gives a document with every key in it,
which is compared with the typed config classes one section at a time, and loaded: no key of it
may be unknown.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest

from egressd import config as config_module
from egressd.errors import ConfigError

REFERENCE = Path(__file__).resolve().parents[1] / "config" / "egressd.toml"

#: TOML section → the class it is read into
SECTIONS: dict[str, type[Any]] = {
    "networks": config_module.NetworksConfig,
    "groups": config_module.GroupConfig,
    "detection": config_module.DetectionConfig,
    "state": config_module.StateConfig,
    "http": config_module.HttpConfig,
    "sources.netflow": config_module.NetflowSourceConfig,
    "sources.kafka": config_module.KafkaSourceConfig,
    "sources.capture": config_module.CaptureSourceConfig,
    "geo": config_module.GeoConfig,
    "geo.region_maps": config_module.RegionMapConfig,
    "alertmanager": config_module.AlertmanagerConfig,
    "alerts": config_module.AlertsConfig,
    "cluster": config_module.ClusterConfig,
}
#: fields whose TOML key has another name (the windows are ``[[detection.unexpected]]`` tables)
KEY_OF_FIELD = {("detection", "unexpected_windows"): "unexpected"}
#: fields the loader derives, not keys (whether ``duplicate_exports`` was set explicitly)
NOT_KEYS = {("detection", "duplicate_exports_named")}

_COMMENTED_HEADER = re.compile(r"^# ?(\[\[?[a-z_.]+\]\]?)\s*(#.*)?$")
_COMMENTED_KEY = re.compile(r"^# ?([a-z0-9_]+ = .*)$")


def uncommented(text: str) -> str:
    """``text`` with every commented-out section header and ``key = value`` line made live."""
    lines = []
    for line in text.splitlines():
        header = _COMMENTED_HEADER.match(line)
        key = _COMMENTED_KEY.match(line)
        lines.append(header.group(1) if header else key.group(1) if key else line)
    return "\n".join(lines) + "\n"


def _tables(doc: dict[str, Any], section: str) -> list[dict[str, Any]]:
    node: Any = doc
    for part in section.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node if isinstance(node, list) else [node]


def _reference() -> dict[str, Any]:
    if not REFERENCE.is_file():
        pytest.skip(f"configuration reference not found at {REFERENCE}")
    return tomllib.loads(uncommented(REFERENCE.read_text(encoding="utf-8")))


def test_uncommenting_finds_the_optional_keys() -> None:
    text = '[http]\n# tls_cert_file = "/x"   # note\n# [[sources.kafka]]\n# topics = ["f"]\n'
    doc = tomllib.loads(uncommented(text))
    assert doc == {"http": {"tls_cert_file": "/x"}, "sources": {"kafka": [{"topics": ["f"]}]}}


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_reference_names_every_key_of_the_section(section: str) -> None:
    doc = _reference()
    fields = {
        KEY_OF_FIELD.get((section, f.name), f.name)
        for f in dataclasses.fields(SECTIONS[section])
        if (section, f.name) not in NOT_KEYS
    }
    named = {key for table in _tables(doc, section) for key in table}
    assert sorted(fields - named) == [], f"[{section}]: keys missing from {REFERENCE.name}"
    assert sorted(named - fields) == [], f"[{section}]: keys in {REFERENCE.name} the config lacks"


def test_reference_has_no_section_the_config_lacks() -> None:
    doc = _reference()
    known = set(SECTIONS) | {"sources", "detection.unexpected", "http.basic_auth_users"}

    def sections(node: dict[str, Any], prefix: str = "") -> set[str]:
        found = set()
        for key, value in node.items():
            tables = value if isinstance(value, list) else [value]
            for table in tables:
                if isinstance(table, dict):
                    found.add(prefix + key)
                    found |= sections(table, prefix + key + ".")
        return found

    assert sections(doc) - known == set()


def test_every_key_of_the_reference_is_known_to_the_loader() -> None:
    _reference()
    try:
        config_module.parse_config(uncommented(REFERENCE.read_text(encoding="utf-8")))
    except ConfigError as exc:
        # Uncommented alternatives may conflict (a state directory and a state URL); no key
        # may be unknown.
        unknown = [p for p in exc.problems if ": unknown key" in p]
        assert unknown == []
