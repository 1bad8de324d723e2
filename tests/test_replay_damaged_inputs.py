"""A damaged recorded input: a replay names the file and says what is wrong, never a traceback.

A compressed file cut short (a collector stopped while writing it) is read up to the cut and
counted as ``truncated``, as a capture cut short is; a file that is not what its name or format
says stops the replay with an error that names it.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import orjson
import pytest

from egressd.cli import main

FORMATS = ["goflow2-json", "pmacct-json", "egressd-json", "netflow-pcap", "pcap"]


def _goflow2_lines(count: int) -> bytes:
    start = 1_773_064_800  # 2026-03-09T14:00:00Z
    return b"".join(
        orjson.dumps(
            {
                "type": "IPFIX",
                "time_received_ns": (start + i) * 10**9,
                "time_flow_start_ns": (start + i - 1) * 10**9,
                "time_flow_end_ns": (start + i) * 10**9,
                "bytes": 1000 + i,
                "packets": 2,
                "src_addr": "10.20.0.17",
                "dst_addr": "47.100.23.45",
                "proto": "TCP",
                "src_port": 40000,
                "dst_port": 443,
                "sampling_rate": 1,
                "sampler_address": "192.0.2.1",
            }
        )
        + b"\n"
        for i in range(count)
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_gz_file_that_is_not_gzip_is_named(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "flows-0309.gz"
    bad.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n" * 4)
    assert main(["replay", "-q", "-f", fmt, str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"egressd: error: {bad}: "), err
    assert "gzip" in err and "Traceback" not in err


@pytest.mark.parametrize("fmt", ["netflow-pcap", "pcap"])
def test_a_file_that_is_no_capture_is_named(
    fmt: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "export.pcap"
    bad.write_bytes(b"root:x:0:0:root:/root:/bin/bash\n")
    assert main(["replay", "-q", "-f", fmt, str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"egressd: error: {bad}: not a pcap or pcapng capture"), err


def test_a_gz_file_cut_short_is_read_up_to_the_cut(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    whole = gzip.compress(_goflow2_lines(2000), mtime=0)
    cut = tmp_path / "flows-0309.jsonl.gz"
    cut.write_bytes(whole[: len(whole) // 2])
    intact = tmp_path / "flows-0310.jsonl.gz"
    intact.write_bytes(whole)
    assert main(["replay", "-f", "goflow2-json", "-o", str(tmp_path / "a.jsonl"), str(cut)]) == 0
    err = capsys.readouterr().err
    read = int(err.split(" records from ")[0].rsplit(" ", 1)[1].replace(",", ""))
    assert 0 < read < 2000, err
    assert "skipped 1 (truncated=1)" in err, err
    assert f"{cut}: ends mid-way" in caplog.text
    # Another input after it is read whole.
    args = ["replay", "-f", "goflow2-json", "-o", str(tmp_path / "b.jsonl"), str(cut), str(intact)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert f"{read + 2000} records from" in err, err


def test_an_alerts_file_that_cannot_be_written_is_named_before_replaying(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flows = tmp_path / "flows.jsonl"
    flows.write_bytes(_goflow2_lines(10))
    out = tmp_path / "no-such-directory" / "alerts.jsonl"
    assert main(["replay", "-f", "goflow2-json", "-o", str(out), str(flows)]) == 1
    err = capsys.readouterr().err
    assert err == f"egressd: error: {out}: cannot write: No such file or directory\n"


def test_the_summary_says_which_groups_were_still_learning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An archive shorter than detection.learning pages on nothing new: the summary says why."""
    flows = tmp_path / "flows.jsonl"
    flows.write_bytes(_goflow2_lines(10))  # ten seconds from 10.20.0.17 to CN
    config = tmp_path / "egressd.toml"
    config.write_text(
        '[[groups]]\nname = "pinned"\nsources = ["10.30.0.0/16"]\nexpected_countries = ["GB"]\n'
        '[[groups]]\nname = "research"\nsources = ["10.20.0.0/16"]\n'
    )
    assert (
        main(["replay", "-c", str(config), "-f", "goflow2-json", "-o", "/dev/null", str(flows)])
        == 0
    )
    err = capsys.readouterr().err
    assert (
        "replay: still learning when the input ended (detection.learning = 3d of a group's "
        "history): research; no destination was unexpected for them yet\n"
    ) in err, err
    # Past learning, nothing is said.
    config.write_text(config.read_text() + '[detection]\nlearning = "0s"\n')
    assert (
        main(["replay", "-c", str(config), "-f", "goflow2-json", "-o", "/dev/null", str(flows)])
        == 0
    )
    assert "still learning" not in capsys.readouterr().err
