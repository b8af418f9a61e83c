"""The DuckDB guard decides with DuckDB's own parser, and the engine runs only what it admitted.

- A differential corpus (dollar-quote tags with every Unicode space class, nested comments,
  quoting, semicolons inside strings and identifiers, E'' strings, multi-statement variants):
  sqlgate admits a text exactly when DuckDB's `extract_statements` reads one allowed statement.
- Whatever is admitted and run leaves the connection clean: no temp objects, variables or
  replaced caller functions survive into the next call.
- The caller functions read a per-call slot no SQL can write; the upstream token is out of reach
  of the query tool by every route, and available to the project author's SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import time
import unicodedata
from pathlib import Path

import duckdb
import pytest

from sqlgate.config.loader import load_project
from sqlgate.context import CallContext, UserContext
from sqlgate.engine import Limits, open_engine
from sqlgate.engine.duckdb_guard import DENIED_VIEWS, SAFE_TABLE_FUNCTIONS, DuckDBGuard
from sqlgate.errors import QueryFailed, QueryRefused
from tests.conftest import EXAMPLE

LIMITS = Limits(max_rows=100, max_bytes=200_000, timeout_seconds=10)

# every Unicode space/separator, plus the ASCII and invisible characters parsers disagree on
SPACES = sorted({chr(c) for c in range(0x110000) if unicodedata.category(chr(c)) in ("Zs", "Zl", "Zp")}
                | set("\t\n\r\x0b\x0c\x85\u200b\ufeff\u180e\u2060"))
PAYLOADS = [
    "CREATE OR REPLACE TEMP MACRO get_username() AS 'mallory'",
    "SET VARIABLE sqlgate_ctx = 'mallory'",
    "CREATE TEMP VIEW customers AS SELECT 1 AS customer_id",
    "DELETE FROM customers",
    "PREPARE p AS SELECT 1",
    "BEGIN TRANSACTION",
]
TEMPLATES = [
    "SELECT $t{s}$ x $t{s}$; {p}",
    "SELECT $a{s}b$ ; {p} ; $a{s}b$",
    "SELECT ${s}$ ; {p} ; ${s}$",
    "SELECT 1{s};{s}{p}",
    "SELECT 1 --{s}\n; {p}",
    "SELECT 1 /* /* */ ; {p}; -- */",
    "SELECT 1 /* a /* b */ c */; {p}",
    "SELECT 'a;{s}b'; {p}",
    "SELECT E'a\\'; {p}; --'",
    "SELECT 'a\\'; {p}; --'",
    'SELECT "a;{s}b" FROM (SELECT 1 AS "a;{s}b"); {p}',
    "SELECT $$;{s}$$; {p}",
    "SELECT $x$ $$ ; $x$; {p}",
    "SELECT $x$ ; {p}; $x$",
    "SELECT 1{s}{p}",
    "{p}",
    "{s}{p}",
    "/*{s}*/{p}",
    "SELECT U&'\\0041;'; {p}",
    "WITH c AS (SELECT 1) SELECT * FROM c; {p}",
    "EXPLAIN SELECT 1; {p}",
    "EXPLAIN {p}",
    "SELECT 1;",
    "SELECT $t{s}$;$t{s}$",
    "SELECT 'x{s}' AS s",
    "SELECT E'x\\'{s}' AS s",
]


def corpus() -> list[str]:
    texts = []
    for template in TEMPLATES:
        for p in PAYLOADS:
            for s in SPACES if "{s}" in template else [""]:
                texts.append(template.format(s=s, p=p))
    return sorted(set(texts))


def oracle_allows(con: duckdb.DuckDBPyConnection, text: str) -> bool:
    """DuckDB's own reading: exactly one statement, SELECT or EXPLAIN of a SELECT."""
    try:
        statements = con.extract_statements(text)
    except duckdb.Error:
        return False
    if len(statements) != 1:
        return False
    kind = str(statements[0].type).rsplit(".", 1)[-1]
    if kind == "SELECT":
        return True
    if kind == "EXPLAIN":
        inner = statements[0].query.strip()[len("EXPLAIN"):]
        try:
            inner_statements = con.extract_statements(inner)
        except duckdb.Error:
            return False
        return len(inner_statements) == 1 and str(inner_statements[0].type).endswith("SELECT")
    return False


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("guard") / "project"
    shutil.copytree(EXAMPLE, root, ignore=shutil.ignore_patterns("data", "__pycache__"))
    # a writable in-memory database: the guard alone must keep it unchanged
    text = (root / "sqlgate.yml").read_text().replace("path: data/shop.duckdb", 'path: ":memory:"')
    text = text.replace("sql_tools:\n", "sql_tools:\n  request_headers: [X-Tenant]\n", 1)
    (root / "sqlgate.yml").write_text(text)
    return root


