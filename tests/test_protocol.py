"""MCP protocol features with the official client over real HTTP and stdio: list_changed after a
reload, stream resumption (Last-Event-ID), stdout purity on stdio, log notifications and
logging/setLevel, completions, progress, icons/title/website, CORS, JSON responses, -32600 for
malformed ids, and the locked-tools listing.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import mcp_types as types
import psutil
import pytest
import yaml
from joserfc import jwt
from joserfc.jwk import OctKey
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

from tests.auth_support import start_auth_server
from tests.conftest import copy_shop, isolated_env, start_server, stop_server

PNG = "data:image/png;base64,iVBORw0KGgo="
PROTOCOL = "2025-11-25"
HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": PROTOCOL}
INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": PROTOCOL, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
ORIGIN = "https://app.example.test"

SLOW_PY = "import time\n\n\ndef slow(seconds: float) -> dict:\n    time.sleep(seconds)\n    return {'slept': seconds}\n"
SLOW_YML = """tool:
  name: slow
  description: Sleeps a while.
  icons:
    - src: "PNG"
      mime_type: image/png
      sizes: ["16x16"]
  parameters:
    - name: seconds
      type: number
      description: how long
  source:
    file: ../python/slow.py
""".replace('"PNG"', f'"{PNG}"')
REGION_PROMPT = """prompt:
  name: region_report
  description: Report on one region.
  icons: [{src: "https://shop.example.test/report.svg", sizes: [any]}]
  parameters:
    - name: region
      type: string
      description: A customer region.
      complete:
        sql: SELECT DISTINCT region FROM customers WHERE region ILIKE $value || '%' ORDER BY 1
    - name: style
      type: string
      description: How to write it.
      enum: [brief, detailed, bullet points]
      default: brief
  messages:
    - prompt: Write a {{ style }} report on region {{ region }}.
"""
BY_REGION = """resource:
  uri: shop://regions/{region}/customers
  description: Customers of one region.
  icons: [{src: "https://shop.example.test/people.svg", theme: dark}]
  parameters:
    - name: region
      type: string
      description: A customer region.
      complete:
        sql: SELECT DISTINCT region FROM customers WHERE region ILIKE $value || '%' ORDER BY 1
  source:
    code: SELECT name FROM customers WHERE region = $region ORDER BY 1
