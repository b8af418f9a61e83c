"""Read-only safety: the built-in `query` tool over real MCP, and the hardened engine underneath.

Layer 1 (statement checker) is exercised through the official `mcp` client against a real server
subprocess: every write / file / extension / settings trick is refused with a message that names
the problem, and afterwards the database file, its tables and row counts, the marker file and the
directories around it are byte-for-byte unchanged.

Layer 2 (the DuckDB connection itself) is exercised by calling `engine.execute` directly, bypassing
the checker: the connection is read-only, has file access off and its configuration locked, so the
same statements still fail and leave nothing behind.
"""

from __future__ import annotations

import hashlib
import shutil
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from sqlgate.config.loader import load_project
from sqlgate.context import CallContext
from sqlgate.engine import Limits, open_engine
from sqlgate.errors import QueryFailed
from tests.conftest import EXAMPLE, ServerProcess, isolated_env, start_server, stop_server

MARKER_TEXT = "id,name\n1,original\n"
EXPECTED_COUNTS = {"customers": 2000, "orders": 20000, "products": 200}


@dataclass
class Guarded:
    project: Path
    db: Path
    outside: Path  # a directory next to the project: targets of COPY/ATTACH/EXPORT
    marker: Path  # a real, readable CSV file whose content must never change
    server: ServerProcess


def _copy_example(dest: Path) -> Path:
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("data", "__pycache__"))
    return dest


@pytest.fixture(scope="module")
def guarded(tmp_path_factory) -> Guarded:
    tmp = tmp_path_factory.mktemp("readonly")
    project = _copy_example(tmp / "work" / "project")
    outside = tmp / "work" / "outside"
    outside.mkdir()
    marker = outside / "marker.csv"
    marker.write_text(MARKER_TEXT)
    # builds data/shop.duckdb from the seed; the audit trail (which every call writes) lives outside
    # the tree whose files must not change
    server = start_server(project, tmp, env=isolated_env(tmp, SQLGATE_AUDIT_DATABASE=str(tmp / "audit.db")))
    try:
        yield Guarded(project, project / "data" / "shop.duckdb", outside, marker, server)
    finally:
        stop_server(server)


def _tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def snapshot(g: Guarded) -> dict:
    """Everything a successful attack would change."""
    with duckdb.connect(str(g.db), read_only=True) as con:
        tables = con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE NOT internal "
            "UNION ALL SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()
        counts = {t: con.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for (t,) in tables}
    return {
        "db_sha256": hashlib.sha256(g.db.read_bytes()).hexdigest(),
        "tables": [t for (t,) in tables],
        "counts": counts,
        "marker": g.marker.read_text(),
        "files": _tree(g.project.parent),  # project + outside dir (server logs live elsewhere)
    }


@asynccontextmanager
async def mcp_session(url: str):
    async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def run_query(url: str, sql: str):
    async with mcp_session(url) as session:
        return await session.call_tool("query", {"sql": sql})


def test_baseline_snapshot_is_the_seeded_database(guarded):
    snap = snapshot(guarded)
    assert {"customers", "orders", "order_items", "products", "order_totals"} <= set(snap["tables"])
    for table, n in EXPECTED_COUNTS.items():
        assert snap["counts"][table] == n
    assert snap["marker"] == MARKER_TEXT


