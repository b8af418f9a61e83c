"""End to end with the official `mcp` client: streamable HTTP and stdio against real servers."""

from __future__ import annotations

import json
import sys
from contextlib import asynccontextmanager

import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.clients import records
from tests.conftest import isolated_env

BUILTINS = {"list_schemas", "list_tables", "describe_table", "search_objects", "query"}
YAML_TOOLS = {"top_customers", "orders_by_status", "my_customers", "whoami", "customer_summary"}


@asynccontextmanager
async def http_session(url: str):
    async with streamable_http_client(url) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def stdio_session(project, tmp):
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "sqlgate", "serve", "-p", str(project), "--log-level", "warning"],
                                   env=isolated_env(tmp))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


async def exercise_everything(session: ClientSession) -> None:
    """The same checks over any transport: list and call every kind of endpoint."""
    tools = {t.name: t for t in (await session.list_tools()).tools}
    assert set(tools) >= BUILTINS | YAML_TOOLS
    assert all(t.description for t in tools.values()), "every tool has a description"

    # inputSchema keeps enums, descriptions, defaults and required-ness exactly as declared
    schema = tools["top_customers"].input_schema
    assert schema["properties"]["region"] == {
        "type": "string", "description": "Only customers of this sales region.", "enum": ["EU", "US", "APAC"]}
    assert schema["properties"]["limit"] == {"type": "integer", "description": "How many customers to return.",
                                             "default": 10, "minimum": 1, "maximum": 100}
    assert "required" not in schema
    assert tools["customer_summary"].input_schema["required"] == ["customer_id"]
    assert tools["top_customers"].annotations.read_only_hint is True

    # built-in tools
    res = await session.call_tool("list_schemas", {})
    assert not res.is_error and {"database": "shop", "schema": "main", "comment": None} in \
        records(res.structured_content)
    res = await session.call_tool("list_tables", {"schema": "main"})
    names = {t["name"]: t for t in records(res.structured_content)}
    assert {"customers", "orders", "order_items", "products", "order_totals"} <= set(names)
    assert names["customers"]["comment"] == "People and companies who bought from the shop"
    assert names["order_totals"]["kind"] == "view"
    res = await session.call_tool("describe_table", {"table": "order_items"})
    desc = res.structured_content
    assert [c["name"] for c in records(desc)] == ["order_id", "product_id", "quantity", "unit_price"]
    assert records(desc)[0]["nullable"] is False
    kinds = {k["type"]: k for k in desc["table"]["keys"]}
    assert kinds["PRIMARY KEY"]["columns"] == ["order_id", "product_id"]
    assert kinds["FOREIGN KEY"]["referenced_table"] in ("orders", "products")
    res = await session.call_tool("describe_table", {"table": "nope"})
    assert res.is_error and "not found" in res.content[0].text
    res = await session.call_tool("search_objects", {"keywords": "account manager"})
    top = records(res.structured_content)[0]
    assert (top["table"], top["name"]) == ("customers", "account_manager")
    res = await session.call_tool("query", {"sql": "SELECT count(*) AS n FROM customers WHERE region = 'EU'"})
    assert not res.is_error
    assert res.structured_content["columns"] == ["n"] and res.structured_content["rows"] == [[666]]
    assert res.structured_content["truncated"] is False
    res = await session.call_tool("query", {"sql": "DROP TABLE customers"})
    assert res.is_error and "DROP is not allowed" in res.content[0].text

    # YAML SQL tool (inline SQL and SQL file) and Python tool
    res = await session.call_tool("top_customers", {"region": "US", "limit": 3})
    assert not res.is_error
    rows = res.structured_content["result"]
    assert len(rows) == 3 and all(r["region"] == "US" for r in rows)
    assert json.loads(res.content[0].text) == res.structured_content
    res = await session.call_tool("orders_by_status", {})
    assert {r["status"] for r in res.structured_content["result"]} == {"placed", "shipped", "delivered", "cancelled"}
    res = await session.call_tool("customer_summary", {"customer_id": 42})
    assert res.structured_content["result"]["name"] == "Customer 42"
    assert res.structured_content["result"]["segment"] in {"key account", "regular", "occasional"}
    res = await session.call_tool("customer_summary", {"customer_id": 999999})
    assert res.is_error and "no customer with id 999999" in res.content[0].text
    res = await session.call_tool("top_customers", {"limit": 0})
    assert res.is_error and "limit" in res.content[0].text and "minimum" in res.content[0].text

    # resources: a static one and a template
    listed = await session.list_resources()
    assert [str(r.uri) for r in listed.resources] == ["shop://categories"]
    templates = await session.list_resource_templates()
    assert [t.uri_template for t in templates.resource_templates] == ["shop://customers/{customer_id}"]
    read = await session.read_resource("shop://customers/7")
    body = json.loads(read.contents[0].text)
    assert body["result"]["customer_id"] == 7 and body["result"]["email"] == "customer7@example.test"
    read = await session.read_resource("shop://categories")
    assert {c["category"] for c in json.loads(read.contents[0].text)["result"]} >= {"furniture", "decor"}

    # prompts come back as proper MCP prompt messages
    prompts = (await session.list_prompts()).prompts
    assert [p.name for p in prompts] == ["analyze_table"]
    assert [(a.name, a.required) for a in prompts[0].arguments] == [("table", True), ("focus", False)]
    got = await session.get_prompt("analyze_table", {"table": "orders"})
    assert [m.role for m in got.messages] == ["user", "assistant"]
    assert "Analyse the table orders" in got.messages[0].content.text
    assert "data quality" in got.messages[0].content.text


