"""``[[sources.netflow]] workers = 2`` in a real ``egressd run``: exporters on several loopback
addresses, each steered to one worker process; a killed worker starts again on its socket."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration_support import http_get, metric_value, wait_until
from tests.netflow_builders import data_set, ipfix_datagram, template_set
from tests.test_daemon_integration import FIELDS, Setup, firing_countries

pytestmark = pytest.mark.integration

EXPORTERS = [f"127.0.0.{n}" for n in range(2, 8)]


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Setup]:
    s = Setup(tmp_path)
    s.text += "workers = 2\n"
    # These tests send one flow key from several exporters to see each exporter's records
    # reach the engine through its worker: summed, as a flow two exporters report is not.
    s.text = s.text.replace("[detection]\n", '[detection]\nduplicate_exports = "sum"\n', 1)
    s.config.write_text(s.text)
    yield s
    if s.egressd.alive():
        s.egressd.stop()


def send_from(s: Setup, exporter: str, datagram: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((exporter, 0))
        sock.sendto(datagram, ("127.0.0.1", s.udp))


def template(template_id: int = 300) -> bytes:
    return ipfix_datagram(
        [template_set({template_id: FIELDS}, ipfix=True)], export_secs=int(time.time())
    )


def data(records: list[tuple[str, str, int, float]], template_id: int = 300) -> bytes:
    rows = [
        [socket.inet_aton(src), socket.inet_aton(dst), size, 1, int(end) - 10, int(end)]
        for src, dst, size, end in records
    ]
    return ipfix_datagram([data_set(template_id, FIELDS, rows)], export_secs=int(time.time()))


def source_of(s: Setup) -> str:
    return f"netflow:127.0.0.1:{s.udp}"


def worker_received(s: Setup) -> dict[str, float]:
    text = s.egressd.metrics()
    return {
        w: metric_value(
            text, "egressd_netflow_worker_received_total", source=source_of(s), worker=w
        )
        or 0.0
        for w in ("0", "1")
    }


def egress(s: Setup, country: str) -> float:
    return (
        metric_value(s.egressd.metrics(), "egressd_egress_bytes_total", dst_country=country) or 0.0
    )


def worker_of(s: Setup, exporter: str) -> str:
    """Which worker an exporter's datagrams reach (seen in the per-worker counters)."""
    before = worker_received(s)
    send_from(s, exporter, template())
    wait_until(lambda: worker_received(s) != before, 10, what=f"{exporter} received")
    after = worker_received(s)
    moved = [w for w in after if after[w] != before[w]]
    assert len(moved) == 1, (before, after)
    return moved[0]


def worker_pids(s: Setup) -> dict[str, int]:
    assert s.egressd.process is not None
    parent = s.egressd.process.pid
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    out: dict[str, int] = {}
    for pid in children:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        for arg in argv:
            if arg.startswith(b"worker="):
                out[arg[7:].decode()] = int(pid)
    return out


def test_workers_count_every_exporter_once_and_page(workers: Setup) -> None:
    s = workers
    s.egressd.start()
    assert metric_value(s.egressd.metrics(), "egressd_netflow_workers") == 2
    placement = {exporter: worker_of(s, exporter) for exporter in EXPORTERS}
    # Exporter affinity: the addresses spread over both workers, and templates sent once
    # per exporter (above) decode every later data set, so each exporter stays on its worker.
    assert set(placement.values()) == {"0", "1"}, placement
    now = time.time()
    sent = 0
    for round_ in range(5):
        for n, exporter in enumerate(EXPORTERS):
            size = 1000 * (n + 1) + round_
            send_from(s, exporter, data([("10.20.0.5", "81.2.69.160", size, now - 5)]))
            sent += size
    wait_until(lambda: egress(s, "GB") == sent, 15, what=f"{sent} bytes to GB")
    received = worker_received(s)
    assert sum(received.values()) == len(EXPORTERS) * 6
    text = s.egressd.metrics()
    assert metric_value(text, "egressd_received_total", source=source_of(s)) == len(EXPORTERS) * 6
    assert metric_value(text, "egressd_records_total", source=source_of(s)) == len(EXPORTERS) * 5
    assert metric_value(text, "egressd_engine_records_total") == len(EXPORTERS) * 5
    assert metric_value(text, "egressd_netflow_templates", source=source_of(s)) == len(EXPORTERS)
    # An exfiltration two minutes ago, then a flow closing its interval: pages as one process.
    exporter = EXPORTERS[0]
    send_from(s, exporter, data([("10.20.0.17", "47.100.23.45", 5_000_000, now - 120)]))
    send_from(s, EXPORTERS[1], data([("10.20.0.17", "81.2.69.160", 10_000, time.time())]))
    wait_until(lambda: firing_countries(s) == ["CN"], 15, what="CN alert through workers")
    assert s.egressd.stop() == 0, s.egressd.log()


