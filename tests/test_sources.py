"""Data sources (`sources:` in sqlgate.yml, views/*.sql): a project with a 100k-row CSV, a Parquet
glob, an attached SQLite file, an attached DuckDB file and a view — listed, described, searched and
queried through the official MCP client over HTTP, with the server started from another directory;
the query tool still reads no other file; `refresh` while serving; `init --from`; validation errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import duckdb
import httpx
import pytest

from sqlgate.config.loader import load_project
from sqlgate.context import CallContext
from sqlgate.engine import Limits, open_engine
from sqlgate.errors import ConfigError, QueryFailed
from tests.clients import mcp_session
from tests.conftest import EXAMPLE, ROOT, SQLGATE, free_port, isolated_env, start_server, stop_server
from tests.readme import bash_block

SALES_ROWS = 100_000
PARTS, PART_ROWS = 3, 10
SECRET = "top-secret-value-4711"

PROJECT_YML = """\
name: datademo
description: Sales and CRM data from files.
engine:
  path: data/datademo.duckdb
  seed: sql/seed.sql          # reads data/regions.csv by a relative path
sources:
  sales:
    path: data/sales.csv
    description: One row per sale
    columns: {amount: Sale amount in EUR}
  events:
    path: data/events/*.parquet
    description: Click events, one Parquet file per day
  notes:
    path: data/notes.tsv
    options: {header: true, columns: {id: INTEGER, note: VARCHAR}}
  crm:
    path: data/crm.sqlite
    description: CRM export
  warehouse:
    path: data/warehouse.duckdb
"""


def make_project(root: Path) -> Path:
    """A project around data files; a secret file outside it and a symlink to it inside."""
    (root / "data" / "events").mkdir(parents=True)
    (root / "views").mkdir()
    (root / "sql").mkdir()
    con = duckdb.connect()
    con.execute(f"COPY (SELECT range AS id, range % 1000 AS amount, 'r' || (range % 7) AS region "
                f"FROM range({SALES_ROWS})) TO '{root}/data/sales.csv'")
    for part in range(PARTS):
        con.execute(f"COPY (SELECT {part} AS day, range AS n FROM range({PART_ROWS})) "
                    f"TO '{root}/data/events/day-{part}.parquet'")
    con.close()
    (root / "data" / "notes.tsv").write_text("id\tnote\n1\tfirst\n2\tit's second\n")
    (root / "data" / "regions.csv").write_text("code,label\nEU,Europe\nUS,United States\n")
    (root / "sql" / "seed.sql").write_text(
        "CREATE TABLE regions AS SELECT * FROM read_csv('data/regions.csv');\n"
        "COMMENT ON TABLE regions IS 'Sales regions';\n")
    with duckdb.connect(str(root / "data" / "warehouse.duckdb")) as wh:
        wh.execute("CREATE TABLE stock (sku VARCHAR, qty INTEGER)")
        wh.execute("INSERT INTO stock VALUES ('lamp', 3), ('desk', 5)")
        wh.execute("COMMENT ON TABLE stock IS 'Units in stock per SKU'")
    lite = sqlite3.connect(root / "data" / "crm.sqlite")
    lite.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, since DATE, score REAL, "
                 "photo BLOB, misc)")
    lite.executemany("INSERT INTO customers VALUES (?, ?, ?, ?, ?, ?)",
                     [(1, "Ann", "2024-01-02", 1.5, b"\x00\x01", 5), (2, "O'Neil", None, None, None, "x")])
    lite.commit()
    lite.close()
    (root / "views" / "big_sales.sql").write_text(
        "-- Sales of 900 EUR or more\nSELECT * FROM sales WHERE amount >= 900;\n")
    (root / "sqlgate.yml").write_text(PROJECT_YML)
    secret = root.parent / "secret.csv"
    secret.write_text(f"secret\n{SECRET}\n")
    (root / "data" / "link.csv").symlink_to(secret)
    return root


@pytest.fixture(scope="module")
def data_project(tmp_path_factory) -> Path:
    return make_project(tmp_path_factory.mktemp("sources") / "datademo")


@pytest.fixture(scope="module")
def data_server(data_project, tmp_path_factory):
    """Started from another directory, with the project given by an absolute path: the seed's and
    the sources' relative paths still mean the project's files."""
    tmp = tmp_path_factory.mktemp("sources-server")
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    server = start_server(data_project, tmp, cwd=elsewhere)
    yield server
    stop_server(server)


def _content(result) -> dict:
    assert not result.is_error, result.content[0].text
    return result.structured_content


async def test_sources_are_listed_described_searched_and_queried(data_server):
    async with mcp_session(data_server.url) as s:
        items = _content(await s.call_tool("list_tables", {}))["items"]
        listed = {(i["schema"], i["name"]): i for i in items}
        assert {("main", "sales"), ("main", "events"), ("main", "notes"), ("main", "big_sales"),
                ("main", "regions"), ("crm", "customers"), ("warehouse", "stock")} <= set(listed)
        assert not [k for k in listed if "sqlgate" in k[1]], "the build record is not listed"
        assert listed[("main", "sales")]["comment"] == "One row per sale"
        assert listed[("main", "big_sales")]["comment"] == "Sales of 900 EUR or more"
        assert listed[("main", "notes")]["comment"] == "Rows of data/notes.tsv (tsv)"
        assert listed[("warehouse", "stock")]["comment"] == "Units in stock per SKU"
        assert "CRM export" in listed[("crm", "customers")]["comment"]

        sales = _content(await s.call_tool("describe_table", {"table": "sales"}))
        columns = {c["name"]: c for c in sales["columns"]}
        assert columns["amount"]["comment"] == "Sale amount in EUR" and columns["amount"]["type"] == "BIGINT"
        crm = _content(await s.call_tool("describe_table", {"table": "customers", "schema": "crm"}))
        assert [(c["name"], c["type"]) for c in crm["columns"]] == [
            ("id", "BIGINT"), ("name", "VARCHAR"), ("since", "DATE"), ("score", "DOUBLE"), ("photo", "BLOB"),
            ("misc", "VARCHAR")]

        hits = _content(await s.call_tool("search_objects", {"keywords": "sale amount EUR"}))["items"]
        assert (hits[0]["table"], hits[0]["name"]) == ("sales", "amount")
        hits = _content(await s.call_tool("search_objects", {"keywords": "stock"}))["items"]
        assert ("warehouse", "stock") in {(h["schema"], h["name"]) for h in hits}

        async def one(sql: str):
            return _content(await s.call_tool("query", {"sql": sql}))["rows"]

        assert await one("SELECT count(*), sum(amount) FROM sales") == [
            [SALES_ROWS, sum(i % 1000 for i in range(SALES_ROWS))]]
        assert await one("SELECT count(*), count(DISTINCT day) FROM events") == [[PARTS * PART_ROWS, PARTS]]
        assert await one("SELECT note FROM notes ORDER BY id") == [["first"], ["it's second"]]
        assert await one("SELECT id, name, since, score, misc FROM crm.customers ORDER BY id") == [
            [1, "Ann", "2024-01-02", 1.5, "5"], [2, "O'Neil", None, None, "x"]]
        assert await one("SELECT sum(qty) FROM warehouse.stock") == [[8]]
        assert await one("SELECT count(*) FROM big_sales") == [[SALES_ROWS // 10]]
        assert await one("SELECT label FROM regions ORDER BY code") == [["Europe"], ["United States"]]


def _other_file_reads(root: Path) -> list[str]:
    secret = root.parent / "secret.csv"
    return [
        "SELECT * FROM read_csv('/etc/passwd')",
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT * FROM read_csv_auto('{root}/data/../../secret.csv')",
        f"SELECT * FROM read_csv('{root}/data/sales.csv')",                  # a source's own file, by name
        f"SELECT * FROM read_parquet('{root}/data/events/*.parquet')",
        f"SELECT * FROM read_parquet('{root}/../**/*.parquet')",
        f"SELECT * FROM glob('{root}/*')",
        f"SELECT * FROM '{secret}'",
        "SELECT * FROM 'data/link.csv'",
        "SELECT * FROM read_csv('data/link.csv')",
        f"SELECT * FROM read_text('{secret}')",
        f"SELECT read_blob('{secret}')",
        f"SELECT * FROM sniff_csv('{secret}')",
        f"SELECT * FROM parquet_metadata('{root}/data/events/day-0.parquet')",
        f"ATTACH '{root}/data/warehouse.duckdb' AS w2",
        f"ATTACH '{secret}' AS s (TYPE sqlite)",
        f"COPY sales TO '{root}/out.csv'",
        f"COPY (SELECT 1) TO '{root}/out.parquet' (FORMAT parquet)",
        f"SET allowed_paths = ['{secret}']",
        "INSTALL sqlite",
        f"SELECT * FROM sqlite_scan('{root}/data/crm.sqlite', 'customers')",
        f"CREATE VIEW leak AS SELECT * FROM read_csv('{secret}')",
    ]


