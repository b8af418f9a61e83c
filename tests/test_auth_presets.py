"""The provider presets (auth0, workos, cognito, entra/azure, descope, scalekit) against faithful
local fakes laid out like each provider (tests/fakes/presets.py).

One full login per provider with the official mcp client: DCR, PKCE, consent, the provider's login
form, its token reply, identity from its user-info endpoint and/or its signed access token — then
the caller is who SQL and the audit log say, a provider role grants a capability through
`claim_mappings`, and a refresh goes through to the provider (Entra must be told the scopes again,
Cognito does not rotate refresh tokens).
"""

from __future__ import annotations

from contextlib import contextmanager

import anyio
import httpx
import pytest

from tests.auth_support import MemoryTokenStorage, auth_project, call_tool, oauth_client, shared_stacks
from tests.browser import Browser
from tests.conftest import free_port, start_server, stop_server
from tests.fakes.presets import PRESET_FAKES, FakeCognito, FakeDescope, FakeEntra
from tests.test_auth_flows import bearer_call
from tests.test_scopes import TEAM_TOOL


def settings(kind: str, base: str) -> dict[str, str]:
    """The preset's own settings, pointed at the fake (every URL is derived from them)."""
    return {
        "auth0": {"domain": base, "audience": "https://sqlgate.example/api"},
        "workos": {"domain": base},
        "cognito": {"domain": base, "user_pool_id": FakeCognito.POOL, "issuer": f"{base}/{FakeCognito.POOL}"},
        "entra": {"tenant": FakeEntra.TENANT, "authority_url": base},
        "descope": {"project_id": FakeDescope.PROJECT, "api_base_url": base},
        "scalekit": {"environment_url": base},
    }[kind]


# bob as each provider reports him: (username, user id, name), and the claim that makes him an admin
BOB = {
    "auth0": ("bob@example.test", "auth0|64f1c0ffee1002", "bob@example.test"),
    "workos": ("bob@example.test", "user_01HXYZ1002ABCDEFGH", "Bob Admin"),
    "cognito": ("bob", "7c2d5f1e-0000-4000-8000-000000001002", "Bob Admin"),
    "entra": ("bob@example.test", "00000000-0000-0000-0000-000000001002", "Bob Admin"),
    "descope": ("bob@example.test", "U2SqLgAtE1002", "Bob Admin"),
    "scalekit": ("bob@example.test", "usr_8a2b1002", "Bob Admin"),
}
ADMIN_CLAIM = {
    "auth0": ("https://sqlgate.example/roles", "sql-admins"),  # a namespaced custom claim
    "workos": ("role", "admin"),
    "cognito": ("cognito:groups", "sql-admins"),
    "entra": ("roles", "Sql.Admin"),
    "descope": ("roles", "sql-admins"),
    "scalekit": ("roles", "sql-admins"),
}
WHO_TOOL = """tool:
  name: who
  description: The caller as SQL sees them (test only).
  return: {type: object}
  source:
    code: SELECT get_username() AS u, get_user_id() AS i, get_user_email() AS e, get_user_provider() AS p,
                 get_user_display_name() AS n, length(get_user_external_token()) > 20 AS has_token
"""


@contextmanager
def preset_server(kind: str, tmp_path, provider_name: str | None = None):
    port = free_port()
    fake_class = PRESET_FAKES[kind]
    with fake_class(f"{kind}-client", f"{kind}-secret", [f"http://127.0.0.1:{port}/{kind}/callback"]) as fake:
        name = provider_name or kind
        claim, value = ADMIN_CLAIM[kind]
        auth = {"provider": name, name: {"client_id": f"{kind}-client", "client_secret": f"{kind}-secret",
                                         **settings(kind, fake.base_url)},
                "upstream_refresh_margin_seconds": 100_000,  # every refresh goes to the provider
                "authorization": {"claim_mappings": [{"claim": claim, "value": value, "scopes": ["reports"]}]}}
        project, env, _ = auth_project(tmp_path, auth, port)
        (project / "tools" / "team_report.yml").write_text(TEAM_TOOL)
        (project / "tools" / "who.yml").write_text(WHO_TOOL)
        server = start_server(project, tmp_path, env=env, port=port)
        try:
            yield fake, server
        finally:
            stop_server(server)


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    """(kind, provider name) -> SharedStack: one server per preset for the module, started on first use."""
    def start(kind: str, provider_name: str | None = None):
        return preset_server(kind, tmp_path_factory.mktemp(kind), provider_name)

    with shared_stacks(start) as get:
        yield get


@pytest.mark.parametrize("kind", list(PRESET_FAKES))
def test_preset_login_identity_roles_and_refresh(kind, presets):
    # `azure` is Entra's other name: the alias is what this run configures
    stack = presets(kind, "azure" if kind == "entra" else None)
    fake, server = stack.fake, stack.server
    storage = MemoryTokenStorage()
    browser = Browser("bob", "bob-password")
    res = anyio.run(call_tool, server.url, oauth_client(server.url, browser, storage), "who")
    browser.close()
    assert not res.is_error, res.content
    row = res.structured_content["result"]
    username, user_id, name = BOB[kind]
    assert (row["u"], row["i"], row["e"], row["p"], row["n"]) == (username, user_id, "bob@example.test", kind, name)
    assert row["has_token"] is True
    assert ("POST", fake.TOKEN_PATH) in [(r.method, r.path) for r in stack.seen()]
    # the provider's role reached claim_mappings: bob may run the tool that needs `reports`
    assert bearer_call(server.url, storage.tokens.access_token, tool="team_report").status_code == 200
    # a refresh goes through to the provider and the new token works
    before = len([r for r in fake.seen if r.path == fake.TOKEN_PATH])
    fresh = httpx.post(f"{server.base}/token", data={"grant_type": "refresh_token",
                                                     "client_id": storage.client.client_id,
                                                     "refresh_token": storage.tokens.refresh_token})
    assert fresh.status_code == 200, fresh.text
    refreshes = [r for r in fake.seen if r.path == fake.TOKEN_PATH][before:]
    assert [r.form.get("grant_type") for r in refreshes] == ["refresh_token"]
    if kind == "entra":
        assert "api://entra-client/access_as_user" in refreshes[0].form["scope"].split()
    assert bearer_call(server.url, fresh.json()["access_token"], tool="who").status_code == 200
    assert f"tool who by {username} (id={user_id} provider={kind}" in stack.logs(), "the audit line names the caller"
    logs = server.logs()  # every test's on this server: no provider token in any of it
    for token in fake.tokens:
        assert token not in logs


def test_preset_role_missing_means_no_capability(presets):
    server = presets("cognito").server
    storage = MemoryTokenStorage()
    browser = Browser("alice", "alice-password")
    res = anyio.run(call_tool, server.url, oauth_client(server.url, browser, storage), "who")
    browser.close()
    assert res.structured_content["result"]["u"] == "alice"
    assert bearer_call(server.url, storage.tokens.access_token, tool="team_report").status_code == 403


def test_auth0_asks_for_the_api_audience(presets):
    stack = presets("auth0")
    browser = Browser("alice", "alice-password")
    anyio.run(call_tool, stack.server.url, oauth_client(stack.server.url, browser), "who")
    browser.close()
    authorize = next(r for r in stack.seen() if r.path == "/authorize" and r.method == "GET")
    assert authorize.query["audience"] == "https://sqlgate.example/api"
    assert "offline_access" in authorize.query["scope"].split()
