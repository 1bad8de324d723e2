"""Country and ASN answers from MaxMind DB files: MaxMind GeoLite2/GeoIP2, DB-IP lite, IPinfo lite.

The record layout is detected once at load (metadata ``database_type``, else record keys) so a
lookup runs one reader call and a couple of dict reads.
"""

from __future__ import annotations

import enum
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import maxminddb

from egressd.errors import ConfigError


class MmdbLayout(enum.Enum):
    """How a database's records are shaped; the value is the human name."""

    #: GeoLite2/GeoIP2 Country, City, Enterprise; DB-IP lite Country/City use the same keys
    COUNTRY = "country"
    #: GeoLite2/GeoIP2 ASN; DB-IP lite ASN uses the same keys
    ASN = "asn"
    #: IPinfo lite (and the older IPinfo country_asn): country and ASN in one flat record
    IPINFO = "ipinfo"

    @property
    def has_country(self) -> bool:
        return self is not MmdbLayout.ASN

    @property
    def has_asn(self) -> bool:
        return self is not MmdbLayout.COUNTRY


#: addresses probed when ``database_type`` does not say what the database holds
_PROBE_ADDRESSES = (
    "1.1.1.1",
    "8.8.8.8",
    "9.9.9.9",
    "23.0.0.1",
    "31.13.64.1",
    "52.0.0.1",
    "104.16.0.1",
    "2606:4700::1111",
    "2001:4860:4860::8888",
)


def _layout_from_type(database_type: str) -> MmdbLayout | None:
    kind = database_type.lower()
    if "ipinfo" in kind:
        return MmdbLayout.IPINFO
    if "asn" in kind:
        return MmdbLayout.ASN
    if "country" in kind or "city" in kind or "enterprise" in kind:
        return MmdbLayout.COUNTRY
    return None


def _layout_from_record(record: Any) -> MmdbLayout | None:
    if not isinstance(record, dict):
        return None
    if "country_code" in record or isinstance(record.get("asn"), str):
        return MmdbLayout.IPINFO
    if "autonomous_system_number" in record:
        return MmdbLayout.ASN
    if "country" in record or "registered_country" in record:
        return MmdbLayout.COUNTRY
    return None


def _iso_code(section: Any) -> str | None:
    if isinstance(section, dict):
        code = section.get("iso_code")
        if isinstance(code, str) and code:
            return code
    return None