async def test_query_tool_reads_no_other_file(data_server, data_project):
    async with mcp_session(data_server.url) as s:
        for sql in _other_file_reads(data_project):
            result = await s.call_tool("query", {"sql": sql})
            text = result.content[0].text
            assert result.is_error, f"{sql!r} was answered: {text[:200]}"
            assert SECRET not in text and "root:" not in text, sql
    assert not (data_project / "out.csv").exists() and not (data_project / "out.parquet").exists()


async def test_engine_itself_reads_only_the_source_files(data_project, tmp_path):
    """Below the guard: the connection the project's own SQL runs on has exactly the sources'
    files (a glob: its folder) allow-listed; `..`, symlinks and other paths are refused by DuckDB."""
    engine = open_engine(load_project(data_project, env={"SQLGATE_CONFIG": str(tmp_path / "none.yml")}))
    limits = Limits(max_rows=10, max_bytes=100_000, timeout_seconds=10)
    try:
        own = await engine.execute(f"SELECT count(*) FROM read_csv('{data_project}/data/sales.csv')", None,
                                   CallContext(), limits)
        assert own.rows == [[SALES_ROWS]]
        for path in (data_project.parent / "secret.csv", data_project / "data" / "link.csv",
                     f"{data_project}/data/events/../../../secret.csv", "/etc/passwd",
                     f"{data_project}/data/regions.csv"):
            with pytest.raises(QueryFailed, match="file system operations are disabled"):
                await engine.execute(f"SELECT * FROM read_csv('{path}')", None, CallContext(), limits)
    finally:
        await engine.close()


