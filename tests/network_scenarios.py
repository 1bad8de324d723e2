"""Generated months of differently shaped networks, for judging the default detectors on
traffic the month scenario (tests/scenarios.py) was not written for.

- ``saas``: a cloud-heavy company. Nearly all egress goes to one cloud whose addresses rotate
  over hundreds of networks (all in the US by registration); CI uploads artefacts of a few GB
  at any hour; a weekly database snapshot; a SaaS vendor adopted mid-month that ramps up.
- ``campus``: a university. Groups learn their countries; strong diurnal and weekly pattern;
  term starts (traffic doubles over a week); the student network's peer-to-peer traffic spreads
  over sixty countries; a conference week; nightly physics syncs to CERN; daylight saving
  moves everything an hour in UTC.
- ``small-office``: fifteen people behind one exporter sampling 1:1000. Few flows per interval,
  most night intervals empty; a NAS backs up nightly to one cloud network; the office closes for
  a ten-day holiday, then comes back.
- ``enterprise``: eighteen groups and ~4,400 hosts, so ~90 (group x country) keys where the
  others have a handful of large ones: offices in London, Dublin, Frankfurt, Paris, New York,
  Austin, Sao Paulo, Tokyo, Singapore and Bangalore (each on its own clock and with its own
  countries, its own country among them; two of them learned; branch exporters sampling 1:10
  or 1:100), engineering, finance, a data-science team with tens of GB of checkpoints to the
  cloud on weekdays, a build farm uploading artefacts at any hour, guest Wi-Fi spread over 25
  countries, a DMZ whose nightly backup to rotating cloud storage moves to another region of
  the same provider on day 16, building systems that only send a few MB to their vendor, and
  remote workers on the VPN. Benign events: CDN and cloud address rotation, a SaaS vendor
  adopted company-wide on day 12, daylight saving on 8 March in the US and 29 March in Europe,
  a holiday in Bangalore and one in Tokyo, finance's month-end close (2.5 times its traffic).
- ``tiny-office``: three weeks of eleven desks and laptops (countries learned) and a NAS and
  phone system (``servers``, Austria and Germany expected) in Vienna, 2-4 GB of egress on a
  working day. Benign: CDN churn (video, software updates and web pages from edges that move
  between Austria and its neighbours; edges in Slovenia, Hungary, Poland, Italy and Slovakia
  begin serving after learning, tens of MB an hour back to them: ACKs, and web requests whose
  flows can average more than 150 bytes a packet), video meetings, the NAS's nightly backup to
  its hosting company, daylight saving on day 6, the Easter holidays (half away, then closed
  four days), and on the first day back a feature update pulled by eight machines (partly from
  the new Polish edges) and a laptop back from a week abroad syncing 300-700 MB to a network of
  the office's cloud storage it had not used. Incidents sized for the office: 50-80 MB in
  fifteen minutes to a VPS in Russia (``small-burst``), 200-300 MB a day for three days to a VPS
  in Bulgaria (``vps-drip``), 500-800 MB in half an hour from the NAS to a fresh network of a
  hosting company in Germany (``fresh-vps``) and 300-500 MB to China (``cn-upload``). The first
  three stay under the configured floors: they page on the floors of a group this small (a
  sixteenth to an eleventh of the configured ones), and their crossings are drawn at a fifth
  of the configured floors (``TINY_WINDOWS``, ``TINY_NEW_DESTINATION_FLOOR``). At a quarter
  of the traffic (``Scenario.scaled``) every incident still pages.
- ``institute``: four weeks of a research institute in Germany. Its HPC cluster (``hpc``:
  countries and two regions of its cloud configured, mostly IPv6) is exported twice: by the
  edge router every 60 s and by the core router with a 30 min active timeout (a long transfer
  arrives in half-hour lumps whose start lies 30 min before their end) and its clock four
  minutes behind, so the collector gets every record of the cluster twice, the core's late.
  Workstations (``labs``, countries learned) go through the edge only; the administration
  (``admin``) through a firewall that exports with a 30 min active timeout. Region labels
  come from an AWS ``ip-ranges.json`` excerpt (tests/fixtures/institute-aws-ranges.json) named
  in the configuration. Benign: grid transfers at any hour (a few GB, one to four connections)
  to storage endpoints of 70 sites in the collaboration's countries, a few used daily, most now
  and then (networks unused for over a week every day), the nightly archive copy to a national
  computing centre, a new collaborating site each week after learning (a test transfer of
  1-3 GB, then 40-120 GB over an afternoon and evening), 40-70 MB to a collaborator in Japan
  (not a listed country) three times, a maintenance weekend (the cluster quiet) and Monday's
  catch-up (a triple archive copy and the grid's queued transfers), and the administration's
  nightly database dump over one connection. Incidents: 20-40 GB in 90 minutes from the
  cluster to the cloud's Singapore region, whose addresses are registered in the US like all
  the provider's (``hpc-region``), 1.5-3 GB in an hour from a workstation to a bucket there
  (``labs-bucket``), 1.2-2 GB to China over one connection in four hours, seen every half hour
  (``admin-long``), 8-15 GB in an hour to a fresh VPS in Germany during Monday's catch-up
  (``catch-up-vps``), and 8-12 MB an hour for a week from a workstation to a VPS in Russia
  (``week-drip``: under the hour's and the day's floors, crossed at 1 GB within a week, the
  default week window, ``INSTITUTE_WEEK``). Ground truth counts every byte once (the edge's
  records, the firewall's for the administration): the core's copies are the double count a
  user would not want.

Each injects exfiltrations with their ground truth (``ExpectedAlert``: the alert, the event
time its threshold is crossed), scored like the month by benchmarks/detection_bench.py.
Everything is derived from the seed; a month is a few hundred thousand flows (the
enterprise about a million, the tiny office's three weeks about 120,000, the institute's
month about 490,000 records, 145,000 of them the core router's copies).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import iptocc
import orjson
from scenarios import (
    _PUBLIC_FIRST_OCTETS,
    DAY,
    GB,
    INTERVAL,
    MB,
    SPIKE_MIN_BYTES,
    UNEXPECTED_MIN_BYTES,
    ExpectedAlert,
    Flow,
    Scenario,
    Trap,
    _at,
    _expect,
    _fanout_destinations,
    _interval_max,
    _split,
    _transfer,
    diurnal,
)

UNEXPECTED = "EgressUnexpectedDestination"
NEW_DESTINATION = "EgressNewDestinationVolume"
SPIKE = "EgressVolumeSpike"
WINDOW_24H_FLOOR = 1_000_000_000
NEW_DESTINATION_FLOOR = 1_000_000_000
NEW_DESTINATION_DAY_FLOOR = 5_000_000_000
#: windows of the unexpected rule with the defaults
WINDOWS = ((3600.0, UNEXPECTED_MIN_BYTES), (DAY, WINDOW_24H_FLOOR))
DAYS = 28


@dataclass(frozen=True, slots=True)
class Stream:
    """A group's ordinary egress to a pool of destinations."""

    group: str
    pool: str
    #: mean bytes per interval at the weekday peak
    peak: float
    #: fraction of the peak at night
    night: float
    #: weekend multiplier
    weekend: float
    sigma: float = 0.4
    #: chance per interval of a 3-8x burst
    burst: float = 1 / 150
    ipv6: float = 0.0
    #: day the stream begins, and the days it takes to ramp from 2% to its full level
    first_day: float = 0.0
    ramp_days: float = 0.0
    #: hours the group's day runs later than the office day (a student network peaks at night)
    late: float = 0.0
    #: flows per interval at the peak
    flows: float = 3.0
    #: many independent peers (peer-to-peer): noise and bursts per flow, not of the total
    peers: bool = False


