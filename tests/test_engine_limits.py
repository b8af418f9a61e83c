"""Limits that hold (DuckDB): SQL length before parsing, a per-caller share of the pool, one deadline
that includes waiting for a connection, memory, and answers capped in whole — column names and
error texts included.
"""

from __future__ import annotations

import asyncio
import statistics
import textwrap
import time
from pathlib import Path

import httpx
import psutil
import pytest

from sqlgate.components import MAX_ERROR_CHARS
from sqlgate.config.loader import load_project
from sqlgate.context import CallContext, UserContext
from sqlgate.engine import Limits, open_engine
from sqlgate.errors import QueryFailed, QueryRefused, QueryTimeout
from tests.auth_support import start_auth_server
from tests.clients import hs256_bearer, mcp_session
from tests.conftest import copy_shop, free_port, isolated_env, start_server, stop_server

# a statement that runs until the deadline interrupts it
SLOW = "SELECT count(*) FROM range(100000000000) a WHERE a % 7 = 3"


def _project(root: Path, engine_extra: str = "") -> Path:
    copy_shop(root)
    text = (root / "sqlgate.yml").read_text()
    text = text.replace("engine:\n", "engine:\n" + textwrap.indent(engine_extra, "  "), 1) if engine_extra else text
    (root / "sqlgate.yml").write_text(text)
    return root


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory):
    """pool of 4, two per caller, 2 s per call, 200 MB of DuckDB memory, small answers."""
    tmp = tmp_path_factory.mktemp("busy")
    project = _project(tmp / "project", "pool_size: 4\nmax_concurrent_per_caller: 2\nmemory_limit: 200MB\n")
    server = start_server(project, tmp, env=isolated_env(tmp, SQLGATE_QUERY_TIMEOUT="2", SQLGATE_MAX_BYTES="20000"))
    yield server
    stop_server(server)


async def test_oversize_sql_is_refused_fast_and_nobody_waits(busy_server):
    url = busy_server.url
    huge = "SELECT 1 AS x" + " " * 1_000_000 + "-- end"
    probes: list[float] = []

    async def probe_health():
        async with httpx.AsyncClient(timeout=5) as http:
            for _ in range(10):
                started = time.perf_counter()
                assert (await http.get(f"{busy_server.base}/healthz")).status_code == 200
                probes.append(time.perf_counter() - started)
                await asyncio.sleep(0.02)

    async with mcp_session(url) as big, mcp_session(url) as other:
        started = time.perf_counter()
        results = await asyncio.gather(big.call_tool("query", {"sql": huge}), probe_health(),
                                       other.call_tool("query", {"sql": "SELECT 1"}))
        res, _, cheap = results
        assert time.perf_counter() - started < 3
        assert res.is_error
        assert "limit is 100,000" in res.content[0].text and "max_sql_length" in res.content[0].text
        assert cheap.structured_content["rows"] == [[1]]
    assert statistics.median(probes) < 0.1, probes


async def test_one_users_slow_queries_leave_room_for_others(tmp_path):
    secret = "engine-limits-shared-secret-0123456789abcdef"
    port = free_port()
    server = start_auth_server(tmp_path, {"jwt": {"secret": secret, "algorithms": ["HS256"],
                                                  "issuer": "https://issuer.test"}}, port=port,
                               extra_env={"SQLGATE_QUERY_TIMEOUT": "2", "SQLGATE_DB_POOL_SIZE": "4",
                                          "SQLGATE_DB_MAX_CONCURRENT_PER_CALLER": "2"})

    def bearer(name: str) -> dict[str, str]:
        return hs256_bearer(secret, server.url, name)

    try:
        async with mcp_session(server.url, bearer("greedy")) as greedy, \
                mcp_session(server.url, bearer("other")) as other:
            flood = [asyncio.create_task(greedy.call_tool("query", {"sql": SLOW})) for _ in range(20)]
            await asyncio.sleep(0.3)  # the flood holds its share of the pool now
            started = time.perf_counter()
            res = await other.call_tool("query", {"sql": "SELECT 42"})
            waited = time.perf_counter() - started
            assert res.structured_content["rows"] == [[42]]
            assert waited < 1.0, f"another user waited {waited:.2f} s behind someone else's queries"
            outcomes = await asyncio.gather(*flood)
        # every flooding call got an answer within its own deadline: cancelled or not started in time
        for out in outcomes:
            assert out.is_error
            assert "timeout" in out.content[0].text, out.content[0].text
    finally:
        stop_server(server)


async def test_queued_calls_keep_their_own_deadline(tmp_path):
    project = _project(tmp_path / "project", "pool_size: 2\nmax_concurrent_per_caller: 2\n")
    engine = open_engine(load_project(project, env={"SQLGATE_CONFIG": str(tmp_path / "none.yml")}))
    limits = Limits(max_rows=10, max_bytes=10_000, timeout_seconds=2)
    me = CallContext(user=UserContext(username="alice"))

    async def timed(sql):
        started = time.perf_counter()
        try:
            await engine.run_untrusted(sql, me, limits)
            outcome = "ok"
        except (QueryTimeout, QueryFailed) as exc:
            outcome = f"{type(exc).__name__}: {exc}"
        return outcome, time.perf_counter() - started

    try:
        results = await asyncio.gather(*(timed(SLOW) for _ in range(4)), timed("SELECT 1"))
    finally:
        await engine.close()
    for outcome, took in results:
        assert took < 2 + 0.8, f"a call took {took:.2f} s with a 2 s deadline ({outcome})"
    assert any("not started within the 2 s timeout" in o for o, _ in results)
    assert any("ran longer than the 2 s timeout" in o for o, _ in results)