def test_killed_worker_starts_again_on_its_socket(workers: Setup) -> None:
    s = workers
    s.egressd.start()
    placement = {exporter: worker_of(s, exporter) for exporter in EXPORTERS}
    victim = "0"
    on_victim = next(e for e, w in placement.items() if w == victim)
    elsewhere = next(e for e, w in placement.items() if w != victim)
    pids = worker_pids(s)
    assert set(pids) == {"0", "1"}, pids

    def decoder(name: str, **labels: str) -> float | None:
        return metric_value(s.egressd.metrics(), name, source=source_of(s), **labels)

    wait_until(
        lambda: decoder("egressd_netflow_template_records_total") == len(EXPORTERS),
        10,
        what="templates counted",
    )
    os.kill(pids[victim], signal.SIGKILL)

    def restarted() -> bool:
        text = s.egressd.metrics()
        return (
            metric_value(
                text, "egressd_netflow_worker_restarts_total", source=source_of(s), worker=victim
            )
            == 1
            and metric_value(text, "egressd_netflow_worker_up", worker=victim) == 1
        )

    wait_until(restarted, 15, what="worker 0 restarted")
    new_pids = worker_pids(s)
    assert new_pids[victim] != pids[victim] and new_pids["1"] == pids["1"]
    now = time.time()
    # The other worker kept its templates: no re-send needed there.
    send_from(s, elsewhere, data([("10.20.0.5", "81.2.69.160", 7_000, now - 5)]))
    wait_until(lambda: egress(s, "GB") == 7_000, 10, what="surviving worker decodes")
    # The restarted worker learns templates again: data waits until the exporter re-sends
    # them, and the same exporter still reaches the same (restarted) worker.
    before = worker_received(s)
    send_from(s, on_victim, data([("10.20.0.5", "81.2.69.160", 3_000, now - 5)]))
    wait_until(lambda: worker_received(s)[victim] > before[victim], 10, what="victim received")
    assert worker_received(s)["1"] == before["1"]
    time.sleep(0.5)
    assert egress(s, "GB") == 7_000
    send_from(s, on_victim, template())
    wait_until(lambda: egress(s, "GB") == 10_000, 10, what="pending data decoded after template")
    # Decoder counters add up over the worker's processes; gauges hold what lives now.
    assert decoder("egressd_netflow_template_records_total") == len(EXPORTERS) + 1
    assert decoder("egressd_netflow_pending_total", outcome="decoded") == 1
    on_survivor = sum(1 for w in placement.values() if w != victim)
    assert decoder("egressd_netflow_templates") == on_survivor + 1
    assert s.egressd.alive()
    assert s.egressd.stop() == 0, s.egressd.log()


def test_reload_reaches_the_workers_and_keeps_their_templates(workers: Setup) -> None:
    s = workers
    s.egressd.start()
    placement = {exporter: worker_of(s, exporter) for exporter in EXPORTERS}
    assert set(placement.values()) == {"0", "1"}, placement
    pids = worker_pids(s)

    def group_bytes(group: str) -> float:
        return metric_value(s.egressd.metrics(), "egressd_egress_bytes_total", group=group) or 0.0

    now = time.time()
    for exporter in EXPORTERS:
        send_from(s, exporter, data([("10.30.0.5", "81.2.69.160", 1_000, now - 5)]))
    wait_until(lambda: group_bytes("other") == 6_000, 10, what="10.30/16 counted as other")
    # Workers classify: a reloaded group must reach them, without a restart.
    s.config.write_text(
        s.text.replace('sources = ["10.20.0.0/16"]', 'sources = ["10.20.0.0/16", "10.30.0.0/16"]')
    )
    s.egressd.signal(signal.SIGHUP)
    wait_until(
        lambda: metric_value(s.egressd.metrics(), "egressd_config_reloads_total") == 1,
        10,
        what="reload applied",
    )
    time.sleep(0.5)
    for exporter in EXPORTERS:  # no template re-sent: each worker kept its exporters'
        send_from(s, exporter, data([("10.30.0.5", "81.2.69.160", 2_000, now - 5)]))
    wait_until(lambda: group_bytes("research") == 12_000, 10, what="10.30/16 now research")
    assert group_bytes("other") == 6_000
    assert worker_pids(s) == pids
    assert s.egressd.stop() == 0, s.egressd.log()


