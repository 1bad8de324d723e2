"""Conformance of the NetFlow / IPFIX decoder against every export capture in ../shared/captures.

Expectations come from the test's own minimal set walker, SOURCES.md counts, scapy and the
PyPI ``netflow`` package, never from the decoder under test.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from egressd.decode.netflow import NetflowDecoder
from egressd.errors import DecodeError
from egressd.model import FlowRecord

CAPTURES = Path(__file__).resolve().parents[1] / ".." / "shared" / "captures"
NOW = 1_000_000.0
DAT_EXPORTER = "192.0.2.1"

G = "graylog-plugin-netflow/"
L = "logstash-codec-netflow/"
A = "akvorado/"


def _l(*names: str) -> list[str]:
    return [L + n for n in names]


def _a(*names: str) -> list[str]:
    return [A + n for n in names]


# Replay groups: templates first, then data, one exporter (pcap source address or DAT_EXPORTER).
GROUPS: dict[str, list[str]] = {
    "akv-data+templates": _a("data+templates.pcap"),
    "akv-template": _a("template.pcap", "data.pcap"),
    "akv-datalink": _a("datalink-template.pcap", "datalink-data.pcap"),
    "akv-eompls": _a(
        "ethernet-over-mpls-with-control-word-template.pcap",
        "ethernet-over-mpls-with-control-word-data.pcap",
    ),
    "akv-icmp": _a("icmp-template.pcap", "icmp-data.pcap"),
    "akv-srv6": _a("ipfix-srv6-template.pcap", "ipfix-srv6-data.pcap"),
    "akv-ipfixprobe": _a("ipfixprobe-templates.pcap", "ipfixprobe-data.pcap"),
    "akv-juniper-cpid": _a("juniper-cpid-template.pcap", "juniper-cpid-data.pcap"),
    "akv-mpls": _a("mpls.pcap"),
    "akv-multiplesamplingrates": _a(
        "multiplesamplingrates-template.pcap",
        "multiplesamplingrates-options-template.pcap",
        "multiplesamplingrates-options-data.pcap",
        "multiplesamplingrates-data.pcap",
    ),
    "akv-nat": _a("nat.pcap"),
    "akv-nfv5": _a("nfv5.pcap"),
    "akv-options": _a("options-template.pcap", "options-data.pcap"),
    "akv-physicalinterfaces": _a("physicalinterfaces.pcap"),
    "akv-samplingrate": _a("samplingrate-template.pcap", "samplingrate-data.pcap"),
    "gl-v5-1": [G + "netflow-v5-1.dat"],
    "gl-v5-2": [G + "netflow-v5-2.dat"],
    "gl-v9-1": [G + "netflow-v9-1.dat"],
    "gl-v9-2": [G + "netflow-v9-2-1.dat", G + "netflow-v9-2-2.dat", G + "netflow-v9-2-3.dat"],
    "gl-v9-3": [G + "netflow-v9-2-1.dat", G + "netflow-v9-3_incomplete.dat"],
    **{
        "gl-" + name: [G + name]
        for name in (
            "netflow5.pcap",
            "netflow9.pcap",
            "netgraph-netflow5.pcap",
            "nprobe-netflow9-2.pcap",
            "nprobe-netflow9-3.pcap",
            "nprobe-netflow9-4.pcap",
            "nprobe-netflow9.pcap",
            "pmacctd-netflow5.pcap",
            "pmacctd-netflow9.pcap",
        )
    },
    "ls-ipfix": _l("ipfix.dat"),
    "ls-barracuda": _l("ipfix_test_barracuda_tpl.dat", "ipfix_test_barracuda_data256.dat"),
    "ls-barracuda-ext": _l(
        "ipfix_test_barracuda_extended_uniflow_tpl256.dat",
        "ipfix_test_barracuda_extended_uniflow_data256.dat",
    ),
    "ls-ixia": _l("ipfix_test_ixia_tpldata256.dat", "ipfix_test_ixia_tpldata271.dat"),
    "ls-juniper-mx240": _l(
        "ipfix_test_juniper_mx240_junos151r6s3_opttpl512.dat",
        "ipfix_test_juniper_mx240_junos151r6s3_data512.dat",
    ),
    "ls-mikrotik": _l(
        "ipfix_test_mikrotik_tpl.dat",
        "ipfix_test_mikrotik_data258.dat",
        "ipfix_test_mikrotik_data259.dat",
    ),
    "ls-netscaler": _l("ipfix_test_netscaler_tpl.dat", "ipfix_test_netscaler_data.dat"),
    "ls-nokia": _l("ipfix_test_nokia_bras_tpl.dat", "ipfix_test_nokia_bras_data256.dat"),
    "ls-pflow": _l("ipfix_test_openbsd_pflow_tpl.dat", "ipfix_test_openbsd_pflow_data.dat"),
    "ls-procera": _l("ipfix_test_procera_tpl52935.dat", "ipfix_test_procera_data52935.dat"),
    "ls-viptela": _l("ipfix_test_viptela_tpl257.dat", "ipfix_test_viptela_data257.dat"),
    "ls-vmware": _l(
        "ipfix_test_vmware_vds_tpl.dat",
        "ipfix_test_vmware_vds_data264.dat",
        "ipfix_test_vmware_vds_data266.dat",
        "ipfix_test_vmware_vds_data266_267.dat",
    ),
    "ls-yaf": _l(
        "ipfix_test_yaf_tpl45841.dat",
        "ipfix_test_yaf_tpls_option_tpl.dat",
        "ipfix_test_yaf_data45841.dat",
        "ipfix_test_yaf_data45873.dat",
        "ipfix_test_yaf_data53248.dat",
    ),
    "ls-v5": _l("netflow5.dat"),
    "ls-v5-invalid01": _l("netflow5_test_invalid01.dat"),
    "ls-v5-invalid02": _l("netflow5_test_invalid02.dat"),
    "ls-v5-mx80": _l("netflow5_test_juniper_mx80.dat"),
    "ls-v5-microtik": _l("netflow5_test_microtik.dat"),
    "ls-asr1001x": _l("netflow9_cisco_asr1001x_tpl259.dat"),
    "ls-0length": _l("netflow9_test_0length_fields_tpl_data.dat"),
    "ls-1941k9": _l("netflow9_test_cisco_1941K9.dat"),
    "ls-aci": _l("netflow9_test_cisco_aci_tpl256-258.dat", "netflow9_test_cisco_aci_data256.dat"),
    "ls-asa1": _l("netflow9_test_cisco_asa_1_tpl.dat", "netflow9_test_cisco_asa_1_data.dat"),
    "ls-asa2": _l(
        "netflow9_test_cisco_asa_2_tpl_26x.dat",
        "netflow9_test_cisco_asa_2_tpl_27x.dat",
        "netflow9_test_cisco_asa_2_data.dat",
    ),
    "ls-asr9k": _l(
        "netflow9_test_cisco_asr9k_opttpl256.dat",
        "netflow9_test_cisco_asr9k_opttpl257.dat",
        "netflow9_test_cisco_asr9k_opttpl334.dat",
        "netflow9_test_cisco_asr9k_tpl260.dat",
        "netflow9_test_cisco_asr9k_tpl266.dat",
        "netflow9_test_cisco_asr9k_data256.dat",
        "netflow9_test_cisco_asr9k_data260.dat",
    ),
    "ls-nbar": _l(
        "netflow9_test_cisco_nbar_opttpl260.dat",
        "netflow9_test_cisco_nbar_tpl262.dat",
        "netflow9_test_cisco_nbar_data262.dat",
    ),
    "ls-wlc8510": _l("netflow9_test_cisco_wlc_8510_tpl_262.dat"),
    "ls-wlc": _l("netflow9_test_cisco_wlc_tpl.dat", "netflow9_test_cisco_wlc_data261.dat"),
    "ls-l2segment": _l(
        "netflow9_test_field_layer2segmentid_tpl.dat",
        "netflow9_test_field_layer2segmentid_data.dat",
    ),
    "ls-forti521": _l(
        "netflow9_test_fortigate_fortios_521_tpl.dat",
        "netflow9_test_fortigate_fortios_521_data256.dat",
        "netflow9_test_fortigate_fortios_521_data257.dat",
    ),
    "ls-forti542": _l(
        "netflow9_test_fortigate_fortios_542_appid_tpl258-269.dat",
        "netflow9_test_fortigate_fortios_542_appid_data258_262.dat",
    ),
    "ls-h3c": _l("netflow9_test_h3c_tpl3281.dat", "netflow9_test_h3c_data3281.dat"),
    "ls-h3c-varstring": _l(
        "netflow9_test_h3c_netstream_varstring_tpl3281.dat",
        "netflow9_test_h3c_netstream_varstring_data3281.dat",
    ),
    "ls-huawei": _l(
        "netflow9_test_huawei_netstream_tpl.dat", "netflow9_test_huawei_netstream_data.dat"
    ),
    "ls-v9-invalid01": _l("netflow9_test_invalid01.dat"),
    "ls-iptnetflow": _l("netflow9_test_iptnetflow_reduced_size_encoding_tpldata260.dat"),
    "ls-srx": _l("netflow9_test_juniper_srx_tplopt.dat"),
    "ls-macaddr": _l("netflow9_test_macaddr_tpl.dat", "netflow9_test_macaddr_data.dat"),
    "ls-nprobe": _l("netflow9_test_nprobe_tpl.dat", "netflow9_test_nprobe_data.dat"),
    "ls-nprobe-dpi": _l("netflow9_test_nprobe_dpi.dat"),
    "ls-paloalto81": _l(
        "netflow9_test_paloalto_81_tpl256-263.dat",
        "netflow9_test_paloalto_81_data257_1flowset_in_large_zerofilled_packet.dat",
    ),
    "ls-panos": _l("netflow9_test_paloalto_panos_tpl.dat", "netflow9_test_paloalto_panos_data.dat"),
    "ls-softflowd": _l("netflow9_test_softflowd_tpl_data.dat"),
    "ls-streamcore": _l(
        "netflow9_test_streamcore_tpl_data256.dat", "netflow9_test_streamcore_tpl_data260.dat"
    ),
    "ls-ubnt": _l(
        "netflow9_test_ubnt_edgerouter_tpl.dat",
        "netflow9_test_ubnt_edgerouter_data1024.dat",
        "netflow9_test_ubnt_edgerouter_data1025.dat",
    ),
    "ls-unknown-tpl": _l("netflow9_test_unknown_tpl266_292_data.dat"),
    "ls-valid01": _l("netflow9_test_valid01.dat"),
    "ndpi-fritz": ["ndpi/netflow-fritz.pcap"],
    "ndpi-sflow": ["ndpi/sflow.pcap"],
}

# Flow records SOURCES.md states for groups whose records all carry addresses
# ("data records decoded in-file", or the v5 header count field).
SOURCES_COUNTS = {
    "akv-data+templates": 21,  # 11 before template 257 in the datagram + 10 after it
    "akv-nfv5": 29,
    "akv-mpls": 2,
    "akv-physicalinterfaces": 8,
    "gl-v5-1": 2,
    "gl-v5-2": 30,
    "gl-netflow5.pcap": 4,
    "gl-netflow9.pcap": 21,
    "gl-netgraph-netflow5.pcap": 120,
    "gl-nprobe-netflow9-2.pcap": 6,
    "gl-nprobe-netflow9-3.pcap": 892,
    "gl-nprobe-netflow9.pcap": 150 + 2,
    "gl-pmacctd-netflow5.pcap": 42,
    "gl-pmacctd-netflow9.pcap": 6,
    "ls-ipfix": 12,
    "ls-v5": 2,
    "ls-v5-mx80": 29,
    "ls-v5-microtik": 30,
    "ls-asr1001x": 25,
    "ls-0length": 10,
    "ls-1941k9": 29,
    "ls-softflowd": 7,
    "ls-valid01": 7,
    "ls-v9-invalid01": 2,
}

# Whole datagrams that must be rejected (counted, DecodeError) rather than decoded.
REJECTED = {"ls-v5-invalid01": 1, "ls-v5-invalid02": 1, "ndpi-sflow": 9}


def _need_captures() -> None:
    if not CAPTURES.is_dir():
        pytest.skip(f"shared captures not found at {CAPTURES}")


@cache
def datagrams_of(relative: str) -> tuple[tuple[bytes, str], ...]:
    """UDP payloads and source addresses of a capture (pcap via scapy, .dat as one payload)."""
    path = CAPTURES / relative
    if path.suffix == ".dat":
        return ((path.read_bytes(), DAT_EXPORTER),)
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether
    from scapy.utils import RawPcapReader

    out = []
    with RawPcapReader(str(path)) as reader:
        for raw, _meta in reader:
            packet = Ether(raw)
            udp = packet.getlayer(UDP)
            ip = packet.getlayer(IP) or packet.getlayer(IPv6)
            if udp is not None and ip is not None:
                out.append((bytes(udp.payload), str(ip.src)))
    return tuple(out)


def group_datagrams(name: str) -> list[tuple[bytes, str]]:
    return [d for relative in GROUPS[name] for d in datagrams_of(relative)]


# ---------------------------------------------------------------- the test's own walker


class Walker:
    """Minimal independent reading of export datagrams: templates, then raw field values."""

    def __init__(self) -> None:
        self.templates: dict[tuple[Any, ...], list[tuple[int, int, int]]] = {}
        self.options: dict[tuple[Any, ...], tuple[int, list[tuple[int, int, int]]]] = {}
        self.data: list[tuple[tuple[Any, ...], bytes]] = []
        self.v5: list[dict[str, Any]] = []

    def feed(self, data: bytes, exporter: str) -> None:
        version = int.from_bytes(data[:2], "big")
        if version == 5 and len(data) >= 24:
            count = int.from_bytes(data[2:4], "big")
            if count > 0 and 24 + 48 * count <= len(data):
                for i in range(count):
                    r = data[24 + 48 * i : 72 + 48 * i]
                    self.v5.append(
                        dict(src=r[0:4], dst=r[4:8], packets=int.from_bytes(r[16:20], "big"),
                             octets=int.from_bytes(r[20:24], "big"),
                             sport=int.from_bytes(r[32:34], "big"),
                             dport=int.from_bytes(r[34:36], "big"), proto=r[38])
                    )  # fmt: skip
        elif version == 9 and len(data) >= 20:
            self._sets(data, 20, len(data), (exporter, 9, data[16:20]), ipfix=False)
        elif version == 10:
            pos = 0
            while pos + 16 <= len(data) and int.from_bytes(data[pos : pos + 2], "big") == 10:
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
                if length < 16 or pos + length > len(data):
                    break
                domain = data[pos + 12 : pos + 16]
                self._sets(data, pos + 16, pos + length, (exporter, 10, domain), ipfix=True)
                pos += length

    def _sets(self, data: bytes, pos: int, end: int, key: tuple[Any, ...], ipfix: bool) -> None:
        while pos + 4 <= end:
            set_id, length = struct.unpack_from("!HH", data, pos)
            if length < 4 or pos + length > end:
                return
            body = data[pos + 4 : pos + length]
            pos += length
            if set_id in ((2, 3) if ipfix else (0, 1)):
                self._templates(body, key, ipfix, options=set_id == (3 if ipfix else 1))
            elif set_id >= 256:
                self.data.append(((*key, set_id), body))

    def _templates(self, body: bytes, key: tuple[Any, ...], ipfix: bool, options: bool) -> None:
        p = 0
        while p + 4 <= len(body):
            tid, count = struct.unpack_from("!HH", body, p)
            if tid == 0:
                return
            p += 4
            scope = 0
            if options and ipfix:
                scope = struct.unpack_from("!H", body, p)[0]
                p += 2
            elif options:
                scope_len, option_len = count, struct.unpack_from("!H", body, p)[0]
                p += 2
                scope, count = scope_len // 4, (scope_len + option_len) // 4
            fields = []
            for _ in range(count):
                eid, length = struct.unpack_from("!HH", body, p)
                p += 4
                pen = 0
                if ipfix and eid & 0x8000:
                    pen = struct.unpack_from("!I", body, p)[0]
                    p += 4
                    eid &= 0x7FFF
                fields.append((eid, length, pen))
            if options:
                self.options[(*key, tid)] = (scope, fields)
            else:
                self.templates[(*key, tid)] = fields

    @staticmethod
    def records(fields: list[tuple[int, int, int]], body: bytes) -> Iterator[dict[int, bytes]]:
        """Field values (plain elements only) of each record of a data set."""
        p = 0
        while True:
            record_start = p
            values: dict[int, bytes] = {}
            for eid, length, pen in fields:
                if length == 65535:
                    if p >= len(body):
                        return
                    length = body[p]
                    p += 1
                    if length == 255:
                        length = int.from_bytes(body[p : p + 2], "big")
                        p += 2
                if p + length > len(body):
                    return
                if not pen:
                    values.setdefault(eid, body[p : p + length])
                p += length
            if p == record_start:
                return  # a template of zero-length fields only: nothing to read
            yield values


def _num(values: dict[int, bytes], *ids: int) -> int | None:
    for eid in ids:
        if eid in values and 0 < len(values[eid]) <= 8:
            return int.from_bytes(values[eid], "big")
    return None


def _addr(v4: bytes | None, v6: bytes | None) -> str | None:
    if v4 is not None and len(v4) == 4 and (v6 is None or any(v4)):
        return str(ipaddress.IPv4Address(v4))
    if v6 is not None and len(v6) == 16:
        a = ipaddress.IPv6Address(v6)
        return str(a.ipv4_mapped or a)
    return None


def expected_flows(walker: Walker) -> list[tuple[Any, ...]]:
    """(src, dst, proto, sport, dport, raw bytes) of every address-carrying data record."""
    flows: list[tuple[Any, ...]] = []
    for r in walker.v5:
        src, dst = _addr(r["src"], None), _addr(r["dst"], None)
        flows.append((src, dst, r["proto"], r["sport"], r["dport"], r["octets"]))
    for key, body in walker.data:
        fields = walker.templates.get(key)
        if fields is None or any(eid == 315 for eid, _, _ in fields):
            continue
        for values in Walker.records(fields, body):
            src = _addr(values.get(8), values.get(27))
            dst = _addr(values.get(12), values.get(28))
            if src is None or dst is None:
                continue
            flows.append(
                (src, dst, _num(values, 4) or 0, _num(values, 7, 182, 180) or 0,
                 _num(values, 11, 183, 181) or 0, _num(values, 1, 85, 231, 23, 232) or 0)
            )  # fmt: skip
    return flows


def decode_group(name: str) -> tuple[list[FlowRecord], int, NetflowDecoder]:
    decoder = NetflowDecoder()
    records: list[FlowRecord] = []
    rejected = 0
    for data, exporter in group_datagrams(name):
        try:
            records += decoder.decode(data, exporter, NOW)
        except DecodeError:
            rejected += 1
    return records, rejected, decoder


# ---------------------------------------------------------------- tests


def test_every_export_capture_is_in_a_group() -> None:
    _need_captures()
    covered = {relative for files in GROUPS.values() for relative in files}
    on_disk = {
        f"{d}/{p.name}"
        for d in ("akvorado", "graylog-plugin-netflow", "logstash-codec-netflow")
        for p in (CAPTURES / d).iterdir()
    }
    assert on_disk - covered == set()


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_group_matches_independent_reading(name: str) -> None:
    _need_captures()
    records, rejected, decoder = decode_group(name)
    walker = Walker()
    for data, exporter in group_datagrams(name):
        walker.feed(data, exporter)
    expected = expected_flows(walker)
    got = [(r.src, r.dst, r.proto, r.src_port, r.dst_port) for r in records]
    if not any(eid == 315 for f in walker.templates.values() for eid, _, _ in f):
        assert sorted(got) == sorted(e[:5] for e in expected)
    assert rejected == REJECTED.get(name, 0)
    assert decoder.stats.records == len(records)
    assert sum(decoder.stats.decode_errors.values()) == rejected
    if name in SOURCES_COUNTS:
        assert len(records) == SOURCES_COUNTS[name]
    # Without any sampling information in the group, bytes are the raw counters.
    sampled = any(
        eid in (34, 50, 305, 309) for _, fields in walker.options.values() for eid, _, _ in fields
    ) or any(eid in (34, 50) for f in walker.templates.values() for eid, _, _ in f)
    sampled = sampled or any(d[22:24] != b"\0\0" for d, _ in group_datagrams(name) if d[1] == 5)
    if not sampled and expected:
        assert sorted(r.bytes for r in records) == sorted(e[5] for e in expected)
    for r in records:
        assert r.bytes >= 0 and r.packets >= 0
        assert r.time_start <= r.time_end + 1e-6


def test_template_missing_data_decoded_when_template_arrives_later() -> None:
    _need_captures()
    decoder = NetflowDecoder()
    (data,) = datagrams_of(A + "data.pcap")
    (template,) = datagrams_of(A + "template.pcap")
    assert decoder.decode(*data, NOW) == []
    assert decoder.stats.pending_count == 1
    records = decoder.decode(*template, NOW + 1)
    assert len(records) == 4
    assert decoder.stats.pending_count == 0 and decoder.stats.pending_decoded == 1


def test_pending_set_expires_when_template_is_late() -> None:
    _need_captures()
    decoder = NetflowDecoder(pending_timeout=5.0)
    (data,) = datagrams_of(A + "data.pcap")
    (template,) = datagrams_of(A + "template.pcap")
    decoder.decode(*data, NOW)
    assert decoder.decode(*template, NOW + 6) == []
    assert decoder.stats.pending_expired == 1


def test_v5_matches_pypi_netflow() -> None:
    _need_captures()
    netflow = pytest.importorskip("netflow")
    for name in ("akv-nfv5", "gl-netgraph-netflow5.pcap", "ls-v5-mx80", "ls-v5-microtik"):
        decoder = NetflowDecoder()
        for data, exporter in group_datagrams(name):
            ours = decoder.decode(data, exporter, NOW)
            theirs = netflow.parse_packet(data).flows
            rate = (int.from_bytes(data[22:24], "big") & 0x3FFF) or 1
            assert [
                (r.src, r.dst, r.bytes, r.packets, r.src_port, r.dst_port, r.proto) for r in ours
            ] == [
                (str(ipaddress.IPv4Address(f.IPV4_SRC_ADDR)),
                 str(ipaddress.IPv4Address(f.IPV4_DST_ADDR)),
                 f.IN_OCTETS * rate, f.IN_PACKETS * rate, f.SRC_PORT, f.DST_PORT, f.PROTO)
                for f in theirs
            ]  # fmt: skip


@pytest.mark.parametrize(
    "relative",
    [
        L + "netflow9_test_softflowd_tpl_data.dat",
        L + "netflow9_cisco_asr1001x_tpl259.dat",
        L + "netflow9_test_cisco_1941K9.dat",
        L + "netflow9_test_streamcore_tpl_data260.dat",
        L + "netflow9_test_0length_fields_tpl_data.dat",
        L + "netflow9_test_unknown_tpl266_292_data.dat",
    ],
)
def test_v9_matches_pypi_netflow(relative: str) -> None:
    _need_captures()
    netflow = pytest.importorskip("netflow")
    ((data, exporter),) = datagrams_of(relative)
    ours = NetflowDecoder().decode(data, exporter, NOW)
    theirs = netflow.parse_packet(data, {"netflow": {}, "ipfix": {}}).flows
    theirs = [f.data for f in theirs if "IPV4_SRC_ADDR" in f.data or "IPV6_SRC_ADDR" in f.data]
    assert sorted((r.src, r.dst, r.bytes, r.packets, r.proto) for r in ours) == sorted(
        (f.get("IPV4_SRC_ADDR") or f["IPV6_SRC_ADDR"], f.get("IPV4_DST_ADDR") or f["IPV6_DST_ADDR"],
         f["IN_BYTES"], f["IN_PKTS"], f["PROTOCOL"])
        for f in theirs
    )  # fmt: skip


def test_v9_times_follow_sysuptime() -> None:
    """FIRST/LAST_SWITCHED are ms of exporter uptime: anchor them at the header's unix secs."""
    _need_captures()
    ((data, exporter),) = datagrams_of(L + "netflow9_test_softflowd_tpl_data.dat")
    uptime, secs = struct.unpack_from("!II", data, 4)
    ours = NetflowDecoder().decode(data, exporter, NOW)
    walker = Walker()
    walker.feed(data, exporter)
    expected = []
    for key, body in walker.data:
        for values in Walker.records(walker.templates[key], body):
            first, last = _num(values, 22), _num(values, 21)
            assert first is not None and last is not None
            expected.append((secs + (first - uptime) / 1000, secs + (last - uptime) / 1000))
    # approx compares flat sequences only (older pytest compared nested pairs exactly, newer
    # refuses them): flatten the pairs. An absolute tolerance, since a relative one is
    # minutes at epoch seconds.
    got = sorted((r.time_start, r.time_end) for r in ours)
    assert [t for pair in got for t in pair] == pytest.approx(
        [t for pair in sorted(expected) for t in pair], abs=1e-6
    )


