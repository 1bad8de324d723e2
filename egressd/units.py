"""Human durations ("90s", "5m", "1h30m", "3d") and sizes ("100MB", "1GiB") as numbers."""

from __future__ import annotations

import re
from datetime import UTC, datetime

_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 7 * 86400.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)")


def parse_duration(value: str | int | float) -> float:
    """Seconds in ``value``: a number of seconds or a string such as ``"1h30m"``.

    Raises ``ValueError`` with a message fit for a user.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as '5m', got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value!r}")
        return float(value)
    text = value.strip().lower()
    if not text:
        raise ValueError("empty duration")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(
            f"invalid duration {value!r}: use a number with a unit (ms, s, m, h, d, w), e.g. '5m'"
        )
    return total


def parse_size(value: str | int) -> int:
    """Bytes in ``value``: an integer or a string such as ``"100MB"`` or ``"1GiB"``.

    Decimal units (kB, MB, GB, TB) are powers of 1000; binary ones (KiB, MiB, ...) of 1024.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as '100MB', got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value!r}")
        return value
    match = _SIZE.fullmatch(value.strip())
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(
            f"invalid size {value!r}: use a number with a unit (B, kB, MB, GB, TB, KiB, MiB, "
            "GiB, TiB), e.g. '100MB'"
        )
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def format_duration(seconds: float) -> str:
    """The shortest human form of ``seconds`` ("5m", "1h30m", "3d")."""
    if seconds <= 0:
        return "0s"
    parts = []
    remaining = round(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size:
            count, remaining = divmod(remaining, size)
            parts.append(f"{count}{unit}")
    return "".join(parts) or f"{seconds}s"


def format_bytes(count: float) -> str:
    """``count`` bytes in decimal units ("6.01 GB")."""
    value = float(count)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1000
    return f"{value:.2f} PB"


def format_utc(seconds: float) -> str:
    """``seconds`` since the epoch as an ISO 8601 UTC time (the number, when out of range)."""
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat()
    except (OverflowError, ValueError, OSError):
        return repr(seconds)
