"""Answers that always arrive: results of 2 MB, 20 MB and 1M rows through the official mcp client over
streamable HTTP and stdio are capped below the client's limits, say they are truncated, and paging
with the signed cursor returns every row exactly once. Cursors are refused when changed, foreign,
for other arguments or expired. Every built-in tool answers in the declared outputSchema."""

from __future__ import annotations

import asyncio
import json
import sys
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from jsonschema import Draft202012Validator
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from sqlgate.answers import dumps, encoded_cost
from sqlgate.context import CallContext, UserContext
from sqlgate.errors import InvalidArguments
from sqlgate.paging import Page, Pager
from tests.auth_support import start_auth_server
from tests.clients import hs256_bearer, mcp_session
from tests.conftest import free_port, isolated_env, start_server, stop_server

MAX_BYTES = 1_000_000  # the default
CLIENT_SSE_LIMIT = 1024 * 1024  # mcp.client.streamable_http.DEFAULT_MAX_SSE_EVENT_SIZE
ENV = {"SQLGATE_MAX_ROWS": "1000000", "SQLGATE_QUERY_TIMEOUT": "60"}

NUMBERS_TOOL = """\
tool:
  name: numbers
  description: Numbers with padding, in order.
  parameters:
    - {name: n, type: integer, description: how many}
    - {name: width, type: integer, description: padding, default: 0}
  source:
    code: SELECT i, repeat('x', $width) AS pad FROM range($n) t(i) ORDER BY i
"""
NUMBER_RESOURCE = """\
resource:
  uri: num://{id}
  name: number
  description: One number.
  parameters:
    - {name: id, type: integer, description: which}
  return: {type: object}
  source:
    code: SELECT i FROM range(10) t(i) WHERE i = $id
"""


def write_project(root: Path) -> Path:
    (root / "tools").mkdir(parents=True)
    (root / "resources").mkdir()
    (root / "sqlgate.yml").write_text("name: answers\nengine:\n  path: ':memory:'\n  seed: seed.sql\n"
                                      "audit:\n  path: audit.jsonl\n")
    (root / "seed.sql").write_text("CREATE TABLE notes (id INTEGER PRIMARY KEY, note VARCHAR);\n"
                                   "COMMENT ON TABLE notes IS 'Short notes';\n")
    (root / "tools" / "numbers.yml").write_text(NUMBERS_TOOL)
    (root / "resources" / "number.yml").write_text(NUMBER_RESOURCE)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return write_project(tmp_path_factory.mktemp("answers") / "project")