def _parse_asn(value: Any) -> int:
    """``13335`` or ``"AS13335"`` → 13335; anything else → 0."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value > 0 else 0
    if isinstance(value, str):
        digits = value[2:] if value[:2].upper() == "AS" else value
        if digits.isdigit():
            return int(digits)
    return 0


class MmdbDatabase:
    """One opened mmdb file. ``country()`` / ``asn()`` never raise for malformed addresses.

    Open with :meth:`open`; a missing, unreadable or invalid file raises :class:`ConfigError`
    naming the file.
    """

    __slots__ = ("_reader", "build_epoch", "database_type", "layout", "path")

    def __init__(self, reader: Any, path: Path, layout: MmdbLayout) -> None:
        self._reader = reader
        self.path = path
        self.layout = layout
        metadata = reader.metadata()
        self.database_type: str = str(metadata.database_type)
        #: when the vendor built the database, epoch seconds (metadata ``build_epoch``)
        self.build_epoch: int = int(metadata.build_epoch)

    @classmethod
    def open(cls, path: Path, role: str = "", *, snapshot: bool = True) -> MmdbDatabase:
        """Open ``path``; ``role`` ("country" / "asn") checks the database can answer it.

        With ``snapshot`` (the default) the file is copied to an unlinked temporary file and
        the copy is memory-mapped. The fast C reader only maps files, and a file overwritten
        in place under a live mapping (``cp new.mmdb GeoLite2-Country.mmdb``) changes answers
        mid-flight or, when it shrinks, kills the process with SIGBUS. Updates by rename
        (geoipupdate) would be safe either way; the copy makes in-place ones safe too.
        """
        try:
            reader = cls._open_reader(path, snapshot)
        except FileNotFoundError:
            raise ConfigError(f"{path}: mmdb file does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"{path}: is a directory, not an mmdb file") from None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read mmdb file: {exc.strerror or exc}") from None
        except (maxminddb.InvalidDatabaseError, ValueError) as exc:
            raise ConfigError(f"{path}: not a valid MaxMind DB (mmdb) file: {exc}") from None
        try:
            database_type = str(reader.metadata().database_type)
            layout = _layout_from_type(database_type)
            if layout is None:
                layout = cls._probe_layout(reader)
            if layout is None:
                raise ConfigError(
                    f"{path}: mmdb database type {database_type!r} is not one egressd reads "
                    "(MaxMind/DB-IP Country, City or ASN, or IPinfo lite) and its records have "
                    "no country or ASN fields"
                )
            if role == "country" and not layout.has_country:
                raise ConfigError(
                    f"{path}: {database_type!r} is an ASN database and has no country data; "
                    "configure it as asn_mmdb"
                )
            if role == "asn" and not layout.has_asn:
                raise ConfigError(
                    f"{path}: {database_type!r} has no ASN data; configure it as country_mmdb"
                )
            return cls(reader, path, layout)
        except BaseException:
            reader.close()
            raise

    @staticmethod
    def _open_reader(path: Path, snapshot: bool) -> Any:
        if not snapshot:
            return maxminddb.open_database(str(path))
        with (
            open(path, "rb") as source,
            tempfile.NamedTemporaryFile(prefix="egressd-", suffix=".mmdb", delete=False) as copy,
        ):
            shutil.copyfileobj(source, copy, 1 << 20)
        try:
            return maxminddb.open_database(copy.name)
        finally:
            # The mapping keeps the unlinked copy alive until the reader is closed.
            os.unlink(copy.name)

    @staticmethod
    def _probe_layout(reader: Any) -> MmdbLayout | None:
        for address in _PROBE_ADDRESSES:
            try:
                layout = _layout_from_record(reader.get(address))
            except (ValueError, TypeError, maxminddb.InvalidDatabaseError):
                continue
            if layout is not None:
                return layout
        return None

    @property
    def name(self) -> str:
        """Data-source name shown in lookups: ``mmdb:GeoLite2-Country``."""
        return f"mmdb:{self.database_type}"

    def record(self, address: str) -> Any:
        """The raw record for ``address`` (text), or None when absent or malformed."""
        try:
            return self._reader.get(address)
        except (ValueError, TypeError, maxminddb.InvalidDatabaseError):
            # ValueError covers malformed text and IPv6 looked up in an IPv4-only database.
            return None

    def country(self, address: str) -> str | None:
        """ISO 3166-1 alpha-2 code of the country, or None when the database has no answer."""
        record = self.record(address)
        if not isinstance(record, dict):
            return None
        if self.layout is MmdbLayout.IPINFO:
            code = record.get("country_code")
            if not isinstance(code, str):
                # the older IPinfo country_asn layout keeps the code in "country"
                code = record.get("country")
            return code.upper() if isinstance(code, str) and len(code) == 2 else None
        # country = where the block is used; registered_country = who registered it
        return _iso_code(record.get("country")) or _iso_code(record.get("registered_country"))

    def asn(self, address: str) -> tuple[int, str]:
        """(AS number, organisation) or (0, "") when the database has no answer."""
        record = self.record(address)
        if not isinstance(record, dict):
            return 0, ""
        if self.layout is MmdbLayout.IPINFO:
            number = _parse_asn(record.get("asn"))
            org = record.get("as_name", record.get("name", ""))
        else:
            number = _parse_asn(record.get("autonomous_system_number"))
            org = record.get("autonomous_system_organization", "")
        if not number:
            return 0, ""
        return number, org if isinstance(org, str) else ""

    def close(self) -> None:
        self._reader.close()

    def __repr__(self) -> str:
        return f"<MmdbDatabase {self.path} {self.database_type} layout={self.layout.value}>"