"""


def _project(tmp: Path, extra_settings: dict | None = None) -> Path:
    project = tmp / "project"
    copy_shop(project)
    (project / "python" / "slow.py").write_text(SLOW_PY)
    (project / "tools" / "slow.yml").write_text(SLOW_YML)
    (project / "prompts" / "region_report.yml").write_text(REGION_PROMPT)
    (project / "resources" / "by_region.yml").write_text(BY_REGION)
    settings = yaml.safe_load((project / "sqlgate.yml").read_text())
    settings.update({"title": "Shop data", "website_url": "https://shop.example.test",
                     "icons": [{"src": PNG, "mime_type": "image/png", "sizes": ["48x48"]}], **(extra_settings or {})})
    (project / "sqlgate.yml").write_text(yaml.safe_dump(settings))
    return project


class Inbox:
    """What the server sent besides answers: notifications, log messages, transport errors."""

    def __init__(self) -> None:
        self.notifications: list[object] = []
        self.errors: list[Exception] = []
        self.logs: list[types.LoggingMessageNotificationParams] = []

    async def on_message(self, message) -> None:
        (self.errors if isinstance(message, Exception) else self.notifications).append(message)

    async def on_log(self, params) -> None:
        self.logs.append(params)

    async def wait_for(self, kind: type, timeout: float = 10) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [n for n in self.notifications if isinstance(n, kind)]
            if found:
                return found[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {kind.__name__} within {timeout} s; got {self.notifications}")


@asynccontextmanager
async def session(url: str, inbox: Inbox | None = None, headers: dict[str, str] | None = None):
    inbox = inbox or Inbox()
    async with create_mcp_http_client(headers=headers) as http, \
            streamable_http_client(url, http_client=http) as (read, write), \
            ClientSession(read, write, message_handler=inbox.on_message, logging_callback=inbox.on_log) as s:
        result = await s.initialize()
        yield s, result


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("protocol")
    project = _project(tmp, {"transport": {"cors_origins": [ORIGIN]}})
    srv = start_server(project, tmp)
    srv.project = project
    yield srv
    stop_server(srv)


async def test_list_changed_reaches_connected_clients_after_a_reload(server):
    inbox = Inbox()
    async with session(server.url, inbox) as (s, init):
        assert init.capabilities.tools.list_changed is True
        before = {t.name for t in (await s.list_tools()).tools}
        assert "added_later" not in before
        (server.project / "tools" / "added_later.yml").write_text(
            "tool:\n  name: added_later\n  description: new\n  source:\n    code: SELECT 1 AS one\n")
        await asyncio.sleep(0.5)  # the client's GET stream is open by now
        os.kill(server.proc.pid, signal.SIGHUP)
        await inbox.wait_for(types.ToolListChangedNotification)
        await inbox.wait_for(types.PromptListChangedNotification)
        await inbox.wait_for(types.ResourceListChangedNotification)
        assert "added_later" in {t.name for t in (await s.list_tools()).tools}


def test_last_event_id_resumes_a_stream_instead_of_failing(server):
    with httpx.Client(timeout=10) as http:
        opened = http.post(server.url, json=INIT, headers=HEADERS)
        sid = opened.headers["mcp-session-id"]
        # the initialize answer came as SSE events with ids (the event store is on)
        event_ids = [line[3:].strip() for line in opened.text.splitlines() if line.startswith("id:")]
        assert event_ids, opened.text
        h = {**HEADERS, "Mcp-Session-Id": sid}
        http.post(server.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)
        # resuming after the priming event replays the initialize answer the client "missed"
        # (the resumed stream then stays open for what comes next: read until the replay is seen)
        with http.stream("GET", server.url, headers={**h, "Last-Event-ID": event_ids[0]}) as replay:
            assert replay.status_code == 200
            assert any('"protocolVersion"' in line for line in replay.iter_lines())
        unknown = http.get(server.url, headers={**h, "Last-Event-ID": "no-such-event"})
        assert unknown.status_code == 200 and '"result"' not in unknown.text


def test_last_event_id_on_a_stateless_server_is_a_clean_400(tmp_path):
    srv = start_server(_project(tmp_path), tmp_path, env=isolated_env(tmp_path, SQLGATE_STATELESS="true"))
    try:
        r = httpx.get(srv.url, headers={**HEADERS, "Last-Event-ID": "abc"}, timeout=10)
        assert r.status_code == 400
        assert "does not resume streams" in r.json()["error"]["message"]
        # and stateless servers do not promise list_changed they cannot deliver
        init = httpx.post(srv.url, json=INIT, headers=HEADERS, timeout=10)
        assert '"listChanged":false' in init.text.replace(" ", "")
    finally:
        stop_server(srv)


@pytest.mark.parametrize("bad_id", [1.5, {"a": 1}, None, True, [1]])
def test_malformed_request_ids_get_minus_32600(server, bad_id):
    r = httpx.post(server.url, json={"jsonrpc": "2.0", "id": bad_id, "method": "ping"}, headers=HEADERS, timeout=10)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == -32600 and r.json()["id"] is None


def test_good_ids_and_id_like_arguments_pass_the_id_check(server):
    ok = httpx.post(server.url, json=INIT | {"id": "str-id"}, headers=HEADERS, timeout=10)
    assert ok.status_code == 200 and '"id":"str-id"' in ok.text.replace(" ", "")
    sid = ok.headers["mcp-session-id"]
    h = {**HEADERS, "Mcp-Session-Id": sid}
    httpx.post(server.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)
    # `"id": null` inside tool arguments is data, not the message id
    call = httpx.post(server.url, headers=h, timeout=10, json={
        "jsonrpc": "2.0", "id": 7, "method": "tools/call",
        "params": {"name": "query", "arguments": {"sql": "SELECT 1 AS n", "id": None}}})
    assert call.status_code == 200 and "-32600" not in call.text


async def test_log_notifications_follow_set_level(server):
    inbox = Inbox()
    async with session(server.url, inbox) as (s, init):
        assert init.capabilities.logging is not None
        bad = await s.call_tool("query", {"sql": "DELETE FROM customers"})
        assert bad.is_error
        cut = await s.call_tool("query", {"sql": "SELECT * FROM range(5000)"})
        assert cut.structured_content["truncated"] is True
        levels = [(m.level, str(m.data)) for m in inbox.logs]
        assert any(level == "info" and "failed" in text for level, text in levels), levels
        assert any(level == "warning" and "truncated" in text for level, text in levels), levels
        inbox.logs.clear()
        await s.set_logging_level("error")
        await s.call_tool("query", {"sql": "DELETE FROM customers"})
        await s.call_tool("query", {"sql": "SELECT * FROM range(5000)"})
        assert inbox.logs == []  # info and warning are below the level the client asked for


async def test_completions_from_enum_and_sql(server):
    async with session(server.url) as (s, init):
        assert init.capabilities.completions is not None
        prompt = types.PromptReference(name="region_report")
        styles = await s.complete(prompt, {"name": "style", "value": "b"})
        assert styles.completion.values == ["brief", "bullet points"]
        all_regions = await s.complete(prompt, {"name": "region", "value": ""})
        assert all_regions.completion.values and all_regions.completion.values == sorted(all_regions.completion.values)
        first = all_regions.completion.values[0]
        narrowed = await s.complete(prompt, {"name": "region", "value": first[:2].lower()})
        assert first in narrowed.completion.values
        assert all(v.lower().startswith(first[:2].lower()) for v in narrowed.completion.values)
        template = types.ResourceTemplateReference(uri="shop://regions/{region}/customers")
        from_template = await s.complete(template, {"name": "region", "value": first})
        assert from_template.completion.values == [first]
        unknown = await s.complete(types.PromptReference(name="nope"), {"name": "x", "value": ""})
        assert unknown.completion.values == []


async def test_progress_for_calls_longer_than_a_second(server):
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, message))

    async with session(server.url) as (s, _):
        quick = await s.call_tool("query", {"sql": "SELECT 1 AS n"}, progress_callback=on_progress)
        assert not quick.is_error and seen == []
        slow = await s.call_tool("slow", {"seconds": 2.6}, progress_callback=on_progress)
        assert slow.structured_content["result"] == {"slept": 2.6}
    assert len(seen) >= 1
    assert seen[0][0] >= 1 and "running" in (seen[0][1] or "")
    assert [p for p, _ in seen] == sorted(p for p, _ in seen)


async def test_icons_title_and_website_in_listings(server):
    async with session(server.url) as (s, init):
        info = init.server_info
        assert info.title == "Shop data" and info.website_url == "https://shop.example.test"
        assert info.icons and info.icons[0].src == PNG and info.icons[0].sizes == ["48x48"]
        slow = next(t for t in (await s.list_tools()).tools if t.name == "slow")
        assert slow.icons and slow.icons[0].mime_type == "image/png" and slow.icons[0].sizes == ["16x16"]
        prompt = next(p for p in (await s.list_prompts()).prompts if p.name == "region_report")
        assert [i.src for i in prompt.icons or []] == ["https://shop.example.test/report.svg"]
        template = next(t for t in (await s.list_resource_templates()).resource_templates
                        if t.uri_template == "shop://regions/{region}/customers")
        assert template.icons and template.icons[0].theme == "dark"


def test_cors_preflight_and_exposed_headers(server):
    pre = httpx.options(server.url, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,mcp-session-id"})
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == ORIGIN
    assert "mcp-session-id" in pre.headers["access-control-allow-headers"].lower()
    r = httpx.post(server.url, json=INIT, headers={**HEADERS, "Origin": ORIGIN}, timeout=10)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == ORIGIN
    exposed = r.headers["access-control-expose-headers"].lower()
    assert "mcp-session-id" in exposed and "www-authenticate" in exposed
    other = httpx.options(server.url, headers={"Origin": "https://evil.example.test",
                                               "Access-Control-Request-Method": "POST"})
    assert other.status_code in (400, 403) and "access-control-allow-origin" not in other.headers


async def test_json_response_mode_serves_a_json_only_client(tmp_path):
    srv = start_server(_project(tmp_path), tmp_path, env=isolated_env(tmp_path, SQLGATE_JSON_RESPONSE="true"))
    json_only = {"Accept": "application/json", "MCP-Protocol-Version": PROTOCOL}
    try:
        r = httpx.post(srv.url, json=INIT, headers=json_only, timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
        assert r.json()["result"]["serverInfo"]["name"] == "shop"
        sid = r.headers["mcp-session-id"]
        h = {**json_only, "Mcp-Session-Id": sid}
        httpx.post(srv.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=h)
        call = httpx.post(srv.url, headers=h, timeout=10, json={
            "jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "query",
                                                                       "arguments": {"sql": "SELECT 5 AS n"}}})
        assert call.json()["result"]["structuredContent"]["rows"] == [[5]]
        async with session(srv.url) as (s, _):  # and the official client still works
            assert (await s.call_tool("query", {"sql": "SELECT 6 AS n"})).structured_content["rows"] == [[6]]
    finally:
        stop_server(srv)


async def test_stdio_stdout_carries_only_mcp_even_when_project_code_prints(tmp_path):
    project = _project(tmp_path)
    (project / "python" / "noisy.py").write_text(
        "print('hello from a project module')\n\n\ndef noisy() -> dict:\n    print('and from a call')\n"
        "    return {'ok': True}\n")
    (project / "tools" / "noisy.yml").write_text(
        "tool:\n  name: noisy\n  description: prints\n  source:\n    file: ../python/noisy.py\n")
    errlog = (tmp_path / "stderr.log").open("w+")
    params = StdioServerParameters(command=sys.executable, args=["-m", "sqlgate", "serve", "-p", str(project)],
                                   env=isolated_env(tmp_path))
    inbox = Inbox()
    async with stdio_client(params, errlog=errlog) as (read, write), \
            ClientSession(read, write, message_handler=inbox.on_message) as s:
        init = await s.initialize()
        result = await s.call_tool("noisy", {})
        assert result.structured_content["result"] == {"ok": True}
        # a reload reaches the stdio client too
        assert init.capabilities.tools.list_changed is True
        (project / "tools" / "added_later.yml").write_text(
            "tool:\n  name: added_later\n  description: new\n  source:\n    code: SELECT 1 AS one\n")
        server_process = next(p for p in psutil.Process().children(recursive=True)
                              if str(project) in " ".join(p.cmdline()))
        server_process.send_signal(signal.SIGHUP)
        await inbox.wait_for(types.ToolListChangedNotification)
        assert "added_later" in {t.name for t in (await s.list_tools()).tools}
    assert inbox.errors == [], inbox.errors  # every stdout line was a JSON-RPC message
    errlog.seek(0)
    printed = errlog.read()
    assert "hello from a project module" in printed and "and from a call" in printed


def _bearer(secret: str, audience: str, scope: str) -> dict[str, str]:
    claims = {"iss": "https://issuer.test", "aud": audience, "sub": "ann", "preferred_username": "ann",
              "scope": scope, "exp": int(time.time()) + 600}
    return {"Authorization": "Bearer " + jwt.encode({"alg": "HS256"}, claims, OctKey.import_key(secret.encode()))}


@pytest.mark.parametrize("mode", ["hide", "list"])
async def test_locked_tools_are_hidden_or_listed_with_their_scope(tmp_path, mode):
    secret = "protocol-locked-tools-secret-0123456789"
    tmp = tmp_path / mode
    tmp.mkdir()
    project = tmp / "project"
    copy_shop(project)
    (project / "tools" / "admin_report.yml").write_text(
        "tool:\n  name: admin_report\n  description: For admins.\n  scopes: [reports:admin]\n"
        "  source:\n    code: SELECT 1 AS one\n")
    (project / "prompts" / "admin_prompt.yml").write_text(
        "prompt:\n  name: admin_prompt\n  description: For admins.\n  scopes: [reports:admin]\n  parameters:\n"
        "    - {name: level, type: string, description: how deep, enum: [overview, detail]}\n"
        "  messages: [{prompt: 'Give an {{ level }}'}]\n")
    srv = start_auth_server(tmp, {"jwt": {"secret": secret, "algorithms": ["HS256"], "issuer": "https://issuer.test"}},
                            extra_env={"SQLGATE_LOCKED_TOOLS": mode})
    try:
        async with session(srv.url, headers=_bearer(secret, srv.url, "sqlgate:access")) as (s, _):
            tools = {t.name: t for t in (await s.list_tools()).tools}
            if mode == "hide":
                assert "admin_report" not in tools and "query" in tools
            else:
                locked = tools["admin_report"]
                assert "needs scope(s) reports:admin" in locked.description
                assert locked.meta["sqlgate/requiredScopes"] == ["reports:admin"]
                assert "Locked" not in tools["query"].description
            # completions answer only for what the caller may use
            locked_prompt = types.PromptReference(name="admin_prompt")
            assert (await s.complete(locked_prompt, {"name": "level", "value": ""})).completion.values == []
        # calling it still needs the scope: 403 with the scope to step up to
        r = httpx.post(srv.url, headers={**HEADERS, **_bearer(secret, srv.url, "sqlgate:access")}, timeout=10,
                       json={"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                             "params": {"name": "admin_report", "arguments": {}}})
        assert r.status_code == 403 and "reports:admin" in r.headers["www-authenticate"]
        async with session(srv.url, headers=_bearer(secret, srv.url, "sqlgate:access reports:admin")) as (s, _):
            admin = next(t for t in (await s.list_tools()).tools if t.name == "admin_report")
            assert "Locked" not in admin.description
            levels = await s.complete(types.PromptReference(name="admin_prompt"), {"name": "level", "value": ""})
            assert levels.completion.values == ["overview", "detail"]
    finally:
        stop_server(srv)


@pytest.mark.parametrize(("yaml_text", "expected"), [
    ("tool:\n  name: t\n  description: d\n  icons: [{src: 'http://plain.example/i.png'}]\n"
     "  source: {code: SELECT 1}\n", "icons"),
    ("tool:\n  name: t\n  description: d\n  parameters:\n    - {name: a, type: string, description: x,"
     " complete: {sql: SELECT 1}}\n  source: {code: SELECT $a}\n", "`complete` is for prompt arguments"),
    ("prompt:\n  name: p\n  description: d\n  parameters:\n    - {name: a, type: string, description: x,"
     " complete: {sql: SELECT $secret}}\n  messages: [{prompt: '{{ a }}'}]\n", "completion SQL uses $secret"),
])
def test_endpoint_files_check_icons_and_completion_sources(tmp_path, yaml_text, expected):
    from sqlgate.endpoints.loader import load_endpoints
    from sqlgate.errors import ConfigError

    (tmp_path / "tools").mkdir()
    (tmp_path / "tools" / "x.yml").write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_endpoints(tmp_path)
    assert expected in err.value.render()


def test_protocol_settings_from_the_environment(tmp_path):
    from sqlgate.config.loader import load_project
    from sqlgate.errors import ConfigError

    project = _project(tmp_path)
    env = {"SQLGATE_CONFIG": str(tmp_path / "none.yml"), "SQLGATE_CORS_ORIGINS": "https://a.example, https://b.example",
           "SQLGATE_LOCKED_TOOLS": "list", "SQLGATE_RESUME_BUFFER_BYTES": "0", "SQLGATE_JSON_RESPONSE": "true"}
    settings = load_project(project, env=env).settings
    assert settings.transport.cors_origins == ["https://a.example", "https://b.example"]
    assert settings.locked_tools == "list" and settings.transport.resume_buffer_bytes == 0
    assert settings.transport.json_response is True and settings.title == "Shop data"
    with pytest.raises(ConfigError) as err:
        load_project(project, env={**env, "SQLGATE_CORS_ORIGINS": "https://a.example/mcp"})
    assert "is not an origin" in err.value.render()


async def test_event_store_stays_within_its_byte_budget():
    from sqlgate.resume import BoundedEventStore

    store = BoundedEventStore(max_bytes=5_000)

    def note(i: int) -> types.JSONRPCNotification:
        return types.JSONRPCNotification(jsonrpc="2.0", method="notifications/message",
                                         params={"level": "info", "data": f"{i}:" + "x" * 400})

    ids = [await store.store_event("s1", note(i)) for i in range(40)]
    assert store.used <= store.max_bytes
    replayed: list[str] = []

    async def collect(event) -> None:
        replayed.append(event.message.params["data"].split(":")[0])

    assert await store.replay_events_after(ids[0], collect) is None  # dropped long ago
    assert await store.replay_events_after(ids[-3], collect) == "s1"
    assert replayed == ["38", "39"]
    # an event larger than the whole budget is not kept (nor does it evict everything else)
    await store.store_event("s2", types.JSONRPCNotification(jsonrpc="2.0", method="x", params={"d": "y" * 10_000}))
    assert store.used <= store.max_bytes and await store.replay_events_after(ids[-2], collect) == "s1"


async def test_stored_responses_replay_exactly_what_was_sent():
    """A response is stored through the direct encoding (resume.serialize): it replays as the same
    message pydantic would have stored, strings, nulls, big numbers and all."""
    from pydantic import TypeAdapter

    from sqlgate.resume import BoundedEventStore, serialize

    adapter = TypeAdapter(types.JSONRPCMessage)
    result = {"content": [{"type": "text", "text": 'rows "q" \\ é 𝄞'}], "isError": False,
              "structuredContent": {"rows": [[1, None, 2**64 + 1, 1.5, "x"]], "truncated": False}}
    for message in (types.JSONRPCResponse(jsonrpc="2.0", id=7, result=result),
                    types.JSONRPCResponse(jsonrpc="2.0", id="req-7", result={}),
                    types.JSONRPCNotification(jsonrpc="2.0", method="notifications/progress",
                                              params={"progress": 1, "progressToken": "t"})):
        reference = adapter.dump_json(message, by_alias=True, exclude_none=True)
        assert json.loads(serialize(message)) == json.loads(reference)
        store = BoundedEventStore(max_bytes=100_000)
        first = await store.store_event("s", None)
        await store.store_event("s", message)
        replayed = []

        async def collect(event, replayed=replayed) -> None:
            replayed.append(event.message)

        assert await store.replay_events_after(first, collect) == "s"
        assert replayed == [message]