async def test_memory_hungry_query_fails_clearly_and_memory_stays_bounded(busy_server):
    proc = psutil.Process(busy_server.proc.pid)
    before = proc.memory_info().rss
    async with mcp_session(busy_server.url) as s:
        res = await s.call_tool("query", {"sql": "SELECT count(*) FROM (SELECT i, md5(i::VARCHAR) || "
                                                 "repeat('x', 200) AS m FROM range(8000000) r(i) ORDER BY m)"})
        assert res.is_error
        text = res.content[0].text
        assert "memory" in text.lower() and "memory_limit" in text, text
        ok = await s.call_tool("query", {"sql": "SELECT count(*) FROM customers"})
        assert ok.structured_content["rows"] == [[2000]]
    grown = proc.memory_info().rss - before
    assert grown < 600 * 2**20, f"server grew by {grown / 2**20:.0f} MiB under a 200 MB limit"


async def test_column_names_count_against_max_bytes(busy_server):
    long_name = "c" * 30_000
    async with mcp_session(busy_server.url) as s:
        res = await s.call_tool("query", {"sql": f'SELECT 1 AS "{long_name}"'})
        assert res.is_error
        assert "column names and types alone exceed the 20000-byte result limit" in res.content[0].text
        # many columns with moderate names: the rows are cut so the whole answer fits
        cols = ", ".join(f"i AS col_{n:04d}_{'x' * 20}" for n in range(200))
        res = await s.call_tool("query", {"sql": f"SELECT {cols} FROM range(1000) r(i)"})
        assert not res.is_error
        assert res.structured_content["truncated"] is True
        assert len(res.content[0].text.encode()) < 20_000 + 2_000


async def test_long_error_messages_are_cut(busy_server):
    async with mcp_session(busy_server.url) as s:
        res = await s.call_tool("query", {"sql": "SELECT error(repeat('boom ', 1000000))"})
        assert res.is_error
        text = res.content[0].text
        assert len(text) < MAX_ERROR_CHARS + 200
        assert "error message cut" in text
    assert "Traceback" not in busy_server.logs()


async def test_deeply_nested_sql_is_a_clear_refusal(busy_server):
    nested = "SELECT " + "(" * 3000 + "1" + ")" * 3000
    async with mcp_session(busy_server.url) as s:
        res = await s.call_tool("query", {"sql": nested})
        assert res.is_error
        text = res.content[0].text
        assert "nested too deeply" in text or "could not parse" in text, text[:300]


def test_engine_memory_limit_is_configured(tmp_path):
    project = _project(tmp_path / "project", "memory_limit: 300MB\nthreads: 2\n")
    engine = open_engine(load_project(project, env={"SQLGATE_CONFIG": str(tmp_path / "none.yml")}))
    try:
        row = engine._db.execute("SELECT current_setting('memory_limit'), current_setting('threads'), "
                                 "current_setting('temp_directory')").fetchone()
        assert row[0].startswith("286") and row[1] == 2 and row[2] == ""
    finally:
        asyncio.run(engine.close())


def test_failures_are_typed(tmp_path):
    project = _project(tmp_path / "project")
    engine = open_engine(load_project(project, env={"SQLGATE_CONFIG": str(tmp_path / "none.yml")}))
    limits = Limits(max_rows=10, max_bytes=10_000, timeout_seconds=5)

    async def go():
        try:
            with pytest.raises(QueryFailed, match="does not exist"):
                await engine.run_untrusted("SELECT * FROM no_such_table", CallContext(), limits)
        finally:
            await engine.close()

    asyncio.run(go())


async def test_allowed_paths_open_those_files_to_the_projects_sql_only(tmp_path):
    """engine.allowed_paths: the project's SQL (endpoints, views) reads those files and nothing else;
    the query tool reads them only through the project's views, never with read_csv() itself."""
    project = _project(tmp_path / "project", "allowed_paths: [files]\n")
    (project / "files").mkdir()
    csv = project / "files" / "sales.csv"
    csv.write_text("id,amount\n1,10\n2,32\n")
    seed = project / "sql" / "seed.sql"
    seed.write_text(seed.read_text() + f"\nCREATE VIEW sales AS SELECT * FROM read_csv('{csv}');\n")
    engine = open_engine(load_project(project, env={"SQLGATE_CONFIG": str(tmp_path / "none.yml")}))
    limits = Limits(max_rows=10, max_bytes=10_000, timeout_seconds=10)
    try:
        own = await engine.execute(f"SELECT sum(amount) FROM read_csv('{csv}')", None, CallContext(), limits)
        assert own.rows == [[42]]
        with pytest.raises(QueryFailed, match="file system operations are disabled"):
            await engine.execute("SELECT * FROM read_csv('/etc/passwd')", None, CallContext(), limits)
        via_view = await engine.run_untrusted("SELECT sum(amount) FROM sales", CallContext(), limits)
        assert via_view.rows == [[42]]
        with pytest.raises(QueryRefused, match="read_csv"):
            await engine.run_untrusted(f"SELECT * FROM read_csv('{csv}')", CallContext(), limits)
    finally:
        await engine.close()