async def test_file_sources_are_live(data_server, data_project):
    notes = data_project / "data" / "notes.tsv"
    before = notes.read_text()
    new_part = data_project / "data" / "events" / "day-9.parquet"
    try:
        async with mcp_session(data_server.url) as s:
            notes.write_text(before + "3\tthird\n")
            with duckdb.connect() as con:
                con.execute(f"COPY (SELECT 9 AS day, 1 AS n) TO '{new_part}'")
            rows = _content(await s.call_tool("query", {"sql": "SELECT count(*) FROM notes"}))["rows"]
            assert rows == [[3]]
            rows = _content(await s.call_tool("query", {"sql": "SELECT count(*) FROM events"}))["rows"]
            assert rows == [[PARTS * PART_ROWS + 1]]
    finally:
        notes.write_text(before)
        new_part.unlink(missing_ok=True)


def _sqlgate(*args: str, tmp: Path, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SQLGATE, *args], capture_output=True, text=True, env=isolated_env(tmp, COLUMNS="200"),
                          timeout=120, cwd=cwd)


async def test_refresh_while_serving(tmp_path):
    """`sqlgate refresh` builds a new file and swaps it in; SIGHUP switches the server to it while
    calls keep flowing: none fails, and the copied SQLite table shows its new rows."""
    project = make_project(tmp_path / "refreshing")
    server = start_server(project, tmp_path)
    failures: list[str] = []
    stop = asyncio.Event()
    try:
        async with mcp_session(server.url) as s:
            async def keep_querying() -> int:
                calls = 0
                while not stop.is_set():
                    res = await s.call_tool("query", {"sql": "SELECT count(*) FROM sales s JOIN regions r "
                                                             "ON s.region <> r.code WHERE s.amount > 500"})
                    calls += 1
                    if res.is_error:
                        failures.append(res.content[0].text)
                return calls

            async def count_customers() -> int:
                res = await s.call_tool("query", {"sql": "SELECT count(*) FROM crm.customers"})
                return _content(res)["rows"][0][0]

            assert await count_customers() == 2
            background = asyncio.create_task(keep_querying())
            with sqlite3.connect(project / "data" / "crm.sqlite") as lite:
                lite.execute("INSERT INTO customers (id, name) VALUES (3, 'Cleo')")
            proc = await asyncio.to_thread(_sqlgate, "refresh", "-p", str(project), tmp=tmp_path)
            assert proc.returncode == 0, proc.stderr
            assert "source crm: customers: 3 rows copied" in proc.stderr
            assert "refreshed" in proc.stdout
            assert await count_customers() == 2, "the old file serves until the reload"
            server.proc.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 20
            while await count_customers() != 3:
                assert time.monotonic() < deadline, server.logs()
                await asyncio.sleep(0.2)
            await asyncio.sleep(0.5)
            stop.set()
            assert await background > 0
        assert failures == []
        assert "switched to the rebuilt database" in server.logs()
        assert not list((project / "data").glob(".*building*")), "no build leftovers"
    finally:
        stop.set()
        stop_server(server)


