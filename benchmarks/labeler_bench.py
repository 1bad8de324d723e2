"""Micro-benchmark of destination labelling: embedded-only vs mmdb + region map.

Labelers look every address up afresh; the engine caches their answers per address, so a
known destination costs one dict hit (measured here too) and only new ones reach a labeler.

Run: ``python benchmarks/labeler_bench.py`` (needs mmdb-writer, from the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import random
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from mmdb_writer import MMDBWriter
from netaddr import IPSet

from egressd.config import GeoConfig, RegionMapConfig
from egressd.enrich.labeler import CompositeLabeler, build_labeler

AWS_REGIONS = [
    "us-east-1", "us-east-2", "us-west-1", "us-west-2", "eu-west-1", "eu-west-2", "eu-central-1",
    "ap-northeast-1", "ap-southeast-1", "ap-south-1", "sa-east-1", "ca-central-1", "cn-north-1",
    "me-south-1", "af-south-1", "GLOBAL",
]  # fmt: skip
COUNTRIES = ["US", "GB", "DE", "FR", "CN", "JP", "IE", "NL", "SG", "BR", "IN", "AU", "CA", "RU"]


def _random_v4(rng: random.Random) -> int:
    while True:
        value = rng.getrandbits(32)
        if 1 << 24 <= value < 224 << 24 and value >> 24 not in (10, 127):
            return value


def write_aws(path: Path, rng: random.Random, v4: int, v6: int) -> None:
    """An ip-ranges.json shaped like AWS's: many lengths, nested prefixes, repeated services."""
    prefixes = []
    for _ in range(v4):
        plen = rng.choice([11, 12, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 24, 24, 26, 27, 28])
        net = ipaddress.ip_network((_random_v4(rng), plen), strict=False)
        region = rng.choice(AWS_REGIONS)
        for service in rng.sample(["AMAZON", "EC2", "S3", "ROUTE53"], rng.randint(1, 2)):
            prefixes.append({"ip_prefix": str(net), "region": region, "service": service})
    v6_prefixes = []
    for _ in range(v6):
        plen = rng.choice([32, 36, 40, 44, 48, 56, 64])
        net = ipaddress.ip_network(((0x2600 << 112) | rng.getrandbits(112), plen), strict=False)
        v6_prefixes.append(
            {"ipv6_prefix": str(net), "region": rng.choice(AWS_REGIONS), "service": "AMAZON"}
        )
    doc = {"syncToken": "1709251234", "prefixes": prefixes, "ipv6_prefixes": v6_prefixes}
    path.write_text(json.dumps(doc))


def write_mmdbs(country: Path, asn: Path, rng: random.Random, networks: int) -> None:
    c_writer = MMDBWriter(ip_version=6, database_type="GeoLite2-Country", ipv4_compatible=True)
    a_writer = MMDBWriter(
        ip_version=6, database_type="GeoLite2-ASN", ipv4_compatible=True, int_type="u32"
    )
    by_country: dict[str, list[str]] = {c: [] for c in COUNTRIES}
    by_asn: dict[int, list[str]] = {}
    for _ in range(networks):
        cidr = str(ipaddress.ip_network((_random_v4(rng), rng.choice([16, 18, 20, 22, 24])), False))
        by_country[rng.choice(COUNTRIES)].append(cidr)
        by_asn.setdefault(rng.randint(1, 4000), []).append(cidr)
    for code, cidrs in by_country.items():
        c_writer.insert_network(
            IPSet(cidrs), {"country": {"iso_code": code, "names": {"en": code}}}
        )
    for number, cidrs in by_asn.items():
        a_writer.insert_network(
            IPSet(cidrs),
            {"autonomous_system_number": number, "autonomous_system_organization": f"AS-{number}"},
        )
    c_writer.to_db_file(str(country))
    a_writer.to_db_file(str(asn))


