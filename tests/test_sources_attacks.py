"""Data sources attacked: a hostile AI client looking for server paths and sqlgate's hidden catalog
entries, and an attached DuckDB file from a third party whose views and generated columns would run
refused SQL with the server's rights (DuckDB expands them after the guard judged the query).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import duckdb
import pytest

from sqlgate.config.loader import load_project
from sqlgate.context import CallContext
from sqlgate.engine import Limits, open_engine
from sqlgate.engine.duckdb_guard import DuckDBGuard, view_query
from sqlgate.errors import ConfigError, QueryFailed, QueryRefused

LIMITS = Limits(max_rows=50, max_bytes=100_000, timeout_seconds=20)

PROJECT_YML = """\
name: attacked
engine: {path: state/attacked.duckdb}
sources:
  events: {path: "data/events/*.csv"}
  notes: {path: data/notes.tsv, options: {header: true, columns: {id: INTEGER, note: VARCHAR}}}
  w: {path: data/w.duckdb}
"""


def _benign_warehouse(path: Path) -> None:
    """What a normal third-party file holds: tables, a view, a macro, a generated column."""
    with duckdb.connect(str(path)) as con:
        con.execute("CREATE TABLE stock (sku VARCHAR, qty INTEGER, "
                    "qty2 INTEGER GENERATED ALWAYS AS (qty * 2))")
        con.execute("INSERT INTO stock (sku, qty) VALUES ('lamp', 3), ('desk', 5)")
        con.execute("CREATE MACRO doubled(x) AS x * 2")
        con.execute("CREATE VIEW big AS SELECT sku, doubled(qty) AS d FROM stock WHERE qty > 4")


def _project(root: Path) -> Path:
    (root / "data" / "events").mkdir(parents=True)
    (root / "data" / "events" / "day1.csv").write_text("day,n\n1,10\n")
    (root / "data" / "events" / "private.txt").write_text("not a source\n")
    (root / "data" / "notes.tsv").write_text("id\tnote\n1\tok\n")
    _benign_warehouse(root / "data" / "w.duckdb")
    (root / "sqlgate.yml").write_text(PROJECT_YML)
    return root


def _open(root: Path):
    return open_engine(load_project(root, env={"SQLGATE_CONFIG": str(root / "no-user-config.yml")}))


@pytest.fixture(scope="module")
def attacked(tmp_path_factory) -> Path:
    return _project(tmp_path_factory.mktemp("attacked") / "project")


@pytest.fixture()
async def engine(attacked):
    eng = _open(attacked)
    try:
        yield eng
    finally:
        await eng.close()


# ---------------------------------------------------------------- server paths and hidden entries
@pytest.mark.parametrize("sql", [
    "SELECT sql FROM duckdb_views()",                                  # CREATE VIEW … read_csv('/abs/…')
    "SELECT view_definition FROM information_schema.views",
    "SELECT * FROM system.information_schema.views",
    "SELECT definition FROM pg_views",
    "SELECT * FROM pg_catalog.pg_views",
    "SELECT sql FROM sqlite_master",
    "SELECT sql FROM sqlite_schema",
    "SELECT * FROM duckdb_views",
    "SELECT pg_get_viewdef(oid) FROM pg_class",
    "SELECT pg_get_viewdef(1)",
    "SELECT * FROM range(1) WHERE (SELECT count(*) FROM duckdb_views()) > 0",
    # the hidden alias of an attached source file, and the build record
    "SELECT * FROM __sqlgate_src_w.main.stock",
    "SELECT * FROM __sqlgate_src_w.stock",
    'SELECT * FROM "__SQLGATE_SRC_W".main.big',
    "SELECT __sqlgate_src_w.main.doubled(1)",
    "SELECT * FROM __sqlgate_build",
    "SELECT * FROM main.__sqlgate_build",
])
async def test_view_definitions_and_sqlgate_entries_are_refused(engine, sql):
    with pytest.raises(QueryRefused):
        await engine.run_untrusted(sql, CallContext(), LIMITS)


async def test_catalog_reads_without_paths_still_work(engine, attacked):
    """What a model uses to look around still answers, and shows no server path."""
    for sql in ["SELECT table_name FROM information_schema.tables ORDER BY 1",
                "SELECT table_name, sql FROM duckdb_tables()", "SELECT * FROM duckdb_columns()",
                "SHOW ALL TABLES", "DESCRIBE events", "SELECT * FROM w.stock", "SELECT * FROM w.big",
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'notes'"]:
        result = await engine.run_untrusted(sql, CallContext(), LIMITS)
        assert result.rows, sql
        assert str(attacked) not in str(result.rows), sql
    rows = (await engine.run_untrusted("SELECT sku, qty2 FROM w.stock ORDER BY sku", CallContext(), LIMITS)).rows
    assert rows == [["desk", 10], ["lamp", 6]]
    rows = (await engine.run_untrusted("SELECT * FROM w.big", CallContext(), LIMITS)).rows
    assert rows == [["desk", 10]]
    listed = {(r["schema"], r["name"]) for r in (await engine.list_tables(None, LIMITS)).records()}
    assert {("main", "events"), ("main", "notes"), ("w", "stock"), ("w", "big")} <= listed


async def test_errors_name_source_files_as_configured_not_by_server_path(tmp_path):
    """DuckDB names the file it failed to read by the view's absolute path; the answer shows the
    path as sqlgate.yml has it."""
    root = _project(tmp_path / "errors")
    eng = _open(root)
    try:
        (root / "data" / "notes.tsv").write_text("id\tnote\n1\tok\nx\tbad\n")
        (root / "data" / "events" / "day1.csv").unlink()
        for sql, fragment in [("SELECT * FROM notes", "data/notes.tsv"),
                              ("SELECT * FROM events", "data/events/*.csv")]:
            with pytest.raises(QueryFailed) as info:
                await eng.run_untrusted(sql, CallContext(), LIMITS)
            assert fragment in str(info.value) and str(root) not in str(info.value), str(info.value)
        (root / "data" / "notes.tsv").unlink()
        with pytest.raises(QueryFailed) as info:
            await eng.run_untrusted("SELECT * FROM notes", CallContext(), LIMITS)
        assert str(root) not in str(info.value)
    finally:
        await eng.close()


# ---------------------------------------------------------------- a hostile attached DuckDB file
HOSTILE = {
    "view reading a setting": ("CREATE VIEW leak AS SELECT current_setting('allowed_directories') AS x",
                               "view main.leak"),
    "view over duckdb_settings()": ("CREATE VIEW leak AS SELECT name, value FROM duckdb_settings()",
                                    "view main.leak"),
    "view over database paths": ("CREATE VIEW leak AS SELECT path FROM duckdb_databases()", "view main.leak"),
    "view reading a file": ("CREATE VIEW leak AS SELECT * FROM read_text('/etc/hostname')", "view main.leak"),
    "view in another schema": ("CREATE SCHEMA s; CREATE VIEW s.leak AS SELECT * FROM (SELECT 1) t, "
                               "LATERAL (SELECT current_setting('temp_directory'))", "view s.leak"),
    "view over view definitions": ("CREATE VIEW leak AS SELECT sql FROM duckdb_views()", "view main.leak"),
    "view through nested macros": ("CREATE MACRO inner_m() AS current_setting('allowed_paths'); "
                                   "CREATE MACRO outer_m() AS inner_m(); "
                                   "CREATE VIEW leak AS SELECT outer_m() AS x", "view main.leak"),
    "view through a table macro": ("CREATE MACRO t_settings() AS TABLE SELECT * FROM duckdb_settings(); "
                                   "CREATE VIEW leak AS SELECT * FROM t_settings()", "view main.leak"),
    "generated column": ("CREATE TABLE gen (x INTEGER, y VARCHAR GENERATED ALWAYS AS "
                         "(current_setting('allowed_directories')::VARCHAR))",
                         "generated column main.gen.y"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_an_attached_file_with_refused_sql_is_not_served(tmp_path, case):
    ddl, what = HOSTILE[case]
    root = _project(tmp_path / "hostile")
    with duckdb.connect(str(root / "data" / "w.duckdb")) as con:
        con.execute(ddl)
    with pytest.raises(ConfigError) as info:
        _open(root)
    message = str(info.value)
    assert "source 'w'" in message and what in message and "cannot be served" in message, message
    assert not (root / "state" / "attacked.duckdb").exists(), "a refused build leaves no database"


def test_a_file_turned_hostile_after_the_build_is_refused_at_the_next_start(tmp_path):
    """The file is attached at every start and can change between builds (same tables, so the
    build record still matches): the check runs at every open, not only when building."""
    root = _project(tmp_path / "later")

    async def stock() -> list:
        eng = _open(root)
        try:
            return (await eng.run_untrusted("SELECT count(*) FROM w.stock", CallContext(), LIMITS)).rows
        finally:
            await eng.close()

    assert asyncio.run(stock()) == [[2]]
    with duckdb.connect(str(root / "data" / "w.duckdb")) as con:
        con.execute("DROP VIEW big")
        con.execute("CREATE VIEW big AS SELECT current_setting('allowed_paths') AS sku, 1 AS d")
    with pytest.raises(ConfigError, match=r"view main\.big .* cannot be served"):
        _open(root)


# ---------------------------------------------------------------- the guard's own pieces
def test_macros_calling_refused_macros_are_refused_at_any_depth():
    con = duckdb.connect(":memory:")
    con.execute("CREATE MACRO m1() AS current_setting('threads')")
    con.execute("CREATE MACRO m2(x) AS m1() || x")
    con.execute("CREATE MACRO m3() AS m2('a')")
    con.execute("CREATE MACRO t1() AS TABLE SELECT * FROM duckdb_settings()")
    con.execute("CREATE MACRO t2() AS TABLE SELECT * FROM t1()")
    con.execute("CREATE MACRO fine(x) AS x + 1")
    guard = DuckDBGuard.for_connection(con)
    for sql in ["SELECT m3()", "SELECT m2('b')", "SELECT * FROM t2()", "SELECT * FROM range(1) WHERE m3() > ''"]:
        with pytest.raises(QueryRefused, match=r"function (m\d|t\d)\(\) is not allowed"):
            guard.check(sql, con)
    assert guard.check("SELECT fine(1)", con).sql == "SELECT fine(1)"


@pytest.mark.parametrize(("create", "query"), [
    ("CREATE VIEW v AS SELECT 1 AS x", "SELECT 1 AS x"),
    ('CREATE VIEW "a AS b"(x, "as") AS SELECT 1, 2', "SELECT 1, 2"),
    ("CREATE VIEW s.v AS (SELECT 'AS' AS \"AS\");", "(SELECT 'AS' AS \"AS\");"),
    ("CREATE VIEW v", None),
])
def test_view_query_is_cut_where_duckdb_tokenizes_as(create, query):
    assert view_query(create) == query


# ---------------------------------------------------------------- a careless operator
async def test_a_rebuild_from_a_changed_sqlgate_yml_is_not_switched_to(tmp_path):
    """sqlgate.yml gains a source, `sqlgate refresh` builds it, SIGHUP: the running server still has
    the old configuration (allow-list, attached files), so every query of the new source would fail.
    It keeps serving the old file and says to restart; a rebuild from the same configuration is
    switched to."""
    from sqlgate.engine import duckdb_build

    root = _project(tmp_path / "careless")
    eng = _open(root)
    try:
        (root / "data" / "more.csv").write_text("k\n1\n")
        duckdb_build.refresh(load_project(root, env={"SQLGATE_CONFIG": str(root / "none.yml")}), lambda _: None)
        assert eng.reopen_if_replaced(), "same sqlgate.yml: switched"
        (root / "sqlgate.yml").write_text(PROJECT_YML + "  more: {path: data/more.csv}\n")
        duckdb_build.refresh(load_project(root, env={"SQLGATE_CONFIG": str(root / "none.yml")}), lambda _: None)
        with pytest.raises(ConfigError, match="restart the server"):
            eng.reopen_if_replaced()
        rows = (await eng.run_untrusted("SELECT count(*) FROM w.stock", CallContext(), LIMITS)).rows
        assert rows == [[2]], "the previous database still serves"
        with pytest.raises(QueryFailed, match="more"):
            await eng.run_untrusted("SELECT * FROM more", CallContext(), LIMITS)
    finally:
        await eng.close()
    eng = _open(root)  # a restart serves it
    try:
        assert (await eng.run_untrusted("SELECT k FROM more", CallContext(), LIMITS)).rows == [[1]]
    finally:
        await eng.close()
