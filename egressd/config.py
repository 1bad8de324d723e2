"""egressd configuration: typed, frozen, defaults in code, loaded from TOML with precise errors.

Every problem names the key path, the file and (where it can be found) the line; the loader
collects all problems before it gives up so ``egressd check-config`` can say all of them.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import socket
import ssl
import sys
import tomllib
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from egressd.baseline.statefile import foreign_state
from egressd.countries import country_problem
from egressd.errors import ConfigError
from egressd.units import parse_duration, parse_size

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

KAFKA_FORMATS = ("goflow2-json", "goflow2-protobuf", "pmacct-json", "egressd-json")
REGION_MAP_FORMATS = ("aws", "gcp", "azure", "csv")
OTHER_GROUP = "other"
_COUNTRY = re.compile(r"[A-Z]{2}")
_ASN = re.compile(r"(?:AS)?(\d{1,10})", re.IGNORECASE)


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class NetworksConfig:
    local: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("172.16.0.0/12"),
        ipaddress.ip_network("192.168.0.0/16"),
        ipaddress.ip_network("fc00::/7"),
    )


@dataclass(frozen=True, slots=True)
class GroupConfig:
    name: str
    sources: tuple[IPNetwork, ...]
    #: None means "learn the set during the learning period".
    expected_countries: frozenset[str] | None = None
    expected_regions: frozenset[str] | None = None
    expected_asns: frozenset[int] | None = None


@dataclass(frozen=True, slots=True)
class DetectionConfig:
    interval: float = 300.0
    learning: float = 3 * 86400.0
    allowed_lateness: float = 60.0
    #: the first of ``unexpected_windows`` (kept as keys of their own for older configs)
    unexpected_min_bytes: int = 100_000_000
    unexpected_window: float = 3600.0
    #: (window seconds, floor bytes) per sliding window of the unexpected-destination rule;
    #: the week's catches a drip of ~6 MB an hour that the day's floor never sees (a window
    #: of more than 336 intervals sums them into buckets: the week's are hourly)
    unexpected_windows: tuple[tuple[float, int], ...] = (
        (3600.0, 100_000_000),
        (86400.0, 1_000_000_000),
        (7 * 86400.0, 1_000_000_000),
    )
    #: a group's unexpected egress summed over destinations pages at this many times a
    #: window's floor (fan-out: many destinations each under the floor)
    fanout_factor: float = 5.0
    #: every byte floor of that rule (its windows', the fan-out sums', the least interval that
    #: opens a window) shrinks for a group whose busy intervals (the 90% quantile of its egress,
    #: per 5 minutes) carry less than this: times (that egress / this) down to a fifth, and
    #: below a fifth times the square root of (that egress / this / 5) (GroupRates.shrink), at
    #: least ``unexpected_floors_lowest_factor``; 0 keeps them absolute
    unexpected_floors_scale_below: int = 500_000_000
    #: 0.02: 2 MB an hour with the default floors (a group whose busy 5 minutes carry 1 MB)
    unexpected_floors_lowest_factor: float = 0.02
    #: egress flows averaging fewer bytes per packet than this are "small" (ACKs, requests)
    small_packet_bytes: int = 150
    #: small-packet egress to a destination counts only beyond this fraction of the
    #: ingress from that destination in the same window (the return path of a download)
    ingress_return_fraction: float = 0.05
    #: learned expected sets ignore destinations that received less than this during learning
    #: (times the factor the group's unexpected-destination floors shrink by when its learning
    #: ends, kept with what it learned: a small group learns at the scale it is judged by)
    learn_min_bytes: int = 20_000_000
    #: ... or that were used in fewer intervals / on fewer days (sustained use, not one flow)
    learn_min_intervals: int = 6
    learn_min_days: int = 2
    spike_ratio: float = 4.0
    spike_deviations: float = 4.0
    spike_min_bytes: int = 100_000_000
    #: a spike must also be this many times the key's own (slowly decaying) peak interval
    spike_peak_ratio: float = 3.0
    #: ... and exceed that peak by at least this much (a burst size seen before never pages)
    spike_min_excess: int = 1_000_000_000
    #: both spike floors grow with a group whose busy intervals (the 90% quantile of its
    #: egress per interval) carry more than this: times (that egress / this); 0 turns it off
    spike_floors_scale_above: int = 1_500_000_000
    #: bytes within ``new_destination_window`` to prefixes (/24, /48) the group has not used
    #: for ``new_destination_unseen``, inside otherwise expected destinations
    new_destination_min_bytes: int = 1_000_000_000
    new_destination_window: float = 3600.0
    #: ... and this much within a day to prefixes first used within that day (a slow
    #: transfer to a fresh network); 0 turns the day window off
    new_destination_day_min_bytes: int = 5_000_000_000
    #: 35 days: a monthly job (a month-end close, a monthly archive) whose date drifts by some
    #: days stays known, and so do a research group's collaborators between campaigns
    new_destination_unseen: float = 35 * 86400.0
    new_destination_max_prefixes: int = 50_000
    #: the most a group's learned new-block churn (the bytes it sent within the window to
    #: networks in address blocks it had not used, over all its destinations) raises the floor
    #: for such bytes to (times the group's floor factor), and a destination's own new-block
    #: churn likewise; 0 turns the group's churn off and leaves a destination's unbounded
    new_destination_group_churn_max: int = 5_000_000_000
    #: both floors (and the least an address must carry to count as used) shrink for a group
    #: whose busy intervals (the 90% quantile of its egress, per 5 minutes) carry less than
    #: this: times (that egress / this) down to a fifth, more slowly below (as for
    #: ``unexpected_floors_scale_below``), at least ``new_destination_floors_lowest_factor``;
    #: 0 keeps them absolute
    new_destination_floors_scale_below: int = 200_000_000
    #: 0.02: 20 MB an hour, 100 MB a day with the default floors
    new_destination_floors_lowest_factor: float = 0.02
    #: a baseline needs this many observed intervals before it can call a spike
    spike_min_observations: int = 12
    #: seasonality (hour of day, weekday/weekend) is computed in this timezone
    timezone: str = "UTC"
    #: live only: flows stamped further than this ahead of wall time count at that time
    max_clock_ahead: float = 300.0
    #: bytes per second one flow record may claim (50GB/s = 400 Gbit/s); records claiming
    #: more bytes, or more minimum-size packets, than this carries in their duration are invalid
    max_link_rate: int = 50_000_000_000
    #: a firing alert resolves after its condition stayed false this long (hysteresis)
    resolve_after: float = 900.0
    #: an alert must hold this long before it fires (0 = fire on the first evaluation)
    pending_for: float = 0.0
    max_keys: int = 100_000
    key_idle_timeout: float = 35 * 86400.0
    top_talkers: int = 5
    severity: str = "page"
    #: a flow two exporters report (core and edge router, firewall behind a router):
    #: "count_once" counts per flow key the largest total one exporter reported
    #: (:mod:`egressd.dedupe`; engaged once a second exporter's records arrive), "sum" adds
    #: every exporter's records
    duplicate_exports: str = "count_once"
    #: whether the configuration named ``duplicate_exports`` (start-up notes only)
    duplicate_exports_named: bool = False
    #: a flow key's entry is forgotten this long (event time) after its last record
    duplicate_expiry: float = 65 * 60.0
    #: flow keys the duplicate stage holds at most (least recently reported evicted)
    duplicate_max_keys: int = 100_000


@dataclass(frozen=True, slots=True)
class StateConfig:
    path: Path | None = None
    save_interval: float = 300.0
    #: a state file larger than this is not read (parsing takes several times its size)
    max_size: int = 256_000_000


@dataclass(frozen=True, slots=True)
class HttpConfig:
    listen: str = "127.0.0.1:9108"
    #: external URL used in generatorURL (defaults to http://<listen>)
    external_url: str = ""
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    #: user -> bcrypt/sha256 hash, as in Prometheus' web-config
    basic_auth_users: tuple[tuple[str, str], ...] = ()
    #: open connections at most (lowered further to stay below the open-file limit)
    max_connections: int = 512
    #: a request head must arrive within this long of its first byte (or of the connect)
    header_timeout: float = 10.0
    #: an idle kept-alive connection is closed after this long
    idle_timeout: float = 15.0


@dataclass(frozen=True, slots=True)
class NetflowSourceConfig:
    listen: str = "127.0.0.1:2055"
    allowed_exporters: tuple[IPNetwork, ...] | None = None
    receive_buffer: int = 4 * 1024 * 1024
    queue_size: int = 10_000
    template_timeout: float = 3600.0
    max_templates: int = 10_000
    max_pending_datagrams: int = 1_000
    pending_timeout: float = 60.0
    #: processes that decode and count (1: the daemon's own event loop, no worker)
    workers: int = 1


@dataclass(frozen=True, slots=True)
class KafkaSourceConfig:
    bootstrap_servers: tuple[str, ...]
    topics: tuple[str, ...]
    group_id: str = "egressd"
    format: str = "goflow2-json"
    client_id: str = "egressd"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    max_batch: int = 5_000
    dead_letter_topic: str = ""
    session_timeout: float = 10.0
    heartbeat_interval: float = 3.0
    rebalance_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class CaptureSourceConfig:
    interface: str
    bpf: str = "ip or ip6"
    snaplen: int = 128
    sampling: int = 1
    idle_timeout: float = 15.0
    active_timeout: float = 60.0
    max_flows: int = 100_000


@dataclass(frozen=True, slots=True)
class SourcesConfig:
    netflow: tuple[NetflowSourceConfig, ...] = ()
    kafka: tuple[KafkaSourceConfig, ...] = ()
    capture: tuple[CaptureSourceConfig, ...] = ()


@dataclass(frozen=True, slots=True)
class RegionMapConfig:
    format: str
    path: Path
    #: label prefix, default the format name ("aws" -> "aws/eu-west-2"); csv labels are used as-is
    prefix: str = ""


@dataclass(frozen=True, slots=True)
class GeoConfig:
    country_mmdb: Path | None = None
    asn_mmdb: Path | None = None
    region_maps: tuple[RegionMapConfig, ...] = ()
    cache_size: int = 100_000
    watch_interval: float = 60.0


@dataclass(frozen=True, slots=True)
class AlertmanagerConfig:
    urls: tuple[str, ...] = ()
    resend_interval: float = 60.0
    timeout: float = 10.0
    outbox_size: int = 10_000
    bearer_token_file: Path | None = None
    basic_auth_username: str = ""
    basic_auth_password_file: Path | None = None
    tls_ca_file: Path | None = None


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    #: append every alert transition as a JSON line here (contract 2 events); None = off
    log_path: Path | None = None


CLUSTER_ROLES = ("all-in-one", "ingest", "detect")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """How this process takes part in a Kafka deployment (see docs/scaling.md)."""

    #: all-in-one: every record to alerts in one process; ingest: raw flows to partials;
    #: detect: partials to alerts
    role: str = "all-in-one"
    partials_topic: str = "egressd-partials"
    #: the consumer group of the detect role (the ingest role uses the source's group_id)
    detect_group_id: str = "egressd-detect"
    #: ingest: a batch of a source partition ends at every multiple of this many offsets
    batch_offsets: int = 5_000
    #: ingest: a batch not yet at its boundary goes out after this long without new records
    idle_flush: float = 2.0
    #: ingest: how often every partials partition hears how far event time has come
    heartbeat_interval: float = 1.0
    #: detect: where each partials partition's state is saved (every state.save_interval):
    #: a directory, or S3-compatible object storage (``s3://bucket/prefix``)
    state_directory: Path | None = None
    state_url: str = ""
    s3_endpoint: str = ""
    s3_region: str = "us-east-1"
    #: detect: append every closed (group, destination, interval) sum as a JSON line here
    interval_log: Path | None = None
    #: ingest: produce each shipment's partials and commit its input offsets in one Kafka
    #: transaction (brokers that have them); detect: read only committed transactions
    transactions: bool = False
    #: ingest, with transactions: this process's transactional id (unique per process,
    #: the same across its restarts)
    transactional_id: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    networks: NetworksConfig = field(default_factory=NetworksConfig)
    groups: tuple[GroupConfig, ...] = ()
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    state: StateConfig = field(default_factory=StateConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    sources: SourcesConfig = field(default_factory=SourcesConfig)
    geo: GeoConfig = field(default_factory=GeoConfig)
    alertmanager: AlertmanagerConfig = field(default_factory=AlertmanagerConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    #: where the configuration came from ("" for built-in defaults)
    source_path: str = ""


# --------------------------------------------------------------------------- reading


class _Locator:
    """Finds the line of a key path in the TOML text, for error messages (best effort)."""

    __slots__ = ("_lines",)

    def __init__(self, text: str) -> None:
        self._lines = text.splitlines()

    def line_of(self, path: tuple[str | int, ...]) -> int | None:
        tables = [p for p in path if isinstance(p, str)]
        if not tables:
            return None
        key = tables[-1]
        start = 0
        # Walk table headers: "[a.b]" or "[[a.b]]" (the index-th occurrence).
        header_parts: list[str] = []
        index = 0
        for part in path[:-1]:
            if isinstance(part, int):
                index = part
                continue
            header_parts.append(part)
        candidates = [".".join(header_parts[:n]) for n in range(len(header_parts), 0, -1)]
        for header in candidates:
            hit = self._header(header, index)
            if hit is not None:
                start = hit
                break
        key_pattern = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
        header_pattern = re.compile(r"^\s*\[")
        for i in range(start, len(self._lines)):
            # Top-level keys end at the first header; a table's keys end at the next one.
            if (i > start or not header_parts) and header_pattern.match(self._lines[i]):
                break
            if key_pattern.match(self._lines[i]):
                return i + 1
        # Not a "key =" line: the path may name a table itself, "[a.b]" or "[[a.b]]" (an
        # unknown table such as [surprise] included), whose header is its line.
        own_index = path[-1] if isinstance(path[-1], int) else 0
        table = self._header(".".join(tables), own_index)
        if table is not None:
            return table + 1
        if header_parts:
            return start + 1
        return None

    def _header(self, dotted: str, index: int) -> int | None:
        """The line index of the ``index``-th "[dotted]" or "[[dotted]]" header, if any."""
        pattern = re.compile(rf"^\s*\[\[?\s*{re.escape(dotted)}\s*\]\]?\s*(#.*)?$")
        hits = [i for i, line in enumerate(self._lines) if pattern.match(line)]
        if not hits:
            return None
        return hits[min(index, len(hits) - 1)]


class _Reader:
    """Pops typed values out of nested TOML tables and collects every problem."""

    __slots__ = ("_entries", "_filename", "_locator")

    def __init__(self, filename: str, text: str) -> None:
        self._filename = filename
        self._locator = _Locator(text)
        #: (line or 0, order found, text): problems read in file order, whatever found them
        self._entries: list[tuple[int, int, str]] = []

    @property
    def problems(self) -> list[str]:
        """Every problem so far, by line in the file (those without a line first)."""
        return [text for _line, _order, text in sorted(self._entries)]

    def problem(self, path: tuple[str | int, ...], message: str) -> None:
        name = _path_name(path)
        line = self._locator.line_of(path)
        where = f"{self._filename}:{line}" if line else self._filename
        self._entries.append((line or 0, len(self._entries), f"{where}: {name}: {message}"))

    def table(self, raw: Any, path: tuple[str | int, ...]) -> _Table:
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            self.problem(path, f"expected a table, got {type(raw).__name__}")
            raw = {}
        return _Table(self, dict(raw), path)

    def tables(self, raw: Any, path: tuple[str | int, ...]) -> Iterator[_Table]:
        if raw is None:
            return
        if isinstance(raw, dict):
            raw = [raw]
        if not isinstance(raw, list):
            self.problem(path, "expected an array of tables ([[...]])")
            return
        for i, item in enumerate(raw):
            yield self.table(item, (*path, i))


class _Table:
    __slots__ = ("_asked", "_data", "_path", "_reader")

    def __init__(self, reader: _Reader, data: dict[str, Any], path: tuple[str | int, ...]) -> None:
        self._reader = reader
        self._data = data
        self._path = path
        #: every key read from this table, present or not: what an unknown key may be a typo of
        self._asked: set[str] = set()

    def has(self, key: str) -> bool:
        self._asked.add(key)
        return key in self._data

    def raw(self, key: str) -> Any:
        self._asked.add(key)
        return self._data.pop(key, None)

    def sub(self, key: str) -> _Table:
        self._asked.add(key)
        return self._reader.table(self._data.pop(key, None), (*self._path, key))

    def subs(self, key: str) -> Iterator[_Table]:
        self._asked.add(key)
        return self._reader.tables(self._data.pop(key, None), (*self._path, key))

    def problem(self, key: str | None, message: str) -> None:
        # An empty key ("" = 1) is still a key: it must be named, not the table holding it.
        self._reader.problem((*self._path, key) if key is not None else self._path, message)

    def get(self, key: str, default: T, convert: Callable[[Any], T]) -> T:
        self._asked.add(key)
        if key not in self._data:
            return default
        value = self._data.pop(key)
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            self.problem(key, str(exc))
            return default

    def require(self, key: str, convert: Callable[[Any], T], default: T) -> T:
        """Like :meth:`get`, but a missing key is a problem (``default`` keeps checking going)."""
        self._asked.add(key)
        if key not in self._data:
            self.problem(key, "is required")
            return default
        return self.get(key, default, convert)

    def done(self) -> None:
        for key in self._data:
            near = difflib.get_close_matches(key.lower(), sorted(self._asked), n=1, cutoff=0.7)
            self.problem(key, f"unknown key (did you mean {near[0]}?)" if near else "unknown key")


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key_name(key: str) -> str:
    """A key as TOML would write it: bare when it can be, else a quoted basic string."""
    if _BARE_KEY.fullmatch(key):
        return key
    out = ['"']
    for ch in key:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _path_name(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            # Quoted like TOML so an empty or dotted key cannot pass for another path.
            name = _key_name(part)
            out += f".{name}" if out else name
    return out or "(top level)"


# --------------------------------------------------------------------------- converters


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _nonempty_str(value: Any) -> str:
    text = _str(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"expected a positive integer, got {value!r}")
    return value


#: the most NetFlow worker processes one source may have
MAX_WORKERS = 64


def _workers(value: Any) -> int:
    """A worker count, or "auto": one per CPU (at most :data:`MAX_WORKERS`)."""
    if value == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    count = _positive_int(value)
    if count > MAX_WORKERS:
        raise ValueError(f"expected at most {MAX_WORKERS} workers, got {count}")
    if count > 1 and not sys.platform.startswith("linux"):
        raise ValueError("workers > 1 needs Linux (SO_REUSEPORT steering by exporter address)")
    return count


def _positive_float(value: Any) -> float:
    # TOML has nan and inf; neither is a usable ratio or threshold.
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"expected a positive number, got {value!r}")
    return float(value)


def _duration(value: Any) -> float:
    if not isinstance(value, str | int | float):
        raise ValueError(f"expected a duration such as '5m', got {value!r}")
    seconds = parse_duration(value)
    # nan, inf and digit strings beyond any float ("999...9d") would break interval arithmetic.
    if not math.isfinite(seconds):
        raise ValueError(f"expected a finite duration, got {value!r}")
    return seconds


def _positive_duration(value: Any) -> float:
    seconds = _duration(value)
    if seconds <= 0:
        raise ValueError(f"must be longer than zero, got {value!r}")
    return seconds


def _size(value: Any) -> int:
    if not isinstance(value, str | int):
        raise ValueError(f"expected a size such as '100MB', got {value!r}")
    try:
        return parse_size(value)
    except OverflowError:  # "999...9GB": more digits than a float holds
        raise ValueError(f"size {value!r} is out of range") from None


def _positive_size(value: Any) -> int:
    size = _size(value)
    if size <= 0:
        raise ValueError(f"expected a size above zero, got {value!r}")
    return size


def _timezone(value: Any) -> str:
    from egressd.baseline.seasonal import timezone_named

    timezone_named(_nonempty_str(value))
    return str(value)


def _path(value: Any) -> Path:
    return Path(_nonempty_str(value))


def _external_url(value: Any) -> str:
    """``http.external_url``: empty, or an absolute http(s) URL without credentials or query."""
    url = _str(value)
    if not url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} must be an absolute http:// or https:// URL with a host")
    if "@" in parts.netloc:
        raise ValueError("credentials do not belong in external_url (it is sent with every alert)")
    if parts.query or parts.fragment or any(c.isspace() for c in url):
        raise ValueError(f"{url!r} must have no query, fragment or spaces")
    return url


#: what Kafka accepts as a topic name
_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")


def _topic_problem(name: str) -> str | None:
    if not _TOPIC.fullmatch(name) or name in (".", ".."):
        return (
            f"{name!r} is not a Kafka topic name (1-249 letters, digits, '.', '_', '-'; "
            "not '.' or '..')"
        )
    return None


def _interface_problem(name: str) -> str | None:
    """What is wrong with a network interface name on Linux (IFNAMSIZ 16, no '/' or space)."""
    if len(name.encode()) > 15 or name in (".", "..") or any(c == "/" or c.isspace() for c in name):
        return f"{name!r} is not a network interface name (at most 15 bytes, no '/' or spaces)"
    return None


def _bpf_problem(bpf: str) -> str | None:
    """libpcap's complaint about ``bpf``, compiled for Ethernet without privileges; None if fine.

    Needs scapy and libpcap (the capture source's own dependencies); without them there is
    nothing to check against and the capture source reports the problem at start.
    """
    if not bpf:
        return None
    try:
        from scapy.arch.common import compile_filter
        from scapy.data import DLT_EN10MB
        from scapy.error import Scapy_Exception
    except Exception:  # scapy absent or unusable here: nothing to check against
        return None
    try:
        compile_filter(bpf, linktype=DLT_EN10MB)
    except Scapy_Exception as exc:
        return f"{bpf!r} does not compile: {str(exc).strip()[:200]}"
    except Exception:  # libpcap missing (ImportError, OSError): the source will say so
        return None
    return None


def _readable_file_problem(path: Path) -> str | None:
    if not _is_file(path):
        return f"file {str(path)!r} does not exist"
    if not os.access(path, os.R_OK):
        return f"file {str(path)!r} is not readable"
    return None


def _is_file(path: Path) -> bool:
    """``path.is_file()``, false (not an exception) for names the OS refuses (too long...)."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _str_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"expected a list of strings, got {value!r}")
    return tuple(value)


def _network(text: str) -> IPNetwork:
    try:
        network = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP network (CIDR such as '10.0.0.0/8')") from None
    if network.network_address != ipaddress.ip_interface(text.strip()).ip:
        # "192.168.1.5/16" is almost always a host address pasted with its netmask: say
        # which network that is rather than widen or narrow it silently.
        raise ValueError(
            f"{text!r} has host bits set: the network is {network} "
            f"(or {text.strip().split('/')[0]} alone for one address)"
        )
    return network


def _networks(value: Any) -> tuple[IPNetwork, ...]:
    return tuple(_network(v) for v in _str_list(value))


def _countries(value: Any) -> frozenset[str]:
    codes = _str_list(value)
    bad = [c for c in codes if not _COUNTRY.fullmatch(c.upper())]
    if bad:
        raise ValueError(f"not ISO 3166-1 alpha-2 country codes: {', '.join(bad)}")
    problems = [p for p in (country_problem(c.upper()) for c in codes) if p is not None]
    if problems:
        raise ValueError("; ".join(problems))
    return frozenset(c.upper() for c in codes)


def _regions(value: Any) -> frozenset[str]:
    labels = _str_list(value)
    bad = [r for r in labels if not r.strip()]
    if bad:
        raise ValueError("region labels must not be empty")
    return frozenset(r.strip() for r in labels)


def _asns(value: Any) -> frozenset[int]:
    if isinstance(value, int | str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"expected a list of AS numbers, got {value!r}")
    out = set()
    for item in value:
        if isinstance(item, bool):
            raise ValueError(f"not an AS number: {item!r}")
        if isinstance(item, int):
            out.add(item)
            continue
        match = _ASN.fullmatch(str(item).strip())
        if not match:
            raise ValueError(f"not an AS number: {item!r} (use 13335 or 'AS13335')")
        out.add(int(match.group(1)))
    return frozenset(out)


def _listen(value: Any) -> str:
    text = _nonempty_str(value)
    split_host_port(text)
    return text


def split_host_port(text: str) -> tuple[str, int]:
    """``"127.0.0.1:2055"`` / ``"[::1]:2055"`` → (host, port); raises ValueError."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not host:port (use '127.0.0.1:2055' or '[::1]:2055')")
    return host, int(port)


def _choice(*choices: str) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        text = _str(value)
        if text not in choices:
            raise ValueError(f"{text!r} is not one of {', '.join(choices)}")
        return text

    return convert


# --------------------------------------------------------------------------- sections


def _read_networks(t: _Table) -> NetworksConfig:
    default = NetworksConfig()
    local = t.get("local", default.local, _networks)
    if not local:
        t.problem("local", "must list at least one network")
    t.done()
    return NetworksConfig(local=local)


def _read_group(t: _Table) -> GroupConfig:
    name = t.require("name", _nonempty_str, "")
    no_networks: tuple[IPNetwork, ...] = ()
    sources = t.require("sources", _networks, no_networks)
    group = GroupConfig(
        name=name,
        sources=sources,
        expected_countries=t.get("expected_countries", None, _countries),
        expected_regions=t.get("expected_regions", None, _regions),
        expected_asns=t.get("expected_asns", None, _asns),
    )
    t.done()
    return group


def _read_unexpected_window(t: _Table, interval: float) -> tuple[float, int]:
    window = t.require("window", _positive_duration, 3600.0)
    floor = t.require("min_bytes", _size, 100_000_000)
    if window < interval:
        t.problem("window", "must be at least one interval long")
    t.done()
    return window, floor


def _unexpected_windows(
    t: _Table, cfg: DetectionConfig, windows: list[tuple[float, int]]
) -> DetectionConfig:
    """Settle the unexpected-destination windows from either form of configuration.

    ``[[detection.unexpected]]`` tables list every window. The older single pair
    ``unexpected_min_bytes`` / ``unexpected_window`` still works: it sets the first window,
    and the default windows longer than it (a day, a week) stay behind it, each with a floor
    ten times the first one, at least its default (1 GB).
    """
    d = DetectionConfig()
    old_keys = (cfg.unexpected_min_bytes, cfg.unexpected_window) != (
        d.unexpected_min_bytes,
        d.unexpected_window,
    )
    if windows:
        if old_keys:
            t.problem(
                "unexpected",
                "give either [[detection.unexpected]] windows or unexpected_min_bytes/"
                "unexpected_window, not both (the tables replace the two keys)",
            )
        ordered = tuple(sorted(windows))
        return replace(
            cfg,
            unexpected_windows=ordered,
            unexpected_window=ordered[0][0],
            unexpected_min_bytes=ordered[0][1],
        )
    first = (cfg.unexpected_window, cfg.unexpected_min_bytes)
    behind = tuple(
        (length, max(floor, 10 * first[1]))
        for length, floor in d.unexpected_windows
        if length > first[0]
    )
    return replace(cfg, unexpected_windows=(first, *behind))


def _fraction(value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not 0 <= value <= 1
    ):
        raise ValueError(f"expected a fraction between 0 and 1, got {value!r}")
    return float(value)


def _read_detection(t: _Table) -> DetectionConfig:
    d = DetectionConfig()
    cfg = DetectionConfig(
        interval=t.get("interval", d.interval, _positive_duration),
        learning=t.get("learning", d.learning, _duration),
        allowed_lateness=t.get("allowed_lateness", d.allowed_lateness, _duration),
        unexpected_min_bytes=t.get("unexpected_min_bytes", d.unexpected_min_bytes, _size),
        unexpected_window=t.get("unexpected_window", d.unexpected_window, _positive_duration),
        fanout_factor=t.get("fanout_factor", d.fanout_factor, _positive_float),
        unexpected_floors_scale_below=t.get(
            "unexpected_floors_scale_below", d.unexpected_floors_scale_below, _size
        ),
        unexpected_floors_lowest_factor=t.get(
            "unexpected_floors_lowest_factor", d.unexpected_floors_lowest_factor, _fraction
        ),
        small_packet_bytes=t.get("small_packet_bytes", d.small_packet_bytes, _positive_int),
        ingress_return_fraction=t.get(
            "ingress_return_fraction", d.ingress_return_fraction, _fraction
        ),
        learn_min_bytes=t.get("learn_min_bytes", d.learn_min_bytes, _size),
        learn_min_intervals=t.get("learn_min_intervals", d.learn_min_intervals, _positive_int),
        learn_min_days=t.get("learn_min_days", d.learn_min_days, _positive_int),
        spike_ratio=t.get("spike_ratio", d.spike_ratio, _positive_float),
        spike_deviations=t.get("spike_deviations", d.spike_deviations, _positive_float),
        spike_min_bytes=t.get("spike_min_bytes", d.spike_min_bytes, _size),
        spike_peak_ratio=t.get("spike_peak_ratio", d.spike_peak_ratio, _positive_float),
        spike_min_excess=t.get("spike_min_excess", d.spike_min_excess, _size),
        spike_floors_scale_above=t.get(
            "spike_floors_scale_above", d.spike_floors_scale_above, _size
        ),
        new_destination_min_bytes=t.get(
            "new_destination_min_bytes", d.new_destination_min_bytes, _size
        ),
        new_destination_window=t.get(
            "new_destination_window", d.new_destination_window, _positive_duration
        ),
        new_destination_day_min_bytes=t.get(
            "new_destination_day_min_bytes", d.new_destination_day_min_bytes, _size
        ),
        new_destination_unseen=t.get(
            "new_destination_unseen", d.new_destination_unseen, _positive_duration
        ),
        new_destination_max_prefixes=t.get(
            "new_destination_max_prefixes", d.new_destination_max_prefixes, _positive_int
        ),
        new_destination_group_churn_max=t.get(
            "new_destination_group_churn_max", d.new_destination_group_churn_max, _size
        ),
        new_destination_floors_scale_below=t.get(
            "new_destination_floors_scale_below", d.new_destination_floors_scale_below, _size
        ),
        new_destination_floors_lowest_factor=t.get(
            "new_destination_floors_lowest_factor",
            d.new_destination_floors_lowest_factor,
            _fraction,
        ),
        spike_min_observations=t.get(
            "spike_min_observations", d.spike_min_observations, _positive_int
        ),
        timezone=t.get("timezone", d.timezone, _timezone),
        max_clock_ahead=t.get("max_clock_ahead", d.max_clock_ahead, _duration),
        max_link_rate=t.get("max_link_rate", d.max_link_rate, _size),
        resolve_after=t.get("resolve_after", d.resolve_after, _duration),
        pending_for=t.get("pending_for", d.pending_for, _duration),
        max_keys=t.get("max_keys", d.max_keys, _positive_int),
        key_idle_timeout=t.get("key_idle_timeout", d.key_idle_timeout, _positive_duration),
        top_talkers=t.get("top_talkers", d.top_talkers, _positive_int),
        severity=t.get("severity", d.severity, _nonempty_str),
        duplicate_exports_named=t.has("duplicate_exports"),
        duplicate_exports=t.get(
            "duplicate_exports", d.duplicate_exports, _choice("count_once", "sum")
        ),
        duplicate_expiry=t.get("duplicate_expiry", d.duplicate_expiry, _positive_duration),
        duplicate_max_keys=t.get("duplicate_max_keys", d.duplicate_max_keys, _positive_int),
    )
    windows = [_read_unexpected_window(w, cfg.interval) for w in t.subs("unexpected")]
    cfg = _unexpected_windows(t, cfg, windows)
    if not windows and cfg.unexpected_window < cfg.interval:
        t.problem("unexpected_window", "must be at least one interval long")
    if cfg.new_destination_window < cfg.interval:
        t.problem("new_destination_window", "must be at least one interval long")
    if cfg.spike_ratio <= 1:
        t.problem("spike_ratio", "must be greater than 1")
    if cfg.unexpected_floors_lowest_factor <= 0:
        t.problem("unexpected_floors_lowest_factor", "must be greater than 0 (at most 1)")
    if cfg.new_destination_floors_lowest_factor <= 0:
        t.problem("new_destination_floors_lowest_factor", "must be greater than 0 (at most 1)")
    if cfg.max_link_rate <= 0:
        t.problem("max_link_rate", "must be a positive size per second")
    t.done()
    return cfg


def _read_state(t: _Table) -> StateConfig:
    d = StateConfig()
    cfg = StateConfig(
        path=t.get("path", d.path, _path),
        save_interval=t.get("save_interval", d.save_interval, _positive_duration),
        max_size=t.get("max_size", d.max_size, _positive_size),
    )
    # A path naming something that is no state file (a system file, a directory, a device)
    # would be moved aside like a damaged state and the daemon's own written in its place.
    problem = foreign_state(cfg.path) if cfg.path is not None else None
    if problem is not None:
        t.problem("path", f"{str(cfg.path)!r}: {problem}")
    t.done()
    return cfg


def _read_basic_auth_users(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError('expected a table of user = "password hash"')
    return tuple(sorted(value.items()))


def _read_http(t: _Table) -> HttpConfig:
    d = HttpConfig()
    cfg = HttpConfig(
        listen=t.get("listen", d.listen, _listen),
        external_url=t.get("external_url", d.external_url, _external_url),
        tls_cert_file=t.get("tls_cert_file", d.tls_cert_file, _path),
        tls_key_file=t.get("tls_key_file", d.tls_key_file, _path),
        basic_auth_users=t.get("basic_auth_users", d.basic_auth_users, _read_basic_auth_users),
        max_connections=t.get("max_connections", d.max_connections, _positive_int),
        header_timeout=t.get("header_timeout", d.header_timeout, _positive_duration),
        idle_timeout=t.get("idle_timeout", d.idle_timeout, _positive_duration),
    )
    if (cfg.tls_cert_file is None) != (cfg.tls_key_file is None):
        t.problem("tls_cert_file", "tls_cert_file and tls_key_file go together")
    for user, hashed in cfg.basic_auth_users:
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            t.problem("basic_auth_users", f"password of {user!r} is not a bcrypt hash ($2b$...)")
        elif not _bcrypt_available():
            t.problem(
                "basic_auth_users",
                "bcrypt password hashes need the Python package 'bcrypt' (pip install bcrypt)",
            )
            break
    t.done()
    return cfg


def _bcrypt_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("bcrypt") is not None


def _read_netflow(t: _Table) -> NetflowSourceConfig:
    d = NetflowSourceConfig()
    cfg = NetflowSourceConfig(
        listen=t.get("listen", d.listen, _listen),
        allowed_exporters=t.get("allowed_exporters", d.allowed_exporters, _networks),
        receive_buffer=t.get("receive_buffer", d.receive_buffer, _size),
        queue_size=t.get("queue_size", d.queue_size, _positive_int),
        template_timeout=t.get("template_timeout", d.template_timeout, _positive_duration),
        max_templates=t.get("max_templates", d.max_templates, _positive_int),
        max_pending_datagrams=t.get(
            "max_pending_datagrams", d.max_pending_datagrams, _positive_int
        ),
        pending_timeout=t.get("pending_timeout", d.pending_timeout, _positive_duration),
        workers=t.get("workers", d.workers, _workers),
    )
    t.done()
    return cfg


def _read_kafka(t: _Table) -> KafkaSourceConfig:
    no_strings: tuple[str, ...] = ()
    servers = t.require("bootstrap_servers", _str_list, no_strings)
    for server in servers:
        try:
            split_host_port(server)
        except ValueError as exc:
            t.problem("bootstrap_servers", str(exc))
    topics = t.require("topics", _str_list, no_strings)
    d = KafkaSourceConfig(bootstrap_servers=(), topics=())
    cfg = KafkaSourceConfig(
        bootstrap_servers=servers,
        topics=topics,
        group_id=t.get("group_id", d.group_id, _nonempty_str),
        format=t.get("format", d.format, _choice(*KAFKA_FORMATS)),
        client_id=t.get("client_id", d.client_id, _nonempty_str),
        security_protocol=t.get(
            "security_protocol",
            d.security_protocol,
            _choice("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
        ),
        sasl_mechanism=t.get(
            "sasl_mechanism",
            d.sasl_mechanism,
            _choice("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"),
        ),
        sasl_username=t.get("sasl_username", d.sasl_username, _str),
        sasl_password_file=t.get("sasl_password_file", d.sasl_password_file, _path),
        tls_ca_file=t.get("tls_ca_file", d.tls_ca_file, _path),
        tls_cert_file=t.get("tls_cert_file", d.tls_cert_file, _path),
        tls_key_file=t.get("tls_key_file", d.tls_key_file, _path),
        max_batch=t.get("max_batch", d.max_batch, _positive_int),
        dead_letter_topic=t.get("dead_letter_topic", d.dead_letter_topic, _str),
        session_timeout=t.get("session_timeout", d.session_timeout, _positive_duration),
        heartbeat_interval=t.get("heartbeat_interval", d.heartbeat_interval, _positive_duration),
        rebalance_timeout=t.get("rebalance_timeout", d.rebalance_timeout, _positive_duration),
    )
    if cfg.security_protocol.startswith("SASL") and not cfg.sasl_mechanism:
        t.problem("sasl_mechanism", f"is required with security_protocol {cfg.security_protocol}")
    if cfg.sasl_mechanism and not cfg.security_protocol.startswith("SASL"):
        t.problem(
            "security_protocol", "must be SASL_PLAINTEXT or SASL_SSL when sasl_mechanism is set"
        )
    if cfg.sasl_mechanism and not cfg.sasl_username:
        t.problem("sasl_username", f"is required with sasl_mechanism {cfg.sasl_mechanism}")
    if cfg.sasl_mechanism and cfg.sasl_password_file is None:
        t.problem("sasl_password_file", f"is required with sasl_mechanism {cfg.sasl_mechanism}")
    if (cfg.tls_cert_file is None) != (cfg.tls_key_file is None):
        t.problem("tls_key_file", "tls_cert_file and tls_key_file go together (client certificate)")
    uses_tls = cfg.security_protocol in ("SSL", "SASL_SSL")
    if not uses_tls and (cfg.tls_ca_file or cfg.tls_cert_file or cfg.tls_key_file):
        t.problem("security_protocol", "must be SSL or SASL_SSL when tls_* files are set")
    if cfg.heartbeat_interval >= cfg.session_timeout:
        t.problem("heartbeat_interval", "must be shorter than session_timeout")
    if cfg.heartbeat_interval >= cfg.rebalance_timeout:
        t.problem("heartbeat_interval", "must be shorter than rebalance_timeout")
    for topic in topics:
        problem = _topic_problem(topic)
        if problem:
            t.problem("topics", problem)
    if cfg.dead_letter_topic:
        problem = _topic_problem(cfg.dead_letter_topic)
        if problem:
            t.problem("dead_letter_topic", problem)
        elif cfg.dead_letter_topic in topics:
            t.problem(
                "dead_letter_topic",
                "must not be a topic egressd consumes (each bad message would come back)",
            )
    for key in ("sasl_password_file", "tls_ca_file", "tls_cert_file", "tls_key_file"):
        path = getattr(cfg, key)
        if path is not None and not _is_file(path):
            t.problem(key, f"file {str(path)!r} does not exist")
    t.done()
    return cfg


def _read_capture(t: _Table) -> CaptureSourceConfig:
    interface = t.require("interface", _nonempty_str, "")
    d = CaptureSourceConfig(interface="")
    cfg = CaptureSourceConfig(
        interface=interface,
        bpf=t.get("bpf", d.bpf, _str),
        snaplen=t.get("snaplen", d.snaplen, _positive_int),
        sampling=t.get("sampling", d.sampling, _positive_int),
        idle_timeout=t.get("idle_timeout", d.idle_timeout, _positive_duration),
        active_timeout=t.get("active_timeout", d.active_timeout, _positive_duration),
        max_flows=t.get("max_flows", d.max_flows, _positive_int),
    )
    problem = _interface_problem(cfg.interface) if cfg.interface else None
    if problem:
        t.problem("interface", problem)
    problem = _bpf_problem(cfg.bpf)
    if problem:
        t.problem("bpf", problem)
    t.done()
    return cfg


def _read_sources(t: _Table) -> SourcesConfig:
    cfg = SourcesConfig(
        netflow=tuple(_read_netflow(s) for s in t.subs("netflow")),
        kafka=tuple(_read_kafka(s) for s in t.subs("kafka")),
        capture=tuple(_read_capture(s) for s in t.subs("capture")),
    )
    t.done()
    return cfg


def _read_region_map(t: _Table) -> RegionMapConfig:
    fmt = t.require("format", _choice(*REGION_MAP_FORMATS), "csv")
    path = t.require("path", _path, Path())
    cfg = RegionMapConfig(format=fmt, path=path, prefix=t.get("prefix", "", _str))
    if str(path) != "." and not _is_file(path):
        t.problem("path", f"file {str(path)!r} does not exist")
    t.done()
    return cfg


def _read_geo(t: _Table) -> GeoConfig:
    d = GeoConfig()
    cfg = GeoConfig(
        country_mmdb=t.get("country_mmdb", d.country_mmdb, _path),
        asn_mmdb=t.get("asn_mmdb", d.asn_mmdb, _path),
        region_maps=tuple(_read_region_map(s) for s in t.subs("region_maps")),
        cache_size=t.get("cache_size", d.cache_size, _positive_int),
        watch_interval=t.get("watch_interval", d.watch_interval, _positive_duration),
    )
    for key in ("country_mmdb", "asn_mmdb"):
        path = getattr(cfg, key)
        if path is not None and not _is_file(path):
            t.problem(key, f"file {str(path)!r} does not exist")
    t.done()
    return cfg


def _read_alertmanager(t: _Table) -> AlertmanagerConfig:
    d = AlertmanagerConfig()
    urls = t.get("urls", d.urls, _str_list)
    for url in urls:
        if not url.startswith(("http://", "https://")):
            t.problem("urls", f"{url!r} is not an http:// or https:// URL")
        elif "@" in url.partition("://")[2].partition("/")[0]:
            # URLs get logged; the message must not repeat this one, which holds a secret.
            t.problem(
                "urls",
                "credentials do not belong in a URL (they would be logged): use "
                "basic_auth_username and basic_auth_password_file",
            )
    cfg = AlertmanagerConfig(
        urls=urls,
        resend_interval=t.get("resend_interval", d.resend_interval, _positive_duration),
        timeout=t.get("timeout", d.timeout, _positive_duration),
        outbox_size=t.get("outbox_size", d.outbox_size, _positive_int),
        bearer_token_file=t.get("bearer_token_file", d.bearer_token_file, _path),
        basic_auth_username=t.get("basic_auth_username", d.basic_auth_username, _str),
        basic_auth_password_file=t.get(
            "basic_auth_password_file", d.basic_auth_password_file, _path
        ),
        tls_ca_file=t.get("tls_ca_file", d.tls_ca_file, _path),
    )
    if cfg.bearer_token_file and cfg.basic_auth_username:
        t.problem("bearer_token_file", "use either bearer_token_file or basic auth, not both")
    if cfg.basic_auth_password_file and not cfg.basic_auth_username:
        t.problem("basic_auth_password_file", "is set but basic_auth_username is not")
    for key in ("bearer_token_file", "basic_auth_password_file", "tls_ca_file"):
        path = getattr(cfg, key)
        problem = _readable_file_problem(path) if path is not None else None
        if problem:
            t.problem(key, problem)
        elif key == "tls_ca_file" and path is not None:
            try:
                ssl.create_default_context(cafile=str(path))
            except (ssl.SSLError, OSError, ValueError) as exc:
                t.problem(key, f"file {str(path)!r} holds no usable CA certificate: {exc}")
    t.done()
    return cfg


def _read_alerts(t: _Table) -> AlertsConfig:
    cfg = AlertsConfig(log_path=t.get("log_path", None, _path))
    t.done()
    return cfg


def _read_cluster(t: _Table) -> ClusterConfig:
    d = ClusterConfig()
    cfg = ClusterConfig(
        role=t.get("role", d.role, _choice(*CLUSTER_ROLES)),
        partials_topic=t.get("partials_topic", d.partials_topic, _nonempty_str),
        detect_group_id=t.get("detect_group_id", d.detect_group_id, _nonempty_str),
        batch_offsets=t.get("batch_offsets", d.batch_offsets, _positive_int),
        idle_flush=t.get("idle_flush", d.idle_flush, _positive_duration),
        heartbeat_interval=t.get("heartbeat_interval", d.heartbeat_interval, _positive_duration),
        state_directory=t.get("state_directory", d.state_directory, _path),
        state_url=t.get("state_url", d.state_url, _str),
        s3_endpoint=t.get("s3_endpoint", d.s3_endpoint, _str),
        s3_region=t.get("s3_region", d.s3_region, _nonempty_str),
        interval_log=t.get("interval_log", d.interval_log, _path),
        transactions=t.get("transactions", d.transactions, _bool),
        transactional_id=t.get("transactional_id", d.transactional_id, _str),
    )
    if cfg.transactions and cfg.role == "all-in-one":
        t.problem("transactions", 'applies to role = "ingest" or "detect" only')
    if cfg.transactions and cfg.role == "ingest" and not cfg.transactional_id:
        t.problem(
            "transactional_id",
            "is required with transactions = true in the ingest role: one per ingest "
            "process, the same across its restarts",
        )
    if cfg.state_url and not re.fullmatch(r"s3://[^/]+(/.*)?", cfg.state_url):
        t.problem("state_url", f"{cfg.state_url!r} is not an s3://bucket/prefix URL")
    if cfg.state_url and cfg.state_directory is not None:
        t.problem("state_url", "state_directory and state_url exclude each other")
    if cfg.role == "detect" and cfg.state_directory is None and not cfg.state_url:
        t.problem("state_directory", 'or state_url is required with role = "detect"')
    t.done()
    return cfg


def _check_cluster(reader: _Reader, config: Config) -> None:
    """The ingest and detect roles read Kafka only, through one ``[[sources.kafka]]``."""
    role = config.cluster.role
    if role == "all-in-one":
        return
    sources = config.sources
    if len(sources.kafka) != 1 or sources.netflow or sources.capture:
        reader.problem(
            ("cluster", "role"),
            f"role = {role!r} needs exactly one [[sources.kafka]] and no other source "
            "(ingest reads its topics; detect uses its connection settings)",
        )
    elif role == "ingest" and config.cluster.partials_topic in sources.kafka[0].topics:
        reader.problem(
            ("cluster", "partials_topic"), "must not be one of the topics the ingest role reads"
        )


def _check_groups(reader: _Reader, groups: tuple[GroupConfig, ...]) -> None:
    seen: set[str] = set()
    for i, group in enumerate(groups):
        if group.name == OTHER_GROUP:
            reader.problem(
                ("groups", i, "name"), f"{OTHER_GROUP!r} is reserved for unmatched sources"
            )
        if group.name in seen:
            reader.problem(("groups", i, "name"), f"duplicate group name {group.name!r}")
        seen.add(group.name)


# --------------------------------------------------------------------------- entry points


def parse_config(text: str, filename: str = "<config>") -> Config:
    """Parse TOML ``text`` into a :class:`Config`; raise :class:`ConfigError` with all problems."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{filename}: invalid TOML: {exc}") from None
    reader = _Reader(filename, text)
    top = reader.table(raw, ())
    networks = _read_networks(top.sub("networks"))
    groups = tuple(_read_group(g) for g in top.subs("groups"))
    _check_groups(reader, groups)
    config = Config(
        networks=networks,
        groups=groups,
        detection=_read_detection(top.sub("detection")),
        state=_read_state(top.sub("state")),
        http=_read_http(top.sub("http")),
        sources=_read_sources(top.sub("sources")),
        geo=_read_geo(top.sub("geo")),
        alertmanager=_read_alertmanager(top.sub("alertmanager")),
        alerts=_read_alerts(top.sub("alerts")),
        cluster=_read_cluster(top.sub("cluster")),
        source_path=filename,
    )
    _check_cluster(reader, config)
    top.done()
    if reader.problems:
        raise ConfigError(reader.problems)
    return config