def test_workers_on_an_ipv6_listener(tmp_path: Path) -> None:
    s = Setup(tmp_path)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
        probe.bind(("::1", 0))
        port = int(probe.getsockname()[1])
    s.text = s.text.replace(f'listen = "127.0.0.1:{s.udp}"', f'listen = "[::1]:{port}"')
    s.text += "workers = 2\n"
    s.config.write_text(s.text)
    s.egressd.start()
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.sendto(template(), ("::1", port))
            sock.sendto(data([("10.20.0.5", "81.2.69.160", 4_321, time.time() - 5)]), ("::1", port))
        wait_until(lambda: egress(s, "GB") == 4_321, 10, what="IPv6 exporter counted")
        text = s.egressd.metrics()
        received = [
            metric_value(text, "egressd_netflow_worker_received_total", worker=w) for w in "01"
        ]
        assert sorted(received) == [0.0, 2.0], received  # one exporter, one worker
        assert s.egressd.stop() == 0, s.egressd.log()
    finally:
        if s.egressd.alive():
            s.egressd.stop()


def test_drops_are_counted_per_worker(workers: Setup) -> None:
    s = workers
    s.text = s.text.replace("workers = 2\n", 'workers = 2\nreceive_buffer = "64KiB"\n')
    s.text += 'allowed_exporters = ["127.0.0.2/31", "127.0.0.4/31", "127.0.0.6/32"]\n'
    s.config.write_text(s.text)
    s.egressd.start()
    placement = {exporter: worker_of(s, exporter) for exporter in EXPORTERS[:-1]}
    victim = "0"
    on_victim = next(e for e, w in placement.items() if w == victim)
    source = source_of(s)

    def dropped(worker: str, reason: str) -> float:
        return (
            metric_value(
                s.egressd.metrics(),
                "egressd_netflow_worker_dropped_total",
                source=source,
                worker=worker,
                reason=reason,
            )
            or 0.0
        )

    # An exporter outside the allowlist: counted by the worker that got its datagram.
    refused = EXPORTERS[-1]
    before = worker_received(s)
    send_from(s, refused, template())
    wait_until(lambda: worker_received(s) != before, 10, what="refused datagram received")
    after = worker_received(s)
    (refusing,) = [w for w in after if after[w] != before[w]]
    assert dropped(refusing, "exporter_not_allowed") == 1
    assert metric_value(s.egressd.metrics(), "egressd_dropped_total", source=source) == 1
    # A stopped worker: its socket's buffer overflows, counted for that worker alone.
    pid = worker_pids(s)[victim]
    os.kill(pid, signal.SIGSTOP)
    try:
        payload = data([("10.20.0.5", "81.2.69.160", 1, time.time())] * 40)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((on_victim, 0))
            for _ in range(2000):
                sock.sendto(payload, ("127.0.0.1", s.udp))
        wait_until(lambda: dropped(victim, "receive_buffer") > 0, 10, what="buffer drops")
        assert dropped("1", "receive_buffer") == 0
        assert s.egressd.alive()
        assert http_get(f"{s.egressd.base}/readyz")[0] == 200
    finally:
        os.kill(pid, signal.SIGCONT)
    assert s.egressd.stop() == 0, s.egressd.log()


