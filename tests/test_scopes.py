"""Per-tool scopes: hidden tools, HTTP 403 insufficient_scope, step-up with the official client,
and claim-mapped capabilities (an IdP group granting a scope)."""

from __future__ import annotations

import anyio
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client

from tests.auth_support import MemoryTokenStorage, auth_project, oauth_client
from tests.browser import Browser
from tests.conftest import free_port, start_server, stop_server
from tests.idp.launcher import OidcProvider
from tests.test_auth_flows import bearer_call

ADMIN_TOOL = """tool:
  name: admin_report
  description: Revenue per region (administrators only).
  scopes: [sqlgate:admin]
  source:
    code: SELECT region, count(*) AS customers FROM customers GROUP BY region ORDER BY region
"""
TEAM_TOOL = """tool:
  name: team_report
  description: Orders per status (members of the sql-admins group).
  scopes: [reports]
  source:
    code: SELECT status, count(*) AS n FROM orders GROUP BY status ORDER BY status
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scopes")
    port = free_port()
    idp = OidcProvider(redirect_uris=[f"http://127.0.0.1:{port}/oidc/callback"])
    auth = {"provider": "oidc",
            "oidc": {"issuer": idp.issuer, "client_id": idp.client_id, "client_secret": idp.client_secret,
                     "callback_path": "/oidc/callback", "scope": "openid profile email groups"},
            "scopes": ["sqlgate:access", "sqlgate:admin"],
            "authorization": {"required_scopes": ["sqlgate:access"],
                              "claim_mappings": [{"claim": "groups", "value": "sql-admins", "scopes": ["reports"]}]}}
    project, env, _ = auth_project(tmp, auth, port)
    (project / "tools" / "admin_report.yml").write_text(ADMIN_TOOL)
    (project / "tools" / "team_report.yml").write_text(TEAM_TOOL)
    server = start_server(project, tmp, env=env, port=port)
    yield server
    stop_server(server)
    idp.stop()


async def _session_run(url, auth, fn):
    async with (
        httpx2.AsyncClient(auth=auth, timeout=30) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        return await fn(session)


def test_step_up_with_the_official_client(stack):
    browser = Browser("alice", "alice-password")
    storage = MemoryTokenStorage()
    auth = oauth_client(stack.url, browser, storage, scope="sqlgate:access")

    async def scenario(session):
        names = {t.name for t in (await session.list_tools()).tools}
        assert "admin_report" not in names and "top_customers" in names  # hidden without the scope
        first_scope = storage.tokens.scope
        res = await session.call_tool("admin_report", {})  # 403 → re-authorise → retry
        return first_scope, res

    first_scope, res = anyio.run(_session_run, stack.url, auth, scenario)
    browser.close()
    assert first_scope == "sqlgate:access"
    assert not res.is_error, res.content
    assert [r["region"] for r in res.structured_content["result"]] == ["APAC", "EU", "US"]
    assert set(storage.tokens.scope.split()) == {"sqlgate:access", "sqlgate:admin"}


def test_raw_403_carries_scope_and_resource_metadata(stack):
    storage = MemoryTokenStorage()
    browser = Browser("alice", "alice-password")

    async def noop(session):
        return None

    anyio.run(_session_run, stack.url, oauth_client(stack.url, browser, storage, scope="sqlgate:access"), noop)
    browser.close()
    r = bearer_call(stack.url, storage.tokens.access_token, tool="admin_report")
    assert r.status_code == 403
    www = r.headers["www-authenticate"]
    assert 'error="insufficient_scope"' in www and 'scope="sqlgate:access sqlgate:admin"' in www
    assert "resource_metadata=" in www and "/.well-known/oauth-protected-resource/mcp" in www
    assert bearer_call(stack.url, storage.tokens.access_token, tool="whoami").status_code == 200


@pytest.mark.parametrize(("user", "allowed"), [("bob", True), ("alice", False)])
def test_claim_mapping_grants_a_capability(stack, user, allowed):
    storage = MemoryTokenStorage()
    browser = Browser(user, f"{user}-password")

    async def names(session):
        return {t.name for t in (await session.list_tools()).tools}

    visible = anyio.run(_session_run, stack.url, oauth_client(stack.url, browser, storage), names)
    browser.close()
    assert ("team_report" in visible) is allowed
    r = bearer_call(stack.url, storage.tokens.access_token, tool="team_report")
    assert r.status_code == (200 if allowed else 403)
