"""What travels beside the partials: batch headers, heartbeats, and the watermark they give."""

from __future__ import annotations

import math

import pytest

from egressd.cluster.wire import (
    Heartbeat,
    batch_info,
    partials_headers,
    read_headers,
    watermark,
)
from egressd.errors import DecodeError


def test_batch_headers_round_trip() -> None:
    headers = read_headers(partials_headers("flows:3", 1000, 1999, 1_772_445_600.25))
    info = batch_info(headers)
    assert (info.source, info.first, info.last, info.event_time) == (
        "flows:3",
        1000,
        1999,
        1_772_445_600.25,
    )


@pytest.mark.parametrize(
    "headers",
    [
        [],
        [("egressd-source", b"flows:0"), ("egressd-first-offset", b"5")],
        partials_headers("flows:0", 10, 5, 0.0),
        [
            (k, b"x" if k == "egressd-last-offset" else v)
            for k, v in partials_headers("f:0", 1, 2, 0)
        ],
        partials_headers("flows:0", 1, 2, math.nan),
    ],
)
def test_bad_batch_headers_are_a_decode_error(headers: list[tuple[str, bytes]]) -> None:
    with pytest.raises(DecodeError) as error:
        batch_info(read_headers(headers))
    assert error.value.reason == "bad_headers"


def test_heartbeats_round_trip_and_reject_nonsense() -> None:
    beat = Heartbeat({"flows:0": 10.5}, {"flows": 2})
    assert Heartbeat.decode(beat.encode()) == beat
    for blob in (b"", b"[]", b'{"v": 1}', b'{"v": 1, "times": {}, "partitions": {"f": 0}}'):
        with pytest.raises(DecodeError):
            Heartbeat.decode(blob)


def test_the_watermark_is_the_slowest_partition_once_all_were_heard() -> None:
    partitions = {"flows": 3}
    assert watermark({}, {}) == -math.inf
    assert watermark({"flows:0": 50.0, "flows:1": 20.0}, partitions) == -math.inf
    assert watermark({"flows:0": 50.0, "flows:1": 20.0, "flows:2": 90.0}, partitions) == 20.0
    both = {"flows": 1, "more": 1}
    assert watermark({"flows:0": 50.0, "more:0": 30.0}, both) == 30.0
