"""The configured destination labeler: mmdb / embedded country, region maps and ASN composed.

Built once from ``[geo]`` by :func:`build_labeler`; reloads changed data files in place,
keeping the old data when a new file is broken.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from egressd.cache import BoundedCache
from egressd.config import GeoConfig, RegionMapConfig
from egressd.enrich import UNKNOWN_COUNTRY, DestinationLabels
from egressd.enrich.address import format_address, parse_address
from egressd.enrich.embedded import EmbeddedCountryLabeler, numbered_answers
from egressd.enrich.mmdb import MmdbDatabase
from egressd.enrich.regions import RegionMap, load_region_map
from egressd.enrich.special import special_kind_of
from egressd.errors import ConfigError

log = logging.getLogger(__name__)

#: ``source`` of labels no data source could answer (unknown country, malformed address)
NO_SOURCE = "none"
EMBEDDED_SOURCE = "embedded"


@dataclass(frozen=True, slots=True)
class LookupResult:
    """Everything known about one address, with the data source behind each answer."""

    address: str
    #: canonical text (IPv4-mapped IPv6 shown as IPv4); "" when the address is malformed
    normalized: str
    labels: DestinationLabels
    country_source: str
    region_source: str
    asn_source: str
    #: kind of special-purpose range ("private", "loopback", ...) or None for a global address
    special: str | None

    @property
    def valid(self) -> bool:
        return bool(self.normalized)


def _signature(path: Path) -> tuple[int, int] | None:
    """(mtime_ns, size) of a file, None when it cannot be stat'ed."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


class _Watched:
    """A data file, what was loaded from it, and the signature it had when loaded."""

    __slots__ = ("failed_signature", "kind", "path", "signature")

    def __init__(self, kind: str, path: Path, signature: tuple[int, int] | None) -> None:
        self.kind = kind
        self.path = path
        self.signature = signature
        #: signature of a broken version already reported, so it is not reported every check
        self.failed_signature: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class LoadedFile:
    """A changed data file as loaded off the event loop: its data, or why it failed."""

    watched: _Watched
    signature: tuple[int, int] | None
    data: MmdbDatabase | RegionMap | None
    problem: str

    def discard(self) -> None:
        """Close what was loaded and will not be used."""
        if isinstance(self.data, MmdbDatabase):
            self.data.close()


