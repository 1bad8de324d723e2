"""Seeded multi-day flow telemetry for scenario tests and benchmarks: normal egress, traps, exfils.

Each scenario says what it injected (with the event time a detector threshold is crossed) so
tests can check that every exfiltration pages, in time, and that nothing else does.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import iptocc
import orjson

DAY = 86400.0
INTERVAL = 300.0
#: Monday 2 March 2026, 00:00 UTC
START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
LEARNING = 3 * DAY
UNEXPECTED_MIN_BYTES = 100_000_000
SPIKE_RATIO = 4.0
SPIKE_MIN_BYTES = 100_000_000
GROWTH_PER_DAY = 1.03
MB = 1_000_000
GB = 1_000_000_000

# Real public destinations, checked against the embedded country data when the module loads.
DESTINATIONS: dict[str, tuple[str, ...]] = {
    "US": (
        "8.8.8.8",
        "8.8.4.4",
        "140.82.112.3",
        "151.101.1.69",
        "13.107.42.14",
        "104.16.132.229",
        "52.94.236.248",
        "17.253.144.10",
        "2001:4860:4860::8888",
        "2606:4700:4700::1111",
        "2620:fe::fe",
    ),
    "GB": ("212.58.244.22", "81.2.69.142", "193.62.193.80", "2a00:1098:0:80::1", "2001:630:1:1::1"),
    "IE": ("87.198.1.1", "193.1.193.64", "89.101.160.5", "46.22.128.1", "2a00:1450:4009::1"),
    "DE": ("88.198.55.33", "78.46.1.1", "85.13.128.1", "136.243.1.1", "178.63.1.1", "2a01:4f8::1"),
    "FR": ("163.172.1.1", "212.27.48.10", "62.210.16.6", "91.121.1.1"),
    "NL": ("145.100.190.243", "194.109.6.66", "82.94.1.1", "2001:67c:2e8::1"),
    "JP": ("133.11.0.1", "210.130.1.1", "202.12.27.33", "157.7.1.1", "2001:200::1"),
    "CN": ("47.100.23.45", "114.114.114.114", "220.181.38.148", "119.29.29.29", "223.5.5.5"),
    "CN6": ("2001:da8::1", "240e:1::1", "2400:da00::6666"),
    "RU": ("77.88.55.60", "87.250.250.242", "5.255.255.5", "95.163.1.1"),
    "RU6": ("2a02:6b8::2:242", "2a02:6b8:a::a"),
    "BR": ("200.147.67.142", "200.160.2.3", "177.1.1.1"),
    "HK": ("218.188.1.1", "43.249.1.1", "119.247.1.1"),
}


def _check_destinations() -> None:
    for code, addresses in DESTINATIONS.items():
        found = iptocc.country_code(list(addresses))
        wrong = [a for a, c in zip(addresses, found, strict=True) if c != code[:2]]
        if wrong:
            raise AssertionError(f"scenario destinations not in {code[:2]}: {wrong} ({found})")


_check_destinations()

CONFIG_TOML = """\
[networks]
local = ["10.0.0.0/8", "fd00::/8"]

[[groups]]
name = "research"
sources = ["10.20.0.0/16", "fd00:20::/32"]
expected_countries = ["GB", "US", "IE", "DE"]

[[groups]]
name = "office"
sources = ["10.30.0.0/16"]
expected_countries = ["GB", "US", "IE", "FR", "NL"]

[[groups]]
name = "servers"
sources = ["10.40.0.0/16", "fd00:40::/32"]
expected_countries = ["GB", "US", "DE"]

# no expected_countries: learned during the learning period
[[groups]]
name = "lab"
sources = ["10.60.0.0/16"]

