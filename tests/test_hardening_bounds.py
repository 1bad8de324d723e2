"""Hardening of memory bounds: floods of distinct addresses, labels, exporters and templates.

Each flood runs in a child process that reports its own RSS growth (VmRSS before and after)
and the sizes of every cache and table, so the test process's memory does not blur the figure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]

#: Stated bound on RSS growth during any one flood below. Without the caps, the ASN-label
#: flood grew by about 700 MB for one million records (windows of unexpected destinations,
#: interval buckets and per-destination totals all kept one entry per distinct label).
RSS_GROWTH_BOUND_MB = 150

CACHE_SIZE = 10_000
MAX_KEYS = 5_000
MAX_TEMPLATES = 1_000
MAX_PENDING = 500
SKETCH_CAPACITY = 32

_COMMON = textwrap.dedent(
    """
    import gc, json, sys

    def rss_kb():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise SystemExit("no VmRSS in /proc/self/status")

    def v4(n):
        return f"{n >> 24 & 255}.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}"
    """
)

ENGINE_FLOOD = _COMMON + textwrap.dedent(
    """
    from egressd.config import parse_config
    from egressd.enrich import DestinationLabels
    from egressd.model import FlowRecord
    from egressd.pipeline import MAX_DESTINATION_TOTALS, Engine
    from egressd.replay import build_labeler

    mode, total = sys.argv[1], int(sys.argv[2])
    config = parse_config('''
    [networks]
    local = ["10.0.0.0/8"]
    [[groups]]
    name = "research"
    sources = ["10.0.0.0/10"]
    expected_countries = ["US"]
    [[groups]]
    name = "office"
    sources = ["10.64.0.0/10"]
    [detection]
    interval = "5m"
    learning = "10m"
    max_keys = %(max_keys)d
    [geo]
    cache_size = %(cache_size)d
    ''')
    COUNTRIES = [chr(65 + a) + chr(65 + b) for a in range(26) for b in range(26)][:200]

    class AsnLabeler:
        # An ASN database answering a scan of the whole internet: ~100,000 distinct ASNs.
        has_regions = False
        has_asn = True

        def label(self, address):
            asn = hash(address) %% 100_000 + 1
            return DestinationLabels(COUNTRIES[asn %% 200], "", asn, f"org {asn}", "test")

        def label_many(self, addresses):
            return [self.label(a) for a in addresses]

    engine = Engine(config, AsnLabeler() if mode == "asn" else build_labeler(config))
    START, SPAN = 1_773_064_800.0, 12 * 300.0  # twelve intervals, so buckets close

    def chunk(lo, hi):
        # Distinct sources all over 10/8 and distinct destinations all over the address space.
        return [
            FlowRecord(
                START + SPAN * i / total,
                START + SPAN * i / total,
                v4((10 << 24) + (i * 7919) %% (1 << 24)),
                v4((20 << 24) + i * 2654435761 & 0xFFFFFFFF),
                1500 + i %% 977,
                2,
            )
            for i in range(lo, hi)
        ]

    engine.process(chunk(0, 2_000))  # imports and lazily built tables belong to "before"
    gc.collect()
    before = rss_kb()
    peak = dict.fromkeys(
        ["baselines", "src_cache", "dst_cache", "intern", "totals", "windows", "bucket_keys",
         "open_buckets", "topk"], 0)
    step = 20_000
    for n, lo in enumerate(range(2_000, total, step)):
        engine.process(chunk(lo, min(total, lo + step)))
        peak["baselines"] = max(peak["baselines"], len(engine.baselines))
        peak["src_cache"] = max(peak["src_cache"], len(engine.source_cache))
        peak["dst_cache"] = max(peak["dst_cache"], len(engine.destination_cache))
        # labels interned by the labeler (the engine caches them per address, bounded above)
        interned = getattr(engine.labeler, "_interned", getattr(engine.labeler, "_by_country", {}))
        peak["intern"] = max(peak["intern"], len(interned))
        peak["totals"] = max(peak["totals"], len(engine.stats.egress_by_destination))
        peak["windows"] = max(peak["windows"], len(engine.unexpected.windows))
        peak["open_buckets"] = max(peak["open_buckets"], len(engine.aggregator.buckets))
        for bucket in engine.aggregator.buckets.values():
            peak["bucket_keys"] = max(peak["bucket_keys"], len(bucket))
            if n %% 5 == 0:
                for accum in bucket.values():
                    peak["topk"] = max(
                        peak["topk"], len(accum.sources.counts), len(accum.destinations.counts)
                    )
    engine.flush()
    gc.collect()
    print(json.dumps({
        **peak,
        "growth_mb": (rss_kb() - before) / 1024,
        "records": engine.stats.records,
        "egress_records": engine.stats.egress_records,
        "intervals_closed": engine.stats.intervals_closed,
        "distinct_labels_seen": len({d for _g, d in engine.stats.egress_by_destination}),
        "max_totals": MAX_DESTINATION_TOTALS,
        "folded_records": engine.aggregator.folded_records,
        "windows_evicted": engine.unexpected.evicted,
    }))
    """
) % {"max_keys": MAX_KEYS, "cache_size": CACHE_SIZE}

NETFLOW_FLOOD = _COMMON + textwrap.dedent(
    """
    import struct
    from egressd.decode.netflow.decoder import NetflowDecoder
    from egressd.errors import DecodeError
    from netflow_builders import data_set, ipfix_datagram, template_set, v9_datagram

    total = int(sys.argv[1])
    decoder = NetflowDecoder(
        max_templates=%(max_templates)d, template_timeout=3600.0,
        max_pending=%(max_pending)d, pending_timeout=60.0,
    )
    FIELDS = [(8, 4), (12, 4), (1, 4), (2, 4), (22, 4), (21, 4)]
    FIELDS6 = [(27, 16), (28, 16), (1, 8), (2, 8), (152, 8), (153, 8)]

    def datagram(i):
        # A new exporter every time, each announcing a different template id and also
        # sending a data set for a template it never announces (it waits in pending).
        tid = 256 + i %% 65_000
        src = struct.pack("!I", (10 << 24) + i)
        dst = struct.pack("!I", (20 << 24) + i * 7)
        if i %% 2:
            sets = [
                template_set({tid: FIELDS}, ipfix=False),
                data_set(tid, FIELDS, [[src, dst, 1000, 2, 5000, 6000]]),
                data_set(tid + 1, FIELDS, [[src, dst, 1000, 2, 5000, 6000]]),
            ]
            return v9_datagram(sets, uptime_ms=10_000, unix_secs=1_773_064_800, source_id=i)
        src6, dst6 = b"\\xfd" + src.rjust(15, b"\\0"), b"\\x2a" + dst.rjust(15, b"\\1")
        sets = [
            template_set({tid: FIELDS6}, ipfix=True),
            data_set(tid, FIELDS6, [[src6, dst6, 1000, 2, 1_773_064_800_000, 1_773_064_801_000]]),
            data_set(tid + 1, FIELDS6, [[src6, dst6, 1, 1, 1, 1]]),
        ]
        return ipfix_datagram(sets, export_secs=1_773_064_800, domain=i)

    for i in range(2_000):
        decoder.decode(datagram(i), v4((192 << 24) + i), 0.0)
    gc.collect()
    before = rss_kb()
    peak = dict.fromkeys(["templates", "pending", "options", "addr_cache"], 0)
    records = errors = 0
    for i in range(2_000, total):
        try:
            records += len(decoder.decode(datagram(i), v4((192 << 24) + i), i / 1000))
        except DecodeError:
            errors += 1
        if i %% 1000 == 0:
            peak["templates"] = max(peak["templates"], len(decoder._templates))
            peak["pending"] = max(peak["pending"], len(decoder._pending))
            peak["options"] = max(peak["options"], len(decoder._options))
            peak["addr_cache"] = max(peak["addr_cache"], len(decoder._addr_cache))
    gc.collect()
    print(json.dumps({
        **peak,
        "growth_mb": (rss_kb() - before) / 1024,
        "records": records,
        "errors": errors,
        "evicted": decoder.stats.templates_evicted,
        "pending_dropped": decoder.stats.pending_dropped,
    }))
    """
) % {"max_templates": MAX_TEMPLATES, "max_pending": MAX_PENDING}


def _start(script: str, *args: str) -> subprocess.Popen[str]:
    path = os.pathsep.join([str(REPO), str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},
    )


def _report(child: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return report


@pytest.mark.slow
def test_engine_floods_of_distinct_addresses_and_labels_stay_bounded() -> None:
    """One million distinct sources and destinations (real embedded country labels), and in
    parallel 300,000 records labelled with ~100,000 distinct ASNs: caps hold, RSS stays low."""
    countries = _start(ENGINE_FLOOD, "countries", "1000000")
    asns = _start(ENGINE_FLOOD, "asn", "300000")
    for report in (_report(countries), _report(asns)):
        assert report["intervals_closed"] >= 12
        assert report["growth_mb"] < RSS_GROWTH_BOUND_MB, report
        assert report["baselines"] <= MAX_KEYS, report
        assert report["src_cache"] <= CACHE_SIZE and report["dst_cache"] <= CACHE_SIZE, report
        assert report["intern"] <= CACHE_SIZE, report
        assert report["windows"] <= MAX_KEYS, report
        assert report["totals"] <= report["max_totals"] + 2 * 250, report  # + country folds
        # a bucket holds at most max_keys keys plus one folded key per (group, country)
        assert report["bucket_keys"] <= MAX_KEYS + 3 * 250, report
        assert report["open_buckets"] <= 3, report
        assert 0 < report["topk"] <= SKETCH_CAPACITY, report
    # The ASN flood really exceeded every cap (so the caps, not the input, bounded it).
    assert report["folded_records"] > 0, report
    # A scan's intervals of a few KB per destination open no unexpected-destination window
    # of their own (they count for the group's fan-out sums); windows that open are capped.
    # The keys folded past max_keys (one per group and country, for the three groups: research,
    # office and the sources in neither) may open one: the scan's folded bytes pass the least
    # interval that opens a window, lower for a group of the scan's size than for a large one.
    assert report["windows_evicted"] > 0 or report["windows"] <= 3 * 250, report
    assert report["totals"] >= report["max_totals"], report


def test_netflow_flood_of_exporters_and_templates_stays_bounded() -> None:
    """100,000 exporters, each with its own template id, plus unannounced data sets."""
    report = _report(_start(NETFLOW_FLOOD, "100000"))
    assert report["growth_mb"] < RSS_GROWTH_BOUND_MB, report
    assert report["templates"] <= MAX_TEMPLATES, report
    assert report["options"] <= MAX_TEMPLATES, report
    assert report["pending"] <= MAX_PENDING, report
    assert report["addr_cache"] <= 65_536, report
    assert report["evicted"] > 90_000 and report["pending_dropped"] > 90_000, report
    assert report["records"] >= 98_000 and report["errors"] == 0, report