@pytest.fixture(scope="module")
def http_server(project, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("answers-http")
    server = start_server(project, tmp, env=isolated_env(tmp, **ENV))
    yield server
    stop_server(server)


@asynccontextmanager
async def stdio_session(project: Path, tmp: Path):
    params = StdioServerParameters(command=sys.executable,
                                   args=["-m", "sqlgate", "serve", "-p", str(project), "--log-level", "warning"],
                                   env=isolated_env(tmp, **ENV))
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


@asynccontextmanager
async def session_for(transport: str, http_server, project: Path, tmp: Path):
    if transport == "http":
        async with mcp_session(http_server.url) as s:
            yield s
    else:
        async with stdio_session(project, tmp) as s:
            yield s


def message_size(sc: dict) -> int:
    """What the answer weighs in the message: structuredContent + the same JSON as escaped text."""
    return encoded_cost(dumps(sc))


async def page_through(session: ClientSession, tool: str, args: dict, key: str = "rows",
                       budget: int = MAX_BYTES) -> tuple[list, int]:
    """Every row of a paged answer, following next_cursor; checks each page on the way."""
    rows: list = []
    pages = 0
    cursor = None
    while True:
        res = await session.call_tool(tool, {**args, "cursor": cursor} if cursor else args)
        assert not res.is_error, res.content[0].text[:500]
        sc = res.structured_content
        if pages == 0:
            assert json.loads(res.content[0].text) == sc  # the text is the same answer
        assert message_size(sc) <= budget
        assert sc["row_count"] == len(sc[key])
        pages += 1
        rows += sc[key]
        if not sc["truncated"]:
            assert "next_cursor" not in sc
            return rows, pages
        assert sc["row_count"] > 0 and sc["next_cursor"] and "cursor" in sc["hint"]
        # the cap is used, not wasted: the page is at least 90 % of the budget
        assert message_size(sc) > 0.9 * budget
        cursor = sc["next_cursor"]


@pytest.mark.parametrize("transport", ["http", "stdio"])
async def test_big_answers_arrive_capped_and_page_exactly_once(transport, http_server, project, tmp_path):
    async with session_for(transport, http_server, project, tmp_path) as s:
        # ~2 MB and ~20 MB of rows (1,000 characters each), in the query's own order: every page of both
        for n in (2_000, 20_000):
            rows, pages = await page_through(
                s, "query", {"sql": f"SELECT i, repeat('x', 1000) AS pad FROM range({n}) t(i) ORDER BY i"})
            assert [r[0] for r in rows] == list(range(n))
            assert pages >= (2 if n == 2_000 else 20)
        # no ORDER BY: the pager sorts by all columns, so pages still never overlap
        rows, _ = await page_through(s, "query", {"sql": "SELECT (i * 7919) % 3000 AS k, repeat('y', 900) AS pad "
                                                         "FROM range(3000) t(i)"})
        assert sorted(r[0] for r in rows) == list(range(3000))
        # 1M rows of one integer: big pages (max_rows is 1,000,000 here), every row once, in order
        rows, pages = await page_through(s, "query", {"sql": "SELECT i FROM range(1000000) t(i) ORDER BY i"})
        assert len(rows) == 1_000_000 and pages >= 10
        assert all(r[0] == i for i, r in enumerate(rows))
        # a SQL endpoint pages the same way, with its arguments and the cursor
        got, _ = await page_through(s, "numbers", {"n": 3000, "width": 800}, key="result")
        assert [r["i"] for r in got] == list(range(3000))


async def test_the_whole_message_stays_under_the_clients_sse_limit(http_server):
    """The SSE event as sent (framing, JSON-RPC envelope, both encodings) is measured the way the
    official client's decoder counts it, against max_bytes and the 1 MiB client limit."""
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    init = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {},
                       "clientInfo": {"name": "raw", "version": "1"}}}
    async with httpx.AsyncClient(timeout=60) as http:
        r = await http.post(http_server.url, json=init, headers=headers)
        session = {"mcp-session-id": r.headers["mcp-session-id"], **headers}
        await http.post(http_server.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                        headers=session)
        # quotes and backslashes double in the text form: the worst case of the escaping
        sql = "SELECT i, repeat('\"\\', 400) AS q FROM range(100000) t(i) ORDER BY i"
        call = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "query", "arguments": {"sql": sql}}}
        r = await http.post(http_server.url, json=call, headers=session)
    events = [e for e in r.text.replace("\r\n", "\n").split("\n\n") if "data:" in e]
    event = events[-1]
    size = sum(len(line.encode("utf-8")) for line in event.split("\n"))  # as httpx2's SSE decoder counts
    message = json.loads(next(line[5:] for line in event.split("\n") if line.startswith("data:")))
    sc = message["result"]["structuredContent"]
    assert sc["truncated"] is True and sc["next_cursor"]
    envelope = size - message_size(sc)
    assert 0 < envelope < 512, envelope  # answers.ENVELOPE_BYTES reserves 512
    assert 0.9 * MAX_BYTES < size <= MAX_BYTES < CLIENT_SSE_LIMIT


async def test_cursor_refused_when_changed_or_for_other_arguments(http_server):
    async with mcp_session(http_server.url) as s:
        sql = "SELECT i FROM range(300000) t(i) ORDER BY i"
        first = (await s.call_tool("query", {"sql": sql})).structured_content
        cursor = first["next_cursor"]
        body, sig = cursor.split(".")
        forged = body[:-2] + ("A" if body[-2] != "A" else "B") + body[-1] + "." + sig
        res = await s.call_tool("query", {"sql": sql, "cursor": forged})
        assert res.is_error and "changed" in res.content[0].text
        res = await s.call_tool("query", {"sql": sql.replace("300000", "300001"), "cursor": cursor})
        assert res.is_error and "same arguments" in res.content[0].text
        res = await s.call_tool("numbers", {"n": 300000, "cursor": cursor})
        assert res.is_error and "another call" in res.content[0].text
        res = await s.call_tool("query", {"sql": sql, "cursor": "nonsense"})
        assert res.is_error and "not a cursor" in res.content[0].text
        res = await s.call_tool("query", {"sql": sql, "cursor": cursor})  # unchanged: fine
        assert not res.is_error and res.structured_content["rows"][0] == [first["row_count"]]


def test_cursor_expiry_and_owner_are_checked():
    pager = Pager("secret-for-the-test", ttl_seconds=60)
    alice = CallContext(user=UserContext(username="alice", provider="jwt"))
    bob = CallContext(user=UserContext(username="bob", provider="jwt"))
    args = {"sql": "SELECT 1"}
    cursor = pager.issue(alice, "tool:query", args, Page(10, 2), now=1000)
    assert pager.open(cursor, alice, "tool:query", args, now=1059) == Page(10, 2)
    with pytest.raises(InvalidArguments, match="expired"):
        pager.open(cursor, alice, "tool:query", args, now=1061)
    with pytest.raises(InvalidArguments, match="another caller"):
        pager.open(cursor, bob, "tool:query", args, now=1001)
    with pytest.raises(InvalidArguments, match="changed or was issued by another server"):
        Pager("another-secret", 60).open(cursor, alice, "tool:query", args, now=1001)
    # replicas sharing the secret accept each other's cursors
    assert Pager("secret-for-the-test", 60).open(cursor, alice, "tool:query", args, now=1001).offset == 10