[detection]
interval = "5m"
learning = "3d"
unexpected_min_bytes = "100MB"
unexpected_window = "1h"
"""


@dataclass(frozen=True, slots=True)
class Profile:
    """Normal egress of one (group, country): per-interval bytes at the weekday peak."""

    group: str
    country: str
    peak: float
    #: fraction of the peak at night
    night: float
    #: weekend multiplier
    weekend: float
    #: share of flows over IPv6
    ipv6: float = 0.0
    #: first day (from the start) this destination is used at all
    first_day: int = 0
    noise: float = 0.25


PROFILES: tuple[Profile, ...] = (
    Profile("research", "US", 300 * MB, 0.15, 0.5, ipv6=0.2),
    Profile("research", "GB", 150 * MB, 0.15, 0.5, ipv6=0.2),
    Profile("research", "IE", 60 * MB, 0.15, 0.5, ipv6=0.1),
    Profile("research", "DE", 40 * MB, 0.15, 0.5),
    Profile("office", "US", 200 * MB, 0.05, 0.25),
    Profile("office", "GB", 100 * MB, 0.05, 0.25),
    Profile("office", "IE", 80 * MB, 0.05, 0.25),
    Profile("office", "FR", 20 * MB, 0.05, 0.25),
    # newly used allowed country: first contact after learning, moderate volume
    Profile("office", "NL", 30 * MB, 0.05, 0.25, first_day=4),
    Profile("servers", "US", 50 * MB, 0.6, 0.9, ipv6=0.3),
    Profile("servers", "GB", 30 * MB, 0.6, 0.9),
    Profile("servers", "DE", 10 * MB, 0.6, 0.9),
    # learned group
    Profile("lab", "US", 60 * MB, 0.2, 0.6),
    Profile("lab", "GB", 40 * MB, 0.2, 0.6),
    Profile("lab", "JP", 20 * MB, 0.2, 0.6),
    # unmatched local sources: group "other", learned
    Profile("other", "US", 10 * MB, 0.3, 0.7),
    Profile("other", "GB", 5 * MB, 0.3, 0.7),
)

#: source prefixes per group, (IPv4 /16 second octet, IPv6 prefix or "")
_GROUP_NETS = {
    "research": (20, "fd00:20"),
    "office": (30, ""),
    "servers": (40, "fd00:40"),
    "lab": (60, ""),
    "other": (50, ""),
}
_GROUP_HOSTS = {"research": 400, "office": 800, "servers": 60, "lab": 100, "other": 50}

EXPORTER = "10.255.0.1"
#: the office exporter samples 1 in 10
SAMPLED_EXPORTER = "10.255.0.2"
#: the exporter of the lab edge samples 1 in 100
LAB_EXPORTER = "10.255.0.3"


def diurnal(hour: float) -> float:
    """0..1 activity by hour of day: quiet night, smooth ramp to an early-afternoon peak."""
    if 6.0 <= hour <= 20.0:
        return math.sin(math.pi * (hour - 6.0) / 14.0) ** 2
    return 0.0


def growth(event_time: float, start: float = START) -> float:
    return float(GROWTH_PER_DAY ** ((event_time - start) / DAY))


def is_weekend(event_time: float) -> bool:
    return datetime.fromtimestamp(event_time, UTC).weekday() >= 5


def profile_bytes(profile: Profile, event_time: float, start: float = START) -> float:
    """The mean bytes ``profile`` sends in the interval starting at ``event_time``."""
    if event_time < start + profile.first_day * DAY:
        return 0.0
    moment = datetime.fromtimestamp(event_time, UTC)
    hour = moment.hour + moment.minute / 60.0
    level = profile.peak * (profile.night + (1.0 - profile.night) * diurnal(hour))
    if moment.weekday() >= 5:
        level *= profile.weekend
    return level * growth(event_time, start)


class Flow(NamedTuple):
    """One exported flow; ``bytes``/``packets`` are what the exporter wrote (before sampling)."""

    end: float
    start: float
    src: str
    dst: str
    bytes: int
    packets: int
    sampling_rate: int = 1
    exporter: str = EXPORTER
    proto: int = 6
    src_port: int = 40000
    dst_port: int = 443

    @property
    def real_bytes(self) -> int:
        return self.bytes * self.sampling_rate


@dataclass(frozen=True, slots=True)
class ExpectedAlert:
    """An injected exfiltration and the alert it must raise."""

    name: str
    alertname: str
    group: str
    dst_country: str
    #: event time at which the detector's threshold is crossed
    crossing: float
    source: str
    destination: str
    #: the detector threshold the evidence must reach
    floor: int
    total_bytes: int
    #: for spikes: the generated per-interval baseline
    baseline: float | None = None
    #: event times of the transfer's first and last flow (None where not recorded)
    begin: float | None = None
    end: float | None = None


@dataclass(frozen=True, slots=True)
class Trap:
    """Benign traffic that looks alarming and must not page."""

    name: str
    start: float
    end: float


@dataclass(slots=True)
class Scenario:
    seed: int
    start: float
    days: int
    flows: list[Flow]
    expected: list[ExpectedAlert]
    traps: list[Trap] = field(default_factory=list)
    config_text: str = CONFIG_TOML

    @property
    def end(self) -> float:
        return self.start + self.days * DAY

    def write_config(self, path: Path) -> Path:
        path.write_text(self.config_text, encoding="utf-8")
        return path

    def write(self, path: Path, fmt: str = "goflow2-json") -> Path:
        """Write the flows, in flow end-time order, as JSON lines in ``fmt``."""
        encode = {
            "goflow2-json": goflow2_line,
            "egressd-json": egressd_line,
            "pmacct-json": pmacct_line,
        }[fmt]
        with open(path, "wb") as out:
            out.writelines(encode(flow, i) for i, flow in enumerate(self.flows))
        return path

    def egress_bytes(self) -> int:
        return sum(f.real_bytes for f in self.flows)

    def scaled(self, factor: float) -> Scenario:
        """The same traffic with every flow's bytes and packets multiplied by ``factor``
        (background, traps and injected transfers alike): the same shape for a smaller or
        larger network. ``expected`` is kept: its crossings are those of the unscaled bytes."""
        if factor == 1:
            return self
        flows = [
            f._replace(
                bytes=max(round(f.bytes * factor), 1), packets=max(round(f.packets * factor), 1)
            )
            for f in self.flows
        ]
        return replace(self, flows=flows)


def goflow2_line(flow: Flow, sequence: int = 0) -> bytes:
    v6 = ":" in flow.src
    return (
        orjson.dumps(
            {
                "type": "IPFIX",
                "time_received_ns": int(flow.end * 1e9) + 2_000_000_000,
                "sequence_num": sequence,
                "sampling_rate": flow.sampling_rate,
                "sampler_address": flow.exporter,
                "time_flow_start_ns": int(flow.start * 1e9),
                "time_flow_end_ns": int(flow.end * 1e9),
                "bytes": flow.bytes,
                "packets": flow.packets,
                "src_addr": flow.src,
                "dst_addr": flow.dst,
                "etype": "IPv6" if v6 else "IPv4",
                "proto": "TCP" if flow.proto == 6 else "UDP",
                "src_port": flow.src_port,
                "dst_port": flow.dst_port,
                "in_if": 1,
                "out_if": 2,
            }
        )
        + b"\n"
    )


def egressd_line(flow: Flow, sequence: int = 0) -> bytes:
    return (
        orjson.dumps(
            {
                "time_start": flow.start,
                "time_end": flow.end,
                "src": flow.src,
                "dst": flow.dst,
                "bytes": flow.bytes,
                "packets": flow.packets,
                "sampling_rate": flow.sampling_rate,
                "proto": flow.proto,
                "src_port": flow.src_port,
                "dst_port": flow.dst_port,
                "exporter": flow.exporter,
            }
        )
        + b"\n"
    )


def _pmacct_time(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def pmacct_line(flow: Flow, sequence: int = 0) -> bytes:
    return (
        orjson.dumps(
            {
                "event_type": "purge",
                "peer_ip_src": flow.exporter,
                "ip_src": flow.src,
                "ip_dst": flow.dst,
                "port_src": flow.src_port,
                "port_dst": flow.dst_port,
                "ip_proto": "tcp" if flow.proto == 6 else "udp",
                "timestamp_start": _pmacct_time(flow.start),
                "timestamp_end": _pmacct_time(flow.end),
                "sampling_rate": flow.sampling_rate,
                "packets": flow.packets,
                "bytes": flow.bytes,
            }
        )
        + b"\n"
    )


class _Hosts:
    """Source host pools per group (IPv4 and, where the group has one, IPv6)."""

    def __init__(self, rng: random.Random) -> None:
        self.v4: dict[str, list[str]] = {}
        self.v6: dict[str, list[str]] = {}
        for group, (octet, prefix6) in _GROUP_NETS.items():
            count = _GROUP_HOSTS[group]
            picks = rng.sample(range(1, 250 * 250), count)
            self.v4[group] = [f"10.{octet}.{p // 250}.{p % 250 + 1}" for p in picks]
            if prefix6:
                self.v6[group] = [f"{prefix6}::{rng.randrange(1, 0xFFFF):x}" for _ in range(50)]

    def pick(self, rng: random.Random, group: str, v6: bool) -> str:
        pool = self.v6[group] if v6 else self.v4[group]
        # Skewed (Pareto): a few hosts send most traffic.
        return pool[min(int(rng.random() ** -0.8) - 1, len(pool) - 1)]


def _split(rng: random.Random, total: float, parts: int) -> list[int]:
    weights = [rng.expovariate(1.0) + 0.2 for _ in range(parts)]
    scale = total / sum(weights)
    return [max(int(w * scale), 64) for w in weights]


def _transfer(
    rng: random.Random,
    src: str,
    dst: str,
    begin: float,
    end: float,
    total: float,
    *,
    step: float = 60.0,
    sampling_rate: int = 1,
    exporter: str = EXPORTER,
    dst_port: int = 443,
) -> list[Flow]:
    """A long transfer as an exporter reports it: one flow per active timeout (``step``)."""
    flows = []
    count = max(1, math.ceil((end - begin) / step))
    sizes = _split(rng, total, count)
    sport = rng.randrange(32768, 61000)
    for i, size in enumerate(sizes):
        t_end = min(begin + (i + 1) * step - rng.uniform(0, 2), end)
        t_start = max(begin + i * step, t_end - step)
        raw = max(size // sampling_rate, 1)
        flows.append(
            Flow(
                t_end,
                t_start,
                src,
                dst,
                raw,
                max(raw // 1200, 1),
                sampling_rate,
                exporter,
                6,
                sport,
                dst_port,
            )
        )
    return flows


def _crossing(flows: Iterable[Flow], threshold: float) -> float:
    """Event time at which the summed (sampled-up) bytes of ``flows`` reach ``threshold``."""
    total = 0
    for flow in sorted(flows, key=lambda f: f.end):
        total += flow.real_bytes
        if total >= threshold:
            return flow.end
    raise AssertionError(f"injected transfer never reaches {threshold} bytes")


def _window_crossing(flows: Iterable[Flow], windows: Sequence[tuple[float, float]]) -> float:
    """When the first of sliding ``windows`` ((length, floor), in whole intervals) is reached.

    The detector sums a window over the intervals that end within its length, so the sums
    here are of interval buckets (by flow end), and a transfer crosses when the bucket holding
    one of its flows brings a window's sum to the floor.
    """
    buckets: dict[float, int] = {}
    for flow in sorted(flows, key=lambda f: f.end):
        start = flow.end - flow.end % INTERVAL
        buckets[start] = buckets.get(start, 0) + flow.real_bytes
        for length, floor in windows:
            oldest = start - length + INTERVAL
            if sum(size for s, size in buckets.items() if s >= oldest) >= floor:
                return flow.end
    raise AssertionError(f"injected transfer never reaches any of {windows}")


def _background(
    rng: random.Random, hosts: _Hosts, start: float, days: int, profiles: Sequence[Profile]
) -> list[Flow]:
    flows: list[Flow] = []
    append = flows.append
    random_ = rng.random
    v4_dests = {c: [a for a in DESTINATIONS[c] if ":" not in a] for c in DESTINATIONS}
    v6_dests = {c: [a for a in DESTINATIONS[c] if ":" in a] for c in DESTINATIONS}
    intervals = int(days * DAY / INTERVAL)
    for i in range(intervals):
        t0 = start + i * INTERVAL
        moment = datetime.fromtimestamp(t0, UTC)
        activity = diurnal(moment.hour + moment.minute / 60.0)
        weekend = moment.weekday() >= 5
        scale = growth(t0, start)
        for profile in profiles:
            if t0 < start + profile.first_day * DAY:
                continue
            mean = profile.peak * (profile.night + (1.0 - profile.night) * activity) * scale
            if weekend:
                mean *= profile.weekend
            total = mean * math.exp(rng.gauss(0.0, profile.noise) - profile.noise**2 / 2)
            parts = 1 + int(4 * random_() * (0.3 + activity))
            sampled = profile.group == "office"
            rate = 10 if sampled else 1
            exporter = SAMPLED_EXPORTER if sampled else EXPORTER
            v4 = v4_dests[profile.country]
            v6 = v6_dests[profile.country]
            for size in _split(rng, total, parts):
                ipv6 = bool(v6) and random_() < profile.ipv6
                pool = v6 if ipv6 else v4
                end = t0 + 0.5 + random_() * (INTERVAL - 1.0)
                raw = max(size // rate, 40)
                append(
                    Flow(
                        end,
                        end - random_() * 60.0,
                        hosts.pick(rng, profile.group, ipv6),
                        pool[int(random_() * len(pool))],
                        raw,
                        max(raw // 1100, 1),
                        rate,
                        exporter,
                        6,
                        32768 + int(random_() * 28000),
                        443,
                    )
                )
    return flows


def _at(start: float, day: int, hour: float) -> float:
    return start + day * DAY + hour * 3600.0


def generate(seed: int = 1, days: int = 9, start: float = START) -> Scenario:
    """A scenario of ``days`` days (≥ 8) from ``start`` (a Monday, 00:00 UTC), seeded."""
    if days < 8:
        raise ValueError("scenarios need at least 8 days (3 learning, a weekend, a Monday)")
    rng = random.Random(seed)
    hosts = _Hosts(rng)
    flows = _background(rng, hosts, start, days, PROFILES)
    expected: list[ExpectedAlert] = []
    traps: list[Trap] = []

    def minute_jitter(lo: float, hi: float) -> float:
        return rng.uniform(lo, hi) / 60.0

    # -- exfiltrations --------------------------------------------------------------------
    # Fast burst: research → CN, several GB in minutes (day 3, business hours).
    src = hosts.v4["research"][rng.randrange(20)]
    dst = rng.choice(DESTINATIONS["CN"])
    begin = _at(start, 3, rng.uniform(10, 16))
    size = rng.uniform(4, 8) * GB
    burst = _transfer(rng, src, dst, begin, begin + rng.uniform(5, 9) * 60, size)
    expected.append(
        ExpectedAlert(
            "burst",
            "EgressUnexpectedDestination",
            "research",
            "CN",
            _crossing(burst, UNEXPECTED_MIN_BYTES),
            src,
            dst,
            UNEXPECTED_MIN_BYTES,
            sum(f.real_bytes for f in burst),
            begin=min(f.end for f in burst),
            end=max(f.end for f in burst),
        )
    )
    flows += burst

    # IPv6 exfiltration: fd00:20::/32 → RU over IPv6 (day 4, small hours).
    src = rng.choice(hosts.v6["research"])
    dst = rng.choice(DESTINATIONS["RU6"])
    begin = _at(start, 4, rng.uniform(2, 5))
    v6 = _transfer(rng, src, dst, begin, begin + rng.uniform(10, 20) * 60, rng.uniform(1, 3) * GB)
    expected.append(
        ExpectedAlert(
            "ipv6",
            "EgressUnexpectedDestination",
            "research",
            "RU",
            _crossing(v6, UNEXPECTED_MIN_BYTES),
            src,
            dst,
            UNEXPECTED_MIN_BYTES,
            sum(f.real_bytes for f in v6),
            begin=min(f.end for f in v6),
            end=max(f.end for f in v6),
        )
    )
    flows += v6

    # Slow drip: office → RU, ~12 MB per interval (far under the floor per interval),
    # past the floor within the hour (day 5, Saturday evening).
    src = hosts.v4["office"][rng.randrange(50, 100)]
    dst = rng.choice(DESTINATIONS["RU"])
    begin = _at(start, 5, rng.uniform(20, 22))
    duration = rng.uniform(50, 55) * 60
    drip = _transfer(rng, src, dst, begin, begin + duration, duration / 60 * 2.4 * MB)
    per_interval: dict[float, int] = {}
    for f in drip:
        slot = f.end - f.end % INTERVAL
        per_interval[slot] = per_interval.get(slot, 0) + f.real_bytes
    assert max(per_interval.values()) < UNEXPECTED_MIN_BYTES / 2
    expected.append(
        ExpectedAlert(
            "drip",
            "EgressUnexpectedDestination",
            "office",
            "RU",
            _crossing(drip, UNEXPECTED_MIN_BYTES),
            src,
            dst,
            UNEXPECTED_MIN_BYTES,
            sum(f.real_bytes for f in drip),
            begin=min(f.end for f in drip),
            end=max(f.end for f in drip),
        )
    )
    flows += drip

    # Sampled exporter: lab (learned countries) → HK through an exporter sampling 1:100;
    # raw bytes total ~1.6 MB, sampled up ~160 MB (day 6, Sunday).
    src = hosts.v4["lab"][rng.randrange(10)]
    dst = rng.choice(DESTINATIONS["HK"])
    begin = _at(start, 6, rng.uniform(9, 15))
    sampled = _transfer(
        rng,
        src,
        dst,
        begin,
        begin + 10 * 60,
        rng.uniform(150, 200) * MB,
        step=15.0,
        sampling_rate=100,
        exporter=LAB_EXPORTER,
    )
    assert sum(f.bytes for f in sampled) < UNEXPECTED_MIN_BYTES / 10
    expected.append(
        ExpectedAlert(
            "sampled",
            "EgressUnexpectedDestination",
            "lab",
            "HK",
            _crossing(sampled, UNEXPECTED_MIN_BYTES),
            src,
            dst,
            UNEXPECTED_MIN_BYTES,
            sum(f.real_bytes for f in sampled),
            begin=min(f.end for f in sampled),
            end=max(f.end for f in sampled),
        )
    )
    flows += sampled

    # Volume spike to an allowed country: research → US at 20 times its baseline (Monday, day 7).
    us = next(p for p in PROFILES if p.group == "research" and p.country == "US")
    t0 = _at(start, 7, 0) + INTERVAL * rng.randrange(11 * 12, 15 * 12)
    src = hosts.v4["research"][rng.randrange(20, 40)]
    dst = rng.choice([a for a in DESTINATIONS["US"] if ":" not in a])
    spike: list[Flow] = []
    for k in range(3):
        base = profile_bytes(us, t0 + k * INTERVAL, start)
        spike += _transfer(
            rng, src, dst, t0 + k * INTERVAL + 1, t0 + (k + 1) * INTERVAL - 1, 20 * base
        )
    baseline = profile_bytes(us, t0, start)
    first = [f for f in spike if f.end < t0 + INTERVAL]
    expected.append(
        ExpectedAlert(
            "spike",
            "EgressVolumeSpike",
            "research",
            "US",
            _crossing(first, max(SPIKE_RATIO * baseline, SPIKE_MIN_BYTES)),
            src,
            dst,
            SPIKE_MIN_BYTES,
            sum(f.real_bytes for f in spike),
            baseline,
            min(f.end for f in spike),
            max(f.end for f in spike),
        )
    )
    flows += spike

    # -- benign traps -----------------------------------------------------------------------
    # Nightly backup: servers → one DE address, 01:00 to 03:00 every night, tens of GB.
    backup_src = hosts.v4["servers"][0]
    backup_dst = DESTINATIONS["DE"][0]
    for day in range(days):
        begin = _at(start, day, 1 + minute_jitter(0, 5))
        end = _at(start, day, 3 - minute_jitter(0, 5))
        volume = 24 * GB * growth(begin, start) * math.exp(rng.gauss(0, 0.05))
        flows += _transfer(rng, backup_src, backup_dst, begin, end, volume, dst_port=22)
        traps.append(Trap("backup", begin, end))

    # Ingress download from an unexpected country: CN → a research host.
    begin = _at(start, 5, 10)
    flows += _transfer(
        rng, DESTINATIONS["CN"][1], hosts.v4["research"][5], begin, begin + 1800, 20 * GB
    )
    traps.append(Trap("ingress", begin, begin + 1800))

    # East-west bulk copies: research → servers, terabytes (IPv4 and IPv6).
    begin = _at(start, 4, 20)
    flows += _transfer(
        rng, hosts.v4["research"][7], hosts.v4["servers"][3], begin, begin + 7200, 2e12
    )
    flows += _transfer(
        rng, hosts.v6["research"][3], hosts.v6["servers"][1], begin, begin + 3600, 5e11
    )
    traps.append(Trap("east-west", begin, begin + 7200))

    # A few MB to an unexpected country.
    for k in range(3):
        begin = _at(start, 6, 9 + 3 * k + rng.random())
        flows += _transfer(
            rng, hosts.v4["office"][k], rng.choice(DESTINATIONS["BR"]), begin, begin + 30, 1 * MB
        )
    traps.append(Trap("few-mb", _at(start, 6, 9), _at(start, 6, 16)))

    flows.sort(key=lambda f: f.end)
    expected.sort(key=lambda e: e.crossing)
    return Scenario(seed, start, days, flows, expected, traps)


def benchmark_flows(
    seed: int = 7,
    *,
    records: int = 120_000,
    hosts: int = 2000,
    destinations: int = 500,
    days: float = 3,
    start: float = START,
) -> list[Flow]:
    """Many small flows from ``hosts`` sources to ``destinations`` real addresses, in order."""
    rng = random.Random(seed)
    pool = _real_destinations(rng, destinations)
    groups = list(_GROUP_NETS)
    sources = []
    for i in range(hosts):
        octet = _GROUP_NETS[groups[i % len(groups)]][0]
        sources.append(f"10.{octet}.{(i // 250) % 250}.{i % 250 + 1}")
    span = days * DAY
    step = span / records
    flows = []
    for i in range(records):
        end = start + i * step + rng.random() * step
        size = int(rng.lognormvariate(11, 2))
        flows.append(
            Flow(
                end,
                end - rng.uniform(0, 60),
                sources[min(int(rng.paretovariate(0.8)), hosts) - 1],
                pool[min(int(rng.paretovariate(0.6)), len(pool)) - 1],
                size,
                max(size // 1200, 1),
                1,
                EXPORTER,
                6,
                rng.randrange(32768, 61000),
                443,
            )
        )
    return flows


def _real_destinations(rng: random.Random, count: int) -> list[str]:
    """``count`` public unicast IPv4 addresses drawn from allocated space with a known country."""
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < count:
        batch = []
        for _ in range(count * 2):
            first = rng.choice(_PUBLIC_FIRST_OCTETS)
            batch.append(
                f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            )
        for address, country in zip(batch, iptocc.country_code(batch), strict=True):
            if country and address not in seen and len(out) < count:
                seen.add(address)
                out.append(address)
    return out


# First octets of well-populated unicast space (no private, loopback, CGNAT, multicast).
_PUBLIC_FIRST_OCTETS = (
    2, 5, 8, 13, 17, 23, 31, 37, 41, 46, 47, 52, 62, 77, 78, 81, 85, 87, 88, 89, 91, 95, 101,
    103, 104, 114, 119, 133, 140, 145, 151, 157, 163, 177, 178, 185, 193, 194, 195, 200, 202,
    210, 212, 218, 220, 223,
)  # fmt: skip


# -- a realistic month -----------------------------------------------------------------------

MONTH_DAYS = 28
MONTH_LEARNING = 7 * DAY
#: per-interval noise of real links: log-normal with this sigma
MONTH_NOISE = 0.4
#: chance per (profile, interval) of a 5-8x burst (about twice a day per destination)
MONTH_BURST_CHANCE = 1 / 150
#: from this day the diurnal pattern (and the nightly jobs) run an hour earlier in UTC
MONTH_DST_DAY = 21
#: the office exporter samples 1:10, then 1:20 from this day
MONTH_RATE_DAY = 14
#: the servers' exporter: a second collector whose clock runs this far behind
LAGGING_EXPORTER = "10.255.0.4"
LAG = 180.0
#: office -> US doubles for good from this day
MONTH_STEP_DAY = 18
#: a new research host starts on this day
MONTH_NEW_HOST_DAY = 15
#: the defaults the month is judged with (the config sets only interval and learning)
WINDOW_24H_FLOOR = 1_000_000_000
FANOUT_FLOOR = 5 * UNEXPECTED_MIN_BYTES
NEW_DESTINATION_FLOOR = 1_000_000_000
#: a small group's unexpected-destination and new-network floors shrink to this share of the
#: configured ones at least (their ``*_floors_lowest_factor``)
LEAST_FLOOR_FACTOR = 0.02
_HOUR_FLOORS = {
    "EgressUnexpectedDestination": UNEXPECTED_MIN_BYTES,
    "EgressNewDestinationVolume": NEW_DESTINATION_FLOOR,
}


def least_page_bytes(expected: ExpectedAlert) -> float:
    """The fewest bytes a page on ``expected`` can carry: the rule's floors shrink for a small
    group, and a transfer sized for the day window may page on the hour window first."""
    hour = _HOUR_FLOORS.get(expected.alertname)
    if hour is None:
        return expected.floor  # spike floors do not shrink
    return LEAST_FLOOR_FACTOR * min(expected.floor, hour)


#: networks in allowed countries that the background never uses
FRESH_DE = ("88.99.1.1", "94.130.1.1", "159.69.1.1")
MIRROR_JP = ("133.242.1.1", "153.127.1.1")

MONTH_CONFIG_TOML = CONFIG_TOML.replace(
    '[detection]\ninterval = "5m"\nlearning = "3d"\n'
    'unexpected_min_bytes = "100MB"\nunexpected_window = "1h"\n',
    '[detection]\ninterval = "5m"\nlearning = "7d"\n',
)
assert MONTH_CONFIG_TOML != CONFIG_TOML


def _month_shift(event_time: float, start: float) -> float:
    """Hours to add to UTC to get the local hour the diurnal pattern follows."""
    return 1.0 if event_time >= start + MONTH_DST_DAY * DAY else 0.0


def _month_background(
    rng: random.Random, hosts: _Hosts, start: float, days: int, new_host: str
) -> list[Flow]:
    """Heavy-tailed background: log-normal noise, recurring bursts, DST, a step, a new host."""
    flows: list[Flow] = []
    append = flows.append
    random_ = rng.random
    gauss = rng.gauss
    v4_dests = {c: [a for a in DESTINATIONS[c] if ":" not in a] for c in DESTINATIONS}
    v6_dests = {c: [a for a in DESTINATIONS[c] if ":" in a] for c in DESTINATIONS}
    intervals = int(days * DAY / INTERVAL)
    sigma = MONTH_NOISE
    for i in range(intervals):
        t0 = start + i * INTERVAL
        moment = datetime.fromtimestamp(t0, UTC)
        hour = (moment.hour + moment.minute / 60.0 + _month_shift(t0, start)) % 24
        activity = diurnal(hour)
        weekend = moment.weekday() >= 5
        day = int((t0 - start) // DAY)
        for profile in PROFILES:
            if t0 < start + profile.first_day * DAY:
                continue
            mean = profile.peak * (profile.night + (1.0 - profile.night) * activity)
            if weekend:
                mean *= profile.weekend
            if profile.group == "office" and profile.country == "US" and day >= MONTH_STEP_DAY:
                mean *= 2.0
            total = mean * math.exp(gauss(0.0, sigma) - sigma**2 / 2)
            if random_() < MONTH_BURST_CHANCE:
                total *= rng.uniform(5.0, 8.0)
            parts = 1 + int(3 * random_() * (0.3 + activity))
            sampled = profile.group == "office"
            rate = (20 if day >= MONTH_RATE_DAY else 10) if sampled else 1
            if sampled:
                exporter = SAMPLED_EXPORTER
            elif profile.group == "servers":
                exporter = LAGGING_EXPORTER
            else:
                exporter = EXPORTER
            v4 = v4_dests[profile.country]
            v6 = v6_dests[profile.country]
            for size in _split(rng, total, parts):
                ipv6 = bool(v6) and random_() < profile.ipv6
                pool = v6 if ipv6 else v4
                end = t0 + 0.5 + random_() * (INTERVAL - 1.0)
                raw = max(size // rate, 40)
                src = hosts.pick(rng, profile.group, ipv6)
                new = day >= MONTH_NEW_HOST_DAY and profile.group == "research" and not ipv6
                if new and random_() < 0.2:
                    src = new_host
                append(
                    Flow(
                        end,
                        end - random_() * 60.0,
                        src,
                        pool[int(random_() * len(pool))],
                        raw,
                        max(raw // 1100, 1),
                        rate,
                        exporter,
                        6,
                        32768 + int(random_() * 28000),
                        443,
                    )
                )
    return flows


def _fanout_destinations(rng: random.Random, count: int, avoid: set[str]) -> list[str]:
    """One public address in each of ``count`` countries outside ``avoid``."""
    chosen: dict[str, str] = {}
    while len(chosen) < count:
        batch = [
            f"{rng.choice(_PUBLIC_FIRST_OCTETS)}.{rng.randrange(256)}.{rng.randrange(256)}."
            f"{rng.randrange(1, 255)}"
            for _ in range(400)
        ]
        for address, country in zip(batch, iptocc.country_code(batch), strict=True):
            if country and country not in avoid and country not in chosen:
                chosen[country] = address
                if len(chosen) == count:
                    break
    return [chosen[c] for c in sorted(chosen)]


def _expect(
    name: str,
    alertname: str,
    group: str,
    country: str,
    flows: list[Flow],
    floor: float,
    source: str,
    destination: str,
    baseline: float | None = None,
    crossing_floor: float | None = None,
    windows: Sequence[tuple[float, float]] = (),
) -> ExpectedAlert:
    if windows:
        crossing = _window_crossing(flows, windows)
    else:
        crossing = _crossing(flows, crossing_floor if crossing_floor is not None else floor)
    return ExpectedAlert(
        name,
        alertname,
        group,
        country,
        crossing,
        source,
        destination,
        int(floor),
        sum(f.real_bytes for f in flows),
        baseline,
        min(f.end for f in flows),
        max(f.end for f in flows),
    )


def _interval_max(flows: Iterable[Flow], group_hosts: set[str], dests: set[str]) -> float:
    sums: dict[float, int] = {}
    for f in flows:
        if f.src in group_hosts and f.dst in dests:
            slot = f.end - f.end % INTERVAL
            sums[slot] = sums.get(slot, 0) + f.real_bytes
    return float(max(sums.values()))


def generate_month(seed: int = 1, start: float = START) -> Scenario:
    """28 days of realistic traffic (see tests/test_scenarios.py) with patient exfiltrations."""
    days = MONTH_DAYS
    rng = random.Random(seed * 7919 + 28)
    hosts = _Hosts(rng)
    new_host = "10.20.251.9"
    flows = _month_background(rng, hosts, start, days, new_host)
    expected: list[ExpectedAlert] = []
    traps: list[Trap] = []
    unexpected = "EgressUnexpectedDestination"

    # -- exfiltrations (after the seven learning days) ----------------------------------
    # Fast burst: research -> CN, several GB in minutes.
    src = hosts.v4["research"][rng.randrange(20)]
    dst = rng.choice(DESTINATIONS["CN"])
    begin = _at(start, 8, rng.uniform(10, 16))
    burst = _transfer(rng, src, dst, begin, begin + rng.uniform(5, 9) * 60, rng.uniform(4, 8) * GB)
    expected.append(
        _expect("burst", unexpected, "research", "CN", burst, UNEXPECTED_MIN_BYTES, src, dst)
    )
    flows += burst

    # IPv6: research -> RU over IPv6, small hours.
    src = rng.choice(hosts.v6["research"])
    dst = rng.choice(DESTINATIONS["RU6"])
    begin = _at(start, 9, rng.uniform(2, 5))
    v6 = _transfer(rng, src, dst, begin, begin + rng.uniform(10, 20) * 60, rng.uniform(1, 3) * GB)
    expected.append(
        _expect("ipv6", unexpected, "research", "RU", v6, UNEXPECTED_MIN_BYTES, src, dst)
    )
    flows += v6

    # Sampled: lab -> HK through an exporter sampling 1:100.
    src = hosts.v4["lab"][rng.randrange(10)]
    dst = rng.choice(DESTINATIONS["HK"])
    begin = _at(start, 10, rng.uniform(9, 15))
    sampled = _transfer(
        rng, src, dst, begin, begin + 600, rng.uniform(150, 200) * MB,
        step=15.0, sampling_rate=100, exporter=LAB_EXPORTER,
    )  # fmt: skip
    expected.append(
        _expect("sampled", unexpected, "lab", "HK", sampled, UNEXPECTED_MIN_BYTES, src, dst)
    )
    flows += sampled

    # Slow drip: office -> RU at 60 MB/h for two days: 1 GB in a day. Its 5-minute pieces vary,
    # so an hour of it may still reach 100 MB: it pages on whichever window it fills first.
    src = hosts.v4["office"][rng.randrange(50, 100)]
    dst = rng.choice(DESTINATIONS["RU"])
    begin = _at(start, 11, rng.uniform(0, 24))
    drip = _transfer(rng, src, dst, begin, begin + 2 * DAY, 2 * 24 * 60 * MB, step=300.0)
    expected.append(
        _expect(
            "slow-drip",
            unexpected,
            "office",
            "RU",
            drip,
            WINDOW_24H_FLOOR,
            src,
            dst,
            windows=((3600.0, UNEXPECTED_MIN_BYTES), (DAY, WINDOW_24H_FLOOR)),
        )
    )
    flows += drip

    # Learning poison: one 20.1 MB flow lab -> BR while learning, 10 GB after.
    src = hosts.v4["lab"][rng.randrange(10, 20)]
    dst = rng.choice(DESTINATIONS["BR"])
    poison_at = _at(start, 2, rng.uniform(10, 16))
    flows.append(Flow(poison_at, poison_at - 30, src, dst, 20_100_000, 16_000))
    begin = _at(start, 12, rng.uniform(9, 17))
    poison = _transfer(rng, src, dst, begin, begin + 1800, 10 * GB)
    expected.append(
        _expect("learning-poison", unexpected, "lab", "BR", poison, UNEXPECTED_MIN_BYTES, src, dst)
    )
    flows += poison

    # Far beyond history: research -> US, four times the largest interval it ever had.
    us_hosts = set(hosts.v4["research"]) | set(hosts.v6["research"]) | {new_host}
    history = _interval_max(flows, us_hosts, set(DESTINATIONS["US"]))
    t0 = _at(start, 16, 0) + INTERVAL * rng.randrange(11 * 12, 15 * 12)
    src = hosts.v4["research"][rng.randrange(20, 40)]
    dst = rng.choice([a for a in DESTINATIONS["US"] if ":" not in a])
    spike = _transfer(rng, src, dst, t0 + 1, t0 + INTERVAL - 1, 4 * history, step=20.0)
    us = next(p for p in PROFILES if p.group == "research" and p.country == "US")
    baseline = profile_bytes(us, t0, start) / growth(t0, start)
    expected.append(
        _expect(
            "far-spike", "EgressVolumeSpike", "research", "US", spike, SPIKE_MIN_BYTES, src,
            dst, baseline, crossing_floor=2 * history,
        )
    )  # fmt: skip
    flows += spike

    # Exfiltration hidden in the nightly backup hour: servers -> a fresh DE network, 8 GB.
    src = hosts.v4["servers"][rng.randrange(5, 30)]
    dst = rng.choice(FRESH_DE)
    begin = _at(start, 17, 1 + rng.uniform(0.1, 0.5))
    hidden = _transfer(rng, src, dst, begin, begin + 3600, 8 * GB)
    expected.append(
        _expect(
            "backup-hour", "EgressNewDestinationVolume", "servers", "DE", hidden,
            NEW_DESTINATION_FLOOR, src, dst,
        )
    )  # fmt: skip
    flows += hidden

    # Fan-out: office -> 60 countries at 95 MB per 65 minutes each, for three hours.
    avoid = {"US", "GB", "IE", "FR", "NL", "DE", "CN", "RU", "HK", "BR", "JP"}
    targets = _fanout_destinations(rng, 60, avoid)
    src = hosts.v4["office"][rng.randrange(100, 200)]
    begin = _at(start, 23, rng.uniform(9, 15))
    fan: list[Flow] = []
    for target in targets:
        offset = rng.uniform(0, 300)
        # Evenly paced: 95 MB in every 65 minutes, so no single country reaches its floor.
        for k in range(36):
            at = begin + offset + k * 300 + rng.uniform(-20, 20)
            size = int(95 * MB * 300 / 3900)
            fan.append(Flow(at, at - 290, src, target, size, size // 1200))
    fan.sort(key=lambda f: f.end)
    expected.append(
        _expect("fan-out", unexpected, "office", "multiple", fan, FANOUT_FLOOR, src, "")
    )
    flows += fan

    # -- benign traps --------------------------------------------------------------------
    # Nightly backups of varying size: servers -> one DE address, 01:00-03:00 local.
    backup_src = hosts.v4["servers"][0]
    backup_dst = DESTINATIONS["DE"][0]
    for day in range(days):
        local = -_month_shift(_at(start, day, 12), start)
        begin = _at(start, day, 1 + local + rng.uniform(0, 5) / 60)
        end = _at(start, day, 3 + local - rng.uniform(0, 5) / 60)
        volume = rng.uniform(1, 30) * GB
        flows += _transfer(rng, backup_src, backup_dst, begin, end, volume, dst_port=22,
                           exporter=LAGGING_EXPORTER)  # fmt: skip
        traps.append(Trap("nightly-backup", begin, end))
    # Weekly full backup, Sundays only: servers -> one US address, 04:00-08:00, ~120 GB.
    full_dst = DESTINATIONS["US"][2]
    for day in range(6, days, 7):
        local = -_month_shift(_at(start, day, 12), start)
        begin = _at(start, day, 4 + local)
        volume = 120 * GB * math.exp(rng.gauss(0, 0.05))
        flows += _transfer(rng, backup_src, full_dst, begin, begin + 4 * 3600, volume,
                           dst_port=22, exporter=LAGGING_EXPORTER)  # fmt: skip
        traps.append(Trap("weekly-backup", begin, begin + 4 * 3600))
    # A download: a research build host pulls 20 GB in 2 h from a JP mirror (research never
    # sends to JP); the pure ACKs back (~60 B/packet, ~2% of the ingress) are egress to JP.
    for day in (9, 19, 26):
        host = hosts.v4["research"][rng.randrange(40, 60)]
        mirror = rng.choice(MIRROR_JP)
        begin = _at(start, day, rng.uniform(9, 16))
        flows += _transfer(rng, mirror, host, begin, begin + 7200, 20 * GB, dst_port=40000)
        for ack in _transfer(rng, host, mirror, begin, begin + 7200, 0.02 * 20 * GB):
            flows.append(ack._replace(packets=max(ack.bytes // 60, 1), src_port=40000,
                                      dst_port=443))  # fmt: skip
        traps.append(Trap("download", begin, begin + 7200))
    # A few MB to an unexpected country now and then.
    for day in range(8, days, 5):
        begin = _at(start, day, 9 + 6 * rng.random())
        flows += _transfer(rng, hosts.v4["office"][day], rng.choice(DESTINATIONS["BR"]),
                           begin, begin + 30, 2 * MB)  # fmt: skip
        traps.append(Trap("few-mb", begin, begin + 30))

    # The lagging collector stamps its flows LAG seconds early; they arrive in true order.
    arrival = {LAGGING_EXPORTER: LAG}
    flows = [
        f._replace(end=f.end - LAG, start=f.start - LAG) if f.exporter == LAGGING_EXPORTER else f
        for f in flows
    ]
    flows.sort(key=lambda f: f.end + arrival.get(f.exporter, 0.0))
    expected.sort(key=lambda e: e.crossing)
    return Scenario(seed, start, days, flows, expected, traps, MONTH_CONFIG_TOML)