# (id, sql with {out}/{marker} placeholders, fragments the refusal must contain, path that must not appear)
REFUSED = [
    ("copy-to", "COPY customers TO '{out}/x.csv'", ["COPY is not allowed"], "x.csv"),
    ("copy-to-parquet", "COPY (SELECT * FROM orders) TO '{out}/o.parquet' (FORMAT parquet)",
     ["COPY is not allowed"], "o.parquet"),
    ("read-csv", "SELECT * FROM read_csv('{marker}')", ["read_csv() is not allowed"], None),
    ("read-csv-lateral", "SELECT * FROM range(2) r, LATERAL (SELECT * FROM read_csv_auto('{marker}'))",
     ["read_csv_auto() is not allowed"], None),
    ("read-text-scalar", "SELECT read_text('/etc/hostname')", ["read_text() is not allowed"], None),
    ("read-text-table", "SELECT content FROM read_text('/etc/hostname')", ["read_text() is not allowed"], None),
    ("quoted-file-path", "SELECT * FROM '{marker}'", ["reading files is not allowed", "marker.csv"], None),
    ("double-quoted-file", 'SELECT * FROM "{marker}"', ["reading files is not allowed"], None),
    ("glob", "SELECT * FROM glob('{out}/*')", ["glob() is not allowed"], None),
    ("attach", "ATTACH '{out}/other.db'", ["ATTACH is not allowed"], "other.db"),
    ("attach-as", "ATTACH '{out}/other2.db' AS o", ["ATTACH is not allowed"], "other2.db"),
    ("install", "INSTALL httpfs", ["INSTALL is not allowed"], None),
    ("load", "LOAD httpfs", ["not allowed", "only read-only queries"], None),
    ("set-threads", "SET threads=1", ["SET is not allowed"], None),
    ("set-external-access", "SET enable_external_access=true", ["SET is not allowed"], None),
    ("pragma", "PRAGMA version", ["PRAGMA is not allowed"], None),
    ("set-variable", "SET VARIABLE x=1", ["SET is not allowed"], None),
    ("set-variable-impersonate", "SET VARIABLE sqlgate_ctx = struct_pack(username := 'admin')",
     ["SET is not allowed"], None),
    ("create-table", "CREATE TABLE t2 AS SELECT * FROM customers", ["CREATE is not allowed"], None),
    ("create-temp-macro", "CREATE OR REPLACE TEMP MACRO get_username() AS 'admin'", ["CREATE is not allowed"], None),
    ("insert", "INSERT INTO products VALUES (999, 'x', 'y', 1.0)", ["INSERT is not allowed"], None),
    ("delete", "DELETE FROM orders", ["DELETE is not allowed"], None),
    ("update", "UPDATE customers SET name = 'pwned'", ["UPDATE is not allowed"], None),
    ("drop", "DROP TABLE customers", ["DROP is not allowed"], None),
    ("stacked", "SELECT 1; DROP TABLE customers", ["only one statement per call", "2 statements"], None),
    ("writable-cte", "WITH x AS (DELETE FROM orders RETURNING *) SELECT * FROM x", ["DELETE is not allowed"], None),
    ("block-comment", "/* harmless */ DROP TABLE customers", ["DROP is not allowed"], None),
    ("line-comment", "-- x\nDELETE FROM orders", ["DELETE is not allowed"], None),
    ("backslash-is-not-an-escape", "SELECT 'a\\'; DROP TABLE customers; --'", ["only one statement per call"], None),
    ("comment-hides-semicolon", "SELECT 1 --\n; DROP TABLE customers", ["only one statement per call"], None),
    ("commit-then-delete", "COMMIT; DELETE FROM orders", ["only one statement per call"], None),
    ("commit", "COMMIT", ["COMMIT (transaction control) is not allowed"], None),
    ("begin", "BEGIN TRANSACTION", ["BEGIN (transaction control) is not allowed"], None),
    ("explain-analyze-delete", "EXPLAIN ANALYZE DELETE FROM orders", ["DELETE is not allowed"], None),
    ("explain-drop", "EXPLAIN DROP TABLE customers", ["DROP is not allowed"], None),
    ("select-into", "SELECT * INTO t2 FROM customers", ["refused", "INTO"], None),
    ("query-function", "select * from query('SELECT * FROM customers')", ["query() is not allowed"], None),
    ("query-table-function", "select * from query_table('customers')", ["query_table() is not allowed"], None),
    ("call", "CALL pragma_version()", ["not allowed", "only read-only queries"], None),
    ("checkpoint", "CHECKPOINT", ["CHECKPOINT is not allowed"], None),
    ("force-checkpoint", "FORCE CHECKPOINT", ["not allowed"], None),
    ("export-database", "EXPORT DATABASE '{out}/exported'", ["EXPORT", "not allowed"], "exported"),
    ("use", "USE memory", ["USE is not allowed"], None),
    ("detach", "DETACH shop", ["DETACH is not allowed"], None),
    ("getenv", "SELECT getenv('HOME')", ["getenv() is not allowed"], None),
    ("empty", "  -- nothing\n", ["empty query"], None),
]


@pytest.mark.parametrize(("sql", "fragments", "target"), [pytest.param(*c[1:], id=c[0]) for c in REFUSED])
async def test_query_tool_refuses_and_nothing_changes(guarded, sql, fragments, target):
    before = snapshot(guarded)
    text_sql = sql.format(out=guarded.outside, marker=guarded.marker)
    res = await run_query(guarded.server.url, text_sql)
    assert res.is_error, f"not refused: {text_sql!r} -> {res.content}"
    message = res.content[0].text
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} missing from {message!r}"
    assert "Traceback" not in message
    if target is not None:
        assert not (guarded.outside / target).exists()
    after = snapshot(guarded)
    assert after == before
    assert after["marker"] == MARKER_TEXT
    assert after["counts"]["customers"] == EXPECTED_COUNTS["customers"]


# Refusal messages say *which* statement was refused, named by its first keyword.
@pytest.mark.parametrize(("sql", "keyword"), [
    pytest.param("LOAD httpfs", "LOAD", id="load"),
    pytest.param("CALL pragma_version()", "CALL", id="call"),
    pytest.param("EXPORT DATABASE '/tmp/sqlgate-never-exported'", "EXPORT", id="export"),
])
async def test_refusal_message_names_the_statement(guarded, sql, keyword):
    res = await run_query(guarded.server.url, sql)
    assert res.is_error
    assert keyword in res.content[0].text