def rate(fn: Callable[[], int], min_time: float = 0.5) -> float:
    """Lookups per second of ``fn`` (which returns how many lookups it did), best of 3."""
    best = 0.0
    for _ in range(3):
        done = 0
        start = time.perf_counter()
        while True:
            done += fn()
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        best = max(best, done / elapsed)
    return best


def bench(labeler: CompositeLabeler, addresses: list[str]) -> float:
    """Lookups per second of ``labeler`` itself (what an engine cache miss costs)."""
    label = labeler.label

    def run() -> int:
        for address in addresses:
            label(address)
        return len(addresses)

    return rate(run)


def cache_policies(keys: list[str]) -> tuple[float, float]:
    """Hit cost of the engine's dict cache (clear when full) vs an OrderedDict LRU."""
    plain: dict[str, int] = dict.fromkeys(keys, 1)
    lru: OrderedDict[str, int] = OrderedDict.fromkeys(keys, 1)

    def plain_hits() -> int:
        get = plain.get
        for key in keys:
            get(key)
        return len(keys)

    def lru_hits() -> int:
        get, move = lru.get, lru.move_to_end
        for key in keys:
            if get(key) is not None:
                move(key)
        return len(keys)

    return rate(plain_hits), rate(lru_hits)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--prefixes", type=int, default=5600, help="IPv4 prefixes in the AWS file")
    parser.add_argument("--v6-prefixes", type=int, default=1400)
    parser.add_argument("--mmdb-networks", type=int, default=20_000)
    parser.add_argument(
        "--destinations", type=int, default=5_000, help="distinct known destinations (cache hits)"
    )
    args = parser.parse_args()
    rng = random.Random(7)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        aws, country, asn = tmp_path / "ip-ranges.json", tmp_path / "c.mmdb", tmp_path / "a.mmdb"
        t0 = time.perf_counter()
        write_aws(aws, rng, args.prefixes, args.v6_prefixes)
        write_mmdbs(country, asn, rng, args.mmdb_networks)
        print(f"generated data in {time.perf_counter() - t0:.1f}s", file=sys.stderr)

        # a destination mix like real egress: mostly IPv4, some IPv6, some in cloud ranges
        def address() -> str:
            if rng.random() < 0.15:
                return str(ipaddress.IPv6Address((0x2600 << 112) | rng.getrandbits(112)))
            return str(ipaddress.IPv4Address(_random_v4(rng)))

        warm = [address() for _ in range(args.destinations)]
        cold = [address() for _ in range(50_000)]

        t0 = time.perf_counter()
        full_geo = GeoConfig(
            country_mmdb=country,
            asn_mmdb=asn,
            region_maps=(RegionMapConfig(format="aws", path=aws),),
            cache_size=200_000,
        )
        full = build_labeler(full_geo)
        load_s = time.perf_counter() - t0
        embedded = build_labeler(GeoConfig(cache_size=200_000))
        region_map = full._region_maps[0]
        print(
            f"AWS-style map: {region_map.prefix_count} distinct prefixes "
            f"({args.prefixes} v4 + {args.v6_prefixes} v6 generated, services repeated), "
            f"{len(region_map.labels)} labels; mmdb {args.mmdb_networks} networks; "
            f"labeler built in {load_s * 1000:.0f} ms"
        )
        e_rate = bench(embedded, cold)
        f_rate = bench(full, cold)
        parsed = [(4 if ":" not in a else 6, int(ipaddress.ip_address(a))) for a in cold]

        def region_only() -> int:
            lookup = region_map.lookup
            for version, value in parsed:
                lookup(version, value)
            return len(parsed)

        r_rate = rate(region_only)
        plain, lru = cache_policies(warm)

    print(f"embedded only:         {e_rate:12,.0f} lookups/s")
    print(f"mmdb + ASN + AWS map:  {f_rate:12,.0f} lookups/s  ({f_rate / e_rate:.2f}x embedded)")
    print(f"region map longest-prefix lookup alone: {r_rate:,.0f}/s")
    print(
        f"engine cache hit (known destination): dict {plain:,.0f}/s vs OrderedDict LRU {lru:,.0f}/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
