"""Cloud-region CIDR maps (AWS, Google Cloud, Azure range files, or a user's CSV) → labels.

Loaders are pure (path → :class:`RegionMap` or :class:`ConfigError`); lookups are a
longest-prefix match over IPv4 and IPv6: one bisect over precomputed intervals.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from egressd.config import RegionMapConfig
from egressd.decode.common import check_object_depth
from egressd.enrich.address import parse_address
from egressd.errors import ConfigError, DecodeError

#: AWS marks ranges shared by every region (CloudFront, Route 53, ...) with this pseudo-region;
#: a real region for the same prefix wins over it.
AWS_GLOBAL_REGION = "GLOBAL"
#: label suffix for Azure service tags that carry no region (see :func:`load_azure`)
AZURE_GLOBAL_REGION = "global"

_BITS = {4: 32, 6: 128}


class _Intervals:
    """One address family flattened to non-overlapping intervals: ``starts[i]`` is where
    ``labels[i]`` begins (None = not covered) and it runs up to the next start.

    Nested prefixes are resolved when the map is built, so a lookup is one bisect however
    many prefix lengths the file uses (AWS uses ~20; probing a dict per length was 4x slower).
    """

    __slots__ = ("labels", "starts")

    def __init__(self, starts: list[int], labels: list[str | None]) -> None:
        self.starts = starts
        self.labels = labels

    def get(self, value: int) -> str | None:
        i = bisect_right(self.starts, value) - 1
        return self.labels[i] if i >= 0 else None


def _flatten(prefixes: list[tuple[int, int, str]]) -> _Intervals:
    """(first, last, label) of CIDR prefixes (nested or disjoint, never partly overlapping)
    → intervals where the innermost (longest) prefix gives the label."""
    starts: list[int] = []
    labels: list[str | None] = []

    def emit(position: int, label: str | None) -> None:
        if starts and starts[-1] == position:
            # an interval starting where another ends: the later (inner) one wins
            starts.pop()
            labels.pop()
        if labels and labels[-1] == label:
            return  # same label continues: no boundary needed
        if not labels and label is None:
            return
        starts.append(position)
        labels.append(label)

    # outer prefixes first at the same start, so inner ones are pushed on top of them
    prefixes.sort(key=lambda p: (p[0], -p[1]))
    stack: list[tuple[int, str]] = []
    for first, last, label in prefixes:
        while stack and stack[-1][0] < first:
            end, _ = stack.pop()
            emit(end + 1, stack[-1][1] if stack else None)
        stack.append((last, label))
        emit(first, label)
    while stack:
        end, _ = stack.pop()
        emit(end + 1, stack[-1][1] if stack else None)
    return _Intervals(starts, labels)


class RegionMap:
    """A loaded region map. ``lookup(version, value)`` gives the label of the longest prefix.

    A map has one or more *tiers*: a later tier answers only when no earlier tier covers the
    address (Azure's region-less global service tags sit in a second tier, so that a narrow
    global prefix never hides the region of a wider regional one).
    """

    __slots__ = (
        "_tiers",
        "_v4_arrays",
        "built_at",
        "conflicts",
        "format",
        "labels",
        "name",
        "path",
        "prefix_count",
    )

    def __init__(
        self,
        *,
        format: str,
        path: Path,
        tiers: list[tuple[_Intervals, _Intervals]],
        prefix_count: int,
        labels: frozenset[str],
        built_at: float | None,
        conflicts: int = 0,
    ) -> None:
        self.format = format
        self.path = path
        #: short, bounded name used as a data-source label: ``aws:ip-ranges.json``
        self.name = f"{format}:{path.name}"
        self.prefix_count = prefix_count
        self.labels = labels
        #: when the provider built the file (epoch seconds), else the file's mtime
        self.built_at = built_at
        #: prefixes listed more than once with different labels (the first/regional one kept)
        self.conflicts = conflicts
        self._tiers = tiers
        self._v4_arrays: list[tuple[npt.NDArray[np.uint64], npt.NDArray[np.object_]]] | None = None

    def lookup_v4(self, values: npt.NDArray[np.uint64]) -> list[str | None]:
        """:meth:`lookup` of many IPv4 values at once (one ``searchsorted`` per tier)."""
        if self._v4_arrays is None:
            self._v4_arrays = [
                (np.array(tier[0].starts, dtype=np.uint64), np.array(tier[0].labels, dtype=object))
                for tier in self._tiers
            ]
        out = np.full(len(values), None, dtype=object)
        open_rows = np.arange(len(values))
        for starts, labels in self._v4_arrays:
            if not len(open_rows) or not len(starts):
                continue
            index = np.searchsorted(starts, values[open_rows], side="right") - 1
            found = labels[np.maximum(index, 0)]
            found[index < 0] = None
            hit = np.array([label is not None for label in found.tolist()], dtype=np.bool_)
            out[open_rows[hit]] = found[hit]
            open_rows = open_rows[~hit]
        labels_found: list[str | None] = out.tolist()
        return labels_found

    def lookup(self, version: int, value: int) -> str | None:
        """Label of a parsed address (see :func:`egressd.enrich.address.parse_address`)."""
        index = 0 if version == 4 else 1
        for tier in self._tiers:
            label = tier[index].get(value)
            if label is not None:
                return label
        return None

    def lookup_text(self, address: str) -> str | None:
        """Label of an address in text form; None when not covered or malformed."""
        parsed = parse_address(address)
        if parsed is None:
            return None
        return self.lookup(*parsed)

    def __len__(self) -> int:
        return self.prefix_count

    def __repr__(self) -> str:
        return f"<RegionMap {self.name} prefixes={self.prefix_count} labels={len(self.labels)}>"


class _MapBuilder:
    """Collects (network, label) pairs for one tier; deduplicates repeated prefixes."""

    __slots__ = ("_entries", "_interned", "_weak", "conflicts")

    def __init__(self, interned: dict[str, str], weak_labels: Iterable[str] = ()) -> None:
        self._entries: dict[tuple[int, int, int], str] = {}
        self._interned = interned
        #: labels that lose to any other label listed for the very same prefix
        self._weak = frozenset(weak_labels)
        self.conflicts = 0

    def add(self, network: ipaddress.IPv4Network | ipaddress.IPv6Network, label: str) -> str | None:
        """Add a prefix; returns the label it already had when that differs (else None)."""
        label = self._interned.setdefault(label, label)
        bits = _BITS[network.version]
        plen = network.prefixlen
        key = (network.version, plen, int(network.network_address) >> (bits - plen))
        old = self._entries.get(key)
        if old is None:
            self._entries[key] = label
            return None
        if old == label:
            return None
        self.conflicts += 1
        if old in self._weak and label not in self._weak:
            self._entries[key] = label
        return old

    def __len__(self) -> int:
        return len(self._entries)

    def labels(self) -> set[str]:
        return set(self._entries.values())

    def build(self) -> tuple[_Intervals, _Intervals]:
        by_family: dict[int, list[tuple[int, int, str]]] = {4: [], 6: []}
        for (version, plen, masked), label in self._entries.items():
            host_bits = _BITS[version] - plen
            first = masked << host_bits
            by_family[version].append((first, first | ((1 << host_bits) - 1), label))
        return _flatten(by_family[4]), _flatten(by_family[6])


# --------------------------------------------------------------------------- helpers


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def _read_json(path: Path, what: str) -> Any:
    data = _read_bytes(path, what)
    try:
        check_object_depth(data)  # before orjson, which crashes on deep nesting before 3.9.15
        return orjson.loads(data)
    except DecodeError as exc:
        if exc.reason == "not_object":
            return None  # the loader names the object it expected
        raise ConfigError(f"{path}: {what} is not usable: {exc}") from None
    except orjson.JSONDecodeError as exc:
        raise ConfigError(f"{path}: {what} is not valid JSON: {exc}") from None


def _mtime(path: Path) -> float | None:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return None


def _label_prefix(config_prefix: str, default: str) -> str:
    prefix = (config_prefix or default).rstrip("/")
    return f"{prefix}/" if prefix else ""


def _network(
    value: Any, path: Path, what: str, where: str
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {what}: {where}: expected a CIDR string, got {value!r}")
    try:
        # Provider files are machine-written; strict=False tolerates stray host bits.
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ConfigError(f"{path}: {what}: {where}: {value!r} is not a network") from None


def _list_field(obj: Mapping[str, Any], key: str, path: Path, what: str, where: str) -> list[Any]:
    value = obj.get(key, [])
    if not isinstance(value, list):
        raise ConfigError(f"{path}: {what}: {where}{key}: expected a list")
    return value


def _str_field(obj: Any, key: str, path: Path, what: str, where: str) -> str:
    if not isinstance(obj, dict):
        raise ConfigError(f"{path}: {what}: {where}: expected an object, got {obj!r}")
    value = obj.get(key)
    if not isinstance(value, str):
        raise ConfigError(f"{path}: {what}: {where}.{key}: expected a string, got {value!r}")
    return value


def _finish(
    fmt: str,
    path: Path,
    builders: list[_MapBuilder],
    built_at: float | None,
    what: str,
) -> RegionMap:
    count = sum(len(b) for b in builders)
    if count == 0:
        # An empty provider file is almost always a truncated download; refuse it so a
        # reload keeps the previous map.
        raise ConfigError(f"{path}: {what} lists no prefixes")
    return RegionMap(
        format=fmt,
        path=path,
        tiers=[b.build() for b in builders],
        prefix_count=count,
        labels=frozenset(label for b in builders for label in b.labels()),
        built_at=built_at if built_at is not None else _mtime(path),
        conflicts=sum(b.conflicts for b in builders),
    )


# --------------------------------------------------------------------------- loaders


def load_aws(path: Path, prefix: str = "") -> RegionMap:
    """AWS ``ip-ranges.json``: ``prefixes[].ip_prefix`` / ``ipv6_prefixes[].ipv6_prefix`` with
    ``region`` → ``aws/<region>``. A prefix appears once per service (AMAZON, EC2, S3, ...);
    they share the region, so one entry is kept. ``GLOBAL`` loses to a real region."""
    what = "AWS ip-ranges"
    doc = _read_json(path, what)
    if not isinstance(doc, dict) or ("prefixes" not in doc and "ipv6_prefixes" not in doc):
        raise ConfigError(f"{path}: {what}: expected an object with 'prefixes' / 'ipv6_prefixes'")
    label_prefix = _label_prefix(prefix, "aws")
    builder = _MapBuilder({}, weak_labels=[f"{label_prefix}{AWS_GLOBAL_REGION}"])
    for key, field in (("prefixes", "ip_prefix"), ("ipv6_prefixes", "ipv6_prefix")):
        for i, entry in enumerate(_list_field(doc, key, path, what, "")):
            where = f"{key}[{i}]"
            cidr = _str_field(entry, field, path, what, where)
            region = _str_field(entry, "region", path, what, where)
            if not region:
                raise ConfigError(f"{path}: {what}: {where}.region: is empty")
            builder.add(_network(cidr, path, what, f"{where}.{field}"), label_prefix + region)
    built_at: float | None = None
    token = doc.get("syncToken")
    # syncToken is the publication time in epoch seconds.
    if isinstance(token, str) and token.isdigit():
        built_at = float(token)
    return _finish("aws", path, [builder], built_at, what)


def load_gcp(path: Path, prefix: str = "") -> RegionMap:
    """Google Cloud ``cloud.json``: ``prefixes[].ipv4Prefix`` / ``ipv6Prefix`` with ``scope``
    → ``gcp/<scope>``."""
    what = "Google Cloud ranges"
    doc = _read_json(path, what)
    if not isinstance(doc, dict) or not isinstance(doc.get("prefixes"), list):
        raise ConfigError(f"{path}: {what}: expected an object with a 'prefixes' list")
    label_prefix = _label_prefix(prefix, "gcp")
    builder = _MapBuilder({})
    for i, entry in enumerate(doc["prefixes"]):
        where = f"prefixes[{i}]"
        scope = _str_field(entry, "scope", path, what, where)
        if not scope:
            raise ConfigError(f"{path}: {what}: {where}.scope: is empty")
        cidrs = [entry[k] for k in ("ipv4Prefix", "ipv6Prefix") if k in entry]
        if not cidrs:
            raise ConfigError(f"{path}: {what}: {where}: has neither ipv4Prefix nor ipv6Prefix")
        for cidr in cidrs:
            builder.add(_network(cidr, path, what, where), label_prefix + scope)
    built_at: float | None = None
    created = doc.get("creationTime")
    if isinstance(created, str):
        try:
            stamp = dt.datetime.fromisoformat(created)
        except ValueError:
            pass
        else:
            if stamp.tzinfo is None:
                stamp = stamp.replace(tzinfo=dt.UTC)
            built_at = stamp.timestamp()
    return _finish("gcp", path, [builder], built_at, what)


def load_azure(path: Path, prefix: str = "") -> RegionMap:
    """Azure Service Tags JSON: ``values[].properties.region`` + ``addressPrefixes`` →
    ``azure/<region>``.

    Tags with an empty region are global services (Front Door, ...) or the union of all
    regions (``AzureCloud``). Their prefixes are labelled ``azure/global`` in a second tier
    that answers only when no regional tag covers the address: the address is then known to
    be Azure, just not in one region, and a regional answer is never hidden by a narrower
    global prefix.
    """
    what = "Azure service tags"
    doc = _read_json(path, what)
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), list):
        raise ConfigError(f"{path}: {what}: expected an object with a 'values' list")
    label_prefix = _label_prefix(prefix, "azure")
    interned: dict[str, str] = {}
    regional = _MapBuilder(interned)
    global_ = _MapBuilder(interned)
    for i, entry in enumerate(doc["values"]):
        where = f"values[{i}]"
        props = entry.get("properties") if isinstance(entry, dict) else None
        if not isinstance(props, dict):
            raise ConfigError(f"{path}: {what}: {where}.properties: expected an object")
        region = props.get("region", "")
        if not isinstance(region, str):
            raise ConfigError(f"{path}: {what}: {where}.properties.region: expected a string")
        builder = regional if region else global_
        label = label_prefix + (region or AZURE_GLOBAL_REGION)
        for j, cidr in enumerate(_list_field(props, "addressPrefixes", path, what, where + ".")):
            builder.add(_network(cidr, path, what, f"{where}.addressPrefixes[{j}]"), label)
    return _finish("azure", path, [regional, global_], None, what)


def load_csv(path: Path, prefix: str = "") -> RegionMap:
    """``cidr,label`` lines; ``#`` starts a comment; an optional header line comes first.

    Labels are used as-is unless a prefix is configured. Unlike provider files, a network with
    host bits set or a prefix listed twice with different labels is an error: the file is
    hand-written and either is most likely a typo.
    """
    what = "region CSV"
    data = _read_bytes(path, what)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: {what} is not UTF-8 text") from None
    label_prefix = _label_prefix(prefix, "")
    builder = _MapBuilder({})
    first_line: dict[tuple[int, int], int] = {}
    seen_data = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 2:
            raise ConfigError(f"{path}:{lineno}: expected 'cidr,label', got {raw.strip()!r}")
        cidr, label = fields
        try:
            network = ipaddress.ip_network(cidr)
        except ValueError as exc:
            if not seen_data and not any(ch.isdigit() for ch in cidr):
                seen_data = True  # a header line: "cidr,label", "network,region", ...
                continue
            reason = "has host bits set" if "host bits" in str(exc) else "is not a network"
            raise ConfigError(f"{path}:{lineno}: {cidr!r} {reason}") from None
        seen_data = True
        if not label:
            raise ConfigError(f"{path}:{lineno}: empty label for {cidr}")
        old = builder.add(network, label_prefix + label)
        key = (network.version, int(network.network_address) << 8 | network.prefixlen)
        if old is not None:
            raise ConfigError(
                f"{path}:{lineno}: {network} is labelled {label!r} here and "
                f"{old.removeprefix(label_prefix)!r} on line {first_line[key]}"
            )
        first_line.setdefault(key, lineno)
    return _finish("csv", path, [builder], None, what)


LOADERS: dict[str, Callable[[Path, str], RegionMap]] = {
    "aws": load_aws,
    "gcp": load_gcp,
    "azure": load_azure,
    "csv": load_csv,
}


def load_region_map(config: RegionMapConfig) -> RegionMap:
    """Load the map ``config`` names; raises :class:`ConfigError` naming the file and problem."""
    loader = LOADERS.get(config.format)
    if loader is None:
        raise ConfigError(
            f"{config.path}: unknown region map format {config.format!r} "
            f"(use one of {', '.join(LOADERS)})"
        )
    return loader(config.path, config.prefix)