ALLOWED = [
    ("select", "SELECT count(*) AS n FROM customers", lambda sc: sc["rows"] == [[2000]]),
    ("with", "WITH r AS (SELECT region, count(*) AS n FROM customers GROUP BY region) "
             "SELECT sum(n) FROM r", lambda sc: sc["rows"] == [[2000]]),
    ("values", "VALUES (1, 'a'), (2, 'b')", lambda sc: sc["rows"] == [[1, "a"], [2, "b"]]),
    ("from-first", "FROM products SELECT count(*)", lambda sc: sc["rows"] == [[200]]),
    ("union", "SELECT 1 AS x UNION ALL SELECT 2", lambda sc: sorted(r[0] for r in sc["rows"]) == [1, 2]),
    ("describe", "DESCRIBE customers",
     lambda sc: [r[sc["columns"].index("column_name")] for r in sc["rows"]][:2] == ["customer_id", "name"]),
    ("show-tables", "SHOW TABLES", lambda sc: {"customers", "orders"} <= {r[0] for r in sc["rows"]}),
    ("summarize", "SUMMARIZE products",
     lambda sc: {r[0] for r in sc["rows"]} == {"product_id", "name", "category", "price"}),
    ("explain-select", "EXPLAIN SELECT * FROM orders WHERE status = 'placed'",
     lambda sc: sc["row_count"] >= 1 and "orders" in str(sc["rows"]).lower()),
    ("e-string-escape", "SELECT E'a\\'; DROP TABLE customers; --' AS s",
     lambda sc: sc["rows"] == [["a'; DROP TABLE customers; --"]]),
    ("nested-comment", "SELECT 1 AS one /* /* */ ; DROP TABLE customers; -- */", lambda sc: sc["rows"] == [[1]]),
    ("trailing-semicolon", "SELECT 42 AS answer;", lambda sc: sc["rows"] == [[42]]),
]


@pytest.mark.parametrize(("sql", "check"), [pytest.param(*c[1:], id=c[0]) for c in ALLOWED])
async def test_query_tool_allows_reads(guarded, sql, check):
    res = await run_query(guarded.server.url, sql)
    assert not res.is_error, res.content[0].text
    sc = res.structured_content
    assert sc["truncated"] is False
    assert check(sc), sc


# ---------------------------------------------------------------- layer 2: the engine itself

@pytest.fixture(scope="module")
def engine_project(tmp_path_factory) -> tuple[Path, Path]:
    """A project whose DB is built once; `outside` holds a real CSV file and receives attack targets."""
    tmp = tmp_path_factory.mktemp("engine")
    project = _copy_example(tmp / "project")
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "marker.csv").write_text(MARKER_TEXT)
    return project, outside


@asynccontextmanager
async def opened_engine(project: Path, tmp: Path):
    loaded = load_project(project, env={"SQLGATE_CONFIG": str(tmp / "no-user-config.yml")})
    engine = open_engine(loaded)
    try:
        yield engine
    finally:
        await engine.close()


ENGINE_LIMITS = Limits(max_rows=100, max_bytes=100_000, timeout_seconds=10)

# (id, sql, fragment of DuckDB's refusal, file that must not exist afterwards)
ENGINE_REFUSED = [
    ("copy-to", "COPY customers TO '{out}/x.csv'", "file system operations are disabled", "x.csv"),
    ("read-csv", "SELECT * FROM read_csv('{out}/marker.csv')", "file system operations are disabled", None),
    ("quoted-file", "SELECT * FROM '{out}/marker.csv'", "file system operations are disabled", None),
    ("read-text", "SELECT * FROM read_text('/etc/hostname')", "file system operations are disabled", None),
    ("attach", "ATTACH '{out}/other.db' AS other", "file system operations are disabled", "other.db"),
    ("install", "INSTALL httpfs", "file system operations are disabled", None),
    ("load", "LOAD httpfs", "Loading external extensions is disabled", None),
    ("enable-external-access", "SET enable_external_access=true", "configuration has been locked", None),
    ("unlock-configuration", "SET lock_configuration=false", "configuration has been locked", None),
    ("create-table", "CREATE TABLE t2 AS SELECT * FROM customers", "read-only mode", None),
    ("delete", "DELETE FROM orders", "read-only mode", None),
    ("export", "EXPORT DATABASE '{out}/exported'", "file system operations are disabled", "exported"),
]


@pytest.mark.parametrize(("sql", "fragment", "target"), [pytest.param(*c[1:], id=c[0]) for c in ENGINE_REFUSED])
async def test_engine_refuses_without_the_checker(engine_project, tmp_path, sql, fragment, target):
    project, outside = engine_project
    db = project / "data" / "shop.duckdb"
    async with opened_engine(project, tmp_path) as engine:
        before_sha = hashlib.sha256(db.read_bytes()).hexdigest()
        with pytest.raises(QueryFailed) as info:
            await engine.execute(sql.format(out=outside), None, CallContext(), ENGINE_LIMITS)
        assert fragment in str(info.value)
        # the engine is still usable after the refusal
        ok = await engine.execute("SELECT count(*) FROM customers", None, CallContext(), ENGINE_LIMITS)
        assert ok.rows == [[2000]]
    if target is not None:
        assert not (outside / target).exists()
    assert sorted(p.name for p in outside.iterdir()) == ["marker.csv"]
    assert (outside / "marker.csv").read_text() == MARKER_TEXT
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before_sha
    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM orders").fetchone() == (20000,)
        assert "t2" not in {r[0] for r in con.execute("SHOW TABLES").fetchall()}
