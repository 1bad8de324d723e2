"""Destination intelligence end to end: geo files reloaded by the running daemon, and
replayed alerts labelled and judged by cloud region and ASN.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import iptocc
import orjson
import pytest

from egressd.app import Daemon
from egressd.config import Config, parse_config
from egressd.sources.netflow import NetflowSource
from tests.enrich_mmdb_factory import maxmind_asn, maxmind_country, write_mmdb
from tests.integration_support import research_config
from tests.netflow_builders import data_set, ipfix_datagram, template_set

if TYPE_CHECKING:
    from egressd.sources.netflow_worker import Worker

REPO = Path(__file__).resolve().parents[1]
T0 = 1_773_064_800.0  # 2026-03-09T14:00:00Z, on an interval boundary
GB = 1_000_000_000
MB = 1_000_000

# -- data files written in the vendors' formats ---------------------------------------------


def write_aws(path: Path, regions: dict[str, str], sync_token: int = 1_700_000_000) -> Path:
    """An ``ip-ranges.json`` as AWS publishes it: each prefix once per service, a GLOBAL
    entry overlapping real regions, IPv6 prefixes alongside; written atomically."""
    prefixes: list[dict[str, str]] = []
    for cidr, region in regions.items():
        for service in ("AMAZON", "EC2"):
            prefixes.append(
                {
                    "ip_prefix": cidr,
                    "region": region,
                    "service": service,
                    "network_border_group": region,
                }
            )
    prefixes.append(
        {
            "ip_prefix": "18.0.0.0/8",
            "region": "GLOBAL",
            "service": "CLOUDFRONT",
            "network_border_group": "GLOBAL",
        }
    )
    document = {
        "syncToken": str(sync_token),
        "createDate": time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime(sync_token)),
        "prefixes": prefixes,
        "ipv6_prefixes": [
            {
                "ipv6_prefix": "2a05:d000::/25",
                "region": "eu-west-1",
                "service": "AMAZON",
                "network_border_group": "eu-west-1",
            }
        ],
    }
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(orjson.dumps(document))
    os.replace(tmp, path)
    return path


def replace_atomically(path: Path, write: Any) -> None:
    """Write the new version beside ``path`` and rename it over (as geoipupdate does)."""
    tmp = path.with_name(path.name + ".new")
    write(tmp)
    os.replace(tmp, path)


# -- (a) the running daemon picks up replaced files -----------------------------------------

DESTINATION = "18.130.0.10"
SOURCE = "10.20.0.17"
FIELDS = [(8, 4), (12, 4), (1, 8), (2, 8), (150, 4), (151, 4)]


def ipfix(records: list[tuple[str, str, int, float]]) -> bytes:
    """An IPFIX datagram (template + data) with one row per (src, dst, bytes, end time)."""
    rows: list[list[int | bytes]] = [
        [socket.inet_aton(src), socket.inet_aton(dst), size, 1, int(end) - 10, int(end)]
        for src, dst, size, end in records
    ]
    sets = [template_set({300: FIELDS}, ipfix=True), data_set(300, FIELDS, rows)]
    return ipfix_datagram(sets, export_secs=int(T0))


async def wait_for(predicate: Any, timeout: float, what: str) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
    assert predicate(), what


def write_country(path: Path, iso: str, epoch: int) -> None:
    write_mmdb(path, "GeoLite2-Country", {"18.130.0.0/16": maxmind_country(iso)}, build_epoch=epoch)


def write_asn(path: Path, asn: int, org: str, epoch: int) -> None:
    write_mmdb(path, "GeoLite2-ASN", {"18.130.0.0/16": maxmind_asn(asn, org)}, build_epoch=epoch)


def daemon_config(tmp_path: Path, watch_interval: str) -> str:
    return research_config(
        state=str(tmp_path / "state.json"),
        http="127.0.0.1:0",
        netflow="127.0.0.1:0",
        tail=f"""