@pytest.mark.parametrize("name", ["akv-datalink", "akv-eompls", "akv-srv6", "akv-juniper-cpid"])
def test_datalink_records_match_scapy(name: str) -> None:
    """Records carrying only the sampled frame (IE 315) are read through the frame."""
    _need_captures()
    from scapy.layers.inet import IP, TCP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether

    records, _, _ = decode_group(name)
    walker = Walker()
    for data, exporter in group_datagrams(name):
        walker.feed(data, exporter)
    expected = []
    for key, body in walker.data:
        for values in Walker.records(walker.templates[key], body):
            packet = Ether(values[315])
            layers = [layer for layer in packet.iterpayloads() if isinstance(layer, IP | IPv6)]
            if not layers:
                continue
            ip = layers[-1]  # the innermost header: tunnels hide the flow's real ends
            l4 = ip.getlayer(TCP) or ip.getlayer(UDP)
            ports = (l4.sport, l4.dport) if l4 is not None else (0, 0)
            expected.append((ip.src, ip.dst, *ports, _num(values, 312)))
    assert expected
    assert sorted((r.src, r.dst, r.src_port, r.dst_port, r.bytes) for r in records) == sorted(
        expected
    )


def test_options_sampling_rate_multiplies_per_sampler() -> None:
    """multiplesamplingrates: options data gives a rate per FLOW_SAMPLER_ID (read by hand)."""
    _need_captures()
    walker = Walker()
    for data, exporter in group_datagrams("akv-multiplesamplingrates"):
        walker.feed(data, exporter)
    rates: dict[int, int] = {}
    for key, body in walker.data:
        if key in walker.options:
            _scope, fields = walker.options[key]
            for values in Walker.records(fields, body):
                sampler = _num(values, 48)
                rate = _num(values, 34) or _num(values, 50)
                assert sampler is not None and rate
                rates[sampler] = rate
    assert len(set(rates.values())) > 1  # the point of this capture
    expected = []
    for key, body in walker.data:
        if key in walker.templates:
            for values in Walker.records(walker.templates[key], body):
                rate = rates[_num(values, 48) or 0]
                expected.append((_num(values, 1) * rate, _num(values, 2) * rate))  # type: ignore[operator]
    records, _, _ = decode_group("akv-multiplesamplingrates")
    assert sorted((r.bytes, r.packets) for r in records) == sorted(expected)


