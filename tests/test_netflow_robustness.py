"""The NetFlow / IPFIX decoder under damaged input: truncation, trailing bytes, fuzzing.

Whatever comes in, decode() returns FlowRecords or raises DecodeError, and state stays bounded.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_netflow_captures import GROUPS, NOW, _need_captures, group_datagrams

from egressd.decode.netflow import NetflowDecoder
from egressd.errors import DecodeError
from egressd.model import FlowRecord


def _all_datagrams() -> list[tuple[bytes, str]]:
    out: list[tuple[bytes, str]] = []
    for name in sorted(GROUPS):
        out += group_datagrams(name)
    return out


def _decode(decoder: NetflowDecoder, data: bytes, exporter: str, now: float = NOW) -> object:
    """Records, or the DecodeError raised; anything else propagates and fails the test."""
    try:
        records = decoder.decode(data, exporter, now)
    except DecodeError as exc:
        assert exc.reason and " " not in exc.reason  # bounded metric label
        return exc
    assert isinstance(records, list)
    assert all(isinstance(r, FlowRecord) for r in records)
    return records


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_truncated_at_every_byte(name: str) -> None:
    _need_captures()
    datagrams = group_datagrams(name)
    decoder = NetflowDecoder()
    for data, exporter in datagrams:  # prime templates so data sets are really decoded
        _decode(decoder, data, exporter)
    for data, exporter in datagrams:
        step = max(1, len(data) // 400)  # every byte for normal datagrams; ~400 cuts for jumbo
        for cut in range(0, len(data), step):
            _decode(decoder, data[:cut], exporter)


@pytest.mark.parametrize("garbage", [b"\x00" * 7, b"\xff" * 5, b"garbage!"])
@pytest.mark.parametrize("name", sorted(GROUPS))
def test_trailing_garbage_keeps_records(name: str, garbage: bytes) -> None:
    _need_captures()
    clean, dirty = NetflowDecoder(), NetflowDecoder()
    for data, exporter in group_datagrams(name):
        expected = _decode(clean, data, exporter)
        got = _decode(dirty, data + garbage, exporter)
        if isinstance(expected, DecodeError):
            continue
        assert isinstance(got, list)
        assert got[: len(expected)] == expected  # type: ignore[arg-type]


def test_negative_inputs_are_counted_not_raised_beyond_decode_error() -> None:
    _need_captures()
    decoder = NetflowDecoder()
    for name in ("ndpi-sflow", "ls-v5-invalid01", "ls-v5-invalid02"):
        for data, exporter in group_datagrams(name):
            assert isinstance(_decode(decoder, data, exporter), DecodeError)
    assert decoder.stats.decode_errors["bad_version"] == 9
    assert decoder.stats.decode_errors["bad_count"] == 2
    assert decoder.stats.records == 0


def test_graylog_incomplete_v9_is_buffered_then_counted_when_template_never_comes() -> None:
    _need_captures()
    decoder = NetflowDecoder(pending_timeout=30.0)
    ((data, exporter),) = group_datagrams("gl-v9-3")[1:]
    assert _decode(decoder, data, exporter) == []
    assert decoder.stats.pending_count == 1
    _decode(decoder, b"\x00\x09" + b"\x00" * 18, exporter, NOW + 31)
    assert decoder.stats.pending_count == 0 and decoder.stats.pending_expired == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes(data: bytes) -> None:
    _decode(NetflowDecoder(), data, "192.0.2.9")


@settings(max_examples=300, deadline=None)
@given(
    version=st.sampled_from([5, 9, 10]),
    body=st.binary(max_size=400),
    length_delta=st.integers(-20, 20),
)
def test_plausible_headers_with_random_sets(version: int, body: bytes, length_delta: int) -> None:
    decoder = NetflowDecoder(max_templates=4, max_pending=3)
    if version == 10:
        length = max(0, 16 + len(body) + length_delta)
        header = bytes([0, 10]) + length.to_bytes(2, "big") + bytes(12)
    else:
        header = bytes([0, version]) + bytes(18 if version == 9 else 22)
    for i in range(3):
        _decode(decoder, header + body, "192.0.2.9", NOW + i)
    assert decoder.stats.template_count <= 4
    assert decoder.stats.pending_count <= 3


@pytest.fixture(scope="module")
def real_datagrams() -> list[tuple[bytes, str]]:
    _need_captures()
    return [(d, e) for d, e in _all_datagrams() if len(d) <= 2000]


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1), mutations=st.integers(1, 12))
def test_mutated_real_datagrams(
    real_datagrams: list[tuple[bytes, str]], seed: int, mutations: int
) -> None:
    rng = random.Random(seed)
    decoder = NetflowDecoder(max_templates=8, max_pending=4)
    for step in range(6):
        data, exporter = rng.choice(real_datagrams)
        mutated = bytearray(data)
        for _ in range(mutations):
            kind = rng.random()
            pos = rng.randrange(len(mutated)) if mutated else 0
            if kind < 0.6 and mutated:
                mutated[pos] = rng.randrange(256)
            elif kind < 0.8:
                del mutated[pos : pos + rng.randrange(1, 9)]
            else:
                mutated[pos:pos] = rng.randbytes(rng.randrange(1, 9))
        _decode(decoder, bytes(mutated), exporter, NOW + step)
        assert decoder.stats.template_count <= 8
        assert decoder.stats.pending_count <= 4