[geo]
country_mmdb = "{tmp_path / "country.mmdb"}"
asn_mmdb = "{tmp_path / "asn.mmdb"}"
watch_interval = "{watch_interval}"

[[geo.region_maps]]
format = "aws"
path = "{tmp_path / "ip-ranges.json"}"
""",
    )


def metric(text: str, name: str, labels: str = "") -> float | None:
    """Value of one sample in Prometheus text exposition, None when absent."""
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_daemon_reloads_replaced_geo_files_and_keeps_baselines(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    country, asn, aws = (
        tmp_path / "country.mmdb",
        tmp_path / "asn.mmdb",
        tmp_path / "ip-ranges.json",
    )
    write_country(country, "GB", 1_700_000_000)
    write_asn(asn, 16509, "AMAZON-02", 1_700_000_000)
    write_aws(aws, {"18.130.0.0/16": "eu-west-2"})
    watch = 1.0
    daemon = Daemon(parse_config(daemon_config(tmp_path, "1s")), environ={})
    task = asyncio.create_task(daemon.run())
    try:
        await wait_for(lambda: daemon.readiness()[0], 10, "daemon ready")
        netflow = daemon.sources[0]
        assert isinstance(netflow, NetflowSource) and netflow.bound is not None
        collector = netflow.bound
        assert daemon.http.bound is not None
        base = f"http://127.0.0.1:{daemon.http.bound[1]}"
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

        async def send(records: list[tuple[str, str, int, float]]) -> None:
            before = daemon.engine.stats.records
            sock.sendto(ipfix(records), collector)
            await wait_for(
                lambda: daemon.engine.stats.records == before + len(records), 5, "records in"
            )

        async with aiohttp.ClientSession() as http:

            async def get(path: str) -> Any:
                async with http.get(base + path) as response:
                    assert response.status == 200
                    if path == "/metrics":
                        return await response.text()
                    return await response.json()

            # Before: GB, AWS eu-west-2, AS16509 — an expected country, so no page; the
            # interval closes (the T0+400 flow moves the watermark past T0+360) into a baseline.
            await send([(SOURCE, DESTINATION, GB, T0 + 60), (SOURCE, DESTINATION, MB, T0 + 400)])
            old_key = "GB|aws/eu-west-2|16509"
            baselines = await get("/api/v1/baselines")
            assert [(b["group"], b["destination"]) for b in baselines] == [("research", old_key)]
            assert await get("/api/v1/alerts") == []
            text = await get("/metrics")
            database = 'database="mmdb:GeoLite2-Country"'
            assert metric(text, "egressd_geo_database_build_timestamp_seconds", database) == 1.7e9
            assert metric(
                text,
                "egressd_geo_database_build_timestamp_seconds",
                'database="aws:ip-ranges.json"',
            ) == pytest.approx(1.7e9)
            assert metric(text, "egressd_geo_reloads_total") == 0

            # Replace all three files by rename: the destination now belongs to CN / AS4134
            # and to AWS cn-north-1.
            replace_atomically(country, lambda p: write_country(p, "CN", 1_710_000_000))
            replace_atomically(
                asn, lambda p: write_asn(p, 4134, "CHINANET-BACKBONE", 1_710_000_000)
            )
            replace_atomically(
                aws, lambda p: write_aws(p, {"18.130.0.0/16": "cn-north-1"}, 1_710_000_000)
            )
            replaced = time.monotonic()
            await wait_for(lambda: daemon.stats.geo_reloads >= 1, 2 * watch + 1, "geo reload")
            # One check per watch_interval: picked up within two of them (plus scheduling).
            assert time.monotonic() - replaced <= 2 * watch + 0.5

            # After: the same destination, same address (cached before the reload), pages as CN.
            await send(
                [(SOURCE, DESTINATION, 300 * MB, T0 + 420), (SOURCE, DESTINATION, MB, T0 + 700)]
            )
            (alert,) = await get("/api/v1/alerts")
            assert alert["labels"]["alertname"] == "EgressUnexpectedDestination"
            assert alert["labels"]["dst_country"] == "CN"
            assert alert["labels"]["dst_region"] == "aws/cn-north-1"
            assert alert["labels"]["dst_asn"] == "AS4134"
            assert alert["annotations"]["dst_as_org"] == "CHINANET-BACKBONE"
            baselines = await get("/api/v1/baselines?group=research")
            by_key = {b["destination"]: b for b in baselines}
            new_key = "CN|aws/cn-north-1|4134"
            # What was learned under the old labels is still there, beside the new key.
            assert set(by_key) == {old_key, new_key}
            assert by_key[old_key]["observations"] >= 1
            text = await get("/metrics")
            assert metric(text, "egressd_geo_database_build_timestamp_seconds", database) == 1.71e9
            assert metric(text, "egressd_geo_reloads_total") == 1
            assert metric(text, "egressd_geo_reload_errors_total") == 0

            # A malformed replacement keeps the old data, is counted once and logged once.
            caplog.set_level(logging.WARNING, logger="egressd")
            replace_atomically(country, lambda p: p.write_bytes(b"not an mmdb file\n" * 64))
            await wait_for(lambda: daemon.stats.geo_reload_errors >= 1, 2 * watch + 1, "error")
            await asyncio.sleep(2 * watch + 0.2)  # two more checks of the same broken file
            assert daemon.stats.geo_reload_errors == 1
            failures = [r for r in caplog.records if "geo data reload failed" in r.getMessage()]
            assert len(failures) == 1
            assert str(country) in failures[0].getMessage()
            # A new address (nothing cached for it) in the same network is still CN.
            other = "18.130.7.7"
            await send([(SOURCE, other, 300 * MB, T0 + 720), (SOURCE, other, MB, T0 + 1000)])
            destinations = {b["destination"] for b in await get("/api/v1/baselines")}
            assert destinations == {old_key, new_key}
            text = await get("/metrics")
            assert metric(text, "egressd_geo_reload_errors_total") == 1
            assert metric(text, "egressd_geo_reloads_total") == 1
            assert metric(text, "egressd_geo_database_build_timestamp_seconds", database) == 1.71e9
        sock.close()
    finally:
        assert daemon._stopping is not None
        daemon._stopping.set()
        assert await asyncio.wait_for(task, 10) == 0


async def test_sighup_reload_reads_changed_geo_files(tmp_path: Path) -> None:
    """SIGHUP rebuilds the labeler from the files as they are now, whatever watch_interval."""
    country, asn, aws = (
        tmp_path / "country.mmdb",
        tmp_path / "asn.mmdb",
        tmp_path / "ip-ranges.json",
    )
    write_country(country, "GB", 1_700_000_000)
    write_asn(asn, 16509, "AMAZON-02", 1_700_000_000)
    write_aws(aws, {"18.130.0.0/16": "eu-west-2"})
    path = tmp_path / "egressd.toml"
    path.write_text(daemon_config(tmp_path, "1h"))
    daemon = Daemon(parse_config(path.read_text(), str(path)), path, environ={}, sources=[])
    daemon.restore_state()
    assert daemon.engine.labeler.label(DESTINATION).key == "GB|aws/eu-west-2|16509"
    replace_atomically(country, lambda p: write_country(p, "CN", 1_710_000_000))
    assert await daemon.reload()
    assert daemon.engine.labeler is daemon.labeler
    assert daemon.engine.labeler.label(DESTINATION).key == "CN|aws/eu-west-2|16509"
    # A broken file on SIGHUP rejects the whole reload and keeps the running labeler.
    replace_atomically(asn, lambda p: p.write_bytes(b"\0" * 100))
    assert not await daemon.reload()
    assert daemon.stats.config_reload_errors == 1
    assert daemon.engine.labeler.label("18.130.9.9").key == "CN|aws/eu-west-2|16509"


# -- (b) replay: alerts labelled and judged by region and ASN -------------------------------

AWS_REGIONS = {
    "18.130.0.0/16": "eu-west-2",
    "3.80.0.0/12": "us-east-1",
    "52.80.0.0/16": "cn-north-1",
}
ASNS = {
    "18.130.0.0/16": (16509, "AMAZON-02"),
    "3.80.0.0/12": (16509, "AMAZON-02"),
    "52.80.0.0/16": (16509, "AMAZON-02"),
    "8.8.8.0/24": (15169, "GOOGLE"),
    "212.58.224.0/20": (15169, "GOOGLE"),
    "81.2.69.0/24": (20712, "Andrews & Arnold Ltd"),
    # 142.250.0.10 has no ASN entry: judged by its country alone
}
ADDRESSES = {
    "eu_west_2": "18.130.0.10",
    "us_east_1": "3.80.0.10",
    "cn_north_1": "52.80.0.10",
    "google_us": "8.8.8.8",
    "google_gb": "212.58.224.10",
    "isp_gb": "81.2.69.160",
    "no_asn_us": "142.250.0.10",
}

REPLAY_CONFIG = """
[networks]
local = ["10.0.0.0/8"]