def test_record_sampling_interval_multiplies() -> None:
    """samplingrate-*: every record carries SAMPLING_INTERVAL (34) itself."""
    _need_captures()
    walker = Walker()
    for data, exporter in group_datagrams("akv-samplingrate"):
        walker.feed(data, exporter)
    expected = [
        (_num(v, 1) * _num(v, 34), _num(v, 2) * _num(v, 34))  # type: ignore[operator]
        for key, body in walker.data
        for v in Walker.records(walker.templates[key], body)
    ]
    assert all(_num(v, 34) not in (None, 0, 1) for key, body in walker.data
               for v in Walker.records(walker.templates[key], body))  # fmt: skip
    records, _, _ = decode_group("akv-samplingrate")
    assert sorted((r.bytes, r.packets) for r in records) == sorted(expected)


def test_v9_options_default_rate_applies_to_exporter() -> None:
    """netflow9_test_invalid01: options data (scope interface) says SAMPLING_INTERVAL 100."""
    _need_captures()
    records, _, _ = decode_group("ls-v9-invalid01")
    walker = Walker()
    ((data, exporter),) = group_datagrams("ls-v9-invalid01")
    walker.feed(data, exporter)
    (opt_key,) = walker.options
    (options_body,) = [body for key, body in walker.data if key == opt_key]
    (values,) = list(Walker.records(walker.options[opt_key][1], options_body))
    rate = _num(values, 34)
    assert rate == 100
    raw = sorted(e[5] for e in expected_flows(walker))
    assert sorted(r.bytes for r in records) == [b * rate for b in raw]


def test_v5_header_sampling_interval() -> None:
    _need_captures()
    for data, exporter in group_datagrams("gl-netflow5.pcap"):
        rate = int.from_bytes(data[22:24], "big") & 0x3FFF
        walker = Walker()
        walker.feed(data, exporter)
        ours = NetflowDecoder().decode(data, exporter, NOW)
        assert [r.bytes for r in ours] == [v["octets"] * (rate or 1) for v in walker.v5]