def config_warnings(config: Config) -> list[str]:
    """What is valid but probably not meant (``check-config`` prints it, ``run`` logs it)."""
    sources = config.sources
    if not (sources.netflow or sources.kafka or sources.capture):
        return [
            "no [[sources.netflow]], [[sources.kafka]] or [[sources.capture]] is configured: "
            "egressd receives no flows (the built-in configuration listens for NetFlow/IPFIX "
            "on 127.0.0.1:2055; a configuration file replaces it, so name the sources you want)"
        ]
    warnings = []
    for capture in sources.capture:
        if capture.interface != "any" and not _interface_exists(capture.interface):
            warnings.append(
                f"sources.capture.interface: {capture.interface!r} does not exist on this "
                "machine: egressd run fails to capture here until it does"
            )
    detection = config.detection
    if detection.duplicate_exports_named and detection.duplicate_exports == "count_once":
        split = [f"{n.listen} has workers = {n.workers}" for n in sources.netflow if n.workers > 1]
        if config.cluster.role == "ingest":
            split.append("cluster.role = 'ingest' shares the flow partitions among members")
        if split:
            warnings.append(
                "detection.duplicate_exports: each process counts once only what it receives "
                f"itself ({'; '.join(split)}): a flow two exporters report still counts "
                "twice where their records reach different processes (docs/formats.md)"
            )
    for kafka in sources.kafka:
        if not 6.0 <= kafka.session_timeout <= 1800.0:
            warnings.append(
                f"sources.kafka.session_timeout: {kafka.session_timeout:g}s is outside what "
                "Kafka brokers accept by default (group.min/max.session.timeout.ms: 6s-30m)"
            )
        if kafka.heartbeat_interval > kafka.session_timeout / 3:
            warnings.append(
                "sources.kafka.heartbeat_interval: more than a third of session_timeout; one "
                "lost heartbeat may then cost the group membership"
            )
        if kafka.rebalance_timeout < kafka.session_timeout:
            warnings.append(
                "sources.kafka.rebalance_timeout: shorter than session_timeout; a member may "
                "be dropped during a rebalance before it is considered dead"
            )
    return warnings


def _interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
    except (OSError, ValueError):
        return False
    return True


def load_config(path: str | Path) -> Config:
    """Read and parse the configuration file at ``path``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: configuration is not UTF-8 text") from None
    return parse_config(text, str(path))
