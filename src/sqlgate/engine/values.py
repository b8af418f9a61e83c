"""Database values -> JSON-ready Python values."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import uuid
from typing import Any

_PASS = (str, int, bool)


def to_json(value: Any) -> Any:
    if value is None or isinstance(value, _PASS):
        return value
    if isinstance(value, float):
        # NaN/inf are not JSON; say so instead of emitting invalid JSON
        return value if math.isfinite(value) else str(value)
    if isinstance(value, decimal.Decimal):
        # keep exactness: integral decimals as int, others as float when lossless, else string
        # (also ±Infinity/NaN, and integers too long for Python's int-to-text conversion)
        if not value.is_finite() or value.adjusted() > 4000:
            return str(value)
        if value == value.to_integral_value():
            return int(value)
        f = float(value)
        return f if decimal.Decimal(repr(f)) == value else str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if hasattr(value, "months") and hasattr(value, "nanoseconds"):  # Arrow's month-day-nano interval
        return _interval(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return str(value)


def _interval(value: Any) -> Any:
    """Seconds when the interval has no months (as timedelta values are), else ISO 8601."""
    seconds = value.days * 86400 + value.nanoseconds / 1e9
    if not value.months:
        return seconds
    return f"P{value.months}M{value.days}DT{value.nanoseconds / 1e9:g}S"