@dataclass(slots=True)
class Network:
    """Hosts, destination pools and the calendar of one generated network."""

    rng: random.Random
    start: float
    days: int
    #: group -> IPv4 hosts, IPv6 hosts
    hosts: dict[str, tuple[list[str], list[str]]]
    #: pool -> (IPv4 addresses, IPv6 addresses, cumulative weights or None for uniform)
    pools: dict[str, tuple[list[str], list[str]]]
    #: hours to add to UTC for the local clock the diurnal pattern follows, at an event time
    local_offset: Callable[[float], float]
    #: a group's traffic multiplier on a day (term start, holiday)
    season: Callable[[str, int], float]
    #: group -> (exporter, sampling rate)
    exporters: dict[str, tuple[str, int]]
    group_of: dict[str, str] = field(default_factory=dict)
    #: group -> its own hours to add to UTC (offices in other time zones); other groups
    #: follow ``local_offset``
    zones: dict[str, Callable[[float], float]] = field(default_factory=dict)

    def pick_host(self, group: str, v6: bool) -> str:
        v4, v6_hosts = self.hosts[group]
        pool = v6_hosts if v6 and v6_hosts else v4
        return pool[min(int(self.rng.random() ** -0.8) - 1, len(pool) - 1)]

    def local_hour(self, event_time: float) -> float:
        moment = datetime.fromtimestamp(event_time, UTC)
        return (moment.hour + moment.minute / 60.0 + self.local_offset(event_time)) % 24

    def is_weekend(self, event_time: float) -> bool:
        shifted = event_time + self.local_offset(event_time) * 3600.0
        return datetime.fromtimestamp(shifted, UTC).weekday() >= 5

    def local(self, day: int, hour: float, group: str = "") -> float:
        """Event time of a local ``hour`` on ``day`` (days from the start), in ``group``'s zone."""
        guess = _at(self.start, day, hour)
        return guess - self.zones.get(group, self.local_offset)(guess) * 3600.0

    def clock(self, group: str, event_time: float) -> tuple[float, bool, int]:
        """``group``'s local hour, whether it is a weekend there, its local day number."""
        shifted = event_time + self.zones[group](event_time) * 3600.0
        moment = datetime.fromtimestamp(shifted, UTC)
        hour = moment.hour + moment.minute / 60.0
        return hour, moment.weekday() >= 5, int((shifted - self.start) // DAY)

    def flow(
        self, end: float, src: str, dst: str, size: float, *, dst_port: int = 443
    ) -> Flow | None:
        """One flow of ``size`` real bytes as the group's exporter reports it (None: unsampled)."""
        exporter, rate = self.exporters[_group_of(self, src)]
        rng = self.rng
        raw = int(size // rate)
        packets = max(raw // 1200, 1)
        if raw < 1200 and rate > 1:
            # Packet sampling: a flow this small is caught (as one full packet) or missed.
            if rng.random() >= size / (1200 * rate):
                return None
            raw, packets = 1200, 1
        raw = max(raw, 40)
        return Flow(
            end, end - rng.random() * 60.0, src, dst, raw, packets, rate, exporter, 6,
            32768 + rng.randrange(28000), dst_port,
        )  # fmt: skip

    def transfer(
        self, src: str, dst: str, begin: float, end: float, total: float, *, step: float = 60.0
    ) -> list[Flow]:
        exporter, rate = self.exporters[_group_of(self, src)]
        return _transfer(
            self.rng, src, dst, begin, end, total, step=step, sampling_rate=rate,
            exporter=exporter,
        )  # fmt: skip

    def spread(
        self, src: str, dsts: Sequence[str], begin: float, end: float, total: float
    ) -> list[Flow]:
        """``total`` bytes from ``src`` split evenly over ``dsts``, one a second after another."""
        flows: list[Flow] = []
        for part, dst in enumerate(dsts):
            flows += self.transfer(src, dst, begin + part, end, total / len(dsts))
        return flows


def _group_of(network: Network, src: str) -> str:
    if not network.group_of:
        for group, (v4, v6) in network.hosts.items():
            network.group_of.update(dict.fromkeys(v4 + v6, group))
    return network.group_of[src]


def _hosts(
    rng: random.Random, prefix4: str, count: int, prefix6: str = ""
) -> tuple[list[str], list[str]]:
    picks = rng.sample(range(1, 250 * 250), count)
    v4 = [f"{prefix4}.{p // 250}.{p % 250 + 1}" for p in picks]
    v6 = (
        [f"{prefix6}::{rng.randrange(1, 0xFFFF):x}" for _ in range(min(count, 40))]
        if prefix6
        else []
    )
    return v4, v6


def _addresses(rng: random.Random, blocks: Sequence[str], count: int, country: str) -> list[str]:
    """``count`` addresses in ``country`` spread over random /24s of ``blocks`` (a.b prefixes)."""
    out: list[str] = []
    while len(out) < count:
        batch = [
            f"{rng.choice(blocks)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
            for _ in range(count * 2)
        ]
        for address, found in zip(batch, iptocc.country_code(batch), strict=True):
            if found == country and address not in out and len(out) < count:
                out.append(address)
    return out


def _v6(rng: random.Random, prefix: str, count: int) -> list[str]:
    """``count`` addresses in different /48s under the /32 ``prefix`` (``2600:1f18``)."""
    return [
        f"{prefix}:{rng.randrange(1, 0xFFFF):x}::{rng.randrange(1, 0xFFFF):x}" for _ in range(count)
    ]


def _check(pools: dict[str, tuple[list[str], list[str]]], countries: dict[str, str]) -> None:
    for name, country in countries.items():
        v4, v6 = pools[name]
        found = iptocc.country_code(v4 + v6)
        wrong = [a for a, c in zip(v4 + v6, found, strict=True) if c != country]
        if wrong:
            raise AssertionError(f"pool {name} not all in {country}: {wrong[:5]}")


def _noisy(rng: random.Random, stream: Stream, mean: float) -> float:
    """``mean`` with log-normal noise and, now and then, a 3-8x burst."""
    total = mean * math.exp(rng.gauss(0.0, stream.sigma) - stream.sigma**2 / 2)
    if rng.random() < stream.burst:
        total *= rng.uniform(3.0, 8.0)
    return total


def _background(network: Network, streams: Sequence[Stream]) -> list[Flow]:
    rng = network.rng
    random_ = rng.random
    flows: list[Flow] = []
    for i in range(int(network.days * DAY / INTERVAL)):
        t0 = network.start + i * INTERVAL
        hour = network.local_hour(t0)
        weekend = network.is_weekend(t0)
        day = int((t0 - network.start) // DAY)
        clocks = {group: network.clock(group, t0) for group in network.zones}
        for stream in streams:
            age = (t0 - network.start) / DAY - stream.first_day
            if age < 0:
                continue
            if clocks:
                hour, weekend, day = clocks.get(stream.group) or (
                    network.local_hour(t0), network.is_weekend(t0),
                    int((t0 - network.start) // DAY),
                )  # fmt: skip
            ramp = 1.0
            if stream.ramp_days and age < stream.ramp_days:
                ramp = 0.02 + 0.98 * age / stream.ramp_days
            activity = diurnal((hour - stream.late) % 24)
            mean = stream.peak * (stream.night + (1.0 - stream.night) * activity) * ramp
            mean *= network.season(stream.group, day) * (stream.weekend if weekend else 1.0)
            parts = 1 + int(2 * stream.flows * random_() * (0.2 + activity))
            if stream.peers:
                # A swarm: always many peers, each one's share varying on its own.
                parts = max(parts, int(stream.flows))
                sizes = [_noisy(rng, stream, mean / parts) for _ in range(parts)]
            else:
                sizes = [float(x) for x in _split(rng, _noisy(rng, stream, mean), parts)]
            v4, v6 = network.pools[stream.pool]
            for size in sizes:
                ipv6 = bool(v6) and random_() < stream.ipv6
                pool = v6 if ipv6 else v4
                src = network.pick_host(stream.group, ipv6)
                end = t0 + 0.5 + random_() * (INTERVAL - 1.0)
                flow = network.flow(end, src, pool[int(random_() ** 1.5 * len(pool))], size)
                if flow is not None:
                    flows.append(flow)
    return flows


def _finish(
    seed: int,
    network: Network,
    flows: list[Flow],
    expected: list[ExpectedAlert],
    traps: list[Trap],
    config: str,
) -> Scenario:
    flows.sort(key=lambda f: f.end)
    expected.sort(key=lambda e: e.crossing)
    return Scenario(seed, network.start, network.days, flows, expected, traps, config)


# -- a SaaS company on one cloud ----------------------------------------------------------------

SAAS_CONFIG = """\
[networks]
local = ["10.0.0.0/8", "fd00::/8"]

[[groups]]
name = "prod"
sources = ["10.1.0.0/16", "fd00:1::/32"]
expected_countries = ["US", "IE"]

[[groups]]
name = "ci"
sources = ["10.2.0.0/16"]
expected_countries = ["US"]

# laptops: countries learned
[[groups]]
name = "corp"
sources = ["10.3.0.0/16", "fd00:3::/32"]

[detection]
interval = "5m"
learning = "7d"
"""

#: /16s of the cloud's US address space (its storage and compute endpoints)
_CLOUD_BLOCKS = ("52.216", "52.217", "54.231", "3.5", "18.204", "52.92", "35.171", "34.74")
_SAAS_US = ("20.190", "52.96", "40.99", "13.107", "52.112", "140.82", "151.101", "104.16")


def generate_saas(seed: int = 1) -> Scenario:
    """A cloud-heavy company's month (see the module docstring) with five exfiltrations."""
    rng = random.Random(seed * 104729 + 1)
    start = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
    pools = {
        "cloud": (_addresses(rng, _CLOUD_BLOCKS, 300, "US"), _v6(rng, "2600:1f18", 60)),
        "cloud-ie": (
            ["87.198.1.1", "193.1.193.64", "89.101.160.5", "46.22.128.1"],
            _v6(rng, "2a05:d018", 20),
        ),
        "saas": (_addresses(rng, _SAAS_US, 60, "US"), ["2603:1026::1", "2603:1026:c02::7"]),
        "eu": (["212.58.244.22", "81.2.69.142", "145.100.190.243", "194.109.6.66"], []),
        "vendor": (["199.232.41.10", "199.232.41.11", "199.232.41.12"], []),
    }
    _check(pools, {"cloud": "US", "cloud-ie": "IE", "saas": "US", "vendor": "US"})
    hosts = {
        "prod": _hosts(rng, "10.1", 40, "fd00:1"),
        "ci": _hosts(rng, "10.2", 30),
        "corp": _hosts(rng, "10.3", 300, "fd00:3"),
    }
    network = Network(
        rng, start, DAYS, hosts, pools, lambda _t: 0.0, lambda _g, _d: 1.0,
        {"prod": ("10.255.1.1", 1), "ci": ("10.255.1.1", 1), "corp": ("10.255.1.2", 1)},
    )  # fmt: skip
    streams = (
        Stream("prod", "cloud", 300 * MB, 0.5, 0.8, ipv6=0.3, flows=6),
        Stream("prod", "cloud-ie", 100 * MB, 0.5, 0.8, ipv6=0.5),
        Stream("ci", "cloud", 80 * MB, 0.2, 0.3, flows=4),
        Stream("corp", "saas", 200 * MB, 0.05, 0.1, ipv6=0.2, flows=6),
        Stream("corp", "eu", 40 * MB, 0.05, 0.1),
        # A SaaS vendor adopted on day 13: a trial first, in full use a week later.
        Stream("corp", "vendor", 150 * MB, 0.1, 0.2, first_day=13.4, ramp_days=7),
    )
    flows = _background(network, streams)
    expected: list[ExpectedAlert] = []
    traps: list[Trap] = []
    cloud = pools["cloud"][0]

    # -- benign: artefact uploads at any hour, nightly backups, a weekly snapshot ------------
    t = start
    while t < start + DAYS * DAY:
        t += rng.expovariate(3.0 / DAY)
        size = 6 * GB * math.exp(rng.gauss(0, 0.6))
        duration = rng.uniform(10, 40) * 60
        src = network.pick_host("ci", False)
        flows += network.spread(src, rng.sample(cloud, 4), t, t + duration, size)
        traps.append(Trap("artefact-upload", t, t + duration))
    for day in range(DAYS):
        begin = network.local(day, 2 + rng.uniform(0, 0.2))
        size = rng.uniform(10, 30) * GB
        src = hosts["prod"][0][0]
        flows += network.spread(src, rng.sample(cloud, 8), begin, begin + 5400, size)
        traps.append(Trap("nightly-backup", begin, begin + 5400))
    for day in range(6, DAYS, 7):
        begin = network.local(day, 3)
        dst = rng.choice(pools["cloud-ie"][1])
        flows += network.transfer(hosts["prod"][1][0], dst, begin, begin + 3 * 3600, 80 * GB)
        traps.append(Trap("weekly-snapshot", begin, begin + 3 * 3600))

    # -- exfiltrations ------------------------------------------------------------------------
    # A compromised service ships tens of GB to a VPS in a country prod never uses.
    src = network.pick_host("prod", False)
    dst = f"163.172.{rng.randrange(1, 250)}.{rng.randrange(1, 250)}"
    begin = network.local(9, rng.uniform(10, 16))
    burst = network.transfer(src, dst, begin, begin + 3600, rng.uniform(20, 40) * GB)
    expected.append(
        _expect("vps-country", UNEXPECTED, "prod", "FR", burst, UNEXPECTED_MIN_BYTES, src, dst)
    )
    flows += burst
    # Over IPv6 to a fresh /48 of a hosting provider in an allowed country, in the backup hour.
    src = hosts["prod"][1][rng.randrange(5, 20)]
    dst = f"2604:a880:{rng.randrange(0x400, 0xFFF):x}::{rng.randrange(1, 0xFFFF):x}"
    begin = network.local(16, 2.2)
    fresh = network.transfer(src, dst, begin, begin + 3600, 6 * GB)
    expected.append(
        _expect(
            "ipv6-fresh-48", NEW_DESTINATION, "prod", "US", fresh, NEW_DESTINATION_FLOOR, src, dst
        )
    )
    flows += fresh
    # A laptop drips to a country corp never used: 60 MB an hour for two days. Its pieces vary,
    # so an hour of it may reach 100 MB: it pages on whichever window it fills first.
    src = network.pick_host("corp", False)
    dst = rng.choice(("77.88.55.60", "87.250.250.242", "5.255.255.5"))
    begin = network.local(18, rng.uniform(0, 24))
    drip = network.transfer(src, dst, begin, begin + 2 * DAY, 2 * 24 * 60 * MB, step=300.0)
    expected.append(
        _expect(
            "drip", UNEXPECTED, "corp", "RU", drip, UNEXPECTED_MIN_BYTES, src, dst, windows=WINDOWS
        )
    )
    flows += drip
    # A CI job with stolen credentials: the repository (300 MB) to a VPS in Singapore.
    src = network.pick_host("ci", False)
    dst = f"139.59.{rng.randrange(1, 250)}.{rng.randrange(1, 250)}"
    begin = network.local(22, rng.uniform(0, 24))
    ci = network.transfer(src, dst, begin, begin + 1200, 300 * MB, step=30.0)
    expected.append(_expect("ci-token", UNEXPECTED, "ci", "SG", ci, UNEXPECTED_MIN_BYTES, src, dst))
    flows += ci
    # A CI runner ships a build cache slowly to a VPS at another provider in the US, rate
    # limited: 500 MB an hour (within a quarter) for twelve hours, never 1 GB within an hour.
    src = network.pick_host("ci", False)
    dst = _addresses(rng, ("159.89",), 1, "US")[0]
    begin = network.local(20, rng.uniform(8, 10))
    slow = [
        flow
        for k in range(144)
        if (
            flow := network.flow(
                begin + k * 300 + 290, src, dst, rng.uniform(0.75, 1.25) * 500 * MB / 12
            )
        )
    ]
    windows = ((3600.0, NEW_DESTINATION_FLOOR), (DAY, NEW_DESTINATION_DAY_FLOOR))
    expected.append(
        _expect("slow-vps", NEW_DESTINATION, "ci", "US", slow, NEW_DESTINATION_FLOOR, src, dst,
                windows=windows)
    )  # fmt: skip
    flows += slow
    return _finish(seed, network, flows, expected, traps, SAAS_CONFIG)


# -- a university ------------------------------------------------------------------------------

CAMPUS_CONFIG = """\
[networks]
local = ["10.0.0.0/8", "fd00::/8"]

[[groups]]
name = "physics"
sources = ["10.10.0.0/16", "fd00:10::/32"]

[[groups]]
name = "cs"
sources = ["10.11.0.0/16", "fd00:11::/32"]

[[groups]]
name = "bio"
sources = ["10.12.0.0/16"]
expected_countries = ["GB", "US", "DE", "IE"]

[[groups]]
name = "resnet"
sources = ["10.13.0.0/16", "fd00:13::/32"]

[[groups]]
name = "admin"
sources = ["10.14.0.0/16"]
expected_countries = ["GB", "US", "IE"]

[detection]
interval = "5m"
learning = "7d"
"""

#: the campus clock: UTC+0 until the last Sunday of March (day 20 from Monday 9 March), then +1
CAMPUS_START = datetime(2026, 3, 9, tzinfo=UTC).timestamp()
CAMPUS_DST = datetime(2026, 3, 29, 1, tzinfo=UTC).timestamp()
#: students arrive from this day over a week: their traffic doubles
TERM_DAY = 11
CONFERENCE_DAYS = range(15, 20)


def _campus_season(group: str, day: int) -> float:
    if group in ("resnet", "cs", "physics"):
        return 1.0 + min(max((day - TERM_DAY) / 7.0, 0.0), 1.0)
    return 1.0


def generate_campus(seed: int = 1) -> Scenario:
    """A university month (see the module docstring) with four exfiltrations."""
    rng = random.Random(seed * 15485863 + 2)
    start = CAMPUS_START
    p2p_countries = _fanout_destinations(rng, 60, {"CN", "RU"})
    pools = {
        "us": (
            ["8.8.8.8", "140.82.112.3", "151.101.1.69", "104.16.132.229", "52.94.236.248"],
            ["2001:4860:4860::8888", "2606:4700:4700::1111"],
        ),
        "gb": (
            ["212.58.244.22", "81.2.69.142", "193.62.193.80", "130.88.1.1", "131.111.1.1"],
            ["2001:630:1:1::1"],
        ),
        "cern": (["188.184.1.1", "188.184.9.2", "137.138.1.1"], ["2001:1458::1"]),
        "de": (["88.198.55.33", "78.46.1.1", "136.243.1.1"], []),
        "fr": (["163.172.1.1", "212.27.48.10"], []),
        "nl": (["145.100.190.243", "194.109.6.66"], []),
        "jp": (["133.11.0.1", "210.130.1.1"], []),
        "ie": (["87.198.1.1", "193.1.193.64"], []),
        "p2p": (p2p_countries, []),
    }
    _check(
        pools,
        {
            "us": "US",
            "gb": "GB",
            "cern": "CH",
            "de": "DE",
            "fr": "FR",
            "nl": "NL",
            "jp": "JP",
            "ie": "IE",
        },
    )
    hosts = {
        "physics": _hosts(rng, "10.10", 150, "fd00:10"),
        "cs": _hosts(rng, "10.11", 300, "fd00:11"),
        "bio": _hosts(rng, "10.12", 100),
        "resnet": _hosts(rng, "10.13", 2000, "fd00:13"),
        "admin": _hosts(rng, "10.14", 200),
    }
    exporter = ("10.255.2.1", 1)
    network = Network(
        rng, start, DAYS, hosts, pools,
        lambda t: 1.0 if t >= CAMPUS_DST else 0.0, _campus_season,
        dict.fromkeys(hosts, exporter),
    )  # fmt: skip
    streams = (
        Stream("physics", "us", 150 * MB, 0.2, 0.4, ipv6=0.2),
        Stream("physics", "cern", 200 * MB, 0.3, 0.6, ipv6=0.3),
        Stream("physics", "de", 60 * MB, 0.2, 0.4),
        Stream("physics", "gb", 80 * MB, 0.2, 0.4),
        Stream("cs", "us", 300 * MB, 0.15, 0.3, ipv6=0.3, flows=5),
        Stream("cs", "gb", 100 * MB, 0.15, 0.3),
        Stream("cs", "nl", 40 * MB, 0.15, 0.3),
        Stream("cs", "jp", 15 * MB, 0.15, 0.3),
        Stream("bio", "us", 100 * MB, 0.1, 0.2),
        Stream("bio", "gb", 80 * MB, 0.1, 0.2),
        Stream("bio", "de", 30 * MB, 0.1, 0.2),
        Stream("admin", "gb", 60 * MB, 0.03, 0.05),
        Stream("admin", "us", 80 * MB, 0.03, 0.05),
        Stream("admin", "ie", 20 * MB, 0.03, 0.05),
        Stream("resnet", "us", 250 * MB, 0.3, 1.2, ipv6=0.4, late=6, flows=8),
        Stream("resnet", "gb", 80 * MB, 0.3, 1.2, late=6),
        # Peer-to-peer: the same total spread over sixty countries, a few carrying most.
        Stream("resnet", "p2p", 400 * MB, 0.4, 1.2, late=6, sigma=0.6, flows=12, peers=True),
    )
    flows = _background(network, streams)
    expected: list[ExpectedAlert] = []
    traps: list[Trap] = []

    # -- benign: nightly physics syncs to CERN, a conference week ------------------------------
    for day in range(DAYS):
        begin = network.local(day, 1 + rng.uniform(0, 0.5))
        size = rng.uniform(5, 25) * GB * _campus_season("physics", day)
        flows += network.transfer(
            hosts["physics"][0][0], pools["cern"][0][0], begin, begin + 3 * 3600, size
        )
        traps.append(Trap("cern-sync", begin, begin + 3 * 3600))
    for day in CONFERENCE_DAYS:
        # Talks streamed and recordings uploaded to the US from the lecture theatre.
        begin = network.local(day, 9)
        src = hosts["cs"][0][3]
        flows += network.transfer(
            src, pools["us"][0][rng.randrange(5)], begin, begin + 8 * 3600, rng.uniform(8, 15) * GB
        )
        traps.append(Trap("conference-stream", begin, begin + 8 * 3600))

    # -- exfiltrations ------------------------------------------------------------------------
    # Model weights from the physics cluster to a country it never sends to.
    src = hosts["physics"][0][rng.randrange(10, 40)]
    dst = rng.choice(("47.100.23.45", "220.181.38.148", "119.29.29.29"))
    begin = network.local(13, rng.uniform(10, 17))
    weights = network.transfer(src, dst, begin, begin + 3600, rng.uniform(20, 40) * GB)
    expected.append(
        _expect("weights", UNEXPECTED, "physics", "CN", weights, UNEXPECTED_MIN_BYTES, src, dst)
    )
    flows += weights
    # A slow drip from bio over three days, 45 MB an hour.
    src = hosts["bio"][0][rng.randrange(10, 40)]
    dst = rng.choice(("77.88.55.60", "87.250.250.242"))
    begin = network.local(16, rng.uniform(0, 24))
    drip = network.transfer(src, dst, begin, begin + 3 * DAY, 3 * 24 * 45 * MB, step=300.0)
    expected.append(
        _expect(
            "drip", UNEXPECTED, "bio", "RU", drip, UNEXPECTED_MIN_BYTES, src, dst, windows=WINDOWS
        )
    )
    flows += drip
    # From cs over IPv6, in the small hours.
    src = hosts["cs"][1][rng.randrange(10, 30)]
    dst = rng.choice(("2a02:6b8::2:242", "2a02:6b8:a::a"))
    begin = network.local(21, rng.uniform(1, 5))
    v6 = network.transfer(src, dst, begin, begin + 900, rng.uniform(1, 3) * GB)
    expected.append(_expect("ipv6", UNEXPECTED, "cs", "RU", v6, UNEXPECTED_MIN_BYTES, src, dst))
    flows += v6
    # Hidden in the nightly CERN sync: a fresh Swiss network, 6 GB within the hour.
    src = hosts["physics"][0][rng.randrange(40, 80)]
    dst = f"130.59.{rng.randrange(1, 250)}.{rng.randrange(1, 250)}"
    begin = network.local(24, 1.5)
    fresh = network.transfer(src, dst, begin, begin + 3600, 6 * GB)
    expected.append(
        _expect(
            "fresh-ch", NEW_DESTINATION, "physics", "CH", fresh, NEW_DESTINATION_FLOOR, src, dst
        )
    )
    flows += fresh
    return _finish(seed, network, flows, expected, traps, CAMPUS_CONFIG)


# -- a small office behind a sampling exporter ---------------------------------------------------

OFFICE_CONFIG = """\
[networks]
local = ["192.168.0.0/16", "fd00::/8"]

[[groups]]
name = "office"
sources = ["192.168.10.0/24", "fd00:10::/32"]
expected_countries = ["GB", "US", "IE", "NL"]

[[groups]]
name = "nas"
sources = ["192.168.20.0/24"]
expected_countries = ["GB", "US"]

[detection]
interval = "5m"
learning = "7d"
"""

OFFICE_START = datetime(2026, 12, 7, tzinfo=UTC).timestamp()
#: Monday 7 December 2026; closed from Saturday 19 to Monday 28 December (days 12 to 21)
HOLIDAY = range(12, 22)
SAMPLING = 1000


def _office_season(group: str, day: int) -> float:
    return 0.01 if day in HOLIDAY else 1.0


def generate_office(seed: int = 1) -> Scenario:
    """A small office's month (see the module docstring) with three exfiltrations."""
    rng = random.Random(seed * 7727 + 3)
    start = OFFICE_START
    pools = {
        "us": (_addresses(rng, ("20.190", "52.96", "40.99", "13.107", "52.112"), 30, "US"), []),
        "gb": (["212.58.244.22", "81.2.69.142", "193.62.193.80"], ["2a00:1098:0:80::1"]),
        "ie": (["87.198.1.1", "89.101.160.5"], []),
        "nl": (["145.100.190.243"], []),
        "backup": (["45.11.36.20", "45.11.36.21"], []),
    }
    _check(pools, {"us": "US", "gb": "GB", "ie": "IE", "nl": "NL", "backup": "US"})
    hosts = {
        "office": (
            [f"192.168.10.{i}" for i in range(10, 30)],
            [f"fd00:10::{i:x}" for i in range(10, 20)],
        ),
        "nas": (["192.168.20.5"], []),
    }
    network = Network(
        rng, start, DAYS, hosts, pools, lambda _t: 0.0, _office_season,
        {"office": ("192.168.0.1", SAMPLING), "nas": ("192.168.0.1", SAMPLING)},
    )  # fmt: skip
    streams = (
        Stream("office", "us", 40 * MB, 0.01, 0.02, sigma=0.7, ipv6=0.2, flows=2),
        Stream("office", "gb", 15 * MB, 0.01, 0.02, sigma=0.7, ipv6=0.2, flows=1),
        Stream("office", "ie", 8 * MB, 0.01, 0.02, sigma=0.7, flows=1),
        Stream("office", "nl", 3 * MB, 0.01, 0.02, sigma=0.7, flows=1),
    )
    flows = _background(network, streams)
    expected: list[ExpectedAlert] = []
    traps: list[Trap] = []

    # -- benign: the NAS's nightly backup (tiny when nothing changed over the holiday) --------
    for day in range(DAYS):
        begin = network.local(day, 23 + rng.uniform(0, 0.1))
        weekday = datetime.fromtimestamp(begin, UTC).weekday() < 5
        size = rng.uniform(2, 6) * GB if weekday and day not in HOLIDAY else 5 * MB
        flows += network.transfer(
            "192.168.20.5", pools["backup"][0][day % 2], begin, begin + 3600, size
        )
        traps.append(Trap("nas-backup", begin, begin + 3600))

    # -- exfiltrations ------------------------------------------------------------------------
    src = rng.choice(hosts["office"][0])
    dst = rng.choice(("47.100.23.45", "114.114.114.114", "220.181.38.148"))
    begin = network.local(8, rng.uniform(10, 16))
    laptop = network.transfer(src, dst, begin, begin + 3600, 3 * GB)
    expected.append(
        _expect("laptop-cn", UNEXPECTED, "office", "CN", laptop, UNEXPECTED_MIN_BYTES, src, dst)
    )
    flows += laptop
    # The NAS, in its backup hour, to a fresh network in the US.
    dst = f"143.198.{rng.randrange(1, 250)}.{rng.randrange(1, 250)}"
    begin = network.local(10, 23.3)
    nas = network.transfer("192.168.20.5", dst, begin, begin + 3600, 4 * GB)
    expected.append(
        _expect(
            "nas-fresh-24",
            NEW_DESTINATION,
            "nas",
            "US",
            nas,
            NEW_DESTINATION_FLOOR,
            "192.168.20.5",
            dst,
        )
    )
    flows += nas
    # Over IPv6 from a laptop, a week after the holiday.
    src = rng.choice(hosts["office"][1])
    dst = rng.choice(("2a02:6b8::2:242", "2a02:6b8:a::a"))
    begin = network.local(24, rng.uniform(9, 17))
    v6 = network.transfer(src, dst, begin, begin + 1800, 1.5 * GB)
    expected.append(_expect("ipv6", UNEXPECTED, "office", "RU", v6, UNEXPECTED_MIN_BYTES, src, dst))
    flows += v6
    return _finish(seed, network, flows, expected, traps, OFFICE_CONFIG)


# -- an enterprise: many groups, thousands of hosts, offices in several countries ---------------

ENTERPRISE_START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
#: clocks go forward in the US on Sunday 8 March (day 6), in Europe on Sunday 29 March (day 27)
US_DST = datetime(2026, 3, 8, 7, tzinfo=UTC).timestamp()
EU_DST = datetime(2026, 3, 29, 1, tzinfo=UTC).timestamp()


def _zone(base: float, dst: float | None = None) -> Callable[[float], float]:
    if dst is None:
        return lambda _t: base
    return lambda t: base + (1.0 if t >= dst else 0.0)


_LONDON = _zone(0.0, EU_DST)
_CET = _zone(1.0, EU_DST)
_NEW_YORK = _zone(-5.0, US_DST)
_CENTRAL = _zone(-6.0, US_DST)
_UTC = _zone(0.0)


class _Group(NamedTuple):
    """One enterprise group: its 10.x.0.0/16, hosts, clock, exporter and countries."""

    octet: int
    hosts: int
    #: its IPv6 /32 ("fd00:20") or "" for none
    prefix6: str
    zone: Callable[[float], float]
    #: exporter address and sampling rate
    exporter: tuple[str, int]
    #: expected countries, or () to learn them
    countries: tuple[str, ...]


_HQ = ("10.255.0.1", 1)
_EU_BRANCH = ("10.255.0.2", 1)
_US_BRANCH = ("10.255.0.3", 10)
_DATACENTRE = ("10.255.0.7", 1)
_ENTERPRISE_GROUPS = {
    # offices: headquarters in London, branches in Europe, the US, Latin America and Asia
    "london": _Group(20, 600, "fd00:20", _LONDON, _HQ, ("GB", "US", "IE", "NL", "DE", "FR")),
    "dublin": _Group(21, 150, "", _LONDON, _EU_BRANCH, ("IE", "GB", "US", "NL")),
    "frankfurt": _Group(22, 250, "", _CET, _EU_BRANCH, ("DE", "US", "IE", "NL", "CH")),
    "paris": _Group(23, 200, "", _CET, _EU_BRANCH, ("FR", "US", "IE", "DE", "GB", "NL")),
    "new-york": _Group(24, 400, "", _NEW_YORK, _US_BRANCH, ("US", "GB", "IE", "CA")),
    "austin": _Group(25, 250, "", _CENTRAL, _US_BRANCH, ("US", "MX")),
    "sao-paulo": _Group(26, 150, "", _zone(-3.0), ("10.255.0.4", 100), ()),
    "tokyo": _Group(27, 200, "", _zone(9.0), ("10.255.0.5", 100), ("JP", "US", "SG", "KR")),
    "singapore": _Group(
        28, 120, "", _zone(8.0), ("10.255.0.5", 100), ("SG", "US", "JP", "AU", "IN")
    ),
    "bangalore": _Group(29, 300, "", _zone(5.5), ("10.255.0.6", 100), ()),
    # departments and systems
    "engineering": _Group(30, 400, "fd00:30", _LONDON, _HQ, ("US", "IE", "DE", "NL", "GB", "JP")),
    "finance": _Group(31, 80, "", _LONDON, _HQ, ("GB", "US", "IE")),
    "data-science": _Group(32, 60, "fd00:32", _NEW_YORK, _DATACENTRE, ("US", "IE")),
    "build-farm": _Group(33, 80, "", _UTC, _DATACENTRE, ("US", "DE")),
    "guest-wifi": _Group(34, 500, "fd00:34", _LONDON, _HQ, ()),
    "dmz": _Group(35, 60, "fd00:35", _UTC, _DATACENTRE, ("US", "GB", "IE", "DE")),
    "building-ot": _Group(36, 40, "", _LONDON, _HQ, ("DE",)),
    "vpn": _Group(37, 600, "fd00:37", _LONDON, ("10.255.0.8", 1), ()),
}


def _enterprise_config() -> str:
    lines = ['[networks]\nlocal = ["10.0.0.0/8", "fd00::/8"]\n']
    for name, spec in _ENTERPRISE_GROUPS.items():
        sources = [f"10.{spec.octet}.0.0/16"] + ([f"{spec.prefix6}::/32"] if spec.prefix6 else [])
        lines.append(f'[[groups]]\nname = "{name}"\nsources = {orjson.dumps(sources).decode()}')
        if spec.countries:
            lines.append(f"expected_countries = {orjson.dumps(list(spec.countries)).decode()}")
        else:
            lines.append("# countries learned")
        lines.append("")
    lines.append('[detection]\ninterval = "5m"\nlearning = "7d"\n')
    return "\n".join(lines)


ENTERPRISE_CONFIG = _enterprise_config()

#: /16s per country for the destination pools (all of each checked when generated)
_BLOCKS = {
    "GB": ("107.32", "107.33", "107.34"),
    "IE": ("109.76", "109.77", "134.226", "137.43"),
    "DE": ("109.192", "109.193", "109.40", "109.41"),
    "FR": ("109.10", "109.11", "109.12"),
    "NL": ("109.32", "109.33", "130.112"),
    "CH": ("128.178", "129.132", "130.59"),
    "CA": ("104.157", "104.158", "108.172"),
    "MX": ("148.201", "148.202", "148.203"),
    "BR": ("143.106", "143.107", "150.161", "150.162"),
    "JP": ("1.112", "1.113", "1.72", "1.73"),
    "SG": ("101.127", "116.14", "116.15", "116.86"),
    "KR": ("1.100", "1.101", "1.102"),
    "AU": ("1.120", "1.121", "1.122"),
    "IN": ("101.208", "101.209", "101.210"),
    "ES": ("130.206", "147.83", "147.96"),
    "IT": ("101.56", "101.57", "109.112"),
    "PL": ("145.237", "148.81", "149.156"),
    "SE": ("129.16", "130.235", "130.237"),
}
ENTERPRISE_HOLIDAYS = {"bangalore": 17, "tokyo": 18}  # Ugadi (19 March), equinox (20 March)
#: finance closes the month on these days: its traffic 2.5 times the usual
MONTH_END = (24, 25)


def _enterprise_season(group: str, day: int) -> float:
    if ENTERPRISE_HOLIDAYS.get(group) == day:
        return 0.05
    if group == "finance" and day in MONTH_END:
        return 2.5
    return 1.0


def generate_enterprise(seed: int = 1) -> Scenario:
    """An enterprise month (see the module docstring) with six exfiltrations."""
    rng = random.Random(seed * 3571 + 4)
    start = ENTERPRISE_START
    cloud = _addresses(rng, _CLOUD_BLOCKS, 400, "US")
    pools: dict[str, tuple[list[str], list[str]]] = {
        "saas-us": (
            _addresses(rng, _SAAS_US, 200, "US"),
            ["2603:1026::1", "2603:1026:c02::7", "2603:1036:3000::12"],
        ),
        "cloud-us": (cloud, _v6(rng, "2600:1f18", 60)),
        "cloud-ie": (_addresses(rng, _BLOCKS["IE"], 40, "IE"), _v6(rng, "2a05:d018", 20)),
        "vendor-us": (["199.232.41.10", "199.232.41.11", "199.232.41.12"], []),
        "guest-p2p": (_fanout_destinations(rng, 25, {"CN", "RU", "KR", "SG"}), []),
    }
    for country, blocks in _BLOCKS.items():
        pools[country.lower()] = (_addresses(rng, blocks, 20, country), [])
    _check(pools, {"saas-us": "US", "cloud-us": "US", "cloud-ie": "IE", "vendor-us": "US"})
    _check(pools, {country.lower(): country for country in _BLOCKS})
    hosts = {
        name: _hosts(rng, f"10.{spec.octet}", spec.hosts, spec.prefix6)
        for name, spec in _ENTERPRISE_GROUPS.items()
    }
    network = Network(
        rng, start, DAYS, hosts, pools, _UTC, _enterprise_season,
        {name: spec.exporter for name, spec in _ENTERPRISE_GROUPS.items()},
        zones={name: spec.zone for name, spec in _ENTERPRISE_GROUPS.items()},
    )  # fmt: skip
    office = {"night": 0.05, "weekend": 0.1}
    # A SaaS vendor adopted across the company on day 12: a trial first, in use a week later.
    vendor = {"first_day": 12.4, "ramp_days": 7.0, "flows": 1.0}
    streams = (
        Stream("london", "saas-us", 400 * MB, **office, ipv6=0.2, flows=5),
        Stream("london", "gb", 150 * MB, **office),
        Stream("london", "cloud-ie", 120 * MB, **office, ipv6=0.3),
        Stream("london", "nl", 40 * MB, **office, flows=1),
        Stream("london", "de", 20 * MB, **office, flows=1),
        Stream("london", "fr", 15 * MB, **office, flows=1),
        Stream("london", "vendor-us", 80 * MB, **office, **vendor),
        Stream("dublin", "saas-us", 100 * MB, **office),
        Stream("dublin", "ie", 60 * MB, **office),
        Stream("dublin", "gb", 40 * MB, **office, flows=1),
        Stream("dublin", "nl", 10 * MB, **office, flows=1),
        Stream("frankfurt", "saas-us", 150 * MB, **office),
        Stream("frankfurt", "de", 100 * MB, **office),
        Stream("frankfurt", "cloud-ie", 50 * MB, **office),
        Stream("frankfurt", "nl", 20 * MB, **office, flows=1),
        Stream("frankfurt", "ch", 10 * MB, **office, flows=1),
        Stream("frankfurt", "vendor-us", 40 * MB, **office, **vendor),
        Stream("paris", "saas-us", 120 * MB, **office),
        Stream("paris", "fr", 80 * MB, **office),
        Stream("paris", "cloud-ie", 40 * MB, **office),
        Stream("paris", "de", 15 * MB, **office, flows=1),
        Stream("paris", "gb", 10 * MB, **office, flows=1),
        Stream("new-york", "saas-us", 350 * MB, **office, flows=5),
        Stream("new-york", "cloud-us", 100 * MB, **office),
        Stream("new-york", "gb", 20 * MB, **office, flows=1),
        Stream("new-york", "cloud-ie", 10 * MB, **office, flows=1),
        Stream("new-york", "ca", 10 * MB, **office, flows=1),
        Stream("new-york", "vendor-us", 80 * MB, **office, **vendor),
        Stream("austin", "saas-us", 200 * MB, **office),
        Stream("austin", "cloud-us", 80 * MB, **office),
        Stream("austin", "mx", 8 * MB, **office, flows=1),
        Stream("sao-paulo", "saas-us", 80 * MB, **office),
        Stream("sao-paulo", "br", 60 * MB, **office),
        Stream("tokyo", "saas-us", 80 * MB, **office),
        Stream("tokyo", "jp", 120 * MB, **office),
        Stream("tokyo", "sg", 10 * MB, **office, flows=1),
        Stream("tokyo", "kr", 5 * MB, **office, flows=1),
        Stream("singapore", "saas-us", 50 * MB, **office),
        Stream("singapore", "sg", 60 * MB, **office),
        Stream("singapore", "jp", 10 * MB, **office, flows=1),
        Stream("singapore", "au", 10 * MB, **office, flows=1),
        Stream("singapore", "in", 5 * MB, **office, flows=1),
        Stream("bangalore", "saas-us", 120 * MB, **office),
        Stream("bangalore", "in", 80 * MB, **office),
        Stream("bangalore", "sg", 20 * MB, **office, flows=1),
        Stream("bangalore", "cloud-ie", 20 * MB, **office, flows=1),
        Stream("engineering", "cloud-us", 300 * MB, 0.1, 0.2, ipv6=0.3, flows=4),
        Stream("engineering", "saas-us", 150 * MB, **office),
        Stream("engineering", "cloud-ie", 60 * MB, 0.1, 0.2, ipv6=0.3),
        Stream("engineering", "de", 40 * MB, 0.1, 0.2, flows=1),
        Stream("engineering", "nl", 30 * MB, 0.1, 0.2, flows=1),
        Stream("engineering", "jp", 10 * MB, 0.1, 0.2, flows=1),
        Stream("engineering", "vendor-us", 60 * MB, **office, **vendor),
        Stream("finance", "saas-us", 60 * MB, **office, flows=2),
        Stream("finance", "gb", 40 * MB, **office, flows=1),
        Stream("finance", "ie", 10 * MB, **office, flows=1),
        Stream("data-science", "cloud-us", 500 * MB, 0.4, 0.5, ipv6=0.3, flows=4),
        Stream("data-science", "cloud-ie", 100 * MB, 0.4, 0.5, flows=2),
        Stream("build-farm", "cloud-us", 300 * MB, 0.8, 0.7, flows=4),
        Stream("build-farm", "de", 50 * MB, 0.8, 0.7, flows=1),
        Stream("guest-wifi", "saas-us", 100 * MB, 0.05, 0.2, ipv6=0.3),
        Stream("guest-wifi", "gb", 50 * MB, 0.05, 0.2),
        Stream("guest-wifi", "ie", 20 * MB, 0.05, 0.2, flows=1),
        # Guests' devices: the same kind of spread as peer-to-peer, over 25 countries.
        Stream("guest-wifi", "guest-p2p", 60 * MB, 0.1, 0.3, sigma=0.6, flows=6, peers=True),
        Stream("dmz", "cloud-us", 100 * MB, 0.6, 0.9, ipv6=0.3),
        Stream("dmz", "gb", 30 * MB, 0.6, 0.9),
        Stream("dmz", "ie", 20 * MB, 0.6, 0.9, flows=1),
        Stream("dmz", "de", 10 * MB, 0.6, 0.9, flows=1),
        # Building systems hardly talk out: a controller's few MB to its vendor in Germany.
        Stream("building-ot", "de", 2 * MB, 0.5, 1.0, flows=1, burst=1 / 500),
        Stream("vpn", "saas-us", 150 * MB, 0.1, 0.2, ipv6=0.2),
        Stream("vpn", "gb", 60 * MB, 0.1, 0.2),
        Stream("vpn", "cloud-ie", 20 * MB, 0.1, 0.2, flows=1),
        Stream("vpn", "es", 10 * MB, 0.1, 0.2, flows=1),
        Stream("vpn", "it", 10 * MB, 0.1, 0.2, flows=1),
        Stream("vpn", "pl", 5 * MB, 0.1, 0.2, flows=1),
        Stream("vpn", "se", 5 * MB, 0.1, 0.2, flows=1),
        Stream("vpn", "in", 5 * MB, 0.1, 0.2, flows=1),
    )
    flows = _background(network, streams)
    expected: list[ExpectedAlert] = []
    traps: list[Trap] = []

    # -- benign: checkpoints to the cloud, build artefacts, the dmz backup moving region -----
    for day in range(DAYS):
        if network.clock("data-science", network.local(day, 12, "data-science"))[1]:
            continue
        for _ in range(rng.choice((1, 1, 2))):
            begin = network.local(day, rng.uniform(9, 20), "data-science")
            size = rng.uniform(10, 60) * GB
            duration = rng.uniform(30, 90) * 60
            src = network.pick_host("data-science", False)
            flows += network.spread(src, rng.sample(cloud, 6), begin, begin + duration, size)
            traps.append(Trap("checkpoint-upload", begin, begin + duration))
    t = start
    while t < start + DAYS * DAY:
        t += rng.expovariate(4.0 / DAY)
        size = rng.uniform(3, 12) * GB
        duration = rng.uniform(10, 40) * 60
        src = network.pick_host("build-farm", False)
        flows += network.spread(src, rng.sample(cloud, 4), t, t + duration, size)
        traps.append(Trap("build-artefacts", t, t + duration))
    # The dmz backs up nightly to the cloud's storage, whose addresses rotate; on day 16 the
    # bucket moves to another region: other networks of the same provider, in the US too.
    east = _addresses(rng, _CLOUD_BLOCKS[:4], 150, "US")
    west = _addresses(rng, _CLOUD_BLOCKS[4:], 150, "US")
    backup_src = hosts["dmz"][0][0]
    for day in range(DAYS):
        begin = network.local(day, 1 + rng.uniform(0, 0.2), "dmz")
        size = rng.uniform(10, 30) * GB
        targets = rng.sample(east if day < 16 else west, 8)
        flows += network.spread(backup_src, targets, begin, begin + 5400, size)
        traps.append(Trap("dmz-backup", begin, begin + 5400))

    # -- exfiltrations ------------------------------------------------------------------------
    # A data-science host copies a dataset to a cloud region in a country the team never uses.
    src = network.pick_host("data-science", False)
    dst = rng.choice(pools["sg"][0])
    begin = network.local(9, rng.uniform(10, 17), "data-science")
    dataset = network.transfer(src, dst, begin, begin + 3600, rng.uniform(20, 40) * GB)
    expected.append(
        _expect(
            "dataset-abroad", UNEXPECTED, "data-science", "SG", dataset, UNEXPECTED_MIN_BYTES,
            src, dst,
        )
    )  # fmt: skip
    flows += dataset
    # A finance laptop drips to a country finance never uses, 50 MB an hour for three days.
    src = network.pick_host("finance", False)
    dst = rng.choice(("77.88.55.60", "87.250.250.242", "5.255.255.5"))
    begin = network.local(11, rng.uniform(0, 24), "finance")
    drip = network.transfer(src, dst, begin, begin + 3 * DAY, 3 * 24 * 50 * MB, step=300.0)
    expected.append(
        _expect(
            "finance-drip", UNEXPECTED, "finance", "RU", drip, UNEXPECTED_MIN_BYTES, src, dst,
            windows=WINDOWS,
        )
    )  # fmt: skip
    flows += drip
    # A Paris laptop fans out to fifty countries, 95 MB per 65 minutes each, for three hours.
    avoid = set(_ENTERPRISE_GROUPS["paris"].countries) | {"CN", "RU", "SG"}
    src = network.pick_host("paris", False)
    begin = network.local(14, rng.uniform(9, 15), "paris")
    fan: list[Flow] = []
    for target in _fanout_destinations(rng, 50, avoid):
        offset = rng.uniform(0, 300)
        for k in range(36):
            at = begin + offset + k * 300 + rng.uniform(-20, 20)
            fan += [f for f in [network.flow(at, src, target, 95 * MB * 300 / 3900)] if f]
    fan.sort(key=lambda f: f.end)
    fanout_floor = 5 * UNEXPECTED_MIN_BYTES
    expected.append(_expect("fan-out", UNEXPECTED, "paris", "multiple", fan, fanout_floor, src, ""))
    flows += fan
    # A build runner with stolen credentials ships 4 GB to a fresh VPS at another US provider.
    src = network.pick_host("build-farm", False)
    dst = _addresses(rng, ("159.89", "143.198"), 1, "US")[0]
    begin = network.local(17, rng.uniform(0, 24), "build-farm")
    vps = network.transfer(src, dst, begin, begin + 2400, 4 * GB)
    expected.append(
        _expect("build-vps", NEW_DESTINATION, "build-farm", "US", vps, NEW_DESTINATION_FLOOR,
                src, dst)
    )  # fmt: skip
    flows += vps
    # A compromised building controller, which only ever talks to its vendor, uploads to China.
    src = network.pick_host("building-ot", False)
    dst = rng.choice(("47.100.23.45", "114.114.114.114", "220.181.38.148"))
    begin = network.local(20, rng.uniform(0, 6), "building-ot")
    beacon = network.transfer(src, dst, begin, begin + 7200, rng.uniform(1, 2) * GB)
    expected.append(
        _expect("ot-upload", UNEXPECTED, "building-ot", "CN", beacon, UNEXPECTED_MIN_BYTES,
                src, dst)
    )  # fmt: skip
    flows += beacon
    # Finance uploads four times the most it ever sent in five minutes to its usual SaaS.
    finance_hosts = set(hosts["finance"][0])
    saas = pools["saas-us"][0]
    history = _interval_max(flows, finance_hosts, set(saas))
    t0 = network.local(22, 0, "finance") + INTERVAL * rng.randrange(10 * 12, 16 * 12)
    t0 -= t0 % INTERVAL
    src = network.pick_host("finance", False)
    size = max(4 * history, history + 2 * GB)
    grab = network.transfer(src, saas[0], t0 + 1, t0 + INTERVAL - 1, size, step=20.0)
    expected.append(
        _expect("finance-grab", SPIKE, "finance", "US", grab, SPIKE_MIN_BYTES, src, saas[0],
                crossing_floor=size / 2)
    )  # fmt: skip
    flows += grab
    return _finish(seed, network, flows, expected, traps, ENTERPRISE_CONFIG)


# -- a tiny office: a dozen hosts, CDN churn, small incidents -----------------------------------

TINY_OFFICE_CONFIG = """\
[networks]
local = ["192.168.0.0/16", "fd00::/8"]

# desks and laptops: countries learned
[[groups]]
name = "office"
sources = ["192.168.1.0/24", "fd00:1::/32"]

# the NAS and the phone system
[[groups]]
name = "servers"
sources = ["192.168.2.0/24"]
expected_countries = ["AT", "DE"]

[detection]
interval = "5m"
learning = "7d"
"""

#: Monday 23 March 2026 in Vienna (UTC+1, UTC+2 from Sunday 29 March, day 6)
TINY_START = datetime(2026, 3, 22, 23, tzinfo=UTC).timestamp()
TINY_DST = datetime(2026, 3, 29, 1, tzinfo=UTC).timestamp()
TINY_DAYS = 21
#: Easter school holidays: half the people away (days 7-10), closed Good Friday to Easter
#: Monday (days 11-14), everyone back on Tuesday 7 April (day 15)
TINY_AWAY = range(7, 11)
TINY_CLOSED = range(11, 15)
TINY_BACK = 15
#: floors a fifth of the configured ones (20 MB within an hour or 200 MB within a day to an
#: unexpected country, 200 MB within an hour to fresh networks): where the incidents under the
#: configured floors (100 MB an hour and 1 GB a day to an unexpected country, 1 GB an hour to
#: fresh networks) are scored as crossing; the office's own floors are lower still, so they
#: page from the transfer's start up to an interval after that crossing
TINY_WINDOWS = ((3600.0, 20 * MB), (DAY, 200 * MB))
TINY_NEW_DESTINATION_FLOOR = 200 * MB
_TINY_EXPORTER = "192.168.0.1"
#: /16s per country for the CDN edges (each address checked), the office in Austria
_TINY_BLOCKS = {
    "AT": ("77.116", "77.117", "80.108", "80.120", "81.189"),
    "DE": ("77.0", "77.1", "77.2", "77.3"),
    "CH": ("77.56", "77.57", "80.218", "83.76"),
    "CZ": ("77.48", "78.44", "78.45", "85.160"),
    "NL": ("2.16", "2.18", "2.20", "95.100", "88.221"),
    "US": ("23.32", "104.64", "184.24", "151.101", "104.16"),
    "HU": ("80.98", "81.182", "84.0", "84.2"),
    "SK": ("78.98", "85.248", "87.197", "95.102"),
    "SI": ("89.142", "89.212", "188.196", "188.197"),
    "IT": ("78.4", "79.0", "79.2", "79.4"),
    "PL": ("77.252", "78.8", "78.10", "79.162"),
}


@dataclass(frozen=True, slots=True)
class _Cdn:
    """Downloads the office pulls from a CDN whose edges sit in several countries.

    The egress is their return path: ACKs and requests, a small share of the ingress in small
    packets (web pages' requests carry cookies, so a browsing flow's packets average more)."""

    name: str
    #: mean ingress per interval at the weekday peak
    peak: float
    #: egress as a share of the ingress, and the bytes per egress packet, (low, high)
    ratio: tuple[float, float]
    packet: tuple[float, float]
    #: country -> the day its edges begin serving the office (later ones appear after learning)
    countries: dict[str, float]
    flows: float = 3.0


_TINY_CDNS = (
    # Video (streaming and recorded webinars): ISP-hosted caches and regional edges.
    _Cdn("video", 90 * MB, (0.012, 0.02), (52, 70), {"AT": 0, "DE": 0, "CZ": 0, "SI": 8, "IT": 16}),
    # Software updates: stores, browsers, antivirus signatures.
    _Cdn("updates", 30 * MB, (0.01, 0.016), (52, 66), {"NL": 0, "DE": 0, "AT": 0, "PL": 15}),
    # Web pages, images and scripts from the sites' CDNs.
    _Cdn("web", 60 * MB, (0.04, 0.08), (80, 220), dict(AT=0, DE=0, CH=0, NL=0, US=0, HU=9, SK=17)),
)


def _tiny_season(group: str, day: int) -> float:
    if day in TINY_CLOSED:
        return 0.03
    if day in TINY_AWAY:
        return 0.5
    return 1.0


def _tiny_mix(
    rng: random.Random, countries: dict[str, float], day: int
) -> tuple[list[str], list[float]]:
    """The CDN's mapping for the next hours: one country's edges serve nearly all of it.

    A country whose edges began serving within two days is the one half the time (a CDN that
    maps the office to a new edge cluster keeps it there for a while)."""
    active = [c for c, first in countries.items() if day >= first]
    new = [c for c in active if day - countries[c] < 2 and countries[c] > 0]
    primary = rng.choice(new) if new and rng.random() < 0.5 else rng.choice(active)
    weights = [1.0 if c == primary else rng.uniform(0.0, 0.08) for c in active]
    return active, weights


def _cdn_traffic(network: Network, cdns: Sequence[_Cdn], edges: dict[str, list[str]]) -> list[Flow]:
    """Ingress downloads from CDN edges and the office's return traffic to them."""
    rng = network.rng
    random_ = rng.random
    flows: list[Flow] = []
    mixes: dict[str, tuple[list[str], list[float]]] = {}
    redraw = dict.fromkeys((cdn.name for cdn in cdns), network.start)
    for i in range(int(network.days * DAY / INTERVAL)):
        t0 = network.start + i * INTERVAL
        day = int((t0 - network.start) // DAY)
        activity = diurnal(network.local_hour(t0))
        level = _tiny_season("office", day) * (0.05 if network.is_weekend(t0) else 1.0)
        for cdn in cdns:
            if t0 >= redraw[cdn.name]:
                mixes[cdn.name] = _tiny_mix(rng, cdn.countries, day)
                redraw[cdn.name] = t0 + rng.expovariate(1 / (4 * 3600.0))
            countries, weights = mixes[cdn.name]
            mean = cdn.peak * (0.01 + 0.99 * activity) * level
            parts = 1 + int(2 * cdn.flows * random_() * (0.2 + activity))
            total = mean * math.exp(rng.gauss(0.0, 0.6) - 0.18)
            for size in _split(rng, total, parts):
                (country,) = rng.choices(countries, weights)
                edge = rng.choice(edges[country])
                host = network.pick_host("office", False)
                end = t0 + 0.5 + random_() * (INTERVAL - 1.0)
                begin = end - random_() * 60.0
                port = 32768 + rng.randrange(28000)
                flows.append(
                    Flow(end, begin, edge, host, size, max(size // 1400, 1), 1, _TINY_EXPORTER,
                         6, 443, port)
                )  # fmt: skip
                back = max(int(size * rng.uniform(*cdn.ratio)), 40)
                packets = max(int(back / rng.uniform(*cdn.packet)), 1)
                flows.append(
                    Flow(end, begin, host, edge, back, packets, 1, _TINY_EXPORTER, 6, port, 443)
                )
    return flows


def _download(
    network: Network, edge: str, host: str, begin: float, end: float, total: float
) -> list[Flow]:
    """A large download from ``edge`` and its ACKs (1.5% of it, 60 bytes a packet) back."""
    rng = network.rng
    flows = _transfer(rng, edge, host, begin, end, total, exporter=_TINY_EXPORTER)
    flows = [f._replace(src_port=443, dst_port=f.src_port) for f in flows]
    for ack in _transfer(rng, host, edge, begin, end, 0.015 * total, exporter=_TINY_EXPORTER):
        flows.append(ack._replace(packets=max(ack.bytes // 60, 1)))
    return flows


def generate_tiny_office(seed: int = 1) -> Scenario:
    """A tiny office's three weeks (see the module docstring) with four incidents."""
    rng = random.Random(seed * 6007 + 5)
    start = TINY_START
    pools = {
        "saas": (
            _addresses(rng, ("13.107", "52.96", "40.99", "20.190"), 24, "US"),
            ["2603:1026::1", "2603:1026:c02::7", "2603:1027::3"],
        ),
        "meetings": (_addresses(rng, ("52.112", "52.113", "52.114"), 16, "US"), []),
        "at": (_addresses(rng, _TINY_BLOCKS["AT"], 12, "AT"), []),
        "de": (_addresses(rng, _TINY_BLOCKS["DE"], 8, "DE"), []),
        "sip": (_addresses(rng, ("80.120",), 2, "AT"), []),
    }
    _check(pools, {"saas": "US", "meetings": "US", "at": "AT", "de": "DE", "sip": "AT"})
    edges = {c: _addresses(rng, blocks, 10, c) for c, blocks in _TINY_BLOCKS.items()}
    _check({c: (a, []) for c, a in edges.items()}, {c: c for c in edges})
    hosts = {
        "office": (
            [f"192.168.1.{i}" for i in range(20, 31)],
            [f"fd00:1::{i:x}" for i in range(20, 28)],
        ),
        "servers": (["192.168.2.5", "192.168.2.6"], []),
    }
    nas, phones = hosts["servers"][0]
    network = Network(
        rng, start, TINY_DAYS, hosts, pools, _zone(1.0, TINY_DST), _tiny_season,
        dict.fromkeys(hosts, (_TINY_EXPORTER, 1)),
    )  # fmt: skip
    office = {"night": 0.01, "weekend": 0.05}
    streams = (
        # Video meetings: most of the office's own upstream, to the meeting service's relays.
        Stream("office", "meetings", 8 * MB, **office, sigma=0.8, burst=1 / 60, flows=2),
        Stream("office", "saas", 6 * MB, **office, ipv6=0.3, flows=3),
        Stream("office", "at", 1.5 * MB, **office, sigma=0.6, flows=2),
        Stream("office", "de", 1.0 * MB, **office, sigma=0.6, flows=1),
    )
    flows = _background(network, streams)
    # The phone system's calls to its SIP trunk (the servers group's other host).
    calls = _background(network, (Stream("servers", "sip", 4 * MB, **office, flows=1),))
    flows += [f._replace(src=phones) for f in calls]
    flows += _cdn_traffic(network, _TINY_CDNS, edges)
    expected: list[ExpectedAlert] = []
    traps: list[Trap] = []

    # -- benign: nightly backup, an update burst, a laptop back from travel ------------------
    backup = [f"88.99.{rng.randrange(1, 250)}.{k}" for k in (21, 22)]
    _check({"backup": (backup, [])}, {"backup": "DE"})
    for day in range(TINY_DAYS):
        # At 01:00: what changed on the day before (Monday's backup holds the quiet Sunday).
        begin = network.local(day, 1 + rng.uniform(0, 0.1))
        worked = not network.is_weekend(begin - DAY) and day - 1 not in (-1, *TINY_CLOSED)
        size = rng.uniform(0.3, 1.2) * GB if worked else rng.uniform(20, 80) * MB
        size *= 0.6 if day - 1 in TINY_AWAY else 1.0
        flows += network.transfer(nas, backup[day % 2], begin, begin + 5400, size)
        traps.append(Trap("nas-backup", begin, begin + 5400))
    # Back after Easter: a feature update pulled by most machines in the morning, partly from
    # edges in a country the update CDN had not used for the office before (its ACKs are egress).
    updaters = rng.sample(hosts["office"][0], 8)
    for host in updaters:
        begin = network.local(TINY_BACK, rng.uniform(8.5, 10.5))
        duration = rng.uniform(20, 60) * 60
        edge = rng.choice(edges[rng.choice(("PL", "PL", "NL", "DE", "AT"))])
        flows += _download(network, edge, host, begin, begin + duration, rng.uniform(3, 5) * GB)
        traps.append(Trap("update-burst", begin, begin + duration))
    # A laptop back from a week abroad catches up: its sync client uploads the week's files to
    # the office's cloud storage (a network of it the office has not used), then it updates.
    laptop = hosts["office"][0][-1]
    begin = network.local(TINY_BACK, rng.uniform(9, 10))
    sync = _addresses(rng, ("13.107", "52.96", "40.99", "20.190"), 1, "US")[0]
    size = rng.uniform(300, 700) * MB
    flows += network.transfer(laptop, sync, begin, begin + rng.uniform(30, 50) * 60, size)
    flows += _download(network, rng.choice(edges["NL"]), laptop, begin + 3600, begin + 7200, 4 * GB)
    traps.append(Trap("back-from-travel", begin, begin + 7200))

    # -- incidents --------------------------------------------------------------------------
    # A laptop sends 50-80 MB to a VPS in a country the office never used, in fifteen minutes.
    src = network.pick_host("office", False)
    dst = _addresses(rng, ("77.34", "78.36", "79.104"), 1, "RU")[0]
    begin = network.local(8, rng.uniform(10, 16))
    burst = network.transfer(src, dst, begin, begin + 900, rng.uniform(50, 80) * MB)
    expected.append(
        _expect("small-burst", UNEXPECTED, "office", "RU", burst, TINY_WINDOWS[0][1], src, dst,
                windows=TINY_WINDOWS)
    )  # fmt: skip
    flows += burst
    # A desktop ships files to a VPS in a new country in pieces, 200-300 MB a day for three days.
    src = network.pick_host("office", False)
    dst = _addresses(rng, ("87.126", "94.155", "95.42"), 1, "BG")[0]
    begin = network.local(TINY_BACK + 1, rng.uniform(0, 24))
    daily = rng.uniform(200, 300) * MB
    drip = network.transfer(src, dst, begin, begin + 3 * DAY, 3 * daily, step=300.0)
    expected.append(
        _expect("vps-drip", UNEXPECTED, "office", "BG", drip, TINY_WINDOWS[0][1], src, dst,
                windows=TINY_WINDOWS)
    )  # fmt: skip
    flows += drip
    # Over Easter, at night, the NAS uploads to a fresh network of a hosting company in Germany
    # (its backup goes to another of that company's networks).
    dst = _addresses(rng, ("49.12", "116.203", "128.140"), 1, "DE")[0]
    begin = network.local(12, rng.uniform(2, 4))
    fresh = network.transfer(nas, dst, begin, begin + 1800, rng.uniform(500, 800) * MB)
    expected.append(
        _expect("fresh-vps", NEW_DESTINATION, "servers", "DE", fresh,
                TINY_NEW_DESTINATION_FLOOR, nas, dst)
    )  # fmt: skip
    flows += fresh
    # A desktop uploads 300-500 MB to a cloud in China within half an hour.
    src = network.pick_host("office", False)
    dst = rng.choice(("47.100.23.45", "114.114.114.114", "220.181.38.148"))
    begin = network.local(18, rng.uniform(10, 16))
    upload = network.transfer(src, dst, begin, begin + 1800, rng.uniform(300, 500) * MB)
    expected.append(
        _expect("cn-upload", UNEXPECTED, "office", "CN", upload, UNEXPECTED_MIN_BYTES, src, dst)
    )
    flows += upload
    return _finish(seed, network, flows, expected, traps, TINY_OFFICE_CONFIG)


# -- a research institute: an HPC cluster seen by two routers, long-lived flows -----------------

#: AWS ``ip-ranges.json`` excerpt (four regions) the institute's configuration maps regions with
INSTITUTE_AWS_RANGES = Path(__file__).resolve().parent / "fixtures" / "institute-aws-ranges.json"

INSTITUTE_CONFIG = f"""\
[networks]
local = ["10.0.0.0/8", "fd00::/8"]

# the HPC cluster's login and data-transfer nodes (behind the core router and the edge)
[[groups]]
name = "hpc"
sources = ["10.50.0.0/16", "fd00:50::/32"]
expected_countries = ["DE", "CH", "NL", "FR", "GB", "IT", "US"]
expected_regions = ["aws/eu-central-1", "aws/us-east-1"]

# lab workstations and laptops: countries learned
[[groups]]
name = "labs"
sources = ["10.51.0.0/16", "fd00:51::/32"]

# administration, behind its own firewall
[[groups]]
name = "admin"
sources = ["10.52.0.0/16"]
expected_countries = ["DE", "US", "IE", "NL"]

[[geo.region_maps]]
format = "aws"
path = "{INSTITUTE_AWS_RANGES}"

[detection]
interval = "5m"
learning = "7d"
"""

#: Monday 2 March 2026; the institute is in Germany (UTC+1, UTC+2 from 29 March, day 27)
INSTITUTE_START = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
#: the cluster is down for maintenance on Saturday 21 and Sunday 22 March; Monday catches up
MAINTENANCE = (19, 20)
CATCH_UP_DAY = 21
#: the edge router exports every group's traffic with a 60 s active timeout; the core router
#: exports the cluster's traffic again, with a 30 min active timeout and its clock 4 min behind;
#: the administration's firewall exports with a 30 min active timeout
_INSTITUTE_EDGE = "10.255.9.2"
_INSTITUTE_CORE = "10.255.9.1"
_INSTITUTE_FIREWALL = "10.255.9.3"
ACTIVE_TIMEOUT = 1800.0
CORE_SKEW = 240.0
#: a week's window, where the week-long drip (under the hour's and the day's floors) crosses
#: 1 GB: the default third window
INSTITUTE_WEEK = ((7 * DAY, 1 * GB),)
#: incidents a person would act on that stay under the default floors (they count against
#: recall; the scenario tests do not require them): none since the default week window
BELOW_DEFAULT_FLOORS: dict[str, tuple[str, ...]] = {"institute": ()}
#: benign traffic the defaults page on, for open weaknesses (README, "How detection works"):
#: (alertname, group, country, or "" for any)
KNOWN_FALSE_PAGES = {
    "institute": (
        # Grid transfers: GBs within the hour to research networks the cluster had not used
        # this month, in listed countries (a new collaborator's bulk, after its test transfer
        # was judged routine, is that site's and does not page). The group's learned bar for
        # fresh address blocks goes to 5 GB an hour at most (a fresh VPS must still page), and
        # most of these carry more within the hour, or 5 GB within the day.
        (NEW_DESTINATION, "hpc", ""),
        # The double export: 40-70 MB to Japan counted twice crosses the 100 MB floor.
        (UNEXPECTED, "hpc", "JP"),
    )
}
#: research networks per country: blocks of national research networks and their IPv6
_RESEARCH = {
    "DE": (("141.2", "141.20", "141.30", "141.44", "134.2", "134.60", "129.206"), "2001:638"),
    "CH": (("129.132", "130.59", "188.184", "137.138"), "2001:1458"),
    "NL": (("145.100", "130.37", "131.174"), "2001:610"),
    "FR": (("134.158", "193.48", "129.175"), "2001:660"),
    "GB": (("130.246", "128.40", "129.215"), "2001:630"),
    "IT": (("131.154", "90.147"), "2001:760"),
    "US": (("131.225", "130.199", "128.55", "128.211"), "2001:400"),
}
#: fresh research networks: the sites that begin collaborating after learning, one a week
_NEW_SITES = (("DE", "134.245"), ("NL", "131.211"), ("IT", "193.204"), ("GB", "138.253"))
#: the provider's regions: IPv4 blocks, and the IPv6 prefix with the third group's bound
#: (2a05:d014::/36 and 2406:da18::/36: below 0x1000; 2600:1f18::/33: below 0x8000)
_AWS = {
    "eu-central-1": (("3.120", "3.121", "52.28", "35.156"), "2a05:d014", 0x1000),
    "us-east-1": (("3.80", "3.81", "54.80", "34.192"), "2600:1f18", 0x8000),
    "ap-southeast-1": (("13.228", "13.229", "18.136", "52.74"), "2406:da18", 0x1000),
}


def _institute_season(group: str, day: int) -> float:
    return 0.02 if group == "hpc" and day in MAINTENANCE else 1.0


def _lumps(flows: Sequence[Flow], exporter: str, skew: float = 0.0) -> list[Flow]:
    """One connection's records as an exporter with a 30 min active timeout reports them.

    ``flows`` are the connection's records with a 60 s timeout; each of the returned ones
    carries up to half an hour of them, stamped ``skew`` seconds behind."""
    out: list[Flow] = []
    first = flows[0]
    began, size, packets = first.start, 0, 0
    for k, flow in enumerate(flows):
        size += flow.bytes
        packets += flow.packets
        if flow.end >= began + ACTIVE_TIMEOUT or k == len(flows) - 1:
            out.append(
                flow._replace(start=began - skew, end=flow.end - skew, bytes=size,
                              packets=packets, exporter=exporter)
            )  # fmt: skip
            began, size, packets = flow.end, 0, 0
    return out


def _sites(rng: random.Random, country: str, count: int) -> list[str]:
    """``count`` addresses in ``country``, each in its own /16 (storage endpoints of a grid)."""
    chosen: dict[str, str] = {}
    while len(chosen) < count:
        batch = [
            f"{rng.choice(_PUBLIC_FIRST_OCTETS)}.{rng.randrange(256)}.{rng.randrange(256)}."
            f"{rng.randrange(1, 255)}"
            for _ in range(400)
        ]
        for address, found in zip(batch, iptocc.country_code(batch), strict=True):
            block = address.rsplit(".", 2)[0]
            if found == country and block not in chosen and len(chosen) < count:
                chosen[block] = address
    return list(chosen.values())


def generate_institute(seed: int = 1) -> Scenario:
    """A research institute's month (see the module docstring) with five incidents."""
    rng = random.Random(seed * 1299709 + 6)
    start = INSTITUTE_START
    pools: dict[str, tuple[list[str], list[str]]] = {}
    for country, (blocks, prefix6) in _RESEARCH.items():
        pools[country.lower()] = (_addresses(rng, blocks, 12, country), _v6(rng, prefix6, 6))
    for region, (blocks, prefix6, bound) in _AWS.items():
        v6 = [
            f"{prefix6}:{rng.randrange(1, bound):x}::{rng.randrange(1, 0xFFFF):x}"
            for _ in range(12)
        ]
        pools[region] = (_addresses(rng, blocks, 40, "US"), v6)
    pools["saas"] = (
        _addresses(rng, _SAAS_US, 60, "US"),
        ["2603:1026::1", "2603:1026:c02::7", "2603:1027::3"],
    )
    pools["de-web"] = (_addresses(rng, ("5.9", "88.99", "141.20", "78.46"), 30, "DE"), [])
    pools["ie"] = (["87.198.1.1", "193.1.193.64", "89.101.160.5"], [])
    _check(pools, {c.lower(): c for c in _RESEARCH} | {"de-web": "DE", "ie": "IE"})
    hosts = {
        "hpc": _hosts(rng, "10.50", 60, "fd00:50"),
        "labs": _hosts(rng, "10.51", 400, "fd00:51"),
        "admin": _hosts(rng, "10.52", 80),
    }
    network = Network(
        rng, start, DAYS, hosts, pools, _CET, _institute_season,
        {"hpc": (_INSTITUTE_EDGE, 1), "labs": (_INSTITUTE_EDGE, 1),
         "admin": (_INSTITUTE_FIREWALL, 1)},
    )  # fmt: skip
    research = {"night": 0.5, "weekend": 0.7, "ipv6": 0.6}
    office = {"night": 0.05, "weekend": 0.1}
    streams = (
        Stream("hpc", "de", 250 * MB, **research, flows=5),
        Stream("hpc", "ch", 120 * MB, **research),
        Stream("hpc", "us", 150 * MB, **research),
        Stream("hpc", "gb", 80 * MB, **research),
        Stream("hpc", "nl", 60 * MB, **research),
        Stream("hpc", "fr", 50 * MB, **research, flows=2),
        Stream("hpc", "it", 40 * MB, **research, flows=2),
        Stream("hpc", "eu-central-1", 100 * MB, 0.4, 0.6, ipv6=0.3),
        Stream("hpc", "us-east-1", 60 * MB, 0.4, 0.6, ipv6=0.3, flows=2),
        Stream("labs", "saas", 150 * MB, **office, ipv6=0.3, flows=5),
        Stream("labs", "de-web", 80 * MB, **office, ipv6=0.0),
        Stream("labs", "eu-central-1", 40 * MB, **office, ipv6=0.3),
        Stream("labs", "de", 30 * MB, **office, ipv6=0.5),
        Stream("labs", "gb", 15 * MB, **office, flows=1),
        Stream("labs", "nl", 15 * MB, **office, flows=1),
        Stream("labs", "ch", 10 * MB, **office, flows=1),
        Stream("admin", "saas", 50 * MB, 0.03, 0.05, flows=2),
        Stream("admin", "de-web", 20 * MB, 0.03, 0.05),
        Stream("admin", "ie", 10 * MB, 0.03, 0.05, flows=1),
        Stream("admin", "nl", 5 * MB, 0.03, 0.05, flows=1),
    )
    flows = _background(network, streams)
    hpc_hosts = set(hosts["hpc"][0] + hosts["hpc"][1])
    # The core router sees the cluster's short flows too: the same records, its clock behind.
    flows += [
        f._replace(start=f.start - CORE_SKEW, end=f.end - CORE_SKEW, exporter=_INSTITUTE_CORE)
        for f in flows
        if f.src in hpc_hosts
    ]
    expected: list[ExpectedAlert] = []
    traps: list[Trap] = []

    def connection(src: str, dst: str, begin: float, end: float, total: float) -> list[Flow]:
        """One long-lived connection: the edge's records, and the core's (cluster) or the
        firewall's (administration) every half hour."""
        edge = network.transfer(src, dst, begin, end, total)
        if src in hpc_hosts:
            return edge + _lumps(edge, _INSTITUTE_CORE, CORE_SKEW)
        if _group_of(network, src) == "admin":
            return _lumps(edge, _INSTITUTE_FIREWALL)
        return edge

    def dtn(v6: bool = True) -> str:
        """A data-transfer node of the cluster (IPv6 mostly)."""
        v4, v6_hosts = hosts["hpc"]
        return rng.choice(v6_hosts[:8] if v6 else v4[:8])

    # -- benign ---------------------------------------------------------------------------
    # Grid transfers at any hour to storage endpoints of ~70 sites in the collaboration's
    # countries, a few used daily, most now and then (new networks to the cluster every day).
    sites = [s for country in _RESEARCH for s in _sites(rng, country, 10)]
    rng.shuffle(sites)
    t = start
    while t < start + DAYS * DAY:
        t += rng.expovariate(8.0 / DAY)
        if int((t - start) // DAY) in MAINTENANCE:
            continue
        site = sites[min(int(rng.random() ** -1.2) - 1, len(sites) - 1)]
        size = 3 * GB * math.exp(rng.gauss(0, 1.0))
        duration = rng.uniform(20, 120) * 60
        for _ in range(rng.choice((1, 2, 4))):
            flows += connection(dtn(rng.random() < 0.3), site, t, t + duration, size / 2)
        traps.append(Trap("grid-transfer", t, t + duration))
    # The nightly archive copy to the national computing centre (none over the maintenance
    # weekend; Monday's holds three days' data and starts with the cluster).
    archive = _addresses(rng, ("141.52",), 1, "DE")[0]
    for day in range(DAYS):
        if day in MAINTENANCE:
            continue
        begin = network.local(day, 2 + rng.uniform(0, 0.2))
        size = rng.uniform(15, 40) * GB * (3 if day == CATCH_UP_DAY else 1)
        hours = 4 if day == CATCH_UP_DAY else 3
        for stream in range(2):
            flows += connection(dtn(stream == 0), archive, begin, begin + hours * 3600, size / 2)
        traps.append(Trap("archive", begin, begin + hours * 3600))
    # Monday after the maintenance: the grid's queued transfers run in the morning.
    for _ in range(10):
        begin = network.local(CATCH_UP_DAY, rng.uniform(6, 9))
        duration = rng.uniform(40, 120) * 60
        site = rng.choice(sites[:20])
        flows += connection(dtn(), site, begin, begin + duration, rng.uniform(3, 15) * GB)
        traps.append(Trap("catch-up", begin, begin + duration))
    # A new collaborating site each week after learning: a test transfer, then the bulk.
    for week, (country, block) in enumerate(_NEW_SITES[:3]):
        day = 9 + 7 * week
        endpoints = _addresses(rng, (block,), 2, country)
        begin = network.local(day, rng.uniform(10, 12))
        flows += connection(dtn(), endpoints[0], begin, begin + 1200, rng.uniform(1, 3) * GB)
        begin = network.local(day, rng.uniform(14, 18))
        hours = rng.uniform(6, 10)
        size = rng.uniform(40, 120) * GB
        for k in range(4):
            flows += connection(dtn(), endpoints[k % 2], begin + k, begin + hours * 3600, size / 4)
        traps.append(Trap("new-collaborator", begin - 6 * 3600, begin + hours * 3600))
    # Now and then a few tens of MB to a collaborator in Japan (not a listed country).
    jp = _addresses(rng, ("133.11", "130.54"), 3, "JP")
    for day in (11, 18, 25):
        begin = network.local(day, rng.uniform(9, 17))
        flows += connection(dtn(False), jp[day % 3], begin, begin + 600, rng.uniform(40, 70) * MB)
        traps.append(Trap("jp-share", begin, begin + 600))
    # The administration's nightly database dump to its hosting company, one connection.
    dump = _addresses(rng, ("88.99",), 1, "DE")[0]
    for day in range(DAYS):
        begin = network.local(day, 22 + rng.uniform(0, 0.3))
        if network.is_weekend(begin):
            continue
        flows += connection(hosts["admin"][0][0], dump, begin, begin + 7200,
                            rng.uniform(1, 3) * GB)  # fmt: skip
        traps.append(Trap("admin-dump", begin, begin + 7200))

    # -- incidents --------------------------------------------------------------------------
    # Model weights from the cluster to the cloud it uses, in a region abroad it never uses
    # (registered in the US like all of the provider's addresses): 20-40 GB in 90 minutes.
    src = dtn()
    dst = rng.choice(pools["ap-southeast-1"][1])
    begin = network.local(10, rng.uniform(13, 17))
    edge = network.transfer(src, dst, begin, begin + 5400, rng.uniform(20, 40) * GB)
    expected.append(
        _expect("hpc-region", UNEXPECTED, "hpc", "US", edge, UNEXPECTED_MIN_BYTES, src, dst)
    )
    flows += edge + _lumps(edge, _INSTITUTE_CORE, CORE_SKEW)
    # A workstation copies 1.5-3 GB in an hour to a bucket in that region (the lab's cloud
    # is the same provider's Frankfurt region).
    src = network.pick_host("labs", False)
    dst = rng.choice(pools["ap-southeast-1"][0])
    begin = network.local(14, rng.uniform(19, 23))
    bucket = network.transfer(src, dst, begin, begin + 3600, rng.uniform(1.5, 3) * GB)
    expected.append(
        _expect("labs-bucket", NEW_DESTINATION, "labs", "US", bucket, NEW_DESTINATION_FLOOR,
                src, dst)
    )  # fmt: skip
    flows += bucket
    # A workstation drips 8-12 MB an hour to a VPS in Russia for a week.
    src = network.pick_host("labs", False)
    dst = _addresses(rng, ("77.34", "78.36", "79.104"), 1, "RU")[0]
    begin = network.local(15, rng.uniform(0, 24))
    hourly = rng.uniform(8, 12) * MB
    drip = network.transfer(src, dst, begin, begin + 7 * DAY, 7 * 24 * hourly, step=300.0)
    expected.append(
        _expect("week-drip", UNEXPECTED, "labs", "RU", drip, INSTITUTE_WEEK[0][1], src, dst,
                windows=INSTITUTE_WEEK)
    )  # fmt: skip
    flows += drip
    # An administration PC sends 1.2-2 GB to China over one connection in four hours; its
    # firewall reports it every half hour.
    src = network.pick_host("admin", False)
    dst = rng.choice(("47.100.23.45", "114.114.114.114", "220.181.38.148"))
    begin = network.local(17, rng.uniform(9, 14))
    long = _lumps(
        network.transfer(src, dst, begin, begin + 4 * 3600, rng.uniform(1.2, 2) * GB),
        _INSTITUTE_FIREWALL,
    )
    expected.append(
        _expect("admin-long", UNEXPECTED, "admin", "CN", long, UNEXPECTED_MIN_BYTES, src, dst)
    )
    flows += long
    # In Monday's catch-up, a cluster node ships 8-15 GB in an hour to a fresh VPS in Germany.
    src = dtn(False)
    dst = _addresses(rng, ("49.12", "116.203", "5.9"), 1, "DE")[0]
    begin = network.local(CATCH_UP_DAY, rng.uniform(7, 9))
    edge = network.transfer(src, dst, begin, begin + 3600, rng.uniform(8, 15) * GB)
    expected.append(
        _expect("catch-up-vps", NEW_DESTINATION, "hpc", "DE", edge, NEW_DESTINATION_FLOOR,
                src, dst)
    )  # fmt: skip
    flows += edge + _lumps(edge, _INSTITUTE_CORE, CORE_SKEW)
    # The records in the order the collector receives them: the core's 4 minutes late.
    flows.sort(key=lambda f: f.end + (CORE_SKEW if f.exporter == _INSTITUTE_CORE else 0.0))
    expected.sort(key=lambda e: e.crossing)
    return Scenario(seed, network.start, network.days, flows, expected, traps, INSTITUTE_CONFIG)


GENERATORS: dict[str, Callable[[int], Scenario]] = {
    "saas": generate_saas,
    "campus": generate_campus,
    "small-office": generate_office,
    "enterprise": generate_enterprise,
    "tiny-office": generate_tiny_office,
    "institute": generate_institute,
}