# Lists an AWS region: every AWS destination is judged by region, even in an allowed country.
[[groups]]
name = "research"
sources = ["10.20.0.0/16"]
expected_countries = ["GB", "US"]
expected_regions = ["aws/eu-west-2"]

# Lists an ASN: a destination with a known ASN is judged by it, one without by its country.
[[groups]]
name = "office"
sources = ["10.30.0.0/16"]
expected_countries = ["US"]
expected_asns = ["AS15169"]

# aws/* allows every AWS region; others are judged by country.
[[groups]]
name = "lab"
sources = ["10.60.0.0/16"]
expected_countries = ["GB"]
expected_regions = ["aws/*"]

[geo]
asn_mmdb = "{asn}"

[[geo.region_maps]]
format = "aws"
path = "{aws}"
"""

# (group, destination) → pages? From the README's "How detection works" rule.
CASES = {
    ("research", "eu_west_2"): False,  # the listed region
    ("research", "us_east_1"): True,  # US is allowed, but this AWS region is not
    ("research", "cn_north_1"): True,
    ("research", "google_us"): False,  # not AWS: judged by country
    ("office", "google_gb"): False,  # GB is not an expected country, AS15169 is expected
    ("office", "google_us"): False,
    ("office", "us_east_1"): True,  # US is allowed, AS16509 is not
    ("office", "isp_gb"): True,
    ("office", "no_asn_us"): False,  # no ASN known: its country decides
    ("lab", "cn_north_1"): False,  # aws/*
    ("lab", "isp_gb"): False,
    ("lab", "google_us"): True,
}
SOURCES = {"research": "10.20.0.5", "office": "10.30.0.5", "lab": "10.60.0.5"}


def test_replay_labels_and_judges_by_aws_region_and_asn(tmp_path: Path) -> None:
    # Countries come from the embedded data here; read them straight from iptocc.
    country_of = {name: iptocc.country_code(a) for name, a in ADDRESSES.items()}
    assert country_of["us_east_1"] == country_of["google_us"] == country_of["no_asn_us"] == "US"
    assert country_of["google_gb"] == country_of["isp_gb"] == "GB"
    asn = write_mmdb(
        tmp_path / "GeoLite2-ASN.mmdb",
        "GeoLite2-ASN",
        {cidr: maxmind_asn(n, org) for cidr, (n, org) in ASNS.items()},
    )
    aws = write_aws(tmp_path / "ip-ranges.json", AWS_REGIONS)
    config = tmp_path / "egressd.toml"
    config.write_text(REPLAY_CONFIG.format(asn=asn, aws=aws))
    flows = tmp_path / "flows.jsonl"
    with flows.open("wb") as out:
        for (group, name), _ in CASES.items():
            record = {
                "time_end": T0 + 100,
                "src": SOURCES[group],
                "dst": ADDRESSES[name],
                "bytes": 500 * MB,
            }
            out.write(orjson.dumps(record) + b"\n")
    alerts = tmp_path / "alerts.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "egressd.cli",
            "replay",
            "--config",
            str(config),
            "--format",
            "egressd-json",
            "--alerts-out",
            str(alerts),
            str(flows),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    events = [orjson.loads(line) for line in alerts.read_bytes().splitlines()]
    firing = [e for e in events if e["status"] == "firing"]
    paged = {(e["labels"]["group"], e["annotations"]["top_destinations"]) for e in firing}
    expected = {(g, ADDRESSES[name]) for (g, name), pages in CASES.items() if pages}
    assert paged == expected
    assert all(e["labels"]["alertname"] == "EgressUnexpectedDestination" for e in firing)

    name_of = {address: name for name, address in ADDRESSES.items()}
    for event in firing:
        labels, annotations = event["labels"], event["annotations"]
        address = annotations["top_destinations"]
        assert labels["dst_country"] == country_of[name_of[address]]
        aws_region = next((r for c, r in AWS_REGIONS.items() if _in(address, c)), None)
        if aws_region is None:
            assert "dst_region" not in labels
        else:
            assert labels["dst_region"] == f"aws/{aws_region}"
        as_entry = next((v for c, v in ASNS.items() if _in(address, c)), None)
        if as_entry is None:
            assert "dst_asn" not in labels and "dst_as_org" not in annotations
        else:
            assert labels["dst_asn"] == f"AS{as_entry[0]}"
            assert annotations["dst_as_org"] == as_entry[1]
    china = next(e for e in firing if e["labels"].get("dst_region") == "aws/cn-north-1")
    assert china["labels"]["dst_country"] == "CN"
    assert china["labels"]["dst_asn"] == "AS16509"


def _in(address: str, cidr: str) -> bool:
    return ipaddress.ip_address(address) in ipaddress.ip_network(cidr)


async def test_a_large_region_map_is_reloaded_without_stopping_the_event_loop(
    tmp_path: Path,
) -> None:
    # The geo watcher loaded changed files on the event loop: a 300,000-prefix region map
    # (seconds of parsing) stopped the collector, HTTP and the watchdog meanwhile
    # (a 1M-prefix one, 18 s here; the unit's WatchdogSec is 30 s). Now only the swap runs
    # on the loop.
    regions = tmp_path / "regions.csv"
    regions.write_text("18.130.0.0/16,lab\n")
    config = f"""
