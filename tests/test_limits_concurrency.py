"""Result limits, timeouts and per-call user context under concurrency — real servers, real DuckDB.

- rows: the default 1000-row cap over MCP, with `truncated` and a hint naming the limit;
- bytes: a server started with SQLGATE_MAX_BYTES=4096 keeps the rows payload under the cap;
- time: a server started with SQLGATE_QUERY_TIMEOUT=1 interrupts a slow query within seconds and
  keeps serving (other calls, /healthz);
- identity: concurrent calls as different users (engine level) and with different request headers
  (two MCP sessions over HTTP) never see each other's context; Authorization is never visible.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from pathlib import Path

import httpx
import pytest

from sqlgate.answers import ENVELOPE_BYTES, encoded_cost
from sqlgate.config.loader import load_project
from sqlgate.context import CallContext, UserContext
from sqlgate.endpoints import executor
from sqlgate.endpoints.loader import load_endpoints
from sqlgate.engine import Limits, open_engine
from tests.clients import mcp_session
from tests.conftest import ServerProcess, copy_shop, isolated_env, start_server, stop_server
from tests.scrape import until_sample

SLOW_SQL = "SELECT count(*) FROM range(100000000000) a"  # ~10^11 rows: minutes without the timeout


def compact(data) -> bytes:
    """How the server serialises results (components.dumps): compact JSON, UTF-8."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# ---------------------------------------------------------------- rows (default limits)

async def test_max_rows_caps_a_million_row_query(shop_server):
    async with mcp_session(shop_server.url) as s:
        res = await s.call_tool("query", {"sql": "SELECT * FROM range(1000000) t(i)"})
    assert not res.is_error, res.content[0].text
    sc = res.structured_content
    assert sc["row_count"] == 1000
    assert len(sc["rows"]) == 1000
    assert sc["rows"][0] == [0] and sc["rows"][-1] == [999]  # the first 1000 rows, in order
    assert sc["truncated"] is True
    assert "1000-row result limit" in sc["hint"]
    assert "partial" in sc["hint"]


async def test_exactly_max_rows_is_not_truncated(shop_server):
    async with mcp_session(shop_server.url) as s:
        res = await s.call_tool("query", {"sql": "SELECT * FROM range(1000)"})
    sc = res.structured_content
    assert sc["row_count"] == 1000
    assert sc["truncated"] is False
    assert "hint" not in sc


# ---------------------------------------------------------------- bytes and time (env overrides)

@pytest.fixture(scope="module")
def limited_server(tmp_path_factory) -> ServerProcess:
    """The shop example, served with SQLGATE_MAX_BYTES=4096 and SQLGATE_QUERY_TIMEOUT=1 (and /metrics)."""
    tmp = tmp_path_factory.mktemp("limited")
    project = tmp / "project"
    copy_shop(project)
    server = start_server(project, tmp, env=isolated_env(tmp, SQLGATE_MAX_BYTES="4096", SQLGATE_QUERY_TIMEOUT="1",
                                                         SQLGATE_METRICS="true"))
    yield server
    stop_server(server)


async def test_max_bytes_truncates_and_payload_stays_under_the_cap(limited_server):
    async with mcp_session(limited_server.url) as s:
        res = await s.call_tool("query", {"sql": "SELECT i, repeat('x', 40) AS pad FROM range(500) t(i)"})
    assert not res.is_error, res.content[0].text
    sc = res.structured_content
    assert sc["truncated"] is True
    assert "4096-byte result limit" in sc["hint"]
    assert 0 < sc["row_count"] < 500
    assert sc["row_count"] == len(sc["rows"])
    assert [r[0] for r in sc["rows"]] == list(range(sc["row_count"]))  # a prefix, nothing skipped
    assert len(compact(sc["rows"])) <= 4096
    # the cap is the whole message: the answer in both encodings (text escaped) plus the envelope
    assert encoded_cost(res.content[0].text) + ENVELOPE_BYTES <= 4096


async def test_max_bytes_leaves_small_results_alone(limited_server):
    async with mcp_session(limited_server.url) as s:
        res = await s.call_tool("query", {"sql": "SELECT name FROM products ORDER BY product_id LIMIT 5"})
    sc = res.structured_content
    assert sc["truncated"] is False
    assert sc["rows"] == [["Chair 1"], ["Desk 2"], ["Mug 3"], ["Notebook 4"], ["Pen 5"]]