def test_seed_relative_paths_and_refresh_progress_from_another_directory(data_project, tmp_path):
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = _sqlgate("refresh", "-p", os.path.relpath(data_project, elsewhere), tmp=tmp_path, cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    assert "seed seed.sql: 2 statement(s)" in proc.stderr and "source sales (csv, 1 file(s)) ready" in proc.stderr
    assert not (elsewhere / "data").exists()


def test_validate_names_a_missing_source_file(data_project, tmp_path):
    project = tmp_path / "broken"
    project.mkdir()
    (project / "sqlgate.yml").write_text("name: broken\nsources:\n  orders:\n    path: data/orders.csv\n")
    proc = _sqlgate("validate", "-p", str(project), tmp=tmp_path)
    assert proc.returncode == 2
    assert "sources.orders" in proc.stderr and "data/orders.csv" in proc.stderr and "Traceback" not in proc.stderr
    (project / "sqlgate.yml").write_text("name: broken\nsources:\n  orders:\n    path: data/*.parquet\n")
    proc = _sqlgate("validate", "-p", str(project), tmp=tmp_path)
    assert proc.returncode == 2 and "no file matches 'data/*.parquet'" in proc.stderr


@pytest.mark.parametrize(("yml", "message"), [
    ("engine: {type: postgres, dsn: 'postgresql://x@127.0.0.1/x'}\nsources: {a: {path: a.csv}}\n",
     "sources: are DuckDB-only"),
    ("sources: {a-b: {path: a.csv}}\n", "must be a plain identifier"),
    ("sources: {a: {path: a.csv, options: {'x) ; DROP': 1}}}\n", "plain identifier"),
    ("sources: {a: {path: a.xlsx}}\n", "cannot tell the format"),
    ("sources: {a: {path: a.csv, colums: {}}}\n", "unknown key"),
])
def test_source_configuration_errors(tmp_path, yml, message):
    (tmp_path / "a.csv").write_text("x\n1\n")
    (tmp_path / "a.xlsx").write_text("not really")
    (tmp_path / "sqlgate.yml").write_text("name: bad\n" + yml)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        loaded = load_project(tmp_path, env={"SQLGATE_CONFIG": str(tmp_path / "none.yml")})
        open_engine(loaded)


def test_option_values_are_quoted_not_spliced(tmp_path):
    """A read option holding quotes and SQL stays a value: DuckDB gets it as one string literal."""
    (tmp_path / "a.csv").write_text("x;y\n1;2\n")
    (tmp_path / "sqlgate.yml").write_text(
        "name: q\nengine: {path: ':memory:'}\nsources:\n  a:\n    path: a.csv\n"
        "    description: \"it's; DROP TABLE a; --\"\n    options: {delim: ';', dateformat: \"%d'); DROP\"}\n")
    engine = open_engine(load_project(tmp_path, env={"SQLGATE_CONFIG": str(tmp_path / "none.yml")}))

    async def go():
        try:
            rows = await engine.run_untrusted("SELECT x, y FROM a", CallContext(), Limits(10, 10_000, 10))
            listed = await engine.list_tables(None, Limits(10, 10_000, 10))
            return rows.rows, listed.records()[0]["comment"]
        finally:
            await engine.close()

    assert asyncio.run(go()) == ([[1, 2]], "it's; DROP TABLE a; --")


async def test_init_from_files_makes_a_project_that_validates_and_serves(tmp_path):
    folder = tmp_path / "mydata"
    (folder / "daily").mkdir(parents=True)
    (folder / "orders.csv").write_text("id,total\n1,10.5\n2,20\n")
    with duckdb.connect() as con:
        for day in range(2):
            con.execute(f"COPY (SELECT {day} AS day, 7 AS n) TO '{folder}/daily/d{day}.parquet'")
    (folder / "budget.xlsx").write_bytes(b"PK")
    proc = _sqlgate("init", str(folder), "--from", str(folder), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Sources: daily, orders" in proc.stdout and "budget.xlsx: Excel" in proc.stderr
    text = (folder / "sqlgate.yml").read_text()
    assert "path: \"orders.csv\"" in text and "daily/**/*.parquet" in text and "# Each source" in text
    proc = _sqlgate("validate", "-p", str(folder), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    # a single file, into a new project directory
    single = tmp_path / "single"
    proc = _sqlgate("init", str(single), "--from", str(folder / "orders.csv"), tmp=tmp_path)
    assert proc.returncode == 0, proc.stderr
    server = start_server(folder, tmp_path)
    try:
        async with mcp_session(server.url) as s:
            res = await s.call_tool("query", {"sql": "SELECT (SELECT sum(total) FROM orders), "
                                                     "(SELECT sum(n) FROM daily)"})
            assert _content(res)["rows"] == [[30.5, 14]]
    finally:
        stop_server(server)
    assert _sqlgate("init", str(folder), "--from", str(folder), tmp=tmp_path).returncode == 2, "no overwrite"


def test_the_example_never_builds_inside_the_package(tmp_path):
    """examples/shop links to the package template: serving it without a database path outside the
    package is refused, and `make serve`'s SQLGATE_DB_PATH builds outside."""
    example = ROOT / "examples" / "shop"
    proc = _sqlgate("validate", "-p", str(example), tmp=tmp_path)
    assert proc.returncode == 2 and "refusing to build the database inside the sqlgate package" in proc.stderr
    assert not (EXAMPLE / "data").exists()
    env = isolated_env(tmp_path, SQLGATE_DB_PATH=str(tmp_path / "state" / "shop.duckdb"))
    proc = subprocess.run([*SQLGATE, "validate", "-p", str(example)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "state" / "shop.duckdb").is_file() and not (EXAMPLE / "data").exists()
    makefile = (ROOT / "Makefile").read_text()
    assert 'SQLGATE_DB_PATH="$(CURDIR)/$(STATE)/shop.duckdb"' in makefile


def test_wheel_contains_no_database(tmp_path):
    """A wheel built from a checkout where an older `make serve` left a database in the template
    still ships none (a copy of the tree is built, so the checkout is not touched)."""
    tree = tmp_path / "tree"
    for name in ("src", "pyproject.toml", "README.md"):
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, tree / name, ignore=shutil.ignore_patterns("*.egg-info", "__pycache__"))
        else:
            shutil.copy2(source, tree / name)
    stale = tree / "src" / "sqlgate" / "templates" / "shop" / "data"
    stale.mkdir()
    duckdb.connect(str(stale / "shop.duckdb")).close()
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path / "dist"),
                           str(tree)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    wheel = next((tmp_path / "dist").glob("sqlgate-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "sqlgate/templates/shop/sqlgate.yml" in names
    assert not [n for n in names if n.endswith((".duckdb", ".wal", ".sqlite")) or "/data/" in n], names


def test_memory_engine_with_sources_and_allowed_paths(tmp_path):
    """:memory: builds the sources at every start; engine.allowed_paths also works there."""
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "a.json").write_text(json.dumps([{"k": 1}, {"k": 2}]))
    (tmp_path / "files" / "b.ndjson").write_text('{"k": 3}\n{"k": 4}\n')
    (tmp_path / "sqlgate.yml").write_text(
        "name: mem\nengine: {path: ':memory:', allowed_paths: [files]}\n"
        "sources: {a: {path: files/a.json}, b: {path: files/b.ndjson}}\n")
    engine = open_engine(load_project(tmp_path, env={"SQLGATE_CONFIG": str(tmp_path / "none.yml")}))
    limits = Limits(10, 10_000, 10)

    async def go():
        try:
            union = await engine.run_untrusted("SELECT sum(k) FROM (FROM a UNION ALL FROM b)", CallContext(), limits)
            direct = await engine.execute(f"SELECT count(*) FROM read_json('{tmp_path}/files/b.ndjson')", None,
                                          CallContext(), limits)
            return union.rows, direct.rows
        finally:
            await engine.close()

    assert asyncio.run(go()) == ([[10]], [[2]])


async def test_readme_folder_to_server_commands_work(tmp_path):
    """The README's "From a folder of files" commands, run as written (in a scratch directory,
    sqlgate on PATH), end with a server that answers a question about the files."""
    lines = bash_block("## From a folder of files to a served MCP server")
    *setup, serve = lines
    assert serve.startswith("sqlgate serve") and "--port 8000" in serve
    env = isolated_env(tmp_path)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    for line in setup:
        proc = subprocess.run(["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
    port = free_port()
    log = tmp_path / "readme-serve.log"
    server = subprocess.Popen(["bash", "-c", "exec " + serve.replace("--port 8000", f"--port {port}")],
                              cwd=tmp_path, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90  # generous: the machine is shared
        while True:
            assert server.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
        async with mcp_session(f"{base}/mcp") as s:
            names = {i["name"] for i in _content(await s.call_tool("list_tables", {}))["items"]}
            assert {"orders", "daily"} <= names
            res = await s.call_tool("query", {"sql": "SELECT customer, sum(total) FROM orders GROUP BY ALL "
                                                     "ORDER BY 2 DESC LIMIT 1"})
            assert _content(res)["rows"] == [["Ann", 27.5]]
            res = await s.call_tool("query", {"sql": "SELECT sum(visits) FROM daily"})
            assert _content(res)["rows"] == [[215]]
    finally:
        server.terminate()
        server.wait(10)


def test_a_view_reading_a_file_by_path_fails_at_start_naming_it(tmp_path):
    (tmp_path / "a.csv").write_text("x\n1\n")
    (tmp_path / "views").mkdir()
    (tmp_path / "views" / "raw.sql").write_text("-- reads a file directly\nSELECT * FROM read_csv('a.csv')\n")
    (tmp_path / "views" / "two.sql").write_text("SELECT 1; SELECT 2")
    (tmp_path / "sqlgate.yml").write_text("name: v\nengine: {path: data/v.duckdb}\n")
    loaded = load_project(tmp_path, env={"SQLGATE_CONFIG": str(tmp_path / "none.yml")})
    with pytest.raises(ConfigError, match=r"views/two.sql: a view file holds exactly one SELECT"):
        open_engine(loaded)
    (tmp_path / "views" / "two.sql").unlink()
    with pytest.raises(ConfigError, match=r"views/raw.sql: view .raw. cannot be read by the server.*a source"):
        open_engine(loaded)