[networks]
local = ["10.0.0.0/8"]

[state]
path = "{tmp_path / "state.json"}"

[http]
listen = "127.0.0.1:0"

[geo]
watch_interval = "1s"

[[geo.region_maps]]
format = "csv"
path = "{regions}"
"""
    daemon = Daemon(parse_config(config), environ={}, sources=[])
    task = asyncio.create_task(daemon.run())
    try:
        await wait_for(lambda: daemon.readiness()[0], 10, "daemon ready")
        first = 0x20000000  # 32.0.0.0
        lines = [f"{ipaddress.IPv4Address(first + (i << 8))}/24,r{i % 50}" for i in range(300_000)]
        replace_atomically(regions, lambda p: p.write_text("\n".join(lines) + "\n"))
        # The loop's stalls in CPU time of its own thread (neither other processes nor the
        # loading thread holding the GIL count), against loading the map once.
        last = time.thread_time()
        longest = 0.0
        async with asyncio.timeout(120):
            while daemon.stats.geo_reloads < 1:
                await asyncio.sleep(0.01)
                now = time.thread_time()
                longest = max(longest, now - last)
                last = now
        assert daemon.stats.geo_reload_errors == 0
        assert daemon.labeler.label("32.0.1.7").region == "r1"  # the second /24
        load = loading_cost(regions)
        assert longest < load / 10, (
            f"the event loop stood still for {longest:.3f} s of CPU; the map loads in {load:.3f} s"
        )
    finally:
        assert daemon._stopping is not None
        daemon._stopping.set()
        assert await asyncio.wait_for(task, 30) == 0


def loading_cost(regions: Path) -> float:
    """CPU seconds this thread takes to load the region map ``regions`` once."""
    from egressd.enrich.regions import load_csv

    began = time.thread_time()
    load_csv(regions)
    return time.thread_time() - began


def worker_config(regions: Path, watch_interval: str | None = None) -> Config:
    """A NetFlow source with two worker processes, and one CSV region map at ``regions``."""
    geo = f'[geo]\nwatch_interval = "{watch_interval}"\n\n' if watch_interval else ""
    return parse_config(
        f"""