class CompositeLabeler:
    """Country from ``country_mmdb`` (falling back to embedded data), region from the first
    region map covering the address, ASN from ``asn_mmdb``. Implements ``DestinationLabeler``.

    Single-threaded by design (the pipeline's event loop); :meth:`reload_if_changed` swaps data
    between lookups.
    """

    __slots__ = (
        "_asn_db",
        "_cache_size",
        "_country_db",
        "_embedded",
        "_interned",
        "_invalid",
        "_region_configs",
        "_region_maps",
        "_watched",
        "has_asn",
        "has_regions",
        "reload_failures",
        "reload_problems",
        "reloads",
    )

    def __init__(
        self,
        *,
        country_db: MmdbDatabase | None = None,
        asn_db: MmdbDatabase | None = None,
        region_maps: Sequence[tuple[RegionMapConfig, RegionMap]] = (),
        cache_size: int = 100_000,
        embedded: EmbeddedCountryLabeler | None = None,
    ) -> None:
        self._embedded = embedded or EmbeddedCountryLabeler()
        self._country_db = country_db
        self._asn_db = asn_db
        self._region_configs = [cfg for cfg, _ in region_maps]
        self._region_maps = [m for _, m in region_maps]
        self.has_regions = bool(self._region_maps)
        self.has_asn = asn_db is not None
        #: bounds the interned labels; the engine caches labels per address in front of this
        self._cache_size = max(1, cache_size)
        self._interned: BoundedCache[tuple[str, str, int, str, str], DestinationLabels] = (
            BoundedCache(self._cache_size)
        )
        self._invalid = DestinationLabels(country=UNKNOWN_COUNTRY, source=NO_SOURCE)
        self._watched: list[_Watched] = []
        if country_db is not None:
            self._watched.append(_Watched("country", country_db.path, _signature(country_db.path)))
        if asn_db is not None:
            self._watched.append(_Watched("asn", asn_db.path, _signature(asn_db.path)))
        for i, cfg in enumerate(self._region_configs):
            self._watched.append(_Watched(f"region:{i}", cfg.path, _signature(cfg.path)))
        # Counters for metrics (read by whoever exports them).
        self.reloads = 0
        self.reload_failures = 0
        #: problems found by the last :meth:`reload_if_changed` (kept data noted in each)
        self.reload_problems: list[str] = []

    # ------------------------------------------------------------------ hot path

    def label(self, address: str) -> DestinationLabels:
        """Labels of ``address``, looked up every time: callers on the per-flow path (the
        engine) cache per address themselves, together with what is local or special."""
        return self._compute(address)

    def label_many(self, addresses: Sequence[str]) -> list[DestinationLabels]:
        label = self.label
        return [label(a) for a in addresses]

    @property
    def embedded_only(self) -> bool:
        """Whether the embedded country data alone answers (no mmdb file, no region map):
        labels are then a function of the address the engine need not cache."""
        return self._country_db is None and self._asn_db is None and not self._region_maps

    def label_parsed(
        self, parsed: Sequence[tuple[int, int]], texts: Sequence[str]
    ) -> list[DestinationLabels]:
        """Labels of addresses already parsed, given as (version, value) with their canonical
        text (IPv4 dotted quad): the same as :meth:`label` of each text, with the embedded
        country data asked once for all of them (the engine's batch path). Only region maps
        need ``parsed``: without them it may be empty."""
        if self._country_db is None and self._asn_db is None and not self._region_maps:
            return self._label_embedded(texts)
        countries: list[str | None] = [None] * len(texts)
        sources = [NO_SOURCE] * len(texts)
        unanswered = list(range(len(texts)))
        if self._country_db is not None:
            db = self._country_db
            unanswered = []
            for i, text in enumerate(texts):
                country = db.country(text)
                if country is None:
                    unanswered.append(i)
                else:
                    countries[i], sources[i] = country, db.name
        if unanswered:
            found = self._embedded.countries([texts[i] for i in unanswered])
            for i, country in zip(unanswered, found, strict=True):
                if country is not None:
                    countries[i], sources[i] = country, EMBEDDED_SOURCE
        regions = [""] * len(texts)
        if self._region_maps:
            v4 = [i for i, (version, _) in enumerate(parsed) if version == 4]
            values = np.array([parsed[i][1] for i in v4], dtype=np.uint64)
            open_v4 = v4
            for region_map in self._region_maps:
                if not open_v4:
                    break
                hits = region_map.lookup_v4(values)
                still = []
                kept = []
                for i, value, hit in zip(open_v4, values.tolist(), hits, strict=True):
                    if hit is None:
                        still.append(i)
                        kept.append(value)
                    else:
                        regions[i] = hit
                open_v4 = still
                values = np.array(kept, dtype=np.uint64)
            for i, (version, value) in enumerate(parsed):
                if version != 4:
                    for region_map in self._region_maps:
                        hit = region_map.lookup(version, value)
                        if hit is not None:
                            regions[i] = hit
                            break
        asns = [0] * len(texts)
        orgs = [""] * len(texts)
        if self._asn_db is not None:
            asn_of = self._asn_db.asn
            for i, text in enumerate(texts):
                asns[i], orgs[i] = asn_of(text)
        keys = list(
            zip(
                [country or UNKNOWN_COUNTRY for country in countries],
                regions,
                asns,
                orgs,
                sources,
                strict=True,
            )
        )
        # Few distinct keys in a batch: intern each once, then map every address to it.
        interned = self._interned
        table: dict[tuple[str, str, int, str, str], DestinationLabels] = {}
        for key in dict.fromkeys(keys):
            labels = interned.get(key)
            if labels is None:
                country, region, asn, org, source = key
                labels = interned.store(
                    key,
                    DestinationLabels(
                        country=country, region=region, asn=asn, as_org=org, source=source
                    ),
                )
            table[key] = labels
        return list(map(table.__getitem__, keys))

    def label_numbered(
        self, texts: Sequence[str]
    ) -> tuple[list[DestinationLabels], npt.NDArray[np.int64]]:
        """:meth:`label_parsed` of IPv4 dotted quads or canonical IPv6 texts when only the
        embedded country data is configured (:attr:`embedded_only`), as the engine's batch
        path takes it: the labels of each distinct answer in order of first use, and each
        address's index into them."""
        answers, index = numbered_answers(self._embedded.countries(texts))
        return [self._embedded_labels(country) for country in answers], index

    def _label_embedded(self, texts: Sequence[str]) -> list[DestinationLabels]:
        """:meth:`label_parsed` with the embedded country data alone: one label per country."""
        found = self._embedded.countries(texts)
        table = {country: self._embedded_labels(country) for country in set(found)}
        return list(map(table.__getitem__, found))

    def _embedded_labels(self, country: str | None) -> DestinationLabels:
        """The interned labels of an embedded-data answer (None: no country known)."""
        source = EMBEDDED_SOURCE if country is not None else NO_SOURCE
        key = (country or UNKNOWN_COUNTRY, "", 0, "", source)
        labels = self._interned.get(key)
        if labels is None:
            labels = self._interned.store(key, DestinationLabels(country=key[0], source=source))
        return labels

    def _compute(self, address: str) -> DestinationLabels:
        resolved = self._resolve(address)
        if resolved is None:
            return self._invalid
        key = resolved[0]
        labels = self._interned.get(key)
        if labels is None:
            country, region, asn, org, source = key
            labels = self._interned.store(
                key,
                DestinationLabels(
                    country=country, region=region, asn=asn, as_org=org, source=source
                ),
            )
        return labels

    def _resolve(
        self, address: str
    ) -> tuple[tuple[str, str, int, str, str], str, str, int, int] | None:
        """((country, region, asn, org, country source), region source, asn source, version,
        value), or None for a malformed address."""
        parsed = parse_address(address)
        if parsed is None:
            return None
        version, value = parsed
        # Mapped IPv6 is looked up as the IPv4 it carries: mmdb files and iptocc only know the
        # IPv4 form.
        text = format_address(4, value) if version == 4 and ":" in address else address
        country: str | None = None
        source = NO_SOURCE
        if self._country_db is not None:
            country = self._country_db.country(text)
            if country is not None:
                source = self._country_db.name
        if country is None:
            country = self._embedded.country(text)
            source = EMBEDDED_SOURCE if country is not None else NO_SOURCE
        region = ""
        region_source = ""
        for region_map in self._region_maps:
            hit = region_map.lookup(version, value)
            if hit is not None:
                region, region_source = hit, region_map.name
                break
        asn, org, asn_source = 0, "", ""
        if self._asn_db is not None:
            asn, org = self._asn_db.asn(text)
            if asn:
                asn_source = self._asn_db.name
        key = (country or UNKNOWN_COUNTRY, region, asn, org, source)
        return key, region_source, asn_source, version, value

    # ------------------------------------------------------------------ lookup / status

    def explain(self, address: str) -> LookupResult:
        """Full answer for ``egressd lookup``: labels, the source of each, special range."""
        resolved = self._resolve(address.strip())
        if resolved is None:
            return LookupResult(address, "", self._invalid, NO_SOURCE, "", "", None)
        key, region_source, asn_source, version, value = resolved
        labels = self._compute(address.strip())
        return LookupResult(
            address=address,
            normalized=format_address(version, value),
            labels=labels,
            country_source=key[4],
            region_source=region_source,
            asn_source=asn_source,
            special=special_kind_of(version, value),
        )

    def build_info(self) -> dict[str, float]:
        """Build time (epoch seconds) per database, keyed by data-source name.

        For ``egressd_geo_database_build_timestamp_seconds{database}``: mmdb files report the
        vendor's ``build_epoch``; region maps the provider's publication time or the mtime.
        """
        info: dict[str, float] = {}
        for db in (self._country_db, self._asn_db):
            if db is not None:
                info[db.name] = float(db.build_epoch)
        for region_map in self._region_maps:
            if region_map.built_at is not None:
                info[region_map.name] = region_map.built_at
        return info

    @property
    def sources(self) -> list[str]:
        """Names of the configured data sources, in the order they are consulted."""
        names = [db.name for db in (self._country_db,) if db is not None]
        names.append(EMBEDDED_SOURCE)
        names.extend(m.name for m in self._region_maps)
        if self._asn_db is not None:
            names.append(self._asn_db.name)
        return names

    # ------------------------------------------------------------------ reload

    def reload_if_changed(self) -> bool:
        """Reload data files whose mtime or size changed; True when anything was replaced.

        A file that fails to load keeps its previous data; the problem is put in
        :attr:`reload_problems`, counted in :attr:`reload_failures` and logged once per
        broken version of the file. Does blocking file I/O and parsing: the daemon runs
        :meth:`load_changed` in a thread and :meth:`apply_loaded` on its event loop instead.
        """
        return self.apply_loaded(self.load_changed())

    def load_changed(self) -> list[LoadedFile]:
        """The files whose mtime or size changed, loaded (or why not) but not in use yet.

        Blocking I/O and parsing (a large region map takes seconds); changes nothing lookups
        read, so it may run in another thread while lookups go on.
        """
        loaded: list[LoadedFile] = []
        for watched in self._watched:
            signature = _signature(watched.path)
            if signature == watched.signature or (
                signature is not None and signature == watched.failed_signature
            ):
                continue
            if signature is None:
                loaded.append(LoadedFile(watched, None, None, f"{watched.path}: file disappeared"))
                continue
            try:
                data = self._load_one(watched)
            except ConfigError as exc:
                loaded.append(LoadedFile(watched, signature, None, str(exc)))
                continue
            loaded.append(LoadedFile(watched, signature, data, ""))
        return loaded

    def apply_loaded(self, loaded: list[LoadedFile]) -> bool:
        """Put what :meth:`load_changed` loaded in use (between lookups), closing what it
        replaces; count and log what failed. True when anything was replaced."""
        self.reload_problems = []
        changed = False
        for item in loaded:
            watched = item.watched
            if item.data is None:
                if item.signature is not None or watched.failed_signature is None:
                    self._reload_failed(watched, item.signature, item.problem)
                continue
            self._swap(watched, item.data)
            watched.signature = item.signature
            watched.failed_signature = None
            changed = True
        if changed:
            self.reloads += 1
            self._interned.clear()
        return changed

    def _reload_failed(
        self, watched: _Watched, signature: tuple[int, int] | None, problem: str
    ) -> None:
        message = f"{problem} (keeping the previously loaded data)"
        watched.failed_signature = signature if signature is not None else (-1, -1)
        self.reload_failures += 1
        self.reload_problems.append(message)
        log.warning("geo data reload failed: %s", message)

    def _load_one(self, watched: _Watched) -> MmdbDatabase | RegionMap:
        if watched.kind in ("country", "asn"):
            return MmdbDatabase.open(watched.path, role=watched.kind)
        index = int(watched.kind.partition(":")[2])
        return load_region_map(self._region_configs[index])

    def _swap(self, watched: _Watched, data: MmdbDatabase | RegionMap) -> None:
        if isinstance(data, RegionMap):
            self._region_maps[int(watched.kind.partition(":")[2])] = data
            return
        if watched.kind == "country":
            old, self._country_db = self._country_db, data
        else:
            old, self._asn_db = self._asn_db, data
        if old is not None:
            old.close()
        log.info("reloaded %s database %s (%s)", watched.kind, watched.path, data.database_type)

    def close(self) -> None:
        for db in (self._country_db, self._asn_db):
            if db is not None:
                db.close()


