"""Typed values are encoded the same way on DuckDB and PostgreSQL (README "How values are encoded"):
intervals as ISO 8601 with months kept, blobs as base64, exact decimals, instants in UTC, NaN and
Infinity by name, UUIDs and nested values."""

from __future__ import annotations

import pytest

from sqlgate.config.loader import load_project
from sqlgate.context import CallContext
from sqlgate.engine import Limits, open_engine
from tests.conftest import isolated_env
from tests.test_postgres import _as, _engine, pg_database
from tests.test_postgres import pytestmark as _pg_only

LIMITS = Limits(max_rows=100, max_bytes=100_000, timeout_seconds=10)

# (SQL expression valid in both dialects, its expected JSON value)
SHARED = [
    ("INTERVAL '1 year 2 months 3 days 04:05:06.5'", "P1Y2M3DT4H5M6.5S"),
    ("INTERVAL '-1 month'", "P-1M"),
    ("INTERVAL '-1 year -2 months 3 days -04:05:06.25'", "P-1Y-2M3DT-4H-5M-6.25S"),
    ("INTERVAL '0 seconds'", "PT0S"),
    ("INTERVAL '100 hours'", "PT100H"),
    ("CAST(1.50 AS DECIMAL(10, 2))", 1.5),
    ("CAST(12345678901234567.25 AS DECIMAL(38, 2))", "12345678901234567.25"),
    ("CAST(42 AS DECIMAL(10, 0))", 42),
    ("CAST('NaN' AS DOUBLE PRECISION)", "NaN"),
    ("CAST('Infinity' AS DOUBLE PRECISION)", "Infinity"),
    ("CAST('-Infinity' AS DOUBLE PRECISION)", "-Infinity"),
    ("TIMESTAMPTZ '2024-01-02 03:04:05+02'", "2024-01-02T01:04:05+00:00"),
    ("TIMESTAMP '2024-01-02 03:04:05.25'", "2024-01-02T03:04:05.250000"),
    ("DATE '2024-02-29'", "2024-02-29"),
    ("TIME '01:02:03'", "01:02:03"),
    ("CAST('6ba7b810-9dad-11d1-80b4-00c04fd430c8' AS UUID)", "6ba7b810-9dad-11d1-80b4-00c04fd430c8"),
    ("ARRAY[1, 2, 3]", [1, 2, 3]),
    ("TRUE", True),
    ("CAST(9007199254740993 AS BIGINT)", 9007199254740993),
]


def _select(exprs: list[str]) -> str:
    return "SELECT " + ", ".join(f"{e} AS c{i}" for i, e in enumerate(exprs))


@pytest.fixture(scope="module")
def duck(tmp_path_factory):
    root = tmp_path_factory.mktemp("values")
    (root / "sqlgate.yml").write_text("name: values\nengine:\n  path: ':memory:'\n")
    return open_engine(load_project(root, env=isolated_env(root)))


@pytest.mark.parametrize("trusted", [False, True])
async def test_duckdb_values(duck, trusted):
    exprs = [e for e, _ in SHARED] + ["'\\xAA\\x00'::BLOB", "{'a': 1, 'b': [INTERVAL '1 day']}",
                                      "MAP {'k': 1}", "[1.5, 'nan'::DOUBLE]"]
    sql = _select(exprs)
    qr = (await duck.execute(sql, None, CallContext(), LIMITS) if trusted
          else await duck.run_untrusted(sql, CallContext(), LIMITS))
    row = qr.rows[0]
    for (expr, expected), got in zip(SHARED, row, strict=False):
        assert got == expected, (expr, got)
    assert row[len(SHARED):] == ["qgA=", {"a": 1, "b": ["P1D"]}, {"k": 1}, [1.5, "NaN"]]
    assert qr.types[0] == "INTERVAL" and qr.types[len(SHARED)] == "BLOB"


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    with pg_database(tmp_path_factory) as info:
        yield info


@_pg_only
async def test_postgres_values_match_duckdb(pg):
    engine = _engine(pg)
    try:
        qr = await engine.run_untrusted(_select([e for e, _ in SHARED] + ["'\\xaa00'::bytea"]), _as("alice"), LIMITS)
    finally:
        await engine.close()
    row = qr.rows[0]
    for (expr, expected), got in zip(SHARED, row, strict=False):
        assert got == expected, (expr, got)
    assert row[-1] == "qgA="
    assert qr.types[0] == "interval" and qr.types[-1] == "bytea"


async def _page_all(tool, sql: str) -> tuple[list, dict]:
    """Every row of the query tool's answer, following next_cursor (in-process, the real tool)."""
    rows, args, first = [], {"sql": sql}, None
    while True:
        sc = (await tool.run(args)).structured_content
        first = first or sc
        rows += sc["rows"]
        if not sc["truncated"]:
            return rows, first
        args = {"sql": sql, "cursor": sc["next_cursor"]}


def _query_tool(engine):
    from sqlgate.config.models import SqlToolsConfig
    from sqlgate.paging import Pager
    from sqlgate.sqltools.builtin import builtin_tools

    small = Limits(max_rows=70, max_bytes=100_000, timeout_seconds=10)
    tools = builtin_tools(engine, SqlToolsConfig(), lambda: small, lambda: _as("alice"), Pager("k", 60))
    return next(t for t in tools if t.name == "query")


@_pg_only
async def test_postgres_paging_returns_every_row_once(pg):
    engine = _engine(pg)
    try:
        tool = _query_tool(engine)
        rows, first = await _page_all(tool, "SELECT g % 7 AS k, g FROM generate_series(1, 500) g")
        assert sorted(r[1] for r in rows) == list(range(1, 501))  # no ORDER BY: the pager's total order
        assert "ORDER BY ALL" in first["hint"]
        rows, _ = await _page_all(tool, "SELECT g FROM generate_series(1, 500) g ORDER BY g DESC")
        assert [r[0] for r in rows] == list(range(500, 0, -1))  # the query's own order, kept
        # columns PostgreSQL cannot sort: no cursor, and the hint asks for an ORDER BY
        sc = (await tool.run({"sql": "SELECT json_build_object('g', g) AS j FROM generate_series(1, 500) g"})
              ).structured_content
        assert sc["truncated"] and "next_cursor" not in sc and "add an ORDER BY" in sc["hint"]
    finally:
        await engine.close()


async def test_duckdb_paging_returns_every_row_once(duck):
    tool = _query_tool(duck)
    rows, _ = await _page_all(tool, "SELECT (i * 31) % 500 AS k, {'n': i} AS s FROM range(500) t(i)")
    assert sorted(r[0] for r in rows) == list(range(500))
    rows, _ = await _page_all(tool, "SELECT i FROM range(500) t(i) ORDER BY i DESC")
    assert [r[0] for r in rows] == list(range(499, -1, -1))