[networks]
local = ["10.0.0.0/8"]

[[sources.netflow]]
listen = "127.0.0.1:0"
workers = 2

{geo}[[geo.region_maps]]
format = "csv"
path = "{regions}"
"""
    )


def refuse_to_rebuild(worker: Worker, config: Config, deadline: float) -> None:
    """Give ``worker`` a configuration whose labeler cannot be built, and tick it until it
    gives that up (by ``deadline``); no tick may report the configuration taken."""
    worker.reconfigure(config)
    while worker.rebuilding is not None:
        assert time.monotonic() < deadline
        assert not worker.reconfigure_tick()
        time.sleep(0.01)


def test_a_netflow_worker_reloads_a_large_region_map_without_stopping_its_loop(
    tmp_path: Path,
) -> None:
    # A worker process (sources.netflow.workers > 1) checked its geo files from its receive
    # loop and loaded a changed one there: the seconds a large region map takes to parse
    # went without reading its socket. Now it loads in a thread, and a later tick swaps.
    from egressd.sources.netflow_worker import Worker

    regions = tmp_path / "regions.csv"
    regions.write_text("18.130.0.0/16,lab\n")
    config = worker_config(regions, watch_interval="1s")
    worker = Worker(config, config.sources.netflow[0])
    first = 0x20000000  # 32.0.0.0
    lines = [f"{ipaddress.IPv4Address(first + (i << 8))}/24,r{i % 50}" for i in range(300_000)]
    replace_atomically(regions, lambda p: p.write_text("\n".join(lines) + "\n"))
    now = time.monotonic() + 2  # past the first watch_interval
    # Each tick's CPU time in this thread (neither other processes nor the loading thread
    # holding the GIL count), against loading the map once.
    longest = 0.0
    deadline = time.monotonic() + 120
    while worker.labeler.label("32.0.1.7").region != "r1":
        assert time.monotonic() < deadline, "the worker never picked the new map up"
        started = time.thread_time()
        worker.geo_tick(now)
        longest = max(longest, time.thread_time() - started)
        time.sleep(0.01)
        now += 0.25
    load = loading_cost(regions)
    assert longest < load / 10, f"a geo tick took {longest:.3f} s of CPU; a load {load:.3f} s"


def test_a_netflow_worker_rebuilds_its_labeler_on_reload_without_stopping_its_loop(
    tmp_path: Path,
) -> None:
    # A reload (SIGHUP) reaches each worker process as a new configuration; the worker built
    # the new labeler, which reads every geo file, on its receive loop: a large region map
    # took seconds without reading the socket. Now it builds in a thread, and a later flush
    # puts the configuration in use; one that fails to build keeps the running one.
    from egressd.sources.netflow_worker import Worker

    regions = tmp_path / "regions.csv"
    regions.write_text("18.130.0.0/16,lab\n")
    config = worker_config(regions)
    worker = Worker(config, config.sources.netflow[0])
    big = tmp_path / "big.csv"
    first = 0x20000000  # 32.0.0.0
    lines = [f"{ipaddress.IPv4Address(first + (i << 8))}/24,r{i % 50}" for i in range(300_000)]
    big.write_text("\n".join(lines) + "\n")
    reloaded = worker_config(big)
    # Each call's CPU time in this thread (neither other processes nor the building thread
    # holding the GIL count), against loading the map once.
    started = time.thread_time()
    worker.reconfigure(reloaded)
    longest = time.thread_time() - started
    deadline = time.monotonic() + 120
    while True:
        started = time.thread_time()
        done = worker.reconfigure_tick()
        longest = max(longest, time.thread_time() - started)
        if done:
            break
        assert time.monotonic() < deadline, "the worker never took the new configuration"
        assert worker.config is config  # the old one counts until the new one is ready
        time.sleep(0.01)
    load = loading_cost(big)
    assert longest < load / 10, (
        f"the worker's loop stopped for {longest:.3f} s of CPU; a load {load:.3f} s"
    )
    assert worker.config is reloaded
    assert worker.labeler.label("32.0.1.7").region == "r1"
    # A configuration whose geo file is gone by the time the worker reads it is not taken.
    broken = worker_config(big)
    big.unlink()
    refuse_to_rebuild(worker, broken, deadline)
    assert worker.config is reloaded
    assert worker.labeler.label("32.0.1.7").region == "r1"


def test_a_deeply_nested_json_region_map_is_a_clear_error_and_a_reload_keeps_the_old_data(
    tmp_path: Path,
) -> None:
    # A JSON region map (AWS, Google, Azure) is checked for depth before orjson parses it
    # (orjson before 3.9.15 crashes on deep nesting): at start it is a named error, on a
    # change the old data stays in use and the failure is counted.
    from egressd.enrich.labeler import CompositeLabeler
    from egressd.enrich.regions import load_aws
    from egressd.errors import ConfigError
    from egressd.replay import build_labeler

    deep = b'{"prefixes":' + b"[" * 300_000 + b"]" * 300_000 + b"}"
    bad = tmp_path / "bad.json"
    bad.write_bytes(deep)
    with pytest.raises(ConfigError, match="nested too deep"):
        load_aws(bad)
    aws = write_aws(tmp_path / "ip-ranges.json", AWS_REGIONS)
    config = parse_config(
        f"""