async def test_streamable_http_end_to_end(shop_server):
    async with http_session(shop_server.url) as session:
        await exercise_everything(session)


async def test_stdio_end_to_end(shop_project, tmp_path):
    async with stdio_session(shop_project, tmp_path) as session:
        await exercise_everything(session)


async def test_request_header_reaches_sql(shop_server):
    headers = {"User-Agent": "e2e-agent/1.0"}
    async with (
        httpx2.AsyncClient(headers=headers) as client,
        streamable_http_client(shop_server.url, http_client=client) as (r, w),
        ClientSession(r, w) as session,
    ):
        await session.initialize()
        res = await session.call_tool("whoami", {})
    assert res.structured_content["result"] == {"username": "", "email": "", "provider": "",
                                                "user_agent": "e2e-agent/1.0"}


def test_healthz_and_dns_rebinding_protection(shop_server):
    assert httpx.get(f"{shop_server.base}/healthz").json()["status"] == "ok"
    # a foreign Host header (DNS rebinding) is refused on a loopback bind
    r = httpx.post(shop_server.url, headers={"Host": "attacker.example", "Content-Type": "application/json",
                                             "Accept": "application/json, text/event-stream"},
                   content=b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
    assert r.status_code in (400, 403, 421)
    r = httpx.post(shop_server.url, headers={"Origin": "http://attacker.example",
                                             "Content-Type": "application/json",
                                             "Accept": "application/json, text/event-stream"},
                   content=b'{"jsonrpc":"2.0","id":1,"method":"ping"}')
    assert r.status_code in (400, 403, 421)


def test_audit_log_names_every_execution(shop_server):
    async def call():
        async with http_session(shop_server.url) as session:
            await session.call_tool("query", {"sql": "SELECT 1 AS audit_marker"})

    import anyio

    anyio.run(call)
    assert "tool query by anonymous" in shop_server.logs()


def test_server_refuses_bad_transport(shop_project, tmp_path):
    import subprocess

    cmd = [sys.executable, "-m", "sqlgate", "serve", "-p", str(shop_project), "--transport", "carrier-pigeon"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=isolated_env(tmp_path), timeout=30)
    assert proc.returncode == 2 and "unknown transport 'carrier-pigeon'" in proc.stderr


async def test_sighup_reloads_endpoints_and_keeps_them_on_error(shop_project, tmp_path):
    import shutil
    import signal
    import time

    from tests.conftest import start_server, stop_server

    project = tmp_path / "reload"
    shutil.copytree(shop_project, project)
    server = start_server(project, tmp_path)
    try:
        (project / "tools" / "added.yml").write_text(
            "tool:\n  name: added\n  description: Added while running.\n  source:\n    code: SELECT 7 AS seven\n")
        server.proc.send_signal(signal.SIGHUP)
        for _ in range(50):
            if "reloaded" in server.logs():
                break
            time.sleep(0.1)
        async with http_session(server.url) as session:
            res = await session.call_tool("added", {})
            assert res.structured_content["result"] == [{"seven": 7}]
        # a broken file: the reload is refused and the previous tools keep working
        (project / "tools" / "broken.yml").write_text("tool:\n  name: broken\n")
        server.proc.send_signal(signal.SIGHUP)
        for _ in range(50):
            if "reload refused" in server.logs():
                break
            time.sleep(0.1)
        assert "tools/broken.yml" in server.logs()
        async with http_session(server.url) as session:
            names = {t.name for t in (await session.list_tools()).tools}
            assert "added" in names and "broken" not in names
    finally:
        stop_server(server)


async def test_a_missing_resource_is_an_mcp_error(shop_server):
    from mcp.shared.exceptions import MCPError

    async with http_session(shop_server.url) as session:
        found = await session.read_resource("shop://customers/3")
        assert '"customer_id":3' in found.contents[0].text
        with pytest.raises(MCPError, match=r"resource shop://customers/999999 not found"):
            await session.read_resource("shop://customers/999999")
