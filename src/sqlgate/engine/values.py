"""Database values -> JSON-ready Python values, the same on DuckDB and PostgreSQL.

The encoding of each type is documented in README ("How values are encoded"); the column's SQL
type travels next to the rows (`types`), so a string can always be read back as what it was.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import math
import re
import uuid
from typing import Any

_PASS = (str, int, bool)

# Column types whose values the drivers hand over as str/int/bool/None, which are JSON already:
# DuckDB's names (cursor.description) and PostgreSQL's (psycopg type names). Their columns skip
# conversion entirely; any other type goes through to_json value by value.
PLAIN_TYPES = frozenset({
    "BOOLEAN", "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
    "UBIGINT", "UHUGEINT", "VARCHAR",
    "bool", "int2", "int4", "int8", "oid", "text", "varchar", "bpchar", "name",
})
FLOAT_TYPES = frozenset({"DOUBLE", "FLOAT", "float4", "float8"})


_SHORT_DECIMAL = re.compile(r"DECIMAL\((\d+),(\d+)\)")


def column_converter(type_name: str):
    """The function that makes a column's values JSON-ready, or None when they already are."""
    if type_name in PLAIN_TYPES:
        return None
    if type_name in FLOAT_TYPES:
        return float_to_json
    short = _SHORT_DECIMAL.fullmatch(type_name)
    if short and int(short.group(1)) <= 15:
        return short_decimal_to_json
    return to_json


def float_to_json(value: float) -> float | str:
    return value if math.isfinite(value) else _special(value)


def short_decimal_to_json(value: decimal.Decimal) -> int | float:
    """DuckDB's DECIMAL(p,s) with p <= 15: never NaN, and 15 significant digits survive a float
    (DBL_DIG), so to_json's exactness check always passes; the same result without it."""
    whole = int(value)
    return whole if whole == value else float(value)


def to_json(value: Any) -> Any:
    if value is None or isinstance(value, _PASS):
        return value
    if isinstance(value, float):
        # NaN/Infinity are not JSON numbers: the names PostgreSQL and JavaScript use, as strings
        return value if math.isfinite(value) else _special(value)
    if isinstance(value, decimal.Decimal):
        # keep exactness: integral decimals as int, others as float when lossless, else string
        # (also ±Infinity/NaN, and integers too long for Python's int-to-text conversion)
        if not value.is_finite():
            return _special(float(value))
        if value.adjusted() > 4000:
            return str(value)
        if value == value.to_integral_value():
            return int(value)
        f = float(value)
        return f if decimal.Decimal(repr(f)) == value else str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None and value.utcoffset() is not None:
            value = value.astimezone(dt.UTC)  # one instant, one text: whatever the session's time zone
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return iso_duration(0, value.days, value.seconds * 1_000_000 + value.microseconds)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return str(value)


def _special(value: float) -> str:
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def _trunc_divmod(a: int, b: int) -> tuple[int, int]:
    q = abs(a) // b * (1 if a >= 0 else -1)
    return q, a - q * b


def iso_duration(months: int, days: int, micros: int) -> str:
    """An interval as ISO 8601, exactly as PostgreSQL writes it with intervalstyle iso_8601:
    each part keeps its own sign (P-1Y-2M3DT-4H-5M-6.25S), zero parts are left out, PT0S for zero."""
    years, months = _trunc_divmod(months, 12)
    hours, rest = _trunc_divmod(micros, 3_600_000_000)
    minutes, rest = _trunc_divmod(rest, 60_000_000)
    seconds = ""
    if rest:
        whole, frac = _trunc_divmod(rest, 1_000_000)
        sign = "-" if rest < 0 else ""
        seconds = f"{sign}{abs(whole)}" + (f".{abs(frac):06d}".rstrip("0") if frac else "") + "S"
    date = "".join(f"{n}{u}" for n, u in ((years, "Y"), (months, "M"), (days, "D")) if n)
    time = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M")) if n) + seconds
    if not date and not time:
        return "PT0S"
    return "P" + date + ("T" + time if time else "")


_DUCK_INTERVAL = re.compile(
    r"^(?:(?P<y>-?\d+) years? ?)?(?:(?P<mo>-?\d+) months? ?)?(?:(?P<d>-?\d+) days? ?)?"
    r"(?:(?P<neg>-)?(?P<h>\d+):(?P<mi>\d\d):(?P<s>\d\d)(?:\.(?P<f>\d{1,6}))?)?$")


def duckdb_interval(text: Any) -> Any:
    """DuckDB's text of an INTERVAL ('1 year 2 months 3 days 04:05:06.5') -> ISO 8601, months kept."""
    m = _DUCK_INTERVAL.match(str(text).strip())
    if m is None:
        return str(text)  # a form this parser does not know: DuckDB's own text, unchanged
    g = {k: v for k, v in m.groupdict().items() if v is not None}
    months = int(g.get("y", 0)) * 12 + int(g.get("mo", 0))
    micros = ((int(g.get("h", 0)) * 60 + int(g.get("mi", 0))) * 60 + int(g.get("s", 0))) * 1_000_000
    micros += int((g.get("f", "") + "000000")[:6])
    return iso_duration(months, int(g.get("d", 0)), -micros if g.get("neg") else micros)
