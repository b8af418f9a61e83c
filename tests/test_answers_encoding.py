"""Answers are encoded once, fast (orjson), and mean exactly what the json module's encoding meant.

- differential: for a corpus of every kind of value an answer can hold (and some it should not),
  the fast encoder's JSON parses to the same value as the json module's; what orjson refuses
  (integers beyond 64 bits, lone surrogates) falls back to the json module instead of failing;
- the shaper's per-column conversion (columns of plain types are copied, not visited) gives the same
  rows as converting every value, on a DuckDB table of every type with NULLs in every column;
- a Python endpoint's return value becomes JSON-ready once, or a clear error.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import json
import math
import uuid
from types import SimpleNamespace

import duckdb
import pytest
from pydantic import BaseModel

from sqlgate.answers import _stdlib, dumps, encode_bytes, encoded_cost
from sqlgate.endpoints.executor import jsonable
from sqlgate.engine.base import Limits, RowShaper
from sqlgate.engine.values import to_json
from sqlgate.errors import QueryFailed


class Colour(enum.Enum):
    RED = "red"


class Size(enum.StrEnum):
    BIG = "big"


@dataclasses.dataclass
class Point:
    x: int


CORPUS = [
    None, True, False, 0, -1, 2**63 - 1, -(2**63), 2**64 - 1, 2**64, -(2**64) - 5, 10**40,
    0.0, -0.0, 1.5, 1e16, 1e-7, 123456789.123456789, 5e-324, 1.7976931348623157e308,
    "", "plain", 'quote " and backslash \\', "control \x00\x01\x1f\x7f", "é ü ✓ 𝄞 \u2028\u2029",
    "lone \ud800 surrogate", "\t\n\r",
    [], [1, "a", None, [2, [3]]], (1, 2), {}, {"a": 1, "b": [True, None]}, {1: "int key"},
    {"nested": {"deep": {"deeper": ["x"]}}},
    decimal.Decimal("1.25"), dt.datetime(2024, 1, 2, 3, 4, 5), dt.date(2024, 2, 29), dt.time(1, 2, 3),
    uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8"), Size.BIG, Point(3),
]


@pytest.mark.parametrize("value", CORPUS, ids=[repr(v)[:40] for v in CORPUS])
def test_fast_encoding_means_what_the_json_module_meant(value):
    reference = _stdlib(value)
    fast = encode_bytes(value)
    assert json.loads(fast.decode("utf-8", "surrogatepass")) == json.loads(reference)
    assert dumps(value) == fast.decode("utf-8", "surrogatepass")
    # the size the budget counts is the size of what is sent
    assert encoded_cost(fast) == encoded_cost(dumps(value))


def test_an_enum_is_written_by_its_value_as_a_python_endpoints_enum_always_was():
    # the json module wrote str(member) ("Colour.RED"), orjson writes the value; answers never hold
    # an enum: a Python endpoint's value is made JSON-ready first, which also gives the value
    assert encode_bytes([Colour.RED]) == b'["red"]'
    assert jsonable([Colour.RED], SimpleNamespace(kind="tool", name="py")) == ["red"]


def test_whole_answers_agree_byte_for_byte_where_floats_are_absent():
    answer = {"columns": ["id", "name", "ok"], "types": ["INTEGER", "VARCHAR", "BOOLEAN"],
              "rows": [[i, f"name \"{i}\" é", i % 2 == 0] for i in range(500)], "row_count": 500,
              "truncated": False}
    assert encode_bytes(answer) == _stdlib(answer).encode("utf-8")


TYPES_SQL = """
SELECT * FROM (VALUES
  (1::TINYINT, 1::SMALLINT, 1::INTEGER, 1::BIGINT, 170141183460469231731687303715884105727::HUGEINT,
   255::UTINYINT, 18446744073709551615::UBIGINT, 'text "q" \\ é'::VARCHAR, TRUE, 1.5::DOUBLE, 2.5::FLOAT,
   'NaN'::DOUBLE, 'Infinity'::DOUBLE, 12.345::DECIMAL(10,3), 123456789012345678901234567.5::DECIMAL(38,1),
   TIMESTAMPTZ '2024-01-02 03:04:05+02', TIMESTAMP '2024-01-02 03:04:05', DATE '2024-02-29', TIME '01:02:03',
   INTERVAL '1 day 2 hours', '\\xAA\\x00'::BLOB, '6ba7b810-9dad-11d1-80b4-00c04fd430c8'::UUID, [1, 2, NULL],
   {'a': 1, 'b': 'x'}, MAP {'k': 1.5}, '{"j": [1, 2]}'::JSON, 'Infinity'::DOUBLE * -1),
  (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
) t
"""


def test_per_column_conversion_equals_converting_every_value():
    cur = duckdb.connect().cursor()
    cur.execute(TYPES_SQL)
    types = [str(d[1]) for d in cur.description]
    raw = cur.fetchall()
    shaper = RowShaper([d[0] for d in cur.description], types, Limits(100, 1_000_000, 10))
    shaper.add(raw)
    assert shaper.rows == [[to_json(v) for v in row] for row in raw]
    first = shaper.rows[0]
    assert first[4] == 170141183460469231731687303715884105727 and first[11] == "NaN"
    assert json.loads(dumps(shaper.rows))[0][4] == 170141183460469231731687303715884105727  # fell back, exact
    assert shaper.rows[1] == [None] * len(types)


class Model(BaseModel):
    when: dt.datetime
    amount: decimal.Decimal


def test_a_python_endpoints_value_is_made_json_ready_once():
    ep = SimpleNamespace(kind="tool", name="py")
    value = jsonable({"at": dt.datetime(2024, 1, 2, 3, 4, 5), "m": Model(when=dt.datetime(2024, 1, 1),
                      amount=decimal.Decimal("1.5")), "ids": (1, 2), "u": uuid.UUID(int=1)}, ep)
    assert value == {"at": "2024-01-02T03:04:05", "m": {"when": "2024-01-01T00:00:00", "amount": "1.5"},
                     "ids": [1, 2], "u": "00000000-0000-0000-0000-000000000001"}
    assert json.loads(dumps(value)) == value


def test_a_python_endpoints_unsendable_value_is_a_clear_error():
    ep = SimpleNamespace(kind="tool", name="py")
    with pytest.raises(QueryFailed, match="tool 'py' returned a value that cannot be sent as JSON"):
        jsonable({"handle": object()}, ep)


def test_non_finite_floats_never_reach_the_encoder_as_numbers():
    cur = duckdb.connect().cursor()
    cur.execute("SELECT 'NaN'::DOUBLE, '-Infinity'::FLOAT, 1.0::DOUBLE / 3")
    shaper = RowShaper(["a", "b", "c"], [str(d[1]) for d in cur.description], Limits(10, 10_000, 10))
    shaper.add(cur.fetchall())
    assert shaper.rows[0][:2] == ["NaN", "-Infinity"] and math.isclose(shaper.rows[0][2], 1 / 3)
    assert b"NaN" not in encode_bytes(shaper.rows).replace(b'"NaN"', b"")


@pytest.mark.parametrize("width,scale", [(1, 0), (4, 2), (9, 0), (12, 1), (15, 0), (15, 7), (15, 15), (16, 3),
                                         (18, 3), (38, 10)])
def test_short_decimals_take_the_fast_path_and_agree(width, scale):
    cur = duckdb.connect().cursor()
    cur.execute(f"SELECT setseed(0.5); SELECT ((random() - 0.5) * 1.8 * 10 ** ({width} - {scale}))"
                f"::DECIMAL({width},{scale}) AS d FROM range(2000) UNION ALL SELECT 0::DECIMAL({width},{scale})"
                f" UNION ALL SELECT NULL")
    raw = cur.fetchall()
    types = [str(d[1]) for d in cur.description]
    shaper = RowShaper(["d"], types, Limits(5000, 1_000_000, 10))
    shaper.add(raw)
    assert shaper.rows == [[to_json(v) for v in row] for row in raw]