@pytest.fixture()
async def engine(project, tmp_path):
    eng = open_engine(load_project(project, env={"SQLGATE_CONFIG": str(tmp_path / "none.yml")}))
    try:
        yield eng
    finally:
        await eng.close()


def test_differential_corpus_matches_duckdbs_own_parser():
    con = duckdb.connect(":memory:")
    con.execute("CREATE TABLE customers (customer_id INT)")
    guard = DuckDBGuard.for_connection(con)
    texts = corpus()
    assert len(texts) > 2000
    admitted = disagreements = 0
    for text in texts:
        try:
            checked = guard.check(text, con)
        except QueryRefused:
            decided = False
        else:
            decided = True
            admitted += 1
            # what runs is one statement by DuckDB's reading, never the raw text when it differs
            assert len(con.extract_statements(checked.sql)) == 1
        if decided != oracle_allows(con, text):
            disagreements += 1
            pytest.fail(f"guard {'admitted' if decided else 'refused'} {text!r}, DuckDB's parser disagrees")
    assert disagreements == 0
    assert admitted > 50, "the corpus must contain admitted texts too, or it tests nothing"


def _state(con: duckdb.DuckDBPyConnection) -> dict:
    """What a poisoned connection would carry into the next call."""
    return {
        "variables": con.execute("SELECT count(*) FROM duckdb_variables()").fetchone()[0],
        "temp_tables": con.execute("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchone()[0],
        "temp_views": con.execute(
            "SELECT count(*) FROM duckdb_views() WHERE temporary AND NOT internal").fetchone()[0],
        "temp_functions": con.execute(
            "SELECT count(*) FROM duckdb_functions() WHERE database_name = 'temp' AND NOT internal").fetchone()[0],
        "types": con.execute("SELECT count(*) FROM duckdb_types() WHERE NOT internal").fetchone()[0],
        "prepared": con.execute("SELECT count(*) FROM duckdb_prepared_statements()").fetchone()[0],
        "customers": con.execute("SELECT count(*) FROM customers").fetchone()[0],
    }


async def test_poisoning_attempts_leave_every_connection_clean(engine):
    mallory = CallContext(user=UserContext(username="mallory"))
    alice = CallContext(user=UserContext(username="alice"))
    before = _state(engine._db.cursor())
    attempts = [t for t in corpus() if "mallory" in t or "TEMP VIEW" in t or "DELETE" in t][:400]
    attempts += [
        "SELECT * FROM (PIVOT customers ON region USING count(*))",
        "PIVOT customers ON region USING count(*)",
        "WITH x AS (DELETE FROM customers RETURNING *) SELECT * FROM x",
        "WITH x AS (UPDATE customers SET name = 'p' RETURNING *) SELECT count(*) FROM x",
        "WITH x AS (INSERT INTO customers SELECT * FROM customers RETURNING *) SELECT count(*) FROM x",
        "SELECT * FROM query('CREATE TEMP MACRO get_username() AS ''mallory''')",
        "SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))",
        "CALL enable_logging()", "SELECT * FROM enable_logging()", "SELECT * FROM truncate_duckdb_logs()",
        "SELECT setseed(0.5)", "SELECT nextval('s')", "SUMMARIZE '/etc/passwd'",
        "SELECT * FROM parquet_full_metadata('/etc/passwd')", "DEALLOCATE ALL", "RESET ALL",
    ]
    for text in attempts:
        with contextlib.suppress(QueryRefused, QueryFailed):
            await engine.run_untrusted(text, mallory, LIMITS)
    # every worker connection, and a fresh one, is as it was; every later caller is themselves
    for con in [*engine._conns, engine._db.cursor()]:
        assert _state(con) == before
    seen = await asyncio.gather(*(engine.run_untrusted("SELECT get_username()", alice, LIMITS) for _ in range(40)))
    assert {qr.rows[0][0] for qr in seen} == {"alice"}


@pytest.mark.parametrize("sql", [
    "SELECT get_user_external_token()",
    "SELECT main.get_user_external_token()",
    'SELECT "GET_USER_EXTERNAL_TOKEN"()',
    "SELECT system.main.get_user_external_token()",
    "SELECT list_transform([1], lambda x: get_user_external_token())",
    "SELECT getvariable('sqlgate_ctx')",
    "SELECT * FROM duckdb_variables()",
    "SELECT * FROM duckdb_variables",
    "SELECT current_setting('sqlgate_ctx')",
    "SELECT * FROM duckdb_functions() WHERE function_name LIKE 'get_user%' AND macro_definition LIKE '%tok%'",
])
async def test_query_tool_never_sees_the_upstream_token(engine, sql):
    secret = "ghu_upstream-token-0123456789"
    call = CallContext(user=UserContext(username="alice", external_token=secret))
    try:
        qr = await engine.run_untrusted(sql, call, LIMITS)
    except (QueryRefused, QueryFailed) as exc:
        assert secret not in str(exc)
    else:
        assert secret not in repr(qr.rows)


async def test_a_view_cannot_launder_the_token_to_the_query_tool(project, tmp_path):
    # the project author made a view that uses the token: the query tool still cannot read it
    seed = project / "sql" / "seed.sql"
    original = seed.read_text()
    seed.write_text(original + "\nCREATE VIEW token_view AS SELECT get_user_external_token() AS t;\n")
    try:
        eng = open_engine(load_project(project, env={"SQLGATE_CONFIG": str(tmp_path / "none.yml")}))
    except Exception:
        seed.write_text(original)
        raise
    try:
        call = CallContext(user=UserContext(username="alice", external_token="tok-123"))
        with pytest.raises(QueryFailed, match="only available to SQL written by the project author"):
            await eng.run_untrusted("SELECT * FROM token_view", call, LIMITS)
        # the author's own SQL gets it
        qr = await eng.execute("SELECT t FROM token_view", None, call, LIMITS)
        assert qr.rows == [["tok-123"]]
    finally:
        await eng.close()
        seed.write_text(original)


async def test_identity_is_per_call_and_fails_closed_off_the_calling_thread(engine):
    alice = CallContext(user=UserContext(username="alice", email="a@x.test", provider="jwt"),
                        headers={"x-tenant": "t1"})
    qr = await engine.run_untrusted(
        "SELECT get_username(), get_user_email(), get_user_provider(), get_request_header('X-Tenant')",
        alice, LIMITS)
    assert qr.rows == [["alice", "a@x.test", "jwt", "t1"]]
    # evaluated per row on DuckDB's own threads: no identity there, so an error, never a wrong answer
    try:
        qr = await engine.run_untrusted(
            "SELECT count(*) FROM (SELECT list_transform(list(name), lambda x: x || get_username()) l "
            "FROM customers GROUP BY region)", alice, LIMITS)
    except QueryFailed as exc:
        assert "compute it once" in str(exc)
    anonymous = await engine.run_untrusted("SELECT get_username(), get_request_header('x-tenant')",
                                           CallContext(), LIMITS)
    assert anonymous.rows == [["", ""]]


@pytest.mark.parametrize(("sql", "fragment"), [
    ("SELECT * FROM read_csv('/etc/passwd')", "table function read_csv()"),
    ("SELECT * FROM duckdb_settings()", "table function duckdb_settings()"),
    ("SELECT current_setting('temp_directory')", "current_setting()"),
    ("SELECT * FROM duckdb_databases()", "table function duckdb_databases()"),
    ("SELECT * FROM duckdb_databases", "duckdb_databases is not available"),
    ("SELECT * FROM pragma_database_list", "pragma_database_list is not available"),
    ("SELECT * FROM pg_catalog.pg_settings", "pg_settings is not available"),
    ("SELECT * FROM json_execute_serialized_sql('x')", "json_execute_serialized_sql()"),
    ("SELECT * FROM enable_logging()", "enable_logging()"),
    ("SELECT * FROM truncate_duckdb_logs()", "truncate_duckdb_logs()"),
    ("SELECT * FROM parquet_full_metadata('x')", "parquet_full_metadata()"),
    ("SUMMARIZE '/etc/passwd'", "reading files is not allowed"),
    ("SELECT getenv('HOME')", "getenv()"),
    ("SELECT setseed(0.1)", "setseed()"),
    ("SELECT * FROM (PIVOT customers ON region USING count(*))", "PIVOT without an IN list"),
    ("WITH x AS (DELETE FROM customers RETURNING *) SELECT * FROM x", "DELETE is not allowed"),
    ("EXPLAIN ANALYZE DELETE FROM customers", "EXPLAIN of DELETE"),
])
async def test_refusals_name_the_problem(engine, sql, fragment):
    with pytest.raises(QueryRefused) as info:
        await engine.run_untrusted(sql, CallContext(), LIMITS)
    assert fragment in str(info.value)


def test_every_builtin_view_over_a_refused_table_function_is_refused():
    """A DuckDB upgrade that adds such a view fails here until the lists are reviewed."""
    con = duckdb.connect(":memory:")
    guard = DuckDBGuard.for_connection(con)
    table_functions = {r[0] for r in con.execute(
        "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type = 'table'").fetchall()}
    refused = table_functions - SAFE_TABLE_FUNCTIONS
    for name, sql in con.execute("SELECT view_name, sql FROM duckdb_views() WHERE internal").fetchall():
        uses = {f for f in refused if f"{f}(" in sql}
        if uses:
            assert name in DENIED_VIEWS, f"built-in view {name} reads {uses}"
            with pytest.raises(QueryRefused):
                guard.check(f"SELECT * FROM {name}", con)


async def test_allowed_reads_still_work(engine):
    for sql in ["SELECT count(*) FROM customers", "DESCRIBE customers", "SHOW TABLES", "SUMMARIZE products",
                "EXPLAIN SELECT 1", "EXPLAIN ANALYZE SELECT count(*) FROM orders", "VALUES (1)",
                "FROM products SELECT count(*)", "SELECT * FROM range(3)",
                "SELECT * FROM (PIVOT customers ON region IN ('EU', 'US') USING count(*)) LIMIT 1",
                "SELECT random() < 2, uuid() IS NOT NULL",
                "SELECT table_name FROM information_schema.tables LIMIT 1"]:
        qr = await engine.run_untrusted(sql, CallContext(), LIMITS)
        assert qr.columns, sql


# ---------------------------------------------------------------- found by attacking the guard

TABLE_WRAPPERS = ["SELECT * FROM unnest([{e}])", "SELECT * FROM range(({e}) IS NULL::INT)",
                  "SELECT * FROM generate_series(1, length(({e})::VARCHAR))", "SELECT * FROM json_each(({e})::VARCHAR)",
                  "SELECT * FROM repeat(({e})::VARCHAR, 1)"]
HIDDEN = ["current_setting('secret_directory')", "(SELECT list(path) FROM duckdb_databases())",
          "(SELECT list(x) FROM query('SELECT 1 AS x'))", "setseed(0.42)", "(SELECT count(*) FROM read_blob('x'))",
          "getenv('HOME')", "get_user_external_token()"]


@pytest.mark.parametrize("wrapper", TABLE_WRAPPERS)
@pytest.mark.parametrize("hidden", HIDDEN)
def test_table_function_arguments_are_checked_too(wrapper, hidden):
    con = duckdb.connect(":memory:")
    guard = DuckDBGuard.for_connection(con)
    with pytest.raises(QueryRefused):
        guard.check(wrapper.format(e=hidden), con)


@pytest.mark.parametrize("sql", ["SHOW allowed_paths", "SHOW secret_directory", "SHOW memory_limit",
                                 "SELECT * FROM (SHOW temp_directory)"])
def test_show_cannot_read_settings(sql):
    con = duckdb.connect(":memory:")
    with pytest.raises(QueryRefused, match="setting"):
        DuckDBGuard.for_connection(con).check(sql, con)


def test_builtin_macros_over_refused_functions_are_refused():
    """Macros expand after the check: any whose body calls a refused function is refused itself."""
    con = duckdb.connect(":memory:")
    guard = DuckDBGuard.for_connection(con)
    table_functions = {r[0] for r in con.execute(
        "SELECT DISTINCT function_name FROM duckdb_functions() WHERE function_type = 'table'").fetchall()}
    refused = (table_functions - SAFE_TABLE_FUNCTIONS) | {"sleep_ms", "setseed", "nextval", "current_setting",
                                                          "query_table", "query", "getenv"}
    checked = 0
    for name, kind, body in con.execute(
            "SELECT DISTINCT function_name, function_type, macro_definition FROM duckdb_functions() "
            "WHERE function_type IN ('macro', 'table_macro') AND internal").fetchall():
        if not any(f"{r}(" in body for r in refused):
            continue
        checked += 1
        sql = f"SELECT * FROM {name}('x')" if kind == "table_macro" else f"SELECT {name}('x')"
        with pytest.raises(QueryRefused):
            guard.check(sql, con)
    assert checked >= 3  # pg_sleep, get_block_size, histogram … exist in DuckDB 2


@pytest.mark.parametrize("sql", [
    "SELECT map_type_id_to_pg_oid(map_type_id_to_pg_oid(map_type_id_to_pg_oid(map_type_id_to_pg_oid("
    "map_type_id_to_pg_oid(1)))))",
    " UNION ALL ".join(["SELECT 1"] * 5000),
])
def test_queries_that_explode_in_the_planner_are_refused_fast(sql):
    con = duckdb.connect(":memory:")
    guard = DuckDBGuard.for_connection(con)
    started = time.perf_counter()
    with pytest.raises(QueryRefused, match="too complex"):
        guard.check(sql, con)
    assert time.perf_counter() - started < 5


async def test_unknown_statement_types_are_refused_not_crashed(engine):
    with pytest.raises(QueryRefused, match="not allowed"):
        await engine.run_untrusted("UPDATE EXTENSIONS", CallContext(), LIMITS)


async def test_fetching_stops_when_the_answer_is_full(engine):
    limits = Limits(max_rows=1000, max_bytes=200_000, timeout_seconds=10)
    started = time.perf_counter()
    qr = await engine.run_untrusted("SELECT range(6000) AS r FROM range(1001)", CallContext(), limits)
    assert qr.truncated and qr.truncated_by == "max_bytes"
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("sql", ["SELECT range(60000) AS r FROM range(1001)",
                                 "SELECT repeat('x', 2000000) AS big FROM range(1001)",
                                 "SELECT range(10000000) AS l"])
async def test_a_row_too_big_for_the_answer_never_reaches_python(engine, sql):
    """Bounded inside DuckDB: a single huge value is refused before it becomes Python objects.

    Python's own allocations are traced (DuckDB's, capped by engine.memory_limit, are not): a
    10-million-element list as Python objects would be over a gigabyte."""
    import tracemalloc

    limits = Limits(max_rows=1000, max_bytes=200_000, timeout_seconds=20)
    tracemalloc.start()
    try:
        with pytest.raises(QueryFailed, match="a row of the result is larger than the result limit"):
            await engine.run_untrusted(sql, CallContext(), limits)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{peak / 2**20:.0f} MiB of Python objects"


async def test_half_fetched_results_do_not_hold_memory(engine):
    limits = Limits(max_rows=10, max_bytes=100_000, timeout_seconds=20)
    for _ in range(4):
        qr = await engine.run_untrusted("SELECT i FROM range(5000000) t(i) ORDER BY i DESC", CallContext(), limits)
        assert qr.truncated
    used = engine._db.execute("SELECT sum(memory_usage_bytes) FROM duckdb_memory()").fetchone()[0]
    assert used < 50 * 2**20, f"{used / 2**20:.0f} MiB still held after the calls returned"


async def test_long_texts_are_not_kept_in_the_decision_cache(engine):
    before = len(engine.guard._cache)
    for i in range(5):
        await engine.run_untrusted(f"SELECT {i} AS n, length('{'x' * 20000}') AS l", CallContext(), LIMITS)
    assert len(engine.guard._cache) == before


async def test_the_query_tool_reads_only_allow_listed_request_headers(engine):
    call = CallContext(headers={"x-forwarded-access-token": "idp-token-123", "x-amzn-oidc-data": "jwt-1",
                                "dpop": "proof", "x-tenant": "t1"})
    qr = await engine.run_untrusted("SELECT get_request_header('x-tenant')", call, LIMITS)
    assert qr.rows == [["t1"]]
    for name in ("x-forwarded-access-token", "X-Amzn-Oidc-Data", "dpop", "user-agent"):
        with pytest.raises(QueryFailed, match="not available to the query tool"):
            await engine.run_untrusted(f"SELECT get_request_header('{name}')", call, LIMITS)
    # the project author's SQL may read them
    qr = await engine.execute("SELECT get_request_header('x-forwarded-access-token')", None, call, LIMITS)
    assert qr.rows == [["idp-token-123"]]


@pytest.mark.parametrize(("sql", "fragment"), [
    ("SELECT json_serialize_plan('SELECT current_setting(''allowed_paths'') AS p', optimize := true)",
     "json_serialize_plan()"),
    ("SELECT json_serialize_sql('SELECT 1')", "json_serialize_sql()"),
    ("WITH a AS NOT MATERIALIZED (SELECT 1 AS x) SELECT * FROM a", "NOT MATERIALIZED"),
])
async def test_second_round_refusals(engine, sql, fragment):
    with pytest.raises(QueryRefused) as info:
        await engine.run_untrusted(sql, CallContext(), LIMITS)
    assert fragment in str(info.value)


async def test_awkward_values_convert_or_fail_typed(engine):
    qr = await engine.run_untrusted("SELECT INTERVAL 3 DAYS AS d, INTERVAL 14 MONTHS AS m, "
                                    "'infinity'::DOUBLE AS inf", CallContext(), LIMITS)
    # ISO 8601 intervals with months kept, infinities by name (README "How values are encoded")
    assert qr.rows[0] == ["P3D", "P1Y2M", "Infinity"]
    with contextlib.suppress(QueryFailed):  # a typed error is fine; an untyped crash is not
        await engine.run_untrusted("SELECT INTERVAL 100000000 YEARS AS huge", CallContext(), LIMITS)


@pytest.mark.parametrize(("sql", "outcome"), [
    ("SELECT 1 -- ) q, (SELECT 2", [[1]]),      # a trailing comment cannot reach the wrapper's SQL
    ("SELECT 1; /* ; */", [[1]]),
    ("SELECT 42;;", [[42]]),
    ("SELECT 1 /* open", QueryRefused),
    ("SELECT 1;\n) q UNION SELECT 2 --", QueryRefused),
])
async def test_the_row_size_wrapper_cannot_be_escaped(engine, sql, outcome):
    if outcome is QueryRefused:
        with pytest.raises(QueryRefused):
            await engine.run_untrusted(sql, CallContext(), LIMITS)
    else:
        assert (await engine.run_untrusted(sql, CallContext(), LIMITS)).rows == outcome