def build_labeler(geo: GeoConfig) -> CompositeLabeler:
    """Open every data file ``geo`` names; raises :class:`ConfigError` listing all problems."""
    problems: list[str] = []
    country_db = asn_db = None
    if geo.country_mmdb is not None:
        try:
            country_db = MmdbDatabase.open(geo.country_mmdb, role="country")
        except ConfigError as exc:
            problems.extend(f"geo.country_mmdb: {p}" for p in exc.problems)
    if geo.asn_mmdb is not None:
        try:
            asn_db = MmdbDatabase.open(geo.asn_mmdb, role="asn")
        except ConfigError as exc:
            problems.extend(f"geo.asn_mmdb: {p}" for p in exc.problems)
    maps: list[tuple[RegionMapConfig, RegionMap]] = []
    for i, cfg in enumerate(geo.region_maps):
        try:
            maps.append((cfg, load_region_map(cfg)))
        except ConfigError as exc:
            problems.extend(f"geo.region_maps[{i}]: {p}" for p in exc.problems)
    if problems:
        for db in (country_db, asn_db):
            if db is not None:
                db.close()
        raise ConfigError(problems)
    return CompositeLabeler(
        country_db=country_db, asn_db=asn_db, region_maps=maps, cache_size=geo.cache_size
    )
