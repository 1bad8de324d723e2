"""Human durations and sizes: parsing, formatting and the errors a user sees."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from egressd.units import format_bytes, format_duration, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90s", 90.0),
        ("5m", 300.0),
        ("1h30m", 5400.0),
        ("3d", 259200.0),
        ("1w", 604800.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        (" 2h ", 7200.0),
        ("1D", 86400.0),
        (45, 45.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "m5", "1h-30m", "1y", -1, True, "5m 3s"])
def test_parse_duration_rejects(text: str | int | bool) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("100MB", 100 * 1000**2),
        ("1GiB", 1024**3),
        ("1.5GB", 1_500_000_000),
        ("10kB", 10_000),
        ("512 KiB", 512 * 1024),
        ("2TB", 2 * 1000**4),
        ("7", 7),
        ("7B", 7),
        (123, 123),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "MB", "5XB", "five MB", -5, False, "1e9"])
def test_parse_size_rejects(text: str | int | bool) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


def test_format() -> None:
    assert format_duration(300) == "5m"
    assert format_duration(5400) == "1h30m"
    assert format_duration(3 * 86400 + 1) == "3d1s"
    assert format_duration(0) == "0s"
    assert format_bytes(6_012_000_000) == "6.01 GB"
    assert format_bytes(999) == "999 B"
    assert format_bytes(100_000_000) == "100.00 MB"


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=10**8))
def test_duration_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**15), st.sampled_from(["", "B", "kB", "KiB", "MB"]))
def test_size_is_exact_for_whole_units(count: int, unit: str) -> None:
    factor = {"": 1, "B": 1, "kB": 1000, "KiB": 1024, "MB": 1000**2}[unit]
    # Sizes go through a float: exact up to 2**53 bytes (8 PiB), far beyond any real floor.
    assume(count * factor <= 2**53)
    assert parse_size(f"{count}{unit}") == count * factor
