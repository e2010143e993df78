"""Duration and size strings, parsed once at load into typed values.

Config keys take strings (``timeout: 30s``, ``max_body: 64MiB``); Python names carry units
(``timeout_s``). These annotated types make pydantic do the parsing with a clear message.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PlainSerializer, StringConstraints

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)\s*$")
_DURATION_PART_RE = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h|d)")
_DURATION_UNITS_S = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 1000**2, "MiB": 1024**2, "GB": 1000**3, "GiB": 1024**3,
}


class InvalidDurationError(ValueError):
    """A duration string that is not ``<number><unit>`` (units ns, us, ms, s, m, h, d)."""


def parse_duration_s(value: Any) -> float:
    """Parse ``"250ms"``, ``"1m30s"``, ``"2s"`` (or a bare number of seconds) into seconds."""
    if isinstance(value, bool):
        raise InvalidDurationError(f"invalid duration {value!r}: expected e.g. 250ms, 30s, 5m")
    if isinstance(value, int | float):
        if value < 0:
            raise InvalidDurationError(f"invalid duration {value!r}: must not be negative")
        return float(value)
    if not isinstance(value, str):
        raise InvalidDurationError(f"invalid duration {value!r}: expected e.g. 250ms, 30s, 5m")
    text = value.strip()
    if _DURATION_RE.match(text):
        number, unit = _DURATION_RE.match(text).groups()  # type: ignore[union-attr]
        return float(number) * _DURATION_UNITS_S[unit]
    parts = _DURATION_PART_RE.findall(text)
    if parts and "".join(n + u for n, u in parts) == text:
        return sum(float(n) * _DURATION_UNITS_S[u] for n, u in parts)
    raise InvalidDurationError(f"invalid duration {value!r}: expected e.g. 250ms, 30s, 5m")


def format_duration(seconds: float) -> str:
    """Render seconds the way a person writes them: ``812ms``, ``2.5s``, ``3m``."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1:
        return f"{seconds * 1e3:.0f}ms"
    if seconds < 60:
        return f"{seconds:.3g}s"
    if seconds < 3600:
        return f"{seconds / 60:.3g}m"
    return f"{seconds / 3600:.3g}h"


def parse_size_bytes(value: Any) -> int:
    """Parse ``"64MiB"``, ``"1GB"`` or a bare integer into bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])
    raise ValueError(f"invalid size {value!r}: expected e.g. 64MiB, 512KB")


def _serialize_duration(seconds: float) -> str:
    return f"{seconds:g}s"


DURATION_PATTERN = r"^\s*(\d+(\.\d+)?\s*(ns|us|µs|ms|s|m|h|d)|(\d+(\.\d+)?(ns|us|µs|ms|s|m|h|d))+)\s*$"
"""What a duration string looks like, for the JSON Schema (``parse_duration_s`` is the authority)."""
SIZE_PATTERN = r"^\s*\d+(\.\d+)?\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$"
"""What a size string looks like, for the JSON Schema (``parse_size_bytes`` is the authority)."""

# What a config file may hold (the JSON Schema shows it): a string with a unit, or a bare number.
_DurationInput = Annotated[str, StringConstraints(pattern=DURATION_PATTERN)] | Annotated[float, Field(ge=0)]
_SizeInput = Annotated[str, StringConstraints(pattern=SIZE_PATTERN)] | Annotated[int, Field(ge=0)]

Duration = Annotated[
    float,
    BeforeValidator(parse_duration_s, json_schema_input_type=_DurationInput),
    PlainSerializer(_serialize_duration, return_type=str, when_used="json"),
]
"""A duration in seconds, written in config as ``250ms``, ``30s``, ``5m``."""

Size = Annotated[int, BeforeValidator(parse_size_bytes, json_schema_input_type=_SizeInput)]
"""A size in bytes, written in config as ``64MiB``."""


def _valid_timezone(value: Any) -> str:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    if not isinstance(value, str):
        raise ValueError(f"unknown timezone {value!r}")
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError) as e:  # OSError: "America" is a directory of zones
        raise ValueError(f"unknown timezone {value!r}") from e
    return value


def _valid_cron(value: Any) -> str:
    from croniter import croniter

    if not isinstance(value, str) or not croniter.is_valid(value):
        raise ValueError(f"invalid cron expression {value!r}")
    return value


Timezone = Annotated[str, BeforeValidator(_valid_timezone)]
"""An IANA timezone name (``America/Los_Angeles``), checked at load."""

CronExpression = Annotated[str, BeforeValidator(_valid_cron)]
"""A cron expression (``0 8 * * *``), checked at load with the same parser the scheduler uses."""