SECRET = "answers-test-shared-secret-0123456789abcdef"


async def test_another_users_cursor_is_refused_over_http(tmp_path):
    port = free_port()
    server = start_auth_server(tmp_path, {"jwt": {"secret": SECRET, "algorithms": ["HS256"],
                                                  "issuer": "https://issuer.test"}}, port=port,
                               extra_env={"SQLGATE_MAX_BYTES": "20000"})
    url, aud = f"http://127.0.0.1:{port}/mcp", f"http://127.0.0.1:{port}/mcp"
    try:
        sql = "SELECT i FROM range(100000) t(i) ORDER BY i"
        async with mcp_session(url, hs256_bearer(SECRET, aud, "alice")) as s:
            cursor = (await s.call_tool("query", {"sql": sql})).structured_content["next_cursor"]
            assert not (await s.call_tool("query", {"sql": sql, "cursor": cursor})).is_error
        async with mcp_session(url, hs256_bearer(SECRET, aud, "bob")) as s:
            res = await s.call_tool("query", {"sql": sql, "cursor": cursor})
            assert res.is_error and "another caller" in res.content[0].text
    finally:
        stop_server(server)
    audit = server.logs()
    assert "tool query by alice" in audit and "rows, truncated" in audit


async def test_every_builtin_answer_matches_its_output_schema(http_server):
    async with mcp_session(http_server.url) as s:
        tools = {t.name: t for t in (await s.list_tools()).tools}
        calls = {
            "list_schemas": {}, "list_tables": {}, "search_objects": {"keywords": "anything"},
            "describe_table": {"table": "notes"},
            "query": {"sql": "SELECT i FROM range(300000) t(i) ORDER BY i"},
            "numbers": {"n": 5},
        }
        for name, args in calls.items():
            schema = tools[name].output_schema
            assert schema, f"{name} declares no outputSchema"
            res = await s.call_tool(name, args)
            assert not res.is_error, res.content[0].text
            sc = res.structured_content
            assert not list(Draft202012Validator(schema).iter_errors(sc)), (name, sc)
            assert isinstance(sc["row_count"], int) and isinstance(sc["truncated"], bool)  # the audit reads them
        assert tools["query"].input_schema["properties"]["cursor"]["type"] == "string"
        assert "cursor" in tools["numbers"].input_schema["properties"]


async def test_a_missing_resource_is_an_mcp_error(http_server):
    async with mcp_session(http_server.url) as s:
        found = await s.read_resource("num://3")
        assert json.loads(found.contents[0].text)["result"] == {"i": 3}
        with pytest.raises(MCPError, match="not found"):
            await s.read_resource("num://42")
        with pytest.raises(MCPError):
            await s.read_resource("nothing://here")



async def test_cursors_work_across_workers(project, tmp_path):
    """`--workers 2` serves stateless HTTP: the pages of one answer land on either worker, and each
    accepts the cursor the other signed (the supervisor hands its secret to both)."""
    server = start_server(project, tmp_path, env=isolated_env(tmp_path, **ENV, SQLGATE_MAX_BYTES="20000"),
                          args=["--workers", "2"], timeout=60)
    try:
        async with mcp_session(server.url) as s:
            rows, pages = await page_through(s, "query", {"sql": "SELECT i FROM range(12000) t(i) ORDER BY i"},
                                             budget=20_000)
    finally:
        stop_server(server)
    assert [r[0] for r in rows] == list(range(12000)) and pages >= 8


async def test_audit_events_say_truncated_and_failed(http_server, project):
    async with mcp_session(http_server.url) as s:
        cut = await s.call_tool("query", {"sql": "SELECT i, 'audit-cut' AS tag FROM range(300000) t(i) ORDER BY i"})
        whole = await s.call_tool("query", {"sql": "SELECT 'audit-whole' AS tag"})
        failed = await s.call_tool("query", {"sql": "SELECT 'audit-failed' FROM no_such_table"})
    assert cut.structured_content["truncated"] and not whole.structured_content["truncated"] and failed.is_error
    by_tag: dict = {}
    for _ in range(100):  # the audit trail is written off the request path: wait for the writer
        events = [json.loads(line) for line in (project / "audit.jsonl").read_text().splitlines()]
        by_tag = {tag: e for e in events for tag in ("audit-cut", "audit-whole", "audit-failed")
                  if tag in json.dumps(e.get("arguments"))}
        if len(by_tag) == 3:
            break
        await asyncio.sleep(0.05)
    assert by_tag["audit-cut"]["outcome"] == "ok" and by_tag["audit-cut"]["truncated"] is True
    assert by_tag["audit-cut"]["rows"] == cut.structured_content["row_count"]
    assert by_tag["audit-whole"]["truncated"] is False and by_tag["audit-whole"]["rows"] == 1
    assert by_tag["audit-failed"]["outcome"] == "error" and "no_such_table" in by_tag["audit-failed"]["error_message"]