def test_workers_pick_up_replaced_geo_files(tmp_path: Path) -> None:
    from tests.test_geo_reload import replace_atomically, write_country

    country = tmp_path / "country.mmdb"
    write_country(country, "GB", 1_700_000_000)
    s = Setup(tmp_path)
    s.text = s.text.replace(
        "[state]", f'[geo]\ncountry_mmdb = "{country}"\nwatch_interval = "1s"\n\n[state]'
    )
    s.text += "workers = 2\n"
    s.text = s.text.replace("[detection]\n", '[detection]\nduplicate_exports = "sum"\n', 1)
    s.config.write_text(s.text)
    s.egressd.start()
    try:
        for exporter in EXPORTERS:
            send_from(s, exporter, template())
            send_from(s, exporter, data([("10.20.0.5", "18.130.0.10", 1_000, time.time() - 5)]))
        wait_until(lambda: egress(s, "GB") == 6_000, 10, what="labelled GB by the mmdb")
        # Each worker watches the files as the daemon does: relabelled without a reload.
        replace_atomically(country, lambda p: write_country(p, "CN", 1_710_000_000))
        time.sleep(3)
        for exporter in EXPORTERS:
            send_from(s, exporter, data([("10.20.0.5", "18.130.0.10", 2_000, time.time() - 5)]))
        wait_until(lambda: egress(s, "CN") == 12_000, 10, what="labelled CN after replace")
        assert egress(s, "GB") == 6_000
        assert s.egressd.stop() == 0, s.egressd.log()
    finally:
        if s.egressd.alive():
            s.egressd.stop()


def test_a_silent_worker_is_killed_and_started_again(workers: Setup) -> None:
    s = workers
    s.egressd.start()
    pids = worker_pids(s)
    os.kill(pids["0"], signal.SIGSTOP)  # alive to the kernel, but reports nothing

    def restarted() -> bool:
        text = s.egressd.metrics()
        return (
            metric_value(text, "egressd_netflow_worker_restarts_total", worker="0") == 1
            and metric_value(text, "egressd_netflow_worker_up", worker="0") == 1
        )

    wait_until(restarted, 40, what="silent worker restarted")
    now = worker_pids(s)
    assert now["0"] != pids["0"] and now["1"] == pids["1"]
    assert not Path(f"/proc/{pids['0']}").exists()  # killed and reaped
    assert "sent nothing for 20s: killed" in s.egressd.log()
    assert s.egressd.stop() == 0, s.egressd.log()


def test_proven_exporters_stay_proven_across_a_restart_with_workers(workers: Setup) -> None:
    # The state file lists the proven exporters so a restart keeps them proven (a flood from
    # forged addresses started then would otherwise share the queue's reserve, the decoder's
    # tables and its template budget with them for half a minute). With workers it listed
    # none: the worker processes decode, and only they knew which exporters were proven.
    import orjson

    s = workers
    s.egressd.start()
    placement = {exporter: worker_of(s, exporter) for exporter in EXPORTERS}
    assert set(placement.values()) == {"0", "1"}
    assert s.egressd.stop() == 0, s.egressd.log()
    state = orjson.loads(s.state.read_bytes())
    assert state["sources"][source_of(s)] == {"proven_exporters": []}
    state["sources"][source_of(s)] = {"proven_exporters": [*EXPORTERS, "nonsense", 7]}
    s.state.write_bytes(orjson.dumps(state))

    def proven() -> float | None:
        text = s.egressd.metrics()
        return metric_value(text, "egressd_netflow_proven_exporters", source=source_of(s))

    s.egressd.start()
    # Each worker holds those steered to it: six in all, not six each.
    wait_until(lambda: proven() == len(EXPORTERS), 10, what="proven exporters restored")
    # A worker started again gets its proven exporters back from the daemon.
    os.kill(worker_pids(s)["0"], signal.SIGKILL)
    wait_until(
        lambda: (
            metric_value(s.egressd.metrics(), "egressd_netflow_worker_restarts_total", worker="0")
            == 1
        ),
        15,
        what="worker 0 restarted",
    )
    wait_until(lambda: proven() == len(EXPORTERS), 10, what="proven exporters handed back")
    assert s.egressd.stop() == 0, s.egressd.log()
    saved = orjson.loads(s.state.read_bytes())["sources"][source_of(s)]["proven_exporters"]
    assert sorted(saved) == sorted(EXPORTERS)
    # The daemon hands each worker the exporters the kernel steers to it.
    from egressd.sources.netflow_workers import steered_socket

    assert placement == {e: str(steered_socket(e, 2)) for e in EXPORTERS}