[networks]
local = ["10.0.0.0/8"]

[[geo.region_maps]]
format = "aws"
path = "{aws}"
"""
    )
    labeler = build_labeler(config)
    assert isinstance(labeler, CompositeLabeler)
    assert labeler.label("18.130.1.1").region == "aws/eu-west-2"
    replace_atomically(aws, lambda p: p.write_bytes(deep))
    assert not labeler.apply_loaded(labeler.load_changed())
    assert labeler.label("18.130.1.1").region == "aws/eu-west-2"
    assert any("nested too deep" in problem for problem in labeler.reload_problems)
    assert labeler.reload_failures == 1
    labeler.close()


def test_a_netflow_worker_counts_a_labeler_that_fails_to_build_on_reload(tmp_path: Path) -> None:
    # Before: a worker whose new labeler failed to build (a geo file gone or broken by the
    # time it read it) kept counting with the old configuration, logged in the worker only,
    # while the daemon counted the reload as done: nothing on /metrics showed it.
    from egressd.sources.netflow_worker import Worker, split_partials_frame

    regions = tmp_path / "regions.csv"
    regions.write_text("18.130.0.0/16,lab\n")
    config = worker_config(regions)
    worker = Worker(config, config.sources.netflow[0])
    broken = worker_config(regions)
    regions.write_text("not a prefix,lab\n")
    refuse_to_rebuild(worker, broken, time.monotonic() + 60)
    assert worker.config is config
    assert worker.labeler.label("18.130.1.1").region == "lab"
    header, _blob = split_partials_frame(worker.frame())
    samples = {name: value for name, _labels, value in header["samples"]}
    assert samples["egressd_netflow_worker_reload_errors_total"] == 1