async def test_max_bytes_counts_bytes_not_characters(limited_server):
    async with mcp_session(limited_server.url) as s:
        # 'é' is one character but two UTF-8 bytes
        res = await s.call_tool("query", {"sql": "SELECT i, repeat('é', 60) AS s FROM range(200) t(i)"})
    sc = res.structured_content
    assert sc["truncated"] is True
    assert len(compact(sc["rows"])) <= 4096


async def test_slow_query_times_out_and_server_keeps_serving(limited_server):
    async with mcp_session(limited_server.url) as s:
        started = time.monotonic()
        res = await s.call_tool("query", {"sql": SLOW_SQL})
        elapsed = time.monotonic() - started
        assert res.is_error
        message = res.content[0].text
        assert "timeout" in message and "1 s" in message, message
        assert elapsed < 6, f"timeout took {elapsed:.1f} s"
        # the same session, right after
        res = await s.call_tool("query", {"sql": "SELECT count(*) FROM customers"})
        assert not res.is_error and res.structured_content["rows"] == [[2000]]
    async with httpx.AsyncClient() as http:
        health = await http.get(f"{limited_server.base}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    # a brand-new session works too
    async with mcp_session(limited_server.url) as s:
        res = await s.call_tool("top_customers", {"limit": 2})
    assert not res.is_error and len(res.structured_content["result"]) == 2


async def test_slow_query_does_not_block_other_callers(limited_server):
    """Both sessions are open first; the quick call is sent only once the slow query holds its
    connection, and must be answered while the slow one is still running (it is cut at 1 s)."""
    async with mcp_session(limited_server.url) as slow_session, mcp_session(limited_server.url) as fast_session:
        slow = asyncio.create_task(slow_session.call_tool("query", {"sql": SLOW_SQL}))
        await until_sample(limited_server.base, "sqlgate_db_connections_in_use", 1)  # it is running
        fast_res = await fast_session.call_tool("query", {"sql": "SELECT 7 AS seven"})
        assert not slow.done(), "a fast query had to wait for the slow one"
        slow_res = await slow
    assert slow_res.is_error and "timeout" in slow_res.content[0].text
    assert not fast_res.is_error and fast_res.structured_content["rows"] == [[7]]


# ---------------------------------------------------------------- identity under concurrency

TENANT_TOOL = """\
tool:
  name: tenant
  description: The caller's X-Tenant header (and, to prove it is hidden, the Authorization header).
  return:
    type: object
  source:
    code: |
      SELECT get_request_header('x-tenant') AS tenant,
             get_request_header('X-TENANT') AS tenant_upper,
             get_request_header('authorization') AS authorization,
             get_request_header('cookie') AS cookie,
             get_username() AS username,
             sum(i % 7) AS work
      FROM range(2000000) t(i)
"""


@pytest.fixture(scope="module")
def tenant_project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tenants") / "project"
    (root / "tools").mkdir(parents=True)
    (root / "sqlgate.yml").write_text(textwrap.dedent("""\
        name: tenants
        engine:
          path: ":memory:"
          pool_size: 4
        sql_tools:
          request_headers: [x-tenant]   # the query tool may read this one header
        """))
    (root / "tools" / "tenant.yml").write_text(TENANT_TOOL)
    return root


@pytest.fixture(scope="module")
def tenant_server(tenant_project, tmp_path_factory) -> ServerProcess:
    tmp = tmp_path_factory.mktemp("tenant-server")
    server = start_server(tenant_project, tmp, env=isolated_env(tmp))
    yield server
    stop_server(server)


async def test_engine_concurrent_users_each_see_their_own_name(tenant_project, tmp_path):
    loaded = load_project(tenant_project, env={"SQLGATE_CONFIG": str(tmp_path / "none.yml")})
    engine = open_engine(loaded)
    limits = Limits(max_rows=10, max_bytes=10_000, timeout_seconds=30)
    sql = "SELECT get_username() AS u, sum(i % 7) AS s FROM range(10000000) t(i)"

    async def as_user(name: str) -> tuple[str, str, float, float]:
        call = CallContext(user=UserContext(username=name, email=f"{name}@example.test"))
        started = time.perf_counter()
        qr = await engine.execute(sql, None, call, limits)
        return name, qr.rows[0][0], started, time.perf_counter()

    try:
        outcomes = []
        for _ in range(6):
            outcomes += await asyncio.gather(*(as_user(n) for n in ("alice", "bob", "alice", "bob")))
        # the query takes measurable time, so calls really overlap on the worker threads
        assert min(end - start for _, _, start, end in outcomes) > 0.002
        assert len(outcomes) == 24
        for name, seen, _, _ in outcomes:
            assert seen == name, f"{name} saw {seen!r}"
        # and the email macro follows the same per-call context
        qr = await engine.execute("SELECT get_user_email()", None,
                                  CallContext(user=UserContext(username="carol", email="c@x.test")), limits)
        assert qr.rows == [["c@x.test"]]
        anon = await engine.execute("SELECT get_username(), get_request_header('x-tenant')", None,
                                    CallContext(), limits)
        assert anon.rows == [["", ""]]
    finally:
        await engine.close()


async def test_http_sessions_each_see_their_own_headers(tenant_server):
    async def calls(tenant: str, secret: str) -> list[dict]:
        headers = {"X-Tenant": tenant, "Authorization": f"Bearer {secret}", "Cookie": f"session={secret}"}
        async with mcp_session(tenant_server.url, headers=headers) as s:
            out = []
            for _ in range(8):
                res = await s.call_tool("tenant", {})
                assert not res.is_error, res.content[0].text
                out.append(res.structured_content["result"])
            return out

    acme, globex = await asyncio.gather(calls("acme", "token-acme"), calls("globex", "token-globex"))
    for tenant, results in (("acme", acme), ("globex", globex)):
        assert len(results) == 8
        for r in results:
            assert r["tenant"] == tenant
            assert r["tenant_upper"] == tenant  # header names are case-insensitive
            assert r["authorization"] == ""
            assert r["cookie"] == ""
            assert r["username"] == ""  # no auth configured: anonymous, whatever the bearer says
    text = tenant_server.logs()
    assert "token-acme" not in text and "token-globex" not in text


async def test_authorization_header_is_invisible_to_the_query_tool(tenant_server):
    headers = {"Authorization": "Bearer super-secret", "X-Tenant": "initech"}
    async with mcp_session(tenant_server.url, headers=headers) as s:
        res = await s.call_tool("query", {"sql": "SELECT get_request_header('x-tenant') AS t"})
        assert res.structured_content["rows"] == [["initech"]]
        # credential-like headers are refused to the model's SQL outright …
        for name in ("authorization", "Authorization"):
            res = await s.call_tool("query", {"sql": f"SELECT get_request_header('{name}') AS a"})
            assert res.is_error and "not available to the query tool" in res.content[0].text
            assert "super-secret" not in res.content[0].text
        # … and the Authorization header never reaches SQL at all, not even the author's
        res = await s.call_tool("tenant", {})
        assert res.structured_content["result"]["authorization"] == ""
        assert "super-secret" not in res.content[0].text


async def test_session_without_header_sees_empty_tenant(tenant_server):
    async with mcp_session(tenant_server.url) as s:
        res = await s.call_tool("tenant", {})
    assert not res.is_error
    assert res.structured_content["result"]["tenant"] == ""


# ---------------------------------------------------------------- per-endpoint limits

def _endpoint_limits_project(root: Path, endpoint_rows: int) -> Path:
    (root / "tools").mkdir(parents=True)
    (root / "sqlgate.yml").write_text("name: capped\nengine:\n  path: \":memory:\"\nlimits:\n  max_rows: 10\n")
    (root / "tools" / "numbers.yml").write_text(textwrap.dedent(f"""\
        tool:
          name: numbers
          description: One hundred numbers.
          limits: {{max_rows: {endpoint_rows}}}
          source:
            code: SELECT i FROM range(100) t(i)
        """))
    return root


async def _run_numbers(root: Path, tmp: Path) -> dict:
    loaded = load_project(root, env={"SQLGATE_CONFIG": str(tmp / "none.yml")})
    (ep,) = load_endpoints(loaded.root)
    lim = loaded.settings.limits
    engine = open_engine(loaded)
    try:
        return await executor.execute(ep, {}, engine, Limits(lim.max_rows, lim.max_bytes, lim.timeout_seconds),
                                      CallContext())
    finally:
        await engine.close()


async def test_endpoint_limit_below_the_configured_one_applies(tmp_path):
    out = await _run_numbers(_endpoint_limits_project(tmp_path / "p", 3), tmp_path)
    assert out["result"] == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert out["truncated"] is True and "3-row result limit" in out["hint"]


async def test_endpoint_limit_cannot_raise_the_configured_one(tmp_path):
    out = await _run_numbers(_endpoint_limits_project(tmp_path / "p", 50), tmp_path)
    assert len(out["result"]) == 10
    assert out["truncated"] is True
